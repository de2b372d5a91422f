"""Moved to `hf_specdec.kernels.cpu_speedups`; this old path still imports it (the same module object)."""

import sys

from .kernels import cpu_speedups as _moved

sys.modules[__name__] = _moved
