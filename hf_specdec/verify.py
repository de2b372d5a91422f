"""Verifiers: pure tensor functions that decide which drafted tokens the target accepts.

Every chain function takes one row's draft of K tokens and returns `(num_accepted, next_token)` (the engine calls
them per row; `greedy_tree_accept` takes a whole batch of trees and stays on the device): the target keeps `draft_tokens[:num_accepted]` and then appends `next_token` (the correction on a rejection,
or the bonus token when all K are accepted). Names follow Leviathan et al. (2023), Transformers' convention:
`p` is the target distribution and `q` the draft distribution, both after the same logits processors.
"""

from __future__ import annotations

import torch


def greedy_verify(draft_tokens: torch.LongTensor, target_scores: torch.Tensor) -> tuple[int, int]:
    """Exact greedy match: accept drafted tokens while each equals the target's argmax.

    Args:
        draft_tokens: `[K]` drafted token ids (K may be 0).
        target_scores: `[K + 1, V]` processed target scores; row i scores the token after `draft_tokens[:i]`.
    """
    _check_shapes(draft_tokens, target_scores)
    target_tokens = target_scores.argmax(dim=-1)  # [K + 1]
    matches = (draft_tokens == target_tokens[:-1]).to(torch.int64).cumprod(dim=0)  # [K], 1 until the first miss
    num_accepted = int(matches.sum())
    return num_accepted, int(target_tokens[num_accepted])


def speculative_sampling_verify(
    draft_tokens: torch.LongTensor,
    p: torch.Tensor,
    q: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[int, int]:
    """Lossless rejection sampling (Leviathan et al. 2023, algorithm 1; Chen et al. 2023).

    Token i is accepted with probability min(1, p_i(x) / q_i(x)); at the first rejection the next token is drawn
    from norm(max(0, p_i - q_i)); if all K are accepted the bonus token is drawn from p_K. The output then follows
    p exactly, whatever q is.

    Args:
        draft_tokens: `[K]` drafted token ids.
        p: `[K + 1, V]` target probabilities.
        q: `[K, V]` draft probabilities, or None for a deterministic drafter (n-gram): q is then a point mass on each
            drafted token, so acceptance is p_i(x) and the residual is p_i with x removed.
        generator: optional RNG for reproducible draws.
    """
    _check_shapes(draft_tokens, p)
    num_drafted = draft_tokens.shape[0]
    positions = torch.arange(num_drafted, device=p.device)
    p_x = p[positions, draft_tokens]  # [K]
    if q is None:
        q_x = torch.ones_like(p_x)
    else:
        if q.shape != (num_drafted, p.shape[-1]):
            raise ValueError(f"q must have shape [K, V] = {[num_drafted, p.shape[-1]]}, got {list(q.shape)}.")
        q_x = q[positions, draft_tokens]
    r = torch.rand(num_drafted, device=p.device, generator=generator)
    # r < p/q written without the division, so q_x == 0 (a token the draft could not have drawn) is simply rejected.
    rejected = ~(r * q_x < p_x)
    num_accepted = int(rejected.to(torch.int64).cumsum(0).eq(0).sum())

    if num_accepted == num_drafted:
        next_distribution = p[num_drafted]
    else:
        q_row = _point_mass(draft_tokens[num_accepted], p.shape[-1], p) if q is None else q[num_accepted]
        next_distribution = residual_distribution(p[num_accepted], q_row)
    next_token = torch.multinomial(next_distribution, 1, generator=generator)
    return num_accepted, int(next_token)


def residual_distribution(p_row: torch.Tensor, q_row: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p - q)) for one position, `[V]`. Falls back to p when p == q to rounding (then no rejection can
    happen in exact arithmetic, so the fallback only absorbs float error)."""
    residual = (p_row - q_row).clamp_min(0)
    total = residual.sum()
    if total <= torch.finfo(residual.dtype).tiny:
        return p_row
    return residual / total


def typical_acceptance_verify(
    draft_tokens: torch.LongTensor,
    p: torch.Tensor,
    posterior_threshold: float = 0.09,
    posterior_alpha: float = 0.3,
    do_sample: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[int, int]:
    """Typical acceptance (Medusa, Cai et al. 2024). LOSSY: the output no longer follows p exactly.

    A drafted token x is accepted while p_i(x) > min(epsilon, delta * exp(-H(p_i))), with epsilon =
    `posterior_threshold` and delta = `posterior_alpha`. The next token is drawn from (or, greedy, the argmax of) p
    at the first rejection or at the bonus position.
    """
    _check_shapes(draft_tokens, p)
    num_drafted = draft_tokens.shape[0]
    positions = torch.arange(num_drafted, device=p.device)
    entropy = -(p * torch.log(p.clamp_min(1e-30))).sum(dim=-1)  # [K + 1]
    threshold = torch.minimum(torch.full_like(entropy, posterior_threshold), posterior_alpha * torch.exp(-entropy))
    accepted = p[positions, draft_tokens] > threshold[:num_drafted]  # [K]
    num_accepted = int(accepted.to(torch.int64).cumprod(0).sum())
    row = p[num_accepted]
    next_token = torch.multinomial(row, 1, generator=generator) if do_sample else row.argmax()
    return num_accepted, int(next_token)


def _point_mass(token: torch.Tensor, vocab_size: int, like: torch.Tensor) -> torch.Tensor:
    row = torch.zeros(vocab_size, dtype=like.dtype, device=like.device)
    row[token] = 1.0
    return row


def _check_shapes(draft_tokens: torch.Tensor, target: torch.Tensor) -> None:
    if draft_tokens.dim() != 1 or target.dim() != 2 or target.shape[0] != draft_tokens.shape[0] + 1:
        raise ValueError(
            "Expected draft_tokens of shape [K] and target scores/probs of shape [K + 1, V]; got "
            f"{list(draft_tokens.shape)} and {list(target.shape)}."
        )


def greedy_tree_accept(node_tokens: torch.LongTensor, parents: torch.LongTensor, depths: torch.LongTensor,
                       target_tokens: torch.LongTensor, max_depth: int | None = None) -> torch.LongTensor:
    """Exact greedy match over a batch of trees (a chain is a tree with one branch), without leaving the device.

    A node is accepted when its token is the target's argmax at its parent's row and its parent was accepted; the
    deepest accepted node wins (ties: the lowest index, i.e. the best-ranked sibling). Padding nodes carry a token
    no argmax equals (e.g. -1).

    Args:
        node_tokens: `[B, N]` node tokens. parents: `[B, N]` parent of each node (-1: the row's last token), parents
            precede children. depths: `[B, N]` depth of each node (1 = the first drafted position).
        target_tokens: `[B, N + 1]` the target's argmax at each row of the verify forward (0 = the last token).
        max_depth: the deepest node's depth, if known (fewer rounds); default N.
    Returns:
        `[B]` the deepest accepted node per row, -1 when none was accepted; the next token is then
        `target_tokens[b, 1 + best]`.
    """
    num_nodes = node_tokens.shape[1]
    if num_nodes == 0:
        return torch.full(node_tokens.shape[:1], -1, dtype=torch.long, device=node_tokens.device)
    matches = node_tokens == target_tokens.gather(1, parents + 1)  # [B, N]
    accepted = matches
    for _ in range((max_depth or num_nodes) - 1):  # after depth - 1 rounds every ancestor's verdict reached its leaves
        parent_ok = accepted.gather(1, parents.clamp_min(0)) | (parents < 0)
        accepted = matches & parent_ok
    index = torch.arange(num_nodes, device=node_tokens.device)
    rank = torch.where(accepted, depths * (num_nodes + 1) + (num_nodes - index), -1)  # deepest, then lowest index
    best = rank.argmax(dim=1)
    return torch.where(accepted.any(dim=1), best, -1)
