"""Suffix drafting: frequency trees from the longest earlier match, greedy output equal to plain `generate` (batch
of one, left-padded batch), lossless sampling, a cross-request cache that drafts from an earlier call's output and
stays within its memory bound, and a save/load round trip."""

from __future__ import annotations

import pytest
import torch
from conftest import greedy_drafted_equal_to_plain, repetitive_prompt
from test_batches import batched_drafted_equal_to_plain, make_llama
from test_lossless_sampling import PROMPT, SAMPLES, assert_follows, counts, exact_joint, sample_rows
from test_lossless_sampling import target as lossless_target  # noqa: F401 (fixture)

import hf_specdec
from hf_specdec.strategies.suffix import SuffixIndex, frequency_tree

UNGATED = {"skip_unprofitable_drafts": False}


@pytest.fixture(scope="module")
def model():
    return make_llama()


def test_frequency_tree_ranks_continuations_by_count():
    paths, tokens = frequency_tree([[5, 6, 7], [5, 6, 8], [5, 9], [4]], size=4)
    assert paths == [(0,), (1,), (0, 0), (0, 1)] and tokens == [5, 4, 6, 9]


def test_index_finds_the_latest_earlier_occurrences():
    index = SuffixIndex(3)
    index.extend([1, 2, 3, 1, 2, 4, 1, 2])
    assert index.continuations((1, 2), 2, 5, end=8) == [[4, 1], [3, 1]]


@pytest.mark.parametrize("settings", [{}, {"max_nodes": 1}, {"max_nodes": 12, "nodes_per_match_token": 3.0}])
def test_greedy_equals_plain_generate(model, settings):
    strategy = hf_specdec.SuffixStrategy(**UNGATED, **settings)
    assert greedy_drafted_equal_to_plain(model, strategy, settings) > 0


def test_left_padded_batch_equals_plain_batched_generate(model):
    strategy = hf_specdec.SuffixStrategy(max_nodes=6, nodes_per_match_token=3.0, **UNGATED)
    assert batched_drafted_equal_to_plain(model, strategy) > 0


def test_cross_request_cache_drafts_from_an_earlier_output_and_stays_bounded(model):
    """The second call on the same prompt copies the first call's output; after many calls the cache holds at most
    `cache_max_tokens` tokens."""
    prompt = repetitive_prompt(4)
    expected = model.generate(prompt, max_new_tokens=30, do_sample=False)
    cached = hf_specdec.SuffixStrategy(cross_request_cache=True, cache_max_tokens=200, **UNGATED)
    alone = hf_specdec.SuffixStrategy(**UNGATED)
    for strategy in (cached, alone):
        model.generate(prompt, max_new_tokens=30, do_sample=False, assistant_model=strategy)
        assert torch.equal(model.generate(prompt, max_new_tokens=30, do_sample=False, assistant_model=strategy),
                           expected)
    assert cached.last_stats.accepted > alone.last_stats.accepted
    assert cached.last_stats.accepted >= 25  # nearly every token copied from the first call's output
    for seed in range(10):
        model.generate(repetitive_prompt(seed), max_new_tokens=10, do_sample=False, assistant_model=cached)
    assert 0 < cached.cache_tokens <= 200 and cached.cache_tokens == sum(len(i.tokens) for i in cached.cache.values())


def test_sampling_follows_plain_sampling(lossless_target):  # noqa: F811
    strategy = hf_specdec.SuffixStrategy(num_speculative_tokens=2, max_nodes=3, nodes_per_match_token=3.0, **UNGATED)
    rows, accepted = sample_rows(lossless_target, strategy, PROMPT, SAMPLES, seed=4)
    assert accepted > SAMPLES / 10
    assert_follows(counts(rows), exact_joint(lossless_target, PROMPT))


def test_save_load_round_trip(tmp_path, model):
    strategy = hf_specdec.SuffixStrategy(max_match=5, max_nodes=4, cross_request_cache=True)
    strategy.save_pretrained(tmp_path, target=model)
    loaded = hf_specdec.AutoStrategy.from_pretrained(tmp_path)
    assert isinstance(loaded, hf_specdec.SuffixStrategy) and loaded.config == strategy.config


@pytest.mark.parametrize("settings, message", [
    ({"max_nodes": 0}, "max_nodes"), ({"nodes_per_match_token": 0}, "nodes_per_match_token"),
    ({"schedule": "entropy"}, "entropy")])
def test_bad_settings_name_the_fix(settings, message):
    with pytest.raises(ValueError, match=message):
        hf_specdec.SuffixConfig(**settings)
