"""A small causal LM with the target's vocabulary drafts K tokens autoregressively, with its own DynamicCache."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers.cache_utils import DynamicCache

from ..compat import CACHE_KWARG
from ..config import StrategyConfig, register_config
from ..schedules import DraftGate, ema, observe_gate
from .base import Draft, SpeculativeStrategy


DRAFT_DIR = "draft"  # the draft model inside a strategy folder
DRAFT_POINTER = "draft_model.json"  # or only where to load it from


@register_config
@dataclass
class DraftModelConfig(StrategyConfig):
    strategy_type = "draft_model"

    num_speculative_tokens: int = 5
    skip_unprofitable_drafts: bool = field(
        default=True,
        metadata={"help": "Draft only while the expected accepted count (learned online) pays for the draft's own "
                          "forwards plus the dearer verify, both measured; otherwise decode plainly, probing the "
                          "draft now and then (less and less often while it keeps failing)."},
    )


def output_vocab_size(model: PreTrainedModel) -> int:
    """Rows of the LM head: the size of the distribution the model predicts."""
    head = model.get_output_embeddings()
    return int(head.weight.shape[0]) if head is not None else int(model.config.vocab_size)


class DraftModelStrategy(SpeculativeStrategy):
    """Classic speculative decoding (Leviathan et al. 2023; Chen et al. 2023) with any Hugging Face causal LM as draft.

    With sampling the draft samples from its own distribution after the target's logits processors and hands that
    distribution (q) to the lossless verifier. Its cache is cropped to the tokens the target accepted.
    """

    config_class = DraftModelConfig

    def __init__(self, draft_model: PreTrainedModel, config: DraftModelConfig | None = None, **overrides) -> None:
        super().__init__(config, **overrides)
        if not isinstance(draft_model, PreTrainedModel):
            raise TypeError(f"draft_model must be a transformers PreTrainedModel, got {type(draft_model).__name__}.")
        self.draft_model = draft_model.eval()
        self._cache: DynamicCache | None = None
        self._cached_tokens: list[int] = []  # the tokens whose keys/values the draft cache holds
        # Starts optimistic (a whole draft accepted), so a good draft drafts from the first step; a useless one is
        # found out in a few steps and then only probed, ever more rarely.
        self.gate = DraftGate(prior_accepted=float(self.config.num_speculative_tokens), max_probe_every=64)
        self._draft_token_seconds: float | None = None  # EMA of one draft forward (one drafted token)

    def save_components(self, directory: Path, include_draft: bool = True) -> None:
        """`draft/`: the draft model (safetensors), or with `include_draft=False` only `draft_model.json`, a pointer
        to the repo or folder the draft was loaded from."""
        pointer = directory / DRAFT_POINTER
        if include_draft:
            self.draft_model.save_pretrained(directory / DRAFT_DIR)
            pointer.unlink(missing_ok=True)
            return
        name = str(getattr(self.draft_model.config, "_name_or_path", "") or "")
        if not name:
            raise ValueError("This draft model was not loaded from a repo or folder, so there is nothing to point to; "
                             "save it with include_draft=True (the default).")
        shutil.rmtree(directory / DRAFT_DIR, ignore_errors=True)  # a draft saved there before would win on load
        pointer.write_text(json.dumps({"name_or_path": name}, indent=2) + "\n")

    @classmethod
    def load_components(cls, directory: Path) -> tuple[PreTrainedModel]:
        if (directory / DRAFT_DIR).is_dir():
            return (AutoModelForCausalLM.from_pretrained(directory / DRAFT_DIR),)
        if (directory / DRAFT_POINTER).is_file():
            name = json.loads((directory / DRAFT_POINTER).read_text())["name_or_path"]
            return (AutoModelForCausalLM.from_pretrained(name),)
        raise ValueError(f"{directory} has no draft model ({DRAFT_DIR}/ or {DRAFT_POINTER}); pass the draft: "
                         "DraftModelStrategy.from_pretrained(folder, draft_model).")

    def begin(self, target, input_ids, generation_config, logits_processor) -> None:
        super().begin(target, input_ids, generation_config, logits_processor)
        target_vocab, draft_vocab = output_vocab_size(target), output_vocab_size(self.draft_model)
        if target_vocab != draft_vocab:
            raise ValueError(
                f"Draft vocabulary ({draft_vocab}) differs from the target's ({target_vocab}). DraftModelStrategy needs "
                "a draft that shares the target's tokenizer; pick such a draft (e.g. a smaller model of the same family)."
            )
        self._cache = DynamicCache(config=self.draft_model.config)
        self._cached_tokens = []

    def end(self) -> None:
        self._cache, self._cached_tokens = None, []

    def propose(self, input_ids: torch.LongTensor, max_tokens: int) -> Draft:
        if self.config.skip_unprofitable_drafts and not self.gate.should_draft(0, self._drafting_cost(max_tokens)):
            return Draft(input_ids.new_empty(0), bucket=0)
        start = time.perf_counter()
        draft = self._draft(input_ids, max_tokens)
        if draft.tokens.numel():
            seconds = (time.perf_counter() - start) / draft.tokens.numel()
            self._draft_token_seconds = ema(self._draft_token_seconds, seconds, self.gate.ema_alpha)
        draft.bucket = 0
        return draft

    def observe(self, input_ids, draft, num_accepted, target_scores, forward_seconds, hidden_states=None) -> None:
        super().observe(input_ids, draft, num_accepted, target_scores, forward_seconds, hidden_states)
        observe_gate(self.gate, draft, num_accepted, forward_seconds)

    def _drafting_cost(self, num_tokens: int) -> float:
        """What drafting `num_tokens` costs, in one-token target forwards (0 until both are measured)."""
        single = self.gate.single_forward_estimate
        if not single or self._draft_token_seconds is None:
            return 0.0
        return num_tokens * self._draft_token_seconds / single

    @torch.no_grad()
    def _draft(self, input_ids: torch.LongTensor, max_tokens: int) -> Draft:
        device = self.draft_model.device
        sequence = input_ids.to(device)  # [1, n]
        do_sample = bool(self.generation_config.do_sample)
        pending = self._sync_cache(sequence[0].tolist())  # [1, m] tokens the draft has not seen yet
        drafted, probs = [], []
        for _ in range(max_tokens):
            logits = self._forward(pending)  # [1, V]
            scores = self.logits_processor(sequence, logits)  # [1, V]
            distribution = scores.softmax(dim=-1)[0]  # [V]
            if self.schedule.stop_on_entropy(float(_entropy(distribution))):
                break
            token = torch.multinomial(distribution, 1) if do_sample else distribution.argmax().view(1)  # [1]
            drafted.append(token)
            probs.append(distribution)
            sequence = torch.cat([sequence, token[None]], dim=-1)
            pending = token[None]
        if not drafted:
            return Draft(input_ids.new_empty(0))
        tokens = torch.cat(drafted).to(input_ids.device)  # [k]
        return Draft(tokens, torch.stack(probs).to(input_ids.device) if do_sample else None)

    def _sync_cache(self, tokens: list[int]) -> torch.LongTensor:
        """Crops the draft cache to its longest prefix shared with `tokens` (keeping at least one token to feed) and
        returns the tokens still to feed, `[1, m]`."""
        common = 0
        for cached, token in zip(self._cached_tokens, tokens):
            if cached != token:
                break
            common += 1
        common = min(common, len(tokens) - 1)
        self._cache.crop(-(self._cache.get_seq_length() - common))
        self._cached_tokens = tokens[:common]
        return torch.tensor([tokens[common:]], dtype=torch.long, device=self.draft_model.device)

    def _forward(self, tokens: torch.LongTensor) -> torch.Tensor:
        past = len(self._cached_tokens)
        position_ids = torch.arange(past, past + tokens.shape[1], device=tokens.device)[None]
        outputs = self.draft_model(input_ids=tokens, **{CACHE_KWARG: self._cache}, position_ids=position_ids,
                                   use_cache=True, logits_to_keep=1)
        self._cached_tokens.extend(tokens[0].tolist())
        return outputs.logits[:, -1].float()


def _entropy(distribution: torch.Tensor) -> torch.Tensor:
    return -(distribution * torch.log(distribution.clamp_min(1e-30))).sum()
