"""Prompt lookup: draft the continuation of the most recent earlier occurrence of the last n tokens."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..config import StrategyConfig, register_config
from ..schedules import DraftGate, make_schedule, observe_gate
from .base import Draft, RowState, SpeculativeStrategy


@dataclass
class NGramDrafterMixin:
    """Settings shared by the n-gram drafters."""

    skip_unprofitable_drafts: bool = field(
        default=True,
        metadata={"help": "Draft only when the expected accepted count (per match length, learned online) beats the "
                          "measured extra cost of a multi-token verify; keeps prose from running slower than plain."},
    )


def _check_ngram_schedule(config: StrategyConfig) -> None:
    if config.schedule == "entropy":
        raise ValueError("schedule='entropy' needs a drafter with a distribution (DraftModelStrategy); n-gram "
                         "drafters have none. Use 'constant' or 'heuristic' (the cost gate still skips bad drafts).")


@register_config
@dataclass
class NGramConfig(StrategyConfig, NGramDrafterMixin):
    strategy_type = "ngram"

    num_speculative_tokens: int = 10
    max_ngram_size: int = field(default=4, metadata={"help": "Longest suffix to look up; shorter ones are tried next."})
    min_ngram_size: int = field(default=1, metadata={"help": "Shortest suffix that may produce a draft."})

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_ngram_schedule(self)
        if not 1 <= self.min_ngram_size <= self.max_ngram_size:
            raise ValueError(f"Need 1 <= min_ngram_size <= max_ngram_size, got {self.min_ngram_size}, "
                             f"{self.max_ngram_size}.")


def match_suffix(tokens: list[int], ngram_size: int) -> tuple[int, bool] | None:
    """Where the continuation of the latest earlier occurrence of the last `ngram_size` tokens starts, and whether
    every earlier occurrence was followed by the same token (a consistent match is accepted far more often).

    tokens: a host list `[n]` (plain Python: prompt lookup costs microseconds and never reads the device); None when
    the suffix does not occur earlier.
    """
    n = len(tokens)
    if n <= ngram_size:
        return None
    suffix, last = tokens[n - ngram_size:], tokens[-1]
    # continuation starts: i + 1 for every earlier i that ends an occurrence of the suffix (the suffix itself excluded)
    starts = [i + 1 for i in range(ngram_size - 1, n - 1)
              if tokens[i] == last and tokens[i + 1 - ngram_size : i + 1] == suffix]
    if not starts:
        return None
    follower = tokens[starts[-1]]
    return starts[-1], all(tokens[start] == follower for start in starts)


def longest_match(tokens: list[int], max_ngram_size: int, min_ngram_size: int) -> tuple[int, int, bool] | None:
    """`match_suffix` for the longest suffix from `max_ngram_size` down to `min_ngram_size` tokens that occurred
    earlier: (its size, where its continuation starts, consistent), or None."""
    for size in range(max_ngram_size, min_ngram_size - 1, -1):
        match = match_suffix(tokens, size)
        if match is not None:
            return size, *match
    return None


def lookup_draft(strategy: SpeculativeStrategy, row: RowState, input_ids: torch.LongTensor, max_ngram_size: int,
                 min_ngram_size: int, max_tokens: int) -> tuple[torch.LongTensor, int, bool] | None:
    """Prompt lookup over `strategy.lookup_tokens` (an encoder-decoder's source ids, then the output so far): the
    draft `[<= max_tokens]` (a CPU tensor: the engine moves it with the step's other inputs), the matched n-gram's
    size and whether the match is consistent; None without a match. A draft copied from the source stops at the
    source's end."""
    tokens = strategy.lookup_tokens(row, input_ids)
    match = longest_match(tokens, max_ngram_size, min_ngram_size)
    if match is None:
        return None
    size, start, consistent = match
    end = start + max_tokens
    source_length = len(strategy._source_list)
    if start < source_length:
        end = min(end, source_length)
    return torch.tensor(tokens[start:end], dtype=torch.long), size, consistent


# Prompt lookup in front of another drafter (MedusaStrategy, DraftModelStrategy): the longest suffix tried first.
LOOKUP_MAX_NGRAM = NGramConfig.max_ngram_size  # its default, 4


def front_lookup(strategy: SpeculativeStrategy, row: RowState, input_ids: torch.LongTensor, min_ngram: int,
                 max_tokens: int, gate: DraftGate | None = None) -> Draft | None:
    """Prompt lookup in front of another drafter (a draft model, Medusa heads, an EAGLE drafter): the continuation
    of the longest suffix (4 down to `min_ngram` tokens) that occurred earlier, or None when lookup is off
    (`min_ngram` 0), nothing matches or `gate` says this kind of match does not pay. Its gate bucket (1 + 2 * n-gram
    size + consistent) is learnt apart from the drafter's own drafts (bucket 0)."""
    if not min_ngram:
        return None
    found = lookup_draft(strategy, row, input_ids, LOOKUP_MAX_NGRAM, min_ngram, max_tokens)
    if found is None:
        return None
    tokens, size, consistent = found
    bucket = 1 + 2 * size + consistent
    if gate is not None and not gate.should_draft(bucket):
        return None
    return Draft(tokens, bucket=bucket)


def check_lookup_min_ngram(value: int) -> None:
    """`lookup_min_ngram` of a strategy with prompt lookup in front: 0 (off) or a suffix length 1..4."""
    if not 0 <= value <= LOOKUP_MAX_NGRAM:
        raise ValueError(f"lookup_min_ngram must be in [0, {LOOKUP_MAX_NGRAM}] (0 turns lookup off), got {value}.")


class GatedRow(RowState):
    """A row of an n-gram drafter: its K schedule and its cost gate."""

    def __init__(self, schedule, gate: DraftGate) -> None:
        super().__init__(schedule)
        self.gate = gate


class NGramStrategy(SpeculativeStrategy):
    """Prompt lookup decoding (Saxena 2023): no draft model, drafts copied from the prompt and output so far.

    Deterministic drafts are verified as a point mass, so sampling stays lossless.
    """

    config_class = NGramConfig

    def new_row(self) -> GatedRow:
        return GatedRow(make_schedule(self.config), DraftGate())

    def propose_row(self, row: GatedRow, input_ids: torch.LongTensor, max_tokens: int) -> Draft:
        found = lookup_draft(self, row, input_ids, self.config.max_ngram_size, self.config.min_ngram_size, max_tokens)
        if found is None:
            return Draft.empty()
        tokens, size, consistent = found
        bucket = 2 * size + consistent  # the gate learns per (match length, consistency)
        if self.config.skip_unprofitable_drafts and not row.gate.should_draft(bucket):
            return Draft(tokens[:0], bucket=bucket)
        return Draft(tokens, bucket=bucket)

    def observe_row(self, row, input_ids, draft, num_accepted, target_scores, forward_seconds, hidden_states=None):
        super().observe_row(row, input_ids, draft, num_accepted, target_scores, forward_seconds, hidden_states)
        observe_gate(row.gate, draft, num_accepted, forward_seconds)
