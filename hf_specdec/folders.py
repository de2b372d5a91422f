"""Moved to `hf_specdec.hub.folders`; this old path still imports it (the same module object)."""

import sys

from .hub import folders as _moved

sys.modules[__name__] = _moved
