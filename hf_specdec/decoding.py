"""The speculative decoding loop, run by `generate` in place of its own loop (see `hf_specdec.hook`).

`generate` keeps all of its preparation (generation config, logits processors, stopping criteria, max length,
cache, and for encoder-decoder targets the encoder pass) and then calls `speculative_decode`. Each step: the
strategy drafts k tokens, the target scores the last token plus the draft in ONE forward, a verifier accepts a
prefix and adds the target's own next token, stopping criteria are checked token by token, and the cache is cropped
back to the accepted tokens.

Invariant between steps: the target cache holds every token of `input_ids` (the decoder's, for an encoder-decoder)
except the last one.
"""

from __future__ import annotations

import time

import torch
from transformers import GenerationConfig, LogitsProcessorList, PreTrainedModel, StoppingCriteriaList
from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer, EncoderDecoderCache
from transformers.generation.streamers import BaseStreamer
from transformers.generation.utils import GenerateDecoderOnlyOutput

from .batch_decoding import batched_decode
from .compat import CACHE_KWARG
from .cpu_speedups import fast_kernels_for_call
from .decode_run import (ENCODER_KWARGS, DecodeRun, Verifier, last_hidden_states, make_verifier, process_scores,
                         select_token)
from .strategies.base import Draft, SpeculativeStrategy
from .tree_decoding import tree_step

__all__ = ["check_cache", "check_request", "make_verifier", "process_scores", "select_token", "speculative_decode"]

_ROLLBACK_LAYERS = (DynamicLayer, DynamicSlidingWindowLayer)


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
    """Decoding loop with the signature of Transformers' `custom_generate` callables. One unpadded prompt runs the
    loop below; several rows or padding go to `batch_decoding.batched_decode`.

    inputs_tensor: what generate fed the encoder of an encoder-decoder target (its input ids or features), which
    drafters may read (prompt lookup copies from the source; a draft runs its own encoder on it)."""
    check_request(model, input_ids, generation_config, model_kwargs, streamer)
    cache = model_kwargs[CACHE_KWARG]
    check_cache(cache)
    verifier = make_verifier(strategy.config, generation_config)
    encoder_kwargs = {key: model_kwargs[key] for key in ENCODER_KWARGS
                      if model.config.is_encoder_decoder and model_kwargs.get(key) is not None}
    run = DecodeRun(model, strategy, cache, logits_processor, stopping_criteria, generation_config, streamer,
                    encoder_kwargs)
    start = time.perf_counter()
    # The fast CPU kernels for this call only (StrategyConfig.cpu_kernels); the user's own generate calls keep theirs.
    with fast_kernels_for_call(model, *strategy.models(), enabled=strategy.config.cpu_kernels == "auto"):
        if is_batch(model, input_ids, model_kwargs):  # several rows, or padding: see batch_decoding.py
            input_ids = batched_decode(run, input_ids, model_kwargs, verifier)
        else:
            input_ids = decode_one(run, input_ids, model_kwargs, verifier, inputs_tensor)
    run.stats.total_time = time.perf_counter() - start
    strategy.finish_stats(run.stats)
    strategy.last_stats = run.stats
    if streamer is not None:
        streamer.end()
    return run.record.output(input_ids, cache, encoder_kwargs.get("encoder_outputs"))


def decode_one(run: DecodeRun, input_ids: torch.LongTensor, model_kwargs: dict, verifier: Verifier,
               inputs_tensor: torch.Tensor | None) -> torch.LongTensor:
    """One unpadded prompt: the prefill, then steps until a stopping criterion fires."""
    strategy = run.strategy
    strategy.set_encoder_inputs(encoder_inputs(run.model, inputs_tensor, model_kwargs))
    strategy.begin(run.model, input_ids, run.generation_config, run.logits_processor)
    try:
        input_ids, finished = prefill_step(run, input_ids, model_kwargs)
        while not finished:
            input_ids, finished = chain_step(run, input_ids, verifier)
    finally:
        strategy.end()
    return input_ids


def encoder_inputs(model: PreTrainedModel, inputs_tensor: torch.Tensor | None, model_kwargs: dict) -> dict | None:
    """What an encoder-decoder target's encoder read (`{main input name: tensor, "attention_mask": ...}`), or None
    for a decoder-only target."""
    if not model.config.is_encoder_decoder or inputs_tensor is None:
        return None
    inputs = {model.main_input_name: inputs_tensor}
    if model_kwargs.get("attention_mask") is not None:
        inputs["attention_mask"] = model_kwargs["attention_mask"]
    return inputs


def prefill_step(run: DecodeRun, input_ids: torch.LongTensor, model_kwargs: dict):
    """Runs generate's own prefill over the prompt and emits the first new token like a plain step."""
    model, strategy, stats = run.model, run.strategy, run.stats
    t0 = time.perf_counter()
    if strategy.needs_hidden_states:
        model_kwargs = {**model_kwargs, "output_hidden_states": True}
    outputs = model._prefill(input_ids, run.generation_config, model_kwargs)
    logits = outputs.logits[:, -1].to(dtype=torch.float32, copy=True)  # [1, V]
    scores, next_token = run.first_token(input_ids, logits)
    stats.prefill_time = time.perf_counter() - t0
    stats.target_forwards += 1
    run.record.add(scores, logits)
    new_input_ids, finished = run.emit(input_ids, [next_token])
    # Every prompt position's state (row i produced token i + 1): Medusa reads the last, EAGLE all of them.
    hidden = last_hidden_states(model, outputs)[0] if strategy.needs_hidden_states else None  # [P, H]
    strategy.observe(new_input_ids, Draft.empty(), 0, scores, None, hidden)
    return new_input_ids, finished


def chain_step(run: DecodeRun, input_ids: torch.LongTensor, verifier: Verifier):
    strategy = run.strategy
    budget = run.generation_config.max_length - input_ids.shape[1]  # tokens we may still emit, >= 1
    max_draft = min(strategy.draft_budget(), budget - 1)

    t0 = time.perf_counter()
    wants_draft = max_draft > 0 or strategy.drafts_every_position
    draft = strategy.propose(input_ids, max_draft) if wants_draft else Draft.empty()
    if draft.tree is not None:  # tree drafts (Medusa): one forward over all candidates, see tree_decoding.py
        return tree_step(run, draft, input_ids, time.perf_counter() - t0)
    draft_tokens = draft.tokens[:max_draft].to(input_ids.device)  # [k]
    t1 = time.perf_counter()

    verify_ids = torch.cat([input_ids[:, -1:], draft_tokens[None]], dim=-1)  # [1, k + 1]
    logits, hidden = run.forward(verify_ids, past_length=input_ids.shape[1] - 1)  # [k + 1, V], [k + 1, H]
    num_accepted, next_token, scores = run.verify_chain(verifier, input_ids, draft, draft_tokens, logits)
    t2 = time.perf_counter()

    proposed = draft_tokens[:num_accepted].tolist() + [next_token]
    new_input_ids, finished = run.emit(input_ids, proposed)
    num_emitted = new_input_ids.shape[1] - input_ids.shape[1]
    # Roll back: keep the cache at every token but the last emitted one.
    run.cache.crop(-(run.cache.get_seq_length() - (new_input_ids.shape[1] - 1)))
    run.record.add(scores[:num_emitted], logits[:num_emitted])

    strategy.observe(new_input_ids, draft, num_accepted, scores[:num_emitted], t2 - t1,
                     None if hidden is None else hidden[:num_emitted])
    run.count_step(draft_tokens.numel(), min(num_accepted, num_emitted), num_emitted, t1 - t0, t2 - t1)
    run.notify(draft_tokens.tolist(), num_accepted, new_input_ids[0, input_ids.shape[1]:].tolist())
    return new_input_ids, finished


# ---- input checks: clear errors instead of silently wrong output --------------------------------------------------
def is_batch(model: PreTrainedModel, input_ids: torch.LongTensor, model_kwargs: dict) -> bool:
    """Several rows, or padding (generate drops an all-ones mask): the batched engine's work."""
    return not model.config.is_encoder_decoder and (
        input_ids.shape[0] > 1 or model_kwargs.get("attention_mask") is not None)


def check_request(model: PreTrainedModel, input_ids: torch.LongTensor, generation_config: GenerationConfig,
                  model_kwargs: dict, streamer: BaseStreamer | None = None) -> None:
    if generation_config.num_beams != 1:
        raise ValueError(f"Speculative decoding replaces greedy/sampling decoding; num_beams={generation_config.num_beams} "
                         "is not supported. Set num_beams=1.")
    if input_ids.shape[1] == 0:
        raise ValueError("hf_specdec strategies need input_ids with at least one token (inputs_embeds alone "
                         "are not supported).")
    if not model_kwargs.get("use_cache", True):
        raise ValueError("Speculative decoding verifies drafts against the KV cache: use_cache=False is not "
                         "supported. Remove use_cache=False.")
    if generation_config.return_dict_in_generate and (generation_config.output_attentions
                                                      or generation_config.output_hidden_states):
        raise ValueError("output_attentions / output_hidden_states are not supported with an hf_specdec strategy; "
                         "output_scores and output_logits are.")
    if model.config.is_encoder_decoder:
        if input_ids.shape[0] != 1:
            raise ValueError(f"hf_specdec supports encoder-decoder targets at batch size 1 for now, got "
                             f"{input_ids.shape[0]} rows (num_return_sequences counts): call generate once per input.")
        if model_kwargs.get("decoder_attention_mask") is not None:
            raise ValueError("A decoder_attention_mask is not supported with an hf_specdec strategy; drop it (the "
                             "encoder's attention_mask may have padding).")
    elif is_batch(model, input_ids, model_kwargs):
        check_batch_request(generation_config, streamer)


def check_batch_request(generation_config: GenerationConfig, streamer: BaseStreamer | None) -> None:
    """What the batched engine does not do (yet)."""
    if streamer is not None:
        raise ValueError("Streaming needs a batch of one unpadded prompt (as Transformers' streamers do); drop the "
                         "streamer or generate one prompt at a time.")
    if generation_config.return_dict_in_generate and (generation_config.output_scores
                                                      or generation_config.output_logits):
        raise ValueError("output_scores / output_logits are supported for one unpadded prompt; rows of a batch "
                         "accept different numbers of tokens per step, so per-step score tensors do not line up. "
                         "Generate one prompt at a time to get them.")


def check_cache(cache) -> None:
    """Only caches that `crop` can roll back are accepted; sliding-window layers are told to keep their past. An
    encoder-decoder's cache is checked on its self-attention part (the cross-attention part is never cropped)."""
    fix = ("Use the default DynamicCache: remove cache_implementation=..., or pass "
           f"{CACHE_KWARG}=DynamicCache(config=model.config).")
    rolled_back = cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache
    if not isinstance(rolled_back, DynamicCache):
        raise ValueError(f"hf_specdec rolls back rejected tokens with DynamicCache.crop; {type(rolled_back).__name__} "
                         f"cannot be rolled back. {fix}")
    bad = sorted({type(layer).__name__ for layer in rolled_back.layers if not isinstance(layer, _ROLLBACK_LAYERS)})
    if bad:
        raise ValueError(f"Cache layers {bad} cannot be rolled back with crop. {fix}")
    rolled_back.activate_past_recording()
