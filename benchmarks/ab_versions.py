"""A/B two checkouts of hf_specdec on the real target, interleaved per prompt: e.g. this commit against the one
before a loop change ("batch 1 unchanged, within noise").

Each checkout runs in its own worker process (PYTHONPATH = that checkout), both load the same model with
`optimize_for_cpu`; for every prompt and method the two run back to back, the order alternating per prompt, so
both see the same machine load. Prints per method the summed wall time of each side, the ratio, and whether the
outputs were identical.

    git worktree add /tmp/before <commit>
    python benchmarks/ab_versions.py --before /tmp/before --after . --code 4 --prose 4 --max-new-tokens 96
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

WORKER = r'''
import json, sys, time
import torch
import hf_specdec
from hf_specdec.cpu_speedups import optimize_for_cpu
from hf_specdec.data import load_humaneval, load_mtbench_prose
from hf_specdec.models import load_smollm2, load_smollm2_draft, load_smollm2_tokenizer
torch.manual_seed(0)
model, tok = load_smollm2(), load_smollm2_tokenizer()
optimize_for_cpu(model)
draft = load_smollm2_draft(model)
optimize_for_cpu(draft)
hydra = hf_specdec.AutoStrategy.from_pretrained("heads/hydra-smollm2-135m")
methods = {"plain": lambda: {}, "ngram": lambda: {"assistant_model": hf_specdec.NGramStrategy()},
           "draft": lambda: {"assistant_model": hf_specdec.DraftModelStrategy(draft)},
           "hydra": lambda: {"assistant_model": hydra}}
code, prose, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
prompts = [p.text for p in load_humaneval(code, start=100)] + [p.text for p in load_mtbench_prose(tok)[10 : 10 + prose]]
print(json.dumps({"ready": len(prompts)}), flush=True)
for line in sys.stdin:
    index, method = json.loads(line)
    ids = tok(prompts[index], return_tensors="pt").input_ids
    start = time.perf_counter()
    out = model.generate(ids, max_new_tokens=n, do_sample=False, **methods[method]())
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "output": out[0, ids.shape[1]:].tolist()}), flush=True)
'''


def start(checkout: Path, args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(checkout.resolve())}
    worker = subprocess.Popen([sys.executable, "-c", WORKER, str(args.code), str(args.prose), str(args.max_new_tokens)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                              cwd=checkout.resolve())
    json.loads(worker.stdout.readline())
    return worker


def ask(worker: subprocess.Popen, index: int, method: str) -> dict:
    worker.stdin.write(json.dumps([index, method]) + "\n")
    worker.stdin.flush()
    return json.loads(worker.stdout.readline())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--after", type=Path, default=Path("."))
    parser.add_argument("--code", type=int, default=4)
    parser.add_argument("--prose", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--methods", nargs="+", default=["plain", "ngram", "draft", "hydra"])
    args = parser.parse_args()
    workers = {"before": start(args.before, args), "after": start(args.after, args)}
    for side in workers:  # warm-up
        for method in args.methods:
            ask(workers[side], 0, method)
    totals = {(side, m): 0.0 for side in workers for m in args.methods}
    same = {m: 0 for m in args.methods}
    for index in range(args.code + args.prose):
        order = ["before", "after"] if index % 2 == 0 else ["after", "before"]
        for method in args.methods:
            results = {side: ask(workers[side], index, method) for side in order}
            for side, result in results.items():
                totals[side, method] += result["seconds"]
            same[method] += results["before"]["output"] == results["after"]["output"]
        print(f"prompt {index + 1}/{args.code + args.prose}: " + " ".join(
            f"{m}={totals['before', m] / totals['after', m]:.3f}" for m in args.methods), flush=True)
    print("\n| method | before s | after s | before / after | identical outputs |\n|---|---|---|---|---|")
    for method in args.methods:
        before, after = totals["before", method], totals["after", method]
        print(f"| {method} | {before:.1f} | {after:.1f} | {before / after:.3f}x | {same[method]}/"
              f"{args.code + args.prose} |")
    for worker in workers.values():
        worker.stdin.close()


if __name__ == "__main__":
    main()
