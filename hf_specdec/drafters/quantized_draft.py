"""Quantized and lower-precision drafts: a cheaper draft model for `DraftModelStrategy`, still lossless.

The verifier only needs the draft's proposals (and, when sampling, the distribution q they were drawn from), so a
draft may compute in any precision: its logits are read as float32 and compared with the target's float32 scores.
What a scheme changes is the draft's cost per token and how often the target agrees with it.

Schemes (`quantize_draft(draft, scheme)`, always on a copy; the input draft is left as it was):
- "int8": `torch.ao` dynamic int8 on the decoder layers' `nn.Linear`s (weights int8, activations quantized per
  call); the embedding and LM head stay as they are (a distilled draft keeps sharing its target's). With a draft
  vocabulary, `DraftModelStrategy` scores it through an int8 copy of those head rows (`vocab_head`).
- "bf16", "fp16": the whole draft in that dtype, a full copy (a distilled draft's shared embedding and head are
  copied too: ~56 MB more for SmolLM2's 49,152 x 576 in bf16).
- "int8_weight_only", "int4_weight_only": torchao's weight-only schemes on the decoder layers, where torchao is
  installed and this machine has kernels for them; refused with the reason otherwise.

A quantized draft is never saved quantized: a strategy saves a pointer to its float source plus the scheme, and a
distilled draft folder records `quantize` in its `hf_specdec_draft.json`; both are re-quantized when loaded.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn
from transformers import PreTrainedModel

from ..kernels.cpu_speedups import restore_cpu_defaults

QUANTIZATION_ATTRIBUTE = "hf_specdec_quantization"  # the scheme a draft was quantized with (re-applied on load)
DTYPE_SCHEMES = {"bf16": torch.bfloat16, "fp16": torch.float16}
TORCHAO_SCHEMES = ("int8_weight_only", "int4_weight_only")
SCHEMES = ("int8", *DTYPE_SCHEMES, *TORCHAO_SCHEMES)


def quantize_draft(draft: PreTrainedModel, scheme: str) -> PreTrainedModel:
    """A copy of `draft` in `scheme` (one of `SCHEMES`; "none" returns `draft` itself), in eval mode, remembering
    its scheme (`quantization_scheme`) so a saved strategy can re-quantize it on load."""
    if scheme in (None, "none", "fp32"):
        return draft
    if scheme not in SCHEMES:
        raise ValueError(f"Unknown draft quantization {scheme!r}: use one of {', '.join(SCHEMES)} (or 'none').")
    if scheme in DTYPE_SCHEMES:
        quantized = restore_cpu_defaults(copy.deepcopy(draft)).to(DTYPE_SCHEMES[scheme])
    else:
        quantized = _copy_keeping_shared(draft)
        layers = restore_cpu_defaults(quantized.get_decoder().layers)
        if scheme == "int8":
            with warnings.catch_warnings():  # torch.ao's deprecation notices; it still runs on this torch
                warnings.simplefilter("ignore", (DeprecationWarning, UserWarning))
                torch.ao.quantization.quantize_dynamic(layers, {nn.Linear}, dtype=torch.qint8, inplace=True)
        else:
            _torchao_quantize(layers, scheme)
    setattr(quantized, QUANTIZATION_ATTRIBUTE, scheme)
    return quantized.eval()


def quantization_scheme(model: nn.Module) -> str | None:
    """The scheme `quantize_draft` applied to `model`, or None."""
    return getattr(model, QUANTIZATION_ATTRIBUTE, None)


def _copy_keeping_shared(draft: PreTrainedModel) -> PreTrainedModel:
    """A deep copy of `draft` whose embedding and LM head are the very same modules (a distilled draft shares them
    with its target: they must stay shared, and unquantized)."""
    memo = {id(module): module for module in (draft.get_input_embeddings(), draft.get_output_embeddings())
            if module is not None}
    memo.update({id(p): p for module in list(memo.values()) for p in module.parameters()})
    return copy.deepcopy(draft, memo)


def _torchao_quantize(layers: nn.Module, scheme: str) -> None:
    """torchao's weight-only scheme on `layers`, checked by one forward so a missing kernel fails here, clearly."""
    works = "'int8' (torch.ao dynamic), 'bf16' or 'fp16'"
    try:
        from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, quantize_
    except ImportError as error:
        raise ValueError(f"Draft quantization {scheme!r} needs torchao ({error}); `pip install torchao`, or use "
                         f"{works}, which need only torch.") from error
    config = Int8WeightOnlyConfig() if scheme == "int8_weight_only" else Int4WeightOnlyConfig()
    linear = next((m for m in layers.modules() if isinstance(m, nn.Linear)), None)
    try:
        quantize_(layers, config)
        if linear is not None:
            weight = linear.weight
            if type(weight) in (torch.Tensor, nn.Parameter):
                raise RuntimeError("torchao left the weights unquantized (no layout for these shapes or this device)")
            linear(torch.zeros(1, weight.shape[1], dtype=torch.float32, device=weight.device))
    except Exception as error:  # noqa: BLE001 - any failure here means this machine cannot run the scheme
        raise ValueError(f"Draft quantization {scheme!r} cannot run here ({type(error).__name__}: "
                         f"{str(error)[:200]}); use {works}.") from error


def vocab_head(rows: torch.Tensor, scheme: str | None) -> torch.Tensor | nn.Module:
    """The LM head restricted to a draft vocabulary, from its rows `[V', H]`: `[H, V']` to multiply by (M = 1
    decode rows read it fastest transposed), or for an "int8" draft a torch.ao dynamic int8 `Linear` (the shared
    head itself stays float: the target uses it; this slice is the draft's own)."""
    if scheme != "int8":
        return rows.t().contiguous()  # [H, V']
    linear = nn.Linear(rows.shape[1], rows.shape[0], bias=False, device=rows.device, dtype=torch.float32)
    with torch.no_grad():
        linear.weight.copy_(rows)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, UserWarning))
        return torch.ao.quantization.quantize_dynamic(nn.Sequential(linear), {nn.Linear}, dtype=torch.qint8)[0]


def head_rows(head: nn.Module) -> int:
    """Output rows of an LM head (`nn.Linear`, a torch.ao quantized Linear whose `weight` is a method, a torchao
    tensor subclass, ...)."""
    for name in ("out_features", "num_embeddings"):
        if isinstance(getattr(head, name, None), int):
            return getattr(head, name)
    return int(head_weight(head).shape[0])


def head_weight(head: nn.Module) -> torch.Tensor:
    """An LM head's weight `[V, H]` as a plain floating tensor (dequantized if it is stored quantized)."""
    weight = head.weight() if callable(head.weight) else head.weight
    if getattr(weight, "is_quantized", False) or not type(weight) in (torch.Tensor, nn.Parameter):
        weight = weight.dequantize()
    return weight.detach()
