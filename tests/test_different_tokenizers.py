"""A draft with another tokenizer (universal assisted generation): drafts go through text into target tokens and are
verified as point masses, so greedy equals plain `generate` and sampling follows the target."""

from __future__ import annotations

import pytest
import torch
from test_sampling import homogeneity_pvalue, sample_pairs
from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

import hf_specdec
from hf_specdec.tiny_models import BYTE_EOS, BYTE_VOCAB, CHAR_EOS, CHAR_VOCAB, byte_tokenizer, char_tokenizer
from hf_specdec.tiny_models import tiny_random_llama

TEXTS = ["def add(a, b):\n    return a + b\n\ndef add(", "the cat sat on the mat. the cat", "x = [1, 2, 3]\ny = [1, 2,",
         "Hello world! Hello", "for i in range(10):\n    print(i)\nfor i in"]


def char_model(seed: int = 0, logit_scale: float = 4.0):
    return tiny_random_llama(CHAR_VOCAB, eos_token_id=CHAR_EOS, pad_token_id=CHAR_EOS, bos_token_id=CHAR_EOS,
                             seed=seed, logit_scale=logit_scale)


def permuted_twin(model, seed: int = 0):
    """The same model behind a char tokenizer whose ids are shuffled (specials kept): a draft that predicts exactly
    what the target predicts, in another token space. Returns (draft model, its tokenizer)."""
    order = torch.randperm(CHAR_VOCAB - 2, generator=torch.Generator().manual_seed(seed)) + 2
    target_of = torch.cat([torch.tensor([0, 1]), order])  # draft id d is target id target_of[d]
    vocab = {token: int((target_of == index).nonzero()) for token, index in char_tokenizer().get_vocab().items()}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<eos>",
                                        unk_token="<unk>")
    twin = char_model()
    twin.load_state_dict(model.state_dict())
    with torch.no_grad():
        twin.model.embed_tokens.weight.copy_(model.model.embed_tokens.weight[target_of])
        twin.lm_head.weight.copy_(model.lm_head.weight[target_of])
    return twin, tokenizer


def byte_draft():
    return tiny_random_llama(BYTE_VOCAB, eos_token_id=BYTE_EOS, pad_token_id=BYTE_EOS, bos_token_id=BYTE_EOS, seed=3,
                             layers=1, logit_scale=4.0)


def cross_strategy(draft, draft_tok, target_tok, **settings):
    return hf_specdec.DraftModelStrategy(draft, draft_tokenizer=draft_tok, target_tokenizer=target_tok,
                                         **{"skip_unprofitable_drafts": False, "lookup_min_ngram": 0, **settings})


@pytest.fixture(scope="module")
def target():
    return char_model()


def encode(text: str) -> torch.LongTensor:
    return char_tokenizer()(text, return_tensors="pt").input_ids


def test_twin_in_another_token_space_is_always_accepted(target):
    twin, twin_tokenizer = permuted_twin(target)
    strategy = cross_strategy(twin, twin_tokenizer, char_tokenizer())
    for text in TEXTS:
        ids = encode(text)
        plain = target.generate(ids, max_new_tokens=30, do_sample=False)
        assert torch.equal(plain, target.generate(ids, max_new_tokens=30, do_sample=False, assistant_model=strategy))
        stats = strategy.last_stats
        assert stats.drafted > 0 and stats.acceptance_rate > 0.9, (text, stats.acceptance_rate)


@pytest.mark.parametrize("settings", [{}, {"lookup_min_ngram": 2}, {"num_speculative_tokens": 2}])
def test_byte_level_draft_for_a_char_level_target_greedy(target, settings):
    strategy = cross_strategy(byte_draft(), byte_tokenizer(), char_tokenizer(), **settings)
    drafted = 0
    for text in TEXTS:
        ids = encode(text)
        plain = target.generate(ids, max_new_tokens=30, do_sample=False)
        assert torch.equal(plain, target.generate(ids, max_new_tokens=30, do_sample=False, assistant_model=strategy))
        drafted += strategy.last_stats.drafted
    assert drafted > 0


def test_char_level_draft_for_a_byte_level_target_greedy():
    target = tiny_random_llama(BYTE_VOCAB, eos_token_id=BYTE_EOS, pad_token_id=BYTE_EOS, bos_token_id=BYTE_EOS,
                               seed=5, logit_scale=4.0)
    strategy = cross_strategy(char_model(seed=6), char_tokenizer(), byte_tokenizer())
    for text in TEXTS:
        ids = byte_tokenizer()(text, return_tensors="pt").input_ids
        plain = target.generate(ids, max_new_tokens=30, do_sample=False)
        assert torch.equal(plain, target.generate(ids, max_new_tokens=30, do_sample=False, assistant_model=strategy))


def test_refusals_name_the_fix(target):
    ids = encode(TEXTS[0])
    with pytest.raises(ValueError, match="draft_tokenizer=.*target_tokenizer="):
        target.generate(ids, max_new_tokens=4, assistant_model=hf_specdec.DraftModelStrategy(byte_draft()))
    with pytest.raises(ValueError, match="needs both"):
        hf_specdec.DraftModelStrategy(byte_draft(), draft_tokenizer=byte_tokenizer())
    with pytest.raises(ValueError, match="one vocabulary"):
        hf_specdec.DraftModelStrategy(byte_draft(), draft_tokenizer=byte_tokenizer(), target_tokenizer=char_tokenizer(),
                                      verify_against=hf_specdec.GeometricMixture())


@pytest.mark.parametrize("draft_kind", ["twin", "bytes"])
def test_sampling_matches_plain(draft_kind):
    target = char_model(seed=7, logit_scale=12.0)  # peaked, so 1,200 samples cover its pairs
    ids = encode("the cat sat on the")
    if draft_kind == "twin":
        draft, draft_tok = permuted_twin(target)
    else:
        draft, draft_tok = byte_draft(), byte_tokenizer()
    strategy = cross_strategy(draft, draft_tok, char_tokenizer(), num_speculative_tokens=2)
    plain = sample_pairs(target, seed=1, prompt=ids)
    ours = sample_pairs(target, strategy, seed=2, prompt=ids)
    assert strategy.last_stats.drafted > 0
    assert homogeneity_pvalue(plain, ours) > 1e-3
