"""TokenizerBridge: target <-> draft token translation through text, on tokenizers built in memory (offline)."""

from __future__ import annotations

import random

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from hf_specdec.tiny_models import BYTE_EOS, CHAR_EOS, byte_tokenizer, char_tokenizer
from hf_specdec.tokenizer_bridge import TokenizerBridge

PARAGRAPHS = [
    "The quick brown fox jumps over the lazy dog. The dog sleeps in the sun, and the fox runs into the woods.",
    "Speculative decoding lets a small draft model propose tokens that the large target model then verifies.",
    "In the morning the farmer feeds the hens, then walks to the market with a basket of eggs and bread.",
    "There is nothing either good or bad, but thinking makes it so. The rest is silence, and then the theatre.",
]
# Prefix and continuation meet at a word boundary, which no tokenizer here merges across.
CLEAN_SPLITS = [
    ("The quick brown fox", " jumps over the lazy dog."),
    ("In the morning", " the farmer feeds the hens,\nthen walks to the market."),
    ("x", " = 3 * (y + 2)"),
    ("There is nothing either good or bad,", " but thinking makes it so."),
]


def bpe_tokenizer() -> PreTrainedTokenizerFast:
    """A GPT-2 style byte-level BPE with real merges (" the", "he", ...), trained on PARAGRAPHS: 300 ids."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<eos>"], show_progress=False)
    backend.train_from_iterator(PARAGRAPHS * 3, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>")


def sentencepiece_style_tokenizer() -> PreTrainedTokenizerFast:
    """Llama-2 style: the normalizer prepends "▁" and turns spaces into "▁", no pre-tokenizer (BPE sees the whole
    text), byte fallback, and a decoder that strips the leading space. Encoding a tail of a text therefore yields
    an extra "▁" that shares its span with the text's own first character."""
    backend = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()  # for training only: pieces never merge across a space
    byte_pieces = [f"<0x{value:02X}>" for value in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "</s>", *byte_pieces], show_progress=False)
    backend.train_from_iterator(PARAGRAPHS * 3, trainer)
    backend.pre_tokenizer = None
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>")


TOKENIZERS = {"char": char_tokenizer(), "byte": byte_tokenizer(), "bpe": bpe_tokenizer(),
              "spm": sentencepiece_style_tokenizer()}
PAIRS = [("char", "byte"), ("byte", "char"), ("bpe", "char"), ("char", "bpe"), ("bpe", "byte"), ("byte", "bpe"),
         ("spm", "byte"), ("byte", "spm"), ("spm", "bpe"), ("char", "spm")]


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False)


def bridge(target: str, draft: str, window: int = 16) -> TokenizerBridge:
    return TokenizerBridge(TOKENIZERS[target], TOKENIZERS[draft], window=window)


def drafted_ids(draft_tokenizer, context: list[int], draft_text: str) -> list[int]:
    """The draft ids that follow `context` when the draft writes `draft_text` next: how the draft encodes the whole
    text, after the context (a standalone encoding would differ for tokenizers that prepend a space)."""
    whole = encode(draft_tokenizer, decode(draft_tokenizer, context) + draft_text)
    assert whole[:len(context)] == context, "the draft text merges with the context: not a clean boundary"
    return whole[len(context):]


def propose(bridge_: TokenizerBridge, prefix_ids: list[int], draft_text: str) -> list[int]:
    """What the engine does: the draft context, then the drafted ids for `draft_text`, translated back."""
    context = bridge_.to_draft(prefix_ids)
    return bridge_.to_target(prefix_ids, context, drafted_ids(bridge_.draft_tokenizer, context, draft_text))


def test_the_bpe_tokenizer_really_merges():
    tokenizer = TOKENIZERS["bpe"]
    assert len(tokenizer) == 300
    assert encode(tokenizer, " the") == [tokenizer.convert_tokens_to_ids("Ġthe")]


def test_rejects_what_is_not_a_tokenizer():
    with pytest.raises(TypeError, match="target_tokenizer must be a Hugging Face tokenizer"):
        TokenizerBridge("gpt2", char_tokenizer())
    with pytest.raises(TypeError, match="draft_tokenizer .*PreTrainedTokenizerBase"):
        TokenizerBridge(char_tokenizer(), None)
    with pytest.raises(TypeError, match="window must be an int"):
        TokenizerBridge(char_tokenizer(), byte_tokenizer(), window=2.0)
    with pytest.raises(ValueError, match="window must be at least 1"):
        TokenizerBridge(char_tokenizer(), byte_tokenizer(), window=0)


@pytest.mark.parametrize(("target", "draft"), PAIRS)
@pytest.mark.parametrize(("prefix", "continuation"), CLEAN_SPLITS)
def test_round_trip_at_a_clean_boundary(target, draft, prefix, continuation):
    target_tok = TOKENIZERS[target]
    prefix_ids = encode(target_tok, prefix)
    result = propose(bridge(target, draft), prefix_ids, continuation)
    assert decode(target_tok, prefix_ids + result) == prefix + continuation
    assert prefix_ids + result == encode(target_tok, prefix + continuation)  # the target's own tokenization


@pytest.mark.parametrize("window", [1, 2, 16])
def test_round_trip_with_a_long_context_and_any_window(window):
    target_tok = TOKENIZERS["bpe"]
    prefix = " ".join(PARAGRAPHS)
    prefix_ids = encode(target_tok, prefix)
    result = propose(bridge("bpe", "byte", window), prefix_ids, " The end.")
    assert decode(target_tok, result) == " The end."


def test_a_merge_across_the_boundary_never_retokenises_emitted_tokens():
    target_tok = TOKENIZERS["bpe"]
    text = PARAGRAPHS[0] + " " + PARAGRAPHS[3]
    bridge_ = bridge("bpe", "char")
    outcomes = set()
    for cut in range(1, len(text)):
        prefix_ids = encode(target_tok, text[:cut])  # what the target emitted: the prefix alone, tokenised
        result = propose(bridge_, prefix_ids, text[cut:cut + 12])
        assert all(0 <= token < len(target_tok) for token in result)
        joined = decode(target_tok, prefix_ids + result)
        assert joined.startswith(text[:cut]) and text.startswith(joined)  # appends to the emitted text, exactly
        assert joined == text[:cut] + decode(target_tok, result)
        if result:
            assert decode(target_tok, result) == text[cut:cut + 12]
        outcomes.add(bool(result))
    assert outcomes == {True, False}  # some cuts merge (" th" + "e" -> " the"), and those give []


def test_known_merge_gives_nothing():
    target_tok = TOKENIZERS["bpe"]
    prefix_ids = encode(target_tok, "and then th")  # ... " t", "h"
    assert encode(target_tok, "and then the")[-1] == encode(target_tok, " the")[0]  # one token " the"
    assert propose(bridge("bpe", "byte"), prefix_ids, "e theatre") == []


def test_a_window_that_starts_inside_a_character_is_shifted():
    target_tok = TOKENIZERS["byte"]
    prefix_ids = encode(target_tok, "日本語の文")  # three byte tokens per character
    for window in range(1, 8):
        result = propose(bridge("byte", "char", window), prefix_ids, " ok")
        assert decode(target_tok, result) == " ok"


def test_partial_utf8_from_a_byte_level_draft():
    bytes_of_e_acute = encode(TOKENIZERS["byte"], "é")
    assert len(bytes_of_e_acute) == 2
    for target in ("char", "byte", "bpe", "spm"):
        bridge_ = bridge(target, "byte")
        prefix_ids = encode(bridge_.target_tokenizer, "caf")
        context = bridge_.to_draft(prefix_ids)
        # The draft stopped after the first byte of "é": that character is not proposed yet.
        assert bridge_.to_target(prefix_ids, context, bytes_of_e_acute[:1]) == []
        head = encode(TOKENIZERS["byte"], "e ")
        assert decode(bridge_.target_tokenizer, bridge_.to_target(prefix_ids, context, head + bytes_of_e_acute[:1])) \
            == "e "


@pytest.mark.parametrize("target", ["byte", "bpe", "spm"])
def test_a_byte_fallback_draft_cut_inside_a_character_keeps_the_complete_ones(target):
    """The SentencePiece-style decoder prints a whole run of byte pieces as U+FFFD while it ends inside a
    character: the cut character's bytes are left out, the complete characters before it are kept."""
    target_tok = TOKENIZERS[target]
    bridge_ = bridge(target, "spm")
    prefix_ids = encode(target_tok, "Say")
    context = bridge_.to_draft(prefix_ids)
    drafted = drafted_ids(TOKENIZERS["spm"], context, " 日本語")
    assert decode(TOKENIZERS["spm"], context + drafted[:-2]).endswith(chr(0xFFFD) * 7)  # 6 bytes + 1 cut one
    assert decode(target_tok, prefix_ids + bridge_.to_target(prefix_ids, context, drafted[:-2])) == "Say 日本"
    assert decode(target_tok, prefix_ids + bridge_.to_target(prefix_ids, context, drafted)) == "Say 日本語"


def test_characters_the_target_cannot_encode_end_the_proposal():
    """The char target has no "é" (it would be <unk>): the proposal stops before it, since <unk> would be rejected."""
    bridge_ = bridge("char", "byte")
    prefix_ids = encode(TOKENIZERS["char"], "caf")
    context = bridge_.to_draft(prefix_ids)
    assert bridge_.to_target(prefix_ids, context, encode(TOKENIZERS["byte"], "é au lait")) == []
    result = bridge_.to_target(prefix_ids, context, encode(TOKENIZERS["byte"], "e, café au lait"))
    assert decode(TOKENIZERS["char"], result) == "e, caf"


@pytest.mark.parametrize("target", ["char", "byte", "bpe", "spm"])
def test_random_draft_bytes_never_crash_nor_leave_the_target_vocabulary(target):
    rng = random.Random(0)
    bridge_ = bridge(target, "byte", window=4)
    target_tok = TOKENIZERS[target]
    prefix_ids = encode(target_tok, "Hello, world")
    context = bridge_.to_draft(prefix_ids)
    for _ in range(200):
        drafted = [rng.randrange(BYTE_EOS + 1) for _ in range(rng.randrange(1, 9))]
        result = bridge_.to_target(prefix_ids, context, drafted)
        assert all(0 <= token < len(target_tok) for token in result)
        assert target_tok.unk_token_id is None or target_tok.unk_token_id not in result
        assert decode(target_tok, prefix_ids + result).startswith("Hello, world")


def test_tensors_and_tuples_work_like_lists():
    torch = pytest.importorskip("torch")
    bridge_ = bridge("bpe", "char")
    prefix_ids = encode(TOKENIZERS["bpe"], "The fox")
    context = bridge_.to_draft(torch.tensor(prefix_ids))
    assert context == bridge("bpe", "char").to_draft(tuple(prefix_ids))
    drafted = torch.tensor(encode(TOKENIZERS["char"], " runs"))
    result = bridge_.to_target(torch.tensor(prefix_ids), torch.tensor(context), drafted)
    assert result == encode(TOKENIZERS["bpe"], "The fox runs")[len(prefix_ids):]
    assert all(type(token) is int for token in context + result)


def test_nothing_to_propose_gives_nothing():
    bridge_ = bridge("bpe", "char")
    prefix_ids = encode(TOKENIZERS["bpe"], "The fox")
    context = bridge_.to_draft(prefix_ids)
    assert bridge_.to_target(prefix_ids, context, []) == []
    assert bridge_.to_target([], [], []) == []


def test_an_empty_target_sequence_takes_the_whole_text():
    bridge_ = bridge("bpe", "char")
    assert bridge_.to_draft([]) == []
    result = bridge_.to_target([], [], encode(TOKENIZERS["char"], "The fox"))
    assert result == encode(TOKENIZERS["bpe"], "The fox")


def test_special_tokens_travel_as_text():
    bridge_ = bridge("char", "byte")
    prefix_ids = encode(TOKENIZERS["char"], "done") + [CHAR_EOS]
    context = bridge_.to_draft(prefix_ids)
    assert context == encode(TOKENIZERS["byte"], "done") + [BYTE_EOS]  # "<eos>" is an added token of both
    assert bridge_.to_target(prefix_ids, context, [BYTE_EOS]) == [CHAR_EOS]


def test_to_draft_is_the_draft_encoding_of_the_target_text():
    bridge_ = bridge("byte", "bpe")
    ids = encode(TOKENIZERS["byte"], "The theatre: ça va?")
    assert bridge_.to_draft(ids) == encode(TOKENIZERS["bpe"], "The theatre: ça va?")
    assert bridge_.to_draft(ids) == bridge_.to_draft(ids)


GROWING_TEXTS = [
    " ".join(PARAGRAPHS),
    "Déjà vu: naïve café — 日本語のテキスト, emoji 🙂🙂 and   spaces\n\n  then the theatre. " * 3,
]


@pytest.mark.parametrize(("target", "draft"), PAIRS + [("bpe", "bpe"), ("byte", "byte"), ("spm", "spm")])
@pytest.mark.parametrize("window", [1, 3, 16])
def test_to_draft_incremental_equals_from_scratch(target, draft, window):
    rng = random.Random(window)
    target_tok, draft_tok = TOKENIZERS[target], TOKENIZERS[draft]
    incremental = bridge(target, draft, window)
    encoded_lengths: list[int] = []
    encode_draft = incremental._encode_draft
    incremental._encode_draft = lambda text: (encoded_lengths.append(len(text)), encode_draft(text))[1]
    steps = partial_steps = 0
    for text in GROWING_TEXTS:
        if target == "char":
            text = text.encode("ascii", "ignore").decode()
        ids = encode(target_tok, text)
        length = 0
        while length < len(ids):
            length = min(len(ids), length + rng.randrange(1, 4))  # accepted tokens plus the bonus token
            whole_text = decode(target_tok, ids[:length])
            expected = encode(draft_tok, whole_text)
            encoded_lengths.clear()
            assert incremental.to_draft(ids[:length]) == expected
            assert bridge(target, draft, window).to_draft(ids[:length]) == expected
            steps += 1
            partial_steps += max(encoded_lengths, default=0) < len(whole_text)
    # On most steps only a tail was encoded again. Less often with the SentencePiece-style target: its byte-fallback
    # decoder prints every byte of a run as U+FFFD while the run ends inside a character, so the cached text
    # changes far back once the character is complete.
    assert partial_steps > (0.6 if target == "spm" else 0.8) * steps


def test_to_draft_starts_over_when_the_sequence_does_not_extend_the_last_one():
    bridge_ = bridge("bpe", "byte", window=2)
    first = encode(TOKENIZERS["bpe"], "The quick brown fox jumps")
    second = encode(TOKENIZERS["bpe"], "The quick brown dog sleeps")
    bridge_.to_draft(first)
    assert bridge_.to_draft(second) == encode(TOKENIZERS["byte"], "The quick brown dog sleeps")
    assert bridge_.to_draft(first[:3]) == encode(TOKENIZERS["byte"], decode(TOKENIZERS["bpe"], first[:3]))
    bridge_.reset()
    assert bridge_.to_draft(first) == encode(TOKENIZERS["byte"], "The quick brown fox jumps")
