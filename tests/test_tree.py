"""Tree drafts: shape, 4D mask + position ids (checked against running each branch alone), cache gather, verifiers."""

from __future__ import annotations

import pytest
import torch
from conftest import make_llama
from scipy.stats import chisquare
from transformers.cache_utils import DynamicCache

from hf_specdec.compat import CACHE_KWARG
from hf_specdec.tree import (
    DEFAULT_TREE,
    build_tree,
    chain_tree,
    greedy_tree_verify,
    paths_from_accuracy,
    sampling_tree_verify,
    tree_attention_mask,
    tree_position_ids,
    tree_tokens,
    typical_tree_verify,
)
from hf_specdec.engine.cache import commit

PATHS = [(0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0), (2,)]


def test_build_tree_orders_parents_first_and_adds_prefixes():
    tree = build_tree([(0, 1, 0), (1,)])
    assert tree.paths == ((0,), (1,), (0, 1), (0, 1, 0))
    assert tree.parents.tolist() == [-1, -1, 0, 2]
    assert tree.depths.tolist() == [1, 1, 2, 3]
    assert tree.ranks.tolist() == [0, 1, 1, 0]
    assert tree.children() == [[0, 1], [2], [], [3], []]
    assert tree.max_rank == 2 and tree.max_depth == 3
    assert build_tree(DEFAULT_TREE, max_depth=2).max_depth == 2
    assert chain_tree(3).parents.tolist() == [-1, 0, 1]
    with pytest.raises(ValueError, match="ranks >= 0"):
        build_tree([(0, -1)])


def test_mask_and_positions():
    tree = build_tree(PATHS)
    mask = tree_attention_mask(tree.parents, past_length=2)
    assert mask.shape == (1, 1, tree.num_nodes + 1, 2 + tree.num_nodes + 1)
    seen = mask[0, 0] == 0
    assert seen[:, :3].all()  # cache and root
    node = tree.paths.index((0, 0, 0))
    expected = {0, 1 + tree.paths.index((0,)), 1 + tree.paths.index((0, 0)), 1 + node}
    assert set((seen[1 + node, 2:].nonzero().flatten()).tolist()) == expected
    assert tree_position_ids(tree.depths, 5).tolist() == [[5] + [5 + d for d in tree.depths.tolist()]]


def _prefill(model, prompt):
    cache = DynamicCache(config=model.config)
    model(prompt[:, :-1], **{CACHE_KWARG: cache}, use_cache=True)
    return cache


@torch.no_grad()
def test_tree_forward_matches_each_branch_run_alone():
    model = make_llama(seed=5)
    prompt = torch.randint(2, 97, (1, 12), generator=torch.Generator().manual_seed(0))
    tree = build_tree(PATHS)
    nodes = tree_tokens(tree, torch.randint(2, 97, (tree.max_depth, tree.max_rank),
                                            generator=torch.Generator().manual_seed(1)))
    past = prompt.shape[1] - 1
    cache = _prefill(model, prompt)
    out = model(torch.cat([prompt[:, -1:], nodes[None]], dim=-1), **{CACHE_KWARG: cache}, use_cache=True,
                attention_mask=tree_attention_mask(tree.parents, past), position_ids=tree_position_ids(tree.depths, past))
    root_alone = model(prompt).logits[0, -1]
    torch.testing.assert_close(out.logits[0, 0], root_alone, atol=1e-5, rtol=1e-5)
    for node in range(tree.num_nodes):
        branch = nodes[tree.ancestors(node)]
        alone = model(torch.cat([prompt, branch[None]], dim=-1)).logits[0, -1]
        torch.testing.assert_close(out.logits[0, 1 + node], alone, atol=1e-5, rtol=1e-5)

    # keep only the path (0,) -> (0, 1): the cache must equal the cache of that branch run alone
    path = [tree.paths.index((0,)), tree.paths.index((0, 1))]
    commit(cache, None, [[0] + [1 + n for n in path]], tree.num_nodes)  # a batch of one keeps no dead slot
    reference = _prefill(model, torch.cat([prompt, nodes[path][None], prompt[:, :1]], dim=-1))
    for ours, theirs in zip(cache.layers, reference.layers):
        torch.testing.assert_close(ours.keys, theirs.keys, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.values, theirs.values, atol=1e-5, rtol=1e-5)


def _scores(rows: dict[int, int], num_rows: int, vocab: int = 10) -> torch.Tensor:
    """Scores whose argmax at row r is rows[r] (default token 9)."""
    scores = torch.full((num_rows, vocab), -10.0)
    scores[:, 9] = 10.0
    for row, token in rows.items():
        scores[row, 9] = -10.0
        scores[row, token] = 10.0
    return scores


def test_greedy_tree_verify_follows_the_argmax():
    tree = build_tree([(0,), (1,), (1, 0), (1, 1)])  # nodes: (0,), (1,), (1,0), (1,1)
    nodes = torch.tensor([4, 5, 6, 7])
    # root wants 5 (node 1), node 1 wants 7 (node 3), node 3 wants 2 (leaf: bonus token)
    path, nxt = greedy_tree_verify(tree, nodes, _scores({0: 5, 2: 7, 4: 2}, 5))
    assert path == [1, 3] and nxt == 2
    path, nxt = greedy_tree_verify(tree, nodes, _scores({0: 3}, 5))
    assert path == [] and nxt == 3
    path, nxt = greedy_tree_verify(tree, nodes, _scores({0: 4, 1: 8}, 5))
    assert path == [0] and nxt == 8


def test_typical_tree_verify_takes_deepest_accepted_path():
    tree = build_tree([(0,), (1,), (1, 0)])
    nodes = torch.tensor([4, 5, 6])
    p = _scores({0: 5, 2: 6, 3: 2}, 4).softmax(-1)
    path, nxt = typical_tree_verify(tree, nodes, p, do_sample=False)
    assert path == [1, 2] and nxt == 2


def _sample_first_tokens(tree, nodes, p, trials, seed=0):
    generator = torch.Generator().manual_seed(seed)
    counts = torch.zeros(p.shape[-1])
    pairs = {}
    for _ in range(trials):
        path, nxt = sampling_tree_verify(tree, nodes, p, generator=generator)
        emitted = nodes[path].tolist() + [nxt]
        counts[emitted[0]] += 1
        if len(emitted) >= 2:
            pairs[tuple(emitted[:2])] = pairs.get(tuple(emitted[:2]), 0) + 1
    return counts, pairs


def test_sampling_tree_verify_is_lossless_chi_square():
    """Emitted tokens must follow p: first token ~ p_root, second token given the first ~ that node's row."""
    vocab, generator = 6, torch.Generator().manual_seed(3)
    tree = build_tree([(0,), (1,), (2,), (0, 0), (0, 1), (1, 0)])
    candidates = torch.tensor([[2, 0, 4], [1, 3, 5]])  # head 1 top-3, head 2 top-3
    nodes = tree_tokens(tree, candidates)
    p = torch.softmax(torch.randn(tree.num_nodes + 1, vocab, generator=generator) * 1.5, dim=-1)
    trials = 6000
    counts, pairs = _sample_first_tokens(tree, nodes, p, trials)
    expected = p[0].double() / p[0].double().sum() * trials
    assert chisquare(counts.double().numpy(), expected.numpy()).pvalue > 1e-3
    # conditional on first token 2 (node (0,)), the second token follows that node's row
    node = tree.paths.index((0,))
    second = torch.tensor([pairs.get((2, t), 0) for t in range(vocab)], dtype=torch.float64)
    expected = p[1 + node].double() / p[1 + node].double().sum() * second.sum()
    assert chisquare(second.numpy(), expected.numpy()).pvalue > 1e-3


def test_sampling_tree_verify_handles_certain_and_impossible_children():
    tree = build_tree([(0,), (1,)])
    nodes = torch.tensor([3, 4])
    p = torch.zeros(3, 6)
    p[0, 4] = 1.0  # the root surely wants node 1's token
    p[1:, 5] = 1.0
    path, nxt = sampling_tree_verify(tree, nodes, p, generator=torch.Generator().manual_seed(0))
    assert path == [1] and nxt == 5


def test_paths_from_accuracy_picks_the_likeliest_prefix_closed_paths():
    accuracy = [[0.6, 0.2, 0.1], [0.5, 0.2, 0.1]]
    paths = paths_from_accuracy(accuracy, 4)
    assert paths == [(0,), (0, 0), (1,), (0, 1)]  # 0.6, 0.3, 0.2, 0.12
    assert build_tree(paths).num_nodes == 4


def test_sampling_tree_verify_bonus_after_an_accepted_leaf():
    """Every node on the path certain: the next token is drawn from the accepted leaf's own row."""
    tree = build_tree([(0,), (1,), (0, 0)])  # nodes: (0,), (1,), (0, 0)
    nodes = torch.tensor([3, 4, 5])
    p = _scores({0: 3, 1: 5, 2: 4, 3: 7}, 4).softmax(-1)  # root wants 3, node 0 wants 5, leaf (0, 0) wants 7
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        assert sampling_tree_verify(tree, nodes, p, generator=generator) == ([0, 2], 7)


def test_sampling_tree_verify_never_redraws_a_rejected_child():
    """When every child is rejected, the next token comes from p with the children's tokens removed: never a
    rejected child's token. (Drawing from p instead gives token 3 in half of those trials; 400 trials see ~100 of
    them, so the chance that such a bug goes unseen is 2^-100.)"""
    tree = build_tree([(0,), (1,)])
    nodes = torch.tensor([3, 4])
    p = torch.zeros(3, 6)
    p[0, 3], p[0, 4], p[0, 2] = 0.5, 0.25, 0.25
    p[1:, 5] = 1.0
    generator = torch.Generator().manual_seed(1)
    outcomes = [sampling_tree_verify(tree, nodes, p, generator=generator) for _ in range(400)]
    rejected_all = [nxt for path, nxt in outcomes if not path]
    assert len(rejected_all) > 50 and set(rejected_all) == {2}
    assert {tuple(path) for path, _ in outcomes} == {(), (0,), (1,)}
