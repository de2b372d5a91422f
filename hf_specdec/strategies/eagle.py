"""EAGLE: a one-layer drafter that runs autoregressively over the target's features (see `eagle_drafter.py`).

The features come from the verify forward the loop already runs (`observe` gets the target's last hidden states of
the emitted tokens), so drafting adds no target forward: each step commits the new (feature, token) pairs to the
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
from ..cpu_speedups import is_cpu_optimized, optimize_for_cpu
from ..eagle_drafter import DrafterCache, EagleDrafter
from ..tree import TreeDraft, grow_dynamic_tree
from .base import Draft, RowState, SpeculativeStrategy
from .medusa import tree_chain_nodes
from .ngram import check_lookup_min_ngram, front_lookup


@register_config
@dataclass
class EagleConfig(StrategyConfig):
    strategy_type = "eagle"

    # Defaults: the fastest lossless EAGLE setting measured on the committed drafter (docs/eagle.md): prompt lookup in
    # front of an 8-node dynamic tree, 4 deep.
    num_speculative_tokens: int = field(
        default=10, metadata={"help": "Longest draft: the longest prompt-lookup draft when `lookup_min_ngram` is on, "
                                      "and a cap on `depth`."})
    depth: int = field(
        default=4, metadata={"help": "Drafter steps per target step: the chain's length or the tree's depth. Each "
                                     "step is one drafter forward (of `tree_width` tokens in a tree)."})
    tree: str | None = field(
        default="dynamic",
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
    def observe_row(self, row, input_ids, draft, num_accepted, target_scores, forward_seconds, hidden_states=None):
        """Commits this step's pairs (the target's feature at each emitted row, the token it produced) to the
        drafter's cache; its output at the last one drafts the next step's first token."""
        super().observe_row(row, input_ids, draft, num_accepted, target_scores, forward_seconds, hidden_states)
        if hidden_states is None or hidden_states.shape[0] == 0:
            return
        count = hidden_states.shape[0]
        first = input_ids.shape[1] - 1 - count  # target position of the first row
        if first != row.next_position:  # e.g. a prefilled cache left early prompt rows out: start afresh here
            row.reset()
            row.next_position = first
        tokens = input_ids[0, -count:]
        positions = torch.arange(first, first + count, device=input_ids.device)
        features = hidden_states.to(next(self.drafter.parameters()).dtype)
        row.last = self.drafter.step(features, tokens, positions, row.cache)[-1]
        row.next_position = first + count

    @torch.no_grad()
    def propose_row(self, row: DrafterRow, input_ids: torch.LongTensor, max_tokens: int) -> Draft:
        found = front_lookup(self, row, input_ids, self.config.lookup_min_ngram, max_tokens)
        if found is not None:
            return found
        depth = min(max_tokens, self.config.num_speculative_tokens, self.config.depth)
        # Drafting needs the drafter to be at this sequence's end (not so when called by Transformers' own loop).
        if row.last is None or depth < 1 or row.next_position != input_ids.shape[1] - 1:
            return Draft.empty(input_ids.device)
        chain = self.config.tree is None
        width = 1 if chain else self.config.tree_width
        committed = len(row.cache)
        try:
            tree, tokens, _ = grow_dynamic_tree(self._top_children(row, width), depth, depth if chain else
                                                self.config.tree_nodes, width)
        finally:
            row.cache.crop(committed)  # drafted positions never stay
        if chain:
            return Draft(tokens[tree_chain_nodes(tree)])
        return Draft(tokens[tree_chain_nodes(tree)], tree=TreeDraft(tree, tokens))

    def _top_children(self, state: DrafterRow, width: int):
        """`top_children(k, paths)` for `tree.grow_dynamic_tree`: the drafter's top-`width` tokens after each token
        path of length k. For k >= 1 every path's last token is run through the drafter first, in one forward, on
        top of the committed slots and the path's own drafted ancestors (a tree mask)."""
        drafter, cache = self.drafter, state.cache
        committed, start = len(cache), state.next_position  # start: the position of a depth-1 token's pair
        states = {(): state.last}  # token path -> the drafter's output after it
        slots: dict[tuple[int, ...], list[int]] = {(): []}  # token path -> cache slots of its drafted positions

        def top_children(k: int, paths: list[tuple[int, ...]]) -> tuple[list[list[int]], list[list[float]]]:
            if k > 0:
                past, count = len(cache), len(paths)
                mask = torch.zeros(count, past + count, dtype=torch.bool)
                mask[:, :committed] = True
                for row, path in enumerate(paths):
                    mask[row, slots[path[:-1]]] = True
                    mask[row, past + row] = True
                device = state.last.device
                out = drafter.step(torch.stack([states[path[:-1]] for path in paths]),
                                   torch.tensor([path[-1] for path in paths], device=device),
                                   torch.full((count,), start + k - 1, device=device), cache, mask.to(device))
                for row, path in enumerate(paths):
                    states[path], slots[path] = out[row], [*slots[path[:-1]], past + row]
            logits, vocab = drafter.draft_logits(torch.stack([states[path] for path in paths]))
            top = logits.softmax(dim=-1).topk(width, dim=-1)  # [P, width]
            return (top.indices if vocab is None else vocab[top.indices]).tolist(), top.values.tolist()

        return top_children
