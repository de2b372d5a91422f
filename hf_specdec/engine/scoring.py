"""The target's scores at every verified position, after generate's logits processors, each position with the
prefix it would see in plain decoding (so repetition penalties, min-length and the like act exactly as there)."""

from __future__ import annotations

import copy

import torch
from transformers import LogitsProcessorList

from .drafts import RowDraft


# Processor attributes generate sizes to the batch (one entry per row): the engine calls processors one row at a
# time, so each row gets copies holding its own entry.
PER_ROW_ATTRIBUTES = ("prompt_ignore_length",)


def row_processors(logits_processor: LogitsProcessorList, row: int, batch: int) -> LogitsProcessorList:
    """The processors as row `row` of a `batch`-row call sees them (the list itself for a batch of one)."""
    if batch == 1:
        return logits_processor
    processors = LogitsProcessorList()
    for processor in logits_processor:
        sliced = {name: value[row : row + 1] for name in PER_ROW_ATTRIBUTES
                  if torch.is_tensor(value := getattr(processor, name, None)) and value.shape[:1] == (batch,)}
        if sliced:
            processor = copy.copy(processor)
            processor.__dict__.update(sliced)
        processors.append(processor)
    return processors


def process_scores(logits_processor: LogitsProcessorList, input_ids: torch.LongTensor,
                   draft_tokens: torch.LongTensor, logits: torch.Tensor) -> torch.Tensor:
    """A chain: input_ids `[1, n]`; draft_tokens `[k]`; logits `[k + 1, V]` -> scores `[k + 1, V]`."""
    if len(logits_processor) == 0:
        return logits.clone()
    full = torch.cat([input_ids, draft_tokens[None]], dim=-1)  # [1, n + k]
    n = input_ids.shape[1]
    rows = [logits_processor(full[:, : n + i], logits[i : i + 1].clone()) for i in range(logits.shape[0])]
    return torch.cat(rows, dim=0)


def tree_scores(logits_processor: LogitsProcessorList, input_ids: torch.LongTensor, draft: RowDraft,
                logits: torch.Tensor) -> torch.Tensor:
    """A tree: row 0 with the prefix alone, row 1 + i with node i's ancestors appended. logits `[N + 1, V]`."""
    if len(logits_processor) == 0:
        return logits.clone()
    rows = [logits_processor(input_ids, logits[:1].clone())]
    for node in range(draft.num_nodes):
        path = draft.tokens[draft.path_to(node)]  # [depth]
        prefix = torch.cat([input_ids, path[None]], dim=-1)
        rows.append(logits_processor(prefix, logits[1 + node : 2 + node].clone()))
    return torch.cat(rows, dim=0)


def row_scores(strategy, state, view: torch.LongTensor, draft: RowDraft, logits: torch.Tensor) -> torch.Tensor:
    """The scores `[1 + N, V]` a row's draft is verified against: processed, and for a chain what the strategy
    verifies against (the target's own, or a mixture's log q*)."""
    if draft.is_chain:
        scores = process_scores(state.logits_processor, view, draft.tokens, logits)
        return strategy.verification_scores(state, scores, draft.draft)
    return tree_scores(state.logits_processor, view, draft, logits)


def select_token(scores: torch.Tensor, do_sample: bool) -> int:
    """Plain decoding's choice from processed scores `[V]`: argmax, or a draw from softmax."""
    if do_sample:
        return int(torch.multinomial(scores.softmax(dim=-1), 1))
    return int(scores.argmax())
