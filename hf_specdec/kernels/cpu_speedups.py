"""Faster `nn.Linear` for small-batch CPU inference: the matrix products behind a decode or verify step.

On the 2-core AVX2 machine this project runs on, ~70% of a SmolLM2 forward is `aten::mm`, and `F.linear`
(MKL's GEMM on a row-major `[out, in]` weight) is slow for skinny inputs of M = 1..16 rows, which is exactly
what decoding (M = 1) and speculative verification (M = K + 1) feed it. Two kernels do better, both measured
by `benchmarks/cpu_forward_cost.py`:

- M = 1: `x @ Wt` with a pre-transposed, contiguous copy `Wt` of the weight (`[in, out]`);
- M >= 2: oneDNN's linear (`torch.ops.mkldnn._linear_pointwise`) on a weight reordered once into oneDNN's
  blocked layout, whose cost stays nearly flat from 2 to 16 rows while MKL's grows several-fold.

`optimize_for_cpu(model)` switches every `nn.Linear` to `CpuLinear`, an `nn.Linear` subclass that picks the
kernel per call from the number of rows. Parameters, `state_dict`, hooks and weight tying are untouched: the
derived copies live outside the state dict and are rebuilt whenever the weight changes (in-place updates bump
`weight._version`; a new tensor changes its data pointer), so a tied `lm_head` always multiplies by the current
embedding. Anything the fast kernels do not cover (autograd, tensors off the CPU, dtypes other than float32)
goes through `F.linear` unchanged. The price is memory: up to two extra copies of each weight.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CpuLinear", "fast_kernels_for_call", "is_cpu_optimized", "optimize_for_cpu", "restore_cpu_defaults",
           "should_use_fast_kernels"]

# Rows at and above which oneDNN beats `x @ Wt` (measured on SmolLM2-135M, 2 threads).
ONEDNN_MIN_ROWS = 2


def onednn_available() -> bool:
    """True when this torch build has oneDNN's fused linear op (CPU builds with MKLDNN)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class CpuLinear(nn.Linear):
    """`nn.Linear` that multiplies skinny float32 CPU inputs with faster kernels; created by `optimize_for_cpu`.

    Never construct it directly: `optimize_for_cpu` turns existing `nn.Linear` modules into it in place
    (so their parameters, names and hooks stay), and `restore_cpu_defaults` turns them back.
    """

    _fast_weights: dict[str, Any] | None

    def prepare(self) -> None:
        """(Re)build the derived weights from the current `self.weight`."""
        weight = self.weight.detach()  # [out, in]
        fast: dict[str, Any] = {"key": _weight_key(weight), "wt": weight.t().contiguous()}  # wt: [in, out]
        if onednn_available():
            fast["onednn"] = torch.ops.mkldnn._reorder_linear_weight(weight)  # opaque oneDNN layout
        self._fast_weights = fast

    def _derived(self) -> dict[str, Any]:
        """The derived weights, rebuilt first if the weight changed since they were made."""
        if self._fast_weights is None or self._fast_weights["key"] != _weight_key(self.weight):
            self.prepare()
        return self._fast_weights

    def _can_use_fast_path(self, x: torch.Tensor) -> bool:
        """Fast kernels only for float32 CPU inference: no autograd, no other device or dtype."""
        needs_grad = torch.is_grad_enabled() and (self.weight.requires_grad or x.requires_grad)
        on_cpu = x.is_cpu and self.weight.is_cpu
        return not needs_grad and on_cpu and x.dtype == self.weight.dtype == torch.float32 and x.numel() > 0 \
            and _is_plain(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x` `[..., in]` -> `[..., out]`, equal to `F.linear(x, weight, bias)` up to float rounding."""
        if not self._can_use_fast_path(x):
            return F.linear(x, self.weight, self.bias)
        fast = self._derived()
        rows = x.numel() // self.in_features
        if rows >= ONEDNN_MIN_ROWS and "onednn" in fast:
            return torch.ops.mkldnn._linear_pointwise(x.contiguous(), fast["onednn"], self.bias, "none", [], "")
        y = torch.matmul(x, fast["wt"])  # [..., out]
        return y if self.bias is None else y + self.bias

    def __getstate__(self) -> dict[str, Any]:
        """Drop the derived weights when pickled or deep-copied (oneDNN tensors cannot be); rebuilt on use."""
        state = dict(self.__dict__)
        state["_fast_weights"] = None
        return state

    def extra_repr(self) -> str:
        return super().extra_repr() + ", cpu_optimized=True"


def _is_plain(weight: torch.Tensor) -> bool:
    """A dense weight, not a quantized tensor subclass (torchao's weight-only schemes keep `nn.Linear`)."""
    return type(weight) in (torch.Tensor, nn.Parameter) and not weight.is_quantized


def _weight_key(weight: torch.Tensor) -> tuple[int, int, torch.dtype, tuple[int, ...]]:
    """Identity of a weight's current values: changes on in-place updates and on replacement."""
    return (weight.data_ptr(), weight._version, weight.dtype, tuple(weight.shape))


def optimize_for_cpu(model: nn.Module) -> nn.Module:
    """Switch every `nn.Linear` in `model` (tied `lm_head` included) to `CpuLinear`, in place; returns `model`.

    Idempotent. Outputs change only by float rounding (max abs logit difference ~1e-5 on SmolLM2). Only float32
    CPU inference is accelerated; training, other dtypes and other devices fall back to `F.linear`.
    Undo with `restore_cpu_defaults(model)`.
    """
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = CpuLinear
            module._fast_weights = None
        if isinstance(module, CpuLinear) and module.weight.is_cpu and module.weight.dtype == torch.float32 \
                and _is_plain(module.weight):
            module.prepare()
    return model


def restore_cpu_defaults(model: nn.Module) -> nn.Module:
    """Turn every `CpuLinear` in `model` back into a plain `nn.Linear` (frees the derived weights, also those kept
    by `fast_kernels_for_call`); in place."""
    for module in model.modules():
        if isinstance(module, CpuLinear):
            module.__class__ = nn.Linear
            del module._fast_weights
        _KEPT.pop(module, None)
    return model


# Derived weights of layers `fast_kernels_for_call` switched back, kept for their next call (dropped with the layer).
_KEPT: weakref.WeakKeyDictionary[nn.Module, dict[str, Any] | None] = weakref.WeakKeyDictionary()

# The derived weights take up to two more copies of every linear weight; use them only while that stays under this
# share of the memory the system has available.
FAST_KERNEL_MEMORY_SHARE = 0.5


def should_use_fast_kernels(model: nn.Module) -> bool:
    """The rule for `fast_kernels_for_call`: every parameter on the CPU in float32, some `nn.Linear` not yet
    optimized, and two copies of the linear weights fit in half of the memory available now (MemAvailable in
    /proc/meminfo; where that cannot be read, no)."""
    parameters = list(model.parameters())
    if not parameters or any(not p.is_cpu or p.dtype != torch.float32 for p in parameters):
        return False
    linears = [m for m in model.modules() if type(m) is nn.Linear and _is_plain(m.weight)]
    if not linears:
        return False
    needed = sum(2 * m.weight.numel() * m.weight.element_size() for m in linears
                 if _KEPT.get(m) is None)  # already derived ones cost nothing more
    available = _available_memory()
    return available is not None and needed <= FAST_KERNEL_MEMORY_SHARE * available


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@contextmanager
def fast_kernels_for_call(*models: nn.Module, enabled: bool = True) -> Iterator[bool]:
    """While the block runs, the plain `nn.Linear` layers of each model that passes `should_use_fast_kernels`
    multiply with `CpuLinear`'s kernels (when `enabled`); afterwards they are plain `nn.Linear` again, so the user's
    own `generate` calls keep PyTorch's kernels. The derived weights stay on the layers between calls (no rebuild per
    call; `restore_cpu_defaults` frees them). Yields whether any kernels were switched on."""
    chosen = [model for model in models if enabled and should_use_fast_kernels(model)]
    # dict: a layer shared by two models (a draft borrowing the target's LM head) is switched once
    switched = list({id(m): m for model in chosen for m in model.modules()
                     if type(m) is nn.Linear and _is_plain(m.weight)}.values())
    for module in switched:
        module.__class__ = CpuLinear
        module._fast_weights = _KEPT.pop(module, None)
    try:
        yield bool(switched)
    finally:
        for module in switched:
            module.__class__ = nn.Linear
            _KEPT[module] = module.__dict__.pop("_fast_weights")  # the layer itself stays a plain nn.Linear


def is_cpu_optimized(model: nn.Module) -> bool:
    """True if any linear layer of `model` is a `CpuLinear`."""
    return any(isinstance(module, CpuLinear) for module in model.modules())
