"""A small model drafts K tokens autoregressively, with its own KV cache; optionally prompt lookup drafts first where
the text repeats itself.

The draft shares the target's tokenizer, or (with `draft_tokenizer=` and `target_tokenizer=`) it has its own: its
text is then re-tokenised into target tokens, verified as point masses. For an encoder-decoder target the draft is
an encoder-decoder too and runs its encoder once per call. With `verify_against=GeometricMixture(...)` the output
follows q* ∝ draft^alpha * target^(1 - alpha) instead of the target alone (see docs/mixture.md).
"""

from __future__ import annotations

import functools
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, PreTrainedModel
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from ..compat import CACHE_KWARG
from ..config import StrategyConfig, register_config
from ..engine.run import accepts_logits_to_keep
from ..engine.timing import synchronized_now
from ..distilled_draft import draft_vocab as carried_draft_vocab, is_draft_folder
from ..mixture_math import GeometricMixture
from ..tokenizer_bridge import TokenizerBridge
from ..schedules import DraftGate, ema, observe_gate
from .base import Draft, SpeculativeStrategy
from .ngram import LOOKUP_MAX_NGRAM, check_lookup_min_ngram, lookup_draft


DRAFT_DIR = "draft"  # the draft model inside a strategy folder
DRAFT_POINTER = "draft_model.json"  # or only where to load it from
# Sampling q* with the distilled SmolLM2 draft (benchmarks/mixture_benchmark.py --sample): K = 2 with every step
# drafted was the fastest measured (1.22x / 1.21x the plain q* sampler on code / prose; K = 5 0.97x / 1.07x, the
# cost gate on K = 2 1.08x / 1.22x), so `verify_against=` without a config starts from these; arguments override.
MIXTURE_DEFAULTS = {"num_speculative_tokens": 2, "skip_unprofitable_drafts": False}
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

    mixture_alpha: float | str | None = field(
        default=None,
        metadata={"help": "None: outputs follow the target. A weight in [0, 1] or \"auto\": they follow the geometric "
                          "mixture q* ∝ draft^alpha * target^(1 - alpha) (set it with verify_against="
                          "GeometricMixture(alpha), which without a config also sets K = 2 and drafts every step: "
                          "MIXTURE_DEFAULTS, the fastest measured); prompt lookup and the draft vocabulary are off "
                          "then, since q* needs the draft's full distribution at every position."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mixture_alpha is not None:
            GeometricMixture(self.mixture_alpha)  # validates it
            if self.verification == "typical":
                raise ValueError("verification='typical' cannot be combined with a GeometricMixture: q* is sampled "
                                 "exactly or not at all. Use verification='auto'.")
        check_lookup_min_ngram(self.lookup_min_ngram)
        if self.lookup_num_tokens < 1:
            raise ValueError(f"lookup_num_tokens must be >= 1, got {self.lookup_num_tokens}.")


def output_vocab_size(model: PreTrainedModel) -> int:
    """Rows of the LM head: the size of the distribution the model predicts."""
    head = model.get_output_embeddings()
    return int(head.weight.shape[0]) if head is not None else int(model.config.vocab_size)


class DraftModelStrategy(SpeculativeStrategy):
    """Classic speculative decoding (Leviathan et al. 2023; Chen et al. 2023) with any Hugging Face model as draft.

    With sampling the draft samples from its own distribution after the target's logits processors and hands that
    distribution (q) to the lossless verifier. Its cache is cropped to the tokens the target accepted.

    Args:
        draft_model: a causal LM (or, for an encoder-decoder target, an encoder-decoder) sharing the target's
            tokenizer, or any causal LM if both tokenizers are given.
        draft_tokenizer, target_tokenizer: a draft with another tokenizer (universal assisted generation): its
            drafts are decoded to text and re-encoded as target tokens, verified as point masses. That stays lossless
            for sampling too: a point-mass draft x is accepted with probability p(x) and otherwise the token is drawn
            from p with x removed, so each emitted token follows p whatever proposed x.
        verify_against: `GeometricMixture(alpha)` to sample q* ∝ draft^alpha * target^(1 - alpha) (the draft as a
            policy, the target as a reference) instead of the target alone; sets `mixture_alpha`.
    """

    config_class = DraftModelConfig

    def __init__(self, draft_model: PreTrainedModel, config: DraftModelConfig | None = None, *,
                 draft_tokenizer=None, target_tokenizer=None, verify_against: GeometricMixture | None = None,
                 **overrides) -> None:
        if verify_against is not None:
            if not isinstance(verify_against, GeometricMixture):
                raise TypeError("verify_against takes hf_specdec.GeometricMixture(alpha=...), got "
                                f"{type(verify_against).__name__}.")
            overrides = {**({} if config is not None else MIXTURE_DEFAULTS), **overrides,
                         "mixture_alpha": verify_against.alpha}
        super().__init__(config, **overrides)
        if not isinstance(draft_model, PreTrainedModel):
            raise TypeError(f"draft_model must be a transformers PreTrainedModel, got {type(draft_model).__name__}.")
        if (draft_tokenizer is None) != (target_tokenizer is None):
            raise ValueError("A draft with another tokenizer needs both: DraftModelStrategy(draft, "
                             "draft_tokenizer=..., target_tokenizer=...).")
        self.draft_model = draft_model.eval()
        self.bridge = None if draft_tokenizer is None else TokenizerBridge(target_tokenizer, draft_tokenizer)
        alpha = self.config.mixture_alpha
        self.mixture = None if alpha is None else GeometricMixture(alpha)
        if self.mixture is not None and self.bridge is not None:
            raise ValueError("verify_against=GeometricMixture needs the draft's and the target's distributions over "
                             "one vocabulary; a draft with another tokenizer has its own. Use a draft that shares "
                             "the target's tokenizer.")
        self._cache: DynamicCache | EncoderDecoderCache | None = None
        self._encoder_kwargs: dict = {}  # an encoder-decoder draft's own encoder output, computed once per call
        self._vocab: torch.LongTensor | None = None  # the draft vocabulary in use this call, see `begin`
        self._vocab_head_key: tuple | None = None  # which LM head and vocabulary `_vocab_head_t` was sliced from
        self._cached_tokens: list[int] = []  # the tokens whose keys/values the draft cache holds, known on the host
        self._unconfirmed = 0  # drafted tokens fed to the draft cache after those, not read back (see `observe`)
        self._alphas: torch.Tensor | None = None  # alpha* of the latest verified positions (mixture)
        self._bonus_target_row: torch.Tensor | None = None  # the target's scores where `bonus_scores` may be asked
        self._alpha_total, self._alpha_count = 0.0, 0
        # Starts optimistic (a whole draft accepted), so a good draft drafts from the first step; a useless one is
        # found out in a few steps and then only probed, ever more rarely.
        self.gate = DraftGate(prior_accepted=float(self.config.num_speculative_tokens), max_probe_every=64)
        self._draft_token_seconds: float | None = None  # EMA of one draft forward (one drafted token)

    def models(self) -> list[torch.nn.Module]:
        return [self.draft_model]

    def _fork_components(self) -> tuple[tuple, dict]:
        tokenizers = {} if self.bridge is None else {"draft_tokenizer": self.bridge.draft_tokenizer,
                                                     "target_tokenizer": self.bridge.target_tokenizer}
        return (self.draft_model,), tokenizers

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
        """The draft model; a draft with another tokenizer needs its tokenizers passed again to `from_pretrained`
        (`draft_tokenizer=..., target_tokenizer=...`): they are not saved with the strategy."""
        if (directory / DRAFT_DIR).is_dir():
            return (_load_model(directory / DRAFT_DIR),)
        if (directory / DRAFT_POINTER).is_file():
            return (_load_model(json.loads((directory / DRAFT_POINTER).read_text())["name_or_path"]),)
        raise ValueError(f"{directory} has no draft model ({DRAFT_DIR}/ or {DRAFT_POINTER}); pass the draft: "
                         "DraftModelStrategy.from_pretrained(folder, draft_model).")

    def begin(self, target, input_ids, generation_config, logits_processor) -> None:
        super().begin(target, input_ids, generation_config, logits_processor)
        self._check_pair(target)
        draft = self.draft_model
        self._cached_tokens, self._unconfirmed, self._encoder_kwargs = [], 0, {}
        self._alpha_total, self._alpha_count = 0.0, 0
        if self.batch_rows > 1:  # a row of a batch: drafting must prove itself first (see `_drafting_cost`)
            self.gate.prior_accepted = 1.0
        if self.bridge is not None:
            self.bridge.reset()
        if draft.config.is_encoder_decoder:
            self._cache = EncoderDecoderCache(DynamicCache(config=draft.config), DynamicCache(config=draft.config))
            self._encoder_kwargs = self._run_draft_encoder()
        else:
            self._cache = DynamicCache(config=draft.config)
        # like the target's: sliding-window layers must keep their past to be cropped back
        (self._cache.self_attention_cache if draft.config.is_encoder_decoder else self._cache).activate_past_recording()
        use_vocab = self.config.use_draft_vocab and self.mixture is None  # q* needs the draft's full distribution
        self._vocab = carried_draft_vocab(draft) if use_vocab else None
        if self._vocab is not None:
            self._vocab = self._vocab.to(draft.device)  # built or loaded on the CPU: scored on the draft's device
            self._vocab_size = output_vocab_size(draft)
            weight = draft.get_output_embeddings().weight  # [V, H]
            key = (weight.data_ptr(), weight._version, self._vocab.data_ptr())
            if self._vocab_head_key != key:  # sliced once, again only if the head or the vocabulary changed
                self._vocab_head_t = weight.detach()[self._vocab].t().contiguous()  # [H, V']: x @ W^T, M = 1
                self._vocab_head_key = key

    def _check_pair(self, target: PreTrainedModel) -> None:
        """Refuses a draft that cannot draft for `target`, naming the fix."""
        draft = self.draft_model
        if getattr(draft, "_is_stateful", False):
            raise ValueError(f"The draft ({type(draft).__name__}) keeps a recurrent state that cannot be rolled back "
                             "to an earlier token, so its cache could not follow rejected drafts. Use a pure-attention "
                             "draft (e.g. a few layers of the target: recipes/distill_draft.py).")
        if target.config.is_encoder_decoder != draft.config.is_encoder_decoder:
            kind = "an encoder-decoder" if target.config.is_encoder_decoder else "a decoder-only"
            raise ValueError(f"The target is {kind} model, the draft is not: DraftModelStrategy needs a draft of the "
                             "same kind (e.g. a smaller model of the target's family).")
        if self.bridge is not None:
            if target.config.is_encoder_decoder:
                raise ValueError("Drafts with another tokenizer are supported for decoder-only targets; for an "
                                 "encoder-decoder, use a draft that shares the target's tokenizer.")
            return
        target_vocab, draft_vocab = output_vocab_size(target), output_vocab_size(draft)
        if target_vocab != draft_vocab:
            raise ValueError(
                f"Draft vocabulary ({draft_vocab}) differs from the target's ({target_vocab}). Pass both tokenizers "
                "(DraftModelStrategy(draft, draft_tokenizer=..., target_tokenizer=...): drafts are re-tokenised), or "
                "pick a draft that shares the target's tokenizer (e.g. a smaller model of the same family).")

    @torch.no_grad()
    def _run_draft_encoder(self) -> dict:
        """The draft's encoder over what the target's encoder read, once per call."""
        if self.encoder_inputs is None:
            raise ValueError("An encoder-decoder draft needs the target's encoder inputs; call generate with them.")
        device = self.draft_model.device
        inputs = {key: value.to(device) for key, value in self.encoder_inputs.items()}
        encoder_outputs = self.draft_model.get_encoder()(**inputs)
        return {"encoder_outputs": encoder_outputs, "attention_mask": inputs.get("attention_mask")}

    def end(self) -> None:
        self._cache, self._cached_tokens, self._unconfirmed, self._encoder_kwargs = None, [], 0, {}

    def draft_budget(self) -> int:
        k = self.schedule.next_k()
        return max(k, self.config.lookup_num_tokens) if self.config.lookup_min_ngram and not self.mixture else k

    @property
    def drafts_every_position(self) -> bool:
        return self.mixture is not None

    def propose(self, input_ids: torch.LongTensor, max_tokens: int) -> Draft:
        if self.mixture is not None:
            return self._mixture_draft(input_ids, max_tokens)
        if self.config.lookup_min_ngram:
            found = lookup_draft(self, input_ids, LOOKUP_MAX_NGRAM, self.config.lookup_min_ngram,
                                 min(max_tokens, self.config.lookup_num_tokens))
            if found is not None:
                tokens, size, consistent = found
                bucket = 1 + 2 * size + consistent  # learnt apart from the model's drafts, as NGramStrategy does
                if not self.config.skip_unprofitable_drafts or self.gate.should_draft(bucket):
                    return Draft(tokens, bucket=bucket)
        max_tokens = min(max_tokens, self.schedule.next_k())
        if self.config.skip_unprofitable_drafts and not self.gate.should_draft(MODEL_BUCKET,
                                                                               self._drafting_cost(max_tokens)):
            return Draft(input_ids.new_empty(0), bucket=MODEL_BUCKET)
        return self._timed(self._draft_other_tokens if self.bridge else self._draft, input_ids, max_tokens)

    def _mixture_draft(self, input_ids: torch.LongTensor, max_tokens: int) -> Draft:
        """q*: no lookup (it needs the draft's distribution at every position anyway); the gate may still cut the
        draft to none, which costs what the plain q* sampler costs: one draft and one target forward per token."""
        max_tokens = min(max_tokens, self.schedule.next_k())
        # Not drafting costs a target and a draft forward per token, so an accepted token saves both; the first
        # drafted token's forward is paid in any case (q* needs the distribution there), only the rest is extra.
        if max_tokens and self.config.skip_unprofitable_drafts and not self.gate.should_draft(
                MODEL_BUCKET, self._drafting_cost(max_tokens - 1), token_value=1 + self._drafting_cost(1)):
            max_tokens = 0
        return self._timed(functools.partial(self._draft, all_probs=True), input_ids, max_tokens)

    def _timed(self, draft_fn, input_ids: torch.LongTensor, max_tokens: int) -> Draft:
        """Runs a drafting function, keeping the EMA of one drafted token's cost for the gate."""
        start = synchronized_now(self.draft_model.device)
        draft = draft_fn(input_ids, max_tokens)
        if draft.tokens.numel():
            seconds = (synchronized_now(self.draft_model.device) - start) / draft.tokens.numel()
            self._draft_token_seconds = ema(self._draft_token_seconds, seconds, self.gate.ema_alpha)
        draft.bucket = MODEL_BUCKET
        return draft

    def verification_scores(self, target_scores: torch.Tensor, draft: Draft) -> torch.Tensor:
        """With a GeometricMixture: log q* `[k + 1, V]` from the target's scores and the draft's distributions (both
        after the same logits processors); otherwise the target's scores. A draft of k >= 1 tokens carries k
        distributions: the last row (the bonus position) keeps the target's scores until `bonus_scores` is asked
        for it, which happens only when all k are accepted, so a rejection never pays that draft forward."""
        if self.mixture is None:
            return target_scores
        rows = 0 if draft.probs is None else draft.probs.shape[0]
        if rows == 0 or rows not in (draft.tokens.numel(), target_scores.shape[0]):
            raise RuntimeError("The mixture needs the draft's distribution at every verified position.")
        log_q, self._alphas = self.mixture.log_probs(draft.probs.log(), target_scores[:rows].log_softmax(dim=-1))
        self._bonus_target_row = target_scores[-1] if rows < target_scores.shape[0] else None
        return torch.cat([log_q, target_scores[rows:]])

    def bonus_scores(self, input_ids: torch.LongTensor, draft_tokens: torch.LongTensor) -> torch.Tensor | None:
        """log q* `[V]` at the position after a fully accepted draft (`verification_scores` left it out), or None
        when that row is already final."""
        if self._bonus_target_row is None:
            return None
        with torch.no_grad():
            sequence = torch.cat([input_ids, draft_tokens[None]], dim=-1).to(self.draft_model.device)  # [1, n + k]
            tokens = self.token_list(input_ids) + draft_tokens.tolist()
            self._confirm(tokens, draft_tokens.numel())  # all accepted
            # the draft cache may hold drafted tokens past a batch's cut: sync it to this sequence first
            logits = self._forward(self._sync_cache(tokens), tokens)  # [1, V]
            log_policy = self.logits_processor(sequence, logits).log_softmax(dim=-1).to(input_ids.device)  # [1, V]
        log_q, alpha = self.mixture.log_probs(log_policy, self._bonus_target_row[None].log_softmax(dim=-1))
        self._alphas, self._bonus_target_row = torch.cat([self._alphas, alpha]), None
        return log_q[0]

    def observe(self, input_ids, draft, num_accepted, target_scores, forward_seconds, hidden_states=None) -> None:
        super().observe(input_ids, draft, num_accepted, target_scores, forward_seconds, hidden_states)
        observe_gate(self.gate, draft, num_accepted, forward_seconds)
        if self._unconfirmed:
            self._confirm(self.token_list(input_ids), num_accepted)
        if self._alphas is not None:  # alpha* at the positions whose token was emitted
            emitted = self._alphas[: target_scores.shape[0]]
            self._alpha_total += float(emitted.sum())
            self._alpha_count += emitted.numel()
            self._alphas = None

    def finish_stats(self, stats) -> None:
        if self._alpha_count:
            stats.mean_alpha = self._alpha_total / self._alpha_count

    def get_candidates(self, input_ids: torch.LongTensor, **kwargs):
        candidate_ids, candidate_logits = super().get_candidates(input_ids, **kwargs)
        if candidate_logits is not None:  # an empty mixture draft still carries its position's distribution
            candidate_logits = candidate_logits[:, : candidate_ids.shape[1] - input_ids.shape[1]]
        return candidate_ids, candidate_logits

    def _drafting_cost(self, num_tokens: int) -> float:
        """What drafting `num_tokens` costs, in one-token target forwards (0 until both are measured); in a batch
        the other rows wait meanwhile, so it counts once per row."""
        single = self.gate.single_forward_estimate
        if not single or self._draft_token_seconds is None:
            return 0.0
        return num_tokens * self._draft_token_seconds * self.batch_rows / single

    @torch.no_grad()
    def _draft(self, input_ids: torch.LongTensor, max_tokens: int, all_probs: bool = False) -> Draft:
        """Drafts up to `max_tokens` tokens. all_probs: return their distributions even when greedy (the mixture
        needs them), and with no token drafted the distribution at the next position alone (probs `[1, V]`)."""
        do_sample = bool(self.generation_config.do_sample)
        # Greedy with no logits processors and no entropy stop: the argmax of the raw logits is the draft.
        argmax_only = not (do_sample or all_probs or self.logits_processor or self.schedule.needs_entropy)
        sequence = input_ids.to(self.draft_model.device)  # [1, n]
        known = self.token_list(input_ids)
        pending = self._sync_cache(known)  # [1, m] tokens the draft has not seen yet
        drafted, probs = [], []
        for step in range(max(max_tokens, int(all_probs))):
            logits = self._forward(pending, known if step == 0 else None)  # [1, V]
            if argmax_only:
                token = logits.argmax(-1)  # [1]
            else:
                distribution = self.logits_processor(sequence, logits).softmax(dim=-1)[0]  # [V]
                if step == max_tokens or self.schedule.stop_on_entropy(float(_entropy(distribution))):
                    probs.extend([distribution] if all_probs and not drafted else [])
                    break
                token = torch.multinomial(distribution, 1) if do_sample else distribution.argmax().view(1)  # [1]
                probs.append(distribution)
                sequence = torch.cat([sequence, token[None]], dim=-1)
            drafted.append(token)
            pending = token[None]
        tokens = torch.cat(drafted).to(input_ids.device) if drafted else input_ids.new_empty(0)  # [k]
        keep = (do_sample or all_probs) and probs
        return Draft(tokens, torch.stack(probs).to(input_ids.device) if keep else None)

    @torch.no_grad()
    def _draft_other_tokens(self, input_ids: torch.LongTensor, max_tokens: int) -> Draft:
        """A draft with its own tokenizer: drafts in its tokens (argmax, or a draw from its raw distribution when
        sampling), re-tokenised into at most `max_tokens` target tokens (a point-mass draft: no probs)."""
        target_ids = self.token_list(input_ids)
        context = self.bridge.to_draft(target_ids)
        if not context:
            return Draft(input_ids.new_empty(0))
        do_sample = bool(self.generation_config.do_sample)
        pending = self._sync_cache(context)
        drafted: list[int] = []
        fed = context
        for _ in range(max_tokens):
            logits = self._forward(pending, fed)  # [1, V_draft]
            token = torch.multinomial(logits.softmax(-1), 1)[0] if do_sample else logits.argmax(-1)  # [1]
            drafted.append(int(token))
            fed = context + drafted
            pending = token[None]
        tokens = self.bridge.to_target(target_ids, context, drafted)[:max_tokens]
        return Draft(torch.tensor(tokens, dtype=torch.long, device=input_ids.device))

    def _sync_cache(self, tokens: list[int]) -> torch.LongTensor:
        """Crops the draft cache to its longest prefix shared with `tokens` (keeping at least one token to feed) and
        returns the tokens still to feed, `[1, m]`. Drafted tokens never confirmed are dropped first."""
        if self._unconfirmed:
            self._cache.crop(-self._unconfirmed)
            self._unconfirmed = 0
        common = 0
        for cached, token in zip(self._cached_tokens, tokens):
            if cached != token:
                break
            common += 1
        common = min(common, len(tokens) - 1)
        self._cache.crop(-(self._cache.get_seq_length() - common))
        self._cached_tokens = self._cached_tokens[:common]
        return torch.tensor([tokens[common:]], dtype=torch.long, device=self.draft_model.device)

    def _confirm(self, tokens: list[int], num_accepted: int) -> None:
        """The first `num_accepted` drafted tokens fed to the draft cache were accepted: they are `tokens`' next
        ones (the host mirror), so the cache stays valid for them without reading the drafts back."""
        confirmed = min(num_accepted, self._unconfirmed)
        start = len(self._cached_tokens)
        self._cached_tokens.extend(tokens[start : start + confirmed])
        if confirmed < self._unconfirmed:
            self._cache.crop(confirmed - self._unconfirmed)
        self._unconfirmed = 0

    def _forward(self, tokens: torch.LongTensor, known: list[int] | None) -> torch.Tensor:
        """The draft's logits `[1, V]` for the token after `tokens` (`[1, m]`), which it appends to its cache.
        known: the sequence whose last m tokens these are, when the host knows it; None for drafted tokens still on
        the device (confirmed after the verify, see `_confirm`)."""
        draft = self.draft_model
        inputs = {CACHE_KWARG: self._cache, "use_cache": True}
        if draft.config.is_encoder_decoder:  # positions come from the cache; the encoder output is re-read
            inputs.update(decoder_input_ids=tokens, **self._encoder_kwargs)
        else:
            past = len(self._cached_tokens) + self._unconfirmed
            inputs.update(input_ids=tokens, position_ids=torch.arange(past, past + tokens.shape[1],
                                                                      device=tokens.device)[None])
        if known is None:
            self._unconfirmed += tokens.shape[1]
        else:
            self._cached_tokens.extend(known[len(known) - tokens.shape[1]:])
        if self._vocab is None:
            keep = {"logits_to_keep": 1} if accepts_logits_to_keep(draft) else {}
            return draft(**inputs, **keep).logits[:, -1].float()
        hidden = draft.get_decoder()(**inputs).last_hidden_state[:, -1]  # [1, H]
        logits = hidden.new_full((1, self._vocab_size), float("-inf"))
        return logits.index_copy_(1, self._vocab, hidden @ self._vocab_head_t).float()  # [1, V]: -inf off the vocab


def _load_model(name_or_path) -> PreTrainedModel:
    """A causal LM, or a sequence-to-sequence model when its config is an encoder-decoder's."""
    config = AutoConfig.from_pretrained(name_or_path)
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    return auto.from_pretrained(name_or_path)


def _entropy(distribution: torch.Tensor) -> torch.Tensor:
    return -(distribution * torch.log(distribution.clamp_min(1e-30))).sum()
