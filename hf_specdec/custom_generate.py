"""What every saved folder's `custom_generate/generate.py` calls: load the strategy, then `generate` with it.

It lives apart from `publishing` (which writes folders and is imported by the strategies) because it needs
`AutoStrategy`, which imports the strategies: keeping it here keeps the import graph free of circles.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

from .hub.auto import AutoStrategy


def run_custom_generate(model, generate_kwargs: dict[str, Any], *, repo_id: str | None):
    """Body of every `custom_generate/generate.py`: load the strategy, then `generate` with it as assistant."""
    if generate_kwargs.get("assistant_model") is not None:
        raise ValueError("custom_generate=<hf_specdec folder> brings its own drafter; do not also pass "
                         "assistant_model.")
    source = _custom_generate_source() or repo_id
    if source is None:
        raise ValueError("Cannot tell which folder this custom_generate code was loaded from, and it names no Hub "
                         "repo: load the strategy with hf_specdec.AutoStrategy.from_pretrained(folder) and pass it "
                         "as assistant_model.")
    strategy = AutoStrategy.from_pretrained(source)
    generate_kwargs = {key: value for key, value in generate_kwargs.items() if key != "assistant_model"}
    return model.generate(assistant_model=strategy, **generate_kwargs)


def _custom_generate_source() -> str | None:
    """The `custom_generate=` string the caller gave Transformers' `generate` (a folder or a repo id): it is a local
    of that frame, and the only record of where this code was loaded from (Transformers copies generate.py into
    its module cache first)."""
    frame = inspect.currentframe()
    while frame is not None:
        value = frame.f_locals.get("custom_generate") if frame.f_code.co_name == "generate" else None
        if isinstance(value, (str, os.PathLike)):
            return str(value)
        frame = frame.f_back
    return None
