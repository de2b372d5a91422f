"""PNG plots of a summary, drawn on matplotlib's Agg canvas (no display needed; pyplot's global backend is left
alone, so importing this in a notebook changes nothing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .config import EvalConfig


def _speedup(numbers: dict[str, Any], baseline: str) -> dict[str, float] | None:
    return numbers.get(f"speedup_vs_{baseline}")


def plot_speedup_by_group(summary: dict, config: EvalConfig, path: Path) -> Path:
    """Grouped bars: speedup vs plain (total time ratio) per prompt group and method, whiskers = per-prompt p25-p75."""
    groups = list(summary)
    methods = [m.name for m in config.methods if m.name != config.plain_name
               and any(m.name in summary[g] for g in groups)]
    fig, ax = _subplots(min(18.0, 4.0 + 0.25 * len(groups) * max(1, len(methods))), 4.5)
    width = 0.8 / max(1, len(methods))
    for i, method in enumerate(methods):
        xs, ys, low, high = [], [], [], []
        for j, group in enumerate(groups):
            s = _speedup(summary[group].get(method, {}), config.plain_name)
            if s:
                xs.append(j + (i - (len(methods) - 1) / 2) * width)
                ys.append(s["speedup"])
                low.append(max(0.0, s["speedup"] - s["p25"]))
                high.append(max(0.0, s["p75"] - s["speedup"]))
        ax.bar(xs, ys, width, yerr=[low, high], capsize=2, label=method)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right")
    ax.set_ylabel(f"speedup vs {config.plain_name}")
    ax.set_title("Speedup by prompt group (bars: total time ratio; whiskers: per-prompt p25-p75)")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)


def plot_accepted_lengths(summary: dict, group: str, path: Path) -> Path:
    """Histogram of tokens emitted per target forward, one step-line per strategy."""
    fig, ax = _subplots(6.5, 4)
    plotted = False
    for method, numbers in summary.get(group, {}).items():
        lengths = numbers.get("accepted_lengths") or []
        if lengths:
            bins = [b - 0.5 for b in range(1, max(lengths) + 2)]
            ax.hist(lengths, bins=bins, histtype="step", density=True, linewidth=1.5, label=method)
            plotted = True
    ax.set_xlabel("tokens emitted per target forward (accepted + 1)")
    ax.set_ylabel("fraction of verify steps")
    ax.set_title(f"Accepted lengths ({group})")
    if plotted:
        ax.legend(fontsize="small")
    return _save(fig, path)


def plot_speedup_vs_k(summary: dict, group: str, config: EvalConfig, path: Path) -> Path:
    """Speedup vs draft length K: one line per `sweep` label, lone points for other strategies."""
    fig, ax = _subplots(6.5, 4)
    lines: dict[str, list[tuple[int, float]]] = {}
    for spec in config.methods:
        numbers = summary.get(group, {}).get(spec.name)
        k = spec.options.get("num_speculative_tokens", _default_k(spec))
        s = _speedup(numbers or {}, config.plain_name)
        if not spec.is_strategy or s is None or k is None:
            continue
        lines.setdefault(spec.sweep or spec.name, []).append((k, s["speedup"]))
    for label, points in lines.items():
        points.sort()
        ax.plot([k for k, _ in points], [y for _, y in points], marker="o", label=label)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_xlabel("K (num_speculative_tokens; starting K for adaptive schedules)")
    ax.set_ylabel(f"speedup vs {config.plain_name}")
    ax.set_title(f"Speedup vs K ({group})")
    if lines:
        ax.legend(fontsize="small")
    return _save(fig, path)


def _default_k(spec) -> int | None:
    from .methods import strategy_class

    try:
        return strategy_class(spec).config_class().num_speculative_tokens
    except (TypeError, ValueError):
        return None


def _subplots(width: float, height: float):
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def make_plots(summary: dict, config: EvalConfig, out_dir: Path) -> list[Path]:
    pooled = "all" if "all" in summary else next(iter(summary), None)
    if pooled is None:
        return []
    return [plot_speedup_by_group(summary, config, out_dir / "speedup_by_category.png"),
            plot_accepted_lengths(summary, pooled, out_dir / "accepted_lengths.png"),
            plot_speedup_vs_k(summary, pooled, config, out_dir / "speedup_vs_k.png")]
