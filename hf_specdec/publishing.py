"""Moved to `hf_specdec.hub.publishing`; this old path still imports it (the same module object)."""

import sys

from .hub import publishing as _moved

sys.modules[__name__] = _moved
