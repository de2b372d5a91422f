"""The recipes on an accelerator and on several processes, checked on CPU.

Device plumbing: the models go to the `meta` device while the data stays on the CPU, as a GPU run has them; a
meta module refuses CPU inputs, and a forward pre-hook checks every input of the first forward is on the module's
device, then stops the run there (meta tensors hold no values to go on with). Where a step function's work after
the forward needs no values, it runs to the end on meta and its results must be meta tensors too.
Several processes: the sharding helpers are called as rank 0 and rank 1 of 2 in turn, without launching anything.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from types import SimpleNamespace

import conftest
import pytest
import torch
import torch.fx.experimental._config
from conftest import make_llama

from hf_specdec.medusa_heads import MedusaHeads, MedusaHeadsConfig
from hf_specdec.tiny_models import BYTE_EOS, BYTE_VOCAB, byte_tokenizer, tiny_random_llama

META = torch.device("meta")


def load_recipe(name: str):
    return conftest.load_recipe(name, f"{name}_recipe_devices")


@pytest.fixture(scope="module")
def medusa():
    return load_recipe("train_medusa")


@pytest.fixture(scope="module")
def distill():
    return load_recipe("distill_draft")


@pytest.fixture(scope="module")
def data(medusa):
    return sys.modules["self_distill"]  # imported by the recipe from its own folder


class Reached(Exception):
    """The checked module's forward was reached with every input on its device."""


@contextlib.contextmanager
def stop_at_forward(module: torch.nn.Module, device: torch.device):
    """Checks the inputs of `module`'s next forward are all on `device`, then stops the run with `Reached`."""

    def check(mod, args, kwargs):
        tensors = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)]
        wrong = sorted({str(t.device) for t in tensors if t.device != device})
        assert tensors and not wrong, f"{type(mod).__name__} on {device} was given inputs on {wrong}"
        raise Reached

    handle = module.register_forward_pre_hook(check, with_kwargs=True)
    try:
        with pytest.raises(Reached):
            yield
    finally:
        handle.remove()


def byte_llama(seed: int = 0):
    return tiny_random_llama(BYTE_VOCAB, eos_token_id=BYTE_EOS, pad_token_id=BYTE_EOS, bos_token_id=BYTE_EOS,
                             seed=seed).requires_grad_(False)


PROMPTS = ["def add(a, b):", "Write a haiku.", "x = [", "Tell me why", "import os\n", "Once upon"]


# ---- the data stage (recipes/self_distill.py) ---------------------------------------------------------------------
def test_greedy_generation_feeds_the_target_on_its_device(data):
    model = byte_llama().to(META)
    ids, mask = torch.tensor([[5, 6, 7], [0, 8, 9]]), torch.tensor([[1, 1, 1], [0, 1, 1]])
    with stop_at_forward(model.model, META):
        data.greedy_with_hidden(model, ids, mask, max_new_tokens=4, eos_token_id=BYTE_EOS)


def test_self_distillation_feeds_the_target_on_its_device(data, tmp_path):
    model = byte_llama().to(META)
    with stop_at_forward(model.model, META):
        data.self_distill(model, byte_tokenizer(), PROMPTS, 4, 2, tmp_path, "code")


def test_stdlib_hidden_states_feed_the_target_on_its_device(data, tmp_path):
    model = byte_llama().to(META)
    with stop_at_forward(model.model, META):
        data.hidden_states(model, [[5, 6, 7, 8]], tmp_path / "stdlib.pt")


# ---- Medusa (recipes/train_medusa.py) -----------------------------------------------------------------------------
def medusa_tables(rows: int = 40, num_heads: int = 2):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(rows, 16, generator=generator).half()
    labels = torch.randint(0, 97, (rows, num_heads), generator=generator)
    labels[:5, 1] = -100
    return hidden, labels, torch.randint(0, 97, (rows, num_heads), generator=generator)


@pytest.mark.parametrize("token_conditioned", [False, True])
def test_medusa_heldout_evaluation_feeds_the_heads_on_their_device(medusa, token_conditioned):
    weight = torch.randn(97, 16)
    heads = MedusaHeads(MedusaHeadsConfig(16, 97, num_heads=2, token_conditioned=token_conditioned))
    view = medusa.TrainingView(heads, weight, weight).to(META)
    with stop_at_forward(view, META):
        medusa.evaluate(view, *medusa_tables())


# ---- the distilled draft (recipes/distill_draft.py) ---------------------------------------------------------------
def draft_sequences(distill, count: int = 6, hidden: int = 32):
    generator = torch.Generator().manual_seed(1)
    return [distill.TrainingSequence(torch.randint(2, 97, (n,), generator=generator).tolist(), 3,
                                     torch.randn(n - 1, hidden, generator=generator).half())
            for n in (7, 9, 12, 5, 8, 10)[:count]]


def test_distill_heldout_evaluation_feeds_the_draft_on_its_device(distill):
    from hf_specdec.distilled_draft import build_draft

    target = make_llama(seed=2).requires_grad_(False)
    lm_weight = target.lm_head.weight.detach().to(META)
    vocab = torch.arange(97)
    view = distill.DistillationView(build_draft(target, [0]).get_decoder(), lm_weight[vocab].clone()).to(META)
    with stop_at_forward(view, META):
        distill.heldout_metrics(view, draft_sequences(distill), lm_weight, vocab, 64)


def test_medusa_accuracy_counts_stay_on_the_heads_device(medusa):
    weight = torch.randn(97, 16)
    view = medusa.TrainingView(MedusaHeads(MedusaHeadsConfig(16, 97, num_heads=2, token_conditioned=True)),
                               weight, weight)
    _, counts = medusa.rank_hits(view, *medusa_tables(), ranks=3, chunk=16)  # three chunks, the last partial
    assert counts[:, 0].tolist() == [40, 35]  # on the CPU: every labelled row counted
    hits, counts = medusa.rank_hits(view.to(META), *medusa_tables(), ranks=3, chunk=16)
    assert hits.device == counts.device == META and hits.shape == (2, 3) and counts.shape == (2, 1)


def test_medusa_untrained_heads_follow_the_lm_head_device(medusa):
    view = medusa.base_view(torch.randn(97, 16, device=META), num_heads=2)
    assert {p.device for p in view.parameters()} == {META} and view.lm_weight.device == META


class TableDecoder(torch.nn.Module):
    """A decoder with no data-dependent branches (a Llama checks its padding mask's values), so a whole held-out
    evaluation runs on the meta device."""

    def __init__(self, vocab: int = 97, hidden: int = 32) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, hidden)

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(last_hidden_state=self.embed(input_ids) * attention_mask[..., None])


def test_distill_heldout_sums_stay_on_the_draft_device(distill, monkeypatch):
    lm_weight, vocab = torch.randn(97, 32), torch.arange(0, 97, 2)  # a draft vocabulary of every other token
    view = distill.DistillationView(TableDecoder(), lm_weight[vocab].clone())
    cpu = distill.heldout_sums(view, draft_sequences(distill), lm_weight, vocab, 64)
    assert cpu[3] == sum(len(s.ids) - 3 for s in draft_sequences(distill))  # every scored position counted
    # On meta, selecting the loss positions (a boolean mask) needs its count of True: all of them, when every
    # sequence has one length and no prompt.
    monkeypatch.setattr(torch.fx.experimental._config, "meta_nonzero_assume_all_nonzero", True)
    sequences = [distill.TrainingSequence(s.ids[:7], 0, s.hidden[:6]) for s in draft_sequences(distill)
                 if len(s.ids) >= 7]
    sums = distill.heldout_sums(view.to(META), sequences, lm_weight.to(META), vocab, 64)
    assert sums.device == META and sums.shape == (4,)


# ---- several processes --------------------------------------------------------------------------------------------
def test_ranks_split_work_evenly_without_overlap(data):
    items = list(range(11))
    shares = [data.shard(items, rank, 2) for rank in (0, 1)]
    assert sorted(shares[0] + shares[1]) == items and not set(shares[0]) & set(shares[1])
    assert len(shares[0]) - len(shares[1]) == 1 and data.shard(items, 0, 1) == items
    assert data.shard(torch.arange(5, 8), 1, 2).tolist() == [6]  # tensors of indices too
    assert [data.shard([7], rank, 2) for rank in (0, 1)] == [[7], [7]]  # never empty: DDP steps every process
    owned = [[n for n in range(7) if data.owns(n, rank, 3)] for rank in range(3)]
    assert owned == [[0, 3, 6], [1, 4], [2, 5]]


def test_atomic_save_never_leaves_a_half_written_file(data, tmp_path, monkeypatch):
    path = tmp_path / "batch.pt"
    data.atomic_save({"x": torch.arange(3)}, path)
    assert torch.equal(torch.load(path)["x"], torch.arange(3)) and [p.name for p in tmp_path.iterdir()] == [path.name]
    real_save = torch.save

    def interrupted(obj, target):
        Path(target).write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        data.atomic_save({"x": torch.arange(5)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.equal(torch.load(path)["x"], torch.arange(3))  # the old file, whole; no temporary left
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def one_process() -> SimpleNamespace:
    return SimpleNamespace(process_index=0, num_processes=1, is_main_process=True, wait_for_everyone=lambda: None)


def test_two_ranks_share_self_distillation_and_both_load_it_all(data, tmp_path, monkeypatch):
    model, tokenizer = byte_llama(seed=4), byte_tokenizer()
    tokenizer.padding_side = "left"
    plan = data.generation_batches(tokenizer, PROMPTS, 4, 2, tmp_path, "code")  # 3 batches of 2 prompts
    written = [data.write_owned_batches(model, tokenizer, plan, 4, rank, 2) for rank in (0, 1)]
    assert written == [[0, 2], [1]] and all(path.exists() for _, path in plan)
    assert not list(tmp_path.glob("*.tmp"))
    monkeypatch.setattr(data, "generate_batch", lambda *args: pytest.fail("a finished batch was generated again"))
    shared = data.self_distill(model, tokenizer, PROMPTS, 4, 2, tmp_path, "code", one_process())
    monkeypatch.undo()
    (tmp_path / "alone").mkdir()
    alone = data.self_distill(model, tokenizer, PROMPTS, 4, 2, tmp_path / "alone", "code", one_process())
    assert [s.ids for s in shared] == [s.ids for s in alone] and len(shared) == len(PROMPTS)
    assert all(torch.equal(a.hidden, b.hidden) for a, b in zip(shared, alone))


def test_two_ranks_share_the_stdlib_hidden_states(data, tmp_path):
    model = byte_llama(seed=5)
    chunks = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [14, 15, 16], [17, 18]]
    path = tmp_path / "stdlib_hidden_states.pt"
    parts = [data.write_hidden_part(model, chunks, path, rank, 2) for rank in (0, 1)]
    assert [len(torch.load(part)) for part in parts] == [3, 2]
    data.merge_hidden_parts(path, len(chunks), 2)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # the parts are gone
    alone = data.hidden_states(model, chunks, tmp_path / "alone.pt", one_process())
    shared = data.hidden_states(model, chunks, path, one_process())  # loaded from the merged file
    assert all(torch.equal(a, b) for a, b in zip(shared, alone)) and len(shared) == len(chunks)


def test_only_the_main_process_logs(data, tmp_path):
    main, other = data.run_log(tmp_path / "main.jsonl", True), data.run_log(tmp_path / "other.jsonl", False)
    main({"event": "x"})
    other({"event": "x"})
    assert (tmp_path / "main.jsonl").exists() and not (tmp_path / "other.jsonl").exists()


def as_rank(recipe, monkeypatch, rank: int, world: int) -> list:
    """The recipe's `Accelerator` (and accelerate's scheduler wrapper) report process `rank` of `world`; the run
    itself stays one CPU process. Returns the list the recipe's learning-rate schedulers will be appended to."""
    import accelerate.scheduler
    from accelerate import Accelerator

    fake = type("RankedAccelerator", (Accelerator,), {"process_index": rank, "num_processes": world,
                                                     "is_main_process": rank == 0})
    monkeypatch.setattr(recipe, "Accelerator", fake)
    monkeypatch.setattr(accelerate.scheduler, "AcceleratorState", lambda: SimpleNamespace(num_processes=world))
    schedulers, make = [], recipe.warmup_cosine
    monkeypatch.setattr(recipe, "warmup_cosine", lambda *args: schedulers.append(make(*args)) or schedulers[-1])
    return schedulers


def test_medusa_ranks_train_on_disjoint_halves_of_every_batch(medusa, tmp_path, monkeypatch):
    hidden, labels, context = medusa_tables(rows=64)
    hidden[:, 0] = torch.arange(64)  # the row's number, to see which rows each process trained on
    cfg = {"seed": 0, "train": {"grad_accum": 1, "loss_vocab": "full", "lr": 0.01, "weight_decay": 0.0,
                                "batch_size": 32, "epochs": 1, "warmup_steps": 1, "head_decay": 0.8,
                                "eval_every": 100, "checkpoint_every": 100}}
    weight = torch.randn(97, 16)
    seen, records = {}, []
    for rank in (0, 1):
        schedulers = as_rank(medusa, monkeypatch, rank, 2)
        view = medusa.TrainingView(MedusaHeads(MedusaHeadsConfig(16, 97, num_heads=2)), weight, weight)
        rows = seen[rank] = []
        view.register_forward_pre_hook(lambda m, args, kwargs: None if kwargs.get("full_vocab") else
                                       rows.append(args[0][:, 0].long().tolist()), with_kwargs=True)
        medusa.train(cfg, view, (hidden, labels, context), (hidden, labels, context), tmp_path / str(rank),
                     records.append)
        assert schedulers[0].last_epoch == 2  # one schedule step per training step, not one per process
        monkeypatch.undo()
    assert [len(step) for step in seen[0]] == [len(step) for step in seen[1]] == [16, 16]
    for mine, theirs in zip(seen[0], seen[1]):
        assert not set(mine) & set(theirs)
    assert sorted(sum(seen[0] + seen[1], [])) == list(range(64))  # one epoch: every row once, across the two
    assert [r["step"] for r in records if r["event"] == "heldout"] == [2]  # the main process alone evaluates


def test_distill_ranks_train_on_disjoint_shares_of_every_batch(distill, tmp_path, monkeypatch):
    from hf_specdec.distilled_draft import build_draft

    target = make_llama(seed=2).requires_grad_(False)
    sequences = draft_sequences(distill) * 2
    lm_weight = target.lm_head.weight.detach()
    cfg = {"seed": 0, "train": {"epochs": 1, "tokens_per_batch": 64, "lr": 0.01, "weight_decay": 0.0,
                                "warmup_steps": 1, "temperature": 1.0, "checkpoint_every": 100, "eval_every": 100}}
    seen = {}
    for rank in (0, 1):
        schedulers = as_rank(distill, monkeypatch, rank, 2)
        view = distill.DistillationView(build_draft(target, [0]).float().get_decoder(), lm_weight.clone())
        rows = seen[rank] = []
        # Training forwards only (held-out evaluation runs without gradients).
        view.register_forward_pre_hook(lambda m, args: rows.append(args[0].shape[0]) if torch.is_grad_enabled()
                                       else None)
        distill.train(cfg, view.train(), sequences, sequences[:2], lm_weight, torch.arange(97), tmp_path / str(rank),
                      lambda record: None)
        assert schedulers[0].last_epoch == len(seen[rank])  # one schedule step per training step
        monkeypatch.undo()
    plan = distill.batch_plan([len(s.ids) for s in sequences], 64, 0, 0)
    assert len(seen[0]) == len(seen[1]) == len(plan)
    assert [a + b for a, b in zip(seen[0], seen[1])] == [max(2, len(batch)) for batch in plan]


def test_sharded_training_splits_batches_and_keeps_frozen_buffers_local(data):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True, **data.sharded_training())
    assert accelerator.split_batches and accelerator.ddp_handler.broadcast_buffers is False


def test_an_interrupted_checkpoint_is_never_resumed(data, tmp_path, monkeypatch):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(torch.nn.Linear(2, 2))
    data.save_checkpoint(accelerator, tmp_path, 5)
    assert data.resume(accelerator, tmp_path, lambda record: None) == 5
    monkeypatch.setattr(accelerator, "save_state", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        data.save_checkpoint(accelerator, tmp_path, 10)
    assert data.resume(accelerator, tmp_path, lambda record: None) == 0 and model is not None
