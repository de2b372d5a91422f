"""`hf-specdec eval` / `python -m hf_specdec.eval` / `accelerate launch [--multi_gpu --num_processes N] -m hf_specdec.eval`.

    python -m hf_specdec.eval --config recipes/eval/humaneval_mtbench.yaml --out results/run1
    python -m hf_specdec.eval --config ... --out ... --limit 2 --set decoding.max_new_tokens=32   # quick look
    python -m hf_specdec.eval --config ... --out results/run1 --report-only                       # rebuild report

A stopped run continues where it stopped when started again with the same --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import warnings
from pathlib import Path

import torch
import transformers

import hf_specdec

from ..kernels.cpu_speedups import optimize_for_cpu
from .config import EvalConfig, config_to_dict, load_config
from .loading import EvalPrompt, load_draft_model, load_eval_prompts, load_model
from .methods import MethodFactory, skip_reason
from .report import write_outputs
from .runner import RecordStore, read_records, run_speed
from .sampling_test import pick_prefixes, run_sampling_test

RUN_CONFIG = "run_config.json"
META = "meta.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hf-specdec eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML/JSON recipe, e.g. recipes/eval/humaneval_mtbench.yaml")
    parser.add_argument("--out", required=True, help="Output folder (records, results.json, report.md, plots).")
    parser.add_argument("--limit", type=int, default=None, help="At most this many prompts per dataset.")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="Override a recipe value, e.g. --set decoding.max_new_tokens=32 (repeatable).")
    parser.add_argument("--report-only", action="store_true", help="Rebuild the report from the saved records.")
    parser.add_argument("--no-progress", action="store_true", help="No progress bars.")
    return parser.parse_args(argv)


def _without_limits(value):
    if isinstance(value, dict):
        return {k: _without_limits(v) for k, v in value.items() if k != "limit"}
    if isinstance(value, list):
        return [_without_limits(v) for v in value]
    return value


def check_resume(out_dir: Path, config: EvalConfig) -> None:
    """A restarted run must use the same recipe (prompt limits may change); else its records would mix."""
    path = out_dir / RUN_CONFIG
    current = _without_limits(config_to_dict(config))
    if path.is_file():
        previous = _without_limits(json.loads(path.read_text()))
        if previous != current:
            raise ValueError(f"{out_dir} holds records of a run with another recipe; use a new --out folder (or "
                             "delete that one) to start afresh. Only `limit` may change when resuming.")


def _accelerator_available() -> bool:
    return hasattr(torch, "accelerator") and torch.accelerator.is_available()


def load_run_models(config: EvalConfig, device: torch.device):
    """Target, tokenizer and draft on `device`; optimize_for_cpu on both when on the CPU and asked for."""
    target, tokenizer = load_model(config.target)
    target.to(device)
    draft = load_draft_model(config.draft, target) if config.draft is not None else None
    if draft is not None:
        draft.to(device)
    optimized = device.type == "cpu" and config.cpu_optimize
    if optimized:  # the same kernels for every method, so ratios stay honest
        optimize_for_cpu(target)
        if draft is not None:
            optimize_for_cpu(draft)
    return target, tokenizer, draft, optimized


def _meta(config, state, prompts: list[EvalPrompt], prefixes: list[EvalPrompt], skipped, optimized) -> dict:
    by_dataset: dict[str, list[str]] = {}
    for prompt in prompts:
        by_dataset.setdefault(prompt.dataset, []).append(prompt.uid)
    return {"device": str(state.device), "processes": state.num_processes, "threads": torch.get_num_threads(),
            "cpu_optimized": optimized, "torch": torch.__version__, "transformers": transformers.__version__,
            "hf_specdec": hf_specdec.__version__, "skipped": skipped, "prompts": by_dataset,
            "sampling_prefixes": [p.uid for p in prefixes]}


def run(config: EvalConfig, out_dir: Path, show_progress: bool = True) -> int:
    from accelerate import PartialState

    # cpu=True lets torchrun start several CPU processes (gloo); with an accelerator, PartialState picks it. The long
    # timeout lets a process that finished its share wait at a barrier for the slowest one.
    state = PartialState(cpu=not _accelerator_available(), timeout=datetime.timedelta(hours=24))
    if state.num_processes == 1 and "ACCELERATE_USE_CPU" in os.environ and not _accelerator_available():
        # accelerate's launcher runs ONE process on a machine without GPUs unless --multi_gpu is given (its simple
        # launcher drops --num_processes); --multi_gpu starts torchrun, and PartialState(cpu=True) then uses gloo.
        print("hf_specdec eval: accelerate launch started one process. Without GPUs, start several CPU processes "
              "with `accelerate launch --multi_gpu --num_processes N -m hf_specdec.eval ...`.", file=sys.stderr)
    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        return _run(config, out_dir, state, show_progress)
    finally:
        torch.set_num_threads(threads)


def _run(config: EvalConfig, out_dir: Path, state, show_progress: bool) -> int:
    skipped = {m.name: reason for m in config.methods if (reason := skip_reason(m, config))}
    for name, reason in skipped.items():
        warnings.warn(f"hf_specdec eval: skipping method {name!r}: {reason}.", stacklevel=2)
    methods = [m for m in config.methods if m.name not in skipped]
    check_resume(out_dir, config)  # every process, so none is left waiting when it refuses
    state.wait_for_everyone()
    if state.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / RUN_CONFIG).write_text(json.dumps(config_to_dict(config), indent=1))
    state.wait_for_everyone()

    target, tokenizer, draft, optimized = load_run_models(config, state.device)
    factory = MethodFactory(target, draft)
    prompts = load_eval_prompts(config, tokenizer)
    prefixes = pick_prefixes(prompts, config.sampling_test) if config.sampling_test.enabled else []
    store = RecordStore(out_dir, state.process_index)
    with state.split_between_processes(prompts) as mine:
        run_speed(target, tokenizer, factory, mine, methods, config, store, state.process_index, show_progress)
    state.wait_for_everyone()
    store = RecordStore(out_dir, state.process_index)  # re-read: prefixes continue other processes' outputs
    with state.split_between_processes(prefixes) as mine:
        run_sampling_test(target, tokenizer, factory, mine, methods, config, store, state.process_index,
                          show_progress)
    state.wait_for_everyone()
    if state.is_main_process:
        meta = _meta(config, state, prompts, prefixes, skipped, optimized)
        (out_dir / META).write_text(json.dumps(meta, indent=1))
        write_outputs(out_dir, read_records(out_dir), config, meta)
        print(f"hf_specdec eval: report written to {out_dir / 'report.md'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = load_config(args.config, args.overrides)
    if args.limit is not None:
        config = dataclasses.replace(config, limit=args.limit)
    out_dir = Path(args.out)
    if args.report_only:
        if not (out_dir / META).is_file():
            raise FileNotFoundError(f"No finished run in {out_dir} ({META} missing): run without --report-only first.")
        write_outputs(out_dir, read_records(out_dir), config, json.loads((out_dir / META).read_text()))
        print(f"hf_specdec eval: report written to {out_dir / 'report.md'}")
        return 0
    return run(config, out_dir, show_progress=not args.no_progress)


if __name__ == "__main__":
    sys.exit(main())
