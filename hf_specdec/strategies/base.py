"""The strategy interface: a Transformers `CandidateGenerator` with a config, a K schedule and statistics."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from transformers import GenerationConfig, LogitsProcessorList, PreTrainedModel
from transformers.generation.candidate_generator import CandidateGenerator

from ..config import StrategyConfig
from ..schedules import make_schedule
from ..stats import GenerationStats, StepEvent
from ..tree_decoding import TreeDraft


@dataclass
class Draft:
    """What a drafter proposes for one step.

    tokens: `[k]` drafted ids (k may be 0: then the step is a plain decoding step).
    probs: `[k, V]` the draft distribution q after the target's logits processors, or None for a deterministic
        drafter (verified as a point mass, which is still lossless).
    bucket: drafter-specific label used by the cost gate (e.g. the matched n-gram length).
    tree: optional `TreeDraft` (Medusa): several candidates verified in one forward with a tree mask; `tokens`
        is then its top-1 chain (for `get_candidates`).
    """

    tokens: torch.LongTensor
    probs: torch.Tensor | None = None
    bucket: int | None = None
    tree: TreeDraft | None = None

    @classmethod
    def empty(cls, device: torch.device | None = None) -> Draft:
        return cls(torch.empty(0, dtype=torch.long, device=device))


class SpeculativeStrategy(CandidateGenerator):
    """Base class of every hf_specdec strategy. Pass an instance as `model.generate(..., assistant_model=strategy)`.

    Subclasses implement `propose`; they may extend `begin` (per-call setup), `observe` (learn from the verify step)
    and `end`. `last_stats` holds the `GenerationStats` of the latest `generate` call.
    """

    config_class: ClassVar[type[StrategyConfig]] = StrategyConfig
    # True: the loop asks the target for its last hidden states and passes them to `observe` (Medusa heads).
    needs_hidden_states: ClassVar[bool] = False

    def __init__(self, config: StrategyConfig | None = None, **overrides: Any) -> None:
        if config is None:
            config = self.config_class(**overrides)
        elif overrides:
            config = dataclasses.replace(config, **overrides)
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}.")
        self.config = config
        self.schedule = make_schedule(config)
        self.last_stats: GenerationStats | None = None
        self.step_listeners: list[Callable[[StepEvent], None]] = []
        self.target: PreTrainedModel | None = None
        self.generation_config: GenerationConfig | None = None
        self.logits_processor: LogitsProcessorList | None = None
        self._last_draft_length = 0

    @property
    def lossless(self) -> bool:
        """False only for typical acceptance, which changes the output distribution."""
        return self.config.verification != "typical"

    # ---- lifecycle, driven by `hf_specdec.decoding.speculative_decode` ----------------------------------------
    def begin(self, target: PreTrainedModel, input_ids: torch.LongTensor, generation_config: GenerationConfig,
              logits_processor: LogitsProcessorList) -> None:
        """Called once per `generate` call, before the prefill. Subclasses validate the target here."""
        self.target = target
        self.generation_config = generation_config
        self.logits_processor = logits_processor

    def propose(self, input_ids: torch.LongTensor, max_tokens: int) -> Draft:
        """Drafts at most `max_tokens` tokens to follow `input_ids` (`[1, n]`)."""
        raise NotImplementedError

    def observe(self, input_ids: torch.LongTensor, draft: Draft, num_accepted: int, target_scores: torch.Tensor,
                forward_seconds: float | None, hidden_states: torch.Tensor | None = None) -> None:
        """Called after the prefill (empty draft, `forward_seconds=None`) and after each verify step.

        input_ids: `[1, n]` the sequence after this step. target_scores: `[m, V]` the target's processed scores for
        the m tokens this step emitted (row i scored the token now at `n - m + i`). hidden_states: `[m, H]` the
        target's last hidden states for those rows, only when `needs_hidden_states`. The base class updates the K
        schedule."""
        if draft.tokens.numel():
            self.schedule.update(draft.tokens.numel(), num_accepted)

    def end(self) -> None:
        """Called once per `generate` call, after the last step."""

    # ---- Transformers' CandidateGenerator interface, for code written against it ------------------------------
    def get_candidates(self, input_ids: torch.LongTensor, **kwargs: Any) -> tuple[torch.LongTensor, torch.Tensor | None]:
        draft = self.propose(input_ids, self.schedule.next_k())
        self._last_draft_length = draft.tokens.numel()
        candidate_ids = torch.cat([input_ids, draft.tokens.to(input_ids.device)[None]], dim=-1)
        candidate_logits = None if draft.probs is None else draft.probs.log()[None]
        return candidate_ids, candidate_logits

    def update_candidate_strategy(self, input_ids: torch.LongTensor, scores: torch.Tensor, num_matches: int) -> None:
        if self._last_draft_length:
            self.schedule.update(self._last_draft_length, int(num_matches))

    # ---- configs ------------------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        self.config.save_pretrained(save_directory)

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, *args: Any, **kwargs: Any) -> SpeculativeStrategy:
        """Rebuilds the strategy from a saved config; extra arguments (e.g. a draft model) pass to the constructor."""
        return cls(*args, config=cls.config_class.from_pretrained(path_or_repo_id), **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        return self.config.push_to_hub(repo_id, **kwargs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"
