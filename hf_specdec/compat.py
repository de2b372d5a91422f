"""The one place that knows which Transformers release is installed.

Transformers 5.24 renamed the KV cache argument from `past_key_values` to `cache` (in `generate`, in model
forwards and in outputs); 5.23 knows only `past_key_values`. Everything in hf_specdec passes and reads the cache
through `CACHE_KWARG`, so both releases work without deprecation warnings.
"""

from __future__ import annotations

import dataclasses

from transformers.generation.utils import GenerateDecoderOnlyOutput

# "cache" on transformers >= 5.24, "past_key_values" before.
CACHE_KWARG = "cache" if "cache" in {f.name for f in dataclasses.fields(GenerateDecoderOnlyOutput)} else "past_key_values"


def output_cache(outputs):
    """The KV cache held by a model or generate output, whatever the release calls it."""
    return getattr(outputs, CACHE_KWARG)
