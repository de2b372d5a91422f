"""recipes/distill_draft.py on a tiny target: batches, the loss, a short training run that lowers it, and resume."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_llama

from hf_specdec.distilled_draft import build_draft

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


@pytest.fixture(scope="module")
def recipe():
    spec = importlib.util.spec_from_file_location("distill_draft_recipe", RECIPES / "distill_draft.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def target():
    return make_llama(layers=3, seed=6, logit_scale=4.0).requires_grad_(False)


def teacher_sequences(recipe, target, count: int = 24, seed: int = 0):
    """Random texts with the target's last hidden states, the first 4 tokens of each a prompt."""
    generator = torch.Generator().manual_seed(seed)
    sequences = []
    for _ in range(count):
        ids = torch.randint(2, 97, (int(torch.randint(8, 20, (1,), generator=generator)),), generator=generator)
        with torch.no_grad():
            hidden = target.model(ids[None]).last_hidden_state[0, :-1]
        sequences.append(recipe.TrainingSequence(ids.tolist(), 4, hidden.to(torch.float16)))
    return sequences


def test_batch_plan_covers_every_sequence_once_within_the_budget(recipe):
    lengths = [5, 40, 12, 33, 7, 7, 60, 18] * 20
    plan = recipe.batch_plan(lengths, tokens_per_batch=128, seed=0, epoch=1)
    assert sorted(i for batch in plan for i in batch) == list(range(len(lengths)))
    assert all(len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 128 for b in plan)
    assert plan == recipe.batch_plan(lengths, 128, seed=0, epoch=1) != recipe.batch_plan(lengths, 128, 0, 2)


def test_collate_scores_only_what_the_target_wrote(recipe):
    sequence = recipe.TrainingSequence(list(range(10, 20)), 4, torch.arange(9.0)[:, None].repeat(1, 3))
    ids, attention, loss_mask, teacher = recipe.collate([sequence, recipe.TrainingSequence([1, 2, 3], 0,
                                                                                         torch.zeros(2, 3))])
    assert ids.shape == (2, 9) and attention[1].tolist() == [1, 1] + [0] * 7
    assert loss_mask[0].tolist() == [False] * 3 + [True] * 6  # row 3 (the last prompt token) predicts ids[4]
    assert teacher[:6, 0].tolist() == [3.0, 4.0, 5.0, 6.0, 7.0, 8.0] and teacher.shape[0] == 8


def test_the_loss_is_zero_only_for_the_teacher(recipe):
    teacher = torch.randn(6, 11)
    assert recipe.distillation_loss(teacher, teacher)[0].abs() < 1e-6
    loss, agreement = recipe.distillation_loss(torch.randn(6, 11), teacher)
    assert loss > 0.05 and 0 <= agreement <= 1


def test_training_lowers_the_loss_and_resumes(recipe, target, tmp_path):
    sequences = teacher_sequences(recipe, target)
    heldout = teacher_sequences(recipe, target, count=6, seed=1)
    lm_weight = target.lm_head.weight.detach()
    vocab = recipe.draft_vocabulary(sequences, "full", lm_weight.shape[0])
    cfg = {"seed": 0, "train": {"epochs": 6, "tokens_per_batch": 128, "lr": 0.01, "weight_decay": 0.0,
                                "warmup_steps": 2, "temperature": 1.0, "checkpoint_every": 5, "eval_every": 1000}}
    draft = build_draft(target, [0]).float()
    view = recipe.DistillationView(draft.get_decoder(), lm_weight[vocab].clone())
    before = recipe.heldout_metrics(view.eval(), heldout, lm_weight, vocab, 128)
    records = []
    recipe.train(cfg, view.train(), sequences, heldout, lm_weight, vocab, tmp_path, records.append)
    after = recipe.heldout_metrics(view.eval(), heldout, lm_weight, vocab, 128)
    assert after["kl"] < 0.8 * before["kl"]
    assert after["top1_agreement"] >= before["top1_agreement"]
    assert target.get_input_embeddings().weight.grad is None  # the shared embedding stays frozen
    cfg["train"]["epochs"] = 7  # a longer run resumes from the saved step instead of starting over
    steps = [r["step"] for r in records if r["event"] == "heldout"][-1]
    recipe.train(cfg, recipe.DistillationView(build_draft(target, [0]).float().get_decoder(), lm_weight.clone()),
                 sequences, heldout, lm_weight, vocab, tmp_path, records.append)
    assert {"event": "resumed", "step": steps} in records


def test_the_seen_vocabulary_is_the_training_texts_tokens(recipe):
    sequences = [recipe.TrainingSequence([5, 9, 5], 0, torch.zeros(2, 3)),
                 recipe.TrainingSequence([2, 9], 0, torch.zeros(1, 3))]
    assert recipe.draft_vocabulary(sequences, "seen", 97).tolist() == [2, 5, 9]
    with pytest.raises(ValueError, match="'seen' or 'full'"):
        recipe.draft_vocabulary(sequences, "top", 97)
