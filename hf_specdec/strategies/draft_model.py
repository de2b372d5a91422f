"""A small model drafts K tokens autoregressively, with its own KV cache; optionally prompt lookup drafts first where
the text repeats itself.

The draft shares the target's tokenizer, or (with `draft_tokenizer=` and `target_tokenizer=`) it has its own: its
text is then re-tokenised into target tokens, verified as point masses. For an encoder-decoder target the draft is
an encoder-decoder too and runs its encoder once per call. With `verify_against=GeometricMixture(...)` the output
follows q* ∝ draft^alpha * target^(1 - alpha) instead of the target alone (see docs/mixture.md).
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, PreTrainedModel

from ..compat import CACHE_KWARG
from ..config import StrategyConfig, register_config
from ..engine.cache import keeps_recurrent_state
from ..engine.timing import synchronized_now
from ..hub.folders import read_json
from ..drafters.draft_cache import DraftCacheRows
from ..drafters.distilled_draft import draft_vocab as carried_draft_vocab, is_draft_folder
from ..mixture_math import GeometricMixture
from ..drafters.quantized_draft import head_rows, head_weight, quantization_scheme, quantize_draft, vocab_head
from ..drafters.tokenizer_bridge import TokenizerBridge
from ..schedules import DraftGate, ema, make_schedule, observe_gate
from .base import Draft, SpeculativeStrategy
from .ngram import GatedRow, check_lookup_min_ngram, front_lookup


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
    """Rows of the LM head: the size of the distribution the model predicts (also for a quantized head, whose
    `weight` may be a method)."""
    head = model.get_output_embeddings()
    return head_rows(head) if head is not None else int(model.config.vocab_size)


class DraftRow(GatedRow):
    """A row of a draft-model strategy: its schedule and gate, its row in the batched draft cache, its view of the
    text (another tokenizer), and a GeometricMixture's alpha* figures."""

    def __init__(self, schedule, gate: DraftGate, bridge: TokenizerBridge | None) -> None:
        super().__init__(schedule, gate)
        self.index = 0  # its row in the batched draft cache
        self.bridge = bridge  # a draft with another tokenizer: this row's view of the text
        self.alphas: torch.Tensor | None = None  # alpha* of the latest verified positions (mixture)
        self.bonus_target_row: torch.Tensor | None = None  # the target's scores where `bonus_scores` may be asked
        self.alpha_total, self.alpha_count = 0.0, 0


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
        self._encoder_kwargs: dict = {}  # an encoder-decoder draft's own encoder output, computed once per call
        self._cache: DraftCacheRows | None = None  # every row's draft cache, for one call
        self._vocab: torch.LongTensor | None = None  # the draft vocabulary in use this call, see `begin`
        self._vocab_head_key: tuple | None = None  # which LM head and vocabulary `_vocab_head_t` was sliced from
        self._draft_token_seconds: float | None = None  # EMA of one draft forward (one drafted token)

    def new_row(self) -> DraftRow:
        # Starts optimistic (a whole draft accepted), so a good draft drafts from the first step; a useless one is
        # found out in a few steps and then only probed, ever more rarely.
        gate = DraftGate(prior_accepted=float(self.config.num_speculative_tokens), max_probe_every=64)
        return DraftRow(make_schedule(self.config), gate, None if self.bridge is None else copy.copy(self.bridge))

    @property
    def gate(self) -> DraftGate:
        return self.row.gate

    def models(self) -> list[torch.nn.Module]:
        return [self.draft_model]

    def save_components(self, directory: Path, include_draft: bool = True) -> None:
        """`draft/`: the draft model (safetensors), or with `include_draft=False` only `draft_model.json`, a pointer
        to the repo or folder the draft was loaded from. A quantized draft (`hf_specdec.quantize_draft`) is always
        saved as that pointer plus its scheme, and re-quantized from its float source on load."""
        pointer = directory / DRAFT_POINTER
        scheme = quantization_scheme(self.draft_model)
        if include_draft and scheme is None:
            self.draft_model.save_pretrained(directory / DRAFT_DIR)
            pointer.unlink(missing_ok=True)
            return
        name = str(getattr(self.draft_model.config, "_name_or_path", "") or "")
        if not name and scheme is not None:
            raise ValueError(f"A {scheme}-quantized draft is saved as a pointer to its float source plus the scheme "
                             "(re-quantized on load), and this draft was not loaded from a repo or folder. Save its "
                             "float source (draft.save_pretrained(folder)), load it from there, quantize with "
                             "hf_specdec.quantize_draft, then save the strategy.")
        if not name:
            raise ValueError("This draft model was not loaded from a repo or folder, so there is nothing to point to; "
                             "save it with include_draft=True (the default).")
        if is_draft_folder(name):
            raise ValueError(f"{name} is a distilled draft that shares its target's embedding and LM head, so a pointer "
                             "to it cannot be loaded on its own: save with include_draft=True (a full copy), or load "
                             "it with hf_specdec.distilled_draft.load_draft(folder, target) and pass it: "
                             "DraftModelStrategy.from_pretrained(strategy_folder, draft).")
        shutil.rmtree(directory / DRAFT_DIR, ignore_errors=True)  # a draft saved there before would win on load
        info = {"name_or_path": name, **({"quantize": scheme} if scheme is not None else {})}
        pointer.write_text(json.dumps(info, indent=2) + "\n")

    @classmethod
    def load_components(cls, directory: Path) -> tuple[PreTrainedModel]:
        """The draft model; a draft with another tokenizer needs its tokenizers passed again to `from_pretrained`
        (`draft_tokenizer=..., target_tokenizer=...`): they are not saved with the strategy."""
        if (directory / DRAFT_DIR).is_dir():
            return (_load_model(directory / DRAFT_DIR),)
        if (directory / DRAFT_POINTER).is_file():  # a quantized draft is re-quantized from its float source
            name_or_path = _pointer_target(directory)
            quantize = read_json(directory / DRAFT_POINTER).get("quantize")
            return (quantize_draft(_load_model(name_or_path), quantize),)
        raise ValueError(f"{directory} has no draft model ({DRAFT_DIR}/ or {DRAFT_POINTER}); pass the draft: "
                         "DraftModelStrategy.from_pretrained(folder, draft_model).")

    def begin(self, target, input_ids, generation_config, logits_processor) -> None:
        super().begin(target, input_ids, generation_config, logits_processor)
        self._check_pair(target)
        draft = self.draft_model
        self._encoder_kwargs = self._run_draft_encoder() if draft.config.is_encoder_decoder else {}
        self._cache = DraftCacheRows(draft, len(self.rows), self._encoder_kwargs)
        for index, row in enumerate(self.rows):
            row.index = index
            if len(self.rows) > 1:  # a row of a batch: drafting must prove itself first (see `_drafting_cost`)
                row.gate.prior_accepted = 1.0
            if row.bridge is not None:
                row.bridge.reset()
        use_vocab = self.config.use_draft_vocab and self.mixture is None  # q* needs the draft's full distribution
        self._vocab = carried_draft_vocab(draft) if use_vocab else None
        if self._vocab is not None:
            self._vocab = self._vocab.to(draft.device)  # built or loaded on the CPU: scored on the draft's device
            self._vocab_size = output_vocab_size(draft)
            head = draft.get_output_embeddings()
            plain = isinstance(head.weight, torch.Tensor)  # a quantized head's weight is a method or a subclass
            key = (id(head), head.weight.data_ptr() if plain else None, head.weight._version if plain else None,
                   self._vocab.data_ptr(), quantization_scheme(draft))
            if self._vocab_head_key != key:  # sliced once, again only if the head or the vocabulary changed
                self._vocab_head_t = vocab_head(head_weight(head)[self._vocab], quantization_scheme(draft))
                self._vocab_head_key = key

    def _check_pair(self, target: PreTrainedModel) -> None:
        """Refuses a draft that cannot draft for `target`, naming the fix."""
        draft = self.draft_model
        if keeps_recurrent_state(draft):
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
        self._cache, self._encoder_kwargs = None, {}

    def draft_budget(self, row: DraftRow) -> int:
        k = row.schedule.next_k()
        return max(k, self.config.lookup_num_tokens) if self.config.lookup_min_ngram and not self.mixture else k

    @property
    def drafts_every_position(self) -> bool:
        return self.mixture is not None

    def propose_rows(self, requests: list[tuple[int, torch.LongTensor, int]]) -> list[Draft]:
        """Prompt lookup (if on) for each row; the rows left to the draft model draft together: K forwards of
        `[B, 1]` over one batched draft cache, not K forwards per row."""
        drafts: list[Draft | None] = [None] * len(requests)
        model_rows = []  # (request, row index, tokens, most tokens)
        for i, (index, input_ids, max_tokens) in enumerate(requests):
            row = self.rows[index]
            gate = row.gate if self.config.skip_unprofitable_drafts else None
            found = None if self.mixture is not None else front_lookup(
                self, row, input_ids, self.config.lookup_min_ngram, min(max_tokens, self.config.lookup_num_tokens), gate)
            if found is not None:
                drafts[i] = found
                continue
            tokens = self._model_tokens(row, max_tokens)
            if tokens or self.mixture is not None:  # q* needs the draft's distribution even with no token drafted
                model_rows.append((i, index, input_ids, tokens))
            else:
                drafts[i] = Draft(input_ids.new_empty(0), bucket=MODEL_BUCKET)
        if model_rows:
            start = synchronized_now(self.draft_model.device)
            drafted, forwards = (self._draft_other_tokens if self.bridge else self._draft)(model_rows)
            if forwards:
                seconds = (synchronized_now(self.draft_model.device) - start) / forwards
                self._draft_token_seconds = ema(self._draft_token_seconds, seconds, self.rows[0].gate.ema_alpha)
            for (i, *_), draft in zip(model_rows, drafted):
                draft.bucket = MODEL_BUCKET
                drafts[i] = draft
        return drafts

    def _model_tokens(self, row: DraftRow, max_tokens: int) -> int:
        """How many tokens the draft model drafts for this row: the schedule's K, or 0 where the gate says it does not
        pay. With a mixture, not drafting costs a target and a draft forward per token, so an accepted token saves
        both; the first drafted token's forward is paid in any case (q* needs the distribution there)."""
        max_tokens = min(max_tokens, row.schedule.next_k())
        if not max_tokens or not self.config.skip_unprofitable_drafts:
            return max_tokens
        if self.mixture is not None:
            pays = row.gate.should_draft(MODEL_BUCKET, self._drafting_cost(max_tokens - 1),
                                         token_value=1 + self._drafting_cost(1))
        else:
            pays = row.gate.should_draft(MODEL_BUCKET, self._drafting_cost(max_tokens))
        return max_tokens if pays else 0

    def verification_scores(self, row: DraftRow, target_scores: torch.Tensor, draft: Draft) -> torch.Tensor:
        """With a GeometricMixture: log q* `[k + 1, V]` from the target's scores and the draft's distributions (both
        after the same logits processors); otherwise the target's scores. A draft of k >= 1 tokens carries k
        distributions: the last row (the bonus position) keeps the target's scores until `bonus_scores` is asked
        for it, which happens only when all k are accepted, so a rejection never pays that draft forward."""
        if self.mixture is None:
            return target_scores
        rows = 0 if draft.probs is None else draft.probs.shape[0]
        if rows == 0 or rows not in (draft.tokens.numel(), target_scores.shape[0]):
            raise RuntimeError("The mixture needs the draft's distribution at every verified position.")
        log_q, row.alphas = self.mixture.log_probs(draft.probs.log(), target_scores[:rows].log_softmax(dim=-1))
        row.bonus_target_row = target_scores[-1] if rows < target_scores.shape[0] else None
        return torch.cat([log_q, target_scores[rows:]])

    def bonus_scores(self, row: DraftRow, input_ids: torch.LongTensor, draft_tokens: torch.LongTensor,
                     ) -> torch.Tensor | None:
        """log q* `[V]` at the position after a fully accepted draft (`verification_scores` left it out), or None
        when that row is already final."""
        if row.bonus_target_row is None:
            return None
        with torch.no_grad():
            sequence = torch.cat([input_ids, draft_tokens[None]], dim=-1).to(self.draft_model.device)  # [1, n + k]
            tokens = row.token_list(input_ids) + draft_tokens.tolist()
            self._cache.confirm(row.index, tokens, draft_tokens.numel())  # all accepted
            pending = self._cache.sync(row.index, tokens)
            logits = self._cache.forward({row.index: pending}, True, self._vocab_args())[row.index : row.index + 1]
            processors = row.logits_processor or self.logits_processor
            log_policy = processors(sequence, logits).log_softmax(dim=-1).to(input_ids.device)  # [1, V]
        log_q, alpha = self.mixture.log_probs(log_policy, row.bonus_target_row[None].log_softmax(dim=-1))
        row.alphas, row.bonus_target_row = torch.cat([row.alphas, alpha]), None
        return log_q[0]

    def observe_row(self, row, input_ids, draft, num_accepted, target_scores, forward_seconds, hidden_states=None):
        super().observe_row(row, input_ids, draft, num_accepted, target_scores, forward_seconds, hidden_states)
        observe_gate(row.gate, draft, num_accepted, forward_seconds)
        if self._cache is not None and self._cache.unconfirmed[row.index]:
            self._cache.confirm(row.index, row.token_list(input_ids), num_accepted)
        if row.alphas is not None:  # alpha* at the positions whose token was emitted
            emitted = row.alphas[: target_scores.shape[0]]
            row.alpha_total += float(emitted.sum())
            row.alpha_count += emitted.numel()
            row.alphas = None

    def finish_stats(self, row: DraftRow, stats) -> None:
        if row.alpha_count:
            stats.mean_alpha = row.alpha_total / row.alpha_count

    def get_candidates(self, input_ids: torch.LongTensor, **kwargs):
        candidate_ids, candidate_logits = super().get_candidates(input_ids, **kwargs)
        if candidate_logits is not None:  # an empty mixture draft still carries its position's distribution
            candidate_logits = candidate_logits[:, : candidate_ids.shape[1] - input_ids.shape[1]]
        return candidate_ids, candidate_logits

    def _drafting_cost(self, num_tokens: int) -> float:
        """What drafting `num_tokens` costs, in one-token target forwards (0 until both are measured): the rows of
        a batch draft together, so a draft forward costs what it costs, once."""
        single = self.rows[0].gate.single_forward_estimate
        if not single or self._draft_token_seconds is None:
            return 0.0
        return num_tokens * self._draft_token_seconds / single

    def _vocab_args(self) -> tuple | None:
        return None if self._vocab is None else (self._vocab, self._vocab_head_t, self._vocab_size)

    @torch.no_grad()
    def _draft(self, model_rows: list[tuple[int, int, torch.LongTensor, int]]) -> tuple[list[Draft], int]:
        """Every model row's draft (up to its own count of tokens) from one batched draft cache; returns the drafts
        and the forwards run. A mixture's rows also carry their distributions, and a row asked for 0 tokens gets
        the distribution at its next position alone (probs `[1, V]`)."""
        do_sample, all_probs = bool(self.generation_config.do_sample), self.mixture is not None
        needs_entropy = self.rows[0].schedule.needs_entropy
        # Greedy with no logits processors and no entropy stop: the argmax of the raw logits is the draft.
        argmax_only = not (do_sample or all_probs or self.logits_processor or needs_entropy)
        device = self.draft_model.device
        sequences = {index: input_ids.to(device) for _, index, input_ids, _ in model_rows}  # [1, n] each
        inputs = {index: self._cache.sync(index, self.rows[index].token_list(input_ids))
                  for _, index, input_ids, _ in model_rows}
        logits, forwards = self._cache.forward(inputs, True, self._vocab_args()), 1  # [B, V]
        counts = {index: count for _, index, _, count in model_rows}
        drafted = {index: [] for index in counts}
        probs = {index: [] for index in counts}
        active = set(counts)
        while active:
            tokens = logits.argmax(dim=-1) if argmax_only else None  # [B]
            fed = {}
            for index in sorted(active):
                if argmax_only:
                    token = tokens[index : index + 1]  # [1]
                else:
                    processors = self.rows[index].logits_processor or self.logits_processor
                    distribution = processors(sequences[index], logits[index : index + 1]).softmax(-1)[0]
                    stop = self.rows[index].schedule.stop_on_entropy(float(_entropy(distribution))) \
                        if needs_entropy else False
                    if len(drafted[index]) == counts[index] or stop:
                        probs[index].extend([distribution] if all_probs and not drafted[index] else [])
                        active.discard(index)
                        continue
                    token = torch.multinomial(distribution, 1) if do_sample else distribution.argmax().view(1)
                    probs[index].append(distribution)
                    sequences[index] = torch.cat([sequences[index], token[None]], dim=-1)
                drafted[index].append(token)
                if len(drafted[index]) < counts[index]:
                    fed[index] = token
                else:
                    active.discard(index)
            if fed:
                logits, forwards = self._cache.forward(fed, False, self._vocab_args()), forwards + 1
        keep = do_sample or all_probs
        results = []
        for _, index, input_ids, _ in model_rows:
            tokens = torch.cat(drafted[index]).to(input_ids.device) if drafted[index] else input_ids.new_empty(0)
            row_probs = torch.stack(probs[index]).to(input_ids.device) if keep and probs[index] else None
            results.append(Draft(tokens, row_probs))
        return results, forwards

    @torch.no_grad()
    def _draft_other_tokens(self, model_rows: list[tuple[int, int, torch.LongTensor, int]],
                            ) -> tuple[list[Draft], int]:
        """A draft with its own tokenizer, row by row: drafts in its tokens (argmax, or a draw from its raw
        distribution when sampling), re-tokenised into at most the row's count of target tokens (point masses)."""
        do_sample = bool(self.generation_config.do_sample)
        results, forwards = [], 0
        for _, index, input_ids, count in model_rows:
            row = self.rows[index]
            target_ids = row.token_list(input_ids)
            context = row.bridge.to_draft(target_ids)
            if not context:
                results.append(Draft(input_ids.new_empty(0)))
                continue
            pending, drafted = self._cache.sync(index, context), []
            for _ in range(count):
                logits = self._cache.forward({index: pending}, True)[index]  # [V_draft]
                forwards += 1
                token = torch.multinomial(logits.softmax(-1), 1) if do_sample else logits.argmax(-1, keepdim=True)
                drafted.append(int(token))
                pending = drafted[-1:]
            tokens = row.bridge.to_target(target_ids, context, drafted)[:count]
            results.append(Draft(torch.tensor(tokens, dtype=torch.long, device=input_ids.device)))
        return results, forwards


def _pointer_target(directory: Path) -> str:
    """Where `draft_model.json` says the draft is, with the file named when it is damaged or says nothing."""
    pointer = directory / DRAFT_POINTER
    data = read_json(pointer)
    if not isinstance(data, dict) or not isinstance(data.get("name_or_path"), str):
        raise ValueError(f"{pointer} must be a JSON object with a \"name_or_path\" string (the draft's folder or "
                         f"Hub repo id), got {data!r}. Save the strategy again, or pass the draft: "
                         "DraftModelStrategy.from_pretrained(folder, draft_model).")
    return data["name_or_path"]


def _load_model(name_or_path) -> PreTrainedModel:
    """A causal LM, or a sequence-to-sequence model when its config is an encoder-decoder's."""
    config = AutoConfig.from_pretrained(name_or_path)
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    return auto.from_pretrained(name_or_path)


def _entropy(distribution: torch.Tensor) -> torch.Tensor:
    return -(distribution * torch.log(distribution.clamp_min(1e-30))).sum()
