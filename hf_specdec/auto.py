"""Moved to `hf_specdec.hub.auto`; this old path still imports it (the same module object)."""

import sys

from .hub import auto as _moved

sys.modules[__name__] = _moved
