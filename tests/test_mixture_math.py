"""The geometric mixture q* ∝ pi_theta^alpha * pi_t^(1 - alpha) alone: exact, hand-computed and closed-form cases."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.optimize import brentq

from hf_specdec.mixture_math import GeometricMixture, kl, mixture_log_probs, solve_alpha

NEG = -float("inf")


def random_pair(shape: tuple[int, ...] = (8, 50), seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    policy = torch.randn(shape, generator=generator) * 2  # [..., V]
    reference = torch.randn(shape, generator=generator) * 2  # [..., V]
    return policy.log_softmax(-1), reference.log_softmax(-1)


def top_k_mask(log_probs: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k most likely tokens, renormalised, the rest -inf (what a top-k logits processor leaves)."""
    threshold = log_probs.topk(k, dim=-1).values[..., -1:]  # [..., 1]
    return log_probs.masked_fill(log_probs < threshold, NEG).log_softmax(-1)  # [..., V]


def total_variation(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    return 0.5 * (log_a.double().exp() - log_b.double().exp()).abs().sum(-1)  # [...]


def discretised_gaussian(mean: float, std: float, points: int = 2001, half_width: float = 20.0) -> torch.Tensor:
    grid = torch.linspace(-half_width, half_width, points, dtype=torch.float64)  # [V]
    return (-((grid - mean) ** 2) / (2 * std**2)).log_softmax(-1)  # [V]


def gaussian_alpha(mean_policy: float, std_policy: float, mean_ref: float, std_ref: float) -> float:
    """alpha* in closed form: q_alpha is Gaussian (precisions and precision-weighted means mix), then a 1-D solve."""

    def gaussian_kl(m1: float, s1: float, m2: float, s2: float) -> float:  # KL(N(m1, s1^2) || N(m2, s2^2))
        return math.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5

    def gap(alpha: float) -> float:
        precision = alpha / std_policy**2 + (1 - alpha) / std_ref**2
        mean = (alpha * mean_policy / std_policy**2 + (1 - alpha) * mean_ref / std_ref**2) / precision
        std = precision**-0.5
        return gaussian_kl(mean, std, mean_policy, std_policy) - gaussian_kl(mean, std, mean_ref, std_ref)

    if gap(0.5) == 0:
        return 0.5
    return brentq(gap, 1e-12, 1 - 1e-12, xtol=1e-14)


# --- kl --------------------------------------------------------------------------------------------------------------


def test_kl_hand_computed_and_support_rules():
    a = torch.tensor([0.5, 0.5, 0.0]).log()  # [3], last token -inf
    b = torch.tensor([0.25, 0.75, 0.0]).log()
    assert kl(a, b).item() == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3), abs=1e-7)
    assert kl(a, a).item() == 0.0
    # b has no mass on a token a uses: +inf; a has none on a token b uses: a finite sum over a's support.
    assert kl(b.flip(0), b).item() == math.inf
    c = torch.tensor([1.0, 0.0, 0.0]).log()
    assert kl(c, b).item() == pytest.approx(math.log(4), abs=1e-7)
    assert kl(c, b).dtype == torch.float32


# --- mixture_log_probs -----------------------------------------------------------------------------------------------


def test_mixture_hand_computed_half():
    policy = torch.tensor([0.4, 0.3, 0.2, 0.1]).log()
    reference = policy.flip(0)
    geometric = torch.tensor([0.04, 0.06, 0.06, 0.04]).sqrt()
    expected = (geometric / geometric.sum()).log()
    torch.testing.assert_close(mixture_log_probs(policy, reference, 0.5), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_alpha_zero_and_one_give_exactly_the_inputs(dtype):
    policy, reference = random_pair()
    policy, reference = top_k_mask(policy, 10).to(dtype), top_k_mask(reference, 30).to(dtype)  # [8, 50]
    assert torch.equal(mixture_log_probs(policy, reference, 0.0), reference.float())
    assert torch.equal(mixture_log_probs(policy, reference, 1.0), policy.float())
    # per-position alpha: rows 0, 1, 0, 1, ...
    alpha = torch.tensor([0.0, 1.0] * 4)  # [8]
    out = mixture_log_probs(policy, reference, alpha)  # [8, 50]
    assert torch.equal(out[0::2], reference[0::2].float()) and torch.equal(out[1::2], policy[1::2].float())


def test_mixture_is_normalised_for_float_and_per_position_alpha():
    policy, reference = random_pair((2, 4, 50), seed=1)
    for alpha in (0.1, 0.5, 0.9, torch.linspace(0.05, 0.95, 8).reshape(2, 4)):
        log_q = mixture_log_probs(policy, reference, alpha)  # [2, 4, 50]
        assert log_q.shape == policy.shape and log_q.dtype == torch.float32
        torch.testing.assert_close(log_q.logsumexp(-1), torch.zeros(2, 4), atol=1e-6, rtol=0)


def test_per_position_alpha_matches_one_row_at_a_time():
    policy, reference = random_pair(seed=2)
    alpha = torch.linspace(0.1, 0.9, 8)  # [8]
    batched = mixture_log_probs(policy, reference, alpha)
    for row in range(8):
        torch.testing.assert_close(batched[row], mixture_log_probs(policy[row], reference[row], alpha[row].item()))


def test_top_k_masks_give_the_intersection_and_no_nan():
    policy, reference = random_pair(seed=3)
    policy, reference = top_k_mask(policy, 20), top_k_mask(reference, 25)  # [8, 50], overlapping supports
    both = torch.isfinite(policy) & torch.isfinite(reference)
    assert both.any(-1).all()
    for alpha in (0.3, solve_alpha(policy, reference)):
        log_q = mixture_log_probs(policy, reference, alpha)
        assert not log_q.isnan().any()
        assert torch.equal(torch.isfinite(log_q), both)
        torch.testing.assert_close(log_q.logsumexp(-1), torch.zeros(8), atol=1e-6, rtol=0)
        assert torch.isfinite(kl(log_q, policy)).all() and torch.isfinite(kl(log_q, reference)).all()


def test_disjoint_supports_fall_back_to_the_reference_and_alpha_zero():
    policy = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.4, 0.3, 0.2, 0.1]]).log()  # row 0 disjoint from its reference
    reference = torch.tensor([[0.0, 0.0, 0.3, 0.7], [0.1, 0.2, 0.3, 0.4]]).log()
    alpha = solve_alpha(policy, reference)
    assert alpha[0].item() == 0.0 and alpha[1].item() == pytest.approx(0.5, abs=1e-6)
    log_q = mixture_log_probs(policy, reference, 0.5)
    assert torch.equal(log_q[0], reference[0]) and not log_q.isnan().any()
    log_q, alpha = GeometricMixture().log_probs(policy, reference)
    assert torch.equal(log_q[0], reference[0]) and alpha[0].item() == 0.0


# --- solve_alpha -----------------------------------------------------------------------------------------------------


def test_symmetric_pair_gives_one_half():
    policy = torch.tensor([0.4, 0.3, 0.2, 0.1]).log()  # same entropy as its mirror image
    reference = policy.flip(0)
    assert solve_alpha(policy, reference).item() == pytest.approx(0.5, abs=1e-6)


def test_identical_inputs_give_one_half_by_convention():
    policy, _ = random_pair(seed=4)
    assert torch.equal(solve_alpha(policy, policy), torch.full((8,), 0.5))
    masked = top_k_mask(policy, 5)
    assert torch.equal(solve_alpha(masked, masked), torch.full((8,), 0.5))


@pytest.mark.parametrize("mask", [False, True])
def test_kls_are_equal_at_the_solution(mask):
    policy, reference = random_pair(seed=5)  # [8, 50]
    if mask:
        policy, reference = top_k_mask(policy, 30), top_k_mask(reference, 40)
    alpha = solve_alpha(policy, reference)  # [8]
    assert alpha.shape == (8,) and alpha.dtype == torch.float32
    assert ((alpha > 0) & (alpha < 1)).all()
    log_q = mixture_log_probs(policy, reference, alpha)
    torch.testing.assert_close(kl(log_q, policy), kl(log_q, reference), atol=1e-5, rtol=0)


def test_solution_matches_an_independent_root_finder():
    policy, reference = random_pair((3, 50), seed=6)
    alpha = solve_alpha(policy, reference)
    for row in range(3):
        p, r = policy[row].double(), reference[row].double()

        def gap(a: float, p=p, r=r) -> float:
            log_q = (a * p + (1 - a) * r).log_softmax(-1)
            return float((log_q.exp() * (r - p)).sum())  # KL(q||p) - KL(q||r) = E_q[log r - log p]

        assert alpha[row].item() == pytest.approx(brentq(gap, 1e-9, 1 - 1e-9, xtol=1e-13), abs=1e-6)


def test_bisection_is_monotone_in_alpha():
    policy, reference = random_pair(seed=7)
    gaps = []
    for a in torch.linspace(0.01, 0.99, 25).tolist():
        log_q = mixture_log_probs(policy.double(), reference.double(), a)
        gaps.append(kl(log_q, policy) - kl(log_q, reference))  # [8]
    gaps = torch.stack(gaps)  # [25, 8]
    assert (gaps[1:] <= gaps[:-1] + 1e-6).all()


def test_peaked_policy_gets_less_weight_yet_q_is_closer_to_it():
    """pi_theta = pi_t sharpened (temperature 1/2): alpha* < 1/2, KLs equal, yet q* is nearer pi_theta in total
    variation, because the peaked factor dominates a geometric mixture."""
    generator = torch.Generator().manual_seed(8)
    logits = torch.randn(8, 50, generator=generator) * 2  # [8, 50]
    policy, reference = (2 * logits).log_softmax(-1), logits.log_softmax(-1)
    log_q, alpha = GeometricMixture().log_probs(policy, reference)
    assert (alpha < 0.5).all() and (alpha > 0).all()
    torch.testing.assert_close(kl(log_q, policy), kl(log_q, reference), atol=1e-5, rtol=0)
    assert (total_variation(log_q, policy) < total_variation(log_q, reference)).all()
    # at alpha = 1/2 q is already nearer pi_theta: equal KLs need less weight on it
    half = mixture_log_probs(policy, reference, 0.5)
    assert (kl(half, policy) < kl(half, reference)).all()


# --- the Gaussian worked case ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mean_policy", "std_policy", "mean_ref", "std_ref", "expected"),
    [
        (0.0, 1.0, 0.0, 1.0, 0.5),  # equal spreads
        (0.0, 1.0, 3.0, 1.0, 0.5),  # equal spreads, shifted means
        (0.0, 1.0, 0.0, 2.0, 0.3880),  # pi_theta twice as concentrated
        (0.0, 1.0, 0.0, 3.0, 0.3301),
        (0.0, 1.0, 0.0, 4.0, 0.2940),
        (0.0, 1.0, 1.0, 2.0, 0.3706),
        (0.0, 2.0, 0.0, 1.0, 0.6120),  # pi_theta wider: the weight goes the other way, 1 - 0.388
    ],
)
def test_gaussian_alpha_matches_the_closed_form(mean_policy, std_policy, mean_ref, std_ref, expected):
    analytic = gaussian_alpha(mean_policy, std_policy, mean_ref, std_ref)
    assert analytic == pytest.approx(expected, abs=5e-5)
    policy = discretised_gaussian(mean_policy, std_policy)  # [2001]
    reference = discretised_gaussian(mean_ref, std_ref)
    alpha = solve_alpha(policy, reference)
    assert alpha.item() == pytest.approx(analytic, abs=1e-3)
    if std_policy < std_ref:  # the more concentrated pi_theta: less weight, yet q* nearer to it
        log_q = mixture_log_probs(policy, reference, alpha)
        assert total_variation(log_q, policy) < total_variation(log_q, reference)


def test_gaussian_same_mean_formula():
    """Same means, precision ratio rho = (std_ref / std_policy)^2: alpha* = 1 / ln(rho) - 1 / (rho - 1)."""
    for ratio in (2.0, 3.0, 4.0):
        rho = ratio**2
        assert gaussian_alpha(0.0, 1.0, 0.0, ratio) == pytest.approx(1 / math.log(rho) - 1 / (rho - 1), abs=1e-10)


# --- GeometricMixture ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", ["fixed", 1.5, -0.1, None, True, [0.5]])
def test_geometric_mixture_rejects_bad_alpha(alpha):
    with pytest.raises(ValueError, match='a number in \\[0, 1\\] or the string "auto"'):
        GeometricMixture(alpha=alpha)


def test_geometric_mixture_fixed_and_auto():
    policy, reference = random_pair(seed=9)
    log_q, alpha = GeometricMixture(alpha=0.25).log_probs(policy, reference)
    assert torch.equal(alpha, torch.full((8,), 0.25))
    torch.testing.assert_close(log_q, mixture_log_probs(policy, reference, 0.25), atol=0, rtol=0)
    log_q, alpha = GeometricMixture(alpha=0).log_probs(policy, reference)
    assert torch.equal(log_q, reference)
    log_q, alpha = GeometricMixture().log_probs(policy, reference)
    assert torch.equal(alpha, solve_alpha(policy, reference))
    torch.testing.assert_close(log_q, mixture_log_probs(policy, reference, alpha), atol=0, rtol=0)


def test_shape_errors():
    with pytest.raises(ValueError, match="same shape"):
        kl(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="alpha must be"):
        mixture_log_probs(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(5))
    with pytest.raises(ValueError, match="alpha must be"):
        mixture_log_probs(torch.zeros(2, 3), torch.zeros(2, 3), 1.5)
