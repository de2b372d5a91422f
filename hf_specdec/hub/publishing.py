"""One self-contained folder per strategy, laid out the way Transformers' `custom_generate` repositories are.

    my-strategy/
      hf_specdec_config.json        the strategy config (`StrategyConfig`)
      hf_specdec_target.json        which target it was made for (checked when it meets a target)
      config.json, model.safetensors   Medusa/Hydra heads, when the strategy has them
      draft/                        the draft model (or draft_model.json, a pointer to the draft's repo)
      custom_generate/generate.py   `generate(custom_generate="my-strategy", trust_remote_code=True)` runs it
      custom_generate/requirements.txt
      README.md                     model card with Hub metadata and the measured numbers when known

`custom_generate/generate.py` is a few lines that import hf_specdec, rebuild the strategy from the folder (or the
Hub repo) it was loaded from and call `generate` again with it as `assistant_model`: the folder holds weights and
settings, the code that drafts and verifies stays in hf_specdec, which must be installed where the folder is used
(`requirements.txt` names it; Transformers checks it before running the code). hf_specdec is not on PyPI, so the
model card gives the install line that works: from a git URL or a local checkout.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._version import __version__
from .folders import read_json, resolve_folder  # noqa: F401  (resolve_folder: kept importable from here)

TARGET_FILE = "hf_specdec_target.json"
CUSTOM_GENERATE_DIR = "custom_generate"
# What decides whether a strategy's weights fit a target; the name is only for messages and the model card.
TARGET_KEYS = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers")
# hf_specdec is installed from its source, not from an index: this is the line a folder's user can run.
INSTALL_LINE = "pip install git+<hf_specdec's git URL>, or pip install /path/to/hf_specdec (a local checkout)"
# requirements.txt: Transformers checks it before running generate.py; a version pin cannot name a git URL portably.

_GENERATE_PY = '''"""`custom_generate` entry point written by hf_specdec {version}: speculative decoding with {title}.

    model.generate(**inputs, custom_generate="<this folder or Hub repo>", trust_remote_code=True)

The output is the one plain `generate` gives (greedy: token for token; sampling: the same distribution).
Needs hf_specdec installed next to Transformers (it is not on PyPI): {install}
"""

import hf_specdec.custom_generate

REPO_ID = {repo_id!r}  # where it was pushed; used only if the `custom_generate=` argument cannot be read


def generate(model, **kwargs):
    return hf_specdec.custom_generate.run_custom_generate(model, kwargs, repo_id=REPO_ID)
'''


def target_fingerprint(model, name: str | None = None) -> dict[str, Any]:
    """What a strategy folder records about its target: architecture sizes plus a name for people."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    info: dict[str, Any] = {key: getattr(config, key, None) for key in TARGET_KEYS}
    from ..drafters.quantized_draft import head_rows

    head = model.get_output_embeddings()
    if head is not None:  # the LM head's rows are what drafts index into
        info["vocab_size"] = head_rows(head)  # also a quantized head, whose `weight` may be a method
    info["name"] = name or Path(str(getattr(model.config, "_name_or_path", "") or "unknown")).name
    return info


def check_target_fits(made_for: Mapping[str, Any] | None, target) -> None:
    """Refuses a target whose architecture differs from the one the strategy folder was made for."""
    if not made_for:
        return
    found = target_fingerprint(target)
    different = {key: (made_for[key], found[key]) for key in TARGET_KEYS
                 if made_for.get(key) is not None and found[key] is not None and made_for[key] != found[key]}
    if different:
        details = ", ".join(f"{key} {saved} (this target: {now})" for key, (saved, now) in different.items())
        raise ValueError(f"This strategy was made for {made_for.get('name', 'another target')!r}: {details}. Use it "
                         "with that target, or build and save a strategy for this one.")


def made_for_model(directory: Path, model) -> bool:
    """The strategy folder records a target and `model` fits it (a folder that records none says nothing about
    whether its weights were trained for this model)."""
    made_for = read_target_file(directory)
    if made_for is None:
        return False
    try:
        check_target_fits(made_for, model)
    except ValueError:
        return False
    return True


def write_target_file(directory: Path, made_for: Mapping[str, Any] | None) -> None:
    path = directory / TARGET_FILE
    if made_for:
        path.write_text(json.dumps(dict(made_for), indent=2, sort_keys=True) + "\n")
    elif path.exists():
        path.unlink()


def read_target_file(directory: Path) -> dict[str, Any] | None:
    path = directory / TARGET_FILE
    return read_json(path) if path.is_file() else None


def write_custom_generate(directory: Path, title: str, repo_id: str | None) -> None:
    """`custom_generate/generate.py` and `requirements.txt` for Transformers' `custom_generate=` loader."""
    folder = directory / CUSTOM_GENERATE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "generate.py").write_text(_GENERATE_PY.format(version=__version__, title=title, repo_id=repo_id,
                                                                 install=INSTALL_LINE))
    (folder / "requirements.txt").write_text(f"hf_specdec>={__version__}\n")


def write_model_card(directory: Path, *, title: str, strategy_type: str, config: Mapping[str, Any],
                     base_model: str | None, repo_id: str | None, metrics: Mapping[str, Any] | None) -> None:
    """README.md with Hub metadata (library_name, base_model, tags), usage and the measured numbers when known."""
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(library_name="transformers", base_model=base_model,
                         tags=["custom_generate", "speculative-decoding", "hf_specdec", strategy_type])
    where = repo_id or directory.name
    lines = [f"# {title}", "",
             f"Speculative decoding for {_target_phrase(base_model, title)} with hf_specdec: the same tokens `generate` "
             "would give, in fewer target forwards.", "",
             "## Requirements", "",
             "`custom_generate/generate.py` imports hf_specdec (the folder holds the weights and settings; the "
             "drafting and verification code is hf_specdec's), so install it next to Transformers first. It is not "
             f"on PyPI: `{INSTALL_LINE}`. `trust_remote_code=True` runs that small file.", "",
             "## Use", "",
             "```python",
             f'out = model.generate(**inputs, custom_generate="{where}", trust_remote_code=True, max_new_tokens=128)',
             "```", "", "or, with hf_specdec imported:", "", "```python", "import hf_specdec", "",
             f'strategy = hf_specdec.AutoStrategy.from_pretrained("{where}")',
             "out = model.generate(**inputs, assistant_model=strategy, max_new_tokens=128)", "```", "",
             "## Settings", "", "```json", json.dumps(dict(config), indent=2, sort_keys=True), "```", ""]
    if metrics:
        lines += ["## Measured", "", "| what | value |", "|---|---|"]
        lines += [f"| {key} | {value} |" for key, value in metrics.items()] + [""]
    ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)).save(directory / "README.md")


def _target_phrase(base_model: str | None, title: str) -> str:
    """The card's target wording: the base model's id, else the name in the title, else a plain phrase."""
    if base_model:
        return f"`{base_model}`"
    name = title.split(" for ", 1)[1] if " for " in title else None
    return f"`{name}`" if name else "the target it was saved with"
