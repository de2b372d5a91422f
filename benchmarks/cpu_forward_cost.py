"""Cost of one SmolLM2 forward on the CPU, before and after `optimize_for_cpu`; prints tables (not a test).

For each K it times one forward of K new tokens against a KV cache holding a `--context`-token prompt
(`logits_to_keep=K`, the shape of a speculative verify step), alternating the plain and the optimised model
so that both see the same machine load, and reports medians. It also checks that the logits agree, times
the prompt's prefill and plain greedy `generate`, and (with `--kernels`) the linear kernels per weight shape.

Other processes on the machine distort timings badly (with 2 threads on 2 cores, one busy core makes every
OpenMP barrier wait for a scheduler tick), so the script reports the CPU share others used meanwhile.

    python benchmarks/cpu_forward_cost.py --threads 2 --context 256 --reps 15 --kernels
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache

from hf_specdec.compat import CACHE_KWARG
from hf_specdec.cpu_speedups import ONEDNN_MIN_ROWS, onednn_available, optimize_for_cpu
from hf_specdec.data import load_humaneval, load_mtbench
from hf_specdec.models import load_smollm2, load_smollm2_tokenizer


class OtherLoad:
    """Share of the machine's CPU time used by other processes between `start()` and `stop()` (Linux only)."""

    def start(self) -> None:
        self.busy0, self.own0 = _busy_seconds(), time.process_time()
        self.wall0 = time.perf_counter()

    def stop(self) -> float:
        busy = _busy_seconds() - self.busy0
        own = time.process_time() - self.own0
        wall = time.perf_counter() - self.wall0
        return max(0.0, busy - own) / (wall * (os.cpu_count() or 1)) if busy >= 0 else float("nan")


def _busy_seconds() -> float:
    """Non-idle CPU seconds of the whole machine since boot (from /proc/stat), or -inf if unavailable."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return float("-inf")
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1e3


def context_ids(tokenizer, length: int) -> torch.Tensor:
    """`[1, length]` token ids of real code (HumanEval prompts, concatenated)."""
    text = "".join(p.text for p in load_humaneval(limit=20))
    ids = tokenizer(text, return_tensors="pt").input_ids[:, :length]  # [1, T]
    if ids.shape[1] < length:
        raise ValueError(f"Only {ids.shape[1]} context tokens available: pass --context <= {ids.shape[1]}.")
    return ids


@torch.inference_mode()
def prefill(model: nn.Module, ids: torch.Tensor) -> tuple[DynamicCache, float]:
    """A cache holding `ids` and the seconds the prefill took."""
    cache = DynamicCache(config=model.config)
    start = time.perf_counter()
    model(ids, **{CACHE_KWARG: cache}, use_cache=True, logits_to_keep=1)
    return cache, time.perf_counter() - start


@torch.inference_mode()
def step(model: nn.Module, cache: DynamicCache, new_ids: torch.Tensor) -> tuple[torch.Tensor, float]:
    """One forward of `new_ids` `[1, K]` on top of `cache`; the cache is cropped back afterwards."""
    k = new_ids.shape[1]
    start = time.perf_counter()
    logits = model(new_ids, **{CACHE_KWARG: cache}, use_cache=True, logits_to_keep=k).logits  # [1, K, V]
    elapsed = time.perf_counter() - start
    cache.crop(-k)
    return logits, elapsed


def forward_costs(models: dict[str, nn.Module], ids: torch.Tensor, ks: list[int], reps: int) -> dict:
    """Median ms per K for each model (runs interleaved), max abs logit difference to the first model."""
    caches = {name: prefill(model, ids)[0] for name, model in models.items()}
    new_ids = ids[:, -max(ks):].flip(1)  # [1, max K]: plausible tokens, not the cached ones
    times = {name: {k: [] for k in ks} for name in models}
    diffs = {name: {} for name in models}
    for rep in range(reps + 1):  # rep 0 warms up
        for k in ks:
            logits = {}
            for name, model in models.items():
                logits[name], elapsed = step(model, caches[name], new_ids[:, :k])
                if rep:
                    times[name][k].append(elapsed)
            ref = next(iter(logits.values()))
            for name in models:
                diffs[name][k] = max(diffs[name].get(k, 0.0), (logits[name] - ref).abs().max().item())
    return {"ms": {n: {k: median_ms(t) for k, t in per.items()} for n, per in times.items()}, "max_abs_diff": diffs}


def prefill_costs(models: dict[str, nn.Module], ids: torch.Tensor, reps: int) -> dict[str, float]:
    """Median ms of the prompt's prefill for each model."""
    times = {name: [] for name in models}
    for _ in range(reps):
        for name, model in models.items():
            times[name].append(prefill(model, ids)[1])
    return {name: median_ms(t) for name, t in times.items()}


@torch.inference_mode()
def generate_speed(models: dict[str, nn.Module], prompts: list[torch.Tensor], new_tokens: int, reps: int) -> dict:
    """Greedy `generate` tokens/s per model (median over reps of the total over prompts); outputs compared."""
    times = {name: [] for name in models}
    outputs = {name: [] for name in models}
    counted = 0
    for rep in range(reps + 1):
        for name, model in models.items():
            start, produced = time.perf_counter(), 0
            for ids in prompts:
                out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False, min_new_tokens=new_tokens)
                produced += out.shape[1] - ids.shape[1]
                if rep == 0:
                    outputs[name].append(out)
            if rep:
                times[name].append(time.perf_counter() - start)
            counted = produced
    same = {name: all(torch.equal(a, b) for a, b in zip(outs, next(iter(outputs.values())), strict=True))
            for name, outs in outputs.items()}
    return {"tokens_per_s": {n: counted / statistics.median(t) for n, t in times.items()}, "same_output": same}


def kernel_costs(model: nn.Module, rows: list[int], reps: int) -> dict:
    """Median ms of one call per linear-weight shape: F.linear vs `x @ Wt` vs oneDNN, cycling over every layer
    of that shape so that weights come from memory as they do in a real forward."""
    by_shape: dict[tuple[int, int], list[torch.Tensor]] = {}
    for module in model.modules():
        if isinstance(module, nn.Linear):
            by_shape.setdefault(tuple(module.weight.shape), []).append(module.weight.detach())
    results = {}
    for (out_f, in_f), weights in by_shape.items():
        kernels = _kernels(weights)
        for m in rows:
            x = torch.randn(1, m, in_f)
            for kname, calls in kernels.items():
                results[(f"{out_f}x{in_f} (x{len(weights)})", m, kname)] = _time_calls(calls, x, reps)
    return results


def _kernels(weights: list[torch.Tensor]) -> dict[str, list[Callable[[torch.Tensor], torch.Tensor]]]:
    """Per kernel, one callable per weight."""
    wts = [w.t().contiguous() for w in weights]
    kernels = {"F.linear": [lambda x, w=w: F.linear(x, w) for w in weights],
               "x @ Wt": [lambda x, wt=wt: torch.matmul(x, wt) for wt in wts]}
    if onednn_available():
        packed = [torch.ops.mkldnn._reorder_linear_weight(w) for w in weights]
        kernels["oneDNN"] = [lambda x, p=p: torch.ops.mkldnn._linear_pointwise(x, p, None, "none", [], "")
                             for p in packed]
    return kernels


@torch.inference_mode()
def _time_calls(calls: list[Callable[[torch.Tensor], torch.Tensor]], x: torch.Tensor, reps: int) -> float:
    """Median ms per call, calling every weight's kernel in turn."""
    times = []
    for rep in range(reps + 1):
        start = time.perf_counter()
        for call in calls:
            call(x)
        if rep:
            times.append((time.perf_counter() - start) / len(calls))
    return median_ms(times)


def print_forward_table(result: dict, ks: list[int]) -> None:
    ms, diffs = result["ms"], result["max_abs_diff"]
    names = list(ms)
    print("\nOne forward with KV cache, median ms (K new tokens, logits_to_keep=K)")
    print(f"{'K':>3} " + " ".join(f"{n:>10}" for n in names) + "   speedup  max|dlogit|")
    for k in ks:
        cells = " ".join(f"{ms[n][k]:10.1f}" for n in names)
        print(f"{k:>3} {cells}   {ms[names[0]][k] / ms[names[-1]][k]:6.2f}x  {diffs[names[-1]][k]:.2e}")


def print_kernel_table(results: dict) -> None:
    print(f"\nLinear kernels, median ms per call (oneDNN used from M={ONEDNN_MIN_ROWS} rows)")
    kernels = sorted({k for _, _, k in results})
    print(f"{'weight':>24} {'M':>3} " + " ".join(f"{k:>9}" for k in kernels))
    for shape, m in dict.fromkeys((s, m) for s, m, _ in results):
        print(f"{shape:>24} {m:>3} " + " ".join(f"{results[(shape, m, k)]:9.3f}" for k in kernels))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--context", type=int, default=256, help="tokens already in the KV cache")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8, 11])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--new-tokens", type=int, default=64, help="for the generate measurement")
    parser.add_argument("--generate-reps", type=int, default=3)
    parser.add_argument("--kernels", action="store_true", help="also time each linear kernel per weight shape")
    parser.add_argument("--output", help="save the results as JSON here")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = load_smollm2_tokenizer()
    models = {"default": load_smollm2(), "optimized": optimize_for_cpu(load_smollm2())}
    ids = context_ids(tokenizer, args.context)
    load = OtherLoad()
    load.start()
    results: dict = {"threads": args.threads, "context": args.context}
    results["forward"] = forward_costs(models, ids, args.ks, args.reps)
    print_forward_table(results["forward"], args.ks)
    results["prefill_ms"] = prefill_costs(models, ids, max(3, args.reps // 3))
    print(f"\nPrefill of {args.context} tokens, median ms: "
          + ", ".join(f"{n} {v:.1f}" for n, v in results["prefill_ms"].items()))
    prompts = [tokenizer(p.text, return_tensors="pt").input_ids for p in load_humaneval(limit=2)]
    prompts += [tokenizer(p.text, return_tensors="pt").input_ids for p in load_mtbench(limit=1, tokenizer=tokenizer)]
    results["generate"] = generate_speed(models, prompts, args.new_tokens, args.generate_reps)
    print(f"\nGreedy generate ({len(prompts)} prompts x {args.new_tokens} tokens), tokens/s: "
          + ", ".join(f"{n} {v:.1f}" for n, v in results["generate"]["tokens_per_s"].items())
          + f"; same output: {results['generate']['same_output']}")
    if args.kernels:
        kernels = kernel_costs(models["default"], sorted({1, *args.ks, 16}), max(5, args.reps // 2))
        print_kernel_table(kernels)
        results["kernels_ms"] = {f"{s} M={m} {k}": v for (s, m, k), v in kernels.items()}
    results["other_processes_cpu_share"] = load.stop()
    print(f"\nOther processes used {results['other_processes_cpu_share']:.0%} of the CPU meanwhile"
          + (" -- timings are unreliable, rerun on a quiet machine" if results["other_processes_cpu_share"] > 0.1 else ""))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=2, sort_keys=True)


if __name__ == "__main__":
    main()
