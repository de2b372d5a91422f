"""Evaluation suite: losslessness and speed of every method, from one recipe, in one run.

`main(argv)` is the command line (`hf-specdec eval ...`, `python -m hf_specdec.eval ...`); see docs/eval.md.
"""

from .cli import main, run
from .config import EvalConfig, load_config

__all__ = ["EvalConfig", "load_config", "main", "run"]
