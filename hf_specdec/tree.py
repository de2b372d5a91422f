"""Tree drafts: several candidate continuations verified in ONE target forward (Medusa, SpecInfer).

A tree is given by choice paths: `(0, 1)` means "head 1's top-1 token, then head 2's second-best token". Node i
(0-based, parents before children) has a `parent` (-1: the root, i.e. the last emitted token), a `depth` (1 = the
first drafted position) and a `rank` (its index in its head's top-k). The target reads [root, node 0, ..., node N-1]
with a 4D attention mask in which each row sees the cache, the root and its own ancestors, and position ids
`past + depth`; row 0 (root) scores the first drafted position and row 1 + i scores the token after node i.

Pure tensor functions here; the step that uses them lives in `hf_specdec.engine`.
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import torch

# The default tree for 4 heads: 11 nodes (a 12-token verify forward). On a CPU a verify costs about the same from 2
# to ~12 tokens and grows beyond, so the tree stays small and spends its nodes where the heads are most accurate.
DEFAULT_TREE: tuple[tuple[int, ...], ...] = (
    (0,), (1,), (2,),
    (0, 0), (0, 1), (1, 0),
    (0, 0, 0), (0, 0, 1), (0, 1, 0),
    (0, 0, 0, 0), (0, 0, 1, 0),
)
# Medusa-style wider tree (23 nodes), better where a wide verify is cheap (GPUs).
LARGE_TREE: tuple[tuple[int, ...], ...] = (
    (0,), (1,), (2,), (3,),
    (0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0), (3, 0),
    (0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0), (0, 0, 2), (2, 0, 0),
    (0, 0, 0, 0), (0, 0, 0, 1), (0, 0, 1, 0), (0, 1, 0, 0), (1, 0, 0, 0), (0, 0, 0, 2),
)


@dataclass(frozen=True)
class TokenTree:
    """The shape of a candidate tree (no tokens): `parents`, `depths`, `ranks`, each `[N]`."""

    paths: tuple[tuple[int, ...], ...]
    parents: torch.LongTensor
    depths: torch.LongTensor
    ranks: torch.LongTensor

    @property
    def num_nodes(self) -> int:
        return len(self.paths)

    @functools.cached_property
    def parent_list(self) -> list[int]:
        """`parents` as a host list (read by the loop without a tensor-to-Python conversion per step)."""
        return [paths_index[p[:-1]] if len(p) > 1 else -1
                for paths_index in [{path: i for i, path in enumerate(self.paths)}] for p in self.paths]

    @functools.cached_property
    def depth_list(self) -> list[int]:
        return [len(path) for path in self.paths]

    @property
    def max_depth(self) -> int:
        return max(len(path) for path in self.paths)

    @property
    def max_rank(self) -> int:
        """Largest top-k any head must provide."""
        return max(max(path) for path in self.paths) + 1

    def children(self) -> list[list[int]]:
        """`children()[1 + i]` lists node i's children in rank order; `children()[0]` the root's."""
        kids: list[list[int]] = [[] for _ in range(self.num_nodes + 1)]
        for node in sorted(range(self.num_nodes), key=lambda i: int(self.ranks[i])):
            kids[int(self.parents[node]) + 1].append(node)
        return kids

    def ancestors(self, node: int) -> list[int]:
        """Nodes from depth 1 down to `node` (inclusive)."""
        path = []
        while node >= 0:
            path.append(node)
            node = int(self.parents[node])
        return path[::-1]



@dataclass
class TreeDraft:
    """A tree of candidates: its shape and the token at each node (`tokens` `[N]`)."""

    tree: TokenTree
    tokens: torch.LongTensor


def build_tree(paths: Sequence[Sequence[int]], max_depth: int | None = None) -> TokenTree:
    """A tree from choice paths; missing prefixes are added, duplicates dropped, paths deeper than `max_depth`
    (e.g. the number of heads) removed. Nodes are ordered by depth, then path, so parents precede children."""
    unique: set[tuple[int, ...]] = set()
    for path in paths:
        path = tuple(int(c) for c in path)
        if not path or min(path) < 0:
            raise ValueError(f"Tree paths must be non-empty tuples of ranks >= 0, got {path!r}.")
        if max_depth is not None:
            path = path[:max_depth]
        unique.update(path[:d] for d in range(1, len(path) + 1))
    ordered = tuple(sorted(unique, key=lambda p: (len(p), p)))
    index = {path: i for i, path in enumerate(ordered)}
    parents = torch.tensor([index[p[:-1]] if len(p) > 1 else -1 for p in ordered], dtype=torch.long)
    depths = torch.tensor([len(p) for p in ordered], dtype=torch.long)
    ranks = torch.tensor([p[-1] for p in ordered], dtype=torch.long)
    return TokenTree(ordered, parents, depths, ranks)


def paths_from_accuracy(accuracy: Sequence[Sequence[float]], num_nodes: int) -> list[tuple[int, ...]]:
    """Medusa's tree construction: the `num_nodes` paths with the highest estimated acceptance probability.

    accuracy[d][r]: how often head d + 1's rank-r token is the right one (measured on held-out text). A path's
    probability is the product along it, so it never exceeds its prefix's and the chosen set is a tree; the
    expected tokens per step is 1 + the sum of the chosen paths' probabilities.
    """
    heap = [(-accuracy[0][r], (r,)) for r in range(len(accuracy[0]))]
    heapq.heapify(heap)
    chosen: list[tuple[int, ...]] = []
    while heap and len(chosen) < num_nodes:
        negative, path = heapq.heappop(heap)
        chosen.append(path)
        if len(path) < len(accuracy):
            for r, acc in enumerate(accuracy[len(path)]):
                heapq.heappush(heap, (negative * acc, (*path, r)))
    return chosen


def grow_dynamic_tree(top_children, depth: int, num_nodes: int, width: int,
                      ) -> tuple[TokenTree, torch.LongTensor, torch.Tensor]:
    """A tree shaped by this step's own draft probabilities (EAGLE-2), for any drafter.

    `top_children(k, paths)` gives, for each token path of length k (the drafted tokens from depth 1; `[()]` at
    k = 0), the drafter's top-`width` next tokens and their probabilities as two `[P, width]` lists. See
    `DynamicTreeGrowth`, which drives several trees in lockstep (one drafter forward per depth for a batch).
    """
    growth = DynamicTreeGrowth(depth, num_nodes, width)
    for k in range(depth):
        growth.grow(*top_children(k, growth.paths()))
    return growth.result()


class DynamicTreeGrowth:
    """One EAGLE-2 tree grown depth by depth: `paths()` are the token paths to expand next, `grow(tokens, probs)`
    takes the drafter's top-`width` children of each (two `[P, width]` lists), `result()` the kept tree.

    Depth by depth, the `width` most probable nodes (path probability: the product along the path) are expanded;
    then the `num_nodes` most probable nodes of all are kept. A child is never more probable than its parent, so
    the kept nodes form a tree. `result()` returns (tree, tokens `[N]`, each node's own probability `[N]`)."""

    def __init__(self, depth: int, num_nodes: int, width: int) -> None:
        self.depth, self.num_nodes, self.width = depth, num_nodes, width
        # A node: (its tokens from depth 1, its ranks = its path in the tree, path probability, own probability).
        self.frontier: list[tuple[tuple[int, ...], tuple[int, ...], float, float]] = [((), (), 1.0, 1.0)]
        self.nodes: dict[tuple[int, ...], tuple[int, float, float]] = {}  # ranks -> token, own prob, path prob
        self.grown_depth = 0

    @property
    def done(self) -> bool:
        return self.grown_depth >= self.depth

    def paths(self) -> list[tuple[int, ...]]:
        return [node[0] for node in self.frontier]

    def grow(self, top_tokens: list[list[int]], top_probs: list[list[float]]) -> None:
        grown = [((*tokens, token), (*ranks, rank), path_prob * prob, prob)
                 for (tokens, ranks, path_prob, _), row_tokens, row_probs in zip(self.frontier, top_tokens, top_probs)
                 for rank, (token, prob) in enumerate(zip(row_tokens, row_probs))]
        self.nodes |= {ranks: (tokens[-1], prob, path_prob) for tokens, ranks, path_prob, prob in grown}
        self.frontier = heapq.nlargest(self.width, grown, key=lambda node: node[2])
        self.grown_depth += 1

    def result(self) -> tuple[TokenTree, torch.LongTensor, torch.Tensor]:
        nodes = self.nodes
        kept = sorted(nodes, key=lambda ranks: (-nodes[ranks][2], len(ranks)))[:self.num_nodes]  # parents first
        tree = build_tree(kept)
        return (tree, torch.tensor([nodes[path][0] for path in tree.paths]),
                torch.tensor([nodes[path][1] for path in tree.paths]))


def chain_tree(length: int) -> TokenTree:
    """A single chain of top-1 tokens, `length` deep."""
    return build_tree([(0,) * length])


def tree_chain_nodes(tree: TokenTree) -> list[int]:
    """The nodes of the tree's top-1 chain (each node's first child, rank 0 where it exists), from depth 1: a tree
    draft's `Draft.tokens`."""
    chain, row, children = [], 0, tree.children()
    while children[row]:
        chain.append(children[row][0])
        row = 1 + chain[-1]
    return chain


def tree_tokens(tree: TokenTree, candidates: torch.LongTensor) -> torch.LongTensor:
    """Node tokens from per-depth candidates: `candidates` `[D, k]` (row d = head d + 1's top-k) -> `[N]`."""
    return candidates[tree.depths - 1, tree.ranks]  # [N]


def tree_attention_mask(parents: torch.LongTensor, past_length: int, dtype: torch.dtype = torch.float32,
                        ) -> torch.Tensor:
    """Additive 4D mask `[1, 1, N + 1, past + N + 1]` (0 = attend, dtype min = masked) for [root, nodes].

    Every row sees the whole cache and the root; node rows also see their ancestors and themselves.
    """
    visible = tree_visibility(parents)  # [N + 1, N + 1]
    allowed = torch.cat([torch.ones(visible.shape[0], past_length, dtype=torch.bool), visible], dim=1)
    mask = torch.zeros(allowed.shape, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[None, None]  # [1, 1, N + 1, past + N + 1]


def tree_visibility(parents: torch.LongTensor) -> torch.BoolTensor:
    """`[N + 1, N + 1]` boolean: row r sees column c (index 0 = root, 1 + i = node i)."""
    size = parents.shape[0] + 1
    visible = torch.eye(size, dtype=torch.bool)
    visible[:, 0] = True
    for node, parent in enumerate(parents.tolist()):  # parents precede children: copy the parent's row
        if parent >= 0:
            visible[1 + node] |= visible[1 + parent]
    return visible


def tree_position_ids(depths: torch.LongTensor, past_length: int) -> torch.LongTensor:
    """`[1, N + 1]` position ids: the root at `past_length`, node i at `past_length + depth_i`."""
    return (past_length + torch.cat([depths.new_zeros(1), depths]))[None]


def greedy_tree_verify(tree: TokenTree, node_tokens: torch.LongTensor, target_scores: torch.Tensor,
                       ) -> tuple[list[int], int]:
    """Follow the target's argmax down the tree.

    node_tokens: `[N]`; target_scores: `[N + 1, V]` (row 0 = root). Returns (accepted node indices from depth 1,
    the target's next token after the last accepted node).
    """
    argmax = target_scores.argmax(dim=-1).tolist()  # [N + 1]
    tokens = node_tokens.tolist()
    children = tree.children()
    path, row = [], 0
    while True:
        match = next((c for c in children[row] if tokens[c] == argmax[row]), None)
        if match is None:
            return path, argmax[row]
        path.append(match)
        row = 1 + match


def sampling_tree_verify(tree: TokenTree, node_tokens: torch.LongTensor, p: torch.Tensor,
                         generator: torch.Generator | None = None) -> tuple[list[int], int]:
    """Lossless tree verification for deterministic (top-k) candidates: recursive rejection sampling.

    At a node with target distribution p, children c_1, c_2, ... are tried in rank order; c_j is accepted with
    probability p(c_j) (a point-mass draft), and on rejection p <- norm(p with c_j set to 0). Acceptance moves to
    that child and its own distribution; if every child is rejected the next token is drawn from the residual p.
    The emitted sequence then follows the target exactly.

    p: `[N + 1, V]` target probabilities (row 0 = root). Returns (accepted nodes, next token).
    """
    tokens = node_tokens.tolist()
    children = tree.children()
    path, row = [], 0
    current = p[0].clone()
    while True:
        accepted = None
        for child in children[row]:
            token = tokens[child]
            if float(torch.rand((), generator=generator)) < float(current[token]):
                accepted = child
                break
            current[token] = 0.0
            total = current.sum()
            if total <= torch.finfo(current.dtype).tiny:  # only float error left: fall back to the target row
                current = p[row].clone()
                current[token] = 0.0
                total = current.sum()
            current = current / total
        if accepted is None:
            return path, int(torch.multinomial(current, 1, generator=generator))
        path.append(accepted)
        row = 1 + accepted
        current = p[row].clone()


def typical_tree_verify(tree: TokenTree, node_tokens: torch.LongTensor, p: torch.Tensor,
                        posterior_threshold: float = 0.09, posterior_alpha: float = 0.3, do_sample: bool = True,
                        generator: torch.Generator | None = None) -> tuple[list[int], int]:
    """Typical acceptance over a tree (Medusa). LOSSY: the output no longer follows p exactly.

    A node is accepted when its parent row gives its token p(x) > min(epsilon, delta * exp(-H)) and its parent was
    accepted; the deepest accepted node wins (ties: lowest index). The next token is drawn from (greedy: argmax
    of) the winning node's row.
    """
    entropy = -(p * torch.log(p.clamp_min(1e-30))).sum(dim=-1)  # [N + 1]
    threshold = torch.minimum(torch.full_like(entropy, posterior_threshold), posterior_alpha * torch.exp(-entropy))
    parent_rows = tree.parents + 1  # [N]
    ok = (p[parent_rows, node_tokens] > threshold[parent_rows]).tolist()  # [N]
    accepted = [False] * tree.num_nodes
    best, best_depth = -1, 0
    for node in range(tree.num_nodes):  # parents precede children
        parent = int(tree.parents[node])
        accepted[node] = ok[node] and (parent < 0 or accepted[parent])
        if accepted[node] and int(tree.depths[node]) > best_depth:
            best, best_depth = node, int(tree.depths[node])
    path = tree.ancestors(best) if best >= 0 else []
    row = p[1 + best] if best >= 0 else p[0]
    next_token = torch.multinomial(row, 1, generator=generator) if do_sample else row.argmax()
    return path, int(next_token)
