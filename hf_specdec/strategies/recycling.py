"""Token recycling (Luo et al. 2024): a `[V, k]` table of the target's own top-k next tokens, refreshed from every
verify forward's scores (no extra target forward), and a tree drafted by walking the table from the last token
through a static tree template. No training, no draft model; prompt lookup goes first where the text repeats.

The table belongs to the strategy object, so it keeps what earlier calls (and the other rows of a batch) taught it.
It lives on the target's device: an update is one `topk` and one `index_copy_`, a draft one gather per depth, with
no device-to-host read. Which rows of the table were ever written is mirrored on the host (keys are the engine's
host tokens), so a row whose last token was never seen does not draft garbage.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..config import StrategyConfig, register_config
from ..schedules import DraftGate, make_schedule, observe_gate
from ..tree import TokenTree, TreeDraft, build_tree, tree_chain_nodes
from .base import Draft, RowOutcome, SpeculativeStrategy
from .ngram import GatedRow, NGramDrafterMixin, _check_ngram_schedule, check_lookup_min_ngram, front_lookup

# Small templates: on a CPU a verify forward costs about the same up to ~8-12 tokens and grows beyond, so the tree
# spends few nodes, most of them on the top-1 chain (the paper's 80-node template is for GPUs).
RECYCLING_TREES: dict[str, tuple[tuple[int, ...], ...]] = {
    "chain": ((0, 0, 0, 0, 0, 0),),
    "small": ((1,), (0, 1), (0, 0, 0, 0, 0)),
    "default": ((1,), (2,), (0, 1), (1, 0), (0, 0, 1), (0, 0, 0, 0, 0, 0)),
    "wide": ((1,), (2,), (3,), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0),
             (0, 0, 0, 1), (0, 0, 0, 0, 0, 0)),
}
RECYCLING_BUCKET = 0  # the gate's bucket for table drafts; prompt lookup's are 1 + 2 * n-gram size + consistent


@register_config
@dataclass
class RecyclingConfig(StrategyConfig, NGramDrafterMixin):
    strategy_type = "recycling"

    num_speculative_tokens: int = field(default=6, metadata={"help": "Deepest draft (tree depth or lookup length)."})
    tree: str | list[list[int]] = field(
        default="default",
        metadata={"help": f"Tree template: one of {sorted(RECYCLING_TREES)} or a list of rank paths, e.g. "
                          "[[0, 0, 0], [1]] (rank r: the table's r-th best next token)."})
    lookup_min_ngram: int = field(
        default=2, metadata={"help": "Prompt lookup first (suffixes of 4 down to this many tokens); 0 turns it off."})
    keep_table: bool = field(
        default=True, metadata={"help": "Keep the table across generate calls (it is the target's own predictions, "
                                        "valid for any text); False starts every call empty."})

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_ngram_schedule(self)
        check_lookup_min_ngram(self.lookup_min_ngram)
        if isinstance(self.tree, str):
            if self.tree not in RECYCLING_TREES:
                raise ValueError(f"Unknown tree {self.tree!r}: use one of {sorted(RECYCLING_TREES)} or a list of "
                                 "rank paths such as [[0, 0, 0], [1]].")
        else:
            self.tree = [list(path) for path in self.tree]
            build_tree(self.tree)  # validates the paths

    @property
    def tree_paths(self) -> list[tuple[int, ...]]:
        paths = RECYCLING_TREES[self.tree] if isinstance(self.tree, str) else self.tree
        return [tuple(path) for path in paths]


class RecyclingStrategy(SpeculativeStrategy):
    """Token recycling: draft a tree from a `[V, k]` table of the target's top-k next tokens, learnt from its
    verify scores. `RecyclingStrategy()` (prompt lookup first, then the table), `lookup_min_ngram=0` for the table
    alone, `tree="chain"` for a top-1 chain. Drafts are deterministic (point masses): greedy output equals plain
    `generate`, sampling stays lossless."""

    config_class = RecyclingConfig

    def __init__(self, config: RecyclingConfig | None = None, **overrides) -> None:
        super().__init__(config, **overrides)
        self._template = build_tree(self.config.tree_paths)
        self.top_k = self._template.max_rank
        self.table: torch.LongTensor | None = None  # [V, k] on the target's device
        self.known: bytearray = bytearray()  # host: known[t] == 1 once row t of the table was written
        self._trees: dict[int, tuple[TokenTree, list[int], list[tuple[list[int], list[int], list[int]]]]] = {}

    def new_row(self) -> GatedRow:
        return GatedRow(make_schedule(self.config), DraftGate())

    def begin(self, target, input_ids, generation_config, logits_processor) -> None:
        super().begin(target, input_ids, generation_config, logits_processor)
        if not self.config.keep_table:
            self.table, self.known = None, bytearray()

    # ---- the table -----------------------------------------------------------------------------------------------
    def _ensure_table(self, vocab: int, device: torch.device) -> torch.LongTensor:
        if self.table is None or self.table.shape[0] != vocab or self.table.device != device:
            # zeros stand for "unknown"; the root is checked on the host, deeper unknown rows only waste nodes
            self.table = torch.zeros(vocab, self.top_k, dtype=torch.long, device=device)
            self.known = bytearray(vocab)
        return self.table

    def observe_rows(self, outcomes: list[RowOutcome]) -> None:
        """Schedules and gates row by row, then ONE table update for the whole batch: each emitted position's scores
        give the top-k successors of the token before it."""
        keys, scores = [], []
        for outcome in outcomes:
            row = self.rows[outcome.row]
            super().observe_row(row, outcome.input_ids, outcome.draft, outcome.num_accepted, outcome.target_scores,
                                outcome.forward_seconds, outcome.hidden_states)
            observe_gate(row.gate, outcome.draft, outcome.num_accepted, outcome.forward_seconds)
            tokens = row.token_list(outcome.input_ids)
            m = outcome.target_scores.shape[0]
            first = len(tokens) - m  # row i of the scores scored the token at first + i, after the token first + i - 1
            skip = 1 if first == 0 else 0
            if m > skip:
                keys.extend(tokens[first - 1 + skip : len(tokens) - 1])
                scores.append(outcome.target_scores[skip:])
        if not keys:
            return
        scores_all = torch.cat(scores)
        table = self._ensure_table(scores_all.shape[-1], scores_all.device)
        top = scores_all.topk(self.top_k, dim=-1).indices  # [M, k]
        index = torch.tensor(keys, dtype=torch.long).to(table.device, non_blocking=True)
        table.index_copy_(0, index, top)
        for key in keys:
            self.known[key] = 1

    # ---- drafting ------------------------------------------------------------------------------------------------
    def _tree(self, depth: int):
        """The template cut to `depth`, with its nodes grouped by depth as (node ids, parent columns, ranks); parent
        column 0 is the root, 1 + i node i. Built once per depth."""
        if depth not in self._trees:
            tree = build_tree(self.config.tree_paths, max_depth=depth)
            levels = []
            for d in range(1, tree.max_depth + 1):
                nodes = [i for i, nd in enumerate(tree.depth_list) if nd == d]
                levels.append((nodes, [1 + tree.parent_list[i] for i in nodes], [tree.paths[i][-1] for i in nodes]))
            self._trees[depth] = (tree, tree_chain_nodes(tree), levels)
        return self._trees[depth]

    def _walk(self, roots: list[int], depth: int) -> torch.LongTensor:
        """Node tokens `[R, N]` of the template cut to `depth` for R rows whose last tokens are `roots`: one gather
        per depth on the table's device."""
        tree, _, levels = self._tree(depth)
        table = self.table
        columns = torch.empty(len(roots), 1 + tree.num_nodes, dtype=torch.long, device=table.device)
        columns[:, 0] = torch.tensor(roots, dtype=torch.long).to(table.device, non_blocking=True)
        for nodes, parents, ranks in levels:
            parent_tokens = columns[:, parents]  # [R, n_d]
            rank_index = torch.tensor(ranks, device=table.device).expand_as(parent_tokens)
            columns[:, [1 + i for i in nodes]] = table[parent_tokens, rank_index]
        return columns[:, 1:]

    def propose_rows(self, requests: list[tuple[int, torch.LongTensor, int]]) -> list[Draft]:
        """Prompt lookup per row first; every other row whose last token the table knows walks the template, rows of
        one depth in one gather."""
        drafts: list[Draft | None] = [None] * len(requests)
        by_depth: dict[int, list[tuple[int, int]]] = {}  # depth -> [(request, root token)]
        for i, (index, input_ids, max_tokens) in enumerate(requests):
            row = self.rows[index]
            gate = row.gate if self.config.skip_unprofitable_drafts else None
            found = front_lookup(self, row, input_ids, self.config.lookup_min_ngram, max_tokens, gate)
            depth = min(max_tokens, self.config.num_speculative_tokens)
            root = row.token_list(input_ids)[-1]
            if found is not None or depth < 1 or self.table is None or not self.known[root] or \
                    (gate is not None and not gate.should_draft(RECYCLING_BUCKET)):
                drafts[i] = found if found is not None else Draft.empty()
            else:
                by_depth.setdefault(min(depth, self._template.max_depth), []).append((i, root))
        for depth, group in by_depth.items():
            tree, chain, _ = self._tree(depth)
            tokens = self._walk([root for _, root in group], depth)  # [R, N]
            is_chain = len(chain) == tree.num_nodes  # a chain template: no tree mask (the batch-of-one fast path)
            for r, (i, _) in enumerate(group):
                drafts[i] = Draft(tokens[r], bucket=RECYCLING_BUCKET) if is_chain else \
                    Draft(tokens[r, chain], bucket=RECYCLING_BUCKET, tree=TreeDraft(tree, tokens[r]))
        return drafts
