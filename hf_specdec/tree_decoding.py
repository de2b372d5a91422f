"""One speculative step over a tree draft: one target forward, pick the accepted path, keep only it in the cache.

Called by `hf_specdec.decoding` when the strategy's `Draft` carries a `TreeDraft`. The target reads [last token,
node 0, ..., node N-1] with the tree's 4D mask and position ids; the verifier walks the tree (greedy argmax match,
lossless recursive rejection sampling, or LOSSY typical acceptance); the accepted path plus the target's next token
are emitted through the same stopping criteria as a chain; the cache keeps the root and the accepted nodes
(gathered along the sequence axis), then is cropped like any other step.
"""

from __future__ import annotations

import time

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from .decode_run import DecodeRun
from .tree import (
    TreeDraft,
    greedy_tree_verify,
    sampling_tree_verify,
    tree_attention_mask,
    tree_position_ids,
    typical_tree_verify,
)

__all__ = ["TreeDraft", "keep_tree_path", "tree_scores", "tree_step", "verify_tree"]  # TreeDraft: its old home


def tree_scores(logits_processor, input_ids: torch.LongTensor, tree_draft: TreeDraft, logits: torch.Tensor,
                ) -> torch.Tensor:
    """Logits processors applied at every tree row with that row's own prefix (the node's ancestors).

    input_ids: `[1, n]`; logits: `[N + 1, V]` (row 0 = root) -> scores `[N + 1, V]`.
    """
    if len(logits_processor) == 0:
        return logits.clone()
    rows = [logits_processor(input_ids, logits[:1].clone())]
    for node in range(tree_draft.tree.num_nodes):
        path = tree_draft.tokens[tree_draft.tree.ancestors(node)]  # [depth]
        prefix = torch.cat([input_ids, path[None].to(input_ids.device)], dim=-1)
        rows.append(logits_processor(prefix, logits[1 + node : 2 + node].clone()))
    return torch.cat(rows, dim=0)


def keep_tree_path(cache: DynamicCache, past_length: int, rows: list[int]) -> None:
    """Keep the first `past_length` cache positions plus the tree rows `rows` (0 = root; ascending, as along a path)."""
    index = torch.tensor([past_length + r for r in rows])
    for layer in cache.layers:
        if type(layer) is not DynamicLayer:
            raise ValueError(f"Tree drafts need full-attention DynamicLayer caches, got {type(layer).__name__}; "
                             "use a chain instead (MedusaStrategy(heads, tree=None)).")
        index = index.to(layer.keys.device)
        end = past_length + len(rows)
        # Rows only move towards the front (rows are ascending), so the kept ones are gathered, written over the
        # tree's slots in place and the rest is sliced off: no copy of the whole cache per step.
        layer.keys[..., past_length:end, :] = layer.keys.index_select(-2, index)
        layer.values[..., past_length:end, :] = layer.values.index_select(-2, index)
        layer.keys, layer.values = layer.keys[..., :end, :], layer.values[..., :end, :]


def verify_tree(config, do_sample: bool, tree_draft: TreeDraft, scores: torch.Tensor) -> tuple[list[int], int]:
    """Dispatch to the tree verifier the config asks for (see `hf_specdec.tree`)."""
    if config.verification == "typical":
        return typical_tree_verify(tree_draft.tree, tree_draft.tokens, scores.softmax(dim=-1),
                                   config.typical_posterior_threshold, config.typical_posterior_alpha, do_sample)
    if do_sample:
        return sampling_tree_verify(tree_draft.tree, tree_draft.tokens, scores.softmax(dim=-1))
    return greedy_tree_verify(tree_draft.tree, tree_draft.tokens, scores)


def tree_step(run: DecodeRun, draft, input_ids: torch.LongTensor, draft_seconds: float,
              ) -> tuple[torch.LongTensor, bool]:
    """The tree counterpart of `decoding.chain_step`; returns (new input_ids, finished)."""
    tree_draft: TreeDraft = draft.tree
    tree, nodes = tree_draft.tree, tree_draft.tokens.to(input_ids.device)  # nodes: [N]
    past = input_ids.shape[1] - 1
    t1 = time.perf_counter()
    verify_ids = torch.cat([input_ids[:, -1:], nodes[None]], dim=-1)  # [1, N + 1]
    mask = tree_attention_mask(tree.parents, past, dtype=run.model.dtype).to(input_ids.device)
    logits, hidden = run.forward(verify_ids, past, attention_mask=mask,
                                 position_ids=tree_position_ids(tree.depths, past).to(input_ids.device))
    scores = tree_scores(run.logits_processor, input_ids, tree_draft, logits)  # [N + 1, V]
    path, next_token = verify_tree(run.strategy.config, run.do_sample, tree_draft, scores)
    t2 = time.perf_counter()

    rows = [0] + [1 + node for node in path]
    new_input_ids, finished = run.emit(input_ids, nodes[path].tolist() + [next_token])
    num_emitted = new_input_ids.shape[1] - input_ids.shape[1]
    keep_tree_path(run.cache, past, rows)
    run.cache.crop(-(run.cache.get_seq_length() - (new_input_ids.shape[1] - 1)))
    kept = torch.tensor(rows[:num_emitted], device=logits.device)
    run.record.add(scores[kept], logits[kept])
    run.strategy.observe(new_input_ids, draft, len(path), scores[kept], t2 - t1,
                         None if hidden is None else hidden[kept])
    # Stats count the tree's depth as "drafted": acceptance rate = accepted depth / tree depth.
    run.count_step(tree.max_depth, min(len(path), num_emitted), num_emitted, draft_seconds, t2 - t1)
    run.notify(nodes[path].tolist(), len(path), new_input_ids[0, input_ids.shape[1]:].tolist())
    return new_input_ids, finished
