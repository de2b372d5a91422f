"""Sampling the geometric mixture q* ∝ draft^alpha * target^(1 - alpha) on the real pair: speculatively
(`DraftModelStrategy(draft, verify_against=GeometricMixture(alpha))`: the draft drafts, q* verifies) against the plain
token-by-token q* sampler (`hf_specdec.mixture.geometric_mixture_decode`), with plain target decoding for scale.

Target SmolLM2-135M-Instruct (the reference pi_t), the distilled draft heads/draft-smollm2-135m (the policy pi_theta),
fp32, CPU, `optimize_for_cpu` on both, methods interleaved per prompt after a warm-up. Greedy (argmax q*): every
speculative output must equal the reference sampler's. Sampled: the same speed comparison (outputs differ by chance).

    python benchmarks/mixture_benchmark.py --code 6 --prose 6
    python benchmarks/mixture_benchmark.py --sample --alpha 0.5
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import torch

import hf_specdec
from hf_specdec.benchmarking import interleaved_runs, print_table, summarise
from hf_specdec.cpu_speedups import optimize_for_cpu
from hf_specdec.data import load_humaneval, load_mtbench_prose
from hf_specdec.mixture import geometric_mixture_decode
from hf_specdec.models import load_smollm2, load_smollm2_draft, load_smollm2_tokenizer

REFERENCE = "q*-reference"


def method_table(draft, alpha, do_sample: bool) -> dict:
    """Name -> generate kwargs (a fresh strategy per call)."""
    mixture = hf_specdec.GeometricMixture(alpha)

    def speculative(**settings):
        return lambda: {"assistant_model": hf_specdec.DraftModelStrategy(draft, verify_against=mixture, **settings),
                        "do_sample": do_sample}

    return {
        "plain": lambda: {"do_sample": do_sample},
        REFERENCE: lambda: {"custom_generate": functools.partial(geometric_mixture_decode, policy=draft,
                                                                 mixture=mixture), "do_sample": do_sample},
        "q*": speculative(),  # the defaults (strategies/draft_model.py MIXTURE_DEFAULTS: K = 2, every step drafted)
        "q*-heuristic": speculative(schedule="heuristic"),
        **{f"q*-k{k}": speculative(num_speculative_tokens=k) for k in (1, 2, 3, 4, 5)},
        **{f"q*-k{k}-gated": speculative(num_speculative_tokens=k, skip_unprofitable_drafts=True)
           for k in (2, 3, 5)},
    }


def report(dataset: str, rows: list[dict]) -> None:
    summary = summarise(rows)
    print_table(f"{dataset}: q* (speedup column is vs plain target decoding)", summary)
    reference = {r["prompt"]: r for r in rows if r["method"] == REFERENCE}
    print(f"\n| {dataset} method | vs {REFERENCE} | identical to {REFERENCE} | mean alpha* |\n|---|---|---|---|")
    for method, s in summary.items():
        if not method.startswith("q*"):
            continue
        mine = [r for r in rows if r["method"] == method]
        ratio = sum(reference[r["prompt"]]["seconds"] for r in mine) / s["wall_s"]
        same = sum(r["output"] == reference[r["prompt"]]["output"] for r in mine)
        mean_alpha = [r["mean_alpha"] for r in mine if r["mean_alpha"] is not None]
        alpha_text = f"{sum(mean_alpha) / len(mean_alpha):.3f}" if mean_alpha else "-"
        print(f"| {method} | {ratio:.2f}x | {same}/{len(mine)} | {alpha_text} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code", type=int, default=6)
    parser.add_argument("--prose", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--alpha", default="auto", help='"auto" or a weight in [0, 1]')
    parser.add_argument("--sample", action="store_true", help="sample (default: greedy, argmax q*)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", nargs="+", default=["plain", REFERENCE, "q*", "q*-k3", "q*-k5", "q*-k2-gated"])
    parser.add_argument("--out", type=Path, default=None, help="also write every row as JSON lines here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    alpha = args.alpha if args.alpha == "auto" else float(args.alpha)
    model, tokenizer = load_smollm2(), load_smollm2_tokenizer()
    draft = load_smollm2_draft(model)
    optimize_for_cpu(model)
    optimize_for_cpu(draft)
    table = method_table(draft, alpha, args.sample)
    methods = {name: table[name] for name in args.methods}
    sets = {"code": load_humaneval(limit=args.code), "prose": load_mtbench_prose(tokenizer)[: args.prose]}
    sets = {name: prompts for name, prompts in sets.items() if prompts}
    torch.manual_seed(0)
    rows = interleaved_runs(model, tokenizer, sets, methods, args.max_new_tokens)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(f"\nalpha={alpha}, {'sampled' if args.sample else 'greedy (argmax q*)'}")
    for dataset in sets:
        report(dataset, [r for r in rows if r["dataset"] == dataset])


if __name__ == "__main__":
    main()
