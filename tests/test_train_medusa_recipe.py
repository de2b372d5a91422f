"""The Medusa training recipe and the recipes' shared data pieces (recipes/self_distill.py): batched greedy
generation with hidden states, label masking of prompts, and the template prompts."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import EOS, make_llama

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


@pytest.fixture(scope="module")
def recipe():
    spec = importlib.util.spec_from_file_location("train_medusa_recipe", RECIPES / "train_medusa.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def self_distill(recipe):
    return sys.modules["self_distill"]  # imported by the recipe from its own folder


def left_padded(prompts: list[list[int]], pad: int = 0) -> tuple[torch.LongTensor, torch.LongTensor]:
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def test_greedy_with_hidden_matches_plain_generate_row_by_row(self_distill):
    model = make_llama(seed=3)
    prompts = [[5, 9, 13, 2, 7, 40, 41], [8, 3], [60, 61, 62, 63]]
    ids, mask = left_padded(prompts)
    new_tokens, hidden = self_distill.greedy_with_hidden(model, ids, mask, max_new_tokens=12, eos_token_id=EOS)
    assert hidden.shape[:2] == (3, ids.shape[1] + new_tokens.shape[1] - 1)
    for row, prompt in enumerate(prompts):
        alone = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)[0, len(prompt):].tolist()
        got = new_tokens[row].tolist()[: len(alone)]
        assert got == alone, f"row {row}"
        # The hidden state that produced the first new token is the prompt's last one, as a plain forward gives.
        reference = model.model(torch.tensor([prompt])).last_hidden_state[0, -1]
        torch.testing.assert_close(hidden[row, ids.shape[1] - 1], reference, rtol=1e-4, atol=1e-4)


def test_position_table_never_trains_on_prompt_labels(recipe):
    ids = list(range(10, 20))  # 4 prompt tokens, then 6 written by the target
    sequence = recipe.TrainingSequence(ids=ids, prompt_len=4, hidden=torch.arange(9.0)[:, None].repeat(1, 3))
    hidden, labels, context = recipe.position_table([sequence], [0], num_heads=2)
    # Row t's head k predicts ids[t + 1 + k]; a label in the prompt (index < 4) is dropped.
    assert (labels[labels != -100] >= 14).all()
    assert hidden[:, 0].tolist() == [2.0, 3.0, 4.0, 5.0, 6.0, 7.0]  # rows whose head-1 label is the target's
    assert labels[0].tolist() == [14, 15] and labels[-1].tolist() == [19, -100]
    # Row t's context is ids[t + 1 .. t + K] (0 past the end): head k reads the first k, prompt tokens included.
    assert context[0].tolist() == [13, 14] and context[-1].tolist() == [18, 19]


def test_template_prompts_are_distinct_filled_and_seeded(self_distill):
    parts = yaml.safe_load((RECIPES / "medusa" / "prose_prompt_parts.yaml").read_text())
    prompts = self_distill.template_prompts(parts, 120, seed=0)
    assert len(prompts) == len(set(prompts)) == 120
    assert not any("{" in p or "}" in p for p in prompts)
    assert prompts == self_distill.template_prompts(parts, 120, seed=0)
    assert prompts != self_distill.template_prompts(parts, 120, seed=1)


@pytest.mark.parametrize("token_conditioned", [False, True])
def test_train_returns_the_seen_vocabulary_and_resumes(recipe, tmp_path, token_conditioned):
    """`train` learns the labels of random hidden states, returns the loss vocabulary (the recipe restricts
    drafting to it) and picks up from its checkpoint."""
    from hf_specdec.medusa_heads import MedusaHeads, MedusaHeadsConfig

    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(64, 16, generator=generator)
    labels = (10 + hidden[:, :5].argmax(-1))[:, None].repeat(1, 2)  # [64, 2]: learnable from the hidden state
    labels[:8, 1] = -100
    lm_weight = torch.randn(97, 16, generator=generator)
    context = torch.randint(0, 97, (64, 2), generator=generator)
    cfg = {"seed": 0, "train": {"grad_accum": 1, "loss_vocab": "seen", "lr": 0.05, "weight_decay": 0.0,
                                "batch_size": 32, "epochs": 20, "warmup_steps": 1, "head_decay": 0.8,
                                "eval_every": 100, "checkpoint_every": 10}}
    records = []
    config = MedusaHeadsConfig(16, 97, num_heads=2, token_conditioned=token_conditioned)
    view = recipe.TrainingView(MedusaHeads(config), lm_weight, lm_weight)
    data = (hidden, labels, context)
    before = recipe.evaluate(view, *data)
    seen = recipe.train(cfg, view, data, data, tmp_path, records.append)
    assert torch.equal(seen, torch.unique(labels[labels != -100]))
    assert recipe.evaluate(view, *data)[0] > before[0] + 0.15
    cfg["train"]["epochs"] = 21  # a longer run resumes from the saved step instead of starting over
    recipe.train(cfg, recipe.TrainingView(MedusaHeads(config), lm_weight, lm_weight), data, data, tmp_path,
                 records.append)
    assert {"event": "resumed", "step": 40} in records


def test_token_conditioned_heads_learn_what_only_the_tokens_tell(recipe, tmp_path):
    """Labels that depend on the context token alone (not on the hidden state): token-conditioned heads learn
    them, plain heads cannot."""
    from hf_specdec.medusa_heads import MedusaHeads, MedusaHeadsConfig

    generator = torch.Generator().manual_seed(1)
    hidden = 0.1 * torch.randn(256, 16, generator=generator)
    context = torch.randint(0, 8, (256, 1), generator=generator)
    labels = 20 + context  # head 1 must copy x_{t+1}'s class: invisible in the hidden state
    embed = torch.randn(97, 16, generator=generator)
    cfg = {"seed": 0, "train": {"grad_accum": 1, "loss_vocab": "full", "lr": 0.05, "weight_decay": 0.0,
                                "batch_size": 64, "epochs": 60, "warmup_steps": 1, "head_decay": 0.8,
                                "eval_every": 1000, "checkpoint_every": 1000}}
    accuracy = {}
    for conditioned in (False, True):
        view = recipe.TrainingView(MedusaHeads(MedusaHeadsConfig(16, 97, num_heads=1, token_conditioned=conditioned)),
                                   embed, embed)
        recipe.train(cfg, view, (hidden, labels, context), (hidden, labels, context), tmp_path / str(conditioned),
                     lambda record: None)
        accuracy[conditioned] = recipe.evaluate(view, hidden, labels, context)[0]
    assert accuracy[True] > 0.9 and accuracy[False] < 0.5
