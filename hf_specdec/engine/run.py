"""What one `generate` call carries from step to step: the call's context (`DecodeRun`) and each row's state
(`Row`), with the host mirror of its tokens that keeps the loop from reading the device token by token."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from transformers import GenerationConfig, LogitsProcessorList, PreTrainedModel, StoppingCriteriaList
from transformers.cache_utils import Cache
from transformers.generation.streamers import BaseStreamer
from transformers.generation.utils import GenerateDecoderOnlyOutput, GenerateEncoderDecoderOutput

from ..compat import CACHE_KWARG
from ..stats import GenerationStats

if TYPE_CHECKING:
    from ..strategies.base import RowState, SpeculativeStrategy

ENCODER_KWARGS = ("encoder_outputs", "attention_mask")  # what every decoder forward of an encoder-decoder re-reads


@dataclass
class DecodeRun:
    """One speculative `generate` call: the target, its cache, generate's processors and criteria."""

    model: PreTrainedModel
    strategy: "SpeculativeStrategy"  # the user's: one object drafts for every row
    cache: Cache
    logits_processor: LogitsProcessorList
    stopping_criteria: StoppingCriteriaList
    generation_config: GenerationConfig
    streamer: BaseStreamer | None = None
    encoder_kwargs: dict = field(default_factory=dict)  # encoder-decoder targets: see ENCODER_KWARGS
    record: OutputRecord | None = None

    def __post_init__(self) -> None:
        if self.record is None:
            self.record = OutputRecord(self.generation_config)

    @property
    def do_sample(self) -> bool:
        return bool(self.generation_config.do_sample)

    @property
    def hidden_wanted(self) -> bool:
        return self.strategy.needs_hidden_states

    def hidden_states(self, outputs) -> torch.Tensor:
        return strategy_hidden_states(self.model, outputs, self.strategy.hidden_state_layers)

    @property
    def pad_token_id(self) -> int:
        pad = getattr(self.generation_config, "_pad_token_tensor", None)
        if pad is None:
            pad = self.generation_config.pad_token_id if self.generation_config.pad_token_id is not None else 0
        return int(pad.flatten()[0]) if torch.is_tensor(pad) else int(pad)


@dataclass
class Row:
    """One row of the batch (a batch of one is a batch)."""

    state: "RowState"  # this row's drafter state, inside the call's one strategy
    view: torch.LongTensor  # [1, L] on the target's device: the row as plain generate holds it (left padding included)
    padding: int  # left padding in `view`
    tokens: list[int]  # host mirror of the row's real tokens (view[0, padding:]), what drafters read
    stats: GenerationStats = field(default_factory=GenerationStats)
    finished: bool = False
    acceptance: float = 0.5  # EMA of the share of drafted tokens (tree: of its depth) accepted, for `choose_width`

    @property
    def ids(self) -> torch.LongTensor:
        """`[1, n]` the row's real tokens on the device."""
        return self.view[:, self.padding:]

    def budget(self, max_length: int) -> int:
        """Tokens this row may still emit (>= 1 while unfinished)."""
        return max_length - self.view.shape[1]


def strategy_hidden_states(model: PreTrainedModel, outputs, layers: list[int] | None) -> torch.Tensor:
    """The hidden states a strategy reads, from a forward run with `output_hidden_states=True`: the last (decoder)
    layer's `[B, L, H]` (`layers` None), or the chosen layers' side by side `[B, L, len(layers) * H]` (layer id i
    is Transformers' `hidden_states[i]`, the input of decoder layer i). The others are dropped here."""
    states = outputs.decoder_hidden_states if model.config.is_encoder_decoder else outputs.hidden_states
    if layers is None:
        return states[-1]
    return torch.cat([states[i] for i in layers], dim=-1)


_LOGITS_TO_KEEP: dict[type, bool] = {}


def accepts_logits_to_keep(model: PreTrainedModel) -> bool:
    cls = type(model)
    if cls not in _LOGITS_TO_KEEP:
        _LOGITS_TO_KEEP[cls] = "logits_to_keep" in inspect.signature(model.forward).parameters
    return _LOGITS_TO_KEEP[cls]


class OutputRecord:
    """Collects per-token scores/logits when `return_dict_in_generate` asks for them (a batch of one)."""

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

    def output(self, sequences: torch.LongTensor, cache: Cache, encoder_outputs=None):
        if not self.as_dict:
            return sequences
        fields = {"sequences": sequences, "scores": None if self.scores is None else tuple(self.scores),
                  "logits": None if self.logits is None else tuple(self.logits), CACHE_KWARG: cache}
        if encoder_outputs is None:
            return GenerateDecoderOnlyOutput(**fields)
        return GenerateEncoderDecoderOutput(**fields)


def count_step(stats: GenerationStats, num_drafted: int, num_accepted: int, num_emitted: int, draft_seconds: float,
               verify_seconds: float) -> None:
    stats.target_forwards += 1
    stats.verify_steps += 1
    stats.drafting_steps += num_drafted > 0
    stats.drafted += num_drafted
    stats.accepted += num_accepted
    stats.accepted_lengths.append(num_emitted)
    stats.draft_time += draft_seconds
    stats.verify_time += verify_seconds


def combine_stats(rows: list[GenerationStats], lossless: bool) -> GenerationStats:
    """The batch's totals; a batch of one is its row's own figures, a larger one keeps each row's in `rows`."""
    if len(rows) == 1:
        rows[0].lossless = lossless
        return rows[0]
    total = GenerationStats(lossless=lossless, rows=rows)
    for name in ("new_tokens", "target_forwards", "verify_steps", "drafting_steps", "drafted", "accepted",
                 "draft_time"):
        setattr(total, name, sum(getattr(stats, name) for stats in rows))
    total.accepted_lengths = [n for stats in rows for n in stats.accepted_lengths]
    total.verify_time = max(stats.verify_time for stats in rows)  # shared forwards: each row saw all of them
    total.prefill_time = rows[0].prefill_time
    return total
