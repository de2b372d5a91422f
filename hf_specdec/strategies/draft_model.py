"""A small causal LM with the target's vocabulary drafts K tokens autoregressively, with its own DynamicCache;
optionally prompt lookup drafts first where the text repeats itself."""

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
from ..distilled_draft import draft_vocab as carried_draft_vocab, is_draft_folder
from ..schedules import DraftGate, ema, observe_gate
from .base import Draft, SpeculativeStrategy
from .ngram import LOOKUP_MAX_NGRAM, check_lookup_min_ngram, longest_match


DRAFT_DIR = "draft"  # the draft model inside a strategy folder
DRAFT_POINTER = "draft_model.json"  # or only where to load it from
MODEL_BUCKET = 0  # cost-gate bucket of the draft model's drafts; prompt-lookup drafts use 1 + 2 * n-gram size + ...


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
    lookup_min_ngram: int = field(
        default=2,
        metadata={"help": "0: the draft model drafts every step. n in 1..4 (default 2, the fastest measured with "
                          "the distilled SmolLM2 draft): first look the last 4, 3, ..., n tokens up in the text so far "
                          "(prompt lookup); on a match, draft its continuation (up to `lookup_num_tokens`) instead "
                          "of running the draft model."},
    )
    lookup_num_tokens: int = field(default=10, metadata={"help": "Longest prompt-lookup draft (lookup_min_ngram > 0)."})
    use_draft_vocab: bool = field(
        default=True,
        metadata={"help": "A draft that carries a draft vocabulary (drafts built by recipes/distill_draft.py) "
                          "scores only those tokens: a cheaper LM head, still lossless (see distilled_draft.py)."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_lookup_min_ngram(self.lookup_min_ngram)
        if self.lookup_num_tokens < 1:
            raise ValueError(f"lookup_num_tokens must be >= 1, got {self.lookup_num_tokens}.")


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
        self._vocab: torch.LongTensor | None = None  # the draft vocabulary in use this call, see `begin`
        self._vocab_head_key: tuple | None = None  # which LM head and vocabulary `_vocab_head_t` was sliced from
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
        if is_draft_folder(name):
            raise ValueError(f"{name} is a distilled draft that shares its target's embedding and LM head, so a pointer "
                             "to it cannot be loaded on its own: save with include_draft=True (a full copy), or load "
                             "it with hf_specdec.distilled_draft.load_draft(folder, target) and pass it: "
                             "DraftModelStrategy.from_pretrained(strategy_folder, draft).")
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
        self._vocab = carried_draft_vocab(self.draft_model) if self.config.use_draft_vocab else None
        if self._vocab is not None:
            self._vocab_size = draft_vocab
            weight = self.draft_model.get_output_embeddings().weight  # [V, H]
            key = (weight.data_ptr(), weight._version, self._vocab.data_ptr())
            if self._vocab_head_key != key:  # sliced once, again only if the head or the vocabulary changed
                self._vocab_head_t = weight.detach()[self._vocab].t().contiguous()  # [H, V']: x @ W^T, M = 1
                self._vocab_head_key = key

    def end(self) -> None:
        self._cache, self._cached_tokens = None, []

    def draft_budget(self) -> int:
        k = self.schedule.next_k()
        return max(k, self.config.lookup_num_tokens) if self.config.lookup_min_ngram else k

    def propose(self, input_ids: torch.LongTensor, max_tokens: int) -> Draft:
        if self.config.lookup_min_ngram:
            match = longest_match(input_ids[0], LOOKUP_MAX_NGRAM, self.config.lookup_min_ngram)
            if match is not None:
                size, start, consistent = match
                bucket = 1 + 2 * size + consistent  # learnt apart from the model's drafts, as NGramStrategy does
                if not self.config.skip_unprofitable_drafts or self.gate.should_draft(bucket):
                    return Draft(input_ids[0, start : start + min(max_tokens, self.config.lookup_num_tokens)],
                                 bucket=bucket)
        max_tokens = min(max_tokens, self.schedule.next_k())
        if self.config.skip_unprofitable_drafts and not self.gate.should_draft(MODEL_BUCKET,
                                                                               self._drafting_cost(max_tokens)):
            return Draft(input_ids.new_empty(0), bucket=MODEL_BUCKET)
        start = time.perf_counter()
        draft = self._draft(input_ids, max_tokens)
        if draft.tokens.numel():
            seconds = (time.perf_counter() - start) / draft.tokens.numel()
            self._draft_token_seconds = ema(self._draft_token_seconds, seconds, self.gate.ema_alpha)
        draft.bucket = MODEL_BUCKET
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
        do_sample = bool(self.generation_config.do_sample)
        # Greedy with no logits processors and no entropy stop: the argmax of the raw logits is the draft.
        argmax_only = not do_sample and not self.logits_processor and not self.schedule.needs_entropy
        sequence = input_ids.to(self.draft_model.device)  # [1, n]
        pending = self._sync_cache(sequence[0].tolist())  # [1, m] tokens the draft has not seen yet
        drafted, probs = [], []
        for _ in range(max_tokens):
            logits = self._forward(pending)  # [1, V]
            if argmax_only:
                token = logits.argmax(-1)  # [1]
            else:
                distribution = self.logits_processor(sequence, logits).softmax(dim=-1)[0]  # [V]
                if self.schedule.stop_on_entropy(float(_entropy(distribution))):
                    break
                token = torch.multinomial(distribution, 1) if do_sample else distribution.argmax().view(1)  # [1]
                probs.append(distribution)
                sequence = torch.cat([sequence, token[None]], dim=-1)
            drafted.append(token)
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
        """The draft's logits `[1, V]` for the token after `tokens`, which it appends to its cache."""
        past = len(self._cached_tokens)
        position_ids = torch.arange(past, past + tokens.shape[1], device=tokens.device)[None]
        inputs = {"input_ids": tokens, CACHE_KWARG: self._cache, "position_ids": position_ids, "use_cache": True}
        self._cached_tokens.extend(tokens[0].tolist())
        if self._vocab is None:
            return self.draft_model(**inputs, logits_to_keep=1).logits[:, -1].float()
        hidden = self.draft_model.get_decoder()(**inputs).last_hidden_state[:, -1]  # [1, H]
        logits = hidden.new_full((1, self._vocab_size), float("-inf"))
        return logits.index_copy_(1, self._vocab, hidden @ self._vocab_head_t).float()  # [1, V]: -inf off the vocab


def _entropy(distribution: torch.Tensor) -> torch.Tensor:
    return -(distribution * torch.log(distribution.clamp_min(1e-30))).sum()
