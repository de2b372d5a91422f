"""Moved to `hf_specdec.drafters.eagle_drafter`; this old path still imports it (the same module object)."""

import sys

from .drafters import eagle_drafter as _moved

sys.modules[__name__] = _moved
