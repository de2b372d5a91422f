"""Timing helpers shared by the benchmark scripts and `hf-specdec demo`: one timed generate call, and the per-method
summary (speedup = summed plain wall time / summed method wall time, outputs checked against plain)."""

from __future__ import annotations

import statistics
import time
from collections import defaultdict


def run_once(model, input_ids, max_new_tokens: int, kwargs: dict) -> dict:
    start = time.perf_counter()
    output = model.generate(input_ids, max_new_tokens=max_new_tokens, **{"do_sample": False, **kwargs})
    seconds = time.perf_counter() - start
    stats = getattr(kwargs.get("assistant_model"), "last_stats", None)  # a draft model (Transformers' own) has none
    return {
        "seconds": seconds,
        "tokens": output.shape[1] - input_ids.shape[1],
        "output": output[0, input_ids.shape[1]:].tolist(),
        "drafted": stats.drafted if stats else None,
        "accepted": stats.accepted if stats else None,
        "accepted_lengths": stats.accepted_lengths if stats else None,
        "mean_alpha": stats.mean_alpha if stats else None,
    }


def interleaved_runs(model, tokenizer, sets: dict, methods: dict, max_new_tokens: int, warmup_tokens: int = 16,
                     after_prompt=None) -> list[dict]:
    """Every method on every prompt of `sets` ({name: [Prompt]}), methods rotated per prompt so none always runs
    first, after one short warm-up call each. `methods` maps a name to a function returning generate kwargs (a
    fresh strategy per call). One row per (prompt, method), as `run_once` returns plus dataset/prompt/method;
    `after_prompt(dataset, input_ids, rows_of_that_prompt)` is called after each prompt."""
    first = next(prompt for prompts in sets.values() for prompt in prompts)
    warm = tokenizer(first.text, return_tensors="pt").input_ids
    for make in methods.values():
        run_once(model, warm, warmup_tokens, make())
    rows, names = [], list(methods)
    for dataset, prompts in sets.items():
        for index, prompt in enumerate(prompts):
            input_ids = tokenizer(prompt.text, return_tensors="pt").input_ids
            done = []
            for name in names[index % len(names):] + names[: index % len(names)]:
                result = run_once(model, input_ids, max_new_tokens, methods[name]())
                done.append({"dataset": dataset, "prompt": f"{dataset}/{prompt.id}", "method": name, **result})
            rows += done
            if after_prompt is not None:
                after_prompt(dataset, input_ids, done)
            plain = next((r for r in done if r["method"] == "plain"), None)
            line = "" if plain is None else ": " + " ".join(
                f"{r['method']}={plain['seconds'] / r['seconds']:.2f}x" for r in done)
            print(f"[{dataset} {index + 1}/{len(prompts)}] {prompt.id}{line}", flush=True)
    return rows


def summarise(rows: list[dict]) -> dict:
    """Per method: summed tokens/time, speedup vs plain (ratio of summed wall times), per-prompt speedup spread."""
    plain_time = {r["prompt"]: r["seconds"] for r in rows if r["method"] == "plain"}
    plain_out = {r["prompt"]: r["output"] for r in rows if r["method"] == "plain"}
    by_method = defaultdict(list)
    for row in rows:
        by_method[row["method"]].append(row)
    summary = {}
    for method, items in by_method.items():
        seconds = sum(r["seconds"] for r in items)
        tokens = sum(r["tokens"] for r in items)
        per_prompt = [plain_time[r["prompt"]] / r["seconds"] for r in items]
        drafted = sum(r["drafted"] or 0 for r in items)
        accepted = sum(r["accepted"] or 0 for r in items)
        lengths = [n for r in items for n in (r["accepted_lengths"] or [])]
        summary[method] = {
            "tokens_per_s": tokens / seconds,
            "wall_s": seconds,
            "speedup": sum(plain_time[r["prompt"]] for r in items) / seconds,
            "median_prompt_speedup": statistics.median(per_prompt),
            "min_prompt_speedup": min(per_prompt),
            "acceptance_rate": accepted / drafted if drafted else None,
            "mean_accepted_length": sum(lengths) / len(lengths) if lengths else None,
            "identical_outputs": sum(r["output"] == plain_out[r["prompt"]] for r in items),
            "prompts": len(items),
        }
    return summary


def print_table(title: str, summary: dict) -> None:
    print(f"\n## {title}\n")
    print("| method | tokens/s | wall s | speedup vs plain | vs prompt lookup | median (min) per prompt "
          "| acceptance | mean accepted length | identical |")
    print("|---|---|---|---|---|---|---|---|---|")
    builtin = summary.get("transformers-prompt-lookup", {}).get("wall_s")
    for method, s in summary.items():
        vs_builtin = f"{builtin / s['wall_s']:.2f}x" if builtin else "-"
        acc = f"{s['acceptance_rate']:.2f}" if s["acceptance_rate"] is not None else "-"
        mal = f"{s['mean_accepted_length']:.2f}" if s["mean_accepted_length"] is not None else "-"
        print(f"| {method} | {s['tokens_per_s']:.1f} | {s['wall_s']:.1f} | {s['speedup']:.2f}x | {vs_builtin} "
              f"| {s['median_prompt_speedup']:.2f}x ({s['min_prompt_speedup']:.2f}x) | {acc} | {mal} "
              f"| {s['identical_outputs']}/{s['prompts']} |")


def report_by_dataset(rows: list[dict], counts: dict[str, int], max_new_tokens: int, note: str = "") -> dict:
    """Each dataset's summary, printed as a table titled with its prompt count; returns {dataset: summary}."""
    report = {}
    for dataset, count in counts.items():
        report[dataset] = summarise([r for r in rows if r["dataset"] == dataset])
        print_table(f"{dataset} ({count} prompts, {note}{max_new_tokens} new tokens, greedy)", report[dataset])
    return report


def write_results(path, args, summary: dict, rows: list[dict]) -> None:
    """The benchmark scripts' raw results: their arguments, the summary and every timed row, as one JSON file."""
    import json
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "summary": summary,
                                "rows": rows}, indent=1))
    print(f"\nraw results: {path}")
