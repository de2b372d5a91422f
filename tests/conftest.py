"""Tiny randomly initialised models built in the tests: losslessness holds for any model, so no real weights are
needed for correctness (real-model tests are marked `slow`)."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

import hf_specdec  # noqa: F401  (installs the generate hook)

# Tiny models gain nothing from a second thread, and an OpenMP barrier waiting on a busy core makes each op ~100x
# slower on a loaded 2-core machine.
torch.set_num_threads(1)

VOCAB = 97
EOS = 1


def make_llama(vocab_size: int = VOCAB, layers: int = 2, hidden: int = 32, seed: int = 0, logit_scale: float = 1.0,
               eos_token_id: int | None = EOS) -> LlamaForCausalLM:
    """A tiny Llama. `logit_scale` sharpens (>1) or flattens its output distribution."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, bos_token_id=0, eos_token_id=eos_token_id, pad_token_id=0,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(logit_scale)
    model.generation_config.eos_token_id = eos_token_id
    model.generation_config.pad_token_id = 0
    return model


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


@pytest.fixture(scope="session")
def byte_tokenizer() -> PreTrainedTokenizerFast:
    """GPT-2 style byte-level tokenizer with no merges: ids 0..255 are bytes, 256 is EOS. Encodes any text, so
    Transformers' stop-string machinery works with it."""
    byte_chars = bytes_to_unicode()
    vocab = {byte_chars[b]: b for b in range(256)}
    vocab["<eos>"] = 256
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<eos>")
