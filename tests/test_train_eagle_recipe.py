"""The EAGLE training recipe (recipes/train_eagle.py) on a tiny target: drafter pairs and labels, the loss falls,
training resumes from its checkpoint, held-out accuracy is reported per depth."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_llama, repetitive_prompt

from hf_specdec import EagleDrafter, EagleDrafterConfig

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


@pytest.fixture(scope="module")
def recipe():
    spec = importlib.util.spec_from_file_location("train_eagle_recipe", RECIPES / "train_eagle.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny():
    return make_llama(seed=6)


def sequences(recipe, model, count: int = 12):
    """The tiny target's own continuations with the hidden states that produced each token, as the recipe's data
    step stores them (hidden row t produced ids[t + 1])."""
    out = []
    for i in range(count):
        prompt = repetitive_prompt(200 + i, length=8)
        ids = model.generate(prompt, max_new_tokens=24, min_new_tokens=24, do_sample=False)
        with torch.no_grad():
            hidden = model(ids[:, :-1], output_hidden_states=True).hidden_states[-1][0].to(torch.float16)
        out.append(recipe.TrainingSequence(ids[0].tolist(), prompt.shape[1], hidden))
    return out


def config(epochs: int) -> dict:
    return {"seed": 0, "train": {"epochs": epochs, "batch_positions": 64, "unroll": 3, "step_decay": 0.8, "lr": 3e-3,
                                 "weight_decay": 0.0, "warmup_steps": 2, "grad_accum": 1, "log_every": 1,
                                 "eval_every": 5, "checkpoint_every": 5}}


def test_windows_pair_features_with_the_next_token_and_skip_prompt_labels(recipe):
    ids = list(range(10, 22))  # 4 prompt tokens, then 8 written by the target
    hidden = torch.arange(11.0)[:, None].repeat(1, 3)  # row t produced ids[t + 1]
    (window,) = recipe.windows([recipe.TrainingSequence(ids, 4, hidden)], [0], window=64)
    assert window.tokens.tolist() == ids[1:]  # pair p: (f_p, x_{p+1})
    assert torch.equal(window.features[:, 0], torch.arange(11.0))
    labels = window.labels.tolist()
    assert labels[:2] == [-100, -100] and labels[2:10] == ids[4:] and labels[10] == -100  # x_{p+2}, not in the prompt
    parts = recipe.windows([recipe.TrainingSequence(ids, 4, hidden)], [0], window=4)
    assert [w.tokens.numel() for w in parts] == [4, 4, 3]


def test_training_lowers_the_loss_and_resumes(recipe, tiny, tmp_path):
    data = recipe.windows(sequences(recipe, tiny), range(12), window=64)
    records = []

    def run(epochs: int) -> EagleDrafter:
        torch.manual_seed(0)
        drafter = EagleDrafter(EagleDrafterConfig.for_target(tiny.config))
        view = recipe.TrainingView(drafter, recipe.Borrowed(tiny))
        vocab = recipe.train(config(epochs), view, data, data[:2], tmp_path, records.append)
        assert vocab.numel() > 1
        return drafter

    run(epochs=4)
    losses = [r["loss"] for r in records if r["event"] == "train"]
    top1 = [r["train_top1"][-1] for r in records if r["event"] == "train"]  # the deepest unrolled step's
    # The tiny target's logits are flat (CE stays near log V), so the loss falls by little while top-1 climbs.
    assert len(losses) >= 10 and sum(losses[-5:]) / 5 < 0.93 * sum(losses[:5]) / 5
    assert sum(top1[-5:]) / 5 > sum(top1[:5]) / 5 + 0.3
    assert (tmp_path / "checkpoint" / "step.json").exists()
    steps = len(losses)

    records.clear()
    run(epochs=6)  # a longer schedule: goes on from the saved step instead of starting over
    assert {"event": "resumed", "step": steps} in records
    heldout = [r for r in records if r["event"] == "heldout"]
    assert len(heldout[-1]["top1_by_depth"]) == 3
