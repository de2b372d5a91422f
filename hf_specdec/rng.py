"""Building or loading a strategy leaves the caller's random state as it was.

Creating modules (heads, an EAGLE drafter, a draft model from its config) runs their random initialisers before the
saved weights replace them, which draws from torch's global generator: a user who seeds, builds a strategy and then
samples would get other text than one who seeds and samples. Each loader runs inside `torch.random.fork_rng`, which
restores the CPU state (and the state of CUDA devices already in use) on the way out.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch

F = TypeVar("F", bound=Callable)


def fork_rng():
    """`torch.random.fork_rng` over the CPU and only the CUDA devices already initialised (forking every device
    would initialise CUDA just to save its state)."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    return torch.random.fork_rng(devices=devices)


def keeps_rng(function: F) -> F:
    """Decorator: `function` runs with the global random state forked, so calling it does not advance it."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with fork_rng():
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
