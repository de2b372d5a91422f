"""`hf-specdec demo`: a few code and prose prompts on the packaged default target, plain `generate` vs Transformers'
prompt lookup vs each hf_specdec strategy available, interleaved per prompt; prints a speedup table, writes a PNG.

A minute or three on a 2-core CPU. `benchmarks/core_benchmark.py` and `hf_specdec.eval` are the long versions.
With 2 + 2 prompts one run's speedups move by tenths between runs (Transformers' prompt lookup most: its drafts
either hit long copies or cost a wasted forward); more prompts (`--code`, `--prose`) steady them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from rich import box
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from .benchmarking import run_once, summarise
from .hub.folders import find_committed

PLAIN, BUILTIN = "plain", "transformers-lookup"
# Committed strategy folders (heads and their fastest measured settings), found beside the package or under cwd.
HEAD_FOLDERS = {"eagle": Path("heads") / "eagle-smollm2-135m", "hydra": Path("heads") / "hydra-smollm2-135m",
                "medusa": Path("heads") / "medusa-smollm2-135m"}
TINY_PROMPTS = {  # for models other than the packaged target
    "code": ["def add(a, b):\n    return a + b\n\ndef add3(a, b, c):\n", "for i in range(10):\n    print(i)\n"],
    "prose": ["Write a short story about a robot who learns to paint.", "Describe a rainy day in a city."],
}


@dataclass
class DemoPrompt:
    dataset: str
    name: str
    input_ids: torch.LongTensor


def demo_methods(target) -> dict[str, Callable[[], dict]]:
    """name -> generate kwargs; a fresh strategy per call keeps prompts independent. Heads join when the committed
    folders exist and were made for this target."""
    import hf_specdec
    from .hub.publishing import made_for_model

    methods: dict[str, Callable[[], dict]] = {
        PLAIN: lambda: {},
        BUILTIN: lambda: {"prompt_lookup_num_tokens": 10},
        "ngram": lambda: {"assistant_model": hf_specdec.NGramStrategy()},
        "nasd": lambda: {"assistant_model": hf_specdec.NASDStrategy()},
    }
    for name, folder in HEAD_FOLDERS.items():
        folder = find_committed(folder)
        if folder is None or not made_for_model(folder, target):
            continue
        strategy = hf_specdec.AutoStrategy.from_pretrained(folder)
        methods[name] = lambda strategy=strategy: {"assistant_model": strategy}
    return methods


def demo_prompts(bundle, code: int, prose: int) -> list[DemoPrompt]:
    """HumanEval and MT-Bench prose prompts for the packaged target; short fixed texts for any other model."""
    if bundle.target_name == "SmolLM2-135M-Instruct":
        from .data import load_humaneval, load_mtbench_prose

        texts = {"code": [(p.id, p.text, False) for p in load_humaneval(limit=code)],
                 "prose": [(p.id, p.text, False) for p in load_mtbench_prose(bundle.tokenizer)[:prose]]}
    else:
        texts = {"code": [(f"code-{i}", t, False) for i, t in enumerate(TINY_PROMPTS["code"][:code])],
                 "prose": [(f"prose-{i}", t, True) for i, t in enumerate(TINY_PROMPTS["prose"][:prose])]}
    prompts = []
    for dataset, items in texts.items():
        for name, text, chat in items:
            ids = bundle.encode(text) if chat else bundle.tokenizer(text, return_tensors="pt").input_ids
            prompts.append(DemoPrompt(dataset, name, ids.to(bundle.target.device)))
    return prompts


def run_demo(bundle, *, code: int = 2, prose: int = 2, max_new_tokens: int = 96, png: Path | None = None,
             console: Console | None = None) -> dict[str, dict]:
    """Times every method on every prompt (order rotated per prompt, after a warm-up); returns the summaries."""
    console = console or Console()
    methods = demo_methods(bundle.target)
    prompts = demo_prompts(bundle, code, prose)
    names = list(methods)
    rows = []
    # A live bar on a terminal; plain lines otherwise (a log, CI), where a transient bar would print nothing.
    with Progress(console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task("warm-up", total=len(names) * (len(prompts) + 1))
        _log(console, f"warm-up: {len(names)} methods ({', '.join(names)})")
        for name in names:
            run_once(bundle.target, prompts[0].input_ids, 8, methods[name]())
            progress.advance(task)
        for index, prompt in enumerate(prompts):
            progress.update(task, description=f"{prompt.dataset} {prompt.name}")
            _log(console, f"prompt {index + 1}/{len(prompts)}: {prompt.dataset} {prompt.name}")
            for name in names[index % len(names):] + names[: index % len(names)]:
                result = run_once(bundle.target, prompt.input_ids, max_new_tokens, methods[name]())
                rows.append({"dataset": prompt.dataset, "prompt": prompt.name, "method": name, **result})
                progress.advance(task)
    report = {dataset: summarise([r for r in rows if r["dataset"] == dataset])
              for dataset in dict.fromkeys(p.dataset for p in prompts)}
    console.print(speedup_table(report, bundle.target_name, max_new_tokens))
    if png is not None:
        plot_speedups(report, png, title=_plot_title(report, bundle.target_name, max_new_tokens))
        console.print(f"plot: {Path(png).resolve()}")
    return report


def _log(console: Console, text: str) -> None:
    if not console.is_terminal:
        console.print(text)
        console.file.flush()


def _plot_title(report: dict[str, dict], target_name: str, max_new_tokens: int) -> str:
    counts = ", ".join(f"{next(iter(s.values()))['prompts']} {dataset}" for dataset, s in report.items())
    same = all(s["identical_outputs"] == s["prompts"] for summary in report.values() for s in summary.values())
    check = "all outputs identical to plain generate" if same else "NOT all outputs identical to plain generate"
    return f"{target_name}, greedy, {max_new_tokens} new tokens, {counts} prompts\n{check}"


def speedup_table(report: dict[str, dict], target_name: str, max_new_tokens: int) -> Table:
    """One row per method; per dataset 'speedup vs plain (vs Transformers' prompt lookup)' and tokens per step."""
    datasets = list(report)
    table = Table(title=f"{target_name}, greedy, {max_new_tokens} new tokens",
                  caption="speedup vs plain generate (vs Transformers' prompt lookup); tok/step = mean accepted "
                          "length (tokens per target forward); same = outputs identical to plain",
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)  # fits 80 columns
    table.add_column("method", no_wrap=True)
    for dataset in datasets:
        table.add_column(dataset, justify="right", no_wrap=True)
        table.add_column("tok/step", justify="right", no_wrap=True, min_width=8)
    table.add_column("same", justify="right", no_wrap=True, min_width=4)
    for method in report[datasets[0]]:
        cells, identical, total = [method], 0, 0
        for dataset in datasets:
            s, builtin = report[dataset][method], report[dataset][BUILTIN]["wall_s"]
            mal = s["mean_accepted_length"]
            cells += [f"{s['speedup']:.2f}x ({builtin / s['wall_s']:.2f}x)", "-" if mal is None else f"{mal:.2f}"]
            identical, total = identical + s["identical_outputs"], total + s["prompts"]
        table.add_row(*cells, f"{identical}/{total}")
    return table


def plot_speedups(report: dict[str, dict], path: Path, title: str | None = None) -> None:
    """Grouped bars: speedup vs plain per method, one group per dataset; `title` says what was run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(next(iter(report.values())))
    width = 0.8 / len(report)
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(methods), 3.6))
    for i, (dataset, summary) in enumerate(report.items()):
        xs = [m + (i - (len(report) - 1) / 2) * width for m in range(len(methods))]
        ax.bar(xs, [summary[m]["speedup"] for m in methods], width, label=dataset)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(methods)), methods, rotation=20, ha="right")
    ax.set_ylabel("speedup vs plain generate")
    ax.legend()
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
