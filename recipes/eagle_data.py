"""Training data for an EAGLE-3 drafter: token sequences with the target's features, teacher-forced.

Every sequence costs one target forward (no generation): it keeps the hidden states of the chosen auxiliary layers
(EAGLE-3's low/mid/high features, `[L, num_aux * H]`) and the target's final normed hidden state (`[L, H]`, from
which the training loss reads the target's whole next-token distribution over the draft vocabulary). Sources:

- `code`: consecutive chunks of Python's standard-library sources (real code, free on every machine);
- `docs`: the Python documentation's topic pages shipped in the stdlib (`pydoc_data.topics`: English prose);
- `selfdistill_<name>`: the target's own greedy answers to the recipes' prompts (never the evaluation prompts),
  generated once by `self_distill.py` (its cache is shared), then teacher-forced like the rest.

Features are stored in shards under the cache folder (bfloat16; names carry a digest of their inputs), so a rerun,
or another process of a sharded run, reuses what was computed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from self_distill import text_chunks  # recipes/ is on sys.path (train_eagle.py puts it there)

SHARD_SEQUENCES = 64


@dataclass
class FeatureSequence:
    """One teacher-forced sequence: ids `[L]`, how many of them are prompt, auxiliary features `[L, A * H]` and the
    final normed hidden state `[L, H]` (row t read ids[: t + 1])."""

    ids: torch.LongTensor
    prompt_len: int
    aux: torch.Tensor
    last: torch.Tensor
    source: str = ""


def docs_chunks(tokenizer, num_tokens: int, seq_len: int) -> list[list[int]]:
    """English prose: the stdlib's documentation topics (`pydoc_data.topics`), in `seq_len`-token chunks."""
    from pydoc_data.topics import topics

    return text_chunks(tokenizer, (topics[name] for name in sorted(topics)), num_tokens, seq_len)


@torch.no_grad()
def teacher_forced_features(model, ids: list[int], layer_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """One target forward over `ids`: (auxiliary features `[L, A * H]`, final normed hidden `[L, H]`), bfloat16.

    Layer id i is the input of decoder layer i (Transformers' `hidden_states[i]`), the convention vLLM and
    `speculators` use for `eagle_aux_hidden_state_layer_ids`."""
    device = next(model.parameters()).device
    out = model.model(input_ids=torch.tensor([ids], device=device), output_hidden_states=True)
    aux = torch.cat([out.hidden_states[i][0] for i in layer_ids], dim=-1)
    return aux.to(torch.bfloat16).cpu(), out.last_hidden_state[0].to(torch.bfloat16).cpu()


def feature_shards(model, sequences: list[tuple[list[int], int]], layer_ids: list[int], cache: Path, name: str,
                   rank: int = 0, world: int = 1) -> list[FeatureSequence]:
    """Teacher-forced features of (ids, prompt_len) sequences, cached shard by shard.

    With `world` > 1 processes, shard s is computed by process s % world only; every process then loads them all
    (call `accelerator.wait_for_everyone()` in between)."""
    out: list[FeatureSequence] = []
    starts = list(range(0, len(sequences), SHARD_SEQUENCES))
    for number, start in enumerate(tqdm(starts, desc=f"features {name}", disable=rank != 0)):
        part = sequences[start : start + SHARD_SEQUENCES]
        digest = hashlib.sha1(json.dumps([part, layer_ids]).encode()).hexdigest()[:12]
        path = cache / f"eagle3_{name}_{number:04d}_{digest}.pt"
        if not path.exists() and number % world == rank:
            rows = []
            for ids, prompt_len in part:
                aux, last = teacher_forced_features(model, ids, layer_ids)
                rows.append({"ids": torch.tensor(ids, dtype=torch.int32), "prompt_len": prompt_len,
                             "aux": aux, "last": last})
            torch.save(rows, path.with_suffix(".tmp"))
            path.with_suffix(".tmp").rename(path)  # a half-written shard never looks finished
        if path.exists():
            out += [FeatureSequence(row["ids"].long(), row["prompt_len"], row["aux"], row["last"], name)
                    for row in torch.load(path)]
    return out
