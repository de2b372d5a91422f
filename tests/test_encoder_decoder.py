"""Encoder-decoder targets (tiny random T5 and BART): the encoder runs once, the loop drafts and verifies decoder
tokens, rollback crops the decoder's self-attention cache; greedy equals plain `generate`, sampling matches it."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, draft_strategy, repetitive_prompt
from test_sampling import homogeneity_pvalue, sample_pairs

import hf_specdec
from hf_specdec.tiny_models import tiny_random_seq2seq

FAMILIES = ["t5", "bart"]
EOS = 1
MAX_NEW = 24


def target_model(family: str):
    return tiny_random_seq2seq(family, VOCAB, eos_token_id=EOS, layers=2, seed=0)


def draft_model(family: str):
    return tiny_random_seq2seq(family, VOCAB, eos_token_id=EOS, layers=1, seed=1)


def make_strategies(family: str) -> dict[str, hf_specdec.SpeculativeStrategy]:
    return {
        "ngram": hf_specdec.NGramStrategy(skip_unprofitable_drafts=False),
        "nasd": hf_specdec.NASDStrategy(skip_unprofitable_drafts=False),
        "draft_model": draft_strategy(draft_model(family)),
        "draft_model_lookup": draft_strategy(draft_model(family), lookup_min_ngram=2),
        "draft_model_defaults": hf_specdec.DraftModelStrategy(draft_model(family)),
    }


@pytest.fixture(scope="module", params=FAMILIES)
def family_target(request):
    return request.param, target_model(request.param)


@pytest.mark.parametrize("name", ["ngram", "nasd", "draft_model", "draft_model_lookup", "draft_model_defaults"])
def test_greedy_equals_plain_generate(family_target, name):
    family, target = family_target
    strategy = make_strategies(family)[name]
    drafted = 0
    for seed in range(6):
        source = repetitive_prompt(seed)
        mask = torch.ones_like(source)
        plain = target.generate(source, attention_mask=mask, max_new_tokens=MAX_NEW, do_sample=False)
        ours = target.generate(source, attention_mask=mask, max_new_tokens=MAX_NEW, do_sample=False,
                               assistant_model=strategy)
        assert torch.equal(plain, ours), (family, name, seed)
        drafted += strategy.last_stats.drafted
    assert drafted > 0  # drafts reached the verifier, rejections included


def test_prompt_lookup_copies_from_the_source(family_target):
    """A decoder output that repeats a stretch of the source is drafted from the source (the first repeat cannot
    come from the output itself), and a draft copied from the source stops at its end."""
    strategy = hf_specdec.NGramStrategy(skip_unprofitable_drafts=False, min_ngram_size=2)
    source = torch.randperm(VOCAB - 2, generator=torch.Generator().manual_seed(0))[None, :20] + 2  # no repeats
    strategy.set_encoder_inputs({"input_ids": source})
    assert torch.equal(strategy.source_ids, source[0])
    output = torch.cat([torch.tensor([[0]]), source[:, 4:6]], dim=-1)  # the output so far ends with source[4:6]
    assert strategy.propose(output, 3).tokens.tolist() == source[0, 6:9].tolist()
    near_end = torch.cat([torch.tensor([[0]]), source[:, 16:18]], dim=-1)
    assert strategy.propose(near_end, 5).tokens.tolist() == source[0, 18:20].tolist()


def test_padded_source_is_dropped_from_lookup():
    strategy = hf_specdec.NGramStrategy()
    source = torch.tensor([[5, 6, 7, 0, 0]])
    strategy.set_encoder_inputs({"input_ids": source, "attention_mask": torch.tensor([[1, 1, 1, 0, 0]])})
    assert strategy.source_ids.tolist() == [5, 6, 7]
    strategy.set_encoder_inputs(None)
    assert strategy.source_ids is None


def test_cache_after_generation_matches_a_fresh_forward(family_target):
    """The decoder's self-attention cache holds exactly the accepted tokens: equal to a fresh decoder pass."""
    family, target = family_target
    source = repetitive_prompt(1)
    out = target.generate(source, max_new_tokens=MAX_NEW, do_sample=False, return_dict_in_generate=True,
                          assistant_model=draft_strategy(draft_model(family)))
    sequence = out.sequences  # [1, n]
    cache = hf_specdec.compat.output_cache(out).self_attention_cache
    assert cache.get_seq_length() == sequence.shape[1] - 1
    fresh = target(input_ids=source, decoder_input_ids=sequence[:, :-1], use_cache=True)
    fresh_cache = hf_specdec.compat.output_cache(fresh).self_attention_cache
    for ours, theirs in zip(cache.layers, fresh_cache.layers):
        # float rounding of a chunked vs a one-pass decoder (~1e-4 here); a wrong slot would be off by O(1)
        torch.testing.assert_close(ours.keys, theirs.keys, atol=5e-4, rtol=1e-3)
        torch.testing.assert_close(ours.values, theirs.values, atol=5e-4, rtol=1e-3)


def test_return_dict_is_an_encoder_decoder_output(family_target):
    family, target = family_target
    source = repetitive_prompt(2)
    plain = target.generate(source, max_new_tokens=8, do_sample=False, return_dict_in_generate=True,
                            output_scores=True)
    ours = target.generate(source, max_new_tokens=8, do_sample=False, return_dict_in_generate=True, output_scores=True,
                           assistant_model=hf_specdec.NGramStrategy(skip_unprofitable_drafts=False))
    assert type(ours) is type(plain)
    assert torch.equal(ours.sequences, plain.sequences) and len(ours.scores) == len(plain.scores)
    torch.testing.assert_close(torch.cat(ours.scores), torch.cat(plain.scores), atol=1e-4, rtol=1e-4)


def test_refusals_name_the_fix(family_target):
    family, target = family_target
    source = repetitive_prompt(0)
    heads = hf_specdec.MedusaHeads(hf_specdec.MedusaHeadsConfig(32, VOCAB, num_heads=2))
    with pytest.raises(ValueError, match="decoder-only targets.*NGramStrategy"):
        target.generate(source, max_new_tokens=4, assistant_model=hf_specdec.MedusaStrategy(heads))
    decoder_only = hf_specdec.tiny_models.tiny_random_llama(VOCAB, eos_token_id=EOS, pad_token_id=0, bos_token_id=0)
    with pytest.raises(ValueError, match="draft of the same kind"):
        target.generate(source, max_new_tokens=4, assistant_model=hf_specdec.DraftModelStrategy(decoder_only))


# ---- sampling: the first two new decoder tokens follow plain sampling ---------------------------------------------
SMALL_VOCAB = 8
SOURCE = torch.arange(2, SMALL_VOCAB).repeat(2)[None]


def small_model(family: str, layers: int, seed: int, init_scale: float):
    return tiny_random_seq2seq(family, SMALL_VOCAB, eos_token_id=None, layers=layers, hidden=16, seed=seed,
                               init_scale=init_scale)


# Each family with one strategy in the default suite (a minute each on CI's 2 cores); the other pairs are `slow`.
@pytest.mark.parametrize("family, init_scale, name", [
    ("t5", 0.15, "draft_model"), ("bart", 1.0, "ngram"),
    pytest.param("t5", 0.15, "ngram", marks=pytest.mark.slow),
    pytest.param("bart", 1.0, "draft_model", marks=pytest.mark.slow)])
def test_sampling_matches_plain(family, init_scale, name):
    target = small_model(family, 1, 3, init_scale)
    strategy = (hf_specdec.NGramStrategy(num_speculative_tokens=2, skip_unprofitable_drafts=False) if name == "ngram"
                else draft_strategy(small_model(family, 1, 4, init_scale * 2), num_speculative_tokens=2))
    plain = sample_pairs(target, seed=1, prompt=SOURCE)
    ours = sample_pairs(target, strategy, seed=2, prompt=SOURCE)
    assert homogeneity_pvalue(plain, ours) > 1e-3


def test_strategy_with_an_encoder_decoder_draft_saves_and_loads(family_target, tmp_path):
    family, target = family_target
    strategy = draft_strategy(draft_model(family))
    strategy.save_pretrained(tmp_path / "s", target=target)
    loaded = hf_specdec.AutoStrategy.from_pretrained(tmp_path / "s")
    assert loaded.draft_model.config.is_encoder_decoder
    source = repetitive_prompt(4)
    ours = target.generate(source, max_new_tokens=12, do_sample=False, assistant_model=loaded)
    assert torch.equal(ours, target.generate(source, max_new_tokens=12, do_sample=False))
