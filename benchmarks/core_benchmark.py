"""Core speed benchmark: plain generate vs Transformers' prompt lookup vs hf_specdec n-gram strategies.

Real target (SmolLM2-135M-Instruct, fp32, CPU), greedy, 128 new tokens; code = HumanEval prompts 0-19, prose = the
first 20 MT-Bench questions of writing/extraction/humanities/roleplay (chat template applied). Methods are
interleaved per prompt (order rotated) after a warm-up, in one process, so noise hits all alike. Every method's
output is checked token for token against plain generate.

    python benchmarks/core_benchmark.py                      # full run (~17 min on 2 quiet cores)
    python benchmarks/core_benchmark.py --code 3 --prose 3   # quick look
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch

import hf_specdec
from hf_specdec.cpu_speedups import optimize_for_cpu
from hf_specdec.data import load_humaneval, load_mtbench_prose
from hf_specdec.models import load_smollm2, load_smollm2_tokenizer

# name -> kwargs for generate (a fresh strategy per call keeps prompts independent)
METHODS: dict[str, Callable[[], dict]] = {
    "plain": lambda: {},
    "transformers-prompt-lookup": lambda: {"prompt_lookup_num_tokens": 10},
    "ngram": lambda: {"assistant_model": hf_specdec.NGramStrategy()},
    "ngram-min2": lambda: {"assistant_model": hf_specdec.NGramStrategy(min_ngram_size=2)},
    "nasd": lambda: {"assistant_model": hf_specdec.NASDStrategy()},
}


def run_once(model, input_ids, max_new_tokens: int, kwargs: dict) -> dict:
    start = time.perf_counter()
    output = model.generate(input_ids, max_new_tokens=max_new_tokens, do_sample=False, **kwargs)
    seconds = time.perf_counter() - start
    strategy = kwargs.get("assistant_model")
    stats = strategy.last_stats if strategy is not None else None
    return {
        "seconds": seconds,
        "tokens": output.shape[1] - input_ids.shape[1],
        "output": output[0, input_ids.shape[1]:].tolist(),
        "drafted": stats.drafted if stats else None,
        "accepted": stats.accepted if stats else None,
        "accepted_lengths": stats.accepted_lengths if stats else None,
    }


def summarise(rows: list[dict]) -> dict:
    """Per method: summed tokens/time, speedup vs plain (ratio of summed wall times), per-prompt speedup spread."""
    plain_time = {r["prompt"]: r["seconds"] for r in rows if r["method"] == "plain"}
    plain_out = {r["prompt"]: r["output"] for r in rows if r["method"] == "plain"}
    by_method = defaultdict(list)
    for row in rows:
        by_method[row["method"]].append(row)
    summary = {}
    for method, items in by_method.items():
        seconds = sum(r["seconds"] for r in items)
        tokens = sum(r["tokens"] for r in items)
        per_prompt = [plain_time[r["prompt"]] / r["seconds"] for r in items]
        drafted = sum(r["drafted"] or 0 for r in items)
        accepted = sum(r["accepted"] or 0 for r in items)
        lengths = [n for r in items for n in (r["accepted_lengths"] or [])]
        summary[method] = {
            "tokens_per_s": tokens / seconds,
            "wall_s": seconds,
            "speedup": sum(plain_time[r["prompt"]] for r in items) / seconds,
            "median_prompt_speedup": statistics.median(per_prompt),
            "min_prompt_speedup": min(per_prompt),
            "acceptance_rate": accepted / drafted if drafted else None,
            "mean_accepted_length": sum(lengths) / len(lengths) if lengths else None,
            "identical_outputs": sum(r["output"] == plain_out[r["prompt"]] for r in items),
            "prompts": len(items),
        }
    return summary


def print_table(title: str, summary: dict) -> None:
    print(f"\n## {title}\n")
    print("| method | tokens/s | wall s | speedup vs plain | vs prompt lookup | median (min) per prompt "
          "| acceptance | mean accepted length | identical |")
    print("|---|---|---|---|---|---|---|---|---|")
    builtin = summary.get("transformers-prompt-lookup", {}).get("wall_s")
    for method, s in summary.items():
        vs_builtin = f"{builtin / s['wall_s']:.2f}x" if builtin else "-"
        acc = f"{s['acceptance_rate']:.2f}" if s["acceptance_rate"] is not None else "-"
        mal = f"{s['mean_accepted_length']:.2f}" if s["mean_accepted_length"] is not None else "-"
        print(f"| {method} | {s['tokens_per_s']:.1f} | {s['wall_s']:.1f} | {s['speedup']:.2f}x | {vs_builtin} "
              f"| {s['median_prompt_speedup']:.2f}x ({s['min_prompt_speedup']:.2f}x) | {acc} | {mal} "
              f"| {s['identical_outputs']}/{s['prompts']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code", type=int, default=20, help="HumanEval prompts (from 0)")
    parser.add_argument("--prose", type=int, default=20, help="MT-Bench prose prompts")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--no-cpu-fast-path", action="store_true", help="keep PyTorch's default nn.Linear kernels")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("results/core_benchmark.json"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model, tokenizer = load_smollm2(), load_smollm2_tokenizer()
    if not args.no_cpu_fast_path:
        optimize_for_cpu(model)  # the same kernels for every method, so ratios stay honest
    sets = {"code": load_humaneval(limit=args.code), "prose": load_mtbench_prose(tokenizer)[: args.prose]}

    warm = tokenizer(sets["code"][0].text if sets["code"] else sets["prose"][0].text, return_tensors="pt").input_ids
    for method in args.methods:
        run_once(model, warm, 16, METHODS[method]())

    rows = []
    for dataset, prompts in sets.items():
        for index, prompt in enumerate(prompts):
            input_ids = tokenizer(prompt.text, return_tensors="pt").input_ids
            order = args.methods[index % len(args.methods):] + args.methods[: index % len(args.methods)]
            for method in order:
                result = run_once(model, input_ids, args.max_new_tokens, METHODS[method]())
                rows.append({"dataset": dataset, "prompt": f"{dataset}/{prompt.id}", "method": method, **result})
            plain = next(r for r in rows[-len(order):] if r["method"] == "plain")
            line = " ".join(f"{r['method']}={plain['seconds'] / r['seconds']:.2f}x" for r in rows[-len(order):])
            print(f"[{dataset} {index + 1}/{len(prompts)}] {prompt.id}: {line}", flush=True)

    report = {}
    for dataset in sets:
        report[dataset] = summarise([r for r in rows if r["dataset"] == dataset])
        print_table(f"{dataset} ({len(sets[dataset])} prompts, {args.max_new_tokens} new tokens, greedy)",
                    report[dataset])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "summary": report,
                                    "rows": rows}, indent=1))
    print(f"\nraw results: {args.out}")


if __name__ == "__main__":
    main()
