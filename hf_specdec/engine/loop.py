"""The speculative decoding loop, run by `generate` in place of its own (see `hf_specdec.hook`).

`generate` keeps all of its preparation (generation config, logits processors, stopping criteria, max length,
cache, and for encoder-decoder targets the encoder pass) and calls `speculative_decode`: the prefill, then
`step.step` until every row has finished. One unpadded prompt, a left-padded batch and `num_return_sequences`
copies all go through the same step.

Invariant between steps: the target cache holds every token of each row (the decoder's, for an encoder-decoder)
but the last one.
"""

from __future__ import annotations

import torch
from transformers import GenerationConfig, LogitsProcessorList, PreTrainedModel, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer
from transformers.generation.utils import GenerateDecoderOnlyOutput

from ..compat import CACHE_KWARG
from ..kernels.cpu_speedups import fast_kernels_for_call
from ..strategies.base import Draft, RowOutcome, SpeculativeStrategy
from .cache import check_cache, compact
from .checks import check_request, is_batch
from .emit import emit_rows
from .run import ENCODER_KWARGS, DecodeRun, Row, combine_stats
from .scoring import row_processors, select_token
from .step import step
from .timing import synchronized_now
from .verification import check_verification
from .width import BatchDraftGate, VerifyCosts


def speculative_decode(
    model: PreTrainedModel,
    input_ids: torch.LongTensor,
    logits_processor: LogitsProcessorList,
    stopping_criteria: StoppingCriteriaList,
    generation_config: GenerationConfig,
    *,
    strategy: SpeculativeStrategy,
    streamer: BaseStreamer | None = None,
    inputs_tensor: torch.Tensor | None = None,
    **model_kwargs,
) -> torch.LongTensor | GenerateDecoderOnlyOutput:
    """Decoding loop with the signature of Transformers' `custom_generate` callables.

    inputs_tensor: what generate fed the encoder of an encoder-decoder target (its input ids or features), which
    drafters may read (prompt lookup copies from the source; a draft runs its own encoder on it)."""
    check_request(model, input_ids, generation_config, model_kwargs, streamer)
    cache = model_kwargs.get(CACHE_KWARG)
    if cache is None:
        raise ValueError(f"{type(model).__name__} keeps no Transformers KV cache (a `Cache` object) that hf_specdec "
                         "could roll back after a rejected draft. Use plain generate for this model.")
    batched = is_batch(model, input_ids, model_kwargs)
    check_cache(cache, model, batched)
    check_verification(strategy.config, generation_config)
    encoder_kwargs = {key: model_kwargs[key] for key in ENCODER_KWARGS
                      if model.config.is_encoder_decoder and model_kwargs.get(key) is not None}
    run = DecodeRun(model, strategy, cache, logits_processor, stopping_criteria, generation_config, streamer,
                    encoder_kwargs)
    start = synchronized_now(input_ids.device)
    strategy.set_encoder_inputs(encoder_inputs(model, inputs_tensor, model_kwargs))
    # The fast CPU kernels for this call only (StrategyConfig.cpu_kernels); the user's own generate calls keep theirs.
    with fast_kernels_for_call(model, *strategy.models(), enabled=strategy.config.cpu_kernels == "auto"):
        rows = decode(run, input_ids, model_kwargs, batched)
    stats = combine_stats([row.stats for row in rows], strategy.lossless)
    stats.total_time = synchronized_now(input_ids.device) - start
    strategy.last_stats = stats
    if streamer is not None:
        streamer.end()
    return run.record.output(padded_sequences(rows, run.pad_token_id), cache, encoder_kwargs.get("encoder_outputs"))


def decode(run: DecodeRun, input_ids: torch.LongTensor, model_kwargs: dict, batched: bool) -> list[Row]:
    """The prefill, then steps until every row has finished. A batch's cache is left compacted: each row's live
    slots (all its tokens but the last) at the right end, left-padded."""
    rows = start_rows(run, input_ids, model_kwargs)
    strategy = run.strategy
    try:
        slot_mask = prefill(run, rows, input_ids, model_kwargs, batched)
        # A batch chooses its verify width and whether to draft at all from measured costs; a strategy told not to
        # skip unprofitable drafts (`skip_unprofitable_drafts=False`) drafts every step here too.
        costs = VerifyCosts(len(rows)) if len(rows) > 1 else None
        gated = len(rows) > 1 and getattr(run.strategy.config, "skip_unprofitable_drafts", True)
        gate = BatchDraftGate() if gated else None
        while not all(row.finished for row in rows):
            slot_mask = step(run, rows, slot_mask, costs, gate)
        if slot_mask is not None and not bool(slot_mask.all()):
            compact(run.cache, slot_mask, max(len(row.tokens) - 1 for row in rows))
    finally:
        strategy.end()
        for row in rows:
            row.state.host_tokens = None
    for row in rows:
        strategy.finish_stats(row.state, row.stats)
    return rows


def start_rows(run: DecodeRun, input_ids: torch.LongTensor, model_kwargs: dict) -> list[Row]:
    """A row per prompt (its padding removed), and the strategy's state for each."""
    mask = model_kwargs.get("attention_mask")
    host_ids = input_ids.tolist()
    host_mask = None if mask is None else mask.tolist()
    paddings = []
    for b, tokens in enumerate(host_ids):
        padding = 0 if host_mask is None else next((i for i, m in enumerate(host_mask[b]) if m), len(tokens))
        if host_mask is not None and not all(host_mask[b][padding:]):
            raise ValueError("The attention_mask has padding on the right (or inside a row); pad on the left, as for "
                             "plain batched generate: tokenizer.padding_side = 'left'.")
        paddings.append(padding)
    strategy = run.strategy
    strategy.begin(run.model, [input_ids[b : b + 1, p:] for b, p in enumerate(paddings)], run.generation_config,
                   run.logits_processor)
    rows = []
    for b, (tokens, padding) in enumerate(zip(host_ids, paddings)):
        row = Row(strategy.rows[b], input_ids[b : b + 1], padding, tokens[padding:])
        row.state.host_tokens = row.tokens  # the host mirror the engine keeps up to date
        row.state.logits_processor = row_processors(run.logits_processor, b, len(host_ids))
        rows.append(row)
    return rows


def prefill(run: DecodeRun, rows: list[Row], input_ids: torch.LongTensor, model_kwargs: dict, batched: bool,
            ) -> torch.BoolTensor | None:
    """generate's own prefill over the (padded) prompts; each row emits its first token like a plain step. Returns
    the slot mask `[B, L]`, or None for a dense batch of one."""
    start = synchronized_now(input_ids.device)
    if run.hidden_wanted:
        model_kwargs = {**model_kwargs, "output_hidden_states": True}
    outputs = run.model._prefill(input_ids, run.generation_config, model_kwargs)
    logits = outputs.logits[:, -1].to(dtype=torch.float32, copy=True)  # [B, V]
    hidden = run.hidden_states(outputs) if run.hidden_wanted else None  # [B, L, H or A * H]
    first = first_tokens(run, rows, logits)
    emit_rows(run, rows, [[token] for _, token in first])
    seconds = synchronized_now(input_ids.device) - start
    # Every prompt position's state (row i produced token i + 1): Medusa reads the last, EAGLE all of them.
    run.strategy.observe_rows([RowOutcome(b, row.ids, Draft.empty(), 0, scores, None,
                                          None if hidden is None else hidden[b, row.padding:])
                               for b, (row, (scores, _)) in enumerate(zip(rows, first))])
    for b, (row, (scores, _)) in enumerate(zip(rows, first)):
        run.record.add(scores, logits[b : b + 1])
        row.stats.target_forwards += 1
        row.stats.prefill_time = seconds
    mask = model_kwargs.get("attention_mask")
    if not batched:
        return None
    return torch.ones_like(input_ids, dtype=torch.bool) if mask is None else mask.bool()


def first_tokens(run: DecodeRun, rows: list[Row], logits: torch.Tensor) -> list[tuple[torch.Tensor, int]]:
    """(scores `[1, V]`, the first new token) of every row from the prefill's last logits `[B, V]`."""
    scores = [row.state.logits_processor(row.view, logits[b : b + 1].clone()) for b, row in enumerate(rows)]  # [1, V]
    strategy = run.strategy
    if strategy.drafts_every_position:  # the verifier's scores need the draft's distribution here too
        drafts = strategy.propose_rows([(b, row.ids, 0) for b, row in enumerate(rows)])
        scores = [strategy.verification_scores(row.state, s, d) for row, s, d in zip(rows, scores, drafts)]
    return [(s, select_token(s[0], run.do_sample)) for s in scores]


def encoder_inputs(model: PreTrainedModel, inputs_tensor: torch.Tensor | None, model_kwargs: dict) -> dict | None:
    """What an encoder-decoder target's encoder read (`{main input name: tensor, "attention_mask": ...}`), or None
    for a decoder-only target."""
    if not model.config.is_encoder_decoder or inputs_tensor is None:
        return None
    inputs = {model.main_input_name: inputs_tensor}
    if model_kwargs.get("attention_mask") is not None:
        inputs["attention_mask"] = model_kwargs["attention_mask"]
    return inputs


def padded_sequences(rows: list[Row], pad: int) -> torch.LongTensor:
    """`[B, L_max]`: each row's view, right-padded with the pad token (rows that stopped early)."""
    if len(rows) == 1:
        return rows[0].view
    length = max(row.view.shape[1] for row in rows)
    out = torch.full((len(rows), length), pad, dtype=rows[0].view.dtype, device=rows[0].view.device)
    for b, row in enumerate(rows):
        out[b, : row.view.shape[1]] = row.view[0]
    return out
