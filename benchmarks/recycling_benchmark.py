"""Token recycling vs prompt lookup and plain decoding on the real target (SmolLM2-135M-Instruct, fp32, CPU).

Greedy, interleaved per prompt (order rotated), outputs checked against plain generate. "fresh" methods build a new
strategy per call (the table starts empty every prompt); "shared" methods keep one strategy object across the run,
so its table carries what earlier prompts taught it (its intended use: one strategy per model, many calls).

    python benchmarks/recycling_benchmark.py --code 3 --prose 3 --max-new-tokens 64 --threads 1
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import hf_specdec
from hf_specdec.benchmarking import interleaved_runs, report_by_dataset, write_results
from hf_specdec.cpu_speedups import optimize_for_cpu
from hf_specdec.data import load_humaneval, load_mtbench_prose
from hf_specdec.models import load_smollm2, load_smollm2_tokenizer


def methods() -> dict:
    shared = {tree: hf_specdec.RecyclingStrategy(tree=tree) for tree in ("chain", "small", "default", "wide")}
    table = {
        "plain": lambda: {},
        "ngram": lambda: {"assistant_model": hf_specdec.NGramStrategy()},
        "recycling-fresh": lambda: {"assistant_model": hf_specdec.RecyclingStrategy()},
    }
    for tree, strategy in shared.items():
        table[f"recycling-{tree}-shared"] = lambda strategy=strategy: {"assistant_model": strategy}
    table["suffix"] = lambda: {"assistant_model": hf_specdec.SuffixStrategy()}
    return table


def per_prompt(dataset, input_ids, rows) -> None:
    """Tokens per verify step of each method on the prompt just run (printed as it goes: runs are slow here)."""
    print("   tokens/step: " + " ".join(
        f"{r['method']}={sum(r['accepted_lengths']) / len(r['accepted_lengths']):.2f}"
        for r in rows if r["accepted_lengths"]), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code", type=int, default=3)
    parser.add_argument("--prose", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", nargs="+", default=None)
    parser.add_argument("--out", type=Path, default=Path("results/recycling_benchmark.json"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model, tokenizer = load_smollm2(), load_smollm2_tokenizer()
    optimize_for_cpu(model)  # the same kernels for every method
    sets = {"code": load_humaneval(limit=args.code), "prose": load_mtbench_prose(tokenizer)[: args.prose]}
    table = methods()
    chosen = {name: table[name] for name in (args.methods or table)}
    rows = interleaved_runs(model, tokenizer, sets, chosen, args.max_new_tokens, after_prompt=per_prompt)
    report = report_by_dataset(rows, {name: len(items) for name, items in sets.items()}, args.max_new_tokens)
    write_results(args.out, args, report, rows)


if __name__ == "__main__":
    main()
