"""One speculative step for every row at once: propose -> ONE target forward over every row's draft -> score and
verify -> emit -> commit the cache -> observe. A chain is a one-branch tree and a batch of one is a batch: its
mask-free fast path lives in `verify_inputs`, which returns no mask when nothing needs hiding."""

from __future__ import annotations

import torch

from ..compat import CACHE_KWARG
from ..stats import StepEvent
from ..strategies.base import Draft, RowOutcome
from .cache import commit, maybe_compact, self_attention_cache
from .checks import check_attention
from .drafts import RowDraft
from .emit import emit_rows
from .run import DecodeRun, Row, accepts_logits_to_keep, count_step
from .timing import synchronized_now
from .verification import Verdict, verify_rows
from .width import BatchDraftGate, VerifyCosts, choose_width


def step(run: DecodeRun, rows: list[Row], slot_mask: torch.BoolTensor | None, costs: VerifyCosts | None,
         gate: BatchDraftGate | None) -> torch.BoolTensor | None:
    """Every unfinished row drafts (unless the batch gate says drafting does not pay this step); one verify forward
    of the chosen width; rows verify, emit and learn; the cache keeps what they accepted. Returns the slot mask."""
    device = rows[0].view.device
    t0 = synchronized_now(device)
    drafting = gate is None or gate.should_draft()
    emitted_before = sum(row.stats.new_tokens for row in rows)
    proposals = propose(run, rows, drafting)
    largest = max((d.num_nodes for d in proposals if d is not None), default=0)
    width = largest if costs is None else choose_width(rows, proposals, costs)
    drafts = [p if p is None or p.num_nodes <= width else RowDraft.of(p.draft, width, device) for p in proposals]
    t1 = synchronized_now(device)
    logits, hidden = verify_forward(run, rows, drafts, width, slot_mask)  # [B, 1 + W, V], [B, 1 + W, H] | None
    t2 = synchronized_now(device)
    if costs is not None:
        costs.record(width, t2 - t1)
    verdicts = verify_rows(run, rows, drafts, logits)
    counts = emit_rows(run, rows, [None if v is None else v.tokens for v in verdicts])
    kept = [[] if v is None else ([0] + [1 + node for node in v.path])[:count] for v, count in zip(verdicts, counts)]
    drafting_rows = max(1, sum(d is not None for d in drafts))
    outcomes = [settle(run, b, row, draft, verdict, kept[b], logits[b], None if hidden is None else hidden[b],
                       (t1 - t0) / drafting_rows, t2 - t1)
                for b, (row, draft, verdict) in enumerate(zip(rows, drafts, verdicts)) if verdict is not None]
    run.strategy.observe_rows(outcomes)
    if gate is not None:
        gate.record(drafting, sum(row.stats.new_tokens for row in rows) - emitted_before,
                    synchronized_now(device) - t0)
    slot_mask = commit(run.cache, slot_mask, kept, width)
    if slot_mask is not None:
        slot_mask = maybe_compact(run.cache, slot_mask, [len(row.tokens) - 1 for row in rows])
    return slot_mask


def propose(run: DecodeRun, rows: list[Row], drafting: bool = True) -> list[RowDraft | None]:
    """Every unfinished row's draft, asked of the strategy at once; with `drafting` False none (a strategy that
    scores every position still scores this one). None for finished rows."""
    strategy, requests = run.strategy, []
    for b, row in enumerate(rows):
        if row.finished:
            continue
        budget = row.budget(run.generation_config.max_length) - 1
        max_draft = min(strategy.draft_budget(row.state), budget) if drafting else 0
        if max_draft > 0 or strategy.drafts_every_position:
            requests.append((b, row.ids, max_draft))
    drafts = dict(zip([b for b, _, _ in requests], strategy.propose_rows(requests)))
    proposals: list[RowDraft | None] = []
    for b, row in enumerate(rows):
        if row.finished:
            proposals.append(None)
            continue
        draft = drafts.get(b, Draft.empty())
        max_draft = next((k for index, _, k in requests if index == b), 0)
        nodes = max_draft if draft.tree is None else draft.tree.tree.num_nodes
        proposals.append(RowDraft.of(draft, nodes, row.view.device))
    return proposals


def verify_inputs(run: DecodeRun, rows: list[Row], drafts: list[RowDraft | None], width: int,
                  slot_mask: torch.BoolTensor | None) -> tuple[torch.LongTensor, torch.LongTensor, torch.Tensor | None]:
    """Input ids `[B, 1 + W]` (each row's last token, then its nodes padded to `width`), position ids and the 4D
    mask: each row sees its live cache slots, each node its row's last token, its ancestors and itself. A dense
    batch of one with a chain needs no mask (None): the model's own causal mask is exactly that."""
    device = rows[0].view.device
    if slot_mask is None and len(rows) == 1 and (drafts[0] is None or drafts[0].is_chain):
        row, draft = rows[0], drafts[0]
        ids = row.view[:, -1:] if draft is None or not draft.num_nodes else \
            torch.cat([row.view[:, -1:], draft.tokens[None]], dim=-1)
        past = len(row.tokens) - 1
        return ids, torch.arange(past, past + ids.shape[1], device=device)[None], None
    check_attention(run.model)
    batch = len(rows)
    ids = torch.full((batch, 1 + width), run.pad_token_id, dtype=torch.long, device=device)
    positions, visible = [], torch.eye(1 + width, dtype=torch.bool).repeat(batch, 1, 1)  # [B, 1 + W, 1 + W]
    for b, (row, draft) in enumerate(zip(rows, drafts)):
        past = len(row.tokens) - 1
        positions.append([past] * (1 + width))
        if draft is None:
            continue  # a finished row: a pad token that sees its own past, whose output nobody reads
        ids[b, :1] = row.view[0, -1:]
        if draft.num_nodes:
            ids[b, 1 : 1 + draft.num_nodes] = draft.tokens
            positions[b][1 : 1 + draft.num_nodes] = [past + depth for depth in draft.depths]
            visible[b, : 1 + draft.num_nodes, : 1 + draft.num_nodes] = visibility(draft.parents)
    if slot_mask is None:  # a dense batch of one with a tree
        slot_mask = torch.ones(batch, self_attention_cache(run.cache).get_seq_length(), dtype=torch.bool, device=device)
    allowed = torch.cat([slot_mask[:, None, :].expand(-1, 1 + width, -1), visible.to(device)], dim=-1)
    dtype = run.model.dtype
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, torch.finfo(dtype).min)
    return ids, torch.tensor(positions, device=device), mask[:, None]  # [B, 1, 1 + W, S + 1 + W]


def visibility(parents: list[int]) -> torch.BoolTensor:
    """`[N + 1, N + 1]`: row r sees column c (0 = the row's last token, 1 + i = node i)."""
    size = len(parents) + 1
    visible = torch.eye(size, dtype=torch.bool)
    visible[:, 0] = True
    for node, parent in enumerate(parents):  # parents precede children: copy the parent's row
        if parent >= 0:
            visible[1 + node] |= visible[1 + parent]
    return visible


def verify_forward(run: DecodeRun, rows: list[Row], drafts: list[RowDraft | None], width: int,
                   slot_mask: torch.BoolTensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """ONE target forward over every row's [last token, nodes]: float32 logits `[B, 1 + W, V]` and, when the strategy
    reads them, the hidden states it reads `[B, 1 + W, H or A * H]`."""
    ids, positions, mask = verify_inputs(run, rows, drafts, width, slot_mask)
    model, length = run.model, ids.shape[1]
    if model.config.is_encoder_decoder:  # decoder positions come from the cache's length
        inputs = {"decoder_input_ids": ids, **run.encoder_kwargs}
    else:
        inputs = {"input_ids": ids, "position_ids": positions}
        if mask is not None:
            inputs["attention_mask"] = mask
    if accepts_logits_to_keep(model):
        inputs["logits_to_keep"] = length
    outputs = model(**inputs, **{CACHE_KWARG: run.cache}, use_cache=True, output_hidden_states=run.hidden_wanted)
    hidden = run.hidden_states(outputs)[:, -length:] if run.hidden_wanted else None
    return outputs.logits[:, -length:].float(), hidden


def settle(run: DecodeRun, index: int, row: Row, draft: RowDraft, verdict: Verdict, kept: list[int],
           logits: torch.Tensor, hidden: torch.Tensor | None, draft_seconds: float, forward_seconds: float,
           ) -> RowOutcome:
    """A row's bookkeeping after emitting (output scores, statistics, step listeners); returns what its drafter
    learns."""
    emitted, accepted = len(kept), len(verdict.path)
    index_rows = torch.tensor(kept, device=logits.device) if not draft.is_chain else None
    scores = verdict.scores[:emitted] if index_rows is None else verdict.scores[index_rows]
    if run.record.as_dict:
        run.record.add(scores, logits[:emitted] if index_rows is None else logits[index_rows])
    row_hidden = None if hidden is None else (hidden[:emitted] if index_rows is None else hidden[index_rows])
    count_step(row.stats, draft.depth, min(accepted, emitted), emitted, draft_seconds, forward_seconds)
    listeners = run.strategy.step_listeners
    if listeners:
        drafted = draft.tokens.tolist() if draft.is_chain else verdict.tokens[:accepted]
        event = StepEvent(tuple(drafted), accepted, tuple(row.tokens[len(row.tokens) - emitted:]))
        for listener in listeners:
            listener(event)
    if draft.depth:
        row.acceptance = 0.3 * (accepted / draft.depth) + 0.7 * row.acceptance
    return RowOutcome(index, row.ids, draft.draft, accepted, scores, forward_seconds, row_hidden)
