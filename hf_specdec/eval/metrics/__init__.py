"""Reusable `evaluate` metric modules shipped with hf_specdec, loaded from local paths (never from the Hub).

    import evaluate
    from hf_specdec.eval.metrics import metric_path
    speedup = evaluate.load(metric_path("speedup"))           # or evaluate.load("<repo>/hf_specdec/eval/metrics/speedup")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

METRICS = ("distribution_match", "speedup")


def metric_path(name: str) -> str:
    """Folder of the metric `name` (one of METRICS), for `evaluate.load`."""
    if name not in METRICS:
        raise ValueError(f"Unknown metric {name!r}; choose from {METRICS}.")
    return str(Path(__file__).parent / name)


def load_metric(name: str) -> Any:
    """`evaluate.load` of a local metric module, kept in memory (no cache files, no network)."""
    import evaluate

    return evaluate.load(metric_path(name), keep_in_memory=True)
