"""Tiny randomly initialised models (Llama; T5 and BART encoder-decoders) and offline tokenizers, built in memory in
well under a second.

Losslessness holds for any model, so the tests, the CLI's `tiny-random` model and the eval suite's
`tiny-random-llama` target all use these: nothing is downloaded, and the outputs are meaningless on purpose.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (BartConfig, BartForConditionalGeneration, LlamaConfig, LlamaForCausalLM, PreTrainedModel,
                          PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration)
from transformers.convert_slow_tokenizer import bytes_to_unicode

BYTE_EOS = 256  # byte_tokenizer: ids 0..255 are bytes, 256 is EOS
BYTE_VOCAB = 257
CHAR_EOS = 1  # char_tokenizer: 0 is <unk>, 1 is EOS, then printable ASCII and newline
CHAR_VOCAB = 98
SIMPLE_CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
                        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def tiny_random_llama(vocab_size: int, *, eos_token_id: int | None, pad_token_id: int, bos_token_id: int,
                      layers: int = 2, hidden: int = 32, seed: int = 0, logit_scale: float = 1.0,
                      max_positions: int = 2048, init_range: float = 0.02,
                      rope_theta: float = 10000.0) -> LlamaForCausalLM:
    """A random Llama in eval mode, initialised from `seed` without disturbing the global RNG.

    `logit_scale` sharpens (>1) or flattens (<1) its output distribution. The pad id matters for the weights (its
    embedding row starts at zero), so callers pass it explicitly. `init_range` (the weights' standard deviation) and
    `rope_theta`: see `position_sensitive_llama`.
    """
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=max_positions, bos_token_id=bos_token_id,
                         eos_token_id=eos_token_id, pad_token_id=pad_token_id, tie_word_embeddings=False,
                         initializer_range=init_range, rope_theta=rope_theta)
    model = LlamaForCausalLM(config).eval()
    torch.random.set_rng_state(generator_state)
    if logit_scale != 1.0:
        with torch.no_grad():
            model.lm_head.weight.mul_(logit_scale)
    model.generation_config.eos_token_id = eos_token_id
    model.generation_config.pad_token_id = pad_token_id
    return model


def position_sensitive_llama(vocab_size: int, *, seed: int = 0, eos_token_id: int | None = None,
                             pad_token_id: int = 0, layers: int = 1, hidden: int = 16) -> LlamaForCausalLM:
    """A tiny random Llama whose next-token distributions are peaked and react strongly to positions, for tests
    that must notice wrong position ids, a wrong cache slot or a q-for-p swap.

    The default initialisation (std 0.02) gives nearly uniform outputs (next-token probabilities 0.11-0.15 at 8
    tokens) that barely depend on positions (moving one position by 15 changes the logits by ~1e-3). Weights drawn
    with std 0.3 and RoPE with theta 100 give top probabilities of ~0.3-0.6 before any temperature, and moving the
    last token's position by one changes its next-token distribution by a total variation of ~0.4.
    """
    return tiny_random_llama(vocab_size, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                             bos_token_id=pad_token_id, layers=layers, hidden=hidden, seed=seed, max_positions=512,
                             init_range=0.3, rope_theta=100.0)


def tiny_random_seq2seq(family: str, vocab_size: int, *, eos_token_id: int | None, layers: int = 2, hidden: int = 32,
                        seed: int = 0, init_scale: float = 1.0) -> PreTrainedModel:
    """A random T5 (`family="t5"`) or BART (`"bart"`) in eval mode; pad 0 (also T5's decoder start), BART's decoder
    starts with its EOS id or 2. Initialised wider than the defaults (times `init_scale`; < 1 flattens the output
    distribution) so its greedy output is not one repeated token."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    if family == "t5":
        config = T5Config(vocab_size=vocab_size, d_model=hidden, d_kv=hidden // 4, d_ff=2 * hidden, num_layers=layers,
                          num_decoder_layers=layers, num_heads=4, pad_token_id=0, decoder_start_token_id=0,
                          eos_token_id=eos_token_id, initializer_factor=8.0 * init_scale)
        model = T5ForConditionalGeneration(config)
    elif family == "bart":
        config = BartConfig(vocab_size=vocab_size, d_model=hidden, encoder_layers=layers, decoder_layers=layers,
                            encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=2 * hidden,
                            decoder_ffn_dim=2 * hidden, max_position_embeddings=512, pad_token_id=0, bos_token_id=2,
                            eos_token_id=eos_token_id, decoder_start_token_id=eos_token_id or 2,
                            forced_eos_token_id=None, init_std=0.5 * init_scale)
        model = BartForConditionalGeneration(config)
    else:
        raise ValueError(f"family must be 't5' or 'bart', got {family!r}.")
    torch.random.set_rng_state(generator_state)
    model.eval().generation_config.eos_token_id = eos_token_id
    return model


def byte_tokenizer(chat_template: str | None = None) -> PreTrainedTokenizerFast:
    """GPT-2 style byte-level tokenizer with no merges: encodes any text, so stop strings work with it."""
    byte_chars = bytes_to_unicode()
    vocab = {byte_chars[b]: b for b in range(256)}
    vocab["<eos>"] = BYTE_EOS
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<eos>")
    tokenizer.chat_template = chat_template
    return tokenizer


def char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per printable ASCII character (and newline); 0 is <unk>, 1 is <eos>. 98 ids."""
    chars = [chr(i) for i in range(32, 127)] + ["\n"]
    vocab = {"<unk>": 0, "<eos>": CHAR_EOS, **{c: i + 2 for i, c in enumerate(chars)}}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<eos>", unk_token="<unk>")
