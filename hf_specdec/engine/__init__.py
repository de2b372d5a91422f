"""The one step engine: every `generate(assistant_model=strategy)` call, a batch of one or many, a chain or a tree,
decodes through `loop.speculative_decode` -> `step.step`.

Names load lazily, so drafters can use the engine's cache and timing helpers (`engine.cache`, `engine.timing`)
without importing the loop, which imports the strategies: no import circle.
"""

from __future__ import annotations

import importlib

_EXPORTS = {"check_cache": "cache", "check_request": "checks", "process_scores": "scoring",
            "select_token": "scoring", "speculative_decode": "loop"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
