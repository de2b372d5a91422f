"""Moved to `hf_specdec.drafters.tokenizer_bridge`; this old path still imports it (the same module object)."""

import sys

from .drafters import tokenizer_bridge as _moved

sys.modules[__name__] = _moved
