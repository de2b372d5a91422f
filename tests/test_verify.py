"""Verifiers alone: exact hand-made cases, then statistical tests that rejection sampling reproduces p."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from hf_specdec.verify import (
    greedy_verify,
    residual_distribution,
    speculative_sampling_verify,
    typical_acceptance_verify,
)

NEG = -float("inf")


def scores_for(argmaxes: list[int], vocab: int = 10) -> torch.Tensor:
    """Rows of +10 at the given argmax and -inf elsewhere: exact, not statistical."""
    scores = torch.full((len(argmaxes), vocab), NEG)
    for row, token in enumerate(argmaxes):
        scores[row, token] = 10.0
    return scores


@pytest.mark.parametrize(
    ("draft", "target", "expected"),
    [
        ([3, 4, 5], [3, 4, 5, 6], (3, 6)),  # all accepted, bonus token
        ([3, 4, 5], [3, 9, 5, 6], (1, 9)),  # first miss at 1: correction
        ([3, 4, 5], [7, 4, 5, 6], (0, 7)),  # later matches do not count after a miss
        ([], [2], (0, 2)),  # no draft: plain greedy step
    ],
)
def test_greedy_verify_exact(draft, target, expected):
    assert greedy_verify(torch.tensor(draft, dtype=torch.long), scores_for(target)) == expected


def test_shapes_are_checked():
    with pytest.raises(ValueError, match=r"\[K \+ 1, V\]"):
        greedy_verify(torch.tensor([1, 2]), scores_for([1, 2]))


def test_speculative_sampling_accepts_certain_tokens_exactly():
    p = scores_for([3, 4, 5]).softmax(-1)
    assert speculative_sampling_verify(torch.tensor([3, 4]), p) == (2, 5)
    # a token with p = 0 is always rejected and never re-drawn
    assert speculative_sampling_verify(torch.tensor([7, 4]), p)[0] == 0
    assert speculative_sampling_verify(torch.tensor([7, 4]), p)[1] == 3


def test_residual_distribution():
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.6, 0.2])
    torch.testing.assert_close(residual_distribution(p, q), torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(residual_distribution(p, p), p)  # p == q: falls back to p


def _first_token_counts(p: torch.Tensor, q: torch.Tensor | None, draws: int, generator: torch.Generator,
                        fixed_draft: int | None = None) -> torch.Tensor:
    """Counts of the first emitted token over `draws` runs of a K=2 verify with drafts sampled from q."""
    vocab = p.shape[-1]
    counts = torch.zeros(vocab)
    for _ in range(draws):
        if q is None:
            draft = torch.tensor([fixed_draft, fixed_draft])
        else:
            draft = torch.stack([torch.multinomial(q[i], 1, generator=generator)[0] for i in range(2)])
        num_accepted, next_token = speculative_sampling_verify(draft, p, q, generator=generator)
        counts[int(draft[0]) if num_accepted > 0 else next_token] += 1
    return counts


@pytest.mark.parametrize("pair", range(8))
def test_speculative_sampling_reproduces_p_chi_square(pair):
    """For random (p, q), the first emitted token must follow p[0] exactly: chi-square goodness of fit."""
    generator = torch.Generator().manual_seed(pair)
    vocab, draws = 6, 4000
    p = (torch.randn(3, vocab, generator=generator) * 1.5).softmax(-1)  # [K + 1, V]
    q = (torch.randn(2, vocab, generator=generator) * 1.5).softmax(-1)  # [K, V]
    counts = _first_token_counts(p, q, draws, generator)
    assert chisquare(counts.numpy(), (p[0] * draws).numpy()).pvalue > 1e-3


def test_point_mass_draft_reproduces_p():
    """n-gram drafts are deterministic: verified as a point mass q, the output still follows p."""
    generator = torch.Generator().manual_seed(123)
    p = torch.tensor([[0.5, 0.2, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25], [0.1, 0.2, 0.3, 0.4]])
    counts = _first_token_counts(p, None, 4000, generator, fixed_draft=0)
    assert chisquare(counts.numpy(), (p[0] * 4000).numpy()).pvalue > 1e-3


def test_broken_residual_is_detected():
    """The test above must be able to fail: drawing the correction from p instead of norm(max(0, p - q)) biases
    the output towards the drafted token, and the same chi-square rejects it decisively."""
    generator = torch.Generator().manual_seed(7)
    p = torch.tensor([[0.5, 0.2, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25], [0.1, 0.2, 0.3, 0.4]])
    counts = torch.zeros(4)
    for _ in range(4000):
        accepted = torch.rand(1, generator=generator).item() < p[0, 0]
        counts[0 if accepted else int(torch.multinomial(p[0], 1, generator=generator))] += 1
    assert chisquare(counts.numpy(), (p[0] * 4000).numpy()).pvalue < 1e-6


def test_bonus_token_follows_last_row():
    generator = torch.Generator().manual_seed(3)
    p = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.3, 0.3, 0.4]])
    counts = torch.zeros(3)
    for _ in range(3000):
        num_accepted, token = speculative_sampling_verify(torch.tensor([1, 2]), p, generator=generator)
        assert num_accepted == 2
        counts[token] += 1
    assert chisquare(counts.numpy(), (p[2] * 3000).numpy()).pvalue > 1e-3


def test_typical_acceptance_thresholds():
    # confident target (low entropy): a token with p = 0.05 falls under min(0.09, 0.3 * exp(-H)) and is rejected
    p = torch.tensor([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [1.0, 0.0, 0.0]])
    assert typical_acceptance_verify(torch.tensor([0, 1]), p, do_sample=False) == (1, 0)
    assert typical_acceptance_verify(torch.tensor([0, 0]), p, do_sample=False) == (2, 0)


# ---- every branch with an explicit draft distribution q: exact cases, then the whole emitted sequence -------------
def point_masses(tokens: list[int], vocab: int = 10) -> torch.Tensor:
    """Rows that put all probability on the given tokens (softmax of +10 / -inf scores)."""
    return scores_for(tokens, vocab).softmax(-1)


@pytest.mark.parametrize(
    ("draft", "p_tokens", "q_tokens", "expected"),
    [
        ([3, 4], [3, 4, 6], [3, 4], (2, 6)),  # all accepted: the bonus comes from p[K], never from q
        ([7, 4], [3, 4, 6], [7, 4], (0, 3)),  # p(7) = 0: rejected at once, the correction from norm(max(0, p - q))
        ([3, 8], [3, 4, 6], [3, 8], (1, 4)),  # accepted, then rejected: the correction from p[1] - q[1]
        ([], [5], [], (0, 5)),  # no draft: a plain draw from p[0]
    ],
)
def test_speculative_sampling_with_q_exact(draft, p_tokens, q_tokens, expected):
    q = point_masses(q_tokens) if q_tokens else torch.empty(0, 10)
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):  # every draw gives the same answer: the probabilities are 0 or 1
        assert speculative_sampling_verify(torch.tensor(draft, dtype=torch.long), point_masses(p_tokens), q,
                                           generator=generator) == expected


def test_speculative_sampling_checks_q_shape():
    with pytest.raises(ValueError, match=r"q must have shape \[K, V\]"):
        speculative_sampling_verify(torch.tensor([3, 4]), point_masses([3, 4, 6]), point_masses([3]))


def test_typical_acceptance_branches():
    p = point_masses([3, 4, 6])
    assert typical_acceptance_verify(torch.tensor([3, 4]), p, do_sample=True) == (2, 6)  # bonus drawn from p[K]
    assert typical_acceptance_verify(torch.tensor([7, 4]), p, do_sample=True) == (0, 3)  # first rejected
    assert typical_acceptance_verify(torch.tensor([3, 7]), p, do_sample=False) == (1, 4)


def _emitted_sequences(p: torch.Tensor, q: torch.Tensor, trials: int, generator: torch.Generator) -> torch.Tensor:
    """`[trials, K + 1]`: a verify of a K-token draft sampled from q, its emitted tokens, then (after a rejection)
    the remaining positions drawn from p's rows, as the next plain steps would. p's rows do not depend on the
    tokens before them, so with a correct verifier position j follows p[j] whatever happened before it."""
    num_drafted = q.shape[0]
    out = torch.empty(trials, num_drafted + 1, dtype=torch.long)
    for trial in range(trials):
        draft = torch.stack([torch.multinomial(q[i], 1, generator=generator)[0] for i in range(num_drafted)])
        num_accepted, next_token = speculative_sampling_verify(draft, p, q, generator=generator)
        emitted = draft[:num_accepted].tolist() + [next_token]
        emitted += [int(torch.multinomial(p[j], 1, generator=generator)) for j in range(len(emitted), num_drafted + 1)]
        out[trial] = torch.tensor(emitted)
    return out


@pytest.mark.parametrize("pair", range(2))
def test_every_emitted_position_follows_p(pair):
    """With q far from p, each of the K + 1 positions (the bonus one included) follows its row of p: a
    chi-square per position, Bonferroni over the three. Power: 2000 trials at V = 4 and alpha = 1e-3 / 3 detect a
    chi-square distance of 0.03 (Cohen's w = 0.17) with probability 0.99 (non-centrality 60 against a critical
    value of 18.4 at df 3); drawing the bonus from q or swapping p and q in the acceptance or the residual moves
    a position by a distance of ~0.1 or more for these (p, q)."""
    generator = torch.Generator().manual_seed(100 + pair)
    vocab, trials = 4, 2000
    p = (torch.randn(3, vocab, generator=generator) * 1.5).softmax(-1)  # [K + 1, V]
    q = (torch.randn(2, vocab, generator=generator) * 1.5).softmax(-1)  # [K, V]
    sequences = _emitted_sequences(p, q, trials, generator)
    for position in range(3):
        counts = torch.bincount(sequences[:, position], minlength=vocab).double()
        expected = p[position].double() / p[position].double().sum() * trials
        assert chisquare(counts.numpy(), expected.numpy()).pvalue > 1e-3 / 3, position
