"""Medusa benchmark: plain generate vs the best n-gram strategy vs Medusa heads (chain and tree).

Same settings as `core_benchmark.py`: real target (SmolLM2-135M-Instruct, fp32, CPU, `optimize_for_cpu` for every
method), greedy, 128 new tokens, HumanEval prompts 0-19 (code) and `load_mtbench_prose` (prose), methods
interleaved per prompt (order rotated) after a warm-up, every output checked against plain generate. Also reports
each head's top-1 accuracy on the target's own greedy outputs for these prompts.

    python benchmarks/medusa_benchmark.py                              # full run
    python benchmarks/medusa_benchmark.py --code 3 --prose 3           # quick look
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch
from core_benchmark import print_table, run_once, summarise

import hf_specdec
from hf_specdec.cpu_speedups import optimize_for_cpu
from hf_specdec.data import load_humaneval, load_mtbench_prose
from hf_specdec.models import load_smollm2, load_smollm2_tokenizer

DEFAULT_HEADS = Path(__file__).resolve().parents[1] / "heads" / "medusa-smollm2-135m"


def full_vocab_copy(heads: hf_specdec.MedusaHeads) -> hf_specdec.MedusaHeads:
    """The same heads drafting over the whole vocabulary (measures what `draft_vocab_size` saves)."""
    copy = hf_specdec.MedusaHeads(dataclasses.replace(heads.config, draft_vocab_size=None))
    copy.load_state_dict({k: v for k, v in heads.state_dict().items() if k != "draft_token_ids"})
    return copy.eval()


def make_methods(heads) -> dict:
    """name -> kwargs factory for generate (a fresh strategy per call keeps prompts independent)."""
    full = full_vocab_copy(heads)
    return {
        "plain": dict,
        "ngram": lambda: {"assistant_model": hf_specdec.NGramStrategy()},
        "ngram-min2": lambda: {"assistant_model": hf_specdec.NGramStrategy(min_ngram_size=2)},
        "medusa-chain": lambda: {"assistant_model": hf_specdec.MedusaStrategy(heads, tree=None)},
        "medusa-tree": lambda: {"assistant_model": hf_specdec.MedusaStrategy(heads, tree="default")},
        # Prompt lookup first (matches of 2-4 tokens, up to 10 drafted), the heads on steps without a match.
        "medusa-chain+lookup": lambda: {"assistant_model": hf_specdec.MedusaStrategy(
            heads, tree=None, lookup_min_ngram=2, num_speculative_tokens=10)},
        "medusa-tree+lookup": lambda: {"assistant_model": hf_specdec.MedusaStrategy(
            heads, tree="default", lookup_min_ngram=2, num_speculative_tokens=10)},
        "medusa-chain-full-vocab": lambda: {"assistant_model": hf_specdec.MedusaStrategy(full, tree=None)},
        "medusa-tree-full-vocab": lambda: {"assistant_model": hf_specdec.MedusaStrategy(full, tree="default")},
        "medusa-chain-gated": lambda: {"assistant_model": hf_specdec.MedusaStrategy(heads, tree=None,
                                                                                    min_confidence=0.3)},
        "medusa-tree-gated": lambda: {"assistant_model": hf_specdec.MedusaStrategy(heads, tree="default",
                                                                                   min_confidence=0.3)},
    }


@torch.no_grad()
def head_accuracy(model, heads, input_ids: torch.LongTensor, output: list[int]) -> tuple[list[int], list[int]]:
    """Per-head (hits, counts) of top-1 predictions on the generated part of `input_ids + output`."""
    tokens = torch.cat([input_ids[0], torch.tensor(output, dtype=torch.long)])  # [L]
    hidden = model(tokens[None], output_hidden_states=True, logits_to_keep=1).hidden_states[-1][0]  # [L, H]
    start = input_ids.shape[1] - 1  # the row that produced the first generated token
    predicted = heads(hidden[start:]).argmax(-1)  # [L - start, K]
    hits, counts = [], []
    for k in range(heads.num_heads):
        shift = k + 1  # head k + 1 (0-based k) at row r predicts tokens[r + 1 + shift]
        target = tokens[start + 1 + shift:]
        hits.append(int((predicted[: target.numel(), k] == target).sum()))
        counts.append(int(target.numel()))
    return hits, counts


def print_report(title: str, summary: dict) -> None:
    """The core benchmark's table, then Medusa vs the best n-gram method and the per-head accuracy."""
    print_table(title, {m: s for m, s in summary.items() if m != "head_top1"})
    ngram = [m for m in summary if m.startswith("ngram")]
    if ngram:
        best = min(ngram, key=lambda m: summary[m]["wall_s"])
        for method in [m for m in summary if m.startswith("medusa")]:
            print(f"{method} vs best n-gram ({best}): {summary[best]['wall_s'] / summary[method]['wall_s']:.2f}x")
    print("per-head top-1 on plain greedy outputs: "
          + " ".join(f"head{k + 1}={a:.3f}" for k, a in enumerate(summary["head_top1"])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heads", type=Path, default=DEFAULT_HEADS)
    parser.add_argument("--code", type=int, default=20, help="HumanEval prompts (from 0)")
    parser.add_argument("--prose", type=int, default=20, help="MT-Bench prose prompts")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--methods", nargs="+", default=["plain", "ngram", "ngram-min2", "medusa-chain", "medusa-tree"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("results/medusa_benchmark.json"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model, tokenizer = load_smollm2(), load_smollm2_tokenizer()
    optimize_for_cpu(model)  # the same kernels for every method, so ratios stay honest
    heads = hf_specdec.MedusaHeads.from_pretrained(args.heads)
    optimize_for_cpu(heads).attach_lm_head(model.get_output_embeddings())
    methods = {name: factory for name, factory in make_methods(heads).items() if name in args.methods}
    sets = {"code": load_humaneval(limit=args.code), "prose": load_mtbench_prose(tokenizer)[: args.prose]}

    warm = tokenizer(sets["code"][0].text if sets["code"] else sets["prose"][0].text, return_tensors="pt").input_ids
    for factory in methods.values():
        run_once(model, warm, 16, factory())

    rows, accuracy = [], {name: [[0] * heads.num_heads, [0] * heads.num_heads] for name in sets}
    names = list(methods)
    for dataset, prompts in sets.items():
        for index, prompt in enumerate(prompts):
            input_ids = tokenizer(prompt.text, return_tensors="pt").input_ids
            order = names[index % len(names):] + names[: index % len(names)]
            for method in order:
                result = run_once(model, input_ids, args.max_new_tokens, methods[method]())
                rows.append({"dataset": dataset, "prompt": f"{dataset}/{prompt.id}", "method": method, **result})
            plain = next(r for r in rows[-len(order):] if r["method"] == "plain")
            hits, counts = head_accuracy(model, heads, input_ids, plain["output"])
            for k in range(heads.num_heads):
                accuracy[dataset][0][k] += hits[k]
                accuracy[dataset][1][k] += counts[k]
            line = " ".join(f"{r['method']}={plain['seconds'] / r['seconds']:.2f}x" for r in rows[-len(order):])
            print(f"[{dataset} {index + 1}/{len(prompts)}] {prompt.id}: {line}", flush=True)

    report = {}
    for dataset, prompts in sets.items():
        hits, counts = accuracy[dataset]
        report[dataset] = summarise([r for r in rows if r["dataset"] == dataset])
        report[dataset]["head_top1"] = [h / max(c, 1) for h, c in zip(hits, counts)]
        print_report(f"{dataset} ({len(prompts)} prompts, {args.max_new_tokens} new tokens, greedy)", report[dataset])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "summary": report,
                                    "rows": rows}, indent=1))
    print(f"\nraw results: {args.out}")


if __name__ == "__main__":
    main()
