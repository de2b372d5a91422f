"""The speculative decoding loop, run by `generate` in place of its own loop (see `hf_specdec.hook`).

`generate` keeps all of its preparation (generation config, logits processors, stopping criteria, max length,
cache) and then calls `speculative_decode`. Each step: the strategy drafts k tokens, the target scores the last
token plus the draft in ONE forward, a verifier accepts a prefix and adds the target's own next token, stopping
criteria are checked token by token, and the cache is cropped back to the accepted tokens.

Invariant between steps: the target cache holds every token of `input_ids` except the last one.
"""

from __future__ import annotations

import inspect
import time
import warnings
from collections.abc import Callable

import torch
from transformers import GenerationConfig, LogitsProcessorList, PreTrainedModel, StoppingCriteriaList
from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer
from transformers.generation.streamers import BaseStreamer
from transformers.generation.utils import GenerateDecoderOnlyOutput

from .compat import CACHE_KWARG
from .config import StrategyConfig
from .stats import GenerationStats, StepEvent
from .strategies.base import Draft, SpeculativeStrategy
from .tree_decoding import tree_step
from .verify import greedy_verify, speculative_sampling_verify, typical_acceptance_verify

# (draft_tokens [k], target_scores [k + 1, V], draft_probs [k, V] | None) -> (num_accepted, next_token)
Verifier = Callable[[torch.LongTensor, torch.Tensor, "torch.Tensor | None"], "tuple[int, int]"]

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
    **model_kwargs,
) -> torch.LongTensor | GenerateDecoderOnlyOutput:
    """Decoding loop with the signature of Transformers' `custom_generate` callables (batch size 1)."""
    check_request(model, input_ids, generation_config, model_kwargs)
    cache = model_kwargs[CACHE_KWARG]
    check_cache(cache)
    verifier = make_verifier(strategy.config, generation_config)
    stats = GenerationStats(lossless=strategy.lossless)
    record = _OutputRecord(generation_config)
    start = time.perf_counter()
    strategy.begin(model, input_ids, generation_config, logits_processor)
    try:
        input_ids, finished = _prefill_step(model, strategy, input_ids, logits_processor, stopping_criteria, generation_config,
                                            model_kwargs, stats, record, streamer)
        while not finished:
            input_ids, finished = _speculative_step(model, strategy, input_ids, cache, logits_processor,
                                                    stopping_criteria, generation_config, verifier, stats, record,
                                                    streamer)
    finally:
        strategy.end()
    stats.total_time = time.perf_counter() - start
    strategy.last_stats = stats
    if streamer is not None:
        streamer.end()
    return record.output(input_ids, cache)


def _prefill_step(model, strategy, input_ids, logits_processor, stopping_criteria, generation_config, model_kwargs, stats,
                  record, streamer):
    """Runs generate's own prefill over the prompt and emits the first new token like a plain step."""
    t0 = time.perf_counter()
    if strategy.needs_hidden_states:
        model_kwargs = {**model_kwargs, "output_hidden_states": True}
    outputs = model._prefill(input_ids, generation_config, model_kwargs)
    logits = outputs.logits[:, -1].to(dtype=torch.float32, copy=True)  # [1, V]
    scores = logits_processor(input_ids, logits.clone())  # [1, V]
    next_token = select_token(scores[0], generation_config.do_sample)
    stats.prefill_time = time.perf_counter() - t0
    stats.target_forwards += 1
    record.add(scores, logits)
    new_input_ids, finished = _emit(input_ids, [next_token], stopping_criteria, stats, streamer)
    hidden = outputs.hidden_states[-1][0, -1:] if strategy.needs_hidden_states else None  # [1, H]
    strategy.observe(new_input_ids, Draft.empty(), 0, scores, None, hidden)
    return new_input_ids, finished


def _speculative_step(model, strategy, input_ids, cache, logits_processor, stopping_criteria, generation_config,
                      verifier, stats, record, streamer):
    budget = generation_config.max_length - input_ids.shape[1]  # tokens we may still emit, >= 1
    max_draft = min(strategy.draft_budget(), budget - 1)

    t0 = time.perf_counter()
    draft = strategy.propose(input_ids, max_draft) if max_draft > 0 else Draft.empty()
    if draft.tree is not None:  # tree drafts (Medusa): one forward over all candidates, see tree_decoding.py
        return tree_step(model, strategy, draft, input_ids, cache, logits_processor, stopping_criteria,
                         generation_config, stats, record, streamer, time.perf_counter() - t0)
    draft_tokens = draft.tokens[:max_draft].to(input_ids.device)  # [k]
    t1 = time.perf_counter()

    verify_ids = torch.cat([input_ids[:, -1:], draft_tokens[None]], dim=-1)  # [1, k + 1]
    logits, hidden = target_forward(model, verify_ids, cache, past_length=input_ids.shape[1] - 1,
                                    output_hidden_states=strategy.needs_hidden_states)  # [k + 1, V], [k + 1, H]
    scores = process_scores(logits_processor, input_ids, draft_tokens, logits)  # [k + 1, V]
    draft_probs = None if draft.probs is None else draft.probs[: draft_tokens.numel()]
    num_accepted, next_token = verifier(draft_tokens, scores, draft_probs)
    t2 = time.perf_counter()

    proposed = draft_tokens[:num_accepted].tolist() + [next_token]
    new_input_ids, finished = _emit(input_ids, proposed, stopping_criteria, stats, streamer)
    num_emitted = new_input_ids.shape[1] - input_ids.shape[1]
    # Roll back: keep the cache at every token but the last emitted one.
    cache.crop(-(cache.get_seq_length() - (new_input_ids.shape[1] - 1)))
    record.add(scores[:num_emitted], logits[:num_emitted])

    strategy.observe(new_input_ids, draft, num_accepted, scores[:num_emitted], t2 - t1,
                     None if hidden is None else hidden[:num_emitted])
    _count_step(stats, draft_tokens.numel(), min(num_accepted, num_emitted), num_emitted, t1 - t0, t2 - t1)
    event = StepEvent(tuple(draft_tokens.tolist()), num_accepted, tuple(new_input_ids[0, input_ids.shape[1]:].tolist()))
    for listener in strategy.step_listeners:
        listener(event)
    return new_input_ids, finished


def _count_step(stats: GenerationStats, num_drafted: int, num_accepted: int, num_emitted: int,
                draft_seconds: float, verify_seconds: float) -> None:
    stats.target_forwards += 1
    stats.verify_steps += 1
    stats.drafting_steps += num_drafted > 0
    stats.drafted += num_drafted
    stats.accepted += num_accepted
    stats.accepted_lengths.append(num_emitted)
    stats.draft_time += draft_seconds
    stats.verify_time += verify_seconds


def _emit(input_ids, tokens: list[int], stopping_criteria, stats, streamer):
    """Appends `tokens` one at a time, stopping at the first one a stopping criterion fires on (as plain
    `generate` would, so EOS or a stop string inside an accepted draft ends the output exactly there)."""
    full = torch.cat([input_ids, torch.tensor([tokens], dtype=input_ids.dtype, device=input_ids.device)], dim=-1)
    length, finished = input_ids.shape[1], False
    for length in range(input_ids.shape[1] + 1, full.shape[1] + 1):
        if bool(stopping_criteria(full[:, :length], None).any()):
            finished = True
            break
    stats.new_tokens += length - input_ids.shape[1]
    if streamer is not None:
        streamer.put(full[:, input_ids.shape[1]:length].cpu())
    return full[:, :length], finished


# ---- pieces other modules reuse ---------------------------------------------------------------------------------
def target_forward(model: PreTrainedModel, tokens: torch.LongTensor, cache: DynamicCache, past_length: int,
                   output_hidden_states: bool = False, **forward_kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One target forward of `tokens` (`[1, L]`) on top of a cache holding `past_length` tokens.

    Returns float32 logits `[L, V]` and, if asked, the last layer's hidden states `[L, H]` (the states the LM head
    read, which Medusa-style heads draft from).
    """
    length = tokens.shape[1]
    forward_kwargs.setdefault("position_ids", torch.arange(past_length, past_length + length, device=tokens.device)[None])
    if _accepts_logits_to_keep(model):
        forward_kwargs["logits_to_keep"] = length
    outputs = model(input_ids=tokens, **{CACHE_KWARG: cache}, use_cache=True,
                    output_hidden_states=output_hidden_states, **forward_kwargs)
    hidden = outputs.hidden_states[-1][0, -length:] if output_hidden_states else None
    return outputs.logits[0, -length:].float(), hidden


def process_scores(logits_processor: LogitsProcessorList, input_ids: torch.LongTensor,
                   draft_tokens: torch.LongTensor, logits: torch.Tensor) -> torch.Tensor:
    """Applies the logits processors at every verified position, each with the prefix it would see in plain
    decoding (so repetition penalties, min-length and the like act exactly as in `generate`).

    input_ids: `[1, n]`; draft_tokens: `[k]`; logits: `[k + 1, V]` -> scores `[k + 1, V]`.
    """
    if len(logits_processor) == 0:
        return logits.clone()
    full = torch.cat([input_ids, draft_tokens[None]], dim=-1)  # [1, n + k]
    n = input_ids.shape[1]
    rows = [logits_processor(full[:, : n + i], logits[i : i + 1].clone()) for i in range(logits.shape[0])]
    return torch.cat(rows, dim=0)


def select_token(scores: torch.Tensor, do_sample: bool) -> int:
    """Plain decoding's choice from processed scores `[V]`: argmax, or a draw from softmax."""
    if do_sample:
        return int(torch.multinomial(scores.softmax(dim=-1), 1))
    return int(scores.argmax())


def make_verifier(config: StrategyConfig, generation_config: GenerationConfig) -> Verifier:
    do_sample = bool(generation_config.do_sample)
    if config.verification == "typical":
        warnings.warn(
            "hf_specdec: verification='typical' is LOSSY: outputs will not follow the target's distribution. "
            "Use verification='auto' for lossless decoding.",
            stacklevel=4,
        )

        def typical(draft_tokens, scores, draft_probs):
            return typical_acceptance_verify(draft_tokens, scores.softmax(dim=-1), config.typical_posterior_threshold,
                                             config.typical_posterior_alpha, do_sample=do_sample)

        return typical
    if config.verification == "greedy" and do_sample:
        raise ValueError("verification='greedy' only matches plain generate with do_sample=False; use "
                         "verification='auto' (lossless speculative sampling) when sampling.")
    if not do_sample:
        return lambda draft_tokens, scores, draft_probs: greedy_verify(draft_tokens, scores)
    return lambda draft_tokens, scores, draft_probs: speculative_sampling_verify(
        draft_tokens, scores.softmax(dim=-1), draft_probs)


# ---- input checks: clear errors instead of silently wrong output --------------------------------------------------
def check_request(model: PreTrainedModel, input_ids: torch.LongTensor, generation_config: GenerationConfig,
                  model_kwargs: dict) -> None:
    if model.config.is_encoder_decoder:
        raise ValueError("hf_specdec strategies support decoder-only models; this model is encoder-decoder.")
    if generation_config.num_beams != 1:
        raise ValueError(f"Speculative decoding replaces greedy/sampling decoding; num_beams={generation_config.num_beams} "
                         "is not supported. Set num_beams=1.")
    if generation_config.num_return_sequences != 1:
        raise ValueError(f"num_return_sequences={generation_config.num_return_sequences} is not supported with an "
                         "hf_specdec strategy; call generate several times (with do_sample=True) instead.")
    if input_ids.shape[0] != 1:
        raise ValueError(f"hf_specdec strategies support batch size 1 for now, got {input_ids.shape[0]}. "
                         "Call generate once per prompt, or use plain generate for batches.")
    if input_ids.shape[1] == 0:
        raise ValueError("hf_specdec strategies need input_ids with at least one token (inputs_embeds alone "
                         "are not supported).")
    if not model_kwargs.get("use_cache", True):
        raise ValueError("Speculative decoding verifies drafts against the KV cache: use_cache=False is not "
                         "supported. Remove use_cache=False.")
    if model_kwargs.get("attention_mask") is not None:
        raise ValueError("The attention_mask has padding; with batch size 1 pass the prompt without padding "
                         "(or drop the attention_mask).")
    if generation_config.return_dict_in_generate and (generation_config.output_attentions
                                                      or generation_config.output_hidden_states):
        raise ValueError("output_attentions / output_hidden_states are not supported with an hf_specdec strategy; "
                         "output_scores and output_logits are.")


def check_cache(cache) -> None:
    """Only caches that `crop` can roll back are accepted; sliding-window layers are told to keep their past."""
    fix = ("Use the default DynamicCache: remove cache_implementation=..., or pass "
           f"{CACHE_KWARG}=DynamicCache(config=model.config).")
    if not isinstance(cache, DynamicCache):
        raise ValueError(f"hf_specdec rolls back rejected tokens with DynamicCache.crop; {type(cache).__name__} "
                         f"cannot be rolled back. {fix}")
    bad = sorted({type(layer).__name__ for layer in cache.layers if not isinstance(layer, _ROLLBACK_LAYERS)})
    if bad:
        raise ValueError(f"Cache layers {bad} cannot be rolled back with crop. {fix}")
    cache.activate_past_recording()


_LOGITS_TO_KEEP: dict[type, bool] = {}


def _accepts_logits_to_keep(model: PreTrainedModel) -> bool:
    cls = type(model)
    if cls not in _LOGITS_TO_KEEP:
        _LOGITS_TO_KEEP[cls] = "logits_to_keep" in inspect.signature(model.forward).parameters
    return _LOGITS_TO_KEEP[cls]


class _OutputRecord:
    """Collects per-token scores/logits when `return_dict_in_generate` asks for them."""

    def __init__(self, generation_config: GenerationConfig) -> None:
        self.as_dict = bool(generation_config.return_dict_in_generate)
        self.scores = [] if self.as_dict and generation_config.output_scores else None
        self.logits = [] if self.as_dict and generation_config.output_logits else None

    def add(self, scores: torch.Tensor, logits: torch.Tensor) -> None:
        """scores, logits: `[m, V]` for m emitted tokens."""
        if self.scores is not None:
            self.scores.extend(row[None] for row in scores)
        if self.logits is not None:
            self.logits.extend(row[None] for row in logits)

    def output(self, input_ids: torch.LongTensor, cache: DynamicCache):
        if not self.as_dict:
            return input_ids
        return GenerateDecoderOnlyOutput(
            sequences=input_ids,
            scores=None if self.scores is None else tuple(self.scores),
            logits=None if self.logits is None else tuple(self.logits),
            **{CACHE_KWARG: cache},
        )
