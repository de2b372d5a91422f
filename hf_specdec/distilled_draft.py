"""Moved to `hf_specdec.drafters.distilled_draft`; this old path still imports it (the same module object)."""

import sys

from .drafters import distilled_draft as _moved

sys.modules[__name__] = _moved
