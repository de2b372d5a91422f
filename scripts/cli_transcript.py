"""Records a scripted `hf-specdec chat` session with the real model for the docs: docs/cli-session.txt (plain text)
and docs/cli-session.svg (coloured, as a terminal shows it). The session runs twice (~1 min on 1 thread).

    PYTHONPATH=. python scripts/cli_transcript.py [--threads 1] [--model tiny-random]
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import torch
from rich.console import Console

from hf_specdec.cli_models import load_bundle
from hf_specdec.repl import Repl
from hf_specdec.session import ChatSettings

PROMPT = "Write a Python function that checks whether a number is prime."
LINES = [
    "/help gamma",
    "/target",
    PROMPT,
    "/target",
    "/nasd",
    PROMPT,
    "/length 16",
    "/debug",
    "Name three colours of the rainbow.",
    "/gamma 0",
    "/processor topk 0.7 20",
    "/quit",
]


def record_session(bundle, colour: bool) -> Console:
    console = Console(file=io.StringIO(), record=True, force_terminal=colour, color_system="truecolor" if colour else None,
                      width=120, highlight=False)
    lines = io.StringIO("\n".join(LINES) + "\n")
    Repl(bundle, console, ChatSettings(max_new_tokens=64), input_stream=lines, echo=True).run()
    return console


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", default=None, help="default: the packaged SmolLM2-135M-Instruct")
    parser.add_argument("--out", default="docs", help="folder for cli-session.txt / .svg")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_bundle(args.model, None, None, device="cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # Plain: what a pipe or --no-color shows (replies only). Coloured: what a terminal shows (rejected drafts struck).
    plain = record_session(bundle, colour=False)
    (out / "cli-session.txt").write_text(plain.export_text())
    record_session(bundle, colour=True).save_svg(str(out / "cli-session.svg"), title="hf-specdec chat")
    print(f"wrote {out / 'cli-session.txt'} and {out / 'cli-session.svg'}")


if __name__ == "__main__":
    main()
