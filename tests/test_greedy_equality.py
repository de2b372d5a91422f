"""Greedy speculative decoding must equal plain `generate` token for token, for every strategy and schedule."""

from __future__ import annotations

import pytest
import torch
from conftest import EOS, draft_strategy, make_llama, repetitive_prompt

import hf_specdec
from hf_specdec.distilled_draft import build_draft, set_draft_vocab

NUM_PROMPTS = 20


def cut_draft(target, vocab: int = 60):
    """A draft cut from the target (its first layer, shared embedding and head) that may only propose ids < 60."""
    draft = build_draft(target, [0])
    set_draft_vocab(draft, torch.arange(vocab))
    return draft


def strategy_factories(draft, target=None):
    return {
        "draft-cut-vocab": lambda: draft_strategy(cut_draft(target), num_speculative_tokens=4),
        "draft-lookup": lambda: draft_strategy(draft, lookup_min_ngram=2, lookup_num_tokens=8),
        "ngram-constant": lambda: hf_specdec.NGramStrategy(num_speculative_tokens=6),
        "ngram-heuristic-ungated": lambda: hf_specdec.NGramStrategy(schedule="heuristic",
                                                                    skip_unprofitable_drafts=False),
        "nasd-basic": lambda: hf_specdec.NASDStrategy(top_k_filler=3),
        "nasd-onelevel": lambda: hf_specdec.NASDStrategy(storage="onelevel", ngram_size=2, schedule="heuristic"),
        "draft-constant": lambda: draft_strategy(draft, num_speculative_tokens=4),
        "draft-heuristic": lambda: draft_strategy(draft, schedule="heuristic"),
        "draft-entropy": lambda: draft_strategy(draft, schedule="entropy", entropy_threshold=4.0),
    }


@pytest.fixture(scope="module")
def plain_outputs(tiny_llama):
    """Plain greedy outputs for the shared prompts, computed once for all strategies."""
    return [tiny_llama.generate(repetitive_prompt(seed), max_new_tokens=30, do_sample=False)
            for seed in range(NUM_PROMPTS)]


@pytest.mark.parametrize("name", list(strategy_factories(None)))
def test_greedy_equals_plain_generate(tiny_llama, tiny_draft, plain_outputs, name):
    strategy = strategy_factories(tiny_draft, tiny_llama)[name]()
    for seed, expected in enumerate(plain_outputs):
        prompt = repetitive_prompt(seed)
        actual = tiny_llama.generate(prompt, max_new_tokens=30, do_sample=False, assistant_model=strategy)
        assert torch.equal(actual, expected), f"{name} differs on prompt {seed}"
    assert strategy.last_stats.new_tokens == actual.shape[1] - prompt.shape[1]


def test_self_draft_accepts_everything_and_matches(tiny_llama):
    """The target as its own draft: every drafted token is accepted, which exercises the bonus-token path."""
    strategy = draft_strategy(tiny_llama, num_speculative_tokens=5)
    prompt = repetitive_prompt(0)
    expected = tiny_llama.generate(prompt, max_new_tokens=40, do_sample=False, eos_token_id=None)
    actual = tiny_llama.generate(prompt, max_new_tokens=40, do_sample=False, eos_token_id=None,
                                 assistant_model=strategy)
    assert torch.equal(actual, expected)
    stats = strategy.last_stats
    assert stats.acceptance_rate == 1.0
    assert stats.mean_accepted_length > 5.0  # 5 drafted + 1 bonus per step, but the last step is cut by max length


@pytest.mark.parametrize("max_new_tokens", [1, 2, 3, 7])
def test_max_new_tokens_respected_inside_a_draft(tiny_llama, max_new_tokens):
    strategy = draft_strategy(tiny_llama, num_speculative_tokens=5)
    prompt = repetitive_prompt(1)
    expected = tiny_llama.generate(prompt, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None)
    actual = tiny_llama.generate(prompt, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None,
                                 assistant_model=strategy)
    assert torch.equal(actual, expected)


def test_eos_inside_the_draft_window(tiny_llama):
    """Pick as EOS a token that plain greedy emits mid-sequence: the speculative run must stop at exactly the same
    place although the (all-accepted) draft runs past it."""
    prompt = repetitive_prompt(2)
    free_run = tiny_llama.generate(prompt, max_new_tokens=30, do_sample=False, eos_token_id=None)
    eos = int(free_run[0, prompt.shape[1] + 6])
    expected = tiny_llama.generate(prompt, max_new_tokens=30, do_sample=False, eos_token_id=eos)
    assert expected.shape[1] < free_run.shape[1]
    strategy = draft_strategy(tiny_llama, num_speculative_tokens=8)
    actual = tiny_llama.generate(prompt, max_new_tokens=30, do_sample=False, eos_token_id=eos,
                                 assistant_model=strategy)
    assert torch.equal(actual, expected)
    assert strategy.last_stats.drafted > strategy.last_stats.new_tokens - 1  # the draft did run past EOS


def test_stop_strings_inside_the_draft_window(byte_tokenizer):
    model = make_llama(vocab_size=257, eos_token_id=256, seed=3)
    prompt = torch.tensor([byte_tokenizer.encode("def f(x): return x + 1\ndef f(x):")])
    free_run = model.generate(prompt, max_new_tokens=30, do_sample=False, eos_token_id=None)
    generated = free_run[0, prompt.shape[1]:].tolist()
    # a stop string made of two consecutive printable ASCII bytes the model emits after a few tokens
    start = next(i for i in range(5, len(generated) - 1)
                 if all(32 <= t < 127 for t in generated[i : i + 2]))
    stop = bytes(generated[start : start + 2]).decode()
    kwargs = dict(max_new_tokens=30, do_sample=False, eos_token_id=None, stop_strings=[stop],
                  tokenizer=byte_tokenizer)
    expected = model.generate(prompt, **kwargs)
    assert expected.shape[1] < free_run.shape[1]
    for strategy in (draft_strategy(model, num_speculative_tokens=8),
                     hf_specdec.NGramStrategy(skip_unprofitable_drafts=False)):
        actual = model.generate(prompt, assistant_model=strategy, **kwargs)
        assert torch.equal(actual, expected)


def test_logits_processors_apply_per_position(tiny_llama, tiny_draft):
    """Repetition penalty and min_new_tokens depend on the prefix: each verified position must see its own."""
    kwargs = dict(max_new_tokens=25, do_sample=False, repetition_penalty=1.5, min_new_tokens=20,
                  eos_token_id=EOS, no_repeat_ngram_size=3)
    for seed in range(5):
        prompt = repetitive_prompt(seed)
        expected = tiny_llama.generate(prompt, **kwargs)
        for strategy in (hf_specdec.NGramStrategy(skip_unprofitable_drafts=False),
                         draft_strategy(tiny_draft)):
            assert torch.equal(tiny_llama.generate(prompt, assistant_model=strategy, **kwargs), expected)


def test_return_dict_scores_match_plain(tiny_llama):
    prompt = repetitive_prompt(4)
    kwargs = dict(max_new_tokens=12, do_sample=False, return_dict_in_generate=True, output_scores=True,
                  output_logits=True, eos_token_id=None)
    expected = tiny_llama.generate(prompt, **kwargs)
    actual = tiny_llama.generate(prompt, assistant_model=draft_strategy(tiny_llama), **kwargs)
    assert torch.equal(actual.sequences, expected.sequences)
    assert len(actual.scores) == len(expected.scores) == 12
    for ours, theirs in zip(actual.scores, expected.scores):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_plain_model_assistant_still_uses_transformers(tiny_llama, tiny_draft):
    prompt = repetitive_prompt(5)
    expected = tiny_llama.generate(prompt, max_new_tokens=15, do_sample=False)
    assert torch.equal(tiny_llama.generate(prompt, max_new_tokens=15, do_sample=False, assistant_model=tiny_draft),
                       expected)
    assert torch.equal(tiny_llama.generate(prompt, max_new_tokens=15, do_sample=False, prompt_lookup_num_tokens=3),
                       expected)


def test_streamer_receives_every_token(tiny_llama):
    class Collect:
        def __init__(self):
            self.chunks, self.ended = [], False

        def put(self, value):
            self.chunks.append(value.reshape(-1).tolist())

        def end(self):
            self.ended = True

    prompt = repetitive_prompt(6)
    streamer = Collect()
    out = tiny_llama.generate(prompt, max_new_tokens=20, do_sample=False, streamer=streamer,
                              assistant_model=draft_strategy(tiny_llama))
    assert streamer.chunks[0] == prompt[0].tolist()
    assert sum(streamer.chunks[1:], []) == out[0, prompt.shape[1]:].tolist()
    assert streamer.ended


def test_vocab_bigger_model(tiny_llama):
    """Same behaviour on a second architecture size (4 layers, wider) to avoid tuning to one model."""
    model = make_llama(layers=4, hidden=64, seed=5)
    strategy = hf_specdec.NASDStrategy(skip_unprofitable_drafts=False)
    for seed in range(5):
        prompt = repetitive_prompt(seed)
        expected = model.generate(prompt, max_new_tokens=30, do_sample=False)
        assert torch.equal(model.generate(prompt, max_new_tokens=30, do_sample=False, assistant_model=strategy),
                           expected)
