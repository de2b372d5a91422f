"""Rollback: after generation the target cache holds exactly the accepted tokens (all but the last), and
continuing from it gives the same next logits as a fresh forward."""

from __future__ import annotations

import pytest
import torch
from conftest import draft_strategy, repetitive_prompt
from transformers import DynamicCache

import hf_specdec
from hf_specdec.compat import CACHE_KWARG, output_cache


@pytest.mark.parametrize("strategy_name", ["ngram", "draft_self", "draft_other"])
def test_cache_holds_exactly_the_accepted_tokens(tiny_llama, tiny_draft, strategy_name):
    strategy = {
        "ngram": lambda: hf_specdec.NGramStrategy(skip_unprofitable_drafts=False),
        "draft_self": lambda: draft_strategy(tiny_llama, num_speculative_tokens=6),
        "draft_other": lambda: draft_strategy(tiny_draft, num_speculative_tokens=6),
    }[strategy_name]()
    prompt = repetitive_prompt(7)
    out = tiny_llama.generate(prompt, max_new_tokens=23, do_sample=False, eos_token_id=None,
                              assistant_model=strategy, return_dict_in_generate=True)
    cache, sequence = output_cache(out), out.sequences
    assert cache.get_seq_length() == sequence.shape[1] - 1

    with torch.no_grad():
        continued = tiny_llama(sequence[:, -1:], **{CACHE_KWARG: cache}, use_cache=True).logits[0, -1]
        fresh = tiny_llama(sequence).logits[0, -1]
    torch.testing.assert_close(continued, fresh, atol=1e-4, rtol=1e-4)


def test_user_cache_continues_a_conversation(tiny_llama):
    """A user-passed DynamicCache from an earlier call is extended correctly (generate's own prefill logic)."""
    prompt = repetitive_prompt(8)
    first = tiny_llama.generate(prompt, max_new_tokens=10, do_sample=False, eos_token_id=None,
                                return_dict_in_generate=True)
    follow_up = torch.cat([first.sequences, repetitive_prompt(9)[:, :5]], dim=-1)
    expected = tiny_llama.generate(follow_up, max_new_tokens=10, do_sample=False, eos_token_id=None)
    cache = DynamicCache(config=tiny_llama.config)
    tiny_llama.generate(prompt, max_new_tokens=10, do_sample=False, eos_token_id=None, **{CACHE_KWARG: cache},
                        assistant_model=hf_specdec.NGramStrategy(skip_unprofitable_drafts=False))
    actual = tiny_llama.generate(follow_up, max_new_tokens=10, do_sample=False, eos_token_id=None,
                                 **{CACHE_KWARG: cache},
                                 assistant_model=hf_specdec.NGramStrategy(skip_unprofitable_drafts=False))
    assert torch.equal(actual, expected)


def test_draft_cache_is_cropped_to_accepted_tokens(tiny_llama, tiny_draft, monkeypatch):
    from hf_specdec.drafters.draft_cache import DraftCacheRows
    from hf_specdec.engine.cache import self_attention_cache

    strategy = draft_strategy(tiny_draft, num_speculative_tokens=4)
    seen = []
    original_sync, original_feed = DraftCacheRows.sync, DraftCacheRows.feed

    def sync(self, row, tokens):
        pending = original_sync(self, row, tokens)
        # after syncing, the draft cache holds a prefix of the current sequence
        assert self.tokens[row] == tokens[: len(self.tokens[row])]
        seen.append(len(pending))
        return pending

    def feed(self, inputs, known):
        out = original_feed(self, inputs, known)
        # a batch of one stays dense: its slots are exactly the tokens it holds (rejected drafts cropped)
        assert self_attention_cache(self.cache).get_seq_length() == self.width - out[0].shape[1]
        assert self.width == len(self.tokens[0]) + len(self.unconfirmed[0])
        return out

    monkeypatch.setattr(DraftCacheRows, "sync", sync)
    monkeypatch.setattr(DraftCacheRows, "feed", feed)
    tiny_llama.generate(repetitive_prompt(10), max_new_tokens=20, do_sample=False, assistant_model=strategy)
    assert seen and all(n >= 1 for n in seen)
