"""Speculative sampling from the geometric mixture q* ∝ policy^alpha * target^(1 - alpha): the policy drafts, q*
verifies. It must follow the plain token-by-token q* sampler (`sample_geometric_mixture`) exactly: greedily token
for token, and under sampling by chi-square; a broken residual must be caught by the same test."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from conftest import draft_strategy, make_llama, repetitive_prompt
from scipy.stats import chi2_contingency
from test_sampling import homogeneity_pvalue

import hf_specdec
import hf_specdec.verify
from hf_specdec.distilled_draft import set_draft_vocab


@pytest.fixture(scope="module")
def pair():
    return make_llama(), make_llama(layers=1, seed=1, logit_scale=3.0)


def mixture_strategy(policy, alpha="auto", **settings):
    return draft_strategy(policy, verify_against=hf_specdec.GeometricMixture(alpha), **settings)


@pytest.mark.parametrize("alpha, gated", [("auto", False), (0.3, False), (0.8, False), ("auto", True)])
def test_greedy_equals_the_reference_sampler(pair, alpha, gated):
    """gated: the cost gate on (a tiny draft costs as much as the target, so it soon drafts nothing and only
    scores each position, the plain sampler's work) -- still the same tokens."""
    target, policy = pair
    strategy = mixture_strategy(policy, alpha, skip_unprofitable_drafts=gated)
    for seed in range(5):
        prompt = repetitive_prompt(seed)
        reference = hf_specdec.sample_geometric_mixture(target, policy, hf_specdec.GeometricMixture(alpha),
                                                        input_ids=prompt, max_new_tokens=24, do_sample=False)
        ours = target.generate(prompt, max_new_tokens=24, do_sample=False, assistant_model=strategy)
        assert torch.equal(reference, ours), (alpha, seed)
    assert 0 < strategy.last_stats.mean_alpha < 1


def test_extreme_weights_give_each_model_alone(pair):
    """alpha = 0 is the target alone, alpha = 1 the policy alone (its drafts are then always accepted)."""
    target, policy = pair
    prompt = repetitive_prompt(7)
    only_target = target.generate(prompt, max_new_tokens=20, do_sample=False,
                                  assistant_model=mixture_strategy(policy, 0.0))
    assert torch.equal(only_target, target.generate(prompt, max_new_tokens=20, do_sample=False))
    strategy = mixture_strategy(policy, 1.0)
    only_policy = target.generate(prompt, max_new_tokens=20, do_sample=False, assistant_model=strategy)
    assert torch.equal(only_policy, policy.generate(prompt, max_new_tokens=20, do_sample=False))
    assert strategy.last_stats.acceptance_rate == 1.0 and strategy.last_stats.mean_alpha == 1.0


def test_mixture_ignores_the_draft_vocabulary(pair):
    """q* is defined with the policy's full distribution: a carried draft vocabulary must not cut it."""
    target, _ = pair
    policy = make_llama(layers=1, seed=1, logit_scale=3.0)
    set_draft_vocab(policy, torch.arange(2, 40))
    prompt = repetitive_prompt(3)
    reference = hf_specdec.sample_geometric_mixture(target, make_llama(layers=1, seed=1, logit_scale=3.0),
                                                    input_ids=prompt, max_new_tokens=16, do_sample=False)
    ours = target.generate(prompt, max_new_tokens=16, do_sample=False, assistant_model=mixture_strategy(policy))
    assert torch.equal(reference, ours)


def test_settings_round_trip_and_refusals(pair, tmp_path):
    target, policy = pair
    strategy = mixture_strategy(policy, 0.25)
    assert strategy.config.mixture_alpha == 0.25 and strategy.drafts_every_position
    strategy.save_pretrained(tmp_path / "s")
    loaded = hf_specdec.DraftModelStrategy.from_pretrained(tmp_path / "s")
    assert loaded.mixture == hf_specdec.GeometricMixture(0.25)
    defaults = hf_specdec.DraftModelStrategy(policy, verify_against=hf_specdec.GeometricMixture()).config
    assert defaults.num_speculative_tokens == 2 and not defaults.skip_unprofitable_drafts  # the fastest measured
    chosen = hf_specdec.DraftModelStrategy(policy, verify_against=hf_specdec.GeometricMixture(),
                                           num_speculative_tokens=4)
    assert chosen.config.num_speculative_tokens == 4
    with pytest.raises(ValueError, match="alpha must be"):
        hf_specdec.GeometricMixture(1.5)
    with pytest.raises(TypeError, match="GeometricMixture"):
        hf_specdec.DraftModelStrategy(policy, verify_against=0.5)
    with pytest.raises(ValueError, match="typical"):
        hf_specdec.DraftModelStrategy(policy, verify_against=hf_specdec.GeometricMixture(), verification="typical")


# ---- sampling -----------------------------------------------------------------------------------------------------
VOCAB, SAMPLES = 8, 1200
PROMPT = torch.arange(VOCAB).repeat(3)[None]


@pytest.fixture(scope="module")
def small_pair():
    # Sharpened so the three distributions differ visibly (e.g. at the prompt's end: the target's top token has
    # p 0.27, the policy's 0.43, q*'s 0.31 with alpha* 0.41)
    target = make_llama(vocab_size=VOCAB, layers=1, hidden=16, seed=11, logit_scale=5.0, eos_token_id=None)
    policy = make_llama(vocab_size=VOCAB, layers=1, hidden=16, seed=5, logit_scale=15.0, eos_token_id=None)
    return target, policy


def sample_pairs(target, policy, speculative: bool, seed: int) -> Counter:
    torch.manual_seed(seed)
    mixture = hf_specdec.GeometricMixture("auto")
    kwargs = {"input_ids": PROMPT, "attention_mask": torch.ones_like(PROMPT), "max_new_tokens": 3, "do_sample": True,
              "top_k": 0}
    pairs = Counter()
    for _ in range(SAMPLES):
        if speculative:
            strategy = draft_strategy(policy, num_speculative_tokens=2, verify_against=mixture)
            out = target.generate(**kwargs, assistant_model=strategy)
        else:
            out = hf_specdec.sample_geometric_mixture(target, policy, mixture, **kwargs)
        pairs[tuple(out[0, -2:].tolist())] += 1  # (2nd, 3rd new token): both drafted and verified
    return pairs


def mixture_pvalue(a: Counter, b: Counter) -> float:
    """`homogeneity_pvalue` of the pairs and a chi-square of the first verified token alone (8 cells: far more
    power against a wrong residual), Bonferroni-combined."""
    first_a, first_b = Counter(), Counter()
    for counts, first in ((a, first_a), (b, first_b)):
        for (token, _), n in counts.items():
            first[token] += n
    cells = sorted(set(first_a) | set(first_b))
    marginal = chi2_contingency([[first_a[c] for c in cells], [first_b[c] for c in cells]]).pvalue
    return min(1.0, 2 * min(homogeneity_pvalue(a, b), marginal))


@pytest.fixture(scope="module")
def reference_pairs(small_pair):
    return sample_pairs(*small_pair, speculative=False, seed=1)


def test_sampling_matches_the_reference_sampler(small_pair, reference_pairs):
    assert mixture_pvalue(reference_pairs, sample_pairs(*small_pair, speculative=True, seed=2)) > 1e-3


def test_sampling_differs_from_the_target_alone(small_pair, reference_pairs):
    """q* is not the target: the test can tell them apart, so a mixture silently ignored would be caught."""
    target, _ = small_pair
    torch.manual_seed(3)
    mask = torch.ones_like(PROMPT)
    plain = Counter(tuple(target.generate(PROMPT, attention_mask=mask, max_new_tokens=3, do_sample=True,
                                          top_k=0)[0, -2:].tolist()) for _ in range(SAMPLES))
    assert mixture_pvalue(reference_pairs, plain) < 1e-4


def test_broken_residual_is_caught(small_pair, reference_pairs, monkeypatch):
    """The residual with p and q swapped, norm(max(0, policy - q*)), after a rejection: the same test must reject it
    decisively, or it could not have caught anything."""
    original = hf_specdec.verify.residual_distribution
    monkeypatch.setattr(hf_specdec.verify, "residual_distribution", lambda p_row, q_row: original(q_row, p_row))
    assert mixture_pvalue(reference_pairs, sample_pairs(*small_pair, speculative=True, seed=2)) < 1e-4
