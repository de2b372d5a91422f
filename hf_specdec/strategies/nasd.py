"""NASD: n-gram assisted speculative decoding with a learned n-gram store.

The store counts which token followed each context of length 1..n-1 (n-gram orders 2..n) in the prompt and the
output, and is also fed the target's top-k predictions at every verified position (`top_k_filler`), so it learns
what the target would say in contexts that have not been written yet.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from ..config import StrategyConfig, register_config
from ..schedules import DraftGate, make_schedule, observe_gate
from .base import Draft, SpeculativeStrategy
from .ngram import GatedRow, NGramDrafterMixin, _check_ngram_schedule

STORAGES = ("basic", "onelevel")


@register_config
@dataclass
class NASDConfig(StrategyConfig, NGramDrafterMixin):
    strategy_type = "nasd"

    num_speculative_tokens: int = 10
    ngram_size: int = field(default=3, metadata={"help": "n: the store keeps n-grams of orders 2..n ('basic') or n only."})
    storage: str = field(default="basic", metadata={"help": f"One of {STORAGES}: multi-level with back-off, or one level."})
    top_k_filler: int = field(default=3, metadata={"help": "Target top-k tokens added to the store per verified position (1 = none)."})
    reset_between_calls: bool = field(default=True, metadata={"help": "Start every generate call with an empty store."})

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_ngram_schedule(self)
        if self.ngram_size < 2:
            raise ValueError(f"ngram_size must be >= 2, got {self.ngram_size}.")
        if self.storage not in STORAGES:
            raise ValueError(f"storage must be one of {STORAGES}, got {self.storage!r}.")
        if self.top_k_filler < 1:
            raise ValueError(f"top_k_filler must be >= 1, got {self.top_k_filler}.")


class NGramStore:
    """Next-token counts per context. 'basic' keeps contexts of length 1..n-1 and backs off from the longest;
    'onelevel' keeps only length n-1."""

    def __init__(self, ngram_size: int, storage: str = "basic") -> None:
        self.context_lengths = list(range(ngram_size - 1, 0, -1)) if storage == "basic" else [ngram_size - 1]
        self.counts: dict[tuple[int, ...], dict[int, int]] = defaultdict(dict)
        self.best: dict[tuple[int, ...], int] = {}

    def add(self, history: Sequence[int], next_tokens: Iterable[int]) -> None:
        """Counts each of `next_tokens` as following `history` (only its last n-1 tokens matter)."""
        for length in self.context_lengths:
            if len(history) < length:
                continue
            context = tuple(history[len(history) - length :])
            counts = self.counts[context]
            for token in next_tokens:
                counts[token] = counts.get(token, 0) + 1
                best = self.best.get(context)
                if best is None or counts[token] > counts[best]:
                    self.best[context] = token

    def add_sequence(self, tokens: Sequence[int], start: int = 1) -> None:
        """Counts every token of `tokens[start:]` after its own history."""
        for i in range(max(start, 1), len(tokens)):
            self.add(tokens[:i], (tokens[i],))

    def predict(self, history: Sequence[int]) -> tuple[int, int] | None:
        """(most frequent next token, matched context length) for the longest known context, or None."""
        for length in self.context_lengths:
            if len(history) >= length:
                token = self.best.get(tuple(history[len(history) - length :]))
                if token is not None:
                    return token, length
        return None

    def __len__(self) -> int:
        return len(self.best)


class NASDRow(GatedRow):
    """A NASD row: its schedule, gate and n-gram store, and how much of its sequence the store has counted."""

    def __init__(self, schedule, gate: DraftGate, store: NGramStore) -> None:
        super().__init__(schedule, gate)
        self.store = store
        self.indexed = 0


class NASDStrategy(SpeculativeStrategy):
    """Drafts by walking the n-gram store greedily for up to K tokens."""

    config_class = NASDConfig

    def __init__(self, config: NASDConfig | None = None, **overrides) -> None:
        super().__init__(config, **overrides)
        self.store = self._new_store()  # kept across calls (and shared by a batch's rows) with reset_between_calls=False

    def _new_store(self) -> NGramStore:
        return NGramStore(self.config.ngram_size, self.config.storage)

    def new_row(self) -> NASDRow:
        store = self._new_store() if self.config.reset_between_calls else self.store
        return NASDRow(make_schedule(self.config), DraftGate(), store)

    def start_row(self, input_ids: torch.LongTensor) -> NASDRow:
        row = self.new_row()
        if self._source_list:  # an encoder-decoder's source: its n-grams are drafts too
            row.store.add_sequence(self._source_list)
        row.store.add_sequence(input_ids[0].tolist())
        row.indexed = input_ids.shape[1]
        return row

    def begin(self, target, input_ids, generation_config, logits_processor) -> None:
        super().begin(target, input_ids, generation_config, logits_processor)
        self.store = self.rows[0].store  # the latest call's (row 0's) store, for inspection

    def propose_row(self, row: NASDRow, input_ids: torch.LongTensor, max_tokens: int) -> Draft:
        history = row.token_list(input_ids)
        drafted: list[int] = []
        bucket = None
        for _ in range(max_tokens):
            prediction = row.store.predict(history + drafted)
            if prediction is None:
                break
            drafted.append(prediction[0])
            bucket = prediction[1] if bucket is None else bucket
        if drafted and self.config.skip_unprofitable_drafts and not row.gate.should_draft(bucket):
            drafted = []
        return Draft(torch.tensor(drafted, dtype=torch.long), bucket=bucket)  # a CPU tensor: the engine moves it

    def observe_row(self, row, input_ids, draft, num_accepted, target_scores, forward_seconds, hidden_states=None):
        super().observe_row(row, input_ids, draft, num_accepted, target_scores, forward_seconds, hidden_states)
        observe_gate(row.gate, draft, num_accepted, forward_seconds)
        tokens = row.token_list(input_ids)
        row.store.add_sequence(tokens, start=row.indexed)
        row.indexed = len(tokens)
        if self.config.top_k_filler > 1:
            first_scored = len(tokens) - target_scores.shape[0]  # row i scored the token at first_scored + i
            top_k = target_scores.topk(self.config.top_k_filler, dim=-1).indices.tolist()
            for i, candidates in enumerate(top_k):
                row.store.add(tokens[: first_scored + i], candidates)
