"""Train an EAGLE drafter on a frozen target, on CPU or, through accelerate, on more devices.

    python recipes/train_eagle.py --config recipes/eagle/smollm2_135m.yaml --out artifacts/eagle-smollm2-135m

Steps (the data is cached under `data.cache_dir`, and training checkpoints under `<out>/checkpoint`, so a rerun
resumes where the last one stopped):
1. the training text and the target's last hidden states: the Medusa recipe's (recipes/self_distill.py, the same
   `data:` settings share its cache): Python stdlib sources and the target's own greedy continuations of prompts
   that are never the evaluation prompts;
2. every sequence as drafter pairs (f_p, x_{p+1}) with label x_{p+2} (dropped inside prompts), cut into windows of
   `data.window` positions;
3. the drafter alone, with EAGLE-3's training-time test: it is unrolled `train.unroll` steps on its own outputs
   (`EagleDrafter.unrolled_states`, the slots it would see at run time), loss sum_j decay**j * CE_j over the
   tokens seen in training; per-depth top-1 on held-out sequences (full vocabulary) is logged.
The drafter is saved with its draft vocabulary cut to the tokens it was trained to predict.
"""

from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn
from tqdm import tqdm

from hf_specdec.cpu_speedups import optimize_for_cpu
from hf_specdec.eagle_drafter import EagleDrafter, EagleDrafterConfig
from hf_specdec.models import load_smollm2, load_smollm2_tokenizer

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the recipes' shared modules, also when this file is loaded by path (tests)
from self_distill import (TrainingSequence, heldout_split, resume, save_checkpoint, start_run,  # noqa: E402
                          training_sequences, warmup_cosine)


@dataclass
class Window:
    """Drafter pairs of one sequence window: features `[L, H]` (f_p), tokens `[L]` (x_{p+1}), labels `[L]`
    (x_{p+2}, -100 where none or inside the prompt)."""

    features: torch.Tensor
    tokens: torch.LongTensor
    labels: torch.LongTensor


def windows(sequences: list[TrainingSequence], indices, window: int) -> list[Window]:
    """The chosen sequences as drafter pairs, cut into windows of at most `window` positions."""
    out = []
    for i in indices:
        sequence = sequences[i]
        ids = torch.tensor(sequence.ids)
        pairs = min(sequence.hidden.shape[0], ids.numel() - 1)
        labels = torch.full((pairs,), -100, dtype=torch.long)
        labelled = torch.arange(pairs)
        labelled = labelled[(labelled + 2 < ids.numel()) & (labelled + 2 >= sequence.prompt_len)]
        labels[labelled] = ids[labelled + 2]
        for start in range(0, pairs, window):
            part = slice(start, min(start + window, pairs))
            if (labels[part] != -100).any():
                out.append(Window(sequence.hidden[part], ids[1:][part], labels[part]))
    return out


def batches(items: list[Window], positions: int, seed: int) -> list[list[int]]:
    """Windows grouped by length (little padding) into batches of about `positions` positions, in a seeded order."""
    order = sorted(range(len(items)), key=lambda i: items[i].tokens.numel())
    groups, current, width = [], [], 0
    for i in order:
        width = max(width, items[i].tokens.numel())
        if current and width * (len(current) + 1) > positions:
            groups.append(current)
            current, width = [], items[i].tokens.numel()
        current.append(i)
    groups += [current] if current else []
    random.Random(seed).shuffle(groups)
    return groups


def collate(items: list[Window]) -> tuple[torch.Tensor, torch.LongTensor, torch.LongTensor]:
    """Right-padded (features `[B, L, H]` float32, tokens `[B, L]`, labels `[B, L]`, -100 on padding)."""
    width = max(item.tokens.numel() for item in items)
    features = torch.zeros(len(items), width, items[0].features.shape[1])
    tokens = torch.zeros(len(items), width, dtype=torch.long)
    labels = torch.full((len(items), width), -100, dtype=torch.long)
    for b, item in enumerate(items):
        n = item.tokens.numel()
        features[b, :n], tokens[b, :n], labels[b, :n] = item.features.float(), item.tokens, item.labels
    return features, tokens, labels


class Borrowed(nn.Module):
    """The frozen target pieces the drafter reads (input embeddings, LM head), as submodules so accelerate moves
    them with the drafter."""

    def __init__(self, target: nn.Module) -> None:
        super().__init__()
        self.embed = nn.Embedding.from_pretrained(target.get_input_embeddings().weight.detach().clone(), freeze=True)
        self.head = nn.Linear(target.config.hidden_size, target.config.vocab_size, bias=False)
        self.head.weight = nn.Parameter(target.get_output_embeddings().weight.detach().clone(), requires_grad=False)

    def get_input_embeddings(self) -> nn.Module:
        return self.embed

    def get_output_embeddings(self) -> nn.Module:
        return self.head


class TrainingView(nn.Module):
    """The drafter plus what it borrows, as one module for `accelerator.prepare`. `vocab` (set by `train`) restricts
    the logits to the loss vocabulary."""

    def __init__(self, drafter: EagleDrafter, borrowed: Borrowed) -> None:
        super().__init__()
        self.drafter, self.borrowed = drafter, borrowed
        drafter.attach_target(borrowed)
        self.register_buffer("vocab", None, persistent=False)

    def forward(self, features, tokens, labels, steps: int, full_vocab: bool = False,
                ) -> list[tuple[torch.Tensor, torch.LongTensor]]:
        """For each of `steps` unrolled drafting steps: (logits `[n_j, V']`, labels `[n_j]`) at the n_j positions
        with a label that step j is valid at (p >= j). Only labelled positions go through the LM head."""
        weight = self.borrowed.head.weight if full_vocab or self.vocab is None else self.borrowed.head.weight[self.vocab]
        out = []
        for j, states in enumerate(self.drafter.unrolled_states(features, tokens, steps)):
            y = labels[:, j:]
            valid = y != -100
            out.append((states[:, j:][valid] @ weight.t().to(states.dtype), y[valid]))
        return out


def unrolled_loss(steps: list[tuple[torch.Tensor, torch.LongTensor]], decay: float,
                  ) -> tuple[torch.Tensor, list[float]]:
    """sum_j decay**j * CE_j, and each step's top-1 accuracy."""
    losses = [decay ** j * nn.functional.cross_entropy(logits.float(), y) for j, (logits, y) in enumerate(steps)]
    accuracy = [float((logits.argmax(-1) == y).float().mean()) if y.numel() else 0.0 for logits, y in steps]
    return torch.stack(losses).sum(), accuracy


@torch.no_grad()
def evaluate(view: TrainingView, items: list[Window], steps: int, positions: int = 512) -> list[float]:
    """Per-depth top-1 accuracy on `items`, over the full vocabulary."""
    hits, counts = torch.zeros(steps), torch.zeros(steps)
    device = next(view.parameters()).device
    for group in batches(items, positions, seed=0):
        features, tokens, labels = (t.to(device) for t in collate([items[i] for i in group]))
        for j, (logits, y) in enumerate(view(features, tokens, labels, steps, full_vocab=True)):
            hits[j] += (logits.argmax(-1) == y).sum().cpu()
            counts[j] += y.numel()
    return [round(float(h / max(c, 1)), 4) for h, c in zip(hits, counts)]


def loss_vocabulary(items: list[Window], vocab_size: int) -> tuple[torch.LongTensor, torch.LongTensor]:
    """(the token ids seen as labels, a map from token id to its column, -100 elsewhere)."""
    vocab = torch.unique(torch.cat([item.labels[item.labels != -100] for item in items]))
    remap = torch.full((vocab_size,), -100, dtype=torch.long)
    remap[vocab] = torch.arange(vocab.numel())
    return vocab, remap


def train(cfg: dict, view: TrainingView, train_set: list[Window], heldout: list[Window], out: Path, log,
          ) -> torch.LongTensor:
    """Trains `view.drafter` in place; returns the loss vocabulary (token ids)."""
    tc = cfg["train"]
    # mixed_precision "bf16": the matrix products in bfloat16 (about 2x faster on CPUs with AVX512-BF16)
    accelerator = Accelerator(gradient_accumulation_steps=tc["grad_accum"], mixed_precision=tc.get("mixed_precision", "no"))
    vocab, remap = loss_vocabulary(train_set, view.borrowed.head.weight.shape[0])
    log({"event": "loss_vocab", "size": int(vocab.numel())})
    view.vocab = vocab
    optimizer = torch.optim.AdamW([p for p in view.drafter.parameters() if p.requires_grad], lr=tc["lr"],
                                  weight_decay=tc["weight_decay"])
    epoch_batches = lambda epoch: batches(train_set, tc["batch_positions"], cfg["seed"] * 1000 + epoch)  # noqa: E731
    per_epoch = len(epoch_batches(0))
    total = per_epoch * tc["epochs"]
    scheduler = warmup_cosine(optimizer, tc["warmup_steps"], total)
    view, optimizer, scheduler = accelerator.prepare(view, optimizer, scheduler)
    step = resume(accelerator, out / "checkpoint", log)
    bar = tqdm(total=total, initial=step, desc="train EAGLE drafter")
    order = {}
    while step < total:
        epoch, offset = divmod(step, per_epoch)
        if epoch not in order:
            order = {epoch: epoch_batches(epoch)}
        group = order[epoch][offset]
        features, tokens, labels = (t.to(accelerator.device) for t in collate([train_set[i] for i in group]))
        labels = torch.where(labels == -100, labels, remap.to(labels.device)[labels.clamp_min(0)])
        with accelerator.accumulate(view):
            loss, accuracy = unrolled_loss(view(features, tokens, labels, tc["unroll"]), tc["step_decay"])
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", acc=" ".join(f"{a:.2f}" for a in accuracy))
        if step % tc["log_every"] == 0:
            log({"event": "train", "step": step, "epoch": epoch, "loss": round(loss.item(), 4),
                 "lr": scheduler.get_last_lr()[0], "train_top1": [round(a, 4) for a in accuracy]})
        if step % tc["eval_every"] == 0 and step < total:  # the last one is main's "final" record
            log({"event": "heldout", "step": step,
                 "top1_by_depth": evaluate(accelerator.unwrap_model(view), heldout, tc["unroll"])})
        if step % tc["checkpoint_every"] == 0 or step == total:
            save_checkpoint(accelerator, out / "checkpoint", step)
    bar.close()
    return vocab


def main() -> None:
    args, cfg, cache, log = start_run(__doc__, HERE / "eagle" / "smollm2_135m.yaml",
                                      Path("artifacts/eagle-smollm2-135m"))
    model, tokenizer = load_smollm2(), load_smollm2_tokenizer()
    optimize_for_cpu(model)
    model.requires_grad_(False)
    t0 = time.time()
    sequences = training_sequences(model, tokenizer, cfg, cache, cfg["seed"])
    log({"event": "data", "sequences": len(sequences), "tokens": sum(len(s.ids) for s in sequences),
         "seconds": round(time.time() - t0, 1)})
    heldout_ids, train_ids = heldout_split(len(sequences), cfg["seed"], cfg["data"]["heldout_fraction"])
    window = cfg["data"]["window"]
    train_set, heldout = windows(sequences, train_ids, window), windows(sequences, heldout_ids, window)
    log({"event": "split", "train_windows": len(train_set), "heldout_windows": len(heldout),
         "train_positions": sum(w.tokens.numel() for w in train_set)})

    drafter = EagleDrafter(EagleDrafterConfig.for_target(model.config, base_model="SmolLM2-135M-Instruct",
                                                         **cfg.get("drafter", {})))
    view = TrainingView(drafter, Borrowed(model))
    t1 = time.time()
    vocab = train(cfg, view, train_set, heldout, args.out, log)
    log({"event": "final", "train_seconds": round(time.time() - t1, 1),
         "heldout_top1_by_depth": evaluate(view, heldout, cfg["train"]["unroll"])})
    drafter.restrict_draft_vocab(vocab)  # it never learnt to predict other tokens: cheaper drafting
    drafter.save_pretrained(args.out, dtype=torch.bfloat16)
    (args.out / "recipe.yaml").write_text(args.config.read_text())
    print(f"saved the drafter to {args.out}")


if __name__ == "__main__":
    main()
