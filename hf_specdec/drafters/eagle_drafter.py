"""EAGLE-3 drafter (Li et al. 2025), in the checkpoint format `speculators` defines and vLLM / SGLang load.

Position p of the drafter reads the pair (g_p, x_{p+1}): g_p fuses the target's hidden states at p from a few chosen
layers (`aux_layer_ids`, low/mid/high by default) with one linear `fc`, and x_{p+1} is the token the target emitted
there. Its first (and usually only) decoder layer attends over [embedding; hidden] (2H wide, each half RMS-normed)
and its output o_p stands in for the target's next feature: `norm` + the drafter's own LM head over a draft
vocabulary turn it into a guess of x_{p+2}, and (o_p, guess) is the input of position p + 1. So the drafter drafts
many tokens deep on its own, each step reading everything before it through its own KV cache. Positions whose pair
comes from the target ("committed") stay in the cache; drafted positions are dropped after each verify, and the
accepted ones come back as committed pairs with the target's real features.

The auxiliary features come out of the verify forward the engine runs anyway (`EagleStrategy.hidden_state_layers`),
so drafting adds no target forward. Layer id i is the input of the target's decoder layer i (Transformers'
`hidden_states[i]`), as in vLLM and `speculators`.

Saved folders are `speculators` EAGLE-3 checkpoints (`config.json` with `speculators_model_type: "eagle3"`,
`model.safetensors` with `fc`, `layers.0.*`, `norm`, `lm_head`, `d2t`/`t2d`); the input embeddings are the
target's, borrowed at run time (`attach_target`) unless a folder carries its own `embed_tokens`. hf_specdec's own
notes (the base model's name) go into a side file, `hf_specdec_drafter.json`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..config import local_or_hub_files, push_folder_to_hub
from ..rng import keeps_rng
from .eagle3_format import (CONFIG_FILE, SIDE_FILE, WEIGHTS_FILE, config_from_speculators, read_drafter_folder,
                            speculators_config)

LAYER_TYPES = ("llama", "qwen3")  # decoder layers speculators builds EAGLE-3 drafters from


@dataclass
class EagleDrafterConfig:
    """Shape of an EAGLE-3 drafter (what speculators' `Eagle3SpeculatorConfig` holds). `for_target` copies one
    layer of the target's shape and picks the default auxiliary layers."""

    hidden_size: int = field(metadata={"help": "Target hidden size (e.g. 576 for SmolLM2-135M)."})
    vocab_size: int = field(metadata={"help": "Target vocabulary size (e.g. 49152 for SmolLM2-135M)."})
    intermediate_size: int = field(metadata={"help": "The layer's MLP width."})
    num_attention_heads: int = field(metadata={"help": "Query heads of the layer's attention."})
    num_key_value_heads: int = field(metadata={"help": "Key/value heads (grouped-query attention)."})
    aux_layer_ids: list[int] = field(
        default_factory=lambda: [-1],
        metadata={"help": "Target layers whose hidden states are fused (layer id i = the input of decoder layer i; "
                          "`speculators`' eagle_aux_hidden_state_layer_ids). `for_target` picks [2, n // 2, n - 3]."})
    head_dim: int | None = field(default=None, metadata={"help": "Per-head width; None: hidden_size // heads."})
    draft_vocab_size: int | None = field(
        default=None, metadata={"help": "Rows of the drafter's LM head (token ids saved as `d2t` offsets); None: "
                                        "the whole vocabulary. Fewer rows make drafting cheaper; outputs cannot change "
                                        "(the target verifies every draft)."})
    rms_norm_eps: float = field(default=1e-5, metadata={"help": "RMSNorm epsilon."})
    rope_parameters: dict = field(default_factory=lambda: {"rope_type": "default", "rope_theta": 10000.0},
                                  metadata={"help": "Rotary embedding settings, as Transformers' Llama config."})
    max_position_embeddings: int = field(default=8192, metadata={"help": "Used by scaled rotary embeddings."})
    layer_type: str = field(default="llama", metadata={"help": "'llama', or 'qwen3' (per-head q/k norms)."})
    attention_bias: bool = field(default=False, metadata={"help": "Biases on q/k/v/o projections."})
    norm_before_residual: bool = field(default=False, metadata={"help": "The residual is the normed hidden half."})
    norm_before_fc: bool = field(default=False, metadata={"help": "One RMSNorm over the concatenated features."})
    fc_norm: bool = field(default=False, metadata={"help": "One RMSNorm per auxiliary feature before `fc`."})
    norm_output: bool = field(default=False, metadata={"help": "Feed back the normed output to the next depth."})
    base_model: str | None = field(default=None, metadata={"help": "Name of the target it was trained on."})

    def __post_init__(self) -> None:
        for name in ("hidden_size", "vocab_size", "intermediate_size", "num_attention_heads", "num_key_value_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"EagleDrafterConfig.{name} must be an integer >= 1, got {value!r}.")
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError("EagleDrafterConfig: hidden_size must be a multiple of num_attention_heads "
                                 "(or give head_dim).")
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("EagleDrafterConfig: num_attention_heads must be a multiple of num_key_value_heads.")
        if not self.aux_layer_ids or len(set(self.aux_layer_ids)) != len(self.aux_layer_ids):
            raise ValueError(f"EagleDrafterConfig.aux_layer_ids must be distinct layer ids, got {self.aux_layer_ids}.")
        if self.draft_vocab_size is not None and not (isinstance(self.draft_vocab_size, int)
                                                      and 1 <= self.draft_vocab_size <= self.vocab_size):
            raise ValueError(f"EagleDrafterConfig.draft_vocab_size must be None or an integer in [1, vocab_size="
                             f"{self.vocab_size}], got {self.draft_vocab_size!r}.")
        if self.layer_type not in LAYER_TYPES:
            raise ValueError(f"EAGLE-3 drafters with {self.layer_type!r} layers are not supported; supported: "
                             f"{', '.join(LAYER_TYPES)}.")
        if self.norm_before_fc and self.fc_norm:
            raise ValueError("norm_before_fc and fc_norm are mutually exclusive.")

    @classmethod
    def for_target(cls, target_config, **overrides: Any) -> EagleDrafterConfig:
        """A drafter shaped like one layer of `target_config` (a Transformers decoder config), fusing layers
        [2, n // 2, n - 3] (the default of EAGLE-3 and vLLM; {n // 2, n - 1, n} for targets under 8 layers, n being the final normed output)."""
        heads = target_config.num_attention_heads
        layers = target_config.num_hidden_layers
        aux = [2, layers // 2, layers - 3] if layers >= 8 else sorted({layers // 2, layers - 1, layers})
        rope = dict(getattr(target_config, "rope_parameters", None) or {})
        rope.setdefault("rope_type", "default")
        rope.setdefault("rope_theta", float(getattr(target_config, "rope_theta", 10000.0)))
        values = dict(hidden_size=target_config.hidden_size, vocab_size=target_config.vocab_size,
                      intermediate_size=getattr(target_config, "intermediate_size", 4 * target_config.hidden_size),
                      num_attention_heads=heads, aux_layer_ids=aux,
                      num_key_value_heads=getattr(target_config, "num_key_value_heads", None) or heads,
                      head_dim=getattr(target_config, "head_dim", None),
                      rms_norm_eps=float(getattr(target_config, "rms_norm_eps", 1e-5)), rope_parameters=rope,
                      max_position_embeddings=getattr(target_config, "max_position_embeddings", 8192),
                      layer_type="qwen3" if target_config.model_type.startswith("qwen3") else "llama")
        return cls(**{**values, **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def rows(self) -> int:
        """Rows of the drafter's LM head."""
        return self.draft_vocab_size or self.vocab_size


class DrafterCache:
    """The drafter's KV cache for one sequence: keys and values `[1, kv_heads, T, head_dim]`.

    Slot t holds drafter position `positions[t]`. Committed slots come first; drafted ones are appended after them
    and dropped with `crop`."""

    def __init__(self) -> None:
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.keys is None else self.keys.shape[-2]

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Adds `[1, kv, n, d]` keys/values; returns the whole cache's."""
        if self.keys is None:
            self.keys, self.values = keys, values
        else:
            self.keys, self.values = torch.cat([self.keys, keys], dim=-2), torch.cat([self.values, values], dim=-2)
        return self.keys, self.values

    def crop(self, length: int) -> None:
        """Keep the first `length` slots."""
        if self.keys is not None:
            self.keys, self.values = self.keys[..., :length, :], self.values[..., :length, :]


def packed_cache(caches: list[DrafterCache]) -> tuple[DrafterCache, list[int]]:
    """Several rows' caches as one (their slots side by side), so one drafter forward serves every row, each query
    masked to its own row's slots; and each row's first slot. One row: its own cache, nothing copied."""
    if len(caches) == 1:
        return caches[0], [0]
    starts, total = [], 0
    for cache in caches:
        starts.append(total)
        total += len(cache)
    packed = DrafterCache()
    filled = [cache for cache in caches if cache.keys is not None]
    if filled:
        packed.keys = torch.cat([cache.keys for cache in filled], dim=-2)
        packed.values = torch.cat([cache.values for cache in filled], dim=-2)
    return packed, starts


class RMSNorm(nn.Module):
    """Llama's RMSNorm (normalise in float32, scale in the input's dtype)."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return self.weight * (x.float() * torch.rsqrt(variance + self.eps)).to(x.dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of `x` `[..., n, d]` with `cos`, `sin` `[n, d]` (the rotate-half convention)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    """The first layer's attention: q/k/v read [embedding; hidden] (2H wide). Names as in Transformers."""

    def __init__(self, config: EagleDrafterConfig) -> None:
        super().__init__()
        h, d, bias = config.hidden_size, config.head_dim, config.attention_bias
        self.heads, self.kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, d
        self.q_proj = nn.Linear(2 * h, self.heads * d, bias=bias)
        self.k_proj = nn.Linear(2 * h, self.kv_heads * d, bias=bias)
        self.v_proj = nn.Linear(2 * h, self.kv_heads * d, bias=bias)
        self.o_proj = nn.Linear(self.heads * d, h, bias=bias)
        self.q_norm = RMSNorm(d, config.rms_norm_eps) if config.layer_type == "qwen3" else None
        self.k_norm = RMSNorm(d, config.rms_norm_eps) if config.layer_type == "qwen3" else None


class MLP(nn.Module):
    def __init__(self, config: EagleDrafterConfig) -> None:
        super().__init__()
        h, m = config.hidden_size, config.intermediate_size
        self.gate_proj, self.up_proj = nn.Linear(h, m, bias=False), nn.Linear(h, m, bias=False)
        self.down_proj = nn.Linear(m, h, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DrafterLayer(nn.Module):
    """EAGLE-3's first decoder layer: the embedding half is normed by `input_layernorm`, the hidden half by
    `hidden_norm`; the residual is the hidden half; then the usual post-attention norm and SwiGLU MLP."""

    def __init__(self, config: EagleDrafterConfig) -> None:
        super().__init__()
        self.self_attn, self.mlp = Attention(config), MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.hidden_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.norm_before_residual = config.norm_before_residual

    def qkv(self, embeds: torch.Tensor, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """(queries `[B, heads, n, d]`, keys and values `[B, kv, n, d]`, residual `[B, n, H]`) of embeddings and
        hidden inputs `[B, n, H]`, rotated by `cos`/`sin` `[n, d]`."""
        attn = self.self_attn
        b, n, _ = hidden.shape
        normed = self.hidden_norm(hidden)
        x = torch.cat([self.input_layernorm(embeds), normed], dim=-1)
        q = attn.q_proj(x).view(b, n, attn.heads, attn.head_dim)
        k = attn.k_proj(x).view(b, n, attn.kv_heads, attn.head_dim)
        v = attn.v_proj(x).view(b, n, attn.kv_heads, attn.head_dim).transpose(1, 2)
        if attn.q_norm is not None:
            q, k = attn.q_norm(q), attn.k_norm(k)
        q, k = rotate(q.transpose(1, 2), cos, sin), rotate(k.transpose(1, 2), cos, sin)
        return q, k, v, normed if self.norm_before_residual else hidden

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Attention output `[B, n, H]`; mask: boolean `[n, T]` or `[B, 1, n, T]` (True = attend), None = all."""
        groups = self.self_attn.heads // self.self_attn.kv_heads
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, heads, n, d]
        return self.self_attn.o_proj(out.transpose(1, 2).flatten(2))

    def finish(self, residual: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """Residual attention output, then the residual MLP."""
        x = residual + attended
        return x + self.mlp(self.post_attention_layernorm(x))


class EagleDrafter(nn.Module):
    """`EagleDrafter(config)`, `EagleDrafter.from_pretrained(folder)` (ours or any speculators EAGLE-3 folder with
    one decoder layer); `attach_target(model)` before use. `project` fuses the target's features, `step` drafts one
    position per input pair over a `DrafterCache`, `draft_logits` reads the draft vocabulary; `unrolled_states` is
    the training-time forward (EAGLE-3's training-time test)."""

    def __init__(self, config: EagleDrafterConfig) -> None:
        super().__init__()
        from transformers import LlamaConfig
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

        self.config = config
        h, aux = config.hidden_size, len(config.aux_layer_ids)
        self.input_norm = RMSNorm(aux * h, config.rms_norm_eps) if config.norm_before_fc else None
        self.fc_norm = (nn.ModuleList(RMSNorm(h, config.rms_norm_eps) for _ in range(aux)) if config.fc_norm
                        else None)
        self.fc = nn.Linear(aux * h, h, bias=False)
        self.layers = nn.ModuleList([DrafterLayer(config)])
        self.norm = RMSNorm(h, config.rms_norm_eps)
        self.lm_head = nn.Linear(h, config.rows, bias=False)
        drafts_subset = config.rows != config.vocab_size
        self.register_buffer("d2t", torch.zeros(config.rows, dtype=torch.long) if drafts_subset else None)
        self.register_buffer("t2d", torch.zeros(config.vocab_size, dtype=torch.bool) if drafts_subset else None)
        self.embed_tokens: nn.Embedding | None = None  # set when a loaded folder carries its own
        rope = LlamaConfig(hidden_size=h, num_attention_heads=config.num_attention_heads, head_dim=config.head_dim,
                           rope_parameters=dict(config.rope_parameters),
                           max_position_embeddings=config.max_position_embeddings)
        self.rotary = LlamaRotaryEmbedding(rope)  # every rope type Transformers knows (e.g. Llama-3.1 scaling)
        self._target: list[nn.Module] = []  # the target's input embeddings, in a list so never saved
        self.verifier_name_or_path: str | None = None  # where speculators / vLLM read the target from

    @classmethod
    def from_target(cls, target: nn.Module, draft_token_ids=None, **overrides: Any) -> EagleDrafter:
        """A new drafter for `target` (randomly initialised layer) whose LM head starts as the target's rows of
        `draft_token_ids` (None: all) and whose output norm starts as the target's final norm, attached."""
        ids = None if draft_token_ids is None else torch.unique(torch.as_tensor(list(draft_token_ids)))
        rows = None if ids is None or ids.numel() == target.config.vocab_size else ids.numel()
        drafter = cls(EagleDrafterConfig.for_target(target.config, draft_vocab_size=rows, **overrides))
        head = target.get_output_embeddings().weight.detach()
        with torch.no_grad():
            drafter.lm_head.weight.copy_(head if rows is None else head[ids.to(head.device)])
            final_norm = getattr(getattr(target, "model", None), "norm", None)
            if final_norm is not None and getattr(final_norm, "weight", None) is not None:
                drafter.norm.weight.copy_(final_norm.weight.detach())
        if rows is not None:
            drafter.set_draft_vocab(ids)
        return drafter.attach_target(target)

    # ---- what it borrows from the target ----------------------------------------------------------------------
    def attach_target(self, target: nn.Module) -> EagleDrafter:
        """Borrows the target's input embeddings (never saved) and checks the target fits this drafter."""
        embeddings = target.get_input_embeddings()
        expected = (self.config.vocab_size, self.config.hidden_size)
        if embeddings is None or tuple(embeddings.weight.shape) != expected:
            shape = None if embeddings is None else list(embeddings.weight.shape)
            raise ValueError(f"The target's input embedding table has shape {shape} but this EAGLE drafter expects "
                             f"[vocab_size={expected[0]}, hidden_size={expected[1]}]; use a drafter trained for "
                             "this target (recipes/train_eagle.py).")
        layers = getattr(getattr(target, "config", None), "num_hidden_layers", None)
        if layers is not None and max(self.config.aux_layer_ids) > layers:
            raise ValueError(f"This EAGLE drafter reads target layers {self.config.aux_layer_ids} but the target has "
                             f"{layers} layers; use a drafter trained for this target.")
        self._target = [embeddings]
        return self

    def embed(self, tokens: torch.LongTensor) -> torch.Tensor:
        if self.embed_tokens is not None:
            return self.embed_tokens(tokens)
        if not self._target:
            raise ValueError("No target attached: call drafter.attach_target(model) (EagleStrategy does this).")
        return self._target[0](tokens)

    @property
    def draft_token_ids(self) -> torch.LongTensor | None:
        """Target token id of each LM-head row (None: the whole vocabulary, row i is token i)."""
        if self.d2t is None:
            return None
        return torch.arange(self.d2t.numel(), device=self.d2t.device) + self.d2t

    def set_draft_vocab(self, token_ids: torch.Tensor) -> None:
        """Rows of the LM head are these target token ids (sorted; `d2t` offsets and the `t2d` mask, as saved)."""
        ids = torch.unique(torch.as_tensor(token_ids, dtype=torch.long)).to(self.lm_head.weight.device)
        if ids.numel() != self.config.rows or int(ids[0]) < 0 or int(ids[-1]) >= self.config.vocab_size:
            raise ValueError(f"Draft vocabulary: expected {self.config.rows} distinct ids in "
                             f"[0, {self.config.vocab_size}), got {ids.numel()}.")
        if self.d2t is None:
            return  # the whole vocabulary: nothing to map
        self.d2t = ids - torch.arange(ids.numel(), device=ids.device)
        self.t2d = torch.zeros(self.config.vocab_size, dtype=torch.bool, device=ids.device)
        self.t2d[ids] = True

    # ---- running ----------------------------------------------------------------------------------------------
    def project(self, features: torch.Tensor) -> torch.Tensor:
        """The hidden input `[..., H]` of committed pairs from the target's auxiliary features `[..., A * H]`."""
        features = features.to(self.fc.weight.dtype)
        if self.input_norm is not None:
            features = self.input_norm(features)
        if self.fc_norm is not None:
            chunks = features.chunk(len(self.fc_norm), dim=-1)
            features = torch.cat([norm(chunk) for norm, chunk in zip(self.fc_norm, chunks)], dim=-1)
        return self.fc(features)

    def rope(self, positions: torch.LongTensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = self.rotary(like, positions.reshape(1, -1))
        return cos[0], sin[0]  # [n, d]

    def step(self, hidden: torch.Tensor, tokens: torch.LongTensor, positions: torch.LongTensor,
             cache: DrafterCache, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Runs n new positions on top of `cache` (their keys/values are appended); returns their states `[n, H]`
        (what `draft_logits` reads and the next depth takes as its hidden input).

        hidden `[n, H]` (`project`ed features, or the states of the previous depth), tokens `[n]`, positions `[n]`;
        mask: boolean `[n, len(cache) + n]` (True = attend), None = causal."""
        layer = self.layers[0]
        embeds = self.embed(tokens).to(hidden.dtype)[None]
        cos, sin = self.rope(positions, hidden)
        q, k, v, residual = layer.qkv(embeds, hidden[None], cos, sin)
        past, n = len(cache), tokens.numel()
        keys, values = cache.append(k, v)
        if mask is None and n > 1:
            mask = torch.ones(n, past + n, dtype=torch.bool, device=hidden.device)
            mask[:, past:] = torch.ones(n, n, dtype=torch.bool, device=hidden.device).tril()
        out = layer.finish(residual, layer.attend(q, keys, values, mask))[0]
        return self.norm(out) if self.config.norm_output else out

    def draft_logits(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Float32 logits `[n, rows]` of drafter states `[n, H]` over the draft vocabulary, and the target token id
        of each column (None: the whole vocabulary)."""
        normed = states if self.config.norm_output else self.norm(states)
        return self.lm_head(normed.to(self.lm_head.weight.dtype)).float(), self.draft_token_ids

    # ---- training: EAGLE-3's training-time test ----------------------------------------------------------------
    def unrolled_states(self, features: torch.Tensor, tokens: torch.LongTensor, steps: int) -> list[torch.Tensor]:
        """The drafter's states after 1..`steps` drafting steps from every anchor at once, as at run time.

        features `[B, L, A * H]` (the target's at p), tokens `[B, L + steps - 1]` (x_{p+1}, x_{p+2}, ...).
        Step j at anchor p reads x_{p+1+j} and the state of step j - 1 at p (step 0: the projected features) and
        attends to step 0's keys at anchors <= p and to its own chain's keys of steps 1..j - 1 at p, exactly the
        slots a depth-(j + 1) draft sees at run time; its state predicts x_{p+2+j}. Right padding needs no mask.
        Returns `steps` tensors `[B, L, H]`."""
        layer = self.layers[0]
        length = features.shape[1]
        cos, sin = self.rope(torch.arange(length, device=features.device), features)
        hidden = self.project(features)
        q, k0, v0, residual = layer.qkv(self.embed(tokens[:, :length]).to(hidden.dtype), hidden, cos, sin)
        causal = torch.ones(length, length, dtype=torch.bool, device=features.device).tril()
        states = [layer.finish(residual, layer.attend(q, k0, v0, causal))]
        drafted: list[tuple[torch.Tensor, torch.Tensor]] = []
        for j in range(1, steps):
            previous = self.norm(states[-1]) if self.config.norm_output else states[-1]
            cos, sin = self.rope(torch.arange(j, j + length, device=features.device), features)
            q, k, v, residual = layer.qkv(self.embed(tokens[:, j : j + length]).to(hidden.dtype), previous, cos, sin)
            drafted.append((k, v))
            states.append(layer.finish(residual, self._chain_attention(q, k0, v0, drafted, causal)))
        return [self.norm(s) if self.config.norm_output else s for s in states]

    def _chain_attention(self, q, k0, v0, drafted, causal) -> torch.Tensor:
        """Attention of a training-time-test step: step 0's keys at anchors <= p, plus each earlier drafted step's
        key at p itself (one score per step, no L x L block)."""
        attn = self.layers[0].self_attn
        groups = attn.heads // attn.kv_heads
        scale = attn.head_dim ** -0.5
        committed = (q @ k0.repeat_interleave(groups, 1).transpose(-1, -2)) * scale  # [B, heads, L, L]
        committed = committed.masked_fill(~causal, float("-inf"))
        own = [(q * k.repeat_interleave(groups, 1)).sum(-1, keepdim=True) * scale for k, _ in drafted]
        weights = torch.cat([committed, *own], dim=-1).softmax(-1)  # [B, heads, L, L + j]
        length = q.shape[2]
        out = weights[..., :length] @ v0.repeat_interleave(groups, 1)
        for i, (_, v) in enumerate(drafted):
            out = out + weights[..., length + i : length + i + 1] * v.repeat_interleave(groups, 1)
        return attn.o_proj(out.transpose(1, 2).flatten(2))

    # ---- saving and loading: speculators' EAGLE-3 format -------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike, dtype: torch.dtype | None = None,
                        verifier_name_or_path: str | None = None) -> Path:
        """Writes a speculators EAGLE-3 folder: `config.json` and `model.safetensors` (the drafter's own weights;
        `dtype`, e.g. torch.bfloat16, stores floating weights smaller), and hf_specdec's notes in
        `hf_specdec_drafter.json`. `verifier_name_or_path`: what speculators / vLLM read the target from (default:
        the one it was loaded with)."""
        from safetensors.torch import save_file

        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        verifier = verifier_name_or_path or self.verifier_name_or_path
        config = speculators_config(self.config, verifier, dtype or self.fc.weight.dtype)
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (directory / SIDE_FILE).write_text(json.dumps({"base_model": self.config.base_model}, indent=2) + "\n")
        tensors = {name: (t.to(dtype) if dtype is not None and t.is_floating_point() else t).detach().cpu().contiguous()
                   for name, t in self.state_dict().items()}
        save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
        return directory

    @classmethod
    @keeps_rng
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, **hub_kwargs: Any) -> EagleDrafter:
        """Loads an EAGLE-3 folder (saved here or by speculators) from a local directory first, else from a Hub
        repo; the weights come back in float32."""
        config_path, weights_path = local_or_hub_files(path_or_repo_id, (CONFIG_FILE, WEIGHTS_FILE), **hub_kwargs)
        data, weights, side = read_drafter_folder(path_or_repo_id, config_path, weights_path)
        drafter = cls(EagleDrafterConfig(**config_from_speculators(data, side, path_or_repo_id)))
        verifier = (data.get("speculators_config") or {}).get("verifier") or {}
        drafter.verifier_name_or_path = verifier.get("name_or_path")
        if "embed_tokens.weight" in weights:
            drafter.embed_tokens = nn.Embedding.from_pretrained(weights["embed_tokens.weight"], freeze=True)
        missing, unexpected = drafter.load_state_dict(weights, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path_or_repo_id}: the weights do not fit an EAGLE-3 drafter of this config (missing "
                             f"{sorted(missing)}, unexpected {sorted(unexpected)}).")
        return drafter.eval()

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, token: str | None = None,
                    commit_message: str = "Upload EAGLE-3 drafter") -> str:
        """Creates `repo_id` if needed and uploads the config and weights; returns the commit URL."""
        return push_folder_to_hub(self.save_pretrained, repo_id, private=private, token=token,
                                  commit_message=commit_message)
