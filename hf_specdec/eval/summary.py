"""From raw records to summary numbers: per group of prompts (a dataset, an MT-Bench category, everything) and
per method. Speedups are paired: only prompts on which both the method and the baseline ran count."""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from .config import EvalConfig

ALL = "all"


def prompt_groups(records: list[dict]) -> dict[str, set[str]]:
    """Group name -> prompt uids: each dataset, each "dataset/category" of datasets with several categories,
    and "all" when there are several datasets."""
    by_dataset: dict[str, set[str]] = defaultdict(set)
    by_category: dict[str, set[str]] = defaultdict(set)
    for r in records:
        if r["kind"] == "speed":
            by_dataset[r["dataset"]].add(r["uid"])
            if r.get("category"):
                by_category[f"{r['dataset']}/{r['category']}"].add(r["uid"])
    groups = dict(by_dataset)
    for dataset in by_dataset:
        categories = {k: v for k, v in by_category.items() if k.startswith(dataset + "/")}
        if len(categories) > 1:
            groups.update(sorted(categories.items()))
    if len(by_dataset) > 1:
        groups[ALL] = set().union(*by_dataset.values())
    return groups


def _quantiles(values: list[float]) -> dict[str, float]:
    if len(values) == 1:
        return {"median": values[0], "p25": values[0], "p75": values[0]}
    q = statistics.quantiles(values, n=4, method="inclusive")
    return {"median": statistics.median(values), "p25": q[0], "p75": q[2]}


def _strategy_numbers(rows: list[dict]) -> dict[str, Any]:
    stats = [r["stats"] for r in rows if r.get("stats")]
    if not stats:
        return {"acceptance_rate": None, "mean_accepted_length": None, "draft_s": None, "verify_s": None,
                "draft_share": None, "accepted_lengths": []}
    drafted, accepted = sum(s["drafted"] for s in stats), sum(s["accepted"] for s in stats)
    lengths = [n for s in stats for n in s["accepted_lengths"]]
    draft_s, verify_s = sum(s["draft_time"] for s in stats), sum(s["verify_time"] for s in stats)
    return {"acceptance_rate": accepted / drafted if drafted else 0.0,
            "mean_accepted_length": sum(lengths) / len(lengths) if lengths else None,
            "draft_s": draft_s, "verify_s": verify_s,
            "draft_share": draft_s / (draft_s + verify_s) if draft_s + verify_s > 0 else None,
            "accepted_lengths": lengths}


def method_numbers(rows: list[dict], baselines: dict[str, dict[str, dict]], speedup_metric: Any) -> dict[str, Any]:
    """Numbers for one method on one group of prompts. `baselines`: name -> uid -> that baseline's record."""
    seconds = sum(r["seconds"] for r in rows)
    tokens = sum(r["new_tokens"] for r in rows)
    out: dict[str, Any] = {"prompts": len(rows), "new_tokens": tokens, "wall_s": seconds,
                           "tokens_per_s": tokens / seconds if seconds > 0 else 0.0,
                           "tokens_per_s_per_prompt": _quantiles([r["tokens_per_s"] for r in rows])}
    for name, reference in baselines.items():
        paired = [(r["seconds"], reference[r["uid"]]["seconds"]) for r in rows if r["uid"] in reference]
        out[f"speedup_vs_{name}"] = speedup_metric.compute(
            predictions=[a for a, _ in paired], references=[b for _, b in paired]) if paired else None
    out.update(_strategy_numbers(rows))
    return out


def summarise_speed(records: list[dict], config: EvalConfig, speedup_metric: Any) -> dict[str, dict[str, Any]]:
    """group -> method -> numbers (see `method_numbers`), plus greedy match counts per method."""
    speed = [r for r in records if r["kind"] == "speed"]
    matches = [r for r in records if r["kind"] == "match"]
    baseline_names = [config.plain_name] + [m.name for m in config.methods if m.type in ("prompt_lookup", "assistant")]
    summary: dict[str, dict[str, Any]] = {}
    for group, uids in prompt_groups(records).items():
        rows = [r for r in speed if r["uid"] in uids]
        baselines = {name: {r["uid"]: r for r in rows if r["method"] == name} for name in baseline_names}
        baselines = {name: by_uid for name, by_uid in baselines.items() if by_uid}
        summary[group] = {}
        for spec in config.methods:
            method_rows = [r for r in rows if r["method"] == spec.name]
            if not method_rows:
                continue
            numbers = method_numbers(method_rows, baselines, speedup_metric)
            checked = [m for m in matches if m["method"] == spec.name and m["uid"] in uids]
            numbers["greedy_checked"] = len(checked)
            numbers["greedy_matches"] = sum(m["match"] for m in checked)
            summary[group][spec.name] = numbers
    return summary


def mismatches(records: list[dict]) -> list[dict]:
    return [r for r in records if r["kind"] == "match" and not r["match"]]
