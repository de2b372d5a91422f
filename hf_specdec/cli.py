"""hf-specdec: chat with speculative decoding, generate once, or run the evaluation suite.

    hf-specdec chat [--model DIR] [--draft DIR] [--device cpu|cuda]     # the REPL (see /help inside)
    hf-specdec generate "prompt" [--strategy ngram|nasd|draft_model|egag|medusa|hydra|eagle|target|drafter]
    hf-specdec demo [--code 3] [--prose 3] [--png results/demo.png]      # a few prompts: speedup table + PNG
    hf-specdec eval ...                                                  # forwarded to hf_specdec.eval.main

Without --model the target is the packaged SmolLM2-135M-Instruct (nothing is downloaded).
"""

from __future__ import annotations

import argparse
import io
import json
import sys

from rich.console import Console

from .session import DRAFTERS, PROCESSORS, ChatSettings, check_drafter

DEFAULT_PNG = "results/demo.png"  # results/ is git-ignored: running the demo in a checkout leaves it clean
STRATEGY_CHOICES = ("ngram", "nasd", "draft_model", "egag", "medusa", "hydra", "eagle", "target", "drafter")
HYDRA_DIR = "heads/hydra-smollm2-135m"  # Hydra heads run through the Medusa drafter, from their own folder


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("models")
    group.add_argument("--model", metavar="DIR", help="Target model folder (default: packaged SmolLM2-135M-Instruct). "
                                                      "'tiny-random' builds a tiny random model, for tests.")
    group.add_argument("--draft", metavar="DIR", help="Draft model folder with the target's vocabulary, e.g. "
                                                      "heads/draft-smollm2-135m; needed by the draft_model, egag "
                                                      "and drafter strategies.")
    group.add_argument("--medusa", metavar="DIR", help="Medusa heads folder (default: heads/medusa-smollm2-135m "
                                                       f"if it exists; with --strategy hydra, {HYDRA_DIR}).")
    group.add_argument("--eagle", metavar="DIR", help="EAGLE drafter folder (default: heads/eagle-smollm2-135m "
                                                      "if it exists).")
    group.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available).")
    group.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                       help="auto: float32 on CPU, bfloat16 on GPU.")
    group.add_argument("--threads", type=_positive_int, help="torch CPU threads.")
    group.add_argument("--no-cpu-fast-path", action="store_true", help="Skip hf_specdec.cpu_speedups on CPU.")
    group.add_argument("--no-chat-template", action="store_true",
                       help="Send the text as is, without the chat template. The template is on by default, so a "
                            "code prompt such as 'def add(a, b):' gets a chat reply; pass this to have it continued.")
    group.add_argument("--no-color", action="store_true", help="No colours (also off when stdout is not a terminal).")


def _add_generation_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("generation")
    group.add_argument("--length", "--max-new-tokens", dest="length", type=_positive_int, default=128, help="Max new tokens.")
    group.add_argument("--gamma", type=_positive_int, help="Draft length K (default: the strategy's own).")
    group.add_argument("--processor", choices=PROCESSORS, default="greedy", help="Sampling processor.")
    group.add_argument("--temperature", type=float, default=1.0)
    group.add_argument("--top-k", type=int, default=50)
    group.add_argument("--top-p", type=float, default=0.9)
    group.add_argument("--debug", action="store_true", help="One trace line per speculative step.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-specdec", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    chat = sub.add_parser("chat", help="Interactive REPL with a live accept/reject token view.")
    _add_model_options(chat)
    _add_generation_options(chat)
    chat.add_argument("--drafter", choices=DRAFTERS, help="Drafter at start (default: draft_model with --draft, "
                                                          "else ngram).")
    gen = sub.add_parser("generate", help="Generate one reply and print it with its statistics.")
    gen.add_argument("prompt", help="The prompt text ('-' reads standard input).")
    gen.add_argument("--strategy", choices=STRATEGY_CHOICES, help="Who drafts, or 'target'/'drafter' to generate "
                                                                  "with one model alone (default: ngram, or "
                                                                  "draft_model with --draft).")
    gen.add_argument("--compare", action="store_true", help="Also run the target alone first, to report the speedup.")
    gen.add_argument("--json", action="store_true", help="Print one JSON object instead of the streamed text.")
    _add_model_options(gen)
    _add_generation_options(gen)
    demo = sub.add_parser("demo", help="A few code and prose prompts: plain vs Transformers' prompt lookup vs our "
                                       "strategies, a speedup table and a PNG (minutes on a CPU).")
    demo.add_argument("--code", type=int, default=2, help="HumanEval prompts (from 0).")
    demo.add_argument("--prose", type=int, default=2, help="MT-Bench prose prompts.")
    demo.add_argument("--max-new-tokens", type=_positive_int, default=96)
    demo.add_argument("--png", "--out", dest="png", default=str(DEFAULT_PNG),
                      help=f"Where to write the speedup plot (default: {DEFAULT_PNG}, under the working directory).")
    _add_model_options(demo)
    sub.add_parser("eval", help="Evaluation suite (arguments go to hf_specdec.eval; try `hf-specdec eval --help`).",
                   add_help=False)
    return parser


def _settings(args: argparse.Namespace, drafter: str | None, has_draft: bool) -> ChatSettings:
    return ChatSettings(drafter=drafter or ("draft_model" if has_draft else "ngram"), max_new_tokens=args.length,
                        gamma=args.gamma, processor=args.processor, temperature=args.temperature, top_k=args.top_k,
                        top_p=args.top_p, debug=args.debug)


def _load(args: argparse.Namespace):
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from .cli_models import load_bundle

    return load_bundle(args.model, args.draft, args.medusa, args.device, args.dtype,
                       cpu_fast_path=not args.no_cpu_fast_path, chat_template=not args.no_chat_template,
                       eagle=args.eagle)


def _console(args: argparse.Namespace, file) -> Console:
    """Colours only on a terminal (rich's own check) and never with --no-color (no escape codes at all)."""
    return Console(file=file, color_system=None if args.no_color else "auto", highlight=False)


def run_chat(args: argparse.Namespace, stdin=None, stdout=None) -> int:
    from .repl import Repl

    console = _console(args, stdout)
    with console.status("loading models...") if console.is_terminal else _nothing():
        bundle = _load(args)
    settings = _settings(args, args.drafter, bundle.draft is not None)
    check_drafter(settings, bundle)
    repl = Repl(bundle, console, settings, input_stream=stdin)
    return repl.run()


def run_generate(args: argparse.Namespace, stdin=None, stdout=None) -> int:
    from .repl import Repl

    prompt = (stdin or sys.stdin).read() if args.prompt == "-" else args.prompt
    out = stdout or sys.stdout
    console = _console(args, io.StringIO() if args.json else out)
    if args.strategy == "hydra" and args.medusa is None:
        args.medusa = _hydra_folder()
    bundle = _load(args)
    strategy = args.strategy or ("draft_model" if bundle.draft is not None else "ngram")
    drafter = {"egag": "draft_model", "hydra": "medusa", "target": None, "drafter": None}.get(strategy, strategy)
    settings = _settings(args, drafter, bundle.draft is not None)
    settings.egag = strategy == "egag"
    settings.run_speculative = strategy not in ("target", "drafter")
    settings.run_target = strategy == "target" or args.compare
    settings.run_drafter = strategy == "drafter"
    check_drafter(settings, bundle)
    repl = Repl(bundle, console, settings, input_stream=io.StringIO(), echo=False)
    repl.generate(prompt)
    if args.json:
        runs = [{"label": run.label, "text": run.text, "new_tokens": run.new_tokens, "seconds": run.seconds,
                 "tokens_per_second": run.tokens_per_second, "stats": run.stats and run.stats.to_dict()}
                for run in repl.last_runs]
        baseline = repl.baselines.get(prompt)
        speculative = [run for run in repl.last_runs if run.stats is not None]
        speedup = speculative[0].tokens_per_second / baseline if baseline and speculative else None
        json.dump({"prompt": prompt, "strategy": strategy, "runs": runs, "speedup": speedup,
                   "errors": repl.errors}, out, indent=2)
        out.write("\n")
    return 1 if repl.errors else 0


def _hydra_folder() -> str:
    from .hub.folders import find_committed

    folder = find_committed(HYDRA_DIR)
    if folder is None:
        raise ValueError(f"Hydra heads are not available ({HYDRA_DIR} does not exist): train them with "
                         "recipes/train_medusa.py (token-conditioned heads), then pass --medusa DIR.")
    return str(folder)


def run_demo(args: argparse.Namespace, stdout=None) -> int:
    from pathlib import Path

    from .demo import run_demo as demo

    console = _console(args, stdout)
    with console.status("loading the target...") if console.is_terminal else _nothing():
        bundle = _load(args)
    demo(bundle, code=args.code, prose=args.prose, max_new_tokens=args.max_new_tokens, png=Path(args.png),
         console=console)
    return 0


def run_eval(argv: list[str]) -> int:
    try:
        from .eval import main as eval_main
    except ImportError as error:
        print(f"hf-specdec eval: the evaluation suite (hf_specdec.eval) is not available in this install ({error}). "
              "Install the full hf_specdec package, or use `hf-specdec chat` / `hf-specdec generate`.", file=sys.stderr)
        return 2
    return int(eval_main(argv) or 0)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "eval":
        return run_eval(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        if args.command == "chat":
            return run_chat(args)
        if args.command == "demo":
            return run_demo(args)
        return run_generate(args)
    except (ValueError, ImportError, FileNotFoundError) as error:
        print(f"hf-specdec {args.command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
