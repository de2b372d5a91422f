"""How many tokens to draft each step (K schedules), and whether drafting pays at all (the cost gate)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .config import StrategyConfig

if TYPE_CHECKING:
    from .strategies.base import Draft


class KSchedule:
    """Picks K before each step and learns from the outcome. Subclasses override `next_k` / `update`."""

    needs_entropy = False  # True: drafters must compute their distribution's entropy for `stop_on_entropy`

    def __init__(self, num_speculative_tokens: int, gamma_min: int = 1, gamma_max: int = 10) -> None:
        self.k = num_speculative_tokens
        self.gamma_min = gamma_min
        self.gamma_max = gamma_max

    def next_k(self) -> int:
        return self.k

    def update(self, num_drafted: int, num_accepted: int) -> None:
        """Called after every verify step that checked at least one drafted token."""

    def stop_on_entropy(self, entropy: float) -> bool:
        """Drafters with a distribution ask this after each drafted token; only the entropy schedule says yes."""
        return False


class ConstantSchedule(KSchedule):
    """K stays at `num_speculative_tokens`."""


class HeuristicSchedule(KSchedule):
    """Transformers' heuristic: K += 2 when every drafted token was accepted, K -= 1 otherwise."""

    def update(self, num_drafted: int, num_accepted: int) -> None:
        step = 2 if num_accepted == num_drafted else -1
        self.k = min(self.gamma_max, max(self.gamma_min, self.k + step))


class EntropySchedule(KSchedule):
    """Entropy-guided adaptive gamma (EGAG): stop drafting once the draft's entropy exceeds a threshold (it is
    unsure, so its next token is likely rejected), and set K from an EMA of the accepted count, within
    [gamma_min, gamma_max]."""

    def __init__(self, num_speculative_tokens: int, gamma_min: int, gamma_max: int, entropy_threshold: float,
                 ema_alpha: float) -> None:
        super().__init__(num_speculative_tokens, gamma_min, gamma_max)
        self.entropy_threshold = entropy_threshold
        self.ema_alpha = ema_alpha
        self.ema_accepted = float(num_speculative_tokens)

    def update(self, num_drafted: int, num_accepted: int) -> None:
        self.ema_accepted = self.ema_alpha * num_accepted + (1 - self.ema_alpha) * self.ema_accepted
        # One more than we expect to be accepted, so K can grow while drafts keep landing.
        self.k = min(self.gamma_max, max(self.gamma_min, math.ceil(self.ema_accepted) + 1))

    needs_entropy = True

    def stop_on_entropy(self, entropy: float) -> bool:
        return entropy > self.entropy_threshold


def make_schedule(config: StrategyConfig) -> KSchedule:
    if config.schedule == "constant":
        return ConstantSchedule(config.num_speculative_tokens, config.gamma_min, config.gamma_max)
    if config.schedule == "heuristic":
        return HeuristicSchedule(config.num_speculative_tokens, config.gamma_min, config.gamma_max)
    return EntropySchedule(config.num_speculative_tokens, config.gamma_min, config.gamma_max,
                           config.entropy_threshold, config.ema_alpha)


class DraftGate:
    """Skips drafts that would cost more than they yield.

    A verify forward of k >= 2 tokens costs `cost_ratio` single-token forwards (about 1.7 on a 2-core CPU, about 1
    on a GPU), measured online. A draft pays when the expected accepted count exceeds `cost_ratio - 1` plus what
    drafting itself costs (`extra_cost`, in single target forwards: nothing for n-gram lookups, K draft-model
    forwards for a small model). Expectations are kept per bucket (for n-gram drafters: the length of the matched
    n-gram), as an EMA of accepted counts. A bucket that is being skipped is still probed every `probe_every` skips,
    so it can recover; with `max_probe_every` above it, each probe that does not pay doubles the interval (up to
    that), so a useless drafter costs ever less.
    """

    def __init__(self, prior_accepted: float = 1.0, prior_cost_ratio: float = 1.7, ema_alpha: float = 0.3,
                 probe_every: int = 8, max_probe_every: int | None = None) -> None:
        self.prior_accepted = prior_accepted
        self.ema_alpha = ema_alpha
        self.probe_every = probe_every
        self.max_probe_every = max(probe_every, max_probe_every or probe_every)
        self.probe_interval: dict[int, int] = {}
        self.expected_accepted: dict[int, float] = {}
        self.skips: dict[int, int] = {}
        self.single_forward_time: float | None = None
        self.multi_forward_time: float | None = None
        self.prior_cost_ratio = prior_cost_ratio

    @property
    def cost_ratio(self) -> float:
        if self.single_forward_time and self.multi_forward_time:
            return max(1.0, self.multi_forward_time / self.single_forward_time)
        return self.prior_cost_ratio

    def pays(self, bucket: int, extra_cost: float = 0.0, token_value: float = 1.0) -> bool:
        """token_value: what one accepted token saves, in single target forwards (1: a plain decoding step; more
        when the step drafting replaces does more, e.g. also scores the position with a policy model)."""
        expected = self.expected_accepted.get(bucket, self.prior_accepted)
        return expected * token_value > self.cost_ratio - 1.0 + extra_cost

    def should_draft(self, bucket: int, extra_cost: float = 0.0, token_value: float = 1.0) -> bool:
        if self.pays(bucket, extra_cost, token_value):
            self.probe_interval.pop(bucket, None)
            return True
        self.skips[bucket] = self.skips.get(bucket, 0) + 1
        interval = self.probe_interval.get(bucket, self.probe_every)
        if self.skips[bucket] % interval:
            return False
        self.skips[bucket] = 0
        self.probe_interval[bucket] = min(self.max_probe_every, 2 * interval)  # reset once drafting pays again
        return True

    def record_outcome(self, bucket: int, num_accepted: int) -> None:
        old = self.expected_accepted.get(bucket, self.prior_accepted)
        self.expected_accepted[bucket] = self.ema_alpha * num_accepted + (1 - self.ema_alpha) * old

    @property
    def single_forward_estimate(self) -> float | None:
        """Seconds of a one-token target forward: measured, else a multi-token verify over the prior ratio."""
        if self.single_forward_time:
            return self.single_forward_time
        return self.multi_forward_time / self.prior_cost_ratio if self.multi_forward_time else None

    def record_forward_time(self, num_tokens: int, seconds: float) -> None:
        if num_tokens == 1:
            self.single_forward_time = ema(self.single_forward_time, seconds, self.ema_alpha)
        else:
            self.multi_forward_time = ema(self.multi_forward_time, seconds, self.ema_alpha)


def observe_gate(gate: DraftGate, draft: Draft, num_accepted: int, forward_seconds: float | None) -> None:
    """Feeds one verify step's outcome and cost to the gate (the prefill, with no time given, is skipped)."""
    if forward_seconds is None:
        return
    gate.record_forward_time(draft.tokens.numel() + 1, forward_seconds)
    if draft.tokens.numel() and draft.bucket is not None:
        gate.record_outcome(draft.bucket, num_accepted)


def ema(old: float | None, new: float, alpha: float) -> float:
    """Exponential moving average; the first value starts it."""
    return new if old is None else alpha * new + (1 - alpha) * old
