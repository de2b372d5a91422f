"""The target's KV cache between steps: which caches can be rolled back at all, and how a step's verified slots are
kept (the accepted ones) or dropped (rejected nodes, tree siblings, padding of narrower drafts).

Layout: each step appends 1 + W slots per row (the row's last token and W draft nodes). `commit` moves every row's
kept slots to the front of that tail (in order; a chain keeps a prefix, so nothing moves) and crops the slots no row
keeps. A batch of one therefore never holds a dead slot, and its steps need no attention mask. In a batch, rows keep
different counts, so a validity mask over slots (`slot_mask` `[B, S]`) marks the dead ones; the cache is compacted
(each row's live slots gathered to the right, left-padded) only when more than half of it is dead, which bounds the
copying to a constant factor of the cache's growth.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import (Cache, DynamicCache, DynamicIndexedLayer, DynamicLayer,
                                      DynamicSlidingWindowLayer, EncoderDecoderCache)

from ..compat import CACHE_KWARG

COMPACT_MIN_SLOTS = 64  # never compact a cache shorter than this
# Layer classes whose `crop` removes every trace of the cropped tokens (checked exactly: subclasses such as
# Transformers' LinearAttentionAndFullAttentionLayer also carry a recurrent state that `crop` leaves as it is).
ROLLBACK_LAYERS = (DynamicLayer, DynamicSlidingWindowLayer, DynamicIndexedLayer)
_RECURRENT = ("a recurrent state (SSM / linear-attention / convolution) that is updated in place and cannot be rolled "
              "back to an earlier token, so a rejected draft would leave its trace and the output would differ from "
              "plain generate (Transformers refuses its own assisted generation for such models for the same reason)")
_WHAT_WORKS = ("Use plain generate for this model, or speculative decoding with a pure-attention target "
               "(Llama, Qwen2/3, Mistral, Gemma, GPT-2, ...).")


def _recurrent_layer_names(layers) -> list[str]:
    return sorted({type(layer).__name__ for layer in layers
                   if any(part in type(layer).__name__ for part in ("Linear", "Mamba", "Recurrent", "Conv"))})


def keeps_recurrent_state(model: PreTrainedModel) -> bool:
    """Whether `model` carries a state that `crop` cannot roll back: the `_is_stateful` flag older Transformers set,
    or (Transformers >= 5.25, which dropped the flag) the layers of the cache its config builds."""
    if getattr(model, "_is_stateful", False):
        return True
    try:
        layers = DynamicCache(config=model.config).layers
    except Exception:  # a config DynamicCache cannot read (e.g. no layer count): its own cache is checked later
        return False
    return bool(_recurrent_layer_names(layers))


def self_attention_cache(cache: Cache) -> Cache:
    """The part of the cache rollback crops: an encoder-decoder's self-attention cache (cross-attention stays)."""
    return cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache


def check_cache(cache: Cache, model: PreTrainedModel | None = None, batched: bool = False) -> None:
    """Refuses any cache (or model) that `crop` cannot roll back exactly, saying why and what works; turns on the
    past recording sliding-window layers need to be cropped. batched: several rows or padding, whose dead slots
    are masked and compacted, which only full-attention layers allow."""
    name = type(model).__name__ if model is not None else "This model"
    if model is not None and getattr(model, "_is_stateful", False):  # the cache itself is checked next
        raise ValueError(f"{name} keeps {_RECURRENT}. {_WHAT_WORKS}")
    rolled_back = self_attention_cache(cache)
    layers = getattr(rolled_back, "layers", [])
    stateful = _recurrent_layer_names(layers)
    if stateful:
        raise ValueError(f"{name}'s cache layers {stateful} keep {_RECURRENT}. {_WHAT_WORKS}")
    fix = ("Use the default DynamicCache: remove cache_implementation=... from the call or the generation config, or "
           f"pass {CACHE_KWARG}=DynamicCache(config=model.config).")
    if not isinstance(rolled_back, DynamicCache):
        raise ValueError(f"hf_specdec rolls rejected tokens back with DynamicCache.crop; {type(rolled_back).__name__} "
                         f"cannot be rolled back. {fix}")
    bad = sorted({type(layer).__name__ for layer in layers if type(layer) not in ROLLBACK_LAYERS})
    if bad:
        raise ValueError(f"Cache layers {bad} cannot be rolled back with crop (hf_specdec supports "
                         f"{[cls.__name__ for cls in ROLLBACK_LAYERS]}). {fix}")
    windowed = sorted({type(layer).__name__ for layer in layers if type(layer) is not DynamicLayer})
    if batched and windowed:
        raise ValueError(f"Padded batches need full-attention cache layers (their dead slots are masked and "
                         f"compacted); this model has {windowed}. Generate one prompt at a time (a batch of one "
                         "unpadded row supports them).")
    rolled_back.activate_past_recording()


def commit(cache: Cache, slot_mask: torch.BoolTensor | None, kept: list[list[int]], width: int,
           ) -> torch.BoolTensor | None:
    """Keeps, for every row b, the step's tail slots `kept[b]` (ascending; 0 = the row's last token, 1 + i = node i)
    and drops the rest. slot_mask: `[B, S]` before the step's 1 + `width` slots, or None for a dense batch of one.
    Returns the new mask (None stays None)."""
    rolled_back = self_attention_cache(cache)
    tail = 1 + width
    if any(rows != list(range(len(rows))) for rows in kept):  # a tree path: move the kept slots to the front
        order = [rows + [i for i in range(tail) if i not in set(rows)] for rows in kept]
        gather_tail(rolled_back, torch.tensor(order, dtype=torch.long), tail)
    longest = max(len(rows) for rows in kept)
    if slot_mask is not None:
        counts = torch.tensor([len(rows) for rows in kept], device=slot_mask.device)
        new = torch.arange(longest, device=slot_mask.device)[None] < counts[:, None]  # [B, longest]
        slot_mask = torch.cat([slot_mask, new], dim=1)
    if longest < tail:
        rolled_back.crop(longest - tail)
    return slot_mask


def gather_tail(cache: DynamicCache, order: torch.LongTensor, tail: int) -> None:
    """Reorders the last `tail` slots of every row by `order` `[B, tail]`, in place (full-attention layers only: a
    sliding-window layer's kept window cannot be reordered safely)."""
    for layer in cache.layers:
        if type(layer) is not DynamicLayer:
            raise ValueError(f"Tree drafts need full-attention DynamicLayer caches, got {type(layer).__name__}; use a "
                             "chain instead (e.g. MedusaStrategy(heads, tree=None), EagleStrategy(drafter, tree=None)).")
        layer.keys[..., -tail:, :] = _gather_slots(layer.keys[..., -tail:, :], order)
        layer.values[..., -tail:, :] = _gather_slots(layer.values[..., -tail:, :], order)


def maybe_compact(cache: Cache, slot_mask: torch.BoolTensor, live: list[int]) -> torch.BoolTensor:
    """Compacts when the cache is long and over half of it is dead. live: each row's live slot count (host)."""
    if slot_mask.shape[1] >= COMPACT_MIN_SLOTS and 2 * max(live) < slot_mask.shape[1]:
        return compact(cache, slot_mask, max(live))
    return slot_mask


def compact(cache: Cache, slot_mask: torch.BoolTensor, width: int) -> torch.BoolTensor:
    """Gathers each row's live slots to the right end (left padding before them), in order; `width`: the most live
    slots of any row. Keys and values get their own index (compressed-attention layers cache them at different
    widths). Returns the new mask."""
    order = torch.sort(slot_mask.to(torch.int8), dim=1, stable=True).indices[:, -width:]  # [B, width], live last
    for layer in self_attention_cache(cache).layers:
        if type(layer) is not DynamicLayer:
            raise ValueError(f"Padded batches compact full-attention DynamicLayer caches only, got "
                             f"{type(layer).__name__}; generate one prompt at a time for this model.")
        layer.keys = _gather_slots(layer.keys, order)
        layer.values = _gather_slots(layer.values, order)
    return slot_mask.gather(1, order)


def _gather_slots(states: torch.Tensor, order: torch.LongTensor) -> torch.Tensor:
    """`states` `[B, heads, S, D]` gathered along S by `order` `[B, S']`."""
    index = order.to(states.device)[:, None, :, None].expand(-1, states.shape[1], -1, states.shape[-1])
    return states.gather(2, index)
