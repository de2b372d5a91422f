"""How wide a batch's verify is, and whether a batch drafts at all: both chosen from measured costs.

A batch of one skips both (its strategy's own cost gate decides); in a batch, plain batched decoding already turns
spare bandwidth into throughput, so a wide verify must earn its extra rows (see ../shared/MODELS.md's cost table).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .drafts import RowDraft
    from .run import Row


class VerifyCosts:
    """Seconds of a batched verify forward of 1 + W tokens per row, measured online (EMA per width); unmeasured widths
    are interpolated as cost(0) * (1 + slope * W), the slope learnt from what was measured (prior from the CPU cost
    table in ../shared/MODELS.md: a 5-token verify costs ~1.8x a step at B = 4)."""

    def __init__(self, batch_size: int, ema_alpha: float = 0.3, base_every: int = 32) -> None:
        self.seconds: dict[int, float] = {}
        self.slope = 0.04 * batch_size
        self.ema_alpha = ema_alpha
        # Steps since a plain (width 0) verify was last timed. Wider verifies are only worth what they cost relative
        # to a plain step, so a plain step is timed first and again every `base_every` steps (the context grows).
        self.base_every, self.since_base = base_every, 0

    def needs_base(self) -> bool:
        """True when a plain step should be timed now: wider ones were timed, and plain never or long ago."""
        return bool(self.seconds) and (0 not in self.seconds or self.since_base >= self.base_every)

    def record(self, width: int, seconds: float) -> None:
        self.since_base = 0 if width == 0 else self.since_base + 1
        old = self.seconds.get(width)
        self.seconds[width] = seconds if old is None else self.ema_alpha * seconds + (1 - self.ema_alpha) * old
        base = self.seconds.get(0)
        if width and base:
            slope = max(0.0, (self.seconds[width] / base - 1) / width)
            self.slope = self.ema_alpha * slope + (1 - self.ema_alpha) * self.slope

    def estimate(self, width: int) -> float:
        if width in self.seconds:
            return self.seconds[width]
        base = self.seconds.get(0)
        if base is None:  # from any measured width; before any, relative units (only ratios are compared)
            base = next((t / (1 + self.slope * w) for w, t in self.seconds.items()), 1.0)
        return base * (1 + self.slope * width)


class BatchDraftGate:
    """Whether the batch drafts this step at all. Rows draft one after another, so at a large batch their drafting
    (a draft model's forwards, Medusa heads' vocabulary projections) can cost more than a batched decode step gains:
    tokens per second of drafting steps and of plain steps are both measured (EMA), the better mode is used and the
    other probed every `probe_every` steps, half as often each time it loses again (up to `max_probe_every`)."""

    def __init__(self, probe_every: int = 8, max_probe_every: int = 64, ema_alpha: float = 0.3) -> None:
        self.rate: dict[bool, float | None] = {True: None, False: None}
        self.probe_every, self.max_probe_every, self.ema_alpha = probe_every, max_probe_every, ema_alpha
        self.interval, self.steps, self.best = probe_every, 0, True

    def should_draft(self) -> bool:
        if self.rate[True] is None or self.rate[False] is None:  # measure drafting first, then plain once
            return self.rate[True] is None
        best = self.rate[True] >= self.rate[False]
        if best != self.best:
            self.best, self.interval, self.steps = best, self.probe_every, 0
        self.steps += 1
        if self.steps % self.interval:
            return best
        self.steps, self.interval = 0, min(self.max_probe_every, 2 * self.interval)
        return not best

    def record(self, drafted: bool, tokens: int, seconds: float) -> None:
        rate, old = tokens / max(seconds, 1e-9), self.rate[drafted]
        self.rate[drafted] = rate if old is None else self.ema_alpha * rate + (1 - self.ema_alpha) * old


def expected_accepted(acceptance: float, nodes: int) -> float:
    """Expected accepted tokens of a chain of `nodes` drafted tokens, each accepted with `acceptance` given the
    previous ones."""
    return sum(acceptance ** i for i in range(1, nodes + 1))


CUT_WIDTHS = (1, 2, 3, 4, 6, 8)  # widths tried besides the drafts' own sizes: a long draft cut short often pays


# A wider verify must promise this much more than a plain step: costs are measured on a noisy machine and the
# acceptance is an estimate, and a wrong "draft" costs a whole wide forward while a wrong "plain" costs little.
WIDER_MARGIN = 1.1


def choose_width(rows: list["Row"], drafts: list["RowDraft | None"], costs: VerifyCosts) -> int:
    """The verify width W (draft nodes per row) with the most expected tokens per second, if that beats a plain step
    by `WIDER_MARGIN`, else 0; rows' drafts longer than W are cut to W. Candidates: 0, every row's draft size and
    the `CUT_WIDTHS` below the largest."""
    sizes = {d.num_nodes for d in drafts if d is not None}
    largest = max(sizes, default=0)
    if largest and costs.needs_base():
        return 0
    sizes = sorted({0} | sizes | {w for w in CUT_WIDTHS if w < largest})
    best, best_rate = 0, -1.0
    for width in sizes:
        tokens = sum(1 + expected_accepted(row.acceptance, min(width, d.num_nodes))
                     for row, d in zip(rows, drafts) if d is not None)
        rate = tokens / costs.estimate(width) / (WIDER_MARGIN if width else 1.0)
        if rate > best_rate:
            best, best_rate = width, rate
    return best
