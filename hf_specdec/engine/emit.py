"""Emitting a step's tokens through generate's stopping criteria: every row's candidates are appended, the criteria
are evaluated at every new prefix on the device, and ONE transfer tells where each row stops (EOS or a stop string
inside an accepted draft ends the output exactly there, as in plain decoding)."""

from __future__ import annotations

import torch

from .run import DecodeRun, Row


def emit_rows(run: DecodeRun, rows: list[Row], candidates: list[list[int] | None]) -> list[int]:
    """Appends to each row the longest prefix of its `candidates` that plain decoding would have emitted; returns
    how many tokens each row took (0 for rows without candidates) and marks rows that stopped as finished."""
    extended: list[tuple[int, torch.LongTensor]] = []
    flags = []
    for b, (row, tokens) in enumerate(zip(rows, candidates)):
        if not tokens:
            continue
        new = torch.tensor(tokens, dtype=row.view.dtype, device=row.view.device)
        full = torch.cat([row.view, new[None]], dim=-1)  # [1, L + m]
        length = row.view.shape[1]
        flags.extend(run.stopping_criteria(full[:, : length + i], None).any() for i in range(1, len(tokens) + 1))
        extended.append((b, full))
    stops = torch.stack(flags).tolist() if flags else []  # the step's one stopping transfer
    counts = [0] * len(rows)
    offset = 0
    for b, full in extended:
        row, m = rows[b], len(candidates[b])
        row_stops = stops[offset : offset + m]
        offset += m
        count = row_stops.index(True) + 1 if True in row_stops else m
        row.finished = True in row_stops
        emitted = candidates[b][:count]
        row.view = full[:, : row.view.shape[1] + count]
        row.tokens.extend(emitted)
        row.stats.new_tokens += count
        counts[b] = count
        if run.streamer is not None:
            run.streamer.put(torch.tensor([emitted]))  # from the host mirror: no device read
    return counts
