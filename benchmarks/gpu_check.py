"""One prepared GPU check: every strategy, greedy, against plain `generate` (identical outputs?) and timed against
plain decoding, Transformers' prompt lookup and Transformers' assisted generation with the committed draft, on an
accelerator in bf16. Timings are synchronized (`torch.cuda.synchronize`) around every call; methods are interleaved
per prompt after a warm-up.

    python benchmarks/gpu_check.py                          # CUDA, bf16, SmolLM2-135M-Instruct, 4 code + 4 prose
    python benchmarks/gpu_check.py --device cpu --dtype float32 --tiny --code 1 --prose 1   # a smoke run anywhere

bf16 note: a multi-token verify forward and a one-token decode step may round differently, so a near-tie can flip
greedy argmax against plain decoding; the table counts identical outputs and says where the first differs.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import hf_specdec

HEADS = Path(__file__).resolve().parent.parent / "heads"


def synchronized(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def load(args) -> tuple:
    """(target, tokenizer, committed draft or None, strategy folders) on the device in the dtype asked for."""
    dtype, device = getattr(torch, args.dtype), torch.device(args.device)
    if args.tiny:
        from hf_specdec.tiny_models import byte_tokenizer, tiny_random_llama

        model = tiny_random_llama(257, eos_token_id=256, pad_token_id=256, bos_token_id=0, hidden=64, layers=2)
        draft = tiny_random_llama(257, eos_token_id=256, pad_token_id=256, bos_token_id=0, hidden=32, layers=1, seed=1)
        return model.to(device, dtype), byte_tokenizer(), draft.to(device, dtype), []
    from hf_specdec.models import load_smollm2, load_smollm2_draft, load_smollm2_tokenizer

    model = load_smollm2().to(device, dtype).eval()
    draft = load_smollm2_draft(model).to(device, dtype)
    folders = [folder for folder in sorted(HEADS.iterdir()) if (folder / "config.json").is_file()]
    return model, load_smollm2_tokenizer(), draft, folders


def methods(model, draft, folders) -> dict:
    """Name -> a function returning generate kwargs."""
    table = {
        "plain": lambda: {},
        "transformers-prompt-lookup": lambda: {"prompt_lookup_num_tokens": 10},
        "ngram": lambda: {"assistant_model": hf_specdec.NGramStrategy()},
        "nasd": lambda: {"assistant_model": hf_specdec.NASDStrategy()},
        "auto": lambda: {"assistant_model": hf_specdec.AutoStrategy.for_model(model)},
    }
    if draft is not None:
        table["transformers-assisted"] = lambda: {"assistant_model": draft}
        table["draft"] = lambda: {"assistant_model": hf_specdec.DraftModelStrategy(draft)}
    for folder in folders:
        if folder.name.startswith("draft"):
            continue
        strategy = hf_specdec.AutoStrategy.from_pretrained(folder)
        table[folder.name.split("-")[0]] = lambda strategy=strategy: {"assistant_model": strategy}
    return table


def prompts(args, tokenizer) -> list[str]:
    if args.tiny:
        return ["def add(a, b):\n    return a + b\n\ndef add(a, b):"] * (args.code + args.prose)
    from hf_specdec.data import load_humaneval, load_mtbench_prose

    return ([p.text for p in load_humaneval(args.code, start=100)] +
            [p.text for p in load_mtbench_prose(tokenizer)[10 : 10 + args.prose]])


def run(model, tokenizer, table: dict, texts: list[str], max_new_tokens: int) -> dict:
    device = model.device
    results = {name: {"seconds": [], "identical": 0, "first_difference": []} for name in table}
    warm = tokenizer(texts[0], return_tensors="pt").input_ids.to(device)
    for make in table.values():
        model.generate(warm, max_new_tokens=8, do_sample=False, **make())
    for index, text in enumerate(texts):
        ids = tokenizer(text, return_tensors="pt").input_ids.to(device)
        names = list(table)
        names = names[index % len(names):] + names[: index % len(names)]
        outputs = {}
        for name in names:
            start = synchronized(device)
            out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, **table[name]())
            results[name]["seconds"].append(synchronized(device) - start)
            outputs[name] = out[0, ids.shape[1]:].tolist()
        for name, output in outputs.items():
            plain = outputs["plain"]
            same = output == plain
            results[name]["identical"] += same
            if not same:
                results[name]["first_difference"].append(next((i for i, (a, b) in enumerate(zip(output, plain))
                                                              if a != b), min(len(output), len(plain))))
        print(f"prompt {index + 1}/{len(texts)} done", flush=True)
    return results


def print_table(results: dict, device: str, dtype: str, prompts_count: int) -> None:
    plain = sum(results["plain"]["seconds"])
    lookup = sum(results["transformers-prompt-lookup"]["seconds"])
    assisted = sum(results["transformers-assisted"]["seconds"]) if "transformers-assisted" in results else None
    print(f"\n## GPU check: {device}, {dtype}, {prompts_count} prompts\n")
    print("| method | wall s | vs plain | vs Transformers' lookup | vs Transformers' assisted | identical "
          "| first difference at |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        seconds = sum(r["seconds"])
        vs_assisted = f"{assisted / seconds:.2f}x" if assisted else "-"
        where = statistics.median(r["first_difference"]) if r["first_difference"] else "-"
        print(f"| {name} | {seconds:.2f} | {plain / seconds:.2f}x | {lookup / seconds:.2f}x | {vs_assisted} "
              f"| {r['identical']}/{prompts_count} | {where} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--code", type=int, default=4)
    parser.add_argument("--prose", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--tiny", action="store_true", help="a tiny random model (a smoke run, no real weights)")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("No CUDA device here: run on a GPU machine, or pass --device cpu --dtype float32 --tiny "
                         "for a smoke run.")
    model, tokenizer, draft, folders = load(args)
    texts = prompts(args, tokenizer)
    results = run(model, tokenizer, methods(model, draft, folders), texts, args.max_new_tokens)
    print_table(results, args.device, args.dtype, len(texts))


if __name__ == "__main__":
    main()
