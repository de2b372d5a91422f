"""From a method spec to the keyword arguments of one `generate` call.

A fresh strategy is built for every call, so no state leaks from one prompt to the next. Heads (Medusa) and the
draft model are loaded once per run and shared.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel

from ..strategies import STRATEGIES, SpeculativeStrategy
from .config import EvalConfig, MethodSpec


def strategy_class(spec: MethodSpec) -> type[SpeculativeStrategy]:
    if spec.type not in STRATEGIES:
        raise ValueError(f"Method {spec.name!r}: unknown type {spec.type!r}. Use 'plain', 'prompt_lookup', "
                         f"'assistant' or an hf_specdec strategy type: {sorted(STRATEGIES)}.")
    return STRATEGIES[spec.type]


def skip_reason(spec: MethodSpec, config: EvalConfig) -> str | None:
    """Why `spec` cannot run in this recipe (missing heads directory or draft model), or None. Unknown types and
    invalid options raise."""
    if not spec.is_strategy:
        if spec.type == "assistant" and config.draft is None:
            return "needs a draft model (set `draft:` in the recipe)"
        return None
    if spec.heads is not None and not Path(spec.heads).expanduser().exists():
        return f"heads directory {spec.heads} does not exist (train the heads first)"
    cls = strategy_class(spec)
    if _takes_draft_model(cls) and config.draft is None:
        return "needs a draft model (set `draft:` in the recipe)"
    cls.config_class(**spec.options)  # invalid options fail now, not in the middle of the run
    return None


def _takes_draft_model(cls: type[SpeculativeStrategy]) -> bool:
    return "draft_model" in inspect.signature(cls.__init__).parameters


def _heads_loader(cls: type[SpeculativeStrategy]) -> Any:
    """The class whose `from_pretrained(dir)` loads the heads a strategy takes as its first argument: the strategy's
    `heads_class` attribute, else a `*Heads` class with `from_pretrained` in the strategy's module."""
    loader = getattr(cls, "heads_class", None)
    if loader is None:
        module = sys.modules[cls.__module__]
        candidates = [obj for name, obj in vars(module).items()
                      if name.endswith("Heads") and inspect.isclass(obj) and hasattr(obj, "from_pretrained")]
        loader = candidates[0] if len(candidates) == 1 else None
    if loader is None:
        raise ValueError(f"Strategy {cls.__name__} has no heads class (set `heads_class` on it, or drop `heads:`).")
    return loader


class MethodFactory:
    """Builds generate kwargs per method; caches loaded heads per directory."""

    def __init__(self, target: PreTrainedModel, draft: PreTrainedModel | None = None) -> None:
        self.target = target
        self.draft = draft
        self._heads: dict[str, Any] = {}

    def heads(self, spec: MethodSpec) -> Any:
        if spec.heads not in self._heads:
            heads = _heads_loader(strategy_class(spec)).from_pretrained(spec.heads)
            if hasattr(heads, "to"):
                heads = heads.to(device=self.target.device, dtype=self.target.dtype)
            self._heads[spec.heads] = heads.eval() if hasattr(heads, "eval") else heads
        return self._heads[spec.heads]

    def generate_kwargs(self, spec: MethodSpec) -> dict[str, Any]:
        """kwargs for `target.generate`, with a fresh strategy for hf_specdec methods."""
        if spec.type == "plain":
            return {}
        if spec.type == "prompt_lookup":
            return {"prompt_lookup_num_tokens": spec.num_tokens}
        if spec.type == "assistant":
            return {"assistant_model": self._need_draft(spec)}
        cls = strategy_class(spec)
        args = []
        if spec.heads is not None:
            args.append(self.heads(spec))
        elif _takes_draft_model(cls):
            args.append(self._need_draft(spec))
        return {"assistant_model": cls(*args, **spec.options)}

    def _need_draft(self, spec: MethodSpec) -> PreTrainedModel:
        if self.draft is None:
            raise ValueError(f"Method {spec.name!r} needs a draft model: set `draft:` in the recipe.")
        return self.draft
