"""Models and prompts for an evaluation run, all offline.

`tiny-random-llama` is a randomly initialised Llama built in-process from a seed, with a byte-level tokenizer (ids
0..255 are bytes, 256 is EOS) and a minimal chat template. It lets tests run the whole pipeline in seconds with
no download; its outputs are meaningless but losslessness holds for any model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from ..data import Prompt, chat_text, load_humaneval, load_mtbench, load_prompts
from ..tiny_models import BYTE_EOS, BYTE_VOCAB, SIMPLE_CHAT_TEMPLATE, byte_tokenizer, tiny_random_llama
from .config import DatasetSpec, EvalConfig, ModelSpec

TINY_NAME = "tiny-random-llama"


def tiny_target(spec: ModelSpec) -> LlamaForCausalLM:
    """The `tiny-random-llama` model a spec describes, over `byte_tokenizer`'s ids."""
    return tiny_random_llama(BYTE_VOCAB, eos_token_id=BYTE_EOS, pad_token_id=BYTE_EOS, bos_token_id=BYTE_EOS,
                             layers=spec.layers, hidden=spec.hidden, seed=spec.seed, logit_scale=spec.logit_scale)


def load_model(spec: ModelSpec) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model and tokenizer a `ModelSpec` names, in eval mode on the CPU."""
    if spec.name == TINY_NAME:
        return tiny_target(spec), byte_tokenizer(SIMPLE_CHAT_TEMPLATE)
    if spec.name == "smollm2":
        from ..models import load_smollm2, load_smollm2_tokenizer

        return load_smollm2(), load_smollm2_tokenizer()
    path = Path(spec.name).expanduser()
    if not path.is_dir():
        raise ValueError(f"Unknown model {spec.name!r}: use 'smollm2', '{TINY_NAME}' or a local checkpoint "
                         "directory (nothing is downloaded from the Hub).")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True).eval()
    return model, AutoTokenizer.from_pretrained(path, local_files_only=True)


def load_draft_model(spec: ModelSpec, target: PreTrainedModel) -> PreTrainedModel:
    """The draft a `ModelSpec` names: `smollm2-draft` (the committed distilled draft of SmolLM2), a draft folder
    made by recipes/distill_draft.py (both share `target`'s embedding and LM head), or any model `load_model`
    loads."""
    from ..drafters.distilled_draft import is_draft_folder, load_draft

    if spec.name == "smollm2-draft":
        from ..models import load_smollm2_draft

        return load_smollm2_draft(target)
    if is_draft_folder(Path(spec.name).expanduser()):
        return load_draft(Path(spec.name).expanduser(), target)
    return load_model(spec)[0]


@dataclass
class EvalPrompt:
    """A prompt with its run-wide id `uid` ("<dataset>/<id>") and its position in the run (for the rotation)."""

    uid: str
    index: int
    prompt: Prompt

    @property
    def dataset(self) -> str:
        return self.prompt.dataset

    @property
    def category(self) -> str:
        return self.prompt.category


def _dataset_prompts(spec: DatasetSpec, tokenizer: PreTrainedTokenizerBase, limit: int | None) -> list[Prompt]:
    if spec.kind == "humaneval":
        prompts = load_humaneval(limit=limit, start=spec.start)
    elif spec.kind == "mtbench":
        prompts = load_mtbench(spec.categories, limit=limit, tokenizer=tokenizer if spec.chat_template else None)
    else:
        prompts = load_prompts(spec.path, text_field=spec.text_field, limit=limit)
        if spec.chat_template and getattr(tokenizer, "chat_template", None):
            prompts = [Prompt(p.id, p.dataset, p.category, chat_text(tokenizer, p.text)) for p in prompts]
    for prompt in prompts:
        prompt.dataset = spec.name
    return prompts


def load_eval_prompts(config: EvalConfig, tokenizer: PreTrainedTokenizerBase) -> list[EvalPrompt]:
    """Every prompt of the run, in recipe order; `config.limit` caps each dataset (the tighter limit wins)."""
    out: list[EvalPrompt] = []
    for spec in config.datasets:
        limits = [n for n in (spec.limit, config.limit) if n is not None]
        for prompt in _dataset_prompts(spec, tokenizer, min(limits) if limits else None):
            out.append(EvalPrompt(uid=f"{spec.name}/{prompt.id}", index=len(out), prompt=prompt))
    uids = [p.uid for p in out]
    if len(set(uids)) != len(uids):
        raise ValueError("Two prompts share an id; give the datasets distinct `name:`s.")
    return out
