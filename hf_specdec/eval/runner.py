"""Timing runs with resume: every finished (prompt, method) pair is appended to a JSONL file at once, and a
restarted run skips the pairs already there.

Per prompt, every method runs in one process, one after the other, in an order rotated by the prompt's index, so
slow drifts of the machine (other jobs, thermal state) hit every method alike. Each method first runs once on a
warm-up prompt.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .config import EvalConfig, MethodSpec
from .loading import EvalPrompt
from .methods import MethodFactory

RECORDS_GLOB = "records*.jsonl"


class RecordStore:
    """Append-only JSONL records under `out_dir`; one file per process (`records-<rank>.jsonl`), read back all
    together, so a run restarted with another number of processes still finds every finished pair."""

    def __init__(self, out_dir: str | Path, rank: int = 0) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.out_dir / f"records-{rank}.jsonl"
        _end_torn_line(self.path)
        self.records = read_records(self.out_dir)
        self._index = {record_key(r): r for r in self.records}

    def done(self, kind: str, uid: str, method: str) -> bool:
        return (kind, uid, method) in self._index

    def find(self, kind: str, uid: str, method: str) -> dict | None:
        return self._index.get((kind, uid, method))

    def append(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
        self.records.append(record)
        self._index[record_key(record)] = record


def _end_torn_line(path: Path) -> None:
    """A run killed mid-write leaves a line without its newline: close it, so the next record starts afresh (the
    torn line itself is ignored when read)."""
    if path.is_file() and path.stat().st_size:
        with path.open("rb+") as handle:
            handle.seek(-1, 2)
            if handle.read(1) != b"\n":
                handle.write(b"\n")


def record_key(record: dict) -> tuple[str, str, str]:
    return record["kind"], record["uid"], record["method"]


def read_records(out_dir: str | Path) -> list[dict]:
    """Every record under `out_dir`, later duplicates dropped; a torn last line (a killed run) is ignored."""
    records, seen = [], set()
    for path in sorted(Path(out_dir).glob(RECORDS_GLOB)):
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record_key(record) not in seen:
                seen.add(record_key(record))
                records.append(record)
    return records


def _synchronize(device: torch.device) -> None:
    if device.type != "cpu" and hasattr(torch, "accelerator"):
        torch.accelerator.synchronize(device)


def timed_generate(model: PreTrainedModel, input_ids: torch.LongTensor, kwargs: dict, gen_kwargs: dict) -> dict:
    """One `generate` call; returns wall time, new tokens and the strategy's stats (None for built-in methods)."""
    _synchronize(model.device)
    start = time.perf_counter()
    output = model.generate(input_ids, **gen_kwargs, **kwargs)
    _synchronize(model.device)
    seconds = time.perf_counter() - start
    new = output[0, input_ids.shape[1]:].tolist()
    strategy = kwargs.get("assistant_model")
    stats = getattr(strategy, "last_stats", None)
    return {"seconds": seconds, "new_tokens": len(new), "tokens_per_s": len(new) / seconds, "output": new,
            "stats": stats.to_dict() if stats is not None else None}


def encode(tokenizer: PreTrainedTokenizerBase, text: str, device: torch.device) -> torch.LongTensor:
    """`[1, n]` ids of `text`, exactly as plain `generate` would get them."""
    return tokenizer(text, return_tensors="pt").input_ids.to(device)


def rotated(methods: list[MethodSpec], index: int) -> list[MethodSpec]:
    shift = index % len(methods)
    return methods[shift:] + methods[:shift]


def warm_up(model, tokenizer, factory: MethodFactory, methods: list[MethodSpec], prompt: EvalPrompt,
            config: EvalConfig) -> None:
    input_ids = encode(tokenizer, prompt.prompt.text, model.device)
    gen_kwargs = {**config.decoding.generate_kwargs(), "max_new_tokens": config.warmup_tokens}
    for spec in methods:
        timed_generate(model, input_ids, factory.generate_kwargs(spec), gen_kwargs)


def run_speed(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, factory: MethodFactory,
              prompts: list[EvalPrompt], methods: list[MethodSpec], config: EvalConfig, store: RecordStore,
              rank: int = 0, show_progress: bool = True) -> int:
    """Times every method on every prompt not yet in `store`; returns how many (prompt, method) pairs ran."""
    todo = [p for p in prompts if any(not store.done("speed", p.uid, m.name) for m in methods)]
    if not todo:
        return 0
    warm_up(model, tokenizer, factory, methods, todo[0], config)
    gen_kwargs = config.decoding.generate_kwargs()
    ran = 0
    for prompt in tqdm(todo, desc=f"speed [rank {rank}]", position=rank, disable=not show_progress):
        input_ids = encode(tokenizer, prompt.prompt.text, model.device)
        for spec in rotated(methods, prompt.index):
            if store.done("speed", prompt.uid, spec.name):
                continue
            if config.decoding.do_sample:
                torch.manual_seed(config.seed + prompt.index)
            result = timed_generate(model, input_ids, factory.generate_kwargs(spec), gen_kwargs)
            store.append({"kind": "speed", "uid": prompt.uid, "method": spec.name, "type": spec.type,
                          "dataset": prompt.dataset, "category": prompt.category,
                          "prompt_tokens": input_ids.shape[1], "rank": rank, **result})
            ran += 1
        if config.greedy_check and not config.decoding.do_sample:
            check_prompt(model, input_ids, prompt, methods, config.plain_name, store)
    return ran


# ---- greedy losslessness ------------------------------------------------------------------------------------------
def first_difference(reference: list[int], output: list[int]) -> int | None:
    """First index where the two token lists differ (a strict prefix differs at its end), or None if equal."""
    for i, (a, b) in enumerate(zip(reference, output)):
        if a != b:
            return i
    return None if len(reference) == len(output) else min(len(reference), len(output))


@torch.no_grad()
def top2_gap(model: PreTrainedModel, prefix_ids: torch.LongTensor) -> dict[str, float | int]:
    """The target's two best next tokens after `prefix_ids` (`[1, n]`) and their logit gap (one full forward)."""
    logits = model(input_ids=prefix_ids).logits[0, -1].float()  # [V]
    top = logits.topk(2)
    return {"top1": int(top.indices[0]), "top2": int(top.indices[1]),
            "logit_gap": float(top.values[0] - top.values[1])}


def check_prompt(model, input_ids: torch.LongTensor, prompt: EvalPrompt, methods: Iterable[MethodSpec],
                 plain_name: str, store: RecordStore) -> None:
    """Compares each method's greedy output with plain's; records a "match" per pair, with the position of the
    first difference and the target's top-2 logit gap there when they differ."""
    plain = store.find("speed", prompt.uid, plain_name)
    if plain is None:
        return
    for spec in methods:
        record = store.find("speed", prompt.uid, spec.name)
        if spec.name == plain_name or record is None or store.done("match", prompt.uid, spec.name):
            continue
        position = first_difference(plain["output"], record["output"])
        entry = {"kind": "match", "uid": prompt.uid, "method": spec.name, "dataset": prompt.dataset,
                 "category": prompt.category, "match": position is None, "position": position}
        if position is not None:
            prefix = torch.tensor([plain["output"][:position]], dtype=input_ids.dtype, device=input_ids.device)
            entry.update(top2_gap(model, torch.cat([input_ids, prefix], dim=-1)))
            entry["plain_token"] = _at(plain["output"], position)
            entry["method_token"] = _at(record["output"], position)
        store.append(entry)


def _at(tokens: list[int], position: int) -> int | None:
    return tokens[position] if position < len(tokens) else None
