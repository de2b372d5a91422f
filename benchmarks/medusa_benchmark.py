"""Medusa benchmark: plain generate vs the best n-gram strategy vs Medusa and Hydra heads (chain and trees).

Same settings as `core_benchmark.py`: real target (SmolLM2-135M-Instruct, fp32, CPU, `optimize_for_cpu` for every
method), greedy, 128 new tokens, HumanEval prompts 0-19 (code) and `load_mtbench_prose` (prose), methods
interleaved per prompt (order rotated) after a warm-up, every output checked against plain generate. Also reports
each head's top-1 accuracy on the target's own greedy outputs for these prompts.

    python benchmarks/medusa_benchmark.py                              # full run
    python benchmarks/medusa_benchmark.py --code 3 --prose 3           # quick look
    python benchmarks/medusa_benchmark.py --methods plain ngram medusa-chain medusa-tree hydra-chain hydra-tree
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch
from core_benchmark import METHODS as CORE_METHODS

import hf_specdec
from hf_specdec.benchmarking import interleaved_runs, print_table, summarise, write_results
from hf_specdec.cpu_speedups import optimize_for_cpu
from hf_specdec.data import load_humaneval, load_mtbench_prose
from hf_specdec.models import load_smollm2, load_smollm2_tokenizer

DEFAULT_HEADS = Path(__file__).resolve().parents[1] / "heads" / "medusa-smollm2-135m"
DEFAULT_HYDRA_HEADS = Path(__file__).resolve().parents[1] / "heads" / "hydra-smollm2-135m"


def full_vocab_copy(heads: hf_specdec.MedusaHeads) -> hf_specdec.MedusaHeads:
    """The same heads drafting over the whole vocabulary (measures what `draft_vocab_size` saves)."""
    copy = hf_specdec.MedusaHeads(dataclasses.replace(heads.config, draft_vocab_size=None))
    copy.load_state_dict({k: v for k, v in heads.state_dict().items() if k != "draft_token_ids"})
    return copy.eval()


def heads_strategy(heads, **settings) -> hf_specdec.MedusaStrategy:
    """MedusaStrategy with the heads alone unless `settings` put prompt lookup in front (the class defaults do)."""
    return hf_specdec.MedusaStrategy(heads, **{"lookup_min_ngram": 0, "num_speculative_tokens": 4, **settings})


def make_methods(heads, hydra=None) -> dict:
    """name -> kwargs factory for generate (a fresh strategy per call keeps prompts independent)."""
    full = full_vocab_copy(heads)
    methods = {
        "plain": dict,
        "ngram": lambda: {"assistant_model": hf_specdec.NGramStrategy()},
        "ngram-min2": lambda: {"assistant_model": hf_specdec.NGramStrategy(min_ngram_size=2)},
        "transformers-prompt-lookup": CORE_METHODS["transformers-prompt-lookup"],  # Transformers' built-in
        "medusa-chain-full-vocab": lambda: {"assistant_model": heads_strategy(full, tree=None)},
        "medusa-tree-full-vocab": lambda: {"assistant_model": heads_strategy(full, tree="default")},
        "medusa-chain-gated": lambda: {"assistant_model": heads_strategy(heads, tree=None,
                                                                                    min_confidence=0.3)},
        "medusa-tree-gated": lambda: {"assistant_model": heads_strategy(heads, tree="default",
                                                                                   min_confidence=0.3)},
    }
    for name, these in (("medusa", heads), ("hydra", hydra)):
        if these is None:
            continue
        methods |= {
            f"{name}-chain": lambda these=these: {"assistant_model": heads_strategy(these, tree=None)},
            f"{name}-tree": lambda these=these: {"assistant_model": heads_strategy(these, tree="default")},
            f"{name}-tree-large": lambda these=these: {"assistant_model": heads_strategy(these,
                                                                                                   tree="large")},
            f"{name}-tree-dynamic": lambda these=these: {"assistant_model": heads_strategy(
                these, tree="dynamic")},
            f"{name}-tree-dynamic-32": lambda these=these: {"assistant_model": heads_strategy(
                these, tree="dynamic", tree_nodes=32, tree_width=10)},
            # Prompt lookup first (matches of 2-4 tokens, up to 10 drafted), the heads on steps without a match.
            f"{name}-chain+lookup": lambda these=these: {"assistant_model": heads_strategy(
                these, tree=None, lookup_min_ngram=2, num_speculative_tokens=10)},
            f"{name}-tree+lookup": lambda these=these: {"assistant_model": heads_strategy(
                these, tree="default", lookup_min_ngram=2, num_speculative_tokens=10)},
        }
    return methods


@torch.no_grad()
def head_accuracy(model, heads, input_ids: torch.LongTensor, output: list[int]) -> tuple[list[int], list[int]]:
    """Per-head (hits, counts) of top-1 predictions on the generated part of `input_ids + output`."""
    tokens = torch.cat([input_ids[0], torch.tensor(output, dtype=torch.long)])  # [L]
    hidden = model(tokens[None], output_hidden_states=True, logits_to_keep=1).hidden_states[-1][0]  # [L, H]
    start = input_ids.shape[1] - 1  # the row that produced the first generated token
    # Token-conditioned heads read x_{t+1}, ..., x_{t+K} at row t (the target's own tokens; 0 past the end).
    padded = torch.cat([tokens, tokens.new_zeros(heads.num_heads)])
    context = torch.stack([padded[start + 1 + j : start + 1 + j + hidden.shape[0] - start]
                           for j in range(heads.num_heads)], dim=-1)  # [L - start, K]
    predicted = heads(hidden[start:], context if heads.config.token_conditioned else None).argmax(-1)  # [L - start, K]
    hits, counts = [], []
    for k in range(heads.num_heads):
        shift = k + 1  # head k + 1 (0-based k) at row r predicts tokens[r + 1 + shift]
        target = tokens[start + 1 + shift:]
        hits.append(int((predicted[: target.numel(), k] == target).sum()))
        counts.append(int(target.numel()))
    return hits, counts


def print_report(title: str, summary: dict, head_top1: dict[str, list[float]]) -> None:
    """The core benchmark's table, then Medusa vs the best n-gram method and the per-head accuracy."""
    print_table(title, summary)
    ngram = [m for m in summary if m.startswith("ngram")]
    if ngram:
        best = min(ngram, key=lambda m: summary[m]["wall_s"])
        for method in [m for m in summary if m.startswith(("medusa", "hydra"))]:
            print(f"{method} vs best n-gram ({best}): {summary[best]['wall_s'] / summary[method]['wall_s']:.2f}x")
    for name, accuracy in head_top1.items():
        print(f"{name} per-head top-1 on plain greedy outputs: "
              + " ".join(f"head{k + 1}={a:.3f}" for k, a in enumerate(accuracy)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heads", type=Path, default=DEFAULT_HEADS)
    parser.add_argument("--hydra-heads", type=Path, default=DEFAULT_HYDRA_HEADS,
                        help="token-conditioned heads for the hydra-* methods")
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
    head_sets = {"medusa": hf_specdec.MedusaHeads.from_pretrained(args.heads)}
    if any(method.startswith("hydra") for method in args.methods):
        head_sets["hydra"] = hf_specdec.MedusaHeads.from_pretrained(args.hydra_heads)
    for heads in head_sets.values():
        optimize_for_cpu(heads).attach_target(model)
    methods = {name: factory for name, factory in make_methods(head_sets["medusa"], head_sets.get("hydra")).items()
               if name in args.methods}
    sets = {"code": load_humaneval(limit=args.code), "prose": load_mtbench_prose(tokenizer)[: args.prose]}

    accuracy = {(name, dataset): [[0] * heads.num_heads, [0] * heads.num_heads]
                for name, heads in head_sets.items() for dataset in sets}  # hits, counts per head

    def count_head_hits(dataset, input_ids, prompt_rows) -> None:
        plain = next(r for r in prompt_rows if r["method"] == "plain")
        for name, heads in head_sets.items():
            hits, counts = head_accuracy(model, heads, input_ids, plain["output"])
            for k in range(heads.num_heads):
                accuracy[name, dataset][0][k] += hits[k]
                accuracy[name, dataset][1][k] += counts[k]

    rows = interleaved_runs(model, tokenizer, sets, methods, args.max_new_tokens, after_prompt=count_head_hits)

    report = {}
    for dataset, prompts in sets.items():
        summary = summarise([r for r in rows if r["dataset"] == dataset])
        head_top1 = {name: [h / max(c, 1) for h, c in zip(*accuracy[name, dataset])] for name in head_sets}
        report[dataset] = {**summary, "head_top1": head_top1}
        print_report(f"{dataset} ({len(prompts)} prompts, {args.max_new_tokens} new tokens, greedy)", summary,
                     head_top1)
    write_results(args.out, args, report, rows)


if __name__ == "__main__":
    main()
