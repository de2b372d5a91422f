"""Small drafts cut from their target: a few of its decoder layers, its own embedding and LM head.

A draft built here is a plain Hugging Face causal LM of the target's architecture (so Transformers' own
`assistant_model=` can use it too) whose input embedding and LM head *are* the target's modules, shared at load
time and never saved: the folder holds only the draft's layers and final norm (and the fingerprint of the target
it was made for), a few MB instead of the ~110 MB a full copy of SmolLM2's embedding would take.

A draft may also carry a *draft vocabulary* (`draft.hf_specdec_draft_vocab`, the token ids it was trained to
predict): `DraftModelStrategy` then multiplies by those rows of the LM head only, which on a CPU is most of a small
draft's cost. Tokens outside it get probability 0 under the draft, which keeps sampling lossless (the verifier's
residual max(0, p - q) covers them) and greedy exact (the target decides).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, PreTrainedModel

from ..hub.folders import local_folder, read_json
from ..rng import keeps_rng
from ..hub.publishing import check_target_fits, target_fingerprint
from .quantized_draft import head_rows, quantize_draft

DRAFT_FILE = "hf_specdec_draft.json"
WEIGHTS_FILE = "draft_layers.safetensors"
VOCAB_KEY = "hf_specdec.draft_vocab"
VOCAB_ATTRIBUTE = "hf_specdec_draft_vocab"
EMBEDDING_TOLERANCE = 1e-3  # relative difference of embedding norms still taken for the same target


def build_draft(target: PreTrainedModel, layers: Sequence[int]) -> PreTrainedModel:
    """A draft of `target`'s architecture with copies of the decoder layers `layers` (in that order), a copy of
    its final norm, and the target's own embedding and LM head (shared modules, not copies)."""
    decoder = target.get_decoder()
    num_layers = len(decoder.layers)
    if not layers or any(not 0 <= i < num_layers for i in layers):
        raise ValueError(f"layers must be a non-empty list of the target's layer indices (0..{num_layers - 1}), "
                         f"got {list(layers)}.")
    config = copy.deepcopy(target.config)
    config.num_hidden_layers = len(layers)
    if getattr(config, "layer_types", None) is not None:  # e.g. sliding/full attention per layer
        config.layer_types = [config.layer_types[i] for i in layers]
    draft = AutoModelForCausalLM.from_config(config, dtype=target.dtype)
    for position, source in enumerate(layers):
        draft.get_decoder().layers[position].load_state_dict(decoder.layers[source].state_dict())
    draft.get_decoder().norm.load_state_dict(decoder.norm.state_dict())
    attach_shared_weights(draft, target)
    return draft.to(target.device).eval()


def attach_shared_weights(draft: PreTrainedModel, target: PreTrainedModel) -> None:
    """Makes `draft` use `target`'s input embedding and LM head modules."""
    draft.set_input_embeddings(target.get_input_embeddings())
    draft.set_output_embeddings(target.get_output_embeddings())


def owned_parameters(draft: PreTrainedModel, target: PreTrainedModel) -> dict[str, torch.nn.Parameter]:
    """The draft's own parameters by name: all but the embedding and LM head it shares with `target`."""
    shared = {id(p) for module in (target.get_input_embeddings(), target.get_output_embeddings())
              for p in module.parameters()}
    return {name: p for name, p in draft.named_parameters() if id(p) not in shared}


def draft_fingerprint(target: PreTrainedModel, name: str | None = None) -> dict:
    """The target's fingerprint plus its embedding's norm: the shared weights must be that target's own."""
    info = target_fingerprint(target, name)
    info["embedding_norm"] = float(target.get_input_embeddings().weight.detach().float().norm())
    return info


def check_draft_fits(made_for: dict, target: PreTrainedModel) -> None:
    check_target_fits(made_for, target)
    saved, found = made_for.get("embedding_norm"), draft_fingerprint(target)["embedding_norm"]
    if saved is not None and abs(saved - found) > EMBEDDING_TOLERANCE * abs(saved):
        raise ValueError(f"This draft was made for {made_for.get('name', 'another target')!r}, whose embedding "
                         f"differs from this target's (norm {saved:.2f} vs {found:.2f}): it shares the target's "
                         "embedding and LM head, so it only works with the model it was distilled from.")


def save_draft(draft: PreTrainedModel, directory: str | Path, target: PreTrainedModel, *, source_layers: Sequence[int],
               draft_vocab: torch.Tensor | None = None, dtype: torch.dtype = torch.bfloat16,
               target_name: str | None = None, quantize: str | None = None) -> Path:
    """Writes the draft's own weights (layers + final norm, in `dtype`), its `config.json`, the draft vocabulary
    and the target's fingerprint to `directory`. `quantize` (a `hf_specdec.quantize_draft` scheme, e.g. "int8"):
    the weights are still saved in `dtype`, and `load_draft` quantizes them on load (a quantized module is not
    saved as such)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    owned = {name: p.detach().to(dtype).contiguous() for name, p in owned_parameters(draft, target).items()}
    if draft_vocab is not None:
        owned[VOCAB_KEY] = draft_vocab.to(torch.int64).cpu().contiguous()
    save_file(owned, str(directory / WEIGHTS_FILE))
    draft.config.save_pretrained(directory)
    info = {"source_layers": list(source_layers), "weights_dtype": str(dtype).removeprefix("torch."),
            "draft_vocab_size": None if draft_vocab is None else int(draft_vocab.numel()),
            "target": draft_fingerprint(target, target_name), **({"quantize": quantize} if quantize else {})}
    (directory / DRAFT_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return directory


def is_draft_folder(path: str | Path) -> bool:
    return (Path(path) / DRAFT_FILE).is_file()


@keeps_rng
def load_draft(directory: str | Path, target: PreTrainedModel, quantize: str | None = None) -> PreTrainedModel:
    """The draft saved in `directory`, in `target`'s dtype and device, sharing `target`'s embedding and LM head;
    quantized with the folder's `quantize` scheme if it names one, or with `quantize` if given ("none": not at all).

    Refuses a target other than the one the draft was made for (architecture sizes and embedding)."""
    directory = local_folder(directory)
    if directory is None or not is_draft_folder(directory):
        raise ValueError(f"{directory} holds no draft saved by hf_specdec ({DRAFT_FILE} missing). A complete model "
                         "folder loads with AutoModelForCausalLM.from_pretrained instead.")
    info = read_json(directory / DRAFT_FILE)
    check_draft_fits(info["target"], target)
    config = type(target.config).from_pretrained(directory)
    draft = AutoModelForCausalLM.from_config(config, dtype=target.dtype)
    attach_shared_weights(draft, target)
    weights = load_file(str(directory / WEIGHTS_FILE))
    vocab = weights.pop(VOCAB_KEY, None)
    missing = set(owned_parameters(draft, target)) - set(weights)
    if missing:
        raise ValueError(f"{directory / WEIGHTS_FILE} lacks {sorted(missing)[:3]}...: the folder is incomplete.")
    draft.load_state_dict(weights, strict=False)
    draft.config._name_or_path = str(directory)
    if vocab is not None:
        set_draft_vocab(draft, vocab)
    return quantize_draft(draft.to(target.device).eval(), quantize or info.get("quantize"))


def set_draft_vocab(draft: PreTrainedModel, token_ids: torch.Tensor) -> None:
    """Restricts what `DraftModelStrategy` lets `draft` propose to `token_ids` (kept sorted and unique)."""
    ids = torch.unique(token_ids.to(torch.long).flatten())
    rows = head_rows(draft.get_output_embeddings())
    if ids.numel() == 0 or int(ids[0]) < 0 or int(ids[-1]) >= rows:
        raise ValueError(f"A draft vocabulary must be non-empty token ids in [0, {rows}), got {ids.numel()} ids "
                         f"in [{int(ids.min()) if ids.numel() else 0}, {int(ids.max()) if ids.numel() else 0}].")
    setattr(draft, VOCAB_ATTRIBUTE, ids.to(draft.device))


def draft_vocab(draft: PreTrainedModel) -> torch.Tensor | None:
    """The draft vocabulary a loaded draft carries (token ids, ascending), or None."""
    return getattr(draft, VOCAB_ATTRIBUTE, None)


def write_draft_card(directory: str | Path, base_model: str | None, metrics: dict | None = None) -> None:
    """README.md for a draft folder: Hub metadata, how to load it with its target, the measured numbers."""
    from huggingface_hub import ModelCard, ModelCardData

    directory = Path(directory)
    info = read_json(directory / DRAFT_FILE)
    data = ModelCardData(library_name="transformers", base_model=base_model,
                         tags=["speculative-decoding", "draft-model", "hf_specdec"])
    lines = [f"# A distilled draft for {base_model or 'its target'}", "",
             f"{len(info['source_layers'])} decoder layers (initialised from target layers {info['source_layers']}) "
             f"trained by `recipes/distill_draft.py` on the target's own text; weights in {info['weights_dtype']}. "
             "It shares the target's input embedding and LM head, which are not stored here: load it with its "
             "target.", "", "```python", "import hf_specdec", "from hf_specdec.distilled_draft import load_draft", "",
             f'draft = load_draft("{directory.name}", target)          # a plain causal LM of the target\'s class',
             "out = target.generate(**inputs, assistant_model=hf_specdec.DraftModelStrategy(draft), max_new_tokens=128)",
             "out = target.generate(**inputs, assistant_model=draft)   # Transformers' own assisted generation",
             "```", ""]
    if info.get("draft_vocab_size"):
        lines += [f"Draft vocabulary: {info['draft_vocab_size']} tokens (`DraftModelStrategy` scores only those rows "
                  "of the LM head; still lossless).", ""]
    if metrics:
        lines += ["## Measured", "", "| what | value |", "|---|---|"]
        lines += [f"| {key} | {value} |" for key, value in metrics.items()] + [""]
    ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)).save(directory / "README.md")
