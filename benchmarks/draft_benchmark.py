"""The distilled draft (heads/draft-smollm2-135m) on the real target: DraftModelStrategy settings vs plain generate,
Transformers' prompt lookup and Transformers' own assisted generation with the same draft.

Real target (SmolLM2-135M-Instruct, fp32, CPU, `optimize_for_cpu` on target and draft), greedy, methods
interleaved per prompt after a warm-up, every output checked against plain generate. Prompts: the core
benchmark's (HumanEval from `--code-start`, the MT-Bench prose set).

    python benchmarks/draft_benchmark.py --code 20 --prose 20
    python benchmarks/draft_benchmark.py --code 14 --code-start 6 --prose 14 --prose-start 6   # not the ablation's
    python benchmarks/draft_benchmark.py --quantize int8 bf16 --methods plain ngram draft draft-int8 draft-bf16
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import hf_specdec
from hf_specdec.benchmarking import interleaved_runs, print_table, summarise
from hf_specdec.cpu_speedups import optimize_for_cpu
from hf_specdec.data import load_humaneval, load_mtbench_prose
from hf_specdec.models import load_smollm2, load_smollm2_draft, load_smollm2_tokenizer
from hf_specdec.quantized_draft import quantize_draft


def method_table(draft, quantized: dict | None = None) -> dict:
    """Name -> settings of every method this script knows (a fresh strategy per call); `quantized` maps a
    `quantize_draft` scheme to that copy of the draft (methods `draft-<scheme>`, `draft-alone-k2-<scheme>`)."""
    def ours(**settings):
        return lambda: {"assistant_model": hf_specdec.DraftModelStrategy(draft, **settings)}

    def copy_of(scheme, **settings):
        return lambda: {"assistant_model": hf_specdec.DraftModelStrategy(quantized[scheme], **settings)}

    per_scheme = {}
    for scheme in quantized or {}:
        per_scheme[f"draft-{scheme}"] = copy_of(scheme)
        per_scheme[f"draft-alone-k2-{scheme}"] = copy_of(scheme, lookup_min_ngram=0, num_speculative_tokens=2)

    return {
        "plain": lambda: {},
        "transformers-prompt-lookup": lambda: {"prompt_lookup_num_tokens": 10},
        "ngram": lambda: {"assistant_model": hf_specdec.NGramStrategy()},  # the draft strategy's own lookup, alone
        "transformers-assisted": lambda: {"assistant_model": draft},
        "draft": ours(),
        **{f"draft-k{k}": ours(num_speculative_tokens=k) for k in (2, 3, 4, 5, 6, 8)},
        "draft-heuristic": ours(schedule="heuristic"),
        "draft-egag": ours(schedule="entropy"),
        "draft-full-vocab": ours(use_draft_vocab=False),
        "draft-alone-k2": ours(lookup_min_ngram=0, num_speculative_tokens=2),
        "draft-ungated": ours(skip_unprofitable_drafts=False),
        "draft-lookup3": ours(lookup_min_ngram=3),
        "draft-lookup1": ours(lookup_min_ngram=1),
        **per_scheme,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code", type=int, default=20)
    parser.add_argument("--code-start", type=int, default=0)
    parser.add_argument("--prose", type=int, default=20)
    parser.add_argument("--prose-start", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--draft", type=Path, default=None, help="a draft folder (default: the committed one)")
    parser.add_argument("--methods", nargs="+", default=["plain", "transformers-prompt-lookup",
                                                          "transformers-assisted", "draft", "draft-alone-k2"])
    parser.add_argument("--quantize", nargs="*", default=[], help="quantize_draft schemes to add (int8, bf16, ...)")
    parser.add_argument("--out", type=Path, default=None, help="also write every row as JSON lines here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model, tokenizer = load_smollm2(), load_smollm2_tokenizer()
    draft = load_smollm2_draft(model, path=args.draft)
    optimize_for_cpu(model)  # the draft shares the target's embedding and head, and gets the same kernels
    optimize_for_cpu(draft)
    table = method_table(draft, {scheme: quantize_draft(draft, scheme) for scheme in args.quantize})
    unknown = [m for m in args.methods if m not in table]
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; known: {sorted(table)}")
    methods = {name: table[name] for name in args.methods}
    sets = {"code": load_humaneval(limit=args.code, start=args.code_start),
            "prose": load_mtbench_prose(tokenizer)[args.prose_start : args.prose_start + args.prose]}
    sets = {name: prompts for name, prompts in sets.items() if prompts}
    rows = interleaved_runs(model, tokenizer, sets, methods, args.max_new_tokens)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    for dataset in sets:
        print_table(f"{dataset}: distilled draft ({draft.config.num_hidden_layers} layers)",
                    summarise([r for r in rows if r["dataset"] == dataset]))


if __name__ == "__main__":
    main()
