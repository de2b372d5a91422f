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
from collections.abc import Callable
from pathlib import Path

import torch

import hf_specdec
from hf_specdec.benchmarking import interleaved_runs, report_by_dataset, write_results
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

    rows = interleaved_runs(model, tokenizer, sets, {name: METHODS[name] for name in args.methods},
                            args.max_new_tokens)

    report = report_by_dataset(rows, {name: len(items) for name, items in sets.items()}, args.max_new_tokens)
    write_results(args.out, args, report, rows)


if __name__ == "__main__":
    main()
