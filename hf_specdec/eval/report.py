"""Writes a run's outputs: results.json (all raw records + summary), report.md, summary.csv and PNG plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from .config import EvalConfig, config_to_dict
from .metrics import load_metric
from .plots import make_plots
from .sampling_test import summarise_sampling
from .summary import mismatches, summarise_speed

CSV_FIELDS = ("group", "method", "type", "num_speculative_tokens", "schedule", "storage", "top_k_filler",
              "min_ngram_size", "prompts", "tokens_per_s", "speedup", "speedup_median", "speedup_p25", "speedup_p75",
              "speedup_vs_builtin", "acceptance_rate", "mean_accepted_length", "draft_s", "verify_s",
              "greedy_matches", "greedy_checked", "skipped")


def build_results(records: list[dict], config: EvalConfig, meta: dict[str, Any]) -> dict[str, Any]:
    summary = summarise_speed(records, config, load_metric("speedup"))
    sampling = []
    if any(r["kind"] == "sample" for r in records):
        sampling = summarise_sampling(records, config.plain_name, config.sampling_test,
                                      load_metric("distribution_match"))
    return {"meta": meta, "config": config_to_dict(config), "summary": summary, "sampling_test": sampling,
            "mismatches": mismatches(records), "records": records}


def write_outputs(out_dir: str | Path, records: list[dict], config: EvalConfig, meta: dict[str, Any]) -> dict:
    """Everything a reader needs, from the records alone (so a resumed or report-only run gives the same files)."""
    out_dir = Path(out_dir)
    results = build_results(records, config, meta)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    plots = make_plots(results["summary"], config, out_dir)
    write_csv(out_dir / "summary.csv", results, config)
    (out_dir / "report.md").write_text(render_markdown(results, config, [p.name for p in plots]))
    return results


def builtin_name(config: EvalConfig) -> str | None:
    return next((m.name for m in config.methods if m.type == "prompt_lookup"), None) or \
        next((m.name for m in config.methods if m.type == "assistant"), None)


def _fmt(value: Any, spec: str = ".2f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _speedup_cell(s: dict | None) -> str:
    if not s:
        return "-"
    return f"{s['speedup']:.2f}x (med {s['median']:.2f}, {s['p25']:.2f}-{s['p75']:.2f})"


def write_csv(path: Path, results: dict, config: EvalConfig) -> None:
    builtin = builtin_name(config)
    skipped = results["meta"].get("skipped", {})
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for spec in config.methods:
            base = {"method": spec.name, "type": spec.type, "num_speculative_tokens":
                    spec.options.get("num_speculative_tokens"), "schedule": spec.options.get("schedule"),
                    "storage": spec.options.get("storage"), "top_k_filler": spec.options.get("top_k_filler"),
                    "min_ngram_size": spec.options.get("min_ngram_size")}
            if spec.name in skipped:
                writer.writerow({**base, "group": "-", "skipped": skipped[spec.name]})
                continue
            for group, methods in results["summary"].items():
                n = methods.get(spec.name)
                if n is None:
                    continue
                s = n.get(f"speedup_vs_{config.plain_name}") or {}
                b = n.get(f"speedup_vs_{builtin}") if builtin else None
                writer.writerow({k: round(v, 4) if isinstance(v, float) else v for k, v in {**base, "group": group, "prompts": n["prompts"], "tokens_per_s": n["tokens_per_s"],
                                 "speedup": s.get("speedup"), "speedup_median": s.get("median"),
                                 "speedup_p25": s.get("p25"), "speedup_p75": s.get("p75"),
                                 "speedup_vs_builtin": b["speedup"] if b else None,
                                 "acceptance_rate": n["acceptance_rate"],
                                 "mean_accepted_length": n["mean_accepted_length"], "draft_s": n["draft_s"],
                                 "verify_s": n["verify_s"], "greedy_matches": n["greedy_matches"],
                                 "greedy_checked": n["greedy_checked"], "skipped": ""}.items()})


def _speed_table(group: str, methods: dict, config: EvalConfig) -> list[str]:
    builtin = builtin_name(config)
    vs_builtin = f"vs {builtin}" if builtin else "vs built-in"
    lines = [f"### {group}", "",
             (f"| method | prompts | tokens/s (median per prompt) | wall s | speedup vs {config.plain_name} "
             f"(median, p25-p75 per prompt) | {vs_builtin} | acceptance | mean accepted length | draft / verify s "
             "| greedy match |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for name, n in methods.items():
        b = n.get(f"speedup_vs_{builtin}") if builtin else None
        split = "-" if n["draft_s"] is None else f"{n['draft_s']:.1f} / {n['verify_s']:.1f} ({n['draft_share']:.0%})"
        match = "-" if not n["greedy_checked"] else f"{n['greedy_matches']}/{n['greedy_checked']}"
        lines.append(f"| {name} | {n['prompts']} | {n['tokens_per_s']:.1f} ({n['tokens_per_s_per_prompt']['median']:.1f})"
                     f" | {n['wall_s']:.1f} | {_speedup_cell(n.get(f'speedup_vs_{config.plain_name}'))} | "
                     f"{_fmt(b['speedup'] if b else None, '.2f', 'x')} | {_fmt(n['acceptance_rate'])} | "
                     f"{_fmt(n['mean_accepted_length'])} | {split} | {match} |")
    return lines + [""]


def _category_table(summary: dict, config: EvalConfig) -> list[str]:
    groups = [g for g in summary if "/" in g]
    if not groups:
        return []
    methods = [m.name for m in config.methods if m.name != config.plain_name
               and any(m.name in summary[g] for g in groups)]
    lines = ["## Speedup vs plain per category", "", "Total time ratio (median of the per-prompt ratios).", "",
             "| category | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for group in groups:
        cells = [(summary[group].get(m) or {}).get(f"speedup_vs_{config.plain_name}") for m in methods]
        lines.append(f"| {group} | " + " | ".join("-" if not c else f"{c['speedup']:.2f}x ({c['median']:.2f})"
                                                   for c in cells) + " |")
    return lines + [""]


def _lossless_sections(results: dict, config: EvalConfig) -> list[str]:
    lines = ["## Losslessness", ""]
    if config.decoding.do_sample:
        lines += ["Greedy exact-match check: not applicable (the speed runs sample).", ""]
    elif config.greedy_check:
        pooled = results["summary"].get("all") or next(iter(results["summary"].values()), {})
        lines += ["Greedy: every output compared token by token with plain `generate` on the same prompt.", "",
                  "| method | identical outputs |", "|---|---|"]
        for name, n in pooled.items():
            if n["greedy_checked"]:
                lines.append(f"| {name} | {n['greedy_matches']}/{n['greedy_checked']} "
                             f"({n['greedy_matches'] / n['greedy_checked']:.1%}) |")
        lines.append("")
        if results["mismatches"]:
            lines += [("First differences (top-2 logit gap of the target there: a gap near 0 is a numeric near-tie, "
                      "a large gap is a bug):"), "", ("| prompt | method | position | plain token | method token "
                      "| top-2 logit gap |"), "|---|---|---|---|---|---|"]
            lines += [f"| {m['uid']} | {m['method']} | {m['position']} | {m['plain_token']} | {m['method_token']} "
                      f"| {m['logit_gap']:.4f} |" for m in results["mismatches"]]
            lines.append("")
    if results["sampling_test"]:
        t = config.sampling_test
        lines += [(f"Sampling (temperature {t.temperature}, top-p {t.top_p}): {t.num_samples} samples of {t.num_tokens} "
                  f"tokens per prefix ({'prompt + plain greedy output up to a likely copy, ' if t.continue_output else ''}last "
                   f"{t.prefix_tokens} tokens) and method, compared with plain sampling per position and for the first two "
                  f"tokens jointly (two-sample chi-square); p-values Bonferroni-combined; pass if >= {t.alpha}."), "",
                  ("| method | drafted tokens verified | informative / all tests | min p | combined p "
                  "| max TV distance (binned) | result |"), "|---|---|---|---|---|---|---|"]
        lines += [f"| {s['method']} | {_fmt(s['drafted_tokens_verified'], 'd')} | "
                  f"{s['informative_tests']}/{s['num_tests']} | {s['min_p_value']:.3g} | "
                  f"{s['combined_p_value']:.3g} | {s['max_tv_distance']:.3f} | "
                  f"{'**FAIL**' if s['verdict'] == 'FAIL' else s['verdict']} |" for s in results["sampling_test"]]
        lines.append("")
    return lines


def _prompts_section(meta: dict) -> list[str]:
    lines = ["## Prompts used", "",
             ("Evaluation prompts only (no training text is read by this suite; drafts/heads must not be trained on "
             "them)."), ""]
    for dataset, uids in meta.get("prompts", {}).items():
        lines.append(f"- **{dataset}** ({len(uids)}): " + ", ".join(u.split("/", 1)[1] for u in uids))
    if meta.get("sampling_prefixes"):
        lines.append(f"- sampling-test prefixes: {', '.join(meta['sampling_prefixes'])}")
    return lines + [""]


def render_markdown(results: dict, config: EvalConfig, plots: list[str]) -> str:
    meta = results["meta"]
    d = config.decoding
    decoding = "greedy" if not d.do_sample else f"sampling (temperature {d.temperature}, top-p {d.top_p})"
    lines = ["# hf_specdec evaluation", "",
             f"- target: `{config.target.name}`; draft: `{config.draft.name if config.draft else 'none'}`",
             (f"- {decoding}, {d.max_new_tokens} new tokens; device: {meta.get('device')}, threads: "
             f"{meta.get('threads')}, processes: {meta.get('processes')}, optimize_for_cpu: {meta.get('cpu_optimized')}"),
             f"- torch {meta.get('torch')}, transformers {meta.get('transformers')}, hf_specdec {meta.get('hf_specdec')}",
             f"- methods interleaved per prompt (order rotated), after a {config.warmup_tokens}-token warm-up of each",
             ""]
    if meta.get("skipped"):
        lines += ["Skipped methods:", ""] + [f"- `{k}`: {v}" for k, v in meta["skipped"].items()] + [""]
    lines += ["## Speed", ""]
    for group, methods in results["summary"].items():
        if "/" not in group:
            lines += _speed_table(group, methods, config)
    lines += _category_table(results["summary"], config)
    lines += _lossless_sections(results, config)
    if plots:
        lines += ["## Plots", ""] + [f"![{name}]({name})" for name in plots] + [""]
    lines += _prompts_section(meta)
    return "\n".join(lines)
