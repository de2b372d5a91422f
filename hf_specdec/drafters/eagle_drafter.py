"""EAGLE drafter (Li et al. 2024, EAGLE-1/2/3): one decoder layer that runs autoregressively over the target's
features, with its own KV cache, and drafts through the target's own LM head.

Position p of the drafter reads the pair (f_p, x_{p+1}): the target's last hidden state at p (the one that produced
x_{p+1}) and the embedding of x_{p+1}. Its output o_p stands in for f_{p+1}, so the LM head turns it into a guess of
x_{p+2}, and (o_p, guess) is the input of position p + 1: the drafter drafts many tokens deep on its own, each step
reading everything before it through attention, where Medusa heads guess every depth from one hidden state.
Positions whose pair comes from the target ("committed") stay in the cache; drafted positions are dropped after
each verify, and the accepted ones come back as committed pairs with the target's real features.

The input is EAGLE-3's fusion of the embedding and the feature (each RMS-normalised, then one linear), over the
target's last hidden state only: that is the feature the verify forward already returns, so no target forward is
added. Training unrolls the drafter on its own outputs (EAGLE-3's training-time test, `unrolled_states`) so that
deep drafts stay accurate.

Only the drafter's own weights are saved (`config.json` + `model.safetensors`), like a PEFT adapter: the target's
input embeddings and LM head are attached at run time (`attach_target`, done by `EagleStrategy`).
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

from ..config import local_or_hub_files, push_folder_to_hub, reject_unknown_keys
from ..hub.folders import read_json
from ..rng import keeps_rng
from .medusa_heads import output_rows

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
DRAFTER_TYPE = "eagle"  # written into config.json, so a heads folder is never mistaken for a drafter


@dataclass
class EagleDrafterConfig:
    """Shape of an EAGLE drafter; saved as `config.json` next to the weights. `for_target` copies the target's."""

    hidden_size: int = field(metadata={"help": "Target hidden size (e.g. 576 for SmolLM2-135M)."})
    vocab_size: int = field(metadata={"help": "Target vocabulary size (e.g. 49152 for SmolLM2-135M)."})
    intermediate_size: int = field(metadata={"help": "The layer's MLP width."})
    num_attention_heads: int = field(metadata={"help": "Query heads of the layer's attention."})
    num_key_value_heads: int = field(metadata={"help": "Key/value heads (grouped-query attention)."})
    rope_theta: float = field(default=10000.0, metadata={"help": "Rotary embedding base."})
    rms_norm_eps: float = field(default=1e-5, metadata={"help": "RMSNorm epsilon."})
    base_model: str | None = field(default=None, metadata={"help": "Name of the target it was trained on."})
    draft_vocab_size: int | None = field(
        default=None,
        metadata={"help": "Draft only from this many token ids (saved as `draft_token_ids`, set by "
                          "`restrict_draft_vocab`). Fewer LM-head rows make drafting cheaper and cannot change "
                          "outputs: the target verifies every draft. None: the full vocabulary."},
    )
    drafter_type: str = field(default=DRAFTER_TYPE, metadata={"help": "Always 'eagle'."})

    def __post_init__(self) -> None:
        for name in ("hidden_size", "vocab_size", "intermediate_size", "num_attention_heads", "num_key_value_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"EagleDrafterConfig.{name} must be an integer >= 1, got {value!r}.")
        if self.hidden_size % self.num_attention_heads or self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("EagleDrafterConfig: hidden_size must be a multiple of num_attention_heads, and "
                             "num_attention_heads a multiple of num_key_value_heads.")
        if self.draft_vocab_size is not None and not (isinstance(self.draft_vocab_size, int)
                                                      and 1 <= self.draft_vocab_size <= self.vocab_size):
            raise ValueError(f"EagleDrafterConfig.draft_vocab_size must be None or an integer in [1, vocab_size="
                             f"{self.vocab_size}], got {self.draft_vocab_size!r}.")
        if self.drafter_type != DRAFTER_TYPE:
            raise ValueError(f"This config is for a {self.drafter_type!r} drafter, not an EAGLE drafter.")

    @classmethod
    def for_target(cls, target_config, **overrides: Any) -> EagleDrafterConfig:
        """A drafter shaped like one layer of `target_config` (a Transformers decoder config)."""
        heads = target_config.num_attention_heads
        rope = getattr(target_config, "rope_parameters", None) or {}
        values = dict(hidden_size=target_config.hidden_size, vocab_size=target_config.vocab_size,
                      intermediate_size=getattr(target_config, "intermediate_size", 4 * target_config.hidden_size),
                      num_attention_heads=heads,
                      num_key_value_heads=getattr(target_config, "num_key_value_heads", None) or heads,
                      rope_theta=float(rope.get("rope_theta", getattr(target_config, "rope_theta", 10000.0))),
                      rms_norm_eps=float(getattr(target_config, "rms_norm_eps", 1e-5)))
        return cls(**{**values, **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EagleDrafterConfig:
        reject_unknown_keys(cls, data, cls.__name__)
        return cls(**data)


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


class DrafterLayer(nn.Module):
    """One pre-norm decoder layer (attention with grouped-query heads and rotary positions, SwiGLU MLP)."""

    def __init__(self, config: EagleDrafterConfig) -> None:
        super().__init__()
        h, heads, kv = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
        self.heads, self.kv_heads, self.head_dim = heads, kv, h // heads
        self.q_proj = nn.Linear(h, h, bias=False)
        self.k_proj = nn.Linear(h, kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(h, kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(h, h, bias=False)
        self.gate_proj = nn.Linear(h, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(h, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, h, bias=False)
        self.attention_norm = RMSNorm(h, config.rms_norm_eps)
        self.mlp_norm = RMSNorm(h, config.rms_norm_eps)
        inv_freq = 1.0 / config.rope_theta ** (torch.arange(0, self.head_dim, 2).float() / self.head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def qkv(self, x: torch.Tensor, positions: torch.LongTensor) -> tuple[torch.Tensor, ...]:
        """Queries `[B, heads, n, d]`, keys and values `[B, kv, n, d]` of `x` `[B, n, H]` at `positions` `[n]`."""
        b, n, _ = x.shape
        normed = self.attention_norm(x)
        angles = positions.to(self.inv_freq.dtype)[:, None] * self.inv_freq  # [n, d / 2]
        angles = torch.cat([angles, angles], dim=-1)
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        q = self.q_proj(normed).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(normed).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(normed).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        return rotate(q, cos, sin), rotate(k, cos, sin), v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Attention output `[B, n, H]`; mask: boolean `[n, T]` or `[B, 1, n, T]` (True = attend), None = all."""
        groups = self.heads // self.kv_heads
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, heads, n, d]
        return self.o_proj(out.transpose(1, 2).flatten(2))

    def finish(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """Residual attention output, then the residual MLP."""
        x = x + attended
        normed = self.mlp_norm(x)
        return x + self.down_proj(F.silu(self.gate_proj(normed)) * self.up_proj(normed))


class EagleDrafter(nn.Module):
    """`EagleDrafter(config)`; `attach_target(model)` before use. `step` drafts one position per input pair over a
    `DrafterCache`; `unrolled_states` is the training-time forward."""

    def __init__(self, config: EagleDrafterConfig) -> None:
        super().__init__()
        self.config = config
        h = config.hidden_size
        self.embed_norm = RMSNorm(h, config.rms_norm_eps)
        self.feature_norm = RMSNorm(h, config.rms_norm_eps)
        self.fuse = nn.Linear(2 * h, h, bias=False)  # [embedding; feature] -> the layer's input
        self.layer = DrafterLayer(config)
        self.output_norm = RMSNorm(h, config.rms_norm_eps)  # o_p lives where the target's (normed) features do
        size = config.draft_vocab_size
        self.register_buffer("draft_token_ids", None if size is None else torch.zeros(size, dtype=torch.long))
        self._target: list[nn.Module] = []  # [input embeddings, LM head], held in a list so never saved
        self._draft_head: tuple[tuple, nn.Module] | None = None

    # ---- what it borrows from the target ----------------------------------------------------------------------
    def attach_target(self, target: nn.Module) -> EagleDrafter:
        """Borrows the target's input embeddings and LM head (never saved)."""
        embeddings, lm_head = target.get_input_embeddings(), target.get_output_embeddings()
        expected = (self.config.vocab_size, self.config.hidden_size)
        for what, module in (("input embedding table", embeddings), ("LM head", lm_head)):
            if module is None or tuple(module.weight.shape) != expected:
                shape = None if module is None else list(module.weight.shape)
                raise ValueError(f"The target's {what} has shape {shape} but this EAGLE drafter expects "
                                 f"[vocab_size={expected[0]}, hidden_size={expected[1]}]; use a drafter trained for "
                                 "this target (recipes/train_eagle.py).")
        self._target = [embeddings, lm_head]
        return self

    def _borrowed(self) -> tuple[nn.Module, nn.Module]:
        if not self._target:
            raise ValueError("No target attached: call drafter.attach_target(model) (EagleStrategy does this).")
        return self._target[0], self._target[1]

    def restrict_draft_vocab(self, token_ids: torch.Tensor) -> EagleDrafter:
        """Draft only from `token_ids` from now on (saved with the weights)."""
        ids = torch.unique(torch.as_tensor(token_ids, dtype=torch.long))
        if ids.numel() == 0 or int(ids[0]) < 0 or int(ids[-1]) >= self.config.vocab_size:
            raise ValueError(f"Draft token ids must be a non-empty set in [0, {self.config.vocab_size}).")
        self.config = dataclasses.replace(self.config, draft_vocab_size=ids.numel())
        self.draft_token_ids = ids
        self._draft_head = None
        return self

    # ---- running ----------------------------------------------------------------------------------------------
    def fused_input(self, features: torch.Tensor, tokens: torch.LongTensor) -> torch.Tensor:
        """The layer's input `[..., H]` from features `[..., H]` (f_p or o_{p-1}) and tokens `[...]` (x_{p+1})."""
        embeddings = self._borrowed()[0](tokens).to(features.dtype)
        return self.fuse(torch.cat([self.embed_norm(embeddings), self.feature_norm(features)], dim=-1))

    def step(self, features: torch.Tensor, tokens: torch.LongTensor, positions: torch.LongTensor,
             cache: DrafterCache, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Runs n new positions on top of `cache` (their keys/values are appended); returns o `[n, H]`.

        features `[n, H]`, tokens `[n]`, positions `[n]`; mask: boolean `[n, len(cache) + n]` (True = attend),
        None = causal (every new position sees the cache and the new positions before it)."""
        x = self.fused_input(features, tokens)[None]  # [1, n, H]
        q, k, v = self.layer.qkv(x, positions)
        past = len(cache)
        keys, values = cache.append(k, v)
        if mask is None and tokens.numel() > 1:
            mask = torch.ones(tokens.numel(), past + tokens.numel(), dtype=torch.bool, device=x.device)
            mask[:, past:] = torch.ones(tokens.numel(), tokens.numel(), dtype=torch.bool, device=x.device).tril()
        return self.output_norm(self.layer.finish(x, self.layer.attend(q, keys, values, mask)))[0]

    def draft_logits(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Float32 logits `[n, V']` of drafter outputs `[n, H]` over the draft vocabulary, and the token id of each
        column (None: the full vocabulary)."""
        lm_head = self._borrowed()[1]
        if self.draft_token_ids is None:
            return lm_head(states.to(lm_head.weight.dtype)).float(), None
        key = (lm_head.weight.data_ptr(), lm_head.weight._version)
        if self._draft_head is None or self._draft_head[0] != key:  # cut once; again only if the head changed
            self._draft_head = (key, output_rows(lm_head, self.draft_token_ids))
        return self._draft_head[1](states.to(lm_head.weight.dtype)).float(), self.draft_token_ids

    # ---- training: EAGLE-3's training-time test ----------------------------------------------------------------
    def unrolled_states(self, features: torch.Tensor, tokens: torch.LongTensor, steps: int) -> list[torch.Tensor]:
        """The drafter's outputs after 1..`steps` drafting steps, as at run time, for every position at once.

        features `[B, L, H]` (f_p), tokens `[B, L]` (x_{p+1}); right padding needs no mask (causal attention never
        reads later slots). Step 0 reads the target's features: its o_p is a depth-1 draft. Step j reads o_{p-1}
        of step j - 1 in place of f_p, and position p attends to the committed keys of step 0 at positions
        <= p - j plus its own chain's drafted keys (step i at p - j + i): exactly the slots a depth-(j + 1) draft
        sees at run time. Returns `steps` tensors `[B, L, H]`; step j is valid at positions p >= j.
        """
        b, length, _ = features.shape
        positions = torch.arange(length, device=features.device)
        x = self.fused_input(features, tokens)
        q, k0, v0 = self.layer.qkv(x, positions)
        outputs = [self.output_norm(self.layer.finish(x, self.layer.attend(q, k0, v0, None if length == 1 else
                                                                          _causal(length, 0, features.device))))]
        drafted: list[tuple[torch.Tensor, torch.Tensor]] = []  # (keys, values) of steps 1..j, [B, kv, L, d]
        for j in range(1, steps):
            previous = F.pad(outputs[-1][:, :-1], (0, 0, 1, 0))  # o_{p-1} of the last step at p (zeros at p = 0)
            x = self.fused_input(previous, tokens)
            q, k, v = self.layer.qkv(x, positions)
            drafted.append((k, v))
            outputs.append(self.output_norm(self.layer.finish(x, self._unrolled_attention(q, k0, v0, drafted, j))))
        return outputs

    def _unrolled_attention(self, q, k0, v0, drafted, j: int) -> torch.Tensor:
        """Attention of step j: step-0 keys at positions <= p - j, and step i's key at p - j + i for i = 1..j."""
        layer = self.layer
        groups = layer.heads // layer.kv_heads
        scale = layer.head_dim ** -0.5
        length = q.shape[2]
        committed = (q @ k0.repeat_interleave(groups, 1).transpose(-1, -2)) * scale  # [B, heads, L, L]
        committed = committed.masked_fill(~_causal(length, j, q.device), float("-inf"))
        diagonal_scores, diagonal_values = [], []
        for i, (k, v) in enumerate(drafted, start=1):
            shift = j - i  # the key sits `shift` positions before the query
            k = F.pad(k.repeat_interleave(groups, 1), (0, 0, shift, 0))[:, :, :length]
            v = F.pad(v.repeat_interleave(groups, 1), (0, 0, shift, 0))[:, :, :length]
            score = (q * k).sum(-1, keepdim=True) * scale  # [B, heads, L, 1]
            valid = torch.arange(length, device=q.device)[:, None] >= shift
            diagonal_scores.append(score.masked_fill(~valid, float("-inf")))
            diagonal_values.append(v)
        weights = torch.cat([committed, *diagonal_scores], dim=-1).softmax(-1)  # [B, heads, L, L + j]
        out = weights[..., :length] @ v0.repeat_interleave(groups, 1)
        for i, v in enumerate(diagonal_values):
            out = out + weights[..., length + i : length + i + 1] * v
        return layer.o_proj(out.transpose(1, 2).flatten(2))

    # ---- saving and loading, like a PEFT adapter -------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
        """Writes `config.json` and `model.safetensors` (the drafter's own weights only; `dtype`, e.g.
        torch.bfloat16, stores floating weights smaller) into `save_directory`."""
        from safetensors.torch import save_file

        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_FILE).write_text(json.dumps(self.config.to_dict(), indent=2, sort_keys=True) + "\n")
        tensors = {name: (t.to(dtype) if dtype is not None and t.is_floating_point() else t).detach().cpu().contiguous()
                   for name, t in self.state_dict().items()}
        save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
        return directory

    @classmethod
    @keeps_rng
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, **hub_kwargs: Any) -> EagleDrafter:
        """Loads from a local directory first, else downloads `config.json` and the weights from a Hub repo; the
        weights come back in float32."""
        from safetensors.torch import load_file

        config_path, weights_path = local_or_hub_files(path_or_repo_id, (CONFIG_FILE, WEIGHTS_FILE), **hub_kwargs)
        data = read_json(config_path)
        if data.get("drafter_type") != DRAFTER_TYPE:
            raise ValueError(f"{path_or_repo_id} does not hold an EAGLE drafter (its config.json has no "
                             "drafter_type 'eagle'); Medusa heads load with MedusaHeads.from_pretrained.")
        drafter = cls(EagleDrafterConfig.from_dict(data))
        weights = {name: t.float() if t.is_floating_point() else t for name, t in load_file(str(weights_path)).items()}
        drafter.load_state_dict(weights)
        return drafter.eval()

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, token: str | None = None,
                    commit_message: str = "Upload EAGLE drafter") -> str:
        """Creates `repo_id` if needed and uploads the config and weights; returns the commit URL."""
        return push_folder_to_hub(self.save_pretrained, repo_id, private=private, token=token,
                                  commit_message=commit_message)


def _causal(length: int, shift: int, device) -> torch.Tensor:
    """Boolean `[L, L]`: query p sees key positions <= p - shift."""
    index = torch.arange(length, device=device)
    return index[None, :] <= index[:, None] - shift
