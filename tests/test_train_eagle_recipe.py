"""The EAGLE-3 training recipe (recipes/train_eagle.py) on a tiny target: windows pair each anchor's features with
the right tokens and target distributions, the draft vocabulary, the loss falls, training resumes from its
checkpoint, held-out agreement is reported per depth, and the trained drafter is accepted at run time."""

from __future__ import annotations

import pytest
import torch
from conftest import load_recipe, make_llama, repetitive_prompt

from hf_specdec import EagleDrafter, EagleStrategy


@pytest.fixture(scope="module")
def recipe():
    return load_recipe("train_eagle", "train_eagle_recipe")


@pytest.fixture(scope="module")
def tiny():
    return make_llama(seed=6, logit_scale=8.0)  # sharp: the soft-target loss has room to fall


def feature_sequences(recipe, model, layer_ids, count: int = 24):
    """The tiny target's own continuations, teacher-forced as the recipe's data step stores them."""
    out = []
    for i in range(count):
        prompt = repetitive_prompt(200 + i, length=8)
        ids = model.generate(prompt, max_new_tokens=24, min_new_tokens=24, do_sample=False)[0]
        aux, last = recipe.teacher_forced_features(model, ids.tolist(), layer_ids)
        out.append(recipe.FeatureSequence(ids, prompt.shape[1], aux, last))
    return out


def config(epochs: int) -> dict:
    return {"seed": 0, "train": {"epochs": epochs, "batch_positions": 64, "unroll": 3, "step_decay": 0.8, "lr": 3e-3,
                                 "weight_decay": 0.0, "warmup_steps": 2, "log_every": 1, "eval_every": 5,
                                 "checkpoint_every": 5}}


def test_windows_pair_each_anchor_with_its_tokens_and_target_states(recipe):
    n, steps = 12, 3
    seq = recipe.FeatureSequence(torch.arange(100, 100 + n), 4, torch.arange(float(n))[:, None].repeat(1, 6),
                                 torch.arange(float(n))[:, None].repeat(1, 2))
    (window,) = recipe.windows([seq], [0], window=64, steps=steps)
    assert window["anchors"] == n - 1  # anchor p = N - 2 reads x_{N-1}; the target's state there is its label
    assert window["aux"][:, 0].tolist() == list(range(n - 1))  # the features at p
    assert window["ids"].tolist() == list(range(101, 100 + n))  # x_{p+1}, x_{p+2}, ...
    assert window["last"][:, 0].tolist() == list(range(1, n))  # the target's state at p + 1 predicts x_{p+2}
    aux, ids, last, valid = recipe.collate([window], steps)
    assert ids.shape[1] == aux.shape[1] + steps - 1
    assert valid.sum(-1).flatten().tolist() == [11, 10, 9]  # step j needs x_{p+1+j}: fewer anchors deeper
    parts = recipe.windows([seq], [0], window=4, steps=steps)
    assert [w["anchors"] for w in parts] == [4, 4, 3]


def test_draft_vocabulary_keeps_the_most_frequent_tokens(recipe):
    seqs = [recipe.FeatureSequence(torch.tensor([5, 5, 5, 7, 7, 9, 2]), 0, None, None)]
    assert recipe.draft_vocabulary(seqs, 2, 10).tolist() == [5, 7]
    assert recipe.draft_vocabulary(seqs, 6, 10).tolist() == [0, 1, 2, 5, 7, 9]  # filled up with the lowest ids


def test_batches_split_across_processes_without_overlap(recipe):
    items = [{"anchors": 8} for _ in range(20)]
    whole = recipe.batches(items, 16, seed=1)
    shares = [recipe.batches(items, 16, seed=1, rank=r, world=2) for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == len(whole) // 2
    taken = [i for share in shares for group in share for i in group]
    assert len(taken) == len(set(taken))


def test_training_lowers_the_loss_resumes_and_drafts(recipe, tiny, tmp_path):
    from accelerate import Accelerator

    layer_ids = EagleDrafter.from_target(tiny).config.aux_layer_ids
    seqs = feature_sequences(recipe, tiny, layer_ids)
    data = recipe.windows(seqs, range(len(seqs)), window=64, steps=3)
    draft_ids = recipe.draft_vocabulary(seqs, 40, tiny.config.vocab_size)
    records = []

    def run(epochs: int) -> EagleDrafter:
        torch.manual_seed(0)
        drafter = EagleDrafter.from_target(tiny, draft_ids)
        view = recipe.TrainingView(drafter, tiny, draft_ids)
        recipe.train(config(epochs), view, data, data[:2], tmp_path, records.append, Accelerator(cpu=True))
        return drafter

    run(epochs=6)
    losses = [r["loss"] for r in records if r["event"] == "train"]
    top1 = [r["train_top1"][-1] for r in records if r["event"] == "train"]  # the deepest unrolled step's
    assert len(losses) >= 10 and sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5
    assert sum(top1[-5:]) / 5 > sum(top1[:5]) / 5 + 0.1
    assert (tmp_path / "checkpoint" / "step.json").exists()
    steps = len(losses)

    records.clear()
    drafter = run(epochs=9)  # a longer schedule: goes on from the saved step instead of starting over
    assert {"event": "resumed", "step": steps} in records
    heldout = [r for r in records if r["event"] == "heldout"]
    assert len(heldout[-1]["top1_by_depth"]) == 3
    strategy = EagleStrategy(drafter.eval(), tree=None, lookup_min_ngram=0)
    plain = tiny.generate(repetitive_prompt(200, length=8), max_new_tokens=16, do_sample=False)
    out = tiny.generate(repetitive_prompt(200, length=8), max_new_tokens=16, do_sample=False, assistant_model=strategy)
    assert torch.equal(out, plain) and strategy.last_stats.mean_accepted_length > 1.5
