"""EAGLE-3: a one-layer drafter that runs autoregressively over the target's features (see `eagle_drafter.py`).

The features come from the verify forward the loop already runs (`observe` gets the hidden states of the drafter's
auxiliary target layers at the emitted tokens, `hidden_state_layers`), so drafting adds no target forward: each step commits the new (feature, token) pairs to the
drafter's own KV cache, then drafts a chain, or an EAGLE-2 dynamic tree shaped by the drafter's own probabilities,
which the target verifies in one forward (the tree machinery Medusa uses). Drafted positions never stay in the
drafter's cache: after the verify, the accepted ones come back with the target's real features.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import StrategyConfig, register_config
from ..schedules import make_schedule
from ..kernels.cpu_speedups import is_cpu_optimized, optimize_for_cpu
from ..drafters.eagle_drafter import DrafterCache, EagleDrafter, packed_cache
from ..tree import DynamicTreeGrowth, TreeDraft, tree_chain_nodes
from .base import Draft, RowState, SpeculativeStrategy
from .ngram import check_lookup_min_ngram, front_lookup


@register_config
@dataclass
class EagleConfig(StrategyConfig):
    strategy_type = "eagle"

    # Defaults: the fastest lossless EAGLE setting measured on the committed drafter (docs/eagle.md, held-out
    # prompts): prompt lookup in front of a top-1 chain, 3 deep (trees accept more but cost more per step on a CPU).
    num_speculative_tokens: int = field(
        default=10, metadata={"help": "Longest draft: the longest prompt-lookup draft when `lookup_min_ngram` is on, "
                                      "and a cap on `depth`."})
    depth: int = field(
        default=3, metadata={"help": "Drafter steps per target step: the chain's length or the tree's depth. Each "
                                     "step is one drafter forward (of `tree_width` tokens in a tree)."})
    tree: str | None = field(
        default=None,
        metadata={"help": "'dynamic': an EAGLE-2 tree shaped every step by the drafter's probabilities "
                          "(`tree_nodes` nodes, all verified in one target forward); None: a single top-1 chain."},
    )
    tree_nodes: int = field(
        default=8, metadata={"help": "tree='dynamic': nodes per step (the verify forward reads this many + 1)."})
    tree_width: int = field(
        default=2, metadata={"help": "tree='dynamic': nodes expanded per depth (one drafter forward of this many "
                                     "tokens each), and children tried per expanded node."})
    lookup_min_ngram: int = field(
        default=2,
        metadata={"help": "0: the drafter drafts every step. n in 1..4: first look the last 4, 3, ..., n tokens up "
                          "in the text so far (prompt lookup); on a match draft its continuation as a chain, else "
                          "ask the drafter."},
    )
    skip_unprofitable_drafts: bool = field(
        default=True,
        metadata={"help": "In a batch: draft only while drafting steps yield more tokens per second than plain "
                          "steps (both measured). A batch of one always drafts."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_lookup_min_ngram(self.lookup_min_ngram)
        if self.schedule == "entropy":
            raise ValueError("schedule='entropy' is not supported by EagleStrategy; use 'constant' or 'heuristic'.")
        if self.tree not in (None, "dynamic"):
            raise ValueError(f"EagleStrategy's tree must be 'dynamic' or None (a chain), got {self.tree!r}.")
        for name in ("depth", "tree_nodes", "tree_width"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}.")


class DrafterRow(RowState):
    """An EAGLE row: the drafter's own KV cache over the committed (feature, token) pairs, its output at the last
    one, and the target position of the next pair to commit."""

    def __init__(self, schedule) -> None:
        super().__init__(schedule)
        self.reset()

    def reset(self) -> None:
        self.cache, self.last, self.next_position = DrafterCache(), None, 0


class EagleStrategy(SpeculativeStrategy):
    """An EAGLE drafter as the drafter: `EagleStrategy(EagleDrafter.from_pretrained(folder))`.

    Greedy decoding equals plain `generate`; sampling is verified losslessly (the drafter's tokens are point-mass
    candidates: speculative sampling for a chain, recursive rejection sampling over a tree); `verification=
    "typical"` is the LOSSY typical acceptance. `tree=None` drafts a chain; `lookup_min_ngram=2` puts prompt lookup
    in front.
    """

    config_class = EagleConfig
    heads_class = EagleDrafter  # what the eval suite's `heads:` folder holds
    needs_hidden_states = True
    supports_encoder_decoder = False  # the drafter reads a decoder-only target's last hidden states

    def __init__(self, drafter: EagleDrafter, config: EagleConfig | None = None, **overrides) -> None:
        super().__init__(config, **overrides)
        if not isinstance(drafter, EagleDrafter):
            raise TypeError(f"drafter must be an EagleDrafter (EagleDrafter.from_pretrained(...)), got "
                            f"{type(drafter).__name__}.")
        self.drafter = drafter.eval()

    @property
    def hidden_state_layers(self) -> list[int]:
        return list(self.drafter.config.aux_layer_ids)

    def new_row(self) -> DrafterRow:
        return DrafterRow(make_schedule(self.config))

    def save_components(self, directory: Path) -> None:
        self.drafter.save_pretrained(directory, dtype=torch.bfloat16)  # the folder is a drafter folder too

    @classmethod
    def load_components(cls, directory: Path) -> tuple[EagleDrafter]:
        return (EagleDrafter.from_pretrained(directory),)

    def begin(self, target, input_ids, generation_config, logits_processor) -> None:
        super().begin(target, input_ids, generation_config, logits_processor)
        self.drafter.to(device=target.device)  # loaded on the CPU; it reads the target's states where they are
        self.drafter.attach_target(target)
        if is_cpu_optimized(target) and not is_cpu_optimized(self.drafter):
            optimize_for_cpu(self.drafter)  # the drafter's own linears get the same skinny-input kernels

    def end(self) -> None:
        for row in self.rows:
            row.last = None  # the cache stays until the next call (tests read it)

    @torch.no_grad()
    def observe_rows(self, outcomes) -> None:
        """Commits this step's pairs (the target's feature at each emitted row, the token it produced) to each row's
        drafter cache, every row in one drafter forward; its output at a row's last pair drafts its next step."""
        pending = []
        for outcome in outcomes:
            row = self.rows[outcome.row]
            SpeculativeStrategy.observe_row(self, row, outcome.input_ids, outcome.draft, outcome.num_accepted,
                                            outcome.target_scores, outcome.forward_seconds)
            pending += self._new_pairs(row, outcome.input_ids, outcome.hidden_states)
        if pending:
            self._commit(pending)

    def observe_row(self, row, input_ids, draft, num_accepted, target_scores, forward_seconds, hidden_states=None):
        super().observe_row(row, input_ids, draft, num_accepted, target_scores, forward_seconds, hidden_states)
        pending = self._new_pairs(row, input_ids, hidden_states)
        if pending:
            with torch.no_grad():
                self._commit(pending)

    @torch.no_grad()
    def _new_pairs(self, row: DrafterRow, input_ids: torch.LongTensor, hidden_states: torch.Tensor | None) -> list:
        """[(row, features `[m, H]`, tokens `[m]`, first position)] for the pairs a step adds, or []."""
        if hidden_states is None or hidden_states.shape[0] == 0:
            return []
        count = hidden_states.shape[0]
        first = input_ids.shape[1] - 1 - count  # target position of the first row
        if first != row.next_position:  # e.g. a prefilled cache left early prompt rows out: start afresh here
            row.reset()
            row.next_position = first
        features = self.drafter.project(hidden_states)  # [m, H]: EAGLE-3's fused features of the committed pairs
        return [(row, features, input_ids[0, -count:], first)]

    def _commit(self, pending: list) -> None:
        """One drafter forward over every row's new pairs, each seeing its own row's cache and earlier new pairs;
        the new keys/values go back to each row's cache."""
        rows = [row for row, *_ in pending]
        counts = [features.shape[0] for _, features, _, _ in pending]
        cache, starts = packed_cache([row.cache for row in rows])
        past, total = len(cache), sum(counts)
        device = pending[0][1].device
        positions = torch.cat([torch.arange(first, first + count, device=device)
                               for (_, _, _, first), count in zip(pending, counts)])
        mask = None
        if len(rows) > 1:
            mask = torch.zeros(total, past + total, dtype=torch.bool)
            offset = 0
            for row, start, count in zip(rows, starts, counts):
                block = slice(offset, offset + count)
                mask[block, start:start + len(row.cache)] = True
                mask[block, past + offset:past + offset + count] = torch.ones(count, count, dtype=torch.bool).tril()
                offset += count
            mask = mask.to(device)
        out = self.drafter.step(torch.cat([features for _, features, _, _ in pending]),
                                torch.cat([tokens for _, _, tokens, _ in pending]), positions, cache, mask)
        offset = 0
        for row, count, (_, _, _, first) in zip(rows, counts, pending):
            if len(rows) > 1:
                row.cache.append(cache.keys[..., past + offset:past + offset + count, :],
                                 cache.values[..., past + offset:past + offset + count, :])
            offset += count
            row.last, row.next_position = out[offset - 1], first + count

    def propose_rows(self, requests: list[tuple[int, torch.LongTensor, int]]) -> list[Draft]:
        return self._draft([(self.rows[index], input_ids, max_tokens) for index, input_ids, max_tokens in requests])

    def propose_row(self, row: DrafterRow, input_ids: torch.LongTensor, max_tokens: int) -> Draft:
        return self._draft([(row, input_ids, max_tokens)])[0]

    @torch.no_grad()
    def _draft(self, requests: list[tuple[DrafterRow, torch.LongTensor, int]]) -> list[Draft]:
        """Prompt lookup first per row; the rows it leaves grow their trees (or chains) together: one drafter
        forward per depth for all of them."""
        chain = self.config.tree is None
        drafts, growing = [], []
        for row, input_ids, max_tokens in requests:
            draft = front_lookup(self, row, input_ids, self.config.lookup_min_ngram, max_tokens)
            depth = min(max_tokens, self.config.num_speculative_tokens, self.config.depth)
            # Drafting needs the drafter to be at this sequence's end (not so when called by Transformers' own loop).
            if draft is None and (row.last is None or depth < 1 or row.next_position != input_ids.shape[1] - 1):
                draft = Draft.empty(input_ids.device)
            if draft is None:
                growth = DynamicTreeGrowth(depth, depth if chain else self.config.tree_nodes,
                                           1 if chain else self.config.tree_width)
                growing.append((len(drafts), row, growth))
            drafts.append(draft)
        if growing:
            self._grow([row for _, row, _ in growing], [growth for _, _, growth in growing])
        for slot, _, growth in growing:
            tree, tokens, _ = growth.result()
            top = tokens[tree_chain_nodes(tree)]
            drafts[slot] = Draft(top) if chain else Draft(top, tree=TreeDraft(tree, tokens))
        return drafts

    def _grow(self, rows: list[DrafterRow], growths: list[DynamicTreeGrowth]) -> None:
        """Grows every row's tree depth by depth over one packed drafter cache (see `eagle_drafter.packed_cache`);
        drafted positions never stay in a row's cache."""
        cache, starts = packed_cache([row.cache for row in rows])
        committed = [len(row.cache) for row in rows]
        states = [{(): row.last} for row in rows]  # per row: token path -> the drafter's output after it
        slots: list[dict] = [{(): []} for _ in rows]  # per row: token path -> cache slots of its drafted positions
        try:
            for k in range(max(growth.depth for growth in growths)):
                queries = [(i, path) for i, growth in enumerate(growths) if not growth.done for path in growth.paths()]
                if k > 0:
                    self._run_paths(cache, queries, rows, starts, committed, states, slots, k)
                tokens, probs = self._top_children([states[i][path] for i, path in queries], growths[0].width)
                for i, growth in enumerate(growths):
                    picked = [q for q, (owner, _) in enumerate(queries) if owner == i]
                    if picked:
                        growth.grow([tokens[q] for q in picked], [probs[q] for q in picked])
        finally:
            if len(rows) == 1:
                rows[0].cache.crop(committed[0])

    def _run_paths(self, cache, queries, rows, starts, committed, states, slots, k: int) -> None:
        """Runs each queried path's last token through the drafter in one forward, on top of its own row's committed
        slots and its drafted ancestors (a mask over the packed cache)."""
        past, count = len(cache), len(queries)
        mask = torch.zeros(count, past + count, dtype=torch.bool)
        for q, (i, path) in enumerate(queries):
            mask[q, starts[i]:starts[i] + committed[i]] = True
            mask[q, slots[i][path[:-1]]] = True
            mask[q, past + q] = True
        device = rows[0].last.device
        out = self.drafter.step(torch.stack([states[i][path[:-1]] for i, path in queries]),
                                torch.tensor([path[-1] for _, path in queries], device=device),
                                torch.tensor([rows[i].next_position + k - 1 for i, _ in queries], device=device),
                                cache, mask.to(device))
        for q, (i, path) in enumerate(queries):
            states[i][path], slots[i][path] = out[q], [*slots[i][path[:-1]], past + q]

    def _top_children(self, states: list[torch.Tensor], width: int) -> tuple[list[list[int]], list[list[float]]]:
        """The drafter's top-`width` tokens and probabilities after each state, read in one transfer."""
        logits, vocab = self.drafter.draft_logits(torch.stack(states))
        top = logits.softmax(dim=-1).topk(width, dim=-1)  # [P, width]
        ids = top.indices if vocab is None else vocab[top.indices]
        # Token ids are exact in float32 (< 2**24), so ids and probabilities come back together.
        both = torch.cat([ids.to(top.values.dtype), top.values], dim=-1).tolist()
        return [[int(t) for t in row[:width]] for row in both], [row[width:] for row in both]
