"""Distil a small draft model from a frozen causal-LM target, on text the target wrote itself.

    python recipes/distill_draft.py --config recipes/draft/smollm2_135m.yaml --out artifacts/draft-smollm2-135m
    accelerate launch --num_processes 2 --mixed_precision bf16 recipes/distill_draft.py \\
        --config recipes/draft/smollm2_135m.yaml --out artifacts/draft-smollm2-135m

(on GPUs: each process trains on its share of every batch; the data stage is split between them, see
`recipes/self_distill.py`)

Steps (each cached or checkpointed, so a rerun resumes where the last one stopped):
1. training text and the target's last hidden states: `recipes/self_distill.py`, the same data (and with the same
   `data:` settings the same cache) as the Medusa recipe; the target's distributions are its LM head applied to
   those hidden states, so no target forward runs during training;
2. the draft: copies of the target layers `draft.layers` plus its final norm, with the target's own embedding and
   LM head (shared, frozen, never saved; `hf_specdec.distilled_draft`), optionally a draft vocabulary (the tokens of
   the training text: a cheaper LM head at run time);
3. training: KL(target || draft) over the draft vocabulary at every position whose next token the target wrote
   (plus all of the stdlib code), teacher-forced on the text; AdamW with warmup and cosine decay, checkpoints every
   `checkpoint_every` steps (resumed automatically), held-out top-1 agreement with the target logged together
   with what it implies: the expected accepted length of a K-token greedy draft, sum_i agreement^i (assuming
   independent positions), and the sampling acceptance rate sum_x min(p, q).
The draft is saved in bf16 (`save_dtype`) with its recipe and training log; `draft.quantize: int8` (any scheme of
`hf_specdec.quantize_draft`) makes it a quantized draft: the weights stay in `save_dtype` and `load_draft`
quantizes them on load. Load it with
`hf_specdec.distilled_draft.load_draft(folder, target)` (for SmolLM2: `hf_specdec.models.load_smollm2_draft()`).
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_specdec.cpu_speedups import optimize_for_cpu, restore_cpu_defaults
from hf_specdec.distilled_draft import build_draft, save_draft, write_draft_card

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the recipes' shared modules, also when this file is loaded by path (tests)
from self_distill import (TrainingSequence, heldout_split, model_device, process_state, resume,  # noqa: E402
                          save_checkpoint, shard, sharded_training, start_run,
                          training_sequences, warmup_cosine)


# ---- data: teacher-forced batches ---------------------------------------------------------------------------------
def first_loss_position(sequence: TrainingSequence) -> int:
    """Row t predicts ids[t + 1]; the loss starts at the last prompt token (its successor is the target's)."""
    return max(0, sequence.prompt_len - 1)


def batch_plan(lengths: list[int], tokens_per_batch: int, seed: int, epoch: int) -> list[list[int]]:
    """Sequence indices per batch for one epoch: shuffled (seeded by epoch), then grouped by length within windows
    of 64 so a batch pads little, cut at `tokens_per_batch` padded tokens, batches shuffled again."""
    rng = random.Random(seed * 1000 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches: list[list[int]] = []
    for start in range(0, len(order), 64):
        window = sorted(order[start : start + 64], key=lambda i: lengths[i])
        current: list[int] = []
        for index in window:
            if current and (len(current) + 1) * max(lengths[i] for i in current + [index]) > tokens_per_batch:
                batches.append(current)
                current = []
            current.append(index)
        if current:
            batches.append(current)
    rng.shuffle(batches)
    return batches


def collate(sequences: list[TrainingSequence]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input ids `[B, L]`, attention mask `[B, L]`, loss mask `[B, L]`, teacher hidden `[N, H]` float16).

    Row t of a sequence feeds ids[t] and is scored against the target's hidden state that produced ids[t + 1]; the
    teacher rows come flattened in loss-mask order."""
    width = max(len(s.ids) - 1 for s in sequences)
    ids = torch.zeros(len(sequences), width, dtype=torch.long)
    attention = torch.zeros(len(sequences), width, dtype=torch.long)
    loss_mask = torch.zeros(len(sequences), width, dtype=torch.bool)
    teacher = []
    for row, sequence in enumerate(sequences):
        n = len(sequence.ids) - 1
        ids[row, :n] = torch.tensor(sequence.ids[:n])
        attention[row, :n] = 1
        first = first_loss_position(sequence)
        loss_mask[row, first:n] = True
        teacher.append(sequence.hidden[first:n])
    return ids, attention, loss_mask, torch.cat(teacher)


# ---- model --------------------------------------------------------------------------------------------------------
class DistillationView(torch.nn.Module):
    """The draft's decoder (trainable layers + norm; the shared embedding frozen) and the frozen LM-head rows of
    the draft vocabulary, as one module for `accelerator.prepare`."""

    def __init__(self, decoder: torch.nn.Module, vocab_head: torch.Tensor) -> None:
        super().__init__()
        self.decoder = decoder
        self.register_buffer("vocab_head", vocab_head, persistent=False)  # [V', H]

    def forward(self, ids: torch.Tensor, attention: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
        """The draft's logits over the draft vocabulary at the loss positions, `[N, V']`."""
        hidden = self.decoder(input_ids=ids, attention_mask=attention).last_hidden_state  # [B, L, H]
        return hidden[loss_mask] @ self.vocab_head.t()


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """KL(teacher || student) per position, averaged, and the top-1 agreement (both over the same vocabulary)."""
    teacher = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)
    student = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    kl = (teacher.exp() * (teacher - student)).sum(-1).mean() * temperature**2
    agreement = (student_logits.argmax(-1) == teacher_logits.argmax(-1)).float().mean()
    return kl, agreement


def heldout_metrics(view: DistillationView, sequences: list[TrainingSequence], lm_weight: torch.Tensor,
                    vocab: torch.Tensor, tokens_per_batch: int, depth: int = 5) -> dict:
    """Top-1 agreement with the target's full-vocabulary argmax, mean KL, sampling acceptance sum_x min(p, q) and
    the expected accepted length of a `depth`-token greedy draft it implies."""
    hits, kl_sum, overlap_sum, total = heldout_sums(view, sequences, lm_weight, vocab, tokens_per_batch).tolist()
    agreement = hits / max(total, 1)
    return {"top1_agreement": round(agreement, 4), "kl": round(kl_sum / max(total, 1), 4),
            "sampling_acceptance": round(overlap_sum / max(total, 1), 4),
            f"expected_accepted_k{depth}": round(sum(agreement**i for i in range(1, depth + 1)), 3)}


@torch.no_grad()
def heldout_sums(view: DistillationView, sequences: list[TrainingSequence], lm_weight: torch.Tensor,
                 vocab: torch.Tensor, tokens_per_batch: int) -> torch.Tensor:
    """[top-1 hits, summed KL, summed min(p, q) mass, positions] over `sequences`, on the view's device (the
    batches, the LM head and the vocabulary go there; the sums come back to the host once, in the caller)."""
    device = model_device(view)
    lm_weight, vocab = lm_weight.to(device), vocab.to(device)
    sums = torch.zeros(4, device=device, dtype=torch.float64)
    # Full-vocabulary scores for every position of a batch are large: evaluate in quarter-size batches.
    for batch in batch_plan([len(s.ids) for s in sequences], max(1, tokens_per_batch // 4), seed=0, epoch=0):
        ids, attention, loss_mask, teacher_hidden = (t.to(device) for t in collate([sequences[i] for i in batch]))
        student = view(ids, attention, loss_mask)  # [N, V']
        teacher_full = teacher_hidden.float() @ lm_weight.t()  # [N, V]
        p = teacher_full.softmax(-1)
        q = torch.zeros_like(p).index_copy_(1, vocab, student.softmax(-1))
        kl, _ = distillation_loss(student, teacher_full[:, vocab])
        sums += torch.stack([(vocab[student.argmax(-1)] == teacher_full.argmax(-1)).sum().double(),
                             kl.double() * student.shape[0], torch.minimum(p, q).sum().double(),
                             torch.tensor(student.shape[0], dtype=torch.float64, device=device)])
    return sums


def train(cfg: dict, view: DistillationView, train_seqs, heldout_seqs, lm_weight, vocab, out: Path, log) -> None:
    """Trains `view.decoder` in place; checkpoints to `out/checkpoint` and resumes from it. Under `accelerate
    launch` each process trains on its `shard` of every batch; the main process alone evaluates and logs."""
    tc = cfg["train"]
    accelerator = Accelerator(**sharded_training())
    lengths = [len(s.ids) for s in train_seqs]
    plans = {0: batch_plan(lengths, tc["tokens_per_batch"], cfg["seed"], 0)}  # epoch -> its batches, made once
    steps_per_epoch = len(plans[0])
    total = steps_per_epoch * tc["epochs"]
    optimizer = torch.optim.AdamW([p for p in view.parameters() if p.requires_grad], lr=tc["lr"],
                                  weight_decay=tc["weight_decay"])
    scheduler = warmup_cosine(optimizer, tc["warmup_steps"], total)
    view, optimizer, scheduler = accelerator.prepare(view, optimizer, scheduler)
    checkpoint = out / "checkpoint"
    step = resume(accelerator, checkpoint, log)
    bar = tqdm(total=total, initial=step, desc="distil draft", disable=not accelerator.is_main_process)
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    while step < total:
        epoch, offset = divmod(step, steps_per_epoch)
        if epoch not in plans:
            plans = {epoch: batch_plan(lengths, tc["tokens_per_batch"], cfg["seed"], epoch)}
        batch = shard(plans[epoch][offset], rank, world)
        ids, attention, loss_mask, teacher_hidden = (t.to(device) for t in collate([train_seqs[i] for i in batch]))
        student = view(ids, attention, loss_mask)
        teacher = teacher_hidden.float() @ accelerator.unwrap_model(view).vocab_head.t()
        loss, agreement = distillation_loss(student, teacher, tc["temperature"])
        accelerator.backward(loss)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        step += 1
        bar.update(1)
        if step % 20 == 0:  # reading the loss waits for the device: every 20 steps, not every step
            bar.set_postfix(kl=f"{loss.item():.3f}", top1=f"{agreement.item():.3f}")
            log({"event": "train", "step": step, "epoch": epoch, "kl": round(loss.item(), 4),
                 "top1_agreement": round(agreement.item(), 4), "lr": scheduler.get_last_lr()[0]})
        if (step % tc["eval_every"] == 0 or step == total) and accelerator.is_main_process:
            log({"event": "heldout", "step": step, **heldout_metrics(accelerator.unwrap_model(view), heldout_seqs,
                                                                    lm_weight, vocab, tc["tokens_per_batch"])})
        if step % tc["checkpoint_every"] == 0 or step == total:
            save_checkpoint(accelerator, checkpoint, step)
    bar.close()


def load_target(name: str):
    """`smollm2` (the packaged SmolLM2-135M-Instruct) or a local causal-LM folder: (model, tokenizer, name)."""
    if name == "smollm2":
        from hf_specdec.models import load_smollm2, load_smollm2_tokenizer

        return load_smollm2(), load_smollm2_tokenizer(), "SmolLM2-135M-Instruct"
    return (AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(name),
            Path(name).name)


def draft_vocabulary(sequences: list[TrainingSequence], setting: str, vocab_size: int) -> torch.Tensor:
    """`seen`: every token of the training text (what the draft learns to predict); `full`: all ids."""
    if setting == "full":
        return torch.arange(vocab_size)
    if setting != "seen":
        raise ValueError(f"draft.vocab must be 'seen' or 'full', got {setting!r}.")
    return torch.unique(torch.cat([torch.tensor(s.ids) for s in sequences]))


def main() -> None:
    args, cfg, cache, log = start_run(__doc__, HERE / "draft" / "smollm2_135m.yaml",
                                      Path("artifacts/draft-smollm2-135m"))
    state = process_state()  # this process's device (and rank) under `accelerate launch`; the CPU without it
    model, tokenizer, target_name = load_target(cfg.get("target", "smollm2"))
    model.requires_grad_(False).to(state.device)
    on_cpu = state.device.type == "cpu"
    if on_cpu:
        optimize_for_cpu(model)  # fast generation of the training text
    t0 = time.time()
    sequences = training_sequences(model, tokenizer, cfg, cache, cfg["seed"], state)
    if on_cpu:
        restore_cpu_defaults(model)  # the draft shares the target's modules: plain kernels while training
    log({"event": "data", "sequences": len(sequences), "tokens": sum(len(s.ids) for s in sequences),
         "seconds": round(time.time() - t0, 1)})

    heldout_ids, train_ids = heldout_split(len(sequences), cfg["seed"], cfg["data"]["heldout_fraction"])
    heldout, train_seqs = [sequences[i] for i in heldout_ids], [sequences[i] for i in train_ids]
    lm_weight = model.get_output_embeddings().weight.detach()  # [V, H]
    vocab = draft_vocabulary(train_seqs, cfg["draft"]["vocab"], lm_weight.shape[0]).to(lm_weight.device)
    draft = build_draft(model, cfg["draft"]["layers"]).float().train()
    view = DistillationView(draft.get_decoder(), lm_weight[vocab].clone())
    tokens = cfg["train"]["tokens_per_batch"]
    if state.is_main_process:
        log({"event": "start", "layers": cfg["draft"]["layers"], "draft_vocab": int(vocab.numel()),
             "trainable_parameters": sum(p.numel() for p in view.parameters() if p.requires_grad),
             "heldout_untrained": heldout_metrics(view.eval(), heldout, lm_weight, vocab, tokens)})
    t1 = time.time()
    train(cfg, view.train(), train_seqs, heldout, lm_weight, vocab, args.out, log)
    if state.is_main_process:  # every process holds the same draft: the main one evaluates and saves it
        final = heldout_metrics(view.eval(), heldout, lm_weight, vocab, tokens)
        log({"event": "final", "train_seconds": round(time.time() - t1, 1), **final})
        save_trained(cfg, args, draft, model, vocab, target_name, final)


def save_trained(cfg: dict, args, draft, model, vocab: torch.Tensor, target_name: str, final: dict) -> None:
    """The draft (bf16 by default), its card, and the recipe that made it, in `args.out`."""
    # The files are written from the host; the draft shares the target's embedding, so both move.
    model.cpu()
    draft.cpu()
    save_draft(draft.eval(), args.out, model, source_layers=cfg["draft"]["layers"],
               draft_vocab=None if cfg["draft"]["vocab"] == "full" else vocab.cpu(),
               dtype=getattr(torch, cfg["draft"].get("save_dtype", "bfloat16")), target_name=target_name,
               quantize=cfg["draft"].get("quantize"))
    write_draft_card(args.out, target_name, {f"held-out {key}": value for key, value in final.items()})
    (args.out / "recipe.yaml").write_text(args.config.read_text())
    print(f"saved the draft to {args.out}")


if __name__ == "__main__":
    main()
