"""What one `generate` call's decoding loop carries from step to step, and the verbs every step shares: a target
forward, emitting tokens through the stopping criteria, counting the step. The chain step (`decoding.py`) and the
tree step (`tree_decoding.py`) both use it, so neither imports the other.

Encoder-decoder targets (T5, BART, Whisper, ...): generate has already run the encoder once; every forward here is a
decoder forward that re-reads the same `encoder_outputs` (and the encoder's attention mask), and the cache's
self-attention part is what rollback crops (`EncoderDecoderCache.crop`), the cross-attention part stays.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from transformers import GenerationConfig, LogitsProcessorList, PreTrainedModel, StoppingCriteriaList
from transformers.cache_utils import Cache
from transformers.generation.streamers import BaseStreamer
from transformers.generation.utils import GenerateDecoderOnlyOutput, GenerateEncoderDecoderOutput

from .compat import CACHE_KWARG
from .config import StrategyConfig
from .stats import GenerationStats, StepEvent
from .verify import greedy_verify, speculative_sampling_verify, typical_acceptance_verify

if TYPE_CHECKING:
    from .strategies.base import SpeculativeStrategy

# (draft_tokens [k], target_scores [k + 1, V], draft_probs [k, V] | None) -> (num_accepted, next_token)
Verifier = Callable[[torch.LongTensor, torch.Tensor, "torch.Tensor | None"], "tuple[int, int]"]

ENCODER_KWARGS = ("encoder_outputs", "attention_mask")  # what every decoder forward of an encoder-decoder re-reads


@dataclass
class DecodeRun:
    """The state of one speculative `generate` call, or of one row of a batch (see `batch_decoding.py`)."""

    model: PreTrainedModel
    strategy: "SpeculativeStrategy"
    cache: Cache
    logits_processor: LogitsProcessorList
    stopping_criteria: StoppingCriteriaList
    generation_config: GenerationConfig
    streamer: BaseStreamer | None = None
    encoder_kwargs: dict = field(default_factory=dict)  # encoder-decoder targets: see ENCODER_KWARGS
    stats: GenerationStats = field(default_factory=GenerationStats)
    record: OutputRecord | None = None

    def __post_init__(self) -> None:
        self.stats.lossless = self.strategy.lossless
        if self.record is None:
            self.record = OutputRecord(self.generation_config)

    @property
    def do_sample(self) -> bool:
        return bool(self.generation_config.do_sample)

    def forward(self, tokens: torch.LongTensor, past_length: int, **forward_kwargs,
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One target forward of `tokens` (`[1, L]`) on top of a cache holding `past_length` tokens.

        Returns float32 logits `[L, V]` and, when the strategy asks for them, the last layer's hidden states
        `[L, H]` (the states the LM head read, which Medusa-style heads draft from).
        """
        model, length = self.model, tokens.shape[1]
        hidden_wanted = self.strategy.needs_hidden_states
        if model.config.is_encoder_decoder:  # decoder positions come from the cache's length
            inputs = {"decoder_input_ids": tokens, **self.encoder_kwargs}
        else:
            forward_kwargs.setdefault("position_ids", torch.arange(past_length, past_length + length,
                                                                   device=tokens.device)[None])
            inputs = {"input_ids": tokens}
        if accepts_logits_to_keep(model):
            forward_kwargs["logits_to_keep"] = length
        outputs = model(**inputs, **{CACHE_KWARG: self.cache}, use_cache=True, output_hidden_states=hidden_wanted,
                        **forward_kwargs)
        hidden = last_hidden_states(model, outputs)[0, -length:] if hidden_wanted else None
        return outputs.logits[0, -length:].float(), hidden

    def emit(self, input_ids: torch.LongTensor, tokens: list[int]) -> tuple[torch.LongTensor, bool]:
        """Appends `tokens` one at a time, stopping at the first one a stopping criterion fires on (as plain
        `generate` would, so EOS or a stop string inside an accepted draft ends the output exactly there)."""
        full = torch.cat([input_ids, torch.tensor([tokens], dtype=input_ids.dtype, device=input_ids.device)], dim=-1)
        length, finished = input_ids.shape[1], False
        for length in range(input_ids.shape[1] + 1, full.shape[1] + 1):
            if bool(self.stopping_criteria(full[:, :length], None).any()):
                finished = True
                break
        self.stats.new_tokens += length - input_ids.shape[1]
        if self.streamer is not None:
            self.streamer.put(full[:, input_ids.shape[1]:length].cpu())
        return full[:, :length], finished

    def count_step(self, num_drafted: int, num_accepted: int, num_emitted: int, draft_seconds: float,
                   verify_seconds: float) -> None:
        stats = self.stats
        stats.target_forwards += 1
        stats.verify_steps += 1
        stats.drafting_steps += num_drafted > 0
        stats.drafted += num_drafted
        stats.accepted += num_accepted
        stats.accepted_lengths.append(num_emitted)
        stats.draft_time += draft_seconds
        stats.verify_time += verify_seconds

    def first_token(self, prefix: torch.LongTensor, logits: torch.Tensor,
                    drafter_prefix: torch.LongTensor | None = None) -> tuple[torch.Tensor, int]:
        """(scores `[1, V]`, the first new token) from the prefill's last logits `[1, V]`. prefix: what the logits
        processors see (`[1, n]`, a batch row's left padding included); drafter_prefix: the real tokens the strategy
        reads (default: prefix)."""
        drafter_prefix = prefix if drafter_prefix is None else drafter_prefix
        scores = self.logits_processor(prefix, logits.clone())  # [1, V]
        if self.strategy.drafts_every_position:  # the verifier's scores need the draft's distribution here too
            scores = self.strategy.verification_scores(scores, self.strategy.propose(drafter_prefix, 0))
        return scores, select_token(scores[0], self.do_sample)

    def verify_chain(self, verifier: Verifier, prefix: torch.LongTensor, draft, draft_tokens: torch.LongTensor,
                     logits: torch.Tensor, drafter_prefix: torch.LongTensor | None = None,
                     ) -> tuple[int, int, torch.Tensor]:
        """(accepted count, next token, the scores `[k + 1, V]` verified against) for a chain draft of `draft_tokens`
        `[k]` scored by `logits` `[k + 1, V]`; prefix / drafter_prefix as in `first_token`."""
        strategy = self.strategy
        scores = process_scores(self.logits_processor, prefix, draft_tokens, logits)  # [k + 1, V]
        scores = strategy.verification_scores(scores, draft)
        draft_probs = None if draft.probs is None else draft.probs[: draft_tokens.numel()]
        num_accepted, next_token = verifier(draft_tokens, scores, draft_probs)
        if num_accepted == draft_tokens.numel() > 0:
            bonus = strategy.bonus_scores(prefix if drafter_prefix is None else drafter_prefix, draft_tokens)
            if bonus is not None:  # [V]: the bonus row was provisional
                scores[-1] = bonus
                next_token = select_token(bonus, self.do_sample)
        return num_accepted, next_token, scores

    def notify(self, drafted: list[int], num_accepted: int, emitted: list[int]) -> None:
        event = StepEvent(tuple(drafted), num_accepted, tuple(emitted))
        for listener in self.strategy.step_listeners:
            listener(event)


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


def last_hidden_states(model: PreTrainedModel, outputs) -> torch.Tensor:
    """The last (decoder) layer's hidden states `[1, L, H]` of a forward run with `output_hidden_states=True`."""
    states = outputs.decoder_hidden_states if model.config.is_encoder_decoder else outputs.hidden_states
    return states[-1]


_LOGITS_TO_KEEP: dict[type, bool] = {}


def accepts_logits_to_keep(model: PreTrainedModel) -> bool:
    cls = type(model)
    if cls not in _LOGITS_TO_KEEP:
        _LOGITS_TO_KEEP[cls] = "logits_to_keep" in inspect.signature(model.forward).parameters
    return _LOGITS_TO_KEEP[cls]


class OutputRecord:
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

    def output(self, input_ids: torch.LongTensor, cache: Cache, encoder_outputs=None):
        if not self.as_dict:
            return input_ids
        fields = {"sequences": input_ids, "scores": None if self.scores is None else tuple(self.scores),
                  "logits": None if self.logits is None else tuple(self.logits), CACHE_KWARG: cache}
        if encoder_outputs is None:
            return GenerateDecoderOnlyOutput(**fields)
        return GenerateEncoderDecoderOutput(**fields)
