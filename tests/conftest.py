"""Tiny randomly initialised models built in the tests: losslessness holds for any model, so no real weights are
needed for correctness (real-model tests are marked `slow`)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

import hf_specdec  # noqa: F401  (installs the generate hook)
from hf_specdec import tiny_models
from hf_specdec.tiny_models import tiny_random_llama

# Tiny models gain nothing from a second thread, and an OpenMP barrier waiting on a busy core makes each op ~100x
# slower on a loaded 2-core machine.
torch.set_num_threads(1)

VOCAB = 97
EOS = 1


def make_llama(vocab_size: int = VOCAB, layers: int = 2, hidden: int = 32, seed: int = 0, logit_scale: float = 1.0,
               eos_token_id: int | None = EOS) -> LlamaForCausalLM:
    """A tiny Llama. `logit_scale` sharpens (>1) or flattens its output distribution."""
    return tiny_random_llama(vocab_size, eos_token_id=eos_token_id, pad_token_id=0, bos_token_id=0, layers=layers,
                             hidden=hidden, seed=seed, logit_scale=logit_scale, max_positions=512)


def draft_strategy(draft, **settings) -> hf_specdec.DraftModelStrategy:
    """DraftModelStrategy with its cost gate off. Tiny drafts cost as much as tiny targets, so the gate would (rightly)
    stop drafting after a step or two, and the tests would no longer exercise drafts, rejections and stops inside
    them. The gate has tests of its own. Prompt lookup in front is off unless asked for, for the same reason."""
    return hf_specdec.DraftModelStrategy(draft, **{"skip_unprofitable_drafts": False, "lookup_min_ngram": 0, **settings})


@pytest.fixture(scope="session")
def tiny_llama() -> LlamaForCausalLM:
    return make_llama()


@pytest.fixture(scope="session")
def tiny_draft() -> LlamaForCausalLM:
    return make_llama(layers=1, seed=1)


def repetitive_prompt(seed: int, length: int = 16) -> torch.LongTensor:
    """A random prompt that repeats its first half, so n-gram drafters find matches. `[1, ~1.5 * length]`."""
    generator = torch.Generator().manual_seed(seed)
    head = torch.randint(2, VOCAB, (1, length), generator=generator)
    return torch.cat([head, head[:, : length // 2]], dim=-1)


def greedy_drafted_equal_to_plain(model, strategy, label, seeds=range(6), max_new_tokens: int = 30) -> int:
    """Greedy on `repetitive_prompt(seed)` for each seed with and without `strategy`: asserts the same tokens,
    returns how many tokens the strategy drafted in all (tests assert it drafted at all)."""
    drafted = 0
    for seed in seeds:
        prompt = repetitive_prompt(seed)
        expected = model.generate(prompt, max_new_tokens=max_new_tokens, do_sample=False)
        actual = model.generate(prompt, max_new_tokens=max_new_tokens, do_sample=False, assistant_model=strategy)
        assert torch.equal(actual, expected), f"{label} differs on prompt {seed}"
        drafted += strategy.last_stats.drafted
    return drafted


@pytest.fixture(scope="session")
def byte_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level tokenizer with no merges: ids 0..255 are bytes, 256 is EOS."""
    return tiny_models.byte_tokenizer()


RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def load_recipe(name: str, module_name: str):
    """recipes/<name>.py as a module called `module_name` (recipes are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(module_name, RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module
