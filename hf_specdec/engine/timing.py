"""Wall-clock readings that drive decisions (cost gates, verify widths): synchronized on accelerators, where a bare
`time.perf_counter()` right after an asynchronous forward would measure only its launch."""

from __future__ import annotations

import time

import torch


def synchronized_now(device: torch.device | str | None) -> float:
    """`time.perf_counter()` after the work queued on `device` has finished (CPU and meta: nothing to wait for)."""
    device = torch.device(device) if device is not None else None
    if device is not None and device.type not in ("cpu", "meta"):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elif hasattr(torch, "accelerator"):
            torch.accelerator.synchronize(device)
    return time.perf_counter()
