"""Models for the command line: the packaged default target, any local model folder, or a tiny random model.

`tiny-random` (a hidden value of `--model` / `--draft`, also chosen by `HF_SPECDEC_TINY_RANDOM=1`) builds a 2-layer
random Llama with a character-level tokenizer in memory, so the CLI can be tested without any real weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .hub.folders import find_committed
from .tiny_models import CHAR_EOS, CHAR_VOCAB, char_tokenizer, tiny_random_llama

TINY_RANDOM = "tiny-random"
TINY_RANDOM_ENV = "HF_SPECDEC_TINY_RANDOM"
DEFAULT_MEDUSA_DIR = Path("heads") / "medusa-smollm2-135m"  # trained heads committed with the repo
MEDUSA_HINT = ("Medusa heads are not available{why}. Train them with the Medusa recipe "
               "(recipes/train_medusa.py), then start the CLI with --medusa DIR.")
DEFAULT_EAGLE_DIR = Path("heads") / "eagle-smollm2-135m"  # trained EAGLE drafter committed with the repo
EAGLE_HINT = ("An EAGLE drafter is not available{why}. Train one with recipes/train_eagle.py, then start the CLI "
              "with --eagle DIR.")


@dataclass
class ModelBundle:
    """Everything a chat session generates with."""

    target: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    draft: PreTrainedModel | None = None
    medusa_dir: Path | None = None
    chat_template: bool = True  # wrap user text in the tokenizer's chat template when it has one
    target_name: str = "SmolLM2-135M-Instruct"
    draft_name: str | None = None
    eagle_dir: Path | None = None

    def encode(self, text: str) -> torch.LongTensor:
        """The prompt ids `[1, n]` for one user message, on the target's device."""
        tokenizer = self.tokenizer
        if self.chat_template and getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                 add_generation_prompt=True)
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
        else:
            ids = tokenizer(text, return_tensors="pt").input_ids
        if ids.shape[1] == 0:
            ids = torch.tensor([[tokenizer.bos_token_id or tokenizer.eos_token_id or 0]])
        return ids.to(self.target.device)


def pick_device(name: str) -> torch.device:
    """`auto` -> cuda when available, else cpu."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but CUDA is not available; use --device cpu.")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` -> float32 on CPU (bf16 is slower there), bfloat16 on GPU."""
    if name == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_causal_lm(name: str, device: torch.device, dtype: torch.dtype, *, draft: bool = False) -> PreTrainedModel:
    if name == TINY_RANDOM:
        model = tiny_random_llama(CHAR_VOCAB, eos_token_id=CHAR_EOS, pad_token_id=CHAR_EOS, bos_token_id=CHAR_EOS,
                                  layers=1 if draft else 2, seed=1 if draft else 0, max_positions=1024)
    else:
        path = Path(name)
        if not path.is_dir():
            raise ValueError(f"{name!r} is not a model folder. Pass a local directory saved with save_pretrained "
                             "(nothing is downloaded from the Hub).")
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model.to(device=device, dtype=dtype).eval()


def load_draft_for(name: str, target: PreTrainedModel, device: torch.device, dtype: torch.dtype) -> PreTrainedModel:
    """`--draft`: a folder made by recipes/distill_draft.py (shares the target's embedding and head), else any
    causal-LM folder (or the tiny random draft)."""
    from .drafters.distilled_draft import is_draft_folder, load_draft

    if name != TINY_RANDOM and is_draft_folder(name):
        return load_draft(name, target)
    return load_causal_lm(name, device, dtype, draft=True)


def load_bundle(model: str | None, draft: str | None, medusa: str | None, device: str = "auto", dtype: str = "auto",
                cpu_fast_path: bool = True, chat_template: bool = True, eagle: str | None = None) -> ModelBundle:
    """Loads the target (default: the packaged SmolLM2-135M-Instruct), its tokenizer and the optional draft."""
    if model is None and os.environ.get(TINY_RANDOM_ENV) == "1":
        model = TINY_RANDOM
    torch_device = pick_device(device)
    torch_dtype = pick_dtype(dtype, torch_device)
    if model is None:
        from .models import load_smollm2, load_smollm2_tokenizer

        target, tokenizer, target_name = load_smollm2(dtype=torch_dtype).to(torch_device), load_smollm2_tokenizer(), \
            "SmolLM2-135M-Instruct"
    else:
        target = load_causal_lm(model, torch_device, torch_dtype)
        tokenizer = char_tokenizer() if model == TINY_RANDOM else AutoTokenizer.from_pretrained(model)
        target_name = model
    draft_model = None if draft is None else load_draft_for(draft, target, torch_device, torch_dtype)
    if cpu_fast_path and torch_device.type == "cpu":
        from .kernels.cpu_speedups import optimize_for_cpu

        for m in (target, draft_model):
            if m is not None:
                optimize_for_cpu(m)
    tiny = model == TINY_RANDOM  # the committed heads and drafter fit the real target only
    return ModelBundle(target, tokenizer, draft_model, resolve_folder_option("medusa", medusa, DEFAULT_MEDUSA_DIR, tiny),
                       chat_template, target_name, draft, resolve_folder_option("eagle", eagle, DEFAULT_EAGLE_DIR, tiny))


def resolve_folder_option(option: str, value: str | None, committed: Path, tiny: bool = False) -> Path | None:
    """`--medusa DIR` / `--eagle DIR`, else the committed folder (under the working directory or the source tree)
    if it exists and the target is not the tiny random one."""
    if value is not None:
        path = Path(value)
        if not path.is_dir():
            raise ValueError(f"--{option} {value!r} is not a folder; pass the folder it was saved to.")
        return path
    return None if tiny else find_committed(committed)

