"""Batched speculative decoding vs plain batched generate on the real target.

SmolLM2-135M-Instruct, fp32, CPU, `optimize_for_cpu` on every method; HumanEval prompts and MT-Bench prose prompts
(chat template), 128 new tokens, greedy. For each batch size the prompts are cut into batches (left padding, as for
plain batched generate); on each batch every method runs in turn (order rotated per batch) after a warm-up. Tokens/s
count the whole batch's new tokens (up to each row's EOS); every row is checked against plain batched generate.

    python benchmarks/batch_benchmark.py --code 32 --prose 32 --batch-sizes 1 4 8 16     # the issue's full run
    python benchmarks/batch_benchmark.py --code 8 --prose 8 --batch-sizes 4               # quick look
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import torch

import hf_specdec
from hf_specdec.cpu_speedups import optimize_for_cpu
from hf_specdec.data import load_humaneval, load_mtbench_prose
from hf_specdec.models import load_smollm2, load_smollm2_draft, load_smollm2_tokenizer

HYDRA = Path("heads") / "hydra-smollm2-135m"
EAGLE = Path("heads") / "eagle-smollm2-135m"


def method_table(model) -> dict:
    """Name -> a function returning generate kwargs (a fresh strategy per call)."""
    draft = load_smollm2_draft(model)
    optimize_for_cpu(draft)
    hydra = hf_specdec.AutoStrategy.from_pretrained(HYDRA) if HYDRA.is_dir() else None
    eagle = hf_specdec.AutoStrategy.from_pretrained(EAGLE) if EAGLE.is_dir() else None
    table = {
        "plain": lambda: {},
        "ngram": lambda: {"assistant_model": hf_specdec.NGramStrategy()},
        "nasd": lambda: {"assistant_model": hf_specdec.NASDStrategy()},
        "draft": lambda: {"assistant_model": hf_specdec.DraftModelStrategy(draft)},
    }
    if hydra is not None:
        table["hydra"] = lambda: {"assistant_model": hydra}  # one strategy object: its state is per call
    if eagle is not None:
        table["eagle"] = lambda: {"assistant_model": eagle}
    return table


def new_tokens(sequences: torch.LongTensor, prompt_length: int, eos: int) -> list[list[int]]:
    """Each row's new tokens up to and including its first EOS."""
    rows = []
    for row in sequences[:, prompt_length:].tolist():
        rows.append(row[: row.index(eos) + 1] if eos in row else row)
    return rows


def run_batch(model, batch, kwargs: dict, max_new_tokens: int, eos: int) -> dict:
    start = time.perf_counter()
    out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, **kwargs)
    seconds = time.perf_counter() - start
    strategy = kwargs.get("assistant_model")
    rows = new_tokens(out, batch["input_ids"].shape[1], eos)
    row_stats = None if strategy is None else (strategy.last_stats.rows or [strategy.last_stats])
    lengths = None if row_stats is None else [row.mean_accepted_length for row in row_stats]
    plain_steps = None if row_stats is None else sum(r.verify_steps - r.drafting_steps for r in row_stats)
    steps = None if row_stats is None else sum(r.verify_steps for r in row_stats)
    return {"seconds": seconds, "tokens": sum(len(r) for r in rows), "outputs": rows, "row_accepted_lengths": lengths,
            "undrafted_steps": plain_steps, "row_steps": steps}


def benchmark(model, tokenizer, prompts: dict, methods: dict, batch_sizes: list[int], max_new_tokens: int) -> list:
    eos = int(model.generation_config.eos_token_id if not isinstance(model.generation_config.eos_token_id, list)
              else model.generation_config.eos_token_id[0])
    warm = tokenizer([next(iter(prompts.values()))[0].text], return_tensors="pt", padding=True)
    for make in methods.values():
        run_batch(model, warm, make(), 8, eos)
    records, names = [], list(methods)
    for dataset, items in prompts.items():
        for size in batch_sizes:
            for index in range(0, len(items), size):
                texts = [p.text for p in items[index : index + size]]
                batch = tokenizer(texts, return_tensors="pt", padding=True)
                turn = (index // size) % len(names)
                for name in names[turn:] + names[:turn]:
                    result = run_batch(model, batch, methods[name](), max_new_tokens, eos)
                    records.append({"dataset": dataset, "batch_size": size, "batch": index // size, "method": name,
                                    **result})
            print(f"[{dataset} B={size}] done", flush=True)
    return records


def report(records: list) -> None:
    groups = defaultdict(list)
    for record in records:
        groups[(record["dataset"], record["batch_size"])].append(record)
    for (dataset, size), items in groups.items():
        plain = {r["batch"]: r for r in items if r["method"] == "plain"}
        plain_seconds = sum(r["seconds"] for r in plain.values())
        print(f"\n## {dataset}, batch size {size}\n")
        print("| method | tokens/s | wall s | speedup vs plain batched | mean accepted length per row "
              "| row steps without a draft | identical rows |")
        print("|---|---|---|---|---|---|---|")
        for method in dict.fromkeys(r["method"] for r in items):
            mine = [r for r in items if r["method"] == method]
            seconds = sum(r["seconds"] for r in mine)
            tokens = sum(r["tokens"] for r in mine)
            lengths = [x for r in mine for x in (r["row_accepted_lengths"] or [])]
            same = sum(a == b for r in mine for a, b in zip(r["outputs"], plain[r["batch"]]["outputs"]))
            total = sum(len(r["outputs"]) for r in mine)
            mal = f"{sum(lengths) / len(lengths):.2f}" if lengths else "-"
            steps = sum(r["row_steps"] or 0 for r in mine)
            undrafted = f"{sum(r['undrafted_steps'] or 0 for r in mine) / steps:.0%}" if steps else "-"
            print(f"| {method} | {tokens / seconds:.1f} | {seconds:.1f} | {plain_seconds / seconds:.2f}x | {mal} "
                  f"| {undrafted} | {same}/{total} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code", type=int, default=32)
    parser.add_argument("--prose", type=int, default=32)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--methods", nargs="+", default=None, help="default: all (plain, ngram, nasd, draft, hydra, eagle)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="also write every record as JSON lines here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model, tokenizer = load_smollm2(), load_smollm2_tokenizer()
    tokenizer.padding_side = "left"
    optimize_for_cpu(model)
    table = method_table(model)
    methods = {name: table[name] for name in (args.methods or table)}
    prompts = {"code": load_humaneval(limit=args.code), "prose": load_mtbench_prose(tokenizer)[: args.prose]}
    prompts = {name: items for name, items in prompts.items() if items}
    records = benchmark(model, tokenizer, prompts, methods, args.batch_sizes, args.max_new_tokens)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("".join(json.dumps(r) + "\n" for r in records))
    report(records)


if __name__ == "__main__":
    main()
