"""Speculative decoding of a batch: B rows (left-padded prompts, or `num_return_sequences` copies of one prompt), ONE
target forward per step over every row's draft. A chain is a tree with one branch, so chains and trees (Medusa) go
through the same step.

Cache design: a validity mask over cache slots (`slot_mask` `[B, S]`). Each step appends 1 + W slots to every row
(its last token and W draft nodes, the widest draft taken this step); the slots of rejected nodes, of tree siblings
and of the padding of narrower drafts are only masked out (the step's 4D attention mask reads `slot_mask`), never
copied. Slots that no row keeps at the end are cropped each step, so a row whose drafts are accepted costs nothing
extra; the cache is compacted (each row's live slots gathered to the right, left-padded) only when more than half of
it is dead, which bounds the copying to a constant factor of the cache's growth. Position ids are per row: the
row's real tokens so far, plus the node's depth.

Each row has its own strategy (`strategy.fork()`: its own K schedule, cost gate, n-gram store, draft-model cache),
its own view of the sequence as plain batched `generate` holds it (left padding included, which is what the logits
processors and stopping criteria see), and finishes on its own. How wide the step's verify is, is chosen for the
batch (`choose_width`): the width that maximises expected tokens per second under measured verify costs, cutting
drafts longer than that, so one row with a long draft cannot force a wide verify on rows without drafts when that
costs more than it yields.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache

from .compat import CACHE_KWARG
from .decode_run import DecodeRun, Verifier, accepts_logits_to_keep, last_hidden_states
from .stats import GenerationStats
from .strategies.base import Draft
from .tree import TreeDraft, build_tree, tree_visibility
from .tree_decoding import tree_scores, verify_tree

COMPACT_MIN_SLOTS = 64  # never compact a cache shorter than this


@dataclass
class Row:
    """One row of the batch."""

    run: DecodeRun  # the batch's model, cache, processors and criteria; this row's strategy and statistics
    verifier: Verifier  # for chain drafts (the batch's one: verifiers are pure)
    view: torch.LongTensor  # [1, L]: the row as plain batched generate holds it (left padding, prompt, output)
    padding: int  # left padding in `view`
    finished: bool = False
    acceptance: float = 0.5  # EMA of the share of drafted tokens (tree: of its depth) accepted, for `choose_width`

    @property
    def tokens(self) -> torch.LongTensor:
        """`[1, n]` the row's real tokens: what its drafter reads."""
        return self.view[:, self.padding:]

    @property
    def stats(self) -> GenerationStats:
        return self.run.stats


@dataclass
class RowDraft:
    """A row's draft this step as a tree: node tokens `[N]`, their parents `[N]` (-1: the row's last token) and
    depths `[N]`; `tree` is set for tree drafts (verified with the tree verifiers), None for a chain."""

    draft: Draft
    tokens: torch.LongTensor
    parents: torch.LongTensor
    depths: torch.LongTensor
    tree: TreeDraft | None = None

    @classmethod
    def of(cls, draft: Draft, max_nodes: int) -> RowDraft:
        """The draft cut to its first `max_nodes` nodes (parents precede children, so the cut is still a tree)."""
        if draft.tree is not None:
            tree_draft = draft.tree
            kept = list(range(min(max_nodes, tree_draft.tree.num_nodes)))
            if not kept:
                return cls.of(Draft(draft.tokens[:0], bucket=draft.bucket), 0)
            if len(kept) < tree_draft.tree.num_nodes:
                tree_draft = TreeDraft(build_tree([tree_draft.tree.paths[i] for i in kept]), tree_draft.tokens[kept])
            tree = tree_draft.tree
            return cls(draft, tree_draft.tokens, tree.parents, tree.depths, tree_draft)
        tokens = draft.tokens[:max_nodes]
        k = tokens.numel()
        if k < draft.tokens.numel():  # q rows beyond the cut go too (a mixture keeps the first position's)
            probs = None if draft.probs is None else draft.probs[: max(k, 1)]
            draft = Draft(tokens, probs, draft.bucket)
        return cls(draft, tokens, torch.arange(k) - 1, torch.arange(1, k + 1))

    @property
    def num_nodes(self) -> int:
        return self.tokens.numel()


class VerifyCosts:
    """Seconds of a batched verify forward of 1 + W tokens per row, measured online (EMA per width); unmeasured widths
    are interpolated as cost(0) * (1 + slope * W), the slope learnt from what was measured (prior from the CPU cost
    table in ../shared/MODELS.md: a 5-token verify costs ~1.8x a step at B = 4)."""

    def __init__(self, batch_size: int, ema_alpha: float = 0.3) -> None:
        self.seconds: dict[int, float] = {}
        self.slope = 0.04 * batch_size
        self.ema_alpha = ema_alpha

    def record(self, width: int, seconds: float) -> None:
        old = self.seconds.get(width)
        self.seconds[width] = seconds if old is None else self.ema_alpha * seconds + (1 - self.ema_alpha) * old
        base = self.seconds.get(0)
        if width and base:
            slope = max(0.0, (self.seconds[width] / base - 1) / width)
            self.slope = self.ema_alpha * slope + (1 - self.ema_alpha) * self.slope

    def estimate(self, width: int) -> float:
        if width in self.seconds:
            return self.seconds[width]
        base = self.seconds.get(0)
        if base is None:  # from any measured width; before any, relative units (only ratios are compared)
            base = next((t / (1 + self.slope * w) for w, t in self.seconds.items()), 1.0)
        return base * (1 + self.slope * width)


class BatchDraftGate:
    """Whether the batch drafts this step at all. Rows draft one after another, so at a large batch their drafting
    (a draft model's forwards, Medusa heads' vocabulary projections) can cost more than a batched decode step gains:
    tokens per second of drafting steps and of plain steps are both measured (EMA), the better mode is used and the
    other probed every `probe_every` steps, half as often each time it loses again (up to `max_probe_every`)."""

    def __init__(self, probe_every: int = 8, max_probe_every: int = 64, ema_alpha: float = 0.3) -> None:
        self.rate: dict[bool, float | None] = {True: None, False: None}
        self.probe_every, self.max_probe_every, self.ema_alpha = probe_every, max_probe_every, ema_alpha
        self.interval, self.steps, self.best = probe_every, 0, True

    def should_draft(self) -> bool:
        if self.rate[True] is None or self.rate[False] is None:  # measure drafting first, then plain once
            return self.rate[True] is None
        best = self.rate[True] >= self.rate[False]
        if best != self.best:
            self.best, self.interval, self.steps = best, self.probe_every, 0
        self.steps += 1
        if self.steps % self.interval:
            return best
        self.steps, self.interval = 0, min(self.max_probe_every, 2 * self.interval)
        return not best

    def record(self, drafted: bool, tokens: int, seconds: float) -> None:
        rate, old = tokens / max(seconds, 1e-9), self.rate[drafted]
        self.rate[drafted] = rate if old is None else self.ema_alpha * rate + (1 - self.ema_alpha) * old


def expected_accepted(acceptance: float, nodes: int) -> float:
    """Expected accepted tokens of a chain of `nodes` drafted tokens, each accepted with `acceptance` given the
    previous ones."""
    return sum(acceptance ** i for i in range(1, nodes + 1))


CUT_WIDTHS = (1, 2, 3, 4, 6, 8)  # widths tried besides the drafts' own sizes: a long draft cut short often pays


def choose_width(rows: list[Row], drafts: list[RowDraft | None], costs: VerifyCosts) -> int:
    """The verify width W (draft nodes per row) with the most expected tokens per second; rows' drafts longer than
    W are cut to W. Candidates: 0, every row's draft size and the `CUT_WIDTHS` below the largest."""
    sizes = {d.num_nodes for d in drafts if d is not None}
    largest = max(sizes, default=0)
    sizes = sorted({0} | sizes | {w for w in CUT_WIDTHS if w < largest})
    best, best_rate = 0, -1.0
    for width in sizes:
        tokens = sum(1 + expected_accepted(row.acceptance, min(width, d.num_nodes))
                     for row, d in zip(rows, drafts) if d is not None)
        rate = tokens / costs.estimate(width)
        if rate > best_rate:
            best, best_rate = width, rate
    return best


# ---- the loop ------------------------------------------------------------------------------------------------------
def batched_decode(run: DecodeRun, input_ids: torch.LongTensor, model_kwargs: dict, verifier: Verifier,
                   ) -> torch.LongTensor:
    """Decodes every row of `input_ids` (`[B, L]`, left padding as `model_kwargs["attention_mask"]` says) to its end;
    returns the sequences right-padded with the pad token, as plain batched `generate` does. The cache is left
    compacted: each row's live slots (all its tokens but the last) at the right end, left-padded."""
    rows = start_rows(run, input_ids, model_kwargs, verifier)
    try:
        slot_mask = prefill(run, rows, input_ids, model_kwargs)
        # A strategy told not to skip unprofitable drafts (`skip_unprofitable_drafts=False`) drafts every step here too.
        gated = len(rows) > 1 and getattr(run.strategy.config, "skip_unprofitable_drafts", True)
        costs, gate = VerifyCosts(len(rows)), BatchDraftGate() if gated else None
        while not all(row.finished for row in rows):
            slot_mask = batch_step(run, rows, slot_mask, costs, gate)
        if not bool(slot_mask.all()):
            compact(run.cache, slot_mask)
    finally:
        for row in rows:
            row.run.strategy.end()
    for row in rows:
        row.run.strategy.finish_stats(row.stats)
    run.stats = combine_stats([row.stats for row in rows], run.strategy.lossless)
    return padded_sequences(rows, pad_token_id(run))


def start_rows(run: DecodeRun, input_ids, model_kwargs, verifier: Verifier) -> list[Row]:
    mask = model_kwargs.get("attention_mask")
    rows = []
    for b in range(input_ids.shape[0]):
        padding = 0 if mask is None else int((mask[b].cumsum(0) == 0).sum())
        if mask is not None and not bool(mask[b, padding:].all()):
            raise ValueError("The attention_mask has padding on the right (or inside a row); pad on the left, as for "
                             "plain batched generate: tokenizer.padding_side = 'left'.")
        strategy = run.strategy.fork()
        strategy.batch_rows = input_ids.shape[0]
        row_run = DecodeRun(run.model, strategy, run.cache, run.logits_processor, run.stopping_criteria,
                            run.generation_config)
        row = Row(row_run, verifier, input_ids[b : b + 1], padding)
        row.run.strategy.begin(run.model, row.tokens, run.generation_config, run.logits_processor)
        rows.append(row)
    return rows


def prefill(run: DecodeRun, rows: list[Row], input_ids, model_kwargs) -> torch.BoolTensor:
    """generate's own prefill over the padded prompts; each row emits its first token like a plain step. Returns the
    slot mask `[B, L]`."""
    start = time.perf_counter()
    hidden_wanted = run.strategy.needs_hidden_states
    outputs = run.model._prefill(input_ids, run.generation_config,
                                 {**model_kwargs, "output_hidden_states": True} if hidden_wanted else model_kwargs)
    logits = outputs.logits[:, -1].float()  # [B, V]
    hidden = last_hidden_states(run.model, outputs) if hidden_wanted else None  # [B, L, H]
    for b, row in enumerate(rows):
        strategy = row.run.strategy
        scores, token = row.run.first_token(row.view, logits[b : b + 1], row.tokens)
        row.view, row.finished = row.run.emit(row.view, [token])
        strategy.observe(row.tokens, Draft.empty(), 0, scores, None,
                         None if hidden is None else hidden[b, row.padding:])  # the real prompt's rows
        row.stats.target_forwards += 1
    seconds = time.perf_counter() - start
    for row in rows:
        row.stats.prefill_time = seconds
    mask = model_kwargs.get("attention_mask")
    return torch.ones_like(input_ids, dtype=torch.bool) if mask is None else mask.bool()


def batch_step(run: DecodeRun, rows: list[Row], slot_mask: torch.BoolTensor, costs: VerifyCosts,
               gate: BatchDraftGate | None) -> torch.BoolTensor:
    """Every unfinished row drafts (unless the gate says drafting does not pay this step); one verify forward of the
    chosen width; each row verifies, emits and learns; the cache keeps what the rows accepted. Returns the new slot
    mask."""
    t0 = time.perf_counter()
    drafting = gate is None or gate.should_draft()
    emitted_before = sum(row.stats.new_tokens for row in rows)
    proposals = [None if row.finished else propose_row(row, drafting) for row in rows]
    width = choose_width(rows, proposals, costs)
    drafts = [None if p is None else RowDraft.of(p.draft, width) for p in proposals]
    t1 = time.perf_counter()
    logits, hidden = verify_forward(run, rows, drafts, width, slot_mask)  # [B, 1 + W, V], [B, 1 + W, H] | None
    t2 = time.perf_counter()
    costs.record(width, t2 - t1)
    new_slots = torch.zeros(len(rows), 1 + width, dtype=torch.bool, device=slot_mask.device)
    for b, (row, draft) in enumerate(zip(rows, drafts)):
        if draft is not None:
            kept = settle_row(row, draft, logits[b], None if hidden is None else hidden[b], t2 - t1,
                              (t1 - t0) / max(1, sum(d is not None for d in drafts)))
            new_slots[b, kept] = True
    if gate is not None:
        gate.record(drafting, sum(row.stats.new_tokens for row in rows) - emitted_before, time.perf_counter() - t0)
    return commit(run.cache, torch.cat([slot_mask, new_slots], dim=1))


def propose_row(row: Row, drafting: bool = True) -> RowDraft:
    """The row's draft; with `drafting` False none (a strategy that scores every position still scores this one)."""
    run = row.run
    budget = run.generation_config.max_length - row.view.shape[1]  # tokens this row may still emit, >= 1
    max_draft = min(run.strategy.draft_budget(), budget - 1) if drafting else 0
    wants = max_draft > 0 or run.strategy.drafts_every_position
    draft = run.strategy.propose(row.tokens, max_draft) if wants else Draft.empty()
    return RowDraft.of(draft, max_draft if draft.tree is None else draft.tree.tree.num_nodes)


def verify_forward(run: DecodeRun, rows: list[Row], drafts: list[RowDraft | None], width: int,
                   slot_mask: torch.BoolTensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """ONE target forward of [last token, draft nodes padded to `width`] for every row, with a 4D mask: each row
    sees its live cache slots, and each node its row's last token, its ancestors and itself."""
    batch, past = slot_mask.shape
    device = slot_mask.device
    ids = torch.full((batch, 1 + width), pad_token_id(run), dtype=torch.long, device=device)  # [B, 1 + W]
    positions = torch.zeros(batch, 1 + width, dtype=torch.long, device=device)  # [B, 1 + W]
    visible = torch.eye(1 + width, dtype=torch.bool, device=device).repeat(batch, 1, 1)  # [B, 1 + W, 1 + W]
    for b, (row, draft) in enumerate(zip(rows, drafts)):
        positions[b] = row.tokens.shape[1] - 1
        if draft is None:
            continue  # a finished row: a pad token that sees its own past, whose output nobody reads
        ids[b, 0] = row.view[0, -1]
        n = draft.num_nodes
        if n:
            ids[b, 1 : 1 + n] = draft.tokens.to(device)
            positions[b, 1 : 1 + n] += draft.depths.to(device)
            visible[b, : 1 + n, : 1 + n] = tree_visibility(draft.parents).to(device)
    allowed = torch.cat([slot_mask[:, None, :].expand(batch, 1 + width, past), visible], dim=-1)  # [B, 1+W, S+1+W]
    dtype = run.model.dtype
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, torch.finfo(dtype).min)
    extra = {"logits_to_keep": 1 + width} if accepts_logits_to_keep(run.model) else {}
    hidden_wanted = run.strategy.needs_hidden_states
    outputs = run.model(input_ids=ids, position_ids=positions, attention_mask=mask[:, None], use_cache=True,
                        output_hidden_states=hidden_wanted, **{CACHE_KWARG: run.cache}, **extra)
    hidden = last_hidden_states(run.model, outputs)[:, -(1 + width):] if hidden_wanted else None
    return outputs.logits[:, -(1 + width):].float(), hidden


def settle_row(row: Row, draft: RowDraft, logits: torch.Tensor, hidden: torch.Tensor | None, forward_seconds: float,
               draft_seconds: float) -> list[int]:
    """Verifies one row's draft against its rows of the verify forward (`logits` `[1 + W, V]`), emits, lets the
    row's strategy learn. Returns the forward rows whose cache slots the row keeps (its last token + accepted nodes,
    all but the last emitted token)."""
    run, strategy, n = row.run, row.run.strategy, draft.num_nodes
    logits = logits[: 1 + n]  # [1 + n, V]
    if draft.tree is not None:
        scores = tree_scores(run.logits_processor, row.view, draft.tree, logits)  # [1 + n, V]
        path, next_token = verify_tree(strategy.config, run.do_sample, draft.tree, scores)
        num_accepted, accepted, drafted = len(path), draft.tokens[path].tolist(), draft.tree.tree.max_depth
        slots = [0] + [1 + node for node in path]
    else:
        num_accepted, next_token, scores = run.verify_chain(row.verifier, row.view, draft.draft, draft.tokens,
                                                            logits, row.tokens)
        accepted, drafted, slots = draft.tokens[:num_accepted].tolist(), n, list(range(num_accepted + 1))
    view, row.finished = run.emit(row.view, accepted + [next_token])
    emitted = view.shape[1] - row.view.shape[1]
    row.view, kept = view, slots[:emitted]
    strategy.observe(row.tokens, draft.draft, num_accepted, scores[kept], forward_seconds,
                     None if hidden is None else hidden[kept])
    run.count_step(drafted, min(num_accepted, emitted), emitted, draft_seconds, forward_seconds)
    run.notify(draft.tokens[:drafted].tolist() if draft.tree is None else accepted, num_accepted,
               view[0, -emitted:].tolist())
    if drafted:
        row.acceptance = 0.3 * (num_accepted / drafted) + 0.7 * row.acceptance
    return kept


def commit(cache: DynamicCache, slot_mask: torch.BoolTensor) -> torch.BoolTensor:
    """Crops the slots no row keeps at the end; compacts when over half of the cache is dead. Returns the mask."""
    live = slot_mask.any(dim=0).nonzero()
    keep = int(live.max()) + 1 if live.numel() else 0
    if keep < slot_mask.shape[1]:
        cache.crop(keep - slot_mask.shape[1])
        slot_mask = slot_mask[:, :keep]
    if slot_mask.shape[1] >= COMPACT_MIN_SLOTS and 2 * int(slot_mask.sum(dim=1).max()) < slot_mask.shape[1]:
        slot_mask = compact(cache, slot_mask)
    return slot_mask


def compact(cache: DynamicCache, slot_mask: torch.BoolTensor) -> torch.BoolTensor:
    """Gathers each row's live slots to the right end (left padding before them), in order; returns the new mask."""
    width = int(slot_mask.sum(dim=1).max())
    order = torch.sort(slot_mask.to(torch.int8), dim=1, stable=True).indices[:, -width:]  # [B, width], live last
    for layer in cache.layers:
        index = order.to(layer.keys.device)[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[-1])
        layer.keys, layer.values = layer.keys.gather(2, index), layer.values.gather(2, index)
    return slot_mask.gather(1, order)


def combine_stats(rows: list[GenerationStats], lossless: bool) -> GenerationStats:
    """The batch's totals; `rows` keeps each row's own figures (accepted lengths per row)."""
    total = GenerationStats(lossless=lossless, rows=rows)
    for name in ("new_tokens", "target_forwards", "verify_steps", "drafting_steps", "drafted", "accepted",
                 "draft_time"):
        setattr(total, name, sum(getattr(stats, name) for stats in rows))
    total.accepted_lengths = [n for stats in rows for n in stats.accepted_lengths]
    total.verify_time = max(stats.verify_time for stats in rows)  # shared forwards: each row saw all of them
    total.prefill_time = rows[0].prefill_time
    return total


def padded_sequences(rows: list[Row], pad: int) -> torch.LongTensor:
    """`[B, L_max]`: each row's view, right-padded with the pad token (rows that stopped early)."""
    length = max(row.view.shape[1] for row in rows)
    out = torch.full((len(rows), length), pad, dtype=rows[0].view.dtype, device=rows[0].view.device)
    for b, row in enumerate(rows):
        out[b, : row.view.shape[1]] = row.view[0]
    return out


def pad_token_id(run: DecodeRun) -> int:
    pad = getattr(run.generation_config, "_pad_token_tensor", None)
    if pad is None:
        pad = run.generation_config.pad_token_id if run.generation_config.pad_token_id is not None else 0
    return int(pad.flatten()[0]) if torch.is_tensor(pad) else int(pad)
