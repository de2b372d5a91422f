"""Replays Medusa / Hydra heads on recorded greedy outputs: mean accepted length per tree, in seconds (not a test).

Under greedy decoding a drafted token is accepted exactly while it matches the target's own output, and the heads
draft from the hidden state that produced the last emitted token. One forward over prompt + recorded output gives
every such hidden state, so replaying the real `MedusaStrategy.propose` step by step reproduces the accepted
lengths of a live run (up to float noise between a full and an incremental forward) without any verify forward.
Use it to compare heads and trees, then confirm speed with `benchmarks/medusa_benchmark.py`.

    python benchmarks/record_greedy.py --out results/greedy_record.json
    python benchmarks/replay_medusa.py --heads heads/medusa-smollm2-135m heads/hydra-smollm2-135m --trees chain default
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch

import hf_specdec
from hf_specdec.cpu_speedups import optimize_for_cpu
from hf_specdec.models import load_smollm2
from hf_specdec.strategies import Draft


def accepted_depth(draft: Draft, expected: list[int]) -> int:
    """How many drafted tokens greedy verification keeps: the deepest tree path (or chain prefix) that matches."""
    if draft.tree is None:
        depth = 0
        for token, target in zip(draft.tokens.tolist(), expected):
            if token != target:
                break
            depth += 1
        return depth
    tokens, children = draft.tree.tokens.tolist(), draft.tree.tree.children()
    depth, row = 0, 0
    while depth < len(expected):
        match = next((c for c in children[row] if tokens[c] == expected[depth]), None)
        if match is None:
            break
        depth, row = depth + 1, 1 + match
    return depth


def tree_settings(name: str) -> dict:
    """MedusaConfig settings for a --trees entry."""
    alone = {"lookup_min_ngram": 0, "num_speculative_tokens": 4}  # the heads alone, each head once
    if name == "chain":
        return {"tree": None, **alone}
    if name.startswith("dynamic:"):  # dynamic:N or dynamic:N:WIDTH
        numbers = [int(n) for n in name.split(":")[1:]]
        return dict(zip(("tree_nodes", "tree_width"), numbers), tree="dynamic", **alone)
    return {"tree": json.loads(name) if name.startswith("[") else name, **alone}


@torch.no_grad()
def replay(model, strategy, record: dict, hidden: torch.Tensor) -> tuple[int, int, int]:
    """(steps, tokens, tree nodes verified) of one recorded prompt; `hidden` `[P + T, H]` from one forward."""
    prompt, output = record["prompt"], record["output"]
    ids = prompt + output[:1]
    strategy.begin(model, torch.tensor([prompt]), None, None)
    steps, nodes = 0, 0
    while len(ids) - len(prompt) < len(output):
        position = len(ids) - len(prompt)
        # What the loop tells the strategy after each step: the hidden state that produced the last emitted token.
        strategy.observe(torch.tensor([ids]), Draft.empty(), 0, None, None, hidden[len(ids) - 2 : len(ids) - 1])
        budget = len(output) - position
        draft = strategy.propose(torch.tensor([ids]), min(strategy.config.num_speculative_tokens, budget - 1))
        depth = min(accepted_depth(draft, output[position:]), budget - 1)
        ids += output[position : position + depth + 1]
        steps += 1
        nodes += draft.tree.tree.num_nodes if draft.tree is not None else draft.tokens.numel()
    strategy.end()
    return steps, len(output) - 1, nodes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--record", type=Path, default=Path("results/greedy_record.json"))
    parser.add_argument("--heads", type=Path, nargs="+", default=[Path("heads/medusa-smollm2-135m")])
    parser.add_argument("--trees", nargs="+", default=["chain", "default", "large", "dynamic:11", "dynamic:23"],
                        help="'chain', a named tree, 'dynamic:N[:WIDTH]' (N nodes), or a JSON list of choice paths")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = optimize_for_cpu(load_smollm2())
    records = json.loads(args.record.read_text())["records"]
    hidden = [model(torch.tensor([r["prompt"] + r["output"]]), output_hidden_states=True,
                    logits_to_keep=1).hidden_states[-1][0] for r in records]  # [P + T, H] each
    print("| heads | tree | nodes | set | mean accepted length | steps | tokens |")
    print("|---|---|---|---|---|---|---|")
    for heads_dir in args.heads:
        heads = hf_specdec.MedusaHeads.from_pretrained(heads_dir)
        for tree_name in args.trees:
            strategy = hf_specdec.MedusaStrategy(heads, **tree_settings(tree_name))
            totals = defaultdict(lambda: [0, 0, 0])
            for record, states in zip(records, hidden):
                for i, value in enumerate(replay(model, strategy, record, states)):
                    totals[record["dataset"]][i] += value
            for dataset, (steps, tokens, nodes) in totals.items():
                print(f"| {heads_dir.name} | {tree_name if len(tree_name) < 20 else 'custom'} | "
                      f"{nodes / steps:.1f} | {dataset} | {tokens / steps:.2f} | {steps} | {tokens} |", flush=True)


if __name__ == "__main__":
    main()
