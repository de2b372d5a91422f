"""The drafting pieces on their own: prompt lookup, the NASD n-gram store, K schedules and the cost gate."""

from __future__ import annotations

import copy

import torch
from conftest import repetitive_prompt

import hf_specdec
from hf_specdec.schedules import DraftGate, EntropySchedule, HeuristicSchedule
from hf_specdec.strategies import Draft, NGramStore
from hf_specdec.strategies.ngram import match_suffix


def test_match_suffix_uses_the_latest_earlier_match_and_checks_consistency():
    tokens = [5, 6, 7, 8, 5, 6, 9, 1, 5, 6]
    assert match_suffix(tokens, 2) == (6, False)  # the later "5 6" (followed by 9) wins; the first was followed by 7
    assert match_suffix(tokens, 3) is None  # "1 5 6" never occurred before
    assert match_suffix(tokens[:2], 2) is None  # too short to hold an earlier match
    assert match_suffix([1, 2, 1, 2, 1], 1) == (3, True)  # every earlier "1" was followed by 2


def test_ngram_strategy_backs_off_to_shorter_ngrams():
    strategy = hf_specdec.NGramStrategy(max_ngram_size=3, skip_unprofitable_drafts=False)
    draft = strategy.propose(torch.tensor([[4, 2, 3, 9, 9, 1, 3]]), 4)
    assert draft.tokens.tolist() == [9, 9, 1, 3] and draft.bucket == 2 * 1 + 1  # 1-gram, consistent
    assert strategy.propose(torch.tensor([[1, 2, 3, 4]]), 4).tokens.numel() == 0


def test_ngram_store_basic_backs_off_and_counts():
    store = NGramStore(ngram_size=3, storage="basic")
    store.add_sequence([1, 2, 3, 1, 2, 4, 1, 2, 4])
    assert store.predict([7, 1, 2]) == (4, 2)  # "1 2" was followed by 4 twice, by 3 once
    assert store.predict([7, 8, 3]) == (1, 1)  # unknown 2-token context: back off to "3"
    assert store.predict([7, 8, 9]) is None


def test_ngram_store_onelevel_keeps_one_order():
    store = NGramStore(ngram_size=2, storage="onelevel")
    store.add_sequence([1, 2, 1, 3])
    assert store.context_lengths == [1]
    assert store.predict([5, 2]) == (1, 1)


def test_nasd_learns_from_the_target_top_k():
    """top_k_filler: the target's top-k at verified positions enter the store, so NASD can draft a token the text
    never contained."""
    strategy = hf_specdec.NASDStrategy(ngram_size=2, top_k_filler=2, skip_unprofitable_drafts=False)
    strategy.begin(None, torch.tensor([[1, 2]]), None, None)
    scores = torch.full((1, 10), -1e4)
    scores[0, 3], scores[0, 7] = 2.0, 1.0  # target's top-2 after "1 2" are 3 and 7
    strategy.observe(torch.tensor([[1, 2, 3]]), Draft.empty(), 0, scores, None)
    counts = strategy.store.counts[(2,)]
    assert counts == {3: 2, 7: 1}  # 3 counted as the emitted token and as a top-k guess; 7 as a guess


def test_heuristic_schedule_moves_by_plus_two_minus_one():
    schedule = HeuristicSchedule(4, gamma_min=1, gamma_max=7)
    schedule.update(4, 4)
    assert schedule.next_k() == 6
    schedule.update(6, 6)
    assert schedule.next_k() == 7  # capped at gamma_max
    for _ in range(10):
        schedule.update(7, 0)
    assert schedule.next_k() == 1  # floored at gamma_min


def test_entropy_schedule_follows_ema_and_stops_on_entropy():
    schedule = EntropySchedule(6, gamma_min=2, gamma_max=8, entropy_threshold=1.0, ema_alpha=0.5)
    schedule.update(6, 0)  # ema 3.0 -> K = 4
    assert schedule.next_k() == 4
    schedule.update(4, 0)  # ema 1.5 -> K = 3
    assert schedule.next_k() == 3
    assert schedule.stop_on_entropy(1.5) and not schedule.stop_on_entropy(0.5)


def test_draft_gate_skips_buckets_that_do_not_pay_and_probes_them():
    gate = DraftGate(prior_accepted=1.0, prior_cost_ratio=1.7, ema_alpha=1.0, probe_every=4)
    assert gate.should_draft(1)
    gate.record_outcome(1, 0)  # nothing accepted: expected 0 < cost_ratio - 1
    decisions = [gate.should_draft(1) for _ in range(8)]
    assert decisions == [False, False, False, True] * 2  # skipped, but probed every 4th time
    gate.record_outcome(2, 3)
    assert gate.should_draft(2)


def test_draft_gate_measures_the_cost_ratio():
    gate = DraftGate(ema_alpha=1.0)
    gate.record_forward_time(1, 0.05)
    gate.record_forward_time(6, 0.10)
    assert abs(gate.cost_ratio - 2.0) < 1e-9


def test_draft_gate_counts_the_drafting_cost_and_backs_off_its_probes():
    gate = DraftGate(prior_accepted=3.0, prior_cost_ratio=1.5, ema_alpha=1.0, probe_every=2, max_probe_every=8)
    assert gate.should_draft(0, extra_cost=2.0)  # 3 accepted > 0.5 + 2
    assert not gate.should_draft(0, extra_cost=2.6)  # the same draft, dearer to make
    gate.record_outcome(0, 0)
    decisions = [gate.should_draft(0, extra_cost=1.0) for _ in range(2 + 4 + 8 + 8)]
    probes = [i for i, drafted in enumerate(decisions) if drafted]
    assert probes == [0, 4, 12, 20]  # every 2nd skip (the refusal above was the 1st), then 4th, then 8th (the cap)
    gate.record_outcome(0, 3)
    assert gate.should_draft(0, extra_cost=1.0) and gate.probe_interval == {}  # pays again: back to probe_every


def test_a_useless_draft_model_stops_drafting(tiny_llama):
    """A draft that never agrees with the target is found out in a few steps and only probed after that; the
    output stays plain generate's."""
    draft = copy.deepcopy(tiny_llama)
    with torch.no_grad():
        draft.lm_head.weight.neg_()  # its favourite token is always the target's least likely one
    prompt = repetitive_prompt(3)
    expected = tiny_llama.generate(prompt, max_new_tokens=60, do_sample=False, eos_token_id=None)
    gated = hf_specdec.DraftModelStrategy(draft, num_speculative_tokens=4, lookup_min_ngram=0)
    actual = tiny_llama.generate(prompt, max_new_tokens=60, do_sample=False, eos_token_id=None, assistant_model=gated)
    assert torch.equal(actual, expected)
    assert gated.last_stats.accepted == 0 and gated.last_stats.drafting_steps <= 8
    ungated = hf_specdec.DraftModelStrategy(draft, num_speculative_tokens=4, skip_unprofitable_drafts=False,
                                           lookup_min_ngram=0)
    tiny_llama.generate(prompt, max_new_tokens=60, do_sample=False, eos_token_id=None, assistant_model=ungated)
    assert ungated.last_stats.drafting_steps > 50  # without the gate every step drafts (and fails)
