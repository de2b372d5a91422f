"""The strategy interface: a Transformers `CandidateGenerator` with a config, a K schedule and statistics."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from transformers import GenerationConfig, LogitsProcessorList, PreTrainedModel
from transformers.generation.candidate_generator import CandidateGenerator

from ..config import StrategyConfig, push_folder_to_hub
from ..hub.folders import resolve_folder
from ..hub.publishing import (check_target_fits, read_target_file, target_fingerprint,
                          write_custom_generate, write_model_card, write_target_file)
from ..rng import keeps_rng
from ..schedules import KSchedule, make_schedule
from ..stats import GenerationStats, StepEvent
from ..tree import TreeDraft


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


class RowState:
    """One row's drafting state for one `generate` call: its K schedule and the engine's host mirror of its tokens;
    strategies subclass it with their own (cost gate, n-gram store, hidden state, drafter cache, ...)."""

    def __init__(self, schedule: KSchedule) -> None:
        self.schedule = schedule
        # The engine's host mirror of the row's tokens during a call (kept current by it), so drafters read tokens
        # without a device-to-host transfer per step; None outside a call.
        self.host_tokens: list[int] | None = None
        # The logits processors as this row sees them (per-row entries sliced, see engine.scoring.row_processors).
        self.logits_processor: LogitsProcessorList | None = None

    def token_list(self, input_ids: torch.LongTensor) -> list[int]:
        """`input_ids[0]` (`[1, n]`) as a host list: the engine's mirror when it is current (no device read), else
        read from the tensor (a strategy called outside our loop)."""
        mirror = self.host_tokens
        if mirror is not None and len(mirror) == input_ids.shape[-1]:
            return mirror
        return input_ids[0].tolist()


@dataclass
class RowOutcome:
    """What one row's verify step (or the prefill) tells its drafter; see `SpeculativeStrategy.observe_row`."""

    row: int
    input_ids: torch.LongTensor
    draft: Draft
    num_accepted: int
    target_scores: torch.Tensor
    forward_seconds: float | None
    hidden_states: torch.Tensor | None = None


class SpeculativeStrategy(CandidateGenerator):
    """Base class of every hf_specdec strategy. Pass an instance as `model.generate(..., assistant_model=strategy)`.

    One object drafts for every row of a batch: `begin` makes a `RowState` per row (`self.rows`), the engine asks
    `propose_rows` for every row's draft at once and reports back through `observe_rows`. Subclasses implement
    `propose_row` (one row; a drafter that gains from batching overrides `propose_rows`) and may extend
    `new_row`/`start_row` (per-row state), `observe_row` and `begin`/`end`. `last_stats` holds the
    `GenerationStats` of the latest `generate` call.
    """

    config_class: ClassVar[type[StrategyConfig]] = StrategyConfig
    # True: the loop asks the target for its last hidden states and passes them to `observe` (Medusa heads).
    needs_hidden_states: ClassVar[bool] = False

    @property
    def hidden_state_layers(self) -> list[int] | None:
        """Which hidden states `observe` gets: None = the last layer's; layer ids (EAGLE-3's auxiliary layers) =
        those layers' side by side."""
        return None
    # False: the strategy refuses encoder-decoder targets in `begin` (it drafts from a decoder-only target's states).
    supports_encoder_decoder: ClassVar[bool] = True

    def __init__(self, config: StrategyConfig | None = None, **overrides: Any) -> None:
        if config is None:
            config = self.config_class(**overrides)
        elif overrides:
            config = dataclasses.replace(config, **overrides)
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}.")
        self.config = config
        self.rows: list[RowState] = []
        self.last_stats: GenerationStats | None = None
        self.step_listeners: list[Callable[[StepEvent], None]] = []
        self.target: PreTrainedModel | None = None
        self.generation_config: GenerationConfig | None = None
        self.logits_processor: LogitsProcessorList | None = None
        self._last_draft_length = 0
        # The target this strategy was saved for (`hf_specdec_target.json`), checked in `begin`; None: any target.
        self.made_for: dict[str, Any] | None = None
        # Encoder-decoder targets: what the encoder read this call (see `set_encoder_inputs`), else None.
        self.encoder_inputs: dict[str, torch.Tensor] | None = None
        self.source_ids: torch.LongTensor | None = None
        self._source_list: list[int] = []

    @property
    def lossless(self) -> bool:
        """False only for typical acceptance, which changes the output distribution."""
        return self.config.verification != "typical"

    # ---- per-row state ---------------------------------------------------------------------------------------
    def new_row(self) -> RowState:
        """A fresh row state; subclasses return their own RowState subclass."""
        return RowState(make_schedule(self.config))

    def start_row(self, input_ids: torch.LongTensor) -> RowState:
        """The state of a row starting from `input_ids` (`[1, n]`, padding removed); a drafter that learns from
        the prompt (NASD's store) reads it here."""
        return self.new_row()

    @property
    def row(self) -> RowState:
        """Row 0's state, what the single-row methods (`propose`, `observe`, Transformers' `get_candidates`) use."""
        if not self.rows:
            self.rows = [self.new_row()]
        return self.rows[0]

    @property
    def schedule(self) -> KSchedule:
        return self.row.schedule

    # ---- lifecycle, driven by `hf_specdec.engine` --------------------------------------------------------------
    def begin(self, target: PreTrainedModel, input_ids: torch.LongTensor | list[torch.LongTensor],
              generation_config: GenerationConfig, logits_processor: LogitsProcessorList) -> None:
        """Called once per `generate` call, before the prefill, with every row's prompt (`[B, n]`, or a list of
        `[1, n_b]` rows with their padding removed). Subclasses validate the target here."""
        check_target_fits(self.made_for, target)
        if target is not None and target.config.is_encoder_decoder and not self.supports_encoder_decoder:
            raise ValueError(f"{type(self).__name__} supports decoder-only targets; {type(target).__name__} is an "
                             "encoder-decoder. Use NGramStrategy(), NASDStrategy() or DraftModelStrategy(draft) "
                             "with it.")
        self.target = target
        self.generation_config = generation_config
        self.logits_processor = logits_processor
        rows = list(input_ids.split(1)) if torch.is_tensor(input_ids) else list(input_ids)
        self.rows = [self.start_row(ids) for ids in rows]

    def models(self) -> list[torch.nn.Module]:
        """The models besides the target this strategy runs (a draft model), which our loop may give the fast CPU
        kernels for the call (see `StrategyConfig.cpu_kernels`); heads and drafters it owns are optimized in
        `begin` instead."""
        return []

    def set_encoder_inputs(self, encoder_inputs: dict[str, torch.Tensor] | None) -> None:
        """Called before `begin` with what an encoder-decoder target's encoder read (`{main input name: [1, S...],
        "attention_mask": [1, S]}`), or None for a decoder-only target. Integer inputs (T5, BART) become
        `source_ids` `[S]` (padding dropped), which prompt lookup searches too: summaries and translations copy
        from their source."""
        self.encoder_inputs = encoder_inputs
        self.source_ids = None
        source = None if encoder_inputs is None else next(iter(encoder_inputs.values()))
        if source is not None and not source.is_floating_point() and source.dim() == 2:
            mask = encoder_inputs.get("attention_mask")
            self.source_ids = source[0] if mask is None else source[0][mask[0].bool()]
        self._source_list = [] if self.source_ids is None else self.source_ids.tolist()

    def lookup_tokens(self, row: RowState, input_ids: torch.LongTensor) -> list[int]:
        """The tokens prompt lookup searches, as a host list `[S + n]`: the encoder's source ids (if any), then the
        output so far (the latest occurrence wins, so the output's own repeats come before the source's)."""
        tokens = row.token_list(input_ids)
        return self._source_list + tokens if self._source_list else tokens

    @property
    def drafts_every_position(self) -> bool:
        """True: `verification_scores` needs the draft's distribution at every verified position, so the loop asks
        for a draft (`propose(input_ids, 0)` returns just that distribution) even where none may be drafted: the
        prefill and the last token."""
        return False

    def verification_scores(self, row: RowState, target_scores: torch.Tensor, draft: Draft) -> torch.Tensor:
        """The scores `[k + 1, V]` a step verifies against and emits from: here the target's own processed scores;
        a strategy sampling another distribution (DraftModelStrategy with a GeometricMixture) returns its log-probs."""
        return target_scores

    def bonus_scores(self, row: RowState, input_ids: torch.LongTensor, draft_tokens: torch.LongTensor,
                     ) -> torch.Tensor | None:
        """Called when every drafted token was accepted: the final scores `[V]` of the bonus position if
        `verification_scores` left that row provisional (then the loop draws the bonus token from these), else
        None (here: the target's row is final)."""
        return None

    def finish_stats(self, row: RowState, stats: GenerationStats) -> None:
        """Called once per `generate` call and row with the row's statistics, to add the strategy's own figures."""

    def draft_budget(self, row: RowState) -> int:
        """The most tokens the row's next step may draft: the schedule's K (a strategy with more than one drafter,
        e.g. prompt lookup in front of a model, may allow its cheap one more)."""
        return row.schedule.next_k()

    def propose_rows(self, requests: list[tuple[int, torch.LongTensor, int]]) -> list[Draft]:
        """Every drafting row's draft at once: `requests` holds (row index, its tokens `[1, n]`, most tokens to
        draft). Row by row here (n-gram stores cost microseconds); batched drafters override it."""
        return [self.propose_row(self.rows[index], input_ids, max_tokens) for index, input_ids, max_tokens in requests]

    def observe_rows(self, outcomes: list[RowOutcome]) -> None:
        """What every row's verify step (or the prefill) gave; row by row here."""
        for outcome in outcomes:
            self.observe_row(self.rows[outcome.row], outcome.input_ids, outcome.draft, outcome.num_accepted,
                             outcome.target_scores, outcome.forward_seconds, outcome.hidden_states)

    def propose_row(self, row: RowState, input_ids: torch.LongTensor, max_tokens: int) -> Draft:
        """Drafts at most `max_tokens` tokens to follow `input_ids` (`[1, n]`) for one row."""
        raise NotImplementedError

    def observe_row(self, row: RowState, input_ids: torch.LongTensor, draft: Draft, num_accepted: int,
                    target_scores: torch.Tensor, forward_seconds: float | None,
                    hidden_states: torch.Tensor | None = None) -> None:
        """Called after the prefill (empty draft, `forward_seconds=None`) and after each verify step, per row.

        input_ids: `[1, n]` the sequence after this step. target_scores: `[m, V]` the target's processed scores for
        the m tokens this step emitted (row i scored the token now at `n - m + i`). hidden_states: `[m, H]` the
        target's last hidden states for those rows, only when `needs_hidden_states`; after the prefill they cover
        every prompt position the prefill ran (`[P, H]`, row i produced the token after prompt position i, the last
        row the first new token). The base class updates the K schedule."""
        if draft.tokens.numel():
            row.schedule.update(draft.tokens.numel(), num_accepted)

    # ---- one row (row 0), for code that drives a strategy directly ----------------------------------------------
    def propose(self, input_ids: torch.LongTensor, max_tokens: int) -> Draft:
        """`propose_row` for a single sequence (`[1, n]`)."""
        self.row  # noqa: B018 (makes row 0 when no call has)
        return self.propose_rows([(0, input_ids, max_tokens)])[0]

    def observe(self, input_ids: torch.LongTensor, draft: Draft, num_accepted: int, target_scores: torch.Tensor,
                forward_seconds: float | None, hidden_states: torch.Tensor | None = None) -> None:
        """`observe_row` for a single sequence."""
        self.row  # noqa: B018
        self.observe_rows([RowOutcome(0, input_ids, draft, num_accepted, target_scores, forward_seconds,
                                      hidden_states)])

    def end(self) -> None:
        """Called once per `generate` call, after the last step."""

    # ---- Transformers' CandidateGenerator interface, for code written against it ------------------------------
    def get_candidates(self, input_ids: torch.LongTensor, **kwargs: Any) -> tuple[torch.LongTensor, torch.Tensor | None]:
        draft = self.propose(input_ids, self.draft_budget(self.row))
        self._last_draft_length = draft.tokens.numel()
        candidate_ids = torch.cat([input_ids, draft.tokens.to(input_ids.device)[None]], dim=-1)
        candidate_logits = None if draft.probs is None else draft.probs.log()[None]
        return candidate_ids, candidate_logits

    def update_candidate_strategy(self, input_ids: torch.LongTensor, scores: torch.Tensor, num_matches: int) -> None:
        if self._last_draft_length:
            self.schedule.update(self._last_draft_length, int(num_matches))

    # ---- saving and loading: one self-contained folder (see `hf_specdec.publishing`) ---------------------------
    def save_pretrained(self, save_directory: str | os.PathLike, *, target: PreTrainedModel | None = None,
                        base_model: str | None = None, repo_id: str | None = None,
                        metrics: Mapping[str, Any] | None = None, **component_options: Any) -> Path:
        """Writes the config, the weights the strategy needs, `custom_generate/` and a model card into
        `save_directory`, so `generate(custom_generate=save_directory, trust_remote_code=True)` runs it.

        target: the model it is for (default: the one of the latest `generate` call, if any); recorded so that
        another target is refused. base_model: the target's Hub id for the model card. metrics: measured numbers
        for the card (default: the latest call's statistics)."""
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save_pretrained(directory)
        self.save_components(directory, **component_options)
        target = target if target is not None else self.target
        name = base_model or (self.made_for or {}).get("name")  # a loaded strategy keeps the name it came with
        made_for = target_fingerprint(target, name) if target is not None else self.made_for
        write_target_file(directory, made_for)
        target_name = (made_for or {}).get("name")
        title = f"{self.display_name()} for {target_name}" if target_name else self.display_name()
        write_custom_generate(directory, title, repo_id)
        if metrics is None and self.last_stats is not None:
            stats = self.last_stats
            metrics = {"acceptance rate (latest call)": f"{stats.acceptance_rate:.2f}",
                       "mean accepted length (latest call)": f"{stats.mean_accepted_length:.2f}"}
        write_model_card(directory, title=title, strategy_type=self.config.strategy_type,
                         config=self.config.to_dict(), base_model=base_model or _hub_id(target_name),
                         repo_id=repo_id, metrics=metrics)
        return directory

    def display_name(self) -> str:
        """What the model card's title calls this strategy (a subclass may name its variant, e.g. Hydra heads)."""
        return type(self).__name__

    def save_components(self, directory: Path) -> None:
        """Subclasses with weights (heads, a draft model) write them into the strategy folder here."""

    @classmethod
    def load_components(cls, directory: Path) -> tuple:
        """The constructor's positional arguments (heads, draft model) read back from a strategy folder."""
        return ()

    @classmethod
    @keeps_rng
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, *args: Any, **overrides: Any) -> SpeculativeStrategy:
        """Rebuilds the strategy from a folder (or Hub repo) that `save_pretrained` wrote. Positional arguments
        (e.g. a draft model already in memory) replace what the folder holds; keyword arguments override settings."""
        directory = resolve_folder(path_or_repo_id)
        config = cls.config_class.from_pretrained(directory)
        strategy = cls(*(args or cls.load_components(directory)), config=config, **overrides)
        strategy.made_for = read_target_file(directory)
        return strategy

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, token: str | None = None,
                    commit_message: str = "Upload hf_specdec strategy", **save_kwargs: Any) -> str:
        """Uploads the folder `save_pretrained` writes (weights included) to `repo_id`; returns the commit URL."""
        return push_folder_to_hub(lambda folder: self.save_pretrained(folder, repo_id=repo_id, **save_kwargs),
                                  repo_id, private=private, token=token, commit_message=commit_message)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


def _hub_id(name: str | None) -> str | None:
    """A target name fit for the card's `base_model` metadata: only Hub ids ("org/name") are."""
    return name if name and name.count("/") == 1 and not Path(name).exists() else None
