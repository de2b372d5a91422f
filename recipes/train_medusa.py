"""Train Medusa heads on a frozen target (Medusa-1 recipe), on CPU or, through accelerate, on more devices.

    python recipes/train_medusa.py --config recipes/medusa/smollm2_135m.yaml --out artifacts/medusa-smollm2-135m
    accelerate launch --num_processes 2 --mixed_precision bf16 recipes/train_medusa.py \\
        --config recipes/medusa/smollm2_135m.yaml --out artifacts/medusa-smollm2-135m

(on GPUs: each process trains on its share of every batch; the data stage is split between them, see
`recipes/self_distill.py`)

Steps (each cached under `data.cache_dir`, so a rerun resumes where the last one stopped):
1. training text: Python stdlib sources (real code, chunked) and the target's own greedy continuations
   (self-distillation) of prompts assembled here: stdlib function signatures + docstrings, the prose instructions
   in `recipes/medusa/prose_instructions.txt`, MT-Bench's `dummy_conversation.json` and prompts filled in from
   `recipes/medusa/prose_prompt_parts.yaml` (never the evaluation prompts: no HumanEval, no MT-Bench questions);
2. the frozen target's last hidden states for that text: kept from the batched greedy generation itself for the
   self-distilled text (no second forward), one no-grad forward per stdlib chunk;
3. the heads alone, trained with sum_k decay**k * CE_k (head k predicts the token k + 1 positions ahead) on the
   positions whose labels the target wrote (not on the prompts), with checkpoints every `checkpoint_every` steps
   (resumed automatically) and per-head top-1 accuracy on held-out text. Token-conditioned (Hydra) heads
   (`heads.token_conditioned: true`, e.g. `recipes/medusa/smollm2_135m_hydra.yaml`) also read the text's own tokens
   before their target (teacher forcing): along an accepted draft those are exactly the tokens they see at run time.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm import tqdm

from hf_specdec.cpu_speedups import optimize_for_cpu
from hf_specdec.medusa_heads import MedusaHeads, MedusaHeadsConfig, medusa_labels, medusa_loss
from hf_specdec.models import load_smollm2, load_smollm2_tokenizer

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the recipes' shared modules, also when this file is loaded by path (tests)
from self_distill import (TrainingSequence, heldout_split, model_device, process_state, resume,  # noqa: E402
                          save_checkpoint, shard, sharded_training, start_run,
                          training_sequences, warmup_cosine)


def position_table(sequences: list[TrainingSequence], indices, num_heads: int,
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flattens the chosen sequences into (hidden `[N, H]`, labels `[N, K]`, context `[N, K]`).

    Row t's head k (1-based) predicts ids[t + 1 + k]; context[t] holds ids[t + 1 .. t + K] (0 past the end), the
    tokens a token-conditioned head k reads the first k of: along an accepted draft they are exactly the target's.
    Labels inside a prompt are dropped (-100): the heads learn what the target writes, not what users write.
    Rows without a head-1 label are left out.
    """
    hidden, labels, context = [], [], []
    for i in indices:
        sequence = sequences[i]
        ids = torch.tensor(sequence.ids)
        rows = medusa_labels(ids, num_heads)[: sequence.hidden.shape[0]]  # [L', K]
        label_position = torch.arange(rows.shape[0])[:, None] + torch.arange(2, num_heads + 2)  # index into ids
        rows = rows.masked_fill(label_position < sequence.prompt_len, -100)
        padded = torch.cat([ids, ids.new_zeros(num_heads + 1)])
        following = padded[label_position - 1]  # [L', K]: ids[t + 1 .. t + K]
        keep = rows[:, 0] != -100
        hidden.append(sequence.hidden[keep])
        labels.append(rows[keep])
        context.append(following[keep])
    return torch.cat(hidden), torch.cat(labels), torch.cat(context)


# ---- 3. training --------------------------------------------------------------------------------------------------
class TrainingView(torch.nn.Module):
    """The heads plus the frozen target pieces they read (LM head rows, input embeddings), as one module for
    `accelerator.prepare`. `vocab` (set by `train`) restricts the logits to the loss vocabulary."""

    def __init__(self, heads: MedusaHeads, lm_weight: torch.Tensor, embed_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.heads = heads
        self.register_buffer("lm_weight", lm_weight, persistent=False)
        self.register_buffer("embed_weight", embed_weight, persistent=False)
        self.register_buffer("vocab", None, persistent=False)

    def forward(self, hidden: torch.Tensor, context: torch.Tensor, full_vocab: bool = False) -> torch.Tensor:
        """Head logits `[N, K, V']` from hidden `[N, H]` and the context tokens `[N, K]` that token-conditioned
        heads read."""
        heads, vocab = self.heads, None if full_vocab else self.vocab
        embeddings = (torch.nn.functional.embedding(context, self.embed_weight).to(hidden.dtype)
                      if heads.config.token_conditioned else None)
        states = heads.hidden(hidden, embeddings)  # [N, K, H]
        if heads.lm_heads is not None:
            weights = [head.weight if vocab is None else head.weight[vocab] for head in heads.lm_heads]
            return torch.stack([states[:, k] @ w.t() for k, w in enumerate(weights)], dim=1)
        weight = self.lm_weight if vocab is None else self.lm_weight[vocab]  # [V', H]
        return states @ weight.t()  # [N, K, V']


@torch.no_grad()
def evaluate(view: TrainingView, hidden, labels, context, chunk: int = 512) -> list[float]:
    """Per-head top-1 accuracy over the full vocabulary."""
    return [ranks[0] for ranks in rank_accuracy(view, hidden, labels, context, ranks=1, chunk=chunk)]


def rank_accuracy(view: TrainingView, hidden, labels, context, ranks: int = 4, chunk: int = 512,
                  ) -> list[list[float]]:
    """accuracy[k][r]: how often head k + 1's rank-r token is right (input to `tree.paths_from_accuracy`)."""
    hits, counts = rank_hits(view, hidden, labels, context, ranks, chunk)
    return (hits / counts.clamp_min(1)).tolist()  # the one copy to the host


@torch.no_grad()
def rank_hits(view: TrainingView, hidden, labels, context, ranks: int = 4, chunk: int = 512,
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(hits `[K, ranks]`, counts `[K, 1]`) on the view's device: how often head k + 1's rank-r token is the
    label, out of how many labelled rows. The tables (CPU) go to the view's device a chunk at a time."""
    device = model_device(view)
    num_heads = labels.shape[1]
    hits = torch.zeros(num_heads, ranks, device=device)
    counts = torch.zeros(num_heads, 1, device=device)
    for start in range(0, hidden.shape[0], chunk):
        rows = slice(start, start + chunk)
        y = labels[rows].to(device)
        logits = view(hidden[rows].to(device).float(), context[rows].to(device), full_vocab=True)
        top = logits.topk(ranks, -1).indices  # [n, K, ranks]
        valid = y != -100  # [n, K]
        hits += ((top == y[..., None]) & valid[..., None]).sum(0)
        counts += valid.sum(0)[:, None]
    return hits, counts


def base_view(lm_weight: torch.Tensor, num_heads: int) -> TrainingView:
    """Untrained (identity) heads reading `lm_weight`, on its device."""
    heads = MedusaHeads(MedusaHeadsConfig(lm_weight.shape[1], lm_weight.shape[0], num_heads))
    return TrainingView(heads.to(lm_weight.device), lm_weight)


def base_accuracy(lm_weight, hidden, labels, context, chunk: int = 512) -> list[float]:
    """Accuracy of the untrained (identity) heads: the base next-token prediction used k positions too early."""
    return evaluate(base_view(lm_weight, labels.shape[1]), hidden, labels, context, chunk)


def loss_vocabulary(labels: torch.Tensor, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(the label tokens, the labels renumbered into them): `loss_vocab: seen` scores only tokens the text has."""
    vocab = torch.unique(labels[labels != -100])
    remap = torch.full((vocab_size,), -100, dtype=torch.long)
    remap[vocab] = torch.arange(vocab.numel())
    return vocab, torch.where(labels == -100, labels, remap[labels.clamp_min(0)])


def train(cfg: dict, view: TrainingView, train_set, heldout_set, out: Path, log) -> torch.Tensor | None:
    """Trains `view.heads` in place on (hidden, labels, context) tables (CPU); returns the loss vocabulary (token
    ids) with `loss_vocab: seen`, else None. Under `accelerate launch` each process trains on its `shard` of every
    batch; the main process alone evaluates and logs."""
    tc = cfg["train"]
    accelerator = Accelerator(gradient_accumulation_steps=tc["grad_accum"], **sharded_training())
    hidden, labels, context = train_set
    vocab_index = None
    if tc["loss_vocab"] == "seen":
        vocab_index, labels = loss_vocabulary(labels, view.lm_weight.shape[0])
        log({"event": "loss_vocab", "size": int(vocab_index.numel())})
    optimizer = torch.optim.AdamW([p for p in view.heads.parameters() if p.requires_grad], lr=tc["lr"],
                                  weight_decay=tc["weight_decay"])
    steps_per_epoch = math.ceil(hidden.shape[0] / tc["batch_size"])
    total = steps_per_epoch * tc["epochs"]
    scheduler = warmup_cosine(optimizer, tc["warmup_steps"], total)
    view.vocab = vocab_index
    view, optimizer, scheduler = accelerator.prepare(view, optimizer, scheduler)
    checkpoint = out / "checkpoint"
    step = resume(accelerator, checkpoint, log)
    bar = tqdm(total=total, initial=step, desc="train heads", disable=not accelerator.is_main_process)
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    while step < total:
        epoch, offset = divmod(step, steps_per_epoch)
        order = torch.randperm(hidden.shape[0], generator=torch.Generator().manual_seed(cfg["seed"] * 1000 + epoch))
        batch = shard(order[offset * tc["batch_size"] : (offset + 1) * tc["batch_size"]], rank, world)
        with accelerator.accumulate(view):
            logits = view(hidden[batch].float().to(device), context[batch].to(device))
            loss, accuracy = medusa_loss(logits, labels[batch].to(device), tc["head_decay"])
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        step += 1
        bar.update(1)
        if step % 20 == 0:  # reading the loss waits for the device: every 20 steps, not every step
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=" ".join(f"{a:.2f}" for a in accuracy.tolist()))
            log({"event": "train", "step": step, "epoch": epoch, "loss": loss.item(), "lr": scheduler.get_last_lr()[0],
                 "train_top1": [round(a, 4) for a in accuracy.tolist()]})
        if (step % tc["eval_every"] == 0 or step == total) and accelerator.is_main_process:
            log({"event": "heldout", "step": step, "top1": evaluate(accelerator.unwrap_model(view), *heldout_set)})
        if step % tc["checkpoint_every"] == 0 or step == total:
            save_checkpoint(accelerator, checkpoint, step)
    bar.close()
    return vocab_index


def main() -> None:
    args, cfg, cache, log = start_run(__doc__, HERE / "medusa" / "smollm2_135m.yaml",
                                      Path("artifacts/medusa-smollm2-135m"))
    state = process_state()  # this process's device (and rank) under `accelerate launch`; the CPU without it
    model, tokenizer = load_smollm2().to(state.device), load_smollm2_tokenizer()
    if state.device.type == "cpu":
        optimize_for_cpu(model)
    model.requires_grad_(False)
    t0 = time.time()
    sequences = training_sequences(model, tokenizer, cfg, cache, cfg["seed"], state)
    log({"event": "data", "sequences": len(sequences), "tokens": sum(len(s.ids) for s in sequences),
         "seconds": round(time.time() - t0, 1)})

    num_heads = cfg["heads"]["num_heads"]
    heldout_ids, train_ids = heldout_split(len(sequences), cfg["seed"], cfg["data"]["heldout_fraction"])
    train_set = position_table(sequences, train_ids, num_heads)
    heldout_set = position_table(sequences, heldout_ids, num_heads)
    lm_weight = model.get_output_embeddings().weight.detach()  # [V, H], frozen
    if state.is_main_process:
        log({"event": "split", "train_positions": train_set[0].shape[0],
             "heldout_positions": heldout_set[0].shape[0],
             "heldout_top1_untrained": base_accuracy(lm_weight, *heldout_set)})

    heads_config = MedusaHeadsConfig(hidden_size=model.config.hidden_size, vocab_size=model.config.vocab_size,
                                     base_model="SmolLM2-135M-Instruct", **cfg["heads"])
    heads = MedusaHeads(heads_config)
    if heads_config.separate_lm_head:
        heads.init_separate_lm_heads(model.get_output_embeddings())
    view = TrainingView(heads, lm_weight, model.get_input_embeddings().weight.detach())
    t1 = time.time()
    seen = train(cfg, view, train_set, heldout_set, args.out, log)
    if not state.is_main_process:
        return  # every process holds the same heads: the main one evaluates and saves them
    if seen is not None:
        heads.restrict_draft_vocab(seen.to(model_device(heads)))  # never learnt other tokens: cheaper drafts
    log({"event": "final", "heldout_top1": evaluate(view, *heldout_set), "train_seconds": round(time.time() - t1, 1),
         "heldout_rank_accuracy": rank_accuracy(view, *heldout_set)})
    heads.save_pretrained(args.out)
    (args.out / "recipe.yaml").write_text(args.config.read_text())
    print(f"saved heads to {args.out}")


if __name__ == "__main__":
    main()
