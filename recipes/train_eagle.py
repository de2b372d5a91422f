"""Train an EAGLE-3 drafter on a frozen target, on CPU or, through accelerate, on GPUs and several processes.

    python recipes/train_eagle.py --config recipes/eagle/smollm2_135m.yaml --out artifacts/eagle-smollm2-135m
    accelerate launch recipes/train_eagle.py --config ...   # data and batches sharded across the processes

Steps (features are cached under `data.cache_dir`, checkpoints under `<out>/checkpoint`: a rerun resumes):
1. teacher-forced data (`eagle_data.py`): one target forward per sequence keeps the auxiliary layers' hidden states
   and the final normed hidden state; the text is stdlib code, the stdlib's documentation prose and the target's
   own answers to the recipes' prompts (self-distilled once, never the evaluation prompts);
2. a draft vocabulary: the `draft_vocab_size` most frequent tokens of the training text (`d2t`/`t2d`);
3. the drafter with EAGLE-3's training-time test: unrolled `train.unroll` steps on its own states
   (`EagleDrafter.unrolled_states`), loss sum_j decay**j * CE(target's distribution, draft) over the draft
   vocabulary (soft targets: the target's whole next-token distribution, not only its argmax); per-depth top-1
   agreement with the target's argmax over the FULL vocabulary on held-out sequences is logged;
4. saved in speculators' EAGLE-3 format (bfloat16) with this recipe and its training log.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn
from tqdm import tqdm

from hf_specdec.drafters.eagle_drafter import EagleDrafter
from hf_specdec.models import load_smollm2, load_smollm2_tokenizer

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the recipes' shared modules, also when this file is loaded by path (tests)
from eagle_data import FeatureSequence, docs_chunks, feature_shards, teacher_forced_features  # noqa: E402,F401
from self_distill import (code_prompts, heldout_split, prose_prompts, resume, save_checkpoint,  # noqa: E402
                          self_distill, sharded_training, start_run, stdlib_chunks, warmup_cosine)

VERIFIER = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what vLLM / speculators read the target from


# ---- 1. data ------------------------------------------------------------------------------------------------------
def feature_data(model, tokenizer, cfg: dict, cache: Path, layer_ids: list[int], accelerator) -> list[FeatureSequence]:
    """Every source's teacher-forced sequences; each process computes its share of the shards, then all load all."""
    data, seed = cfg["data"], cfg["seed"]
    rank, world = accelerator.process_index, accelerator.num_processes
    sources = [("code", [(c, 0) for c in stdlib_chunks(tokenizer, data["code_tokens"], data["seq_len"], seed)]),
               ("docs", [(c, 0) for c in docs_chunks(tokenizer, data["docs_tokens"], data["seq_len"])])]
    for name, prompts in (("prose", prose_prompts(tokenizer, data["prose_prompts"], seed)),
                          ("code", code_prompts(data["code_prompts"], seed, data.get("code_prompts_per_file", 3)))):
        if prompts:
            with accelerator.main_process_first():  # generation is cached batch by batch: one process writes it
                generated = self_distill(model, tokenizer, prompts, data["max_new_tokens"], data["gen_batch_size"],
                                         cache, name) if accelerator.is_main_process else []
            if not accelerator.is_main_process:
                generated = self_distill(model, tokenizer, prompts, data["max_new_tokens"], data["gen_batch_size"],
                                         cache, name)
            sources.append((f"selfdistill_{name}", [(s.ids, s.prompt_len) for s in generated]))
    for name, sequences in sources:
        feature_shards(model, sequences, layer_ids, cache, name, rank, world)
    accelerator.wait_for_everyone()
    return [seq for name, sequences in sources for seq in feature_shards(model, sequences, layer_ids, cache, name)]


def draft_vocabulary(sequences: list[FeatureSequence], size: int, vocab_size: int) -> torch.LongTensor:
    """The `size` most frequent token ids of the training text (ties by id), sorted."""
    counts = Counter()
    for seq in sequences:
        counts.update(seq.ids.tolist())
    ranked = sorted(counts, key=lambda t: (-counts[t], t))[:size]
    ranked += [t for t in range(vocab_size) if t not in set(ranked)][: size - len(ranked)]
    return torch.tensor(sorted(ranked))


def windows(sequences: list[FeatureSequence], indices, window: int, steps: int) -> list[dict]:
    """Training windows of up to `window` anchors: anchor p pairs the features at p with tokens x_{p+1..p+steps} and
    the final hidden states at p+1..p+steps (the target's distributions over x_{p+2..p+steps+1})."""
    out = []
    for i in indices:
        seq = sequences[i]
        anchors = seq.ids.numel() - 1  # the last anchor p = N - 2 reads x_{N-1}; its label is the target's state there
        for start in range(0, max(anchors, 0), window):
            n = min(window, anchors - start)
            ids = seq.ids[start + 1 : start + n + steps]
            last = seq.last[start + 1 : start + n + steps]
            out.append({"aux": seq.aux[start : start + n], "ids": ids, "last": last, "anchors": n})
    return out


def collate(items: list[dict], steps: int) -> tuple[torch.Tensor, ...]:
    """Right-padded (features `[B, W, A*H]`, tokens `[B, W + steps - 1]`, final hidden `[B, W + steps - 1, H]`,
    valid `[steps, B, W]`: step j at anchor p reads token and target state p + j of the window, so needs p + j < its
    length)."""
    width = max(item["anchors"] for item in items)
    b = len(items)
    aux = torch.zeros(b, width, items[0]["aux"].shape[1], dtype=items[0]["aux"].dtype)
    ids = torch.zeros(b, width + steps - 1, dtype=torch.long)
    last = torch.zeros(b, width + steps - 1, items[0]["last"].shape[1], dtype=items[0]["last"].dtype)
    valid = torch.zeros(steps, b, width, dtype=torch.bool)
    for r, item in enumerate(items):
        n, m = item["anchors"], item["ids"].numel()
        aux[r, :n], ids[r, :m], last[r, :m] = item["aux"], item["ids"], item["last"]
        for j in range(steps):
            valid[j, r, : max(0, min(n, m - j))] = True
    return aux.float(), ids, last.float(), valid


def batches(items: list[dict], positions: int, seed: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """Windows of similar length in batches of about `positions` anchors, in a seeded order; process `rank` of
    `world` takes every world-th batch (each process trains on its own share, accelerate averages gradients)."""
    order = sorted(range(len(items)), key=lambda i: items[i]["anchors"])
    groups, current, width = [], [], 0
    for i in order:
        width = max(width, items[i]["anchors"])
        if current and width * (len(current) + 1) > positions:
            groups.append(current)
            current, width = [], items[i]["anchors"]
        current.append(i)
    groups += [current] if current else []
    torch.manual_seed(seed)
    groups = [groups[i] for i in torch.randperm(len(groups)).tolist()]
    usable = len(groups) - len(groups) % world  # every process takes as many steps
    return groups[rank:usable:world]


# ---- 2. the training-time test ------------------------------------------------------------------------------------
class TrainingView(nn.Module):
    """The drafter plus the target's frozen embeddings and LM-head rows, as one module for `accelerator.prepare`."""

    def __init__(self, drafter: EagleDrafter, target: nn.Module, draft_ids: torch.LongTensor) -> None:
        super().__init__()
        self.drafter = drafter
        self.embed = nn.Embedding.from_pretrained(target.get_input_embeddings().weight.detach().clone(), freeze=True)
        self.register_buffer("target_rows", target.get_output_embeddings().weight.detach()[draft_ids].clone())
        self.register_buffer("target_head", target.get_output_embeddings().weight.detach().clone(), persistent=False)
        drafter.attach_target(self)
        drafter.lm_head.weight.requires_grad_(False)  # kept as the target's rows: fewer weights to learn on a CPU

    def get_input_embeddings(self) -> nn.Module:
        return self.embed

    def forward(self, aux, ids, last, valid, steps: int, decay: float) -> tuple[torch.Tensor, list[float]]:
        """sum_j decay**j * CE(softmax(target's logits over the draft vocabulary), draft logits), and each step's
        top-1 agreement with the target's top-1 over the draft vocabulary."""
        width = aux.shape[1]
        losses, agreement = [], []
        for j, states in enumerate(self.drafter.unrolled_states(aux, ids, steps)):
            mask = valid[j]
            logits = self.drafter.draft_logits(states[mask])[0]
            with torch.no_grad():
                target = (last[:, j : j + width][mask] @ self.target_rows.t().to(last.dtype)).float()
            losses.append(decay ** j * -(target.softmax(-1) * logits.log_softmax(-1)).sum(-1).mean())
            agreement.append(float((logits.argmax(-1) == target.argmax(-1)).float().mean()) if mask.any() else 0.0)
        return torch.stack(losses).sum(), agreement


@torch.no_grad()
def evaluate(view: TrainingView, items: list[dict], steps: int, positions: int = 1024) -> list[float]:
    """Per-depth top-1 agreement with the target's argmax over the FULL vocabulary (a token outside the draft
    vocabulary is a miss), conditioned on nothing: each depth's own rate."""
    hits, counts = torch.zeros(steps), torch.zeros(steps)
    device = view.target_head.device
    for group in batches(items, positions, seed=0):
        aux, ids, last, valid = (t.to(device) for t in collate([items[i] for i in group], steps))
        width = aux.shape[1]
        for j, states in enumerate(view.drafter.unrolled_states(aux, ids, steps)):
            logits, columns = view.drafter.draft_logits(states[valid[j]])
            guess = logits.argmax(-1) if columns is None else columns[logits.argmax(-1)]
            truth = (last[:, j : j + width][valid[j]] @ view.target_head.t()).argmax(-1)
            hits[j] += (guess == truth).sum().cpu()
            counts[j] += truth.numel()
    return [round(float(h / max(c, 1)), 4) for h, c in zip(hits, counts)]


def train(cfg: dict, view: TrainingView, train_set: list[dict], heldout: list[dict], out: Path, log,
          accelerator: Accelerator) -> None:
    """Trains `view.drafter` in place, checkpointing and resuming under `out/checkpoint`."""
    tc = cfg["train"]
    steps = tc["unroll"]
    optimizer = torch.optim.AdamW([p for p in view.drafter.parameters() if p.requires_grad], lr=tc["lr"],
                                  weight_decay=tc["weight_decay"])
    rank, world = accelerator.process_index, accelerator.num_processes
    epoch_batches = lambda epoch: batches(train_set, tc["batch_positions"], cfg["seed"] * 1000 + epoch,  # noqa: E731
                                          rank, world)
    per_epoch = len(epoch_batches(0))
    total = min(int(per_epoch * tc["epochs"]), tc.get("max_steps") or 10**9)  # max_steps: a CPU-time budget
    scheduler = warmup_cosine(optimizer, tc["warmup_steps"], total)
    view, optimizer, scheduler = accelerator.prepare(view, optimizer, scheduler)
    step = resume(accelerator, out / "checkpoint", log)
    bar = tqdm(total=total, initial=step, desc="train EAGLE-3 drafter", disable=not accelerator.is_main_process)
    order: dict = {}
    while step < total:
        epoch, offset = divmod(step, per_epoch)
        order = order if epoch in order else {epoch: epoch_batches(epoch)}
        batch = (t.to(accelerator.device) for t in collate([train_set[i] for i in order[epoch][offset]], steps))
        loss, agreement = view(*batch, steps, tc["step_decay"])
        accelerator.backward(loss)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", agree=" ".join(f"{a:.2f}" for a in agreement))
        if step % tc["log_every"] == 0:
            log({"event": "train", "step": step, "epoch": epoch, "loss": round(loss.item(), 4),
                 "lr": scheduler.get_last_lr()[0], "train_top1": [round(a, 4) for a in agreement]})
        if step % tc["eval_every"] == 0 and step < total and accelerator.is_main_process:
            log({"event": "heldout", "step": step,
                 "top1_by_depth": evaluate(accelerator.unwrap_model(view), heldout, steps)})
        if step % tc["checkpoint_every"] == 0 or step == total:
            save_checkpoint(accelerator, out / "checkpoint", step)
    bar.close()


def main() -> None:
    args, cfg, cache, log = start_run(__doc__, HERE / "eagle" / "smollm2_135m.yaml",
                                      Path("artifacts/eagle-smollm2-135m"))
    # each process draws its own batches (`batches(rank, world)`): one scheduler step per training step, and the
    # frozen target rows held as buffers are not re-sent every forward (sharded_training)
    accelerator = Accelerator(mixed_precision=cfg["train"].get("mixed_precision", "no"), **sharded_training())
    model, tokenizer = load_smollm2().to(accelerator.device), load_smollm2_tokenizer()
    model.requires_grad_(False)
    drafter_settings = dict(cfg.get("drafter", {}))
    vocab_size = drafter_settings.pop("draft_vocab_size", None)
    layer_ids = EagleDrafter.from_target(model, **drafter_settings).config.aux_layer_ids
    t0 = time.time()
    sequences = feature_data(model, tokenizer, cfg, cache, layer_ids, accelerator)
    log({"event": "data", "sequences": len(sequences), "tokens": sum(s.ids.numel() for s in sequences),
         "by_source": dict(Counter(s.source for s in sequences)), "seconds": round(time.time() - t0, 1)})
    draft_ids = draft_vocabulary(sequences, vocab_size or model.config.vocab_size, model.config.vocab_size)
    torch.manual_seed(cfg["seed"])
    drafter = EagleDrafter.from_target(model, draft_ids, base_model="SmolLM2-135M-Instruct", **drafter_settings)
    if cfg["train"].get("init_from"):  # go on from an earlier drafter (e.g. more data), same draft vocabulary
        earlier = EagleDrafter.from_pretrained(cfg["train"]["init_from"])
        drafter.load_state_dict(earlier.state_dict())
        draft_ids = drafter.draft_token_ids
    heldout_ids, train_ids = heldout_split(len(sequences), cfg["seed"], cfg["data"]["heldout_fraction"])
    steps = cfg["train"]["unroll"]
    train_set = windows(sequences, train_ids, cfg["data"]["window"], steps)
    heldout = windows(sequences, heldout_ids, cfg["data"]["window"], steps)
    log({"event": "split", "train_windows": len(train_set), "heldout_windows": len(heldout),
         "train_anchors": sum(w["anchors"] for w in train_set), "draft_vocab": int(draft_ids.numel())})
    view = TrainingView(drafter, model, draft_ids).to(accelerator.device)
    t1 = time.time()
    train(cfg, view, train_set, heldout, args.out, log, accelerator)
    if accelerator.is_main_process:
        log({"event": "final", "train_seconds": round(time.time() - t1, 1),
             "heldout_top1_by_depth": evaluate(view, heldout, steps)})
        drafter.save_pretrained(args.out, dtype=torch.bfloat16, verifier_name_or_path=VERIFIER)
        (args.out / "recipe.yaml").write_text(args.config.read_text())
        print(f"saved the drafter to {args.out}")


if __name__ == "__main__":
    main()
