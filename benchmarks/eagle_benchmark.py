"""EAGLE benchmark: plain generate vs Transformers' prompt lookup vs n-gram vs Hydra heads vs the EAGLE drafter.

Same settings as `core_benchmark.py`: real target (SmolLM2-135M-Instruct, fp32, CPU, `optimize_for_cpu` for every
method), greedy, 128 new tokens, methods interleaved per prompt (order rotated) after a warm-up, every output
checked against plain generate. `--code-start` / `--prose-start` pick other prompts (held-out checks).

    python benchmarks/eagle_benchmark.py --code 10 --prose 10
    python benchmarks/eagle_benchmark.py --methods plain eagle-chain eagle-tree-16 --code 3 --prose 3
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from core_benchmark import METHODS as CORE_METHODS

import hf_specdec
from hf_specdec.benchmarking import interleaved_runs, report_by_dataset, write_results
from hf_specdec.cpu_speedups import optimize_for_cpu
from hf_specdec.data import load_humaneval, load_mtbench_prose
from hf_specdec.models import load_smollm2, load_smollm2_tokenizer

HEADS = Path(__file__).resolve().parents[1] / "heads"


def make_methods(drafter: hf_specdec.EagleDrafter, hydra: hf_specdec.MedusaHeads | None) -> dict:
    """name -> kwargs factory for generate (a fresh strategy per call keeps prompts independent)."""

    def eagle(**settings):
        return lambda: {"assistant_model": hf_specdec.EagleStrategy(drafter, **settings)}

    methods = {
        "plain": dict,
        "transformers-prompt-lookup": CORE_METHODS["transformers-prompt-lookup"],
        "ngram": CORE_METHODS["ngram"],
        "eagle-defaults": eagle(),
        # the drafter alone
        "eagle-chain": eagle(tree=None, lookup_min_ngram=0),
        "eagle-tree-8": eagle(tree_nodes=8, tree_width=2, lookup_min_ngram=0),
        "eagle-tree-16": eagle(tree_nodes=16, tree_width=4, lookup_min_ngram=0),
        "eagle-tree-32": eagle(tree_nodes=32, tree_width=6, lookup_min_ngram=0, depth=7),
        # prompt lookup in front (up to 10 tokens), the drafter on steps without a match
        "eagle-chain+lookup": eagle(tree=None, lookup_min_ngram=2),
        "eagle-chain-d3+lookup": eagle(tree=None, lookup_min_ngram=2, depth=3),
        "eagle-tree-8-d4+lookup": eagle(tree_nodes=8, tree_width=2, lookup_min_ngram=2, depth=4),
        "eagle-tree-16-d4+lookup": eagle(tree_nodes=16, tree_width=4, lookup_min_ngram=2, depth=4),
        "eagle-tree-16+lookup": eagle(tree_nodes=16, tree_width=4, lookup_min_ngram=2),
    }
    if hydra is not None:  # the best setting before EAGLE: its defaults (prompt lookup in front of a chain)
        methods["hydra-chain+lookup"] = lambda: {"assistant_model": hf_specdec.MedusaStrategy(hydra)}
        methods["hydra-dynamic-32"] = lambda: {"assistant_model": hf_specdec.MedusaStrategy(
            hydra, tree="dynamic", tree_nodes=32, tree_width=10, lookup_min_ngram=0, num_speculative_tokens=4)}
    return methods


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drafter", type=Path, default=HEADS / "eagle-smollm2-135m")
    parser.add_argument("--hydra-heads", type=Path, default=HEADS / "hydra-smollm2-135m")
    parser.add_argument("--code", type=int, default=10, help="HumanEval prompts")
    parser.add_argument("--code-start", type=int, default=0)
    parser.add_argument("--prose", type=int, default=10, help="MT-Bench prose prompts")
    parser.add_argument("--prose-start", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--methods", nargs="+")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("results/eagle_benchmark.json"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model, tokenizer = load_smollm2(), load_smollm2_tokenizer()
    optimize_for_cpu(model)  # the same kernels for every method, so ratios stay honest
    drafter = optimize_for_cpu(hf_specdec.EagleDrafter.from_pretrained(args.drafter))
    hydra = hf_specdec.MedusaHeads.from_pretrained(args.hydra_heads) if args.hydra_heads.is_dir() else None
    methods = make_methods(drafter, hydra)
    if args.methods:
        methods = {name: methods[name] for name in args.methods}
    code = load_humaneval(limit=args.code_start + args.code)[args.code_start:]
    prose = load_mtbench_prose(tokenizer)[args.prose_start : args.prose_start + args.prose]
    rows = interleaved_runs(model, tokenizer, {"code": code, "prose": prose}, methods, args.max_new_tokens)

    report = report_by_dataset(rows, {"code": len(code), "prose": len(prose)}, args.max_new_tokens)
    write_results(args.out, args, report, rows)


if __name__ == "__main__":
    main()
