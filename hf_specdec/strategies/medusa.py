"""Medusa: K heads on the target's last hidden state draft the next K tokens at almost no cost.

The heads read the hidden state that produced the last emitted token, which the verify forward already computed
(the loop passes it to `observe`), so drafting spends no extra target forward. Chain mode drafts each head's top-1;
tree mode drafts each head's top-k arranged in a tree of candidate paths, all verified in ONE target forward: a
fixed tree of rank paths, or (`tree="dynamic"`) one shaped every step by the heads' own probabilities. The same
strategy drives token-conditioned (Hydra) heads, which draft head by head along each branch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import StrategyConfig, register_config
from ..schedules import make_schedule
from ..kernels.cpu_speedups import is_cpu_optimized, optimize_for_cpu
from ..drafters.medusa_heads import MedusaHeads
from ..tree import DEFAULT_TREE, LARGE_TREE, TokenTree, TreeDraft, build_tree, chain_tree, tree_chain_nodes
from .base import Draft, RowState, SpeculativeStrategy
from .ngram import check_lookup_min_ngram, front_lookup

TREES = {"default": DEFAULT_TREE, "large": LARGE_TREE}


@register_config
@dataclass
class MedusaConfig(StrategyConfig):
    strategy_type = "medusa"

    # The defaults are the fastest lossless setting measured on the committed heads (docs/medusa.md): prompt lookup in
    # front of a top-1 chain beat every tree on CPU (a tree's extra verify rows cost more than they add there).
    num_speculative_tokens: int = field(
        default=10, metadata={"help": "Longest draft: heads used per step (capped at the number of heads), and the "
                                      "longest prompt-lookup draft when `lookup_min_ngram` is on."})
    tree: str | list[list[int]] | None = field(
        default=None,
        metadata={"help": "Candidate tree: 'default' (11 nodes), 'large' (23 nodes), a list of choice paths (e.g. "
                          "[[0], [1], [0, 0]]: ranks in each head's top-k), 'dynamic' (shaped every step by the "
                          "heads' probabilities, `tree_nodes` nodes), or None for a single top-1 chain."},
    )
    tree_nodes: int = field(
        default=16, metadata={"help": "tree='dynamic': nodes per step (the verify forward reads this many + 1)."})
    tree_width: int = field(
        default=8, metadata={"help": "tree='dynamic': children tried per expanded node, and nodes expanded per depth."})

    min_confidence: float = field(
        default=0.0,
        metadata={"help": "Keep a drafted token only while its path probability under the heads (product of the "
                          "heads' softmax along the path) is at least this; when nothing is left the step is a plain "
                          "decode, cheaper than a multi-token verify. 0 always drafts."},
    )

    skip_unprofitable_drafts: bool = field(
        default=True,
        metadata={"help": "In a batch: draft only while drafting steps yield more tokens per second than plain "
                          "steps (both measured; the rows' heads run one after another). A batch of one always "
                          "drafts."},
    )

    lookup_min_ngram: int = field(
        default=2,
        metadata={"help": "0: the heads draft every step. n in 1..4: first look the last 4, 3, ..., n tokens up in "
                          "the text so far (prompt lookup, as NGramStrategy does); on a match, draft its "
                          "continuation as a chain instead of asking the heads. Helps where text repeats (code); "
                          "the heads draft the steps without a match."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_lookup_min_ngram(self.lookup_min_ngram)
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be in [0, 1], got {self.min_confidence}.")
        if self.schedule == "entropy":
            raise ValueError("schedule='entropy' is not supported by MedusaStrategy; use 'constant' or 'heuristic'.")
        if isinstance(self.tree, str) and self.tree not in (*TREES, "dynamic"):
            raise ValueError(f"Unknown tree {self.tree!r}: use one of {sorted(TREES)}, 'dynamic', a list of choice "
                             "paths, or None.")
        for name in ("tree_nodes", "tree_width"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}.")
        if isinstance(self.tree, (list, tuple)):
            self.tree = [list(path) for path in self.tree]
            build_tree(self.tree)  # validates the paths


class HiddenRow(RowState):
    """A row of a strategy that drafts from the target's hidden states: the one that produced its last token."""

    def __init__(self, schedule) -> None:
        super().__init__(schedule)
        self.hidden: torch.Tensor | None = None  # [H]


class MedusaStrategy(SpeculativeStrategy):
    """Medusa heads as the drafter. `MedusaStrategy(heads, tree="default")`, `tree="dynamic"`, or `tree=None` for a
    chain; `heads` may be plain Medusa heads or token-conditioned (Hydra) ones.

    Greedy decoding equals plain `generate`; sampling is verified losslessly (point-mass candidates, recursive
    rejection sampling over the tree); `verification="typical"` is Medusa's LOSSY typical acceptance.
    `lookup_min_ngram=2, num_speculative_tokens=10` drafts prompt-lookup continuations where the text repeats itself
    and asks the heads everywhere else.
    """

    config_class = MedusaConfig
    needs_hidden_states = True
    supports_encoder_decoder = False  # heads read a decoder-only target's last hidden state

    def __init__(self, heads: MedusaHeads, config: MedusaConfig | None = None, **overrides) -> None:
        super().__init__(config, **overrides)
        if not isinstance(heads, MedusaHeads):
            raise TypeError(f"heads must be MedusaHeads (MedusaHeads.from_pretrained(...)), got {type(heads).__name__}.")
        self.heads = heads.eval()
        self._dynamic = self.config.tree == "dynamic"
        paths = TREES.get(self.config.tree) if isinstance(self.config.tree, str) else self.config.tree
        self._paths = None if paths is None else [tuple(p) for p in paths]
        self._trees: dict[int, TokenTree] = {}

    def new_row(self) -> HiddenRow:
        return HiddenRow(make_schedule(self.config))

    def display_name(self) -> str:
        # Hydra heads run through MedusaStrategy too; the card should not call them Medusa.
        return "MedusaStrategy (Hydra heads)" if self.heads.config.token_conditioned else "MedusaStrategy"

    def save_components(self, directory: Path) -> None:
        self.heads.save_pretrained(directory)  # config.json + model.safetensors: the folder is a heads folder too

    @classmethod
    def load_components(cls, directory: Path) -> tuple[MedusaHeads]:
        return (MedusaHeads.from_pretrained(directory),)

    def begin(self, target, input_ids, generation_config, logits_processor) -> None:
        super().begin(target, input_ids, generation_config, logits_processor)
        check_heads_fit(self.heads, target)
        self.heads.to(device=target.device)  # loaded on the CPU; they read the target's states where they are
        self.heads.attach_target(target)
        if is_cpu_optimized(target) and not is_cpu_optimized(self.heads):
            optimize_for_cpu(self.heads)  # the heads' own linears get the same skinny-input kernels

    def end(self) -> None:
        for row in self.rows:
            row.hidden = None

    def observe_row(self, row, input_ids, draft, num_accepted, target_scores, forward_seconds, hidden_states=None):
        super().observe_row(row, input_ids, draft, num_accepted, target_scores, forward_seconds, hidden_states)
        row.hidden = None if hidden_states is None else hidden_states[-1]  # [H]: produced the last emitted token

    @torch.no_grad()
    def propose_rows(self, requests: list[tuple[int, torch.LongTensor, int]]) -> list[Draft]:
        """Chains: prompt lookup per row, then the heads draft every remaining row in one pass (`draft_chains`).
        Trees are shaped per row (`propose_row`)."""
        if self._paths is not None or self._dynamic:
            return super().propose_rows(requests)
        drafts: list[Draft | None] = [None] * len(requests)
        heads_rows = []  # (request, row, depth)
        for i, (index, input_ids, max_tokens) in enumerate(requests):
            row = self.rows[index]
            found = front_lookup(self, row, input_ids, self.config.lookup_min_ngram, max_tokens)
            depth = min(max_tokens, self.heads.num_heads, self.config.num_speculative_tokens)
            if found is not None or row.hidden is None or depth < 1:
                drafts[i] = found if found is not None else Draft.empty(input_ids.device)
            else:
                heads_rows.append((i, row, depth))
        if heads_rows:
            hidden = torch.stack([row.hidden for _, row, _ in heads_rows]).to(next(self.heads.parameters()).dtype)
            last = torch.tensor([row.token_list(requests[i][1])[-1] for i, row, _ in heads_rows], device=hidden.device)
            tokens, probs = self.heads.draft_chains(hidden, last, max(depth for *_, depth in heads_rows))  # [R, D]
            keep = [depth for *_, depth in heads_rows]
            if self.config.min_confidence > 0:  # the prefix whose path probability is high enough
                confident = (probs[:, : max(keep)].cumprod(1) >= self.config.min_confidence).to(torch.int64)
                keep = [min(k, n) for k, n in zip(keep, confident.cumprod(1).sum(1).tolist())]
            for r, ((i, *_), count) in enumerate(zip(heads_rows, keep)):
                drafts[i] = Draft(tokens[r, :count])
        return drafts

    @torch.no_grad()
    def propose_row(self, row: HiddenRow, input_ids: torch.LongTensor, max_tokens: int) -> Draft:
        """A tree (fixed or dynamic) for one row, after prompt lookup."""
        found = front_lookup(self, row, input_ids, self.config.lookup_min_ngram, max_tokens)
        if found is not None:
            return found
        depth = min(max_tokens, self.heads.num_heads, self.config.num_speculative_tokens)
        if row.hidden is None or depth < 1:
            return Draft.empty(input_ids.device)
        hidden = row.hidden.to(dtype=next(self.heads.parameters()).dtype)
        last_token = row.token_list(input_ids)[-1]
        if self._dynamic:
            tree, tokens, probs = self.heads.draft_dynamic_tree(hidden, last_token, depth, self.config.tree_nodes,
                                                                self.config.tree_width)
        else:
            tree = self._tree(depth)
            tokens, probs = self.heads.draft_tree(hidden, last_token, tree)  # [N], [N]
        if self._paths is None and not self._dynamic:  # a chain (called row by row): the confident prefix
            confident = probs.cumprod(0) >= self.config.min_confidence  # [D]
            return Draft(tokens[: int(confident.to(torch.int64).cumprod(0).sum())])
        if self.config.min_confidence > 0:
            kept = confident_nodes(tree, probs, self.config.min_confidence)
            if not kept:
                return Draft.empty(input_ids.device)
            tokens, tree = tokens[kept], build_tree([tree.paths[i] for i in kept])
        return Draft(tokens[tree_chain_nodes(tree)], tree=TreeDraft(tree, tokens))

    def _tree(self, depth: int) -> TokenTree:
        """The fixed tree (or, in chain mode, the chain) cut to `depth`, built once per depth."""
        if depth not in self._trees:
            self._trees[depth] = chain_tree(depth) if self._paths is None else build_tree(self._paths, max_depth=depth)
        return self._trees[depth]


def confident_nodes(tree: TokenTree, node_probs: torch.Tensor, min_confidence: float) -> list[int]:
    """The nodes whose path probability (product of `node_probs` `[N]` along the path) is at least
    `min_confidence`, in tree order. Path probabilities only shrink with depth, so the kept set is closed under
    prefixes and keeps the tree's node order."""
    path_probs: list[float] = []
    for node, parent in enumerate(tree.parents.tolist()):  # parents precede children
        path_probs.append(float(node_probs[node]) * (path_probs[parent] if parent >= 0 else 1.0))
    return [node for node, prob in enumerate(path_probs) if prob >= min_confidence]


def check_heads_fit(heads: MedusaHeads, target) -> None:
    """Heads must match the target's hidden size and output vocabulary."""
    hidden_size = int(target.config.hidden_size)
    vocab = int(target.get_output_embeddings().weight.shape[0])
    if heads.config.hidden_size != hidden_size or heads.config.vocab_size != vocab:
        raise ValueError(
            f"These Medusa heads were built for hidden_size={heads.config.hidden_size}, vocab_size="
            f"{heads.config.vocab_size} but the target has hidden_size={hidden_size}, vocab_size={vocab}. "
            "Load heads trained for this target, or train them with recipes/train_medusa.py."
        )
