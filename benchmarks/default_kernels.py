"""What a user who never calls `optimize_for_cpu` gets: our loop's default fast CPU kernels (`cpu_kernels="auto"`)
vs the model's own kernels (`cpu_kernels="off"`), both against the same untouched model's plain `generate`.

The target is loaded and left as it is: plain `generate` and Transformers' prompt lookup run PyTorch's kernels (as
the user's own calls do); our strategies switch the fast kernels on for their own calls only. Greedy, 128 new
tokens, methods interleaved per prompt, outputs checked against plain. Default prompts are held out from the core
benchmark's (HumanEval 100-109, MT-Bench prose 20-29).

    python benchmarks/default_kernels.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import hf_specdec
from hf_specdec.benchmarking import interleaved_runs, report_by_dataset, write_results
from hf_specdec.cpu_speedups import is_cpu_optimized
from hf_specdec.data import load_humaneval, load_mtbench_prose
from hf_specdec.models import load_smollm2, load_smollm2_tokenizer

METHODS = {
    "plain": dict,
    "transformers-prompt-lookup": lambda: {"prompt_lookup_num_tokens": 10},
    "ngram (cpu_kernels='auto', the default)": lambda: {"assistant_model": hf_specdec.NGramStrategy()},
    "ngram (cpu_kernels='off')": lambda: {"assistant_model": hf_specdec.NGramStrategy(cpu_kernels="off")},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code", type=int, default=10)
    parser.add_argument("--code-start", type=int, default=100)
    parser.add_argument("--prose", type=int, default=10)
    parser.add_argument("--prose-start", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("results/default_kernels.json"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model, tokenizer = load_smollm2(), load_smollm2_tokenizer()  # untouched: no optimize_for_cpu
    code = load_humaneval(limit=args.code_start + args.code)[args.code_start:]
    prose = load_mtbench_prose(tokenizer)[args.prose_start : args.prose_start + args.prose]
    rows = interleaved_runs(model, tokenizer, {"code": code, "prose": prose}, METHODS, args.max_new_tokens)
    assert not is_cpu_optimized(model), "the user's model must come back with its own kernels"
    report = report_by_dataset(rows, {"code": len(code), "prose": len(prose)}, args.max_new_tokens,
                               note="untouched model, ")
    write_results(args.out, args, report, rows)


if __name__ == "__main__":
    main()
