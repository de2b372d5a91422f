"""What a draft cut from SmolLM2-135M costs per drafted token on this CPU, by number of layers and LM head.

    python benchmarks/draft_cost.py [--layers 1 2 3 4 6] [--vocab 12000]
    python benchmarks/draft_cost.py --committed --quantize none bf16 int8   # the committed draft, per scheme

Drafts are untrained copies (cost does not depend on the weights); each drafts 5 tokens after a 200-token
context through `DraftModelStrategy`'s own forward, `optimize_for_cpu` on target and draft. Prints ms per
drafted token, the ratio to one target decode step, and the break-even acceptance of a K=5 draft: the
per-token acceptance at which drafting 5 tokens + a 6-token verify just matches plain decoding.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import DynamicCache, GenerationConfig, LogitsProcessorList

import hf_specdec
from hf_specdec.compat import CACHE_KWARG
from hf_specdec.cpu_speedups import optimize_for_cpu
from hf_specdec.distilled_draft import build_draft, set_draft_vocab
from hf_specdec.models import load_smollm2, load_smollm2_draft
from hf_specdec.quantized_draft import quantize_draft

K = 5


def target_step_ms(model, context: torch.LongTensor, new_tokens: int, repeats: int = 7) -> float:
    times = []
    for _ in range(repeats):
        cache = DynamicCache()
        model(input_ids=context, use_cache=True, **{CACHE_KWARG: cache})
        start = time.perf_counter()
        model(input_ids=context[:, -new_tokens:], use_cache=True, **{CACHE_KWARG: cache},
              position_ids=torch.arange(context.shape[1], context.shape[1] + new_tokens)[None])
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def draft_token_ms(strategy, target, context: torch.LongTensor, repeats: int = 7) -> float:
    """Median ms per drafted token of K-token drafts through the strategy's batched draft cache (batch of one)."""
    times = []
    for _ in range(repeats):
        strategy.begin(target, context, GenerationConfig(do_sample=False), LogitsProcessorList())
        strategy._cache.forward({0: context[0].tolist()}, True, strategy._vocab_args())  # prefill the draft cache
        start = time.perf_counter()
        strategy._draft([(0, 0, context, K)])  # K forwards of [1, 1]: the last context token, then K - 1 drafted
        times.append((time.perf_counter() - start) / K)
        strategy.end()
    return 1000 * statistics.median(times)


def break_even(draft_ratio: float, verify_ratio: float) -> float:
    """Per-token acceptance a at which (1 + a + ... + a^K) tokens per (K * draft + verify) equals plain."""
    cost = K * draft_ratio + verify_ratio
    low, high = 0.0, 1.0
    for _ in range(50):
        a = (low + high) / 2
        low, high = (a, high) if sum(a**i for i in range(K + 1)) < cost else (low, a)
    return (low + high) / 2


def committed_rows(target, context, step: float, verify: float, schemes: list[str], rounds: int) -> None:
    """The committed distilled draft in each scheme (`hf_specdec.quantize_draft`), and the whole target quantized
    as a self-draft (its LM head stays float32, shared); schemes interleaved over `rounds` (medians of each round's
    median), so a neighbour's load on the core spreads over all of them."""
    strategies = {}
    for name, draft in {"committed": load_smollm2_draft(target), "whole target": target}.items():
        for scheme in schemes:
            if name == "whole target" and scheme not in ("bf16", "int8"):
                continue  # fp32: a target step by construction; torchao weight-only: 2.7x one (measured once)
            quantized = quantize_draft(draft, scheme)
            if scheme == "none":
                optimize_for_cpu(quantized)  # generate would switch its float32 layers to these kernels too
            strategies[name, scheme] = hf_specdec.DraftModelStrategy(quantized, skip_unprofitable_drafts=False)
    times = {key: [] for key in strategies}
    for _ in range(rounds):
        for key, strategy in strategies.items():
            times[key].append(draft_token_ms(strategy, target, context, repeats=3))
    print("| draft | scheme | ms / drafted token | x target step | fp32 draft / this | break-even acceptance (K=5) |")
    print("|---|---|---|---|---|---|")
    base = statistics.median(times["committed", "none"]) if ("committed", "none") in times else None
    for (name, scheme), values in times.items():
        ms = statistics.median(values)
        vs = f"{base / ms:.2f}x" if base else "-"
        print(f"| {name} | {scheme} | {ms:.2f} | {ms / step:.3f} | {vs} | {break_even(ms / step, verify / step):.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 2, 3, 4, 6])
    parser.add_argument("--vocab", type=int, default=12000, help="draft-vocabulary size for the restricted rows")
    parser.add_argument("--committed", action="store_true", help="measure the committed draft per --quantize scheme")
    parser.add_argument("--quantize", nargs="+", default=["none", "bf16", "int8"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the --committed measurement")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    target = load_smollm2()
    context = torch.randint(0, 49152, (1, 200), generator=torch.Generator().manual_seed(0))
    drafts = {} if args.committed else {n: build_draft(target, list(range(n - 1)) + [29]) for n in args.layers}
    optimize_for_cpu(target)  # the drafts share its LM head: float32 drafts get the same kernels
    for draft in drafts.values():
        optimize_for_cpu(draft)
    with torch.no_grad():
        step, verify = target_step_ms(target, context, 1), target_step_ms(target, context, K + 1)
        print(f"target: decode step {step:.1f} ms, {K + 1}-token verify {verify:.1f} ms ({verify / step:.2f}x)")
        if args.committed:
            committed_rows(target, context, step, verify, args.quantize, args.rounds)
            return
        print("| layers | LM head | ms / drafted token | x target step | break-even acceptance (K=5) |")
        print("|---|---|---|---|---|")
        for n, draft in drafts.items():
            for label in ("full", f"{args.vocab} rows"):
                if label != "full":
                    set_draft_vocab(draft, torch.randperm(49152, generator=torch.Generator().manual_seed(1))[: args.vocab])
                strategy = hf_specdec.DraftModelStrategy(draft, skip_unprofitable_drafts=False)
                ms = draft_token_ms(strategy, target, context)
                print(f"| {n} | {label} | {ms:.2f} | {ms / step:.3f} | {break_even(ms / step, verify / step):.2f} |")


if __name__ == "__main__":
    main()
