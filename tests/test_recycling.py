"""Token recycling: its table learns the target's top-k from verify scores, its tree drafts verify in one forward,
greedy output equals plain `generate` (batch of one and a left-padded batch), sampling stays lossless, and the
strategy round-trips through save_pretrained."""

from __future__ import annotations

import pytest
import torch
from conftest import greedy_drafted_equal_to_plain, repetitive_prompt
from test_batches import batched_drafted_equal_to_plain, make_llama
from test_lossless_sampling import PROMPT, SAMPLES, assert_follows, counts, exact_joint, sample_rows
from test_lossless_sampling import target as lossless_target  # noqa: F401 (fixture)

import hf_specdec
from hf_specdec.strategies.recycling import RECYCLING_BUCKET

UNGATED = {"skip_unprofitable_drafts": False}


@pytest.fixture(scope="module")
def model():
    return make_llama()


def test_table_learns_the_targets_top_k_from_verify_scores(model):
    """After a call, the table row of each emitted token's predecessor holds the target's top-k there."""
    strategy = hf_specdec.RecyclingStrategy(lookup_min_ngram=0, **UNGATED)
    prompt = repetitive_prompt(0)
    out = model.generate(prompt, max_new_tokens=12, do_sample=False, assistant_model=strategy)
    last = out[:, :-1]
    with torch.no_grad():
        top = model(last).logits[0, -1].topk(strategy.top_k).indices
    key = int(out[0, -2])
    assert strategy.known[key] and torch.equal(strategy.table[key], top)


@pytest.mark.parametrize("settings", [
    {"tree": "default", "lookup_min_ngram": 0},
    {"tree": "chain", "lookup_min_ngram": 0},
    {"tree": "wide"},
    {},  # the defaults: lookup first, the cost gate on
])
def test_greedy_equals_plain_generate(model, settings):
    strategy = hf_specdec.RecyclingStrategy(**({**UNGATED, **settings} if settings else {}))
    assert greedy_drafted_equal_to_plain(model, strategy, settings) > 0


def test_tree_drafts_are_verified_in_one_forward(model):
    """A table-only tree strategy: every step is one target forward, and some steps accept tokens from it."""
    strategy = hf_specdec.RecyclingStrategy(lookup_min_ngram=0, **UNGATED)
    prompt = repetitive_prompt(1)
    model.generate(prompt, max_new_tokens=20, do_sample=False, assistant_model=strategy)  # warms the table
    forwards = []
    handle = model.register_forward_hook(lambda module, args, output: forwards.append(1))
    drafts = []
    original = strategy.propose_rows
    strategy.propose_rows = lambda requests: drafts.extend(d := original(requests)) or d
    try:
        model.generate(prompt, max_new_tokens=20, do_sample=False, assistant_model=strategy)
    finally:
        handle.remove()
    stats = strategy.last_stats
    assert any(d.tree is not None and d.tree.tree.num_nodes > d.tokens.numel() for d in drafts)
    assert len(forwards) == stats.target_forwards == stats.verify_steps + 1  # the prefill, then one per step
    assert stats.accepted > 0 and all(d.bucket in (None, RECYCLING_BUCKET) for d in drafts)


def test_left_padded_batch_equals_plain_batched_generate(model):
    strategy = hf_specdec.RecyclingStrategy(**UNGATED)
    assert batched_drafted_equal_to_plain(model, strategy) > 0


def test_sampling_follows_plain_sampling(lossless_target):  # noqa: F811
    """Table-only trees of point masses, sampled in batches: plain sampling's exact joint (see
    test_lossless_sampling's docstring for the power)."""
    strategy = hf_specdec.RecyclingStrategy(tree=[[0, 0], [1], [0, 1]], lookup_min_ngram=0,
                                            num_speculative_tokens=2, **UNGATED)
    rows, accepted = sample_rows(lossless_target, strategy, PROMPT, SAMPLES, seed=3)
    assert accepted > SAMPLES / 10
    assert_follows(counts(rows), exact_joint(lossless_target, PROMPT))


def test_save_load_round_trip(tmp_path, model):
    strategy = hf_specdec.RecyclingStrategy(tree=[[0, 0, 0], [1], [2, 0]], lookup_min_ngram=3, keep_table=False)
    strategy.save_pretrained(tmp_path, target=model)
    loaded = hf_specdec.AutoStrategy.from_pretrained(tmp_path)
    assert isinstance(loaded, hf_specdec.RecyclingStrategy) and loaded.config == strategy.config
    assert loaded.top_k == 3
    prompt = repetitive_prompt(2)
    expected = model.generate(prompt, max_new_tokens=16, do_sample=False)
    assert torch.equal(model.generate(prompt, max_new_tokens=16, do_sample=False, assistant_model=loaded), expected)


@pytest.mark.parametrize("settings, message", [
    ({"tree": "huge"}, "Unknown tree"),
    ({"tree": [[0, -1]]}, "ranks >= 0"),
    ({"lookup_min_ngram": 7}, "lookup_min_ngram"),
    ({"schedule": "entropy"}, "entropy"),
])
def test_bad_settings_name_the_fix(settings, message):
    with pytest.raises(ValueError, match=message):
        hf_specdec.RecyclingConfig(**settings)
