"""One verifier dispatch for every row of a step: greedy over the whole batch in one device computation (one
transfer to the host per step), lossless rejection sampling or LOSSY typical acceptance per row (pure functions of
`hf_specdec.verify` / `hf_specdec.tree`)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from transformers import GenerationConfig

from ..config import StrategyConfig
from ..tree import sampling_tree_verify, typical_tree_verify
from ..verify import greedy_tree_accept, speculative_sampling_verify, typical_acceptance_verify
from .drafts import RowDraft
from .run import DecodeRun, Row
from .scoring import row_scores, select_token


@dataclass
class Verdict:
    """A row's verified step: the accepted nodes (from depth 1), the tokens to emit (the accepted nodes' tokens,
    then the target's own next token), and the scores `[1 + N, V]` verified against."""

    path: list[int]
    tokens: list[int]
    scores: torch.Tensor


def check_verification(config: StrategyConfig, generation_config: GenerationConfig) -> None:
    """Refuses greedy-only verification when sampling; warns loudly about typical acceptance."""
    if config.verification == "typical":
        warnings.warn("hf_specdec: verification='typical' is LOSSY: outputs will not follow the target's "
                      "distribution. Use verification='auto' for lossless decoding.", stacklevel=5)
    elif config.verification == "greedy" and generation_config.do_sample:
        raise ValueError("verification='greedy' only matches plain generate with do_sample=False; use "
                         "verification='auto' (lossless speculative sampling) when sampling.")


def verify_rows(run: DecodeRun, rows: list[Row], drafts: list[RowDraft | None], logits: torch.Tensor,
                ) -> list[Verdict | None]:
    """Verdicts for every row with a draft; `logits` `[B, 1 + W, V]` from the verify forward."""
    scores = [None if d is None else row_scores(run.strategy, row.state, row.view, d, logits[b, : 1 + d.num_nodes])
              for b, (row, d) in enumerate(zip(rows, drafts))]
    config = run.strategy.config
    if not run.do_sample and config.verification != "typical":
        verdicts = greedy_verdicts(drafts, scores)
    else:
        verdicts = [None if d is None else sampled_verdict(config, run.do_sample, d, s)
                    for d, s in zip(drafts, scores)]
    for row, draft, verdict in zip(rows, drafts, verdicts):
        if verdict is not None and draft.is_chain and draft.num_nodes and len(verdict.path) == draft.num_nodes:
            take_bonus(run, row, draft, verdict)
    return verdicts


def greedy_verdicts(drafts: list[RowDraft | None], scores: list[torch.Tensor | None]) -> list[Verdict | None]:
    """Exact greedy match for all rows at once: one `[B, 2 + W]` transfer (best node, the target's argmax rows)."""
    live = [b for b, d in enumerate(drafts) if d is not None]
    width = max(drafts[b].num_nodes for b in live)
    device = scores[live[0]].device
    node_tokens = torch.full((len(live), width), -1, dtype=torch.long, device=device)
    parents = torch.full((len(live), width), -1, dtype=torch.long, device=device)
    depths = torch.zeros(len(live), width, dtype=torch.long, device=device)
    argmax = torch.zeros(len(live), 1 + width, dtype=torch.long, device=device)
    for i, b in enumerate(live):
        draft, n = drafts[b], drafts[b].num_nodes
        argmax[i, : 1 + n] = scores[b].argmax(dim=-1)
        if n:
            node_tokens[i, :n] = draft.tokens
            if draft.is_chain:  # made on the device: no host-to-device copy for a chain's shape
                parents[i, :n] = torch.arange(-1, n - 1, device=device)
                depths[i, :n] = torch.arange(1, n + 1, device=device)
            else:
                parents[i, :n] = torch.tensor(draft.parents, device=device)
                depths[i, :n] = torch.tensor(draft.depths, device=device)
    max_depth = max((drafts[b].depth for b in live), default=0)
    best = greedy_tree_accept(node_tokens, parents, depths, argmax, max_depth=max(max_depth, 1))
    packed = torch.cat([best[:, None], argmax], dim=1).tolist()  # the step's one verification transfer
    verdicts: list[Verdict | None] = [None] * len(drafts)
    for i, b in enumerate(live):
        node, targets = packed[i][0], packed[i][1:]
        path = drafts[b].path_to(node)
        tokens = [targets[1 + drafts[b].parents[n]] for n in path] + [targets[1 + node]]
        verdicts[b] = Verdict(path, tokens, scores[b])
    return verdicts


def sampled_verdict(config: StrategyConfig, do_sample: bool, draft: RowDraft, scores: torch.Tensor) -> Verdict:
    """Lossless rejection sampling (chains with the draft's q, or point masses; trees recursively), or typical."""
    typical = config.verification == "typical"
    probs = scores.softmax(dim=-1)
    if draft.is_chain:
        if typical:
            accepted, next_token = typical_acceptance_verify(draft.tokens, probs, config.typical_posterior_threshold,
                                                             config.typical_posterior_alpha, do_sample=do_sample)
        else:
            q = None if draft.draft.probs is None else draft.draft.probs[: draft.num_nodes]
            accepted, next_token = speculative_sampling_verify(draft.tokens, probs, q)
        path = list(range(accepted))
    elif typical:
        path, next_token = typical_tree_verify(draft.tree.tree, draft.tokens, probs, config.typical_posterior_threshold,
                                               config.typical_posterior_alpha, do_sample)
    else:
        path, next_token = sampling_tree_verify(draft.tree.tree, draft.tokens, probs)
    accepted_tokens = draft.tokens[path].tolist() if path else []
    return Verdict(path, accepted_tokens + [next_token], scores)


def take_bonus(run: DecodeRun, row: Row, draft: RowDraft, verdict: Verdict) -> None:
    """Every drafted token accepted: a strategy whose bonus row was provisional (a mixture's q*) gives it now."""
    bonus = run.strategy.bonus_scores(row.state, row.ids, draft.tokens)
    if bonus is not None:  # [V]
        verdict.scores[-1] = bonus
        verdict.tokens[-1] = select_token(bonus, run.do_sample)
