"""Moved to `hf_specdec.drafters.medusa_heads`; this old path still imports it (the same module object)."""

import sys

from .drafters import medusa_heads as _moved

sys.modules[__name__] = _moved
