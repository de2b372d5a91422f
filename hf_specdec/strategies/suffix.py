"""Suffix drafting (after SuffixDecoding, Oliaro et al. 2024): every earlier occurrence of the longest matching
suffix of the text votes for its continuation; the continuations form a trie whose most frequent paths are drafted
as a tree, more nodes the longer the match. Optionally, earlier calls' texts (prompt and output) are searched too:
a cache of whole sequences, bounded in tokens and evicted least recently used, kept by the strategy object.

The index is an n-gram hash (every n-gram of 1..`max_match` tokens -> the positions after it), grown by the
engine's host tokens as they come: a few dict inserts per emitted token, no device reads.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from ..config import StrategyConfig, register_config
from ..schedules import DraftGate, make_schedule, observe_gate
from ..tree import TreeDraft, build_tree, tree_chain_nodes
from .base import Draft, RowState, SpeculativeStrategy
from .ngram import NGramDrafterMixin, _check_ngram_schedule


@register_config
@dataclass
class SuffixConfig(StrategyConfig, NGramDrafterMixin):
    strategy_type = "suffix"

    num_speculative_tokens: int = field(default=8, metadata={"help": "Deepest draft."})
    max_match: int = field(default=8, metadata={"help": "Longest suffix searched (tokens)."})
    max_nodes: int = field(default=8, metadata={"help": "Most tree nodes per draft (a verify reads this many + 1)."})
    nodes_per_match_token: float = field(
        default=1.0, metadata={"help": "Tree size = this x the matched suffix's length, capped by max_nodes "
                                       "(a long match is trusted with a bigger tree)."})
    max_occurrences: int = field(default=32, metadata={"help": "Most recent occurrences of the suffix that vote."})
    cross_request_cache: bool = field(
        default=False, metadata={"help": "Also search earlier calls' texts (prompt + output) of this strategy object."})
    cache_max_tokens: int = field(
        default=200_000, metadata={"help": "Cross-request cache bound in tokens; least recently used texts go first."})

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_ngram_schedule(self)
        for name in ("num_speculative_tokens", "max_match", "max_nodes", "max_occurrences", "cache_max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.nodes_per_match_token <= 0:
            raise ValueError(f"nodes_per_match_token must be > 0, got {self.nodes_per_match_token}.")


class SuffixIndex:
    """Every n-gram (1..`max_match` tokens) of a growing token list -> the positions right after its occurrences."""

    def __init__(self, max_match: int) -> None:
        self.max_match = max_match
        self.tokens: list[int] = []
        self.after: dict[tuple[int, ...], list[int]] = {}

    def extend(self, tokens: list[int]) -> None:
        """Appends `tokens[len(self.tokens):]` (the caller passes the whole, grown sequence)."""
        own = self.tokens
        for i in range(len(own), len(tokens)):
            own.append(tokens[i])
            for n in range(1, min(self.max_match, i + 1) + 1):
                self.after.setdefault(tuple(own[i + 1 - n : i + 1]), []).append(i + 1)

    def continuations(self, key: tuple[int, ...], depth: int, limit: int, end: int | None = None) -> list[list[int]]:
        """The (at most `limit` latest) continuations of `key`, `depth` tokens or fewer, that start before `end`."""
        found = []
        for start in reversed(self.after.get(key, ())):
            if end is not None and start >= end:
                continue
            if start < len(self.tokens):
                found.append(self.tokens[start : start + depth])
                if len(found) == limit:
                    break
        return found


class SuffixRow(RowState):
    def __init__(self, schedule, gate: DraftGate, index: SuffixIndex) -> None:
        super().__init__(schedule)
        self.gate = gate
        self.index = index


def frequency_tree(continuations: list[list[int]], size: int) -> tuple[list[tuple[int, ...]], list[int]]:
    """The `size` trie nodes most continuations pass through (a count never exceeds its parent's, so the chosen set
    is a tree), as rank paths (rank = order among siblings by count) and their tokens, in `build_tree`'s order."""
    counts: dict[tuple[int, ...], int] = {}
    for tokens in continuations:
        for d in range(1, len(tokens) + 1):
            counts[tuple(tokens[:d])] = counts.get(tuple(tokens[:d]), 0) + 1
    chosen = sorted(counts, key=lambda p: (-counts[p], len(p)))[:size]
    chosen_set = set(chosen)
    chosen = [p for p in chosen if all(p[:d] in chosen_set for d in range(1, len(p)))]
    siblings: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
    for path in sorted(chosen, key=lambda p: -counts[p]):
        siblings.setdefault(path[:-1], []).append(path)
    rank_path: dict[tuple[int, ...], tuple[int, ...]] = {}
    for path in sorted(chosen, key=len):  # parents first
        rank_path[path] = rank_path.get(path[:-1], ()) + (siblings[path[:-1]].index(path),)
    order = sorted(chosen, key=lambda p: (len(p), rank_path[p]))
    return [rank_path[p] for p in order], [p[-1] for p in order]


class SuffixStrategy(SpeculativeStrategy):
    """Suffix drafting: the longest suffix of the text (up to `max_match` tokens) that occurred before, in this
    row's prompt and output or (`cross_request_cache=True`) in earlier calls' texts; its continuations, weighted by
    how often they occurred, drafted as a tree. Deterministic drafts: greedy output equals plain `generate`, sampling
    stays lossless."""

    config_class = SuffixConfig

    def __init__(self, config: SuffixConfig | None = None, **overrides) -> None:
        super().__init__(config, **overrides)
        self.cache: OrderedDict[int, SuffixIndex] = OrderedDict()  # earlier texts, least recently used first
        self.cache_tokens = 0
        self._next_id = 0

    def new_row(self) -> SuffixRow:
        return SuffixRow(make_schedule(self.config), DraftGate(), SuffixIndex(self.config.max_match))

    def start_row(self, input_ids: torch.LongTensor) -> SuffixRow:
        row = self.new_row()
        row.index.extend(self._source_list + input_ids[0].tolist())
        return row

    def observe_row(self, row, input_ids, draft, num_accepted, target_scores, forward_seconds, hidden_states=None):
        super().observe_row(row, input_ids, draft, num_accepted, target_scores, forward_seconds, hidden_states)
        observe_gate(row.gate, draft, num_accepted, forward_seconds)
        row.index.extend(self.lookup_tokens(row, input_ids))

    def end(self) -> None:
        """Earlier texts for the next calls: each row's whole text enters the cache, the least recently used go."""
        if not self.config.cross_request_cache:
            return
        for row in self.rows:
            if len(row.index.tokens) > self.config.cache_max_tokens:
                continue
            self.cache[self._next_id] = row.index
            self._next_id += 1
            self.cache_tokens += len(row.index.tokens)
        while self.cache_tokens > self.config.cache_max_tokens:
            _, evicted = self.cache.popitem(last=False)
            self.cache_tokens -= len(evicted.tokens)

    def propose_row(self, row: SuffixRow, input_ids: torch.LongTensor, max_tokens: int) -> Draft:
        tokens = row.index.tokens  # kept equal to lookup_tokens by observe_row
        depth = min(max_tokens, self.config.num_speculative_tokens)
        if depth < 1 or not tokens:
            return Draft.empty()
        found, match = self._continuations(row.index, depth)
        if not found:
            return Draft.empty()
        size = min(self.config.max_nodes, max(1, math.ceil(self.config.nodes_per_match_token * match)))
        paths, node_tokens = frequency_tree(found, size)
        bucket = min(match, 4)  # the gate learns per match length
        gate = row.gate if self.config.skip_unprofitable_drafts else None
        if gate is not None and not gate.should_draft(bucket):
            return Draft(torch.empty(0, dtype=torch.long), bucket=bucket)
        tree = build_tree(paths)
        chain = tree_chain_nodes(tree)
        values = torch.tensor(node_tokens, dtype=torch.long)
        if len(chain) == tree.num_nodes:
            return Draft(values, bucket=bucket)
        return Draft(values[chain], bucket=bucket, tree=TreeDraft(tree, values))

    def _continuations(self, own: SuffixIndex, depth: int) -> tuple[list[list[int]], int]:
        """Continuations of the longest suffix of `own`'s text found earlier in it (its own end excluded) or in the
        cache, and the suffix's length; cached texts that matched become the most recently used."""
        tokens, limit = own.tokens, self.config.max_occurrences
        for n in range(min(self.config.max_match, len(tokens) - 1), 0, -1):
            key = tuple(tokens[-n:])
            found = own.continuations(key, depth, limit, end=len(tokens))
            used = []
            for seq_id, index in reversed(self.cache.items()):
                if len(found) >= limit:
                    break
                more = index.continuations(key, depth, limit - len(found))
                if more:
                    found += more
                    used.append(seq_id)
            for seq_id in used:
                self.cache.move_to_end(seq_id)
            if found:
                return found, n
        return [], 0
