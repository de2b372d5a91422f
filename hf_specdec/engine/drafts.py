"""A row's draft as the step sees it: a tree of nodes (a chain is a tree with one branch), its shape on the host."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..strategies.base import Draft
from ..tree import TreeDraft, build_tree


@dataclass
class RowDraft:
    """Node tokens `[N]` (on the target's device), their parents (-1: the row's last token) and depths as host lists;
    `draft` is what the strategy proposed (cut to these nodes), `tree` its TreeDraft for tree drafts, else None."""

    draft: Draft
    tokens: torch.LongTensor
    parents: list[int]
    depths: list[int]
    tree: TreeDraft | None = None

    @classmethod
    def of(cls, draft: Draft, max_nodes: int, device: torch.device) -> RowDraft:
        """The draft cut to its first `max_nodes` nodes (parents precede children, so the cut is still a tree)."""
        if draft.tree is not None:
            tree_draft = draft.tree
            count = min(max_nodes, tree_draft.tree.num_nodes)
            if count == 0:
                return cls.of(Draft(draft.tokens[:0], bucket=draft.bucket), 0, device)
            if count < tree_draft.tree.num_nodes:
                tree_draft = TreeDraft(build_tree(tree_draft.tree.paths[:count]), tree_draft.tokens[:count])
            tree = tree_draft.tree
            return cls(draft, tree_draft.tokens.to(device), tree.parent_list, tree.depth_list, tree_draft)
        tokens = draft.tokens[:max_nodes]
        k = tokens.numel()
        if k < draft.tokens.numel():  # q rows beyond the cut go too (a mixture keeps the first position's)
            probs = None if draft.probs is None else draft.probs[: max(k, 1)]
            draft = Draft(tokens, probs, draft.bucket)
        return cls(draft, tokens.to(device), list(range(-1, k - 1)), list(range(1, k + 1)))

    @property
    def num_nodes(self) -> int:
        return len(self.parents)

    @property
    def is_chain(self) -> bool:
        return self.tree is None

    @property
    def depth(self) -> int:
        """Drafted tokens a step can accept at most (a tree's depth), what the stats count as drafted."""
        return max(self.depths, default=0)

    def path_to(self, node: int) -> list[int]:
        """Nodes from depth 1 down to `node` (inclusive); [] for -1 (the root)."""
        path = []
        while node >= 0:
            path.append(node)
            node = self.parents[node]
        return path[::-1]
