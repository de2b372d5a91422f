"""Replays n-gram drafters on recorded greedy outputs and predicts their speedup from a forward-cost table.

A prediction, not a measurement: use it to compare drafter settings in seconds (the machine's load does not
matter), then confirm with `benchmarks/core_benchmark.py`. Under greedy decoding a draft is accepted exactly while
it matches the target's own output, so replaying the real strategy code (`propose` / `observe`, K schedule, cost
gate) against a recording from `benchmarks/record_greedy.py` gives the exact accepted counts; the target's
recorded top-k stands in for its scores. Cost of a step = cost of one target forward of (drafted + 1) tokens.

    python benchmarks/record_greedy.py --out results/greedy_record.json
    python benchmarks/replay_drafters.py --record results/greedy_record.json
"""

from __future__ import annotations

import argparse
import bisect
import json
import time
from collections import defaultdict
from pathlib import Path

import torch

import hf_specdec
from hf_specdec.strategies import Draft

# Forward cost in ms by number of new tokens (SmolLM2-135M, fp32, 2 threads, ../shared/MODELS.md medians).
DEFAULT_COSTS = "1:65,2:108,4:118,6:116,10:123,16:139"

STRATEGIES = {
    "ngram": lambda: hf_specdec.NGramStrategy(),
    "ngram-min2": lambda: hf_specdec.NGramStrategy(min_ngram_size=2),
    "ngram-ungated": lambda: hf_specdec.NGramStrategy(skip_unprofitable_drafts=False),
    "nasd": lambda: hf_specdec.NASDStrategy(),
    "nasd-ungated": lambda: hf_specdec.NASDStrategy(skip_unprofitable_drafts=False),
}


def parse_costs(text: str) -> list[tuple[int, float]]:
    return sorted((int(n), float(ms)) for n, ms in (item.split(":") for item in text.split(",")))


def forward_cost(costs: list[tuple[int, float]], num_tokens: int) -> float:
    """Linear interpolation in the cost table (clamped at its ends)."""
    sizes = [n for n, _ in costs]
    i = bisect.bisect_left(sizes, num_tokens)
    if i < len(sizes) and sizes[i] == num_tokens:
        return costs[i][1]
    if i == 0:
        return costs[0][1]
    if i == len(sizes):
        return costs[-1][1]
    (n0, c0), (n1, c1) = costs[i - 1], costs[i]
    return c0 + (c1 - c0) * (num_tokens - n0) / (n1 - n0)


def fake_scores(top_k: list[list[int]], vocab_size: int) -> torch.Tensor:
    """Scores `[m, V]` whose ranking is the recorded top-k (the rest far below)."""
    scores = torch.full((len(top_k), vocab_size), -1e4)
    for row, tokens in enumerate(top_k):
        scores[row, tokens] = torch.arange(len(tokens), 0, -1, dtype=torch.float32)
    return scores


def replay(strategy, record: dict, vocab_size: int, costs) -> dict:
    """Runs one recorded prompt through the strategy's real drafting code; returns predicted costs and counts."""
    output, top_k = record["output"], record["top_k"]
    ids = record["prompt"] + output[:1]
    strategy.begin(None, torch.tensor([record["prompt"]]), None, None)
    strategy.observe(torch.tensor([ids]), Draft.empty(), 0, fake_scores(top_k[:1], vocab_size), None)
    spent, draft_seconds, drafted, accepted, lengths = 0.0, 0.0, 0, 0, []
    while len(ids) - len(record["prompt"]) < len(output):
        position = len(ids) - len(record["prompt"])
        budget = len(output) - position
        max_draft = min(strategy.schedule.next_k(), budget - 1)
        start = time.perf_counter()
        draft = strategy.propose(torch.tensor([ids]), max_draft) if max_draft > 0 else Draft.empty()
        draft_seconds += time.perf_counter() - start
        tokens = draft.tokens[:max_draft].tolist()
        num_accepted = 0
        while num_accepted < len(tokens) and tokens[num_accepted] == output[position + num_accepted]:
            num_accepted += 1
        emitted = output[position : position + num_accepted + 1]
        cost = forward_cost(costs, len(tokens) + 1)
        ids = ids + emitted
        strategy.observe(torch.tensor([ids]), draft, num_accepted,
                         fake_scores(top_k[position : position + len(emitted)], vocab_size), cost / 1000)
        spent += cost
        drafted, accepted = drafted + len(tokens), accepted + num_accepted
        lengths.append(len(emitted))
    strategy.end()
    plain = forward_cost(costs, 1) * (len(output) - 1)
    return {"plain_ms": plain, "spec_ms": spent, "draft_ms": 1000 * draft_seconds, "drafted": drafted,
            "accepted": accepted, "steps": len(lengths), "tokens": len(output) - 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--record", type=Path, default=Path("results/greedy_record.json"))
    parser.add_argument("--costs", default=DEFAULT_COSTS, help="N:ms pairs, forward cost by new tokens")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    args = parser.parse_args()
    costs = parse_costs(args.costs)
    data = json.loads(args.record.read_text())
    print(f"cost table (ms): {costs}\n")
    print("| strategy | set | predicted speedup | + draft time | acceptance | mean accepted length | worst prompt |")
    print("|---|---|---|---|---|---|---|")
    for name in args.strategies:
        totals = defaultdict(lambda: defaultdict(float))
        worst = defaultdict(lambda: float("inf"))
        for record in data["records"]:
            result = replay(STRATEGIES[name](), record, data["vocab_size"], costs)
            for key, value in result.items():
                totals[record["dataset"]][key] += value
            worst[record["dataset"]] = min(worst[record["dataset"]], result["plain_ms"] / result["spec_ms"])
        for dataset, t in totals.items():
            print(f"| {name} | {dataset} | {t['plain_ms'] / t['spec_ms']:.2f}x "
                  f"| {t['plain_ms'] / (t['spec_ms'] + t['draft_ms']):.2f}x "
                  f"| {t['accepted'] / max(t['drafted'], 1):.2f} | {(t['tokens']) / t['steps']:.2f} "
                  f"| {worst[dataset]:.2f}x |")


if __name__ == "__main__":
    main()
