"""Bad input gets a clear error that names the fix, never a wrong answer."""

from __future__ import annotations

import pytest
import torch
from conftest import make_llama, repetitive_prompt
from transformers import StaticCache

import hf_specdec
from hf_specdec.compat import CACHE_KWARG


def test_vocab_mismatch(tiny_llama):
    other = make_llama(vocab_size=50)
    with pytest.raises(ValueError, match="shares the target.s tokenizer"):
        tiny_llama.generate(repetitive_prompt(0), max_new_tokens=5,
                            assistant_model=hf_specdec.DraftModelStrategy(other))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(use_cache=False), "use_cache=False"),
        (dict(num_beams=2), "num_beams"),
        (dict(prompt_lookup_num_tokens=3), "prompt_lookup_num_tokens"),
        (dict(cache_implementation="static"), "DynamicCache"),
        (dict(do_sample=True, return_dict_in_generate=True, output_attentions=True), "output_attentions"),
    ],
)
def test_unsupported_generate_settings(tiny_llama, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_llama.generate(repetitive_prompt(0), max_new_tokens=5, assistant_model=hf_specdec.NGramStrategy(),
                            **kwargs)


def test_what_batches_do_not_do_yet_is_refused(tiny_llama):
    prompts = torch.cat([repetitive_prompt(0), repetitive_prompt(1)])
    with pytest.raises(ValueError, match="output_scores"):
        tiny_llama.generate(prompts, max_new_tokens=5, return_dict_in_generate=True, output_scores=True,
                            assistant_model=hf_specdec.NGramStrategy())
    right_padded = torch.ones_like(prompts)
    right_padded[1, -3:] = 0
    with pytest.raises(ValueError, match="padding_side = 'left'"):
        tiny_llama.generate(prompts, attention_mask=right_padded, max_new_tokens=5,
                            assistant_model=hf_specdec.NGramStrategy())


def test_static_cache_object(tiny_llama):
    cache = StaticCache(config=tiny_llama.config, max_cache_len=64)
    with pytest.raises(ValueError, match="cannot be rolled back"):
        tiny_llama.generate(repetitive_prompt(0), max_new_tokens=5, **{CACHE_KWARG: cache},
                            assistant_model=hf_specdec.NGramStrategy())


def test_greedy_verification_with_sampling_is_refused(tiny_llama):
    with pytest.raises(ValueError, match="do_sample=False"):
        tiny_llama.generate(repetitive_prompt(0), max_new_tokens=5, do_sample=True,
                            assistant_model=hf_specdec.NGramStrategy(verification="greedy"))


def test_stop_strings_without_tokenizer(tiny_llama):
    with pytest.raises(ValueError, match="tokenizer"):
        tiny_llama.generate(repetitive_prompt(0), max_new_tokens=5, stop_strings=["x"],
                            assistant_model=hf_specdec.NGramStrategy())


def test_draft_model_must_be_a_model():
    with pytest.raises(TypeError, match="PreTrainedModel"):
        hf_specdec.DraftModelStrategy("gpt2")


def test_a_generation_config_alone_draws_no_deprecation_warning(byte_tokenizer):
    """The hook adds `stop_strings=None` beside a user's generation_config when the model's defaults have stop
    strings; Transformers' "generation_config together with generation-related arguments" warning must not blame
    the user for it."""
    import logging

    from transformers import GenerationConfig

    from hf_specdec.tiny_models import BYTE_EOS, BYTE_VOCAB, tiny_random_llama

    model = tiny_random_llama(BYTE_VOCAB, eos_token_id=BYTE_EOS, pad_token_id=BYTE_EOS, bos_token_id=BYTE_EOS)
    model.generation_config.stop_strings = ["never-said"]
    config = GenerationConfig(max_new_tokens=6, do_sample=False, eos_token_id=BYTE_EOS, pad_token_id=BYTE_EOS)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("transformers.generation.utils")
    logger.addHandler(handler)
    try:
        model.generate(repetitive_prompt(2), generation_config=config, tokenizer=byte_tokenizer,
                       assistant_model=hf_specdec.NGramStrategy())
    finally:
        logger.removeHandler(handler)
    assert not [r for r in records if "generation_config` together" in r.getMessage()]
