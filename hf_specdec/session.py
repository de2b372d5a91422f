"""What the chat REPL and `hf-specdec generate` share: settings, building the strategy, running one generation."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import hf_specdec

from .cli_models import EAGLE_HINT, MEDUSA_HINT, ModelBundle
from .live_view import LiveView, RunSummary
from .strategies import DraftModelStrategy, NASDStrategy, NGramStrategy, SpeculativeStrategy

DRAFTERS = ("ngram", "nasd", "draft_model", "medusa", "eagle")
PROCESSORS = ("greedy", "multinomial", "topk", "nucleus", "topknucleus")
MODES = ("target", "speculative", "drafter")  # the order a prompt runs them in


@dataclass
class ChatSettings:
    """Settings of a chat session; every field is changed by a slash command and kept across turns."""

    run_speculative: bool = field(default=True, metadata={"help": "Generate with speculative decoding."})
    run_target: bool = field(default=False, metadata={"help": "Also generate with the target alone (baseline)."})
    run_drafter: bool = field(default=False, metadata={"help": "Also generate with the draft model alone."})
    drafter: str = field(default="ngram", metadata={"help": f"Who drafts: one of {DRAFTERS}."})
    max_new_tokens: int = field(default=128, metadata={"help": "Tokens to generate per reply."})
    gamma: int | None = field(default=None, metadata={"help": "Draft length K; None: the strategy's default."})
    egag: bool = field(default=False, metadata={"help": "Entropy-guided adaptive gamma (draft model only)."})
    egag_gamma_min: int = field(default=1, metadata={"help": "EGAG: smallest K."})
    egag_gamma_max: int = field(default=10, metadata={"help": "EGAG: largest K."})
    egag_ema: float = field(default=0.5, metadata={"help": "EGAG: weight of the newest step in the accepted-count EMA."})
    processor: str = field(default="greedy", metadata={"help": f"Sampling: one of {PROCESSORS}."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    top_k: int = field(default=50, metadata={"help": "k of topk / topknucleus."})
    top_p: float = field(default=0.9, metadata={"help": "p of nucleus / topknucleus."})
    top_k_filler: int = field(default=3, metadata={"help": "NASD: target top-k tokens added to the store per step."})
    ngram_storage: str = field(default="basic", metadata={"help": "NASD store: basic (orders 2..n) or onelevel."})
    ngram_size: int = field(default=3, metadata={"help": "NASD store: n."})
    reset_in_between: bool = field(default=True, metadata={"help": "NASD: empty the store before every reply."})
    use_cache: bool = field(default=True, metadata={"help": "KV cache for the target-only baseline."})
    debug: bool = field(default=False, metadata={"help": "Print one trace line per speculative step."})

    def modes(self) -> list[str]:
        return [mode for mode in MODES if getattr(self, f"run_{mode}")]

    def generate_kwargs(self) -> dict[str, Any]:
        """`generate` keyword arguments for the length and the sampling processor."""
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens}
        if self.processor == "greedy":
            return {**kwargs, "do_sample": False}
        top_k = self.top_k if self.processor in ("topk", "topknucleus") else 0  # 0 turns top-k off
        top_p = self.top_p if self.processor in ("nucleus", "topknucleus") else 1.0
        return {**kwargs, "do_sample": True, "temperature": self.temperature, "top_k": top_k, "top_p": top_p}

    def processor_label(self) -> str:
        args = {"greedy": "", "multinomial": f"T={self.temperature:g}", "topk": f"T={self.temperature:g} k={self.top_k}",
                "nucleus": f"T={self.temperature:g} p={self.top_p:g}",
                "topknucleus": f"T={self.temperature:g} k={self.top_k} p={self.top_p:g}"}[self.processor]
        return f"{self.processor} {args}".strip()

    def drafter_label(self) -> str:
        label = "draft model + EGAG" if self.drafter == "draft_model" and self.egag else self.drafter
        return f"{label}, K={'default' if self.gamma is None else self.gamma}"


def medusa_available(bundle: ModelBundle) -> str | None:
    """None when Medusa can be used, else the reason (with how to get the heads)."""
    if not hasattr(hf_specdec, "MedusaStrategy"):
        return MEDUSA_HINT.format(why=" (this hf_specdec build has no MedusaStrategy)")
    if bundle.medusa_dir is None:
        return MEDUSA_HINT.format(why=" (no heads folder: heads/medusa-smollm2-135m does not exist)")
    return None


def eagle_available(bundle: ModelBundle) -> str | None:
    """None when the EAGLE drafter can be used, else the reason (with how to get one)."""
    if bundle.eagle_dir is None:
        return EAGLE_HINT.format(why=" (no drafter folder: heads/eagle-smollm2-135m does not exist)")
    return None


def learned_drafter_unavailable(drafter: str, bundle: ModelBundle) -> str | None:
    """Why the heads or drafter `drafter` needs are missing, or None (also None for drafters that need neither)."""
    return {"medusa": medusa_available, "eagle": eagle_available}.get(drafter, lambda _: None)(bundle)


def check_drafter(settings: ChatSettings, bundle: ModelBundle) -> None:
    """Raises ValueError (saying what to pass) when the chosen drafter or mode cannot run with these models."""
    needs_draft = settings.run_drafter or (settings.run_speculative and settings.drafter == "draft_model")
    if needs_draft and bundle.draft is None:
        raise ValueError("the draft model is needed (draft_model / egag / drafter): pass --draft DIR.")
    if settings.run_speculative and (reason := learned_drafter_unavailable(settings.drafter, bundle)):
        raise ValueError(reason)


def build_strategy(settings: ChatSettings, bundle: ModelBundle) -> SpeculativeStrategy:
    """A fresh strategy for the current settings. Raises ValueError when the drafter cannot be used."""
    common: dict[str, Any] = {} if settings.gamma is None else {"num_speculative_tokens": settings.gamma}
    if settings.drafter == "ngram":
        return NGramStrategy(**common)
    if settings.drafter == "nasd":
        return NASDStrategy(ngram_size=settings.ngram_size, storage=settings.ngram_storage,
                            top_k_filler=settings.top_k_filler, reset_between_calls=settings.reset_in_between, **common)
    if settings.drafter == "draft_model":
        if bundle.draft is None:
            raise ValueError("No draft model: start the CLI with --draft DIR.")
        if settings.egag:
            common.update(schedule="entropy", gamma_min=settings.egag_gamma_min, gamma_max=settings.egag_gamma_max,
                          ema_alpha=settings.egag_ema)
        return DraftModelStrategy(bundle.draft, **common)
    reason = learned_drafter_unavailable(settings.drafter, bundle)
    if reason:
        raise ValueError(reason)
    if settings.drafter == "eagle":
        drafter = hf_specdec.EagleDrafter.from_pretrained(bundle.eagle_dir).to(device=bundle.target.device)
        return hf_specdec.EagleStrategy(drafter, **common)
    heads = hf_specdec.MedusaHeads.from_pretrained(bundle.medusa_dir).to(device=bundle.target.device,
                                                                       dtype=bundle.target.dtype)
    return hf_specdec.MedusaStrategy(heads, **common)


class StrategyCache:
    """Keeps the strategy between replies while the settings it was built from are unchanged (so a NASD store
    with `/reset_in_between` off keeps growing, and the cost gate keeps what it learned)."""

    _KEYS = ("drafter", "gamma", "egag", "egag_gamma_min", "egag_gamma_max", "egag_ema", "top_k_filler",
             "ngram_storage", "ngram_size", "reset_in_between")

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._strategy: SpeculativeStrategy | None = None

    def get(self, settings: ChatSettings, bundle: ModelBundle) -> SpeculativeStrategy:
        key = tuple(getattr(settings, name) for name in self._KEYS)
        if key != self._key or self._strategy is None:
            self._strategy, self._key = build_strategy(settings, bundle), key
        return self._strategy


def run_generation(bundle: ModelBundle, settings: ChatSettings, input_ids, mode: str, view: LiveView,
                   strategy: SpeculativeStrategy | None = None) -> tuple[RunSummary, list[int]]:
    """Generates one reply in `mode` ('speculative', 'target' or 'drafter'), streaming it through `view`.

    Returns the summary and the new token ids.
    """
    kwargs = {**settings.generate_kwargs(), "streamer": view, "pad_token_id": _pad_id(bundle)}
    if mode == "speculative":
        if strategy is None:
            raise ValueError("speculative mode needs a strategy")
        model, label = bundle.target, f"speculative · {settings.drafter_label()}"
        kwargs["assistant_model"] = strategy
        view.attach(strategy)
    elif mode == "target":
        model, label = bundle.target, f"target-only · KV cache {'on' if settings.use_cache else 'off'}"
        kwargs["use_cache"] = settings.use_cache
    elif mode == "drafter":
        if bundle.draft is None:
            raise ValueError("No draft model: start the CLI with --draft DIR (n-gram drafters cannot generate alone).")
        model, label = bundle.draft, "drafter-only"
    else:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    start = time.perf_counter()
    try:
        output = model.generate(input_ids.to(model.device), **kwargs)
    finally:
        if strategy is not None:
            view.detach(strategy)
    seconds = time.perf_counter() - start
    new_tokens = output[0, input_ids.shape[1]:].tolist()
    stats = strategy.last_stats if mode == "speculative" else None
    text = bundle.tokenizer.decode(new_tokens, skip_special_tokens=True)
    return RunSummary(label, len(new_tokens), seconds, stats, text), new_tokens


def _pad_id(bundle: ModelBundle) -> int | None:
    tokenizer = bundle.tokenizer
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def settings_rows(settings: ChatSettings) -> list[tuple[str, str, str]]:
    """(name, value, help) for `/show`."""
    return [(f.name, str(getattr(settings, f.name)), f.metadata.get("help", ""))
            for f in dataclasses.fields(settings)]
