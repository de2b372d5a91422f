"""Per-call statistics and per-step events, filled by the decoding loop."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class StepEvent:
    """One target forward: what was drafted, how much was accepted, and the tokens appended to the output.

    `emitted` is `drafted[:num_accepted]` plus the target's own token (a correction, or the bonus token when all
    were accepted), possibly cut short by a stopping criterion.
    """

    drafted: tuple[int, ...]
    num_accepted: int
    emitted: tuple[int, ...]

    @property
    def corrected(self) -> bool:
        """True when the target rejected a drafted token and put its own token there."""
        return self.num_accepted < len(self.drafted)


@dataclass
class GenerationStats:
    """Counters for one `generate` call. Times are wall-clock seconds."""

    lossless: bool = True
    new_tokens: int = 0
    target_forwards: int = 0  # prefill included
    verify_steps: int = 0  # target forwards after the prefill
    drafting_steps: int = 0  # verify steps that checked at least one drafted token
    drafted: int = 0
    accepted: int = 0
    draft_time: float = 0.0
    verify_time: float = 0.0
    prefill_time: float = 0.0
    total_time: float = 0.0
    accepted_lengths: list[int] = field(default_factory=list)  # tokens emitted per verify step
    mean_alpha: float | None = None  # GeometricMixture: mean alpha* (the draft's weight) over the emitted tokens
    rows: list[GenerationStats] | None = None  # a batch: each row's own figures (these fields are their totals)

    @property
    def acceptance_rate(self) -> float:
        """Accepted drafted tokens / drafted tokens."""
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """Tokens emitted per verify forward, the bonus/correction token included (1.0 = plain decoding)."""
        return sum(self.accepted_lengths) / len(self.accepted_lengths) if self.accepted_lengths else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.total_time if self.total_time > 0 else 0.0

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(
            acceptance_rate=self.acceptance_rate,
            mean_accepted_length=self.mean_accepted_length,
            tokens_per_second=self.tokens_per_second,
        )
        return data
