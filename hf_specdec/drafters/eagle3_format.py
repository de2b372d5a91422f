"""The EAGLE-3 checkpoint format of `speculators` (what vLLM and SGLang load), read and written without importing it.

`config.json` holds `speculators_model_type: "eagle3"`, the decoder layer's Transformers config
(`transformer_layer_config`), `draft_vocab_size`, `eagle_aux_hidden_state_layer_ids`, the norm flags and
`speculators_config` (algorithm, proposal methods, verifier). hf_specdec's own notes go into a side file so that
speculators reads the folder as it is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..hub.folders import read_json

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
SIDE_FILE = "hf_specdec_drafter.json"
SPECULATORS_VERSION = "0.9.0"  # the format version written (speculators reads newer configs' fields by default)
NORM_FLAGS = ("norm_before_residual", "norm_before_fc", "fc_norm", "norm_output")


def speculators_config(config, verifier_name_or_path: str | None, dtype: torch.dtype) -> dict[str, Any]:
    """`config.json` of a speculators EAGLE-3 checkpoint for an `EagleDrafterConfig`."""
    dtype_name = str(dtype).removeprefix("torch.")
    layer = {"model_type": config.layer_type, "architectures": [f"{config.layer_type.capitalize()}ForCausalLM"],
             "hidden_size": config.hidden_size, "intermediate_size": config.intermediate_size,
             "num_attention_heads": config.num_attention_heads, "num_key_value_heads": config.num_key_value_heads,
             "head_dim": config.head_dim, "num_hidden_layers": 1, "vocab_size": config.vocab_size,
             "rms_norm_eps": config.rms_norm_eps, "rope_parameters": dict(config.rope_parameters),
             "max_position_embeddings": config.max_position_embeddings, "attention_bias": config.attention_bias,
             "mlp_bias": False, "hidden_act": "silu", "tie_word_embeddings": False, "dtype": dtype_name}
    return {
        "architectures": ["Eagle3DraftModel"], "speculators_model_type": "eagle3",
        "speculators_version": SPECULATORS_VERSION, "dtype": dtype_name, "tie_word_embeddings": False,
        "transformer_layer_config": layer, "draft_vocab_size": config.rows, "target_hidden_size": None,
        "eagle_aux_hidden_state_layer_ids": list(config.aux_layer_ids), "embed_requires_grad": False,
        **{flag: getattr(config, flag) for flag in NORM_FLAGS},
        "speculators_config": {
            "algorithm": "eagle3", "default_proposal_method": "greedy",
            "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": 3, "accept_tolerance": 0.0,
                                  "verifier_accept_k": 1}],
            "verifier": {"name_or_path": verifier_name_or_path, "architectures": ["LlamaForCausalLM"]},
        },
    }


def config_from_speculators(data: dict[str, Any], side: dict[str, Any], name) -> dict[str, Any]:
    """`EagleDrafterConfig`'s arguments from a speculators EAGLE-3 `config.json` (and our side file's notes)."""
    layer = data.get("transformer_layer_config") or {}
    if layer.get("num_hidden_layers", 1) != 1:
        raise ValueError(f"{name}: EAGLE-3 drafters with {layer['num_hidden_layers']} decoder layers are not supported "
                         "yet (one layer is; most published EAGLE-3 heads have one).")
    if data.get("target_hidden_size") not in (None, layer.get("hidden_size")):
        raise ValueError(f"{name}: drafters whose hidden size differs from the target's are not supported.")
    rope = dict(layer.get("rope_parameters") or layer.get("rope_scaling") or {})
    rope.setdefault("rope_theta", float(layer.get("rope_theta", 10000.0)))
    rope.setdefault("rope_type", rope.pop("type", "default"))
    aux = data.get("eagle_aux_hidden_state_layer_ids")
    if aux is None:
        raise ValueError(f"{name}: config.json names no eagle_aux_hidden_state_layer_ids; add the target layer ids "
                         "the drafter was trained on (e.g. [2, n // 2, n - 3] for an n-layer target).")
    try:
        return dict(
            hidden_size=layer["hidden_size"], vocab_size=layer["vocab_size"],
            intermediate_size=layer["intermediate_size"], num_attention_heads=layer["num_attention_heads"],
            num_key_value_heads=layer.get("num_key_value_heads") or layer["num_attention_heads"],
            head_dim=layer.get("head_dim"), aux_layer_ids=list(aux), draft_vocab_size=data.get("draft_vocab_size"),
            rms_norm_eps=float(layer.get("rms_norm_eps", 1e-6)), rope_parameters=rope,
            max_position_embeddings=layer.get("max_position_embeddings", 8192),
            layer_type=layer.get("model_type", "llama"), attention_bias=bool(layer.get("attention_bias", False)),
            base_model=side.get("base_model"), **{flag: bool(data.get(flag, False)) for flag in NORM_FLAGS})
    except KeyError as missing:
        raise ValueError(f"{name}: transformer_layer_config in config.json lacks {missing}.") from None


def read_drafter_folder(name, config_path: Path, weights_path: Path) -> tuple[dict, dict, dict]:
    """(config.json, float32 weights, our side file's notes or {}) of an EAGLE-3 folder, with errors that say what
    the folder holds instead."""
    from safetensors.torch import load_file

    data = read_json(config_path)
    if data.get("drafter_type") == "eagle":
        raise ValueError(f"{name} holds an EAGLE drafter in hf_specdec's pre-EAGLE-3 layout (saved before hf_specdec wrote speculators' EAGLE-3 format), which "
                         "this version no longer runs; retrain it with recipes/train_eagle.py or use the committed "
                         "heads/eagle-smollm2-135m.")
    if data.get("speculators_model_type") != "eagle3":
        kind = data.get("speculators_model_type") or data.get("heads_type") or data.get("model_type") or "unknown"
        raise ValueError(f"{name} does not hold an EAGLE-3 drafter (config.json: {kind!r}, expected "
                         "speculators_model_type 'eagle3'); Medusa heads load with MedusaHeads.from_pretrained.")
    weights = {key: t.float() if t.is_floating_point() else t for key, t in load_file(str(weights_path)).items()}
    side_path = Path(config_path).parent / SIDE_FILE
    side = read_json(side_path) if side_path.exists() else {}
    return data, weights, side
