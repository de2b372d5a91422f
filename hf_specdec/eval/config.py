"""Evaluation configs: dataclasses loaded from a YAML or JSON recipe, unknown keys rejected.

A recipe names the target (and optionally a draft model), the prompt sets, the decoding settings, the methods to
compare and the losslessness checks. See `recipes/eval/*.yaml` and docs/eval.md.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import reject_unknown_keys

BUILTIN_TYPES = ("plain", "prompt_lookup", "assistant")
DATASET_KINDS = ("humaneval", "mtbench", "jsonl")


@dataclass
class ModelSpec:
    """A model by name: `smollm2` (packaged SmolLM2-135M-Instruct), `tiny-random-llama` (built in-process from
    `seed`, with a byte-level tokenizer; for tests) or a local checkpoint folder."""

    name: str = field(metadata={"help": "'smollm2', 'tiny-random-llama' or a local checkpoint directory; as the "
                                        "draft also 'smollm2-draft' or a folder made by recipes/distill_draft.py."})
    seed: int = field(default=0, metadata={"help": "tiny-random-llama: initialisation seed."})
    layers: int = field(default=2, metadata={"help": "tiny-random-llama: decoder layers."})
    hidden: int = field(default=32, metadata={"help": "tiny-random-llama: hidden size."})
    logit_scale: float = field(default=1.0, metadata={"help": "tiny-random-llama: >1 sharpens its distribution."})


@dataclass
class DatasetSpec:
    """One prompt set. `humaneval`: code prompts; `mtbench`: first turns (chat template applied), per category;
    `jsonl`: a local JSON/JSONL file with a `text_field` column."""

    kind: str = field(metadata={"help": f"One of {DATASET_KINDS}."})
    name: str | None = field(default=None, metadata={"help": "Label in the report (default: the kind / file stem)."})
    path: str | None = field(default=None, metadata={"help": "jsonl: the prompt file."})
    text_field: str = field(default="prompt", metadata={"help": "jsonl: the column holding the prompt text."})
    categories: list[str] | None = field(default=None, metadata={"help": "mtbench: keep only these categories."})
    chat_template: bool = field(default=True, metadata={"help": "mtbench/jsonl: wrap prompts in the tokenizer's "
                                                                "chat template (if it has one)."})
    start: int = field(default=0, metadata={"help": "humaneval: first problem."})
    limit: int | None = field(default=None, metadata={"help": "At most this many prompts (None: all)."})

    def __post_init__(self) -> None:
        if self.kind not in DATASET_KINDS:
            raise ValueError(f"dataset kind must be one of {DATASET_KINDS}, got {self.kind!r}.")
        if self.kind == "jsonl" and not self.path:
            raise ValueError("A dataset of kind 'jsonl' needs `path:` (a local JSON/JSONL prompt file).")
        if self.name is None:
            self.name = Path(self.path).name.split(".")[0] if self.kind == "jsonl" else self.kind


@dataclass
class DecodingSpec:
    """Decoding settings for the speed runs (greedy by default)."""

    max_new_tokens: int = field(default=128, metadata={"help": "New tokens per prompt."})
    do_sample: bool = field(default=False, metadata={"help": "False: greedy (outputs must match plain exactly)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (do_sample only)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling threshold (do_sample only)."})

    def generate_kwargs(self) -> dict[str, Any]:
        if not self.do_sample:
            return {"do_sample": False, "max_new_tokens": self.max_new_tokens}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p,
                "max_new_tokens": self.max_new_tokens}


@dataclass
class MethodSpec:
    """One method to time. `type`: 'plain', 'prompt_lookup' (Transformers' built-in, `num_tokens`), 'assistant'
    (Transformers' built-in assisted generation with the recipe's draft model) or any hf_specdec strategy type
    (`hf_specdec.STRATEGIES`, e.g. 'ngram', 'nasd', 'draft_model', 'medusa'); every other key goes to that
    strategy's config. `heads: <dir>` loads Medusa-style heads passed as the strategy's first argument."""

    name: str = field(metadata={"help": "Label in the report; unique."})
    type: str = field(metadata={"help": "plain | prompt_lookup | assistant | a strategy_type."})
    num_tokens: int = field(default=10, metadata={"help": "prompt_lookup: prompt_lookup_num_tokens."})
    heads: str | None = field(default=None, metadata={"help": "Heads directory passed to the strategy (Medusa)."})
    sweep: str | None = field(default=None, metadata={"help": "Label grouping methods into one line of the "
                                                              "speedup-vs-K plot."})
    options: dict[str, Any] = field(default_factory=dict, metadata={"help": "Strategy config keys."})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MethodSpec:
        data = dict(data)
        own = {f.name for f in dataclasses.fields(cls)} - {"options"}
        missing = {"name", "type"} - set(data)
        if missing:
            raise ValueError(f"A method needs {sorted(missing)}; got {data}.")
        options = {**data.pop("options", {}), **{k: data.pop(k) for k in list(data) if k not in own}}
        if data["type"] in BUILTIN_TYPES and options:
            raise ValueError(f"Method {data['name']!r} of type {data['type']!r} takes no strategy options; unknown "
                             f"keys {sorted(options)}.")
        return cls(**data, options=options)

    @property
    def is_strategy(self) -> bool:
        return self.type not in BUILTIN_TYPES


@dataclass
class SamplingTestSpec:
    """Statistical losslessness test under sampling: many short continuations of fixed prefixes, from plain sampling
    and from each strategy, compared position by position with a two-sample chi-square test."""

    enabled: bool = field(default=False, metadata={"help": "Run the sampling test."})
    num_prefixes: int = field(default=2, metadata={"help": "Prefixes drawn from the first prompts of each dataset."})
    prefix_tokens: int = field(default=512, metadata={"help": "Prefixes are cut to their last this-many tokens."})
    continue_output: bool = field(default=True, metadata={"help": "Prefix = prompt + part of plain's greedy output, "
                                                                   "cut where a copy is likely (drafters propose)."})
    num_samples: int = field(default=200, metadata={"help": "Samples per prefix and method."})
    num_tokens: int = field(default=4, metadata={"help": "Sampled tokens per sample (>= 3, see __post_init__)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus threshold."})
    alpha: float = field(default=0.01, metadata={"help": "Fail when the combined p-value is below this."})
    min_count: int = field(default=10, metadata={"help": "Pooled count under which tokens share an 'other' bin."})

    def __post_init__(self) -> None:
        if self.num_tokens < 3:
            raise ValueError("sampling_test.num_tokens must be >= 3: the first token comes from the prefill, and a "
                             "verify step drafts at most (tokens still allowed - 1), so drafts start at token 2 only "
                             "when a third token is allowed.")


@dataclass
class EvalConfig:
    """A whole evaluation run."""

    target: ModelSpec = field(metadata={"help": "The target model."})
    datasets: list[DatasetSpec] = field(metadata={"help": "Prompt sets."})
    methods: list[MethodSpec] = field(metadata={"help": "Methods to compare; must include one of type 'plain'."})
    draft: ModelSpec | None = field(default=None, metadata={"help": "Draft model for 'assistant' and "
                                                                    "'draft_model' methods (None: those are skipped)."})
    decoding: DecodingSpec = field(default_factory=DecodingSpec, metadata={"help": "Speed-run decoding."})
    sampling_test: SamplingTestSpec = field(default_factory=SamplingTestSpec, metadata={"help": "See class."})
    limit: int | None = field(default=None, metadata={"help": "Cap on prompts per dataset (quick runs)."})
    warmup_tokens: int = field(default=16, metadata={"help": "Each method runs once with this many tokens first."})
    cpu_optimize: bool = field(default=True, metadata={"help": "Apply optimize_for_cpu to target (and draft) on CPU."})
    threads: int | None = field(default=None, metadata={"help": "torch.set_num_threads (None: torch's default)."})
    seed: int = field(default=0, metadata={"help": "Seed for sampling."})
    greedy_check: bool = field(default=True, metadata={"help": "Greedy: compare every output with plain's."})

    def __post_init__(self) -> None:
        names = [m.name for m in self.methods]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"Method names must be unique; repeated: {duplicates}.")
        if not any(m.type == "plain" for m in self.methods):
            raise ValueError("The methods need one entry of type 'plain' (the baseline every speedup is measured "
                             "against), e.g. `- {name: plain, type: plain}`.")
        if not self.datasets:
            raise ValueError("The recipe names no datasets.")

    @property
    def plain_name(self) -> str:
        return next(m.name for m in self.methods if m.type == "plain")


def _build(cls: type, data: Any, where: str) -> Any:
    """Builds dataclass `cls` from a dict, rejecting unknown keys with the list of known ones."""
    if cls is ModelSpec and isinstance(data, str):
        return ModelSpec(name=data)
    if not isinstance(data, dict):
        raise TypeError(f"{where}: expected a mapping, got {data!r}.")
    reject_unknown_keys(cls, data, where)
    return cls(**data)


def config_from_dict(data: dict[str, Any]) -> EvalConfig:
    data = dict(data)
    reject_unknown_keys(EvalConfig, data, "the recipe's top level")
    for key in ("target", "datasets", "methods"):
        if key not in data:
            raise ValueError(f"The recipe needs `{key}:`.")
    data["target"] = _build(ModelSpec, data["target"], "target")
    if data.get("draft") is not None:
        data["draft"] = _build(ModelSpec, data["draft"], "draft")
    data["datasets"] = [_build(DatasetSpec, d, f"datasets[{i}]") for i, d in enumerate(data["datasets"])]
    data["methods"] = [MethodSpec.from_dict(m) for m in data["methods"]]
    if "decoding" in data:
        data["decoding"] = _build(DecodingSpec, data["decoding"], "decoding")
    if "sampling_test" in data:
        data["sampling_test"] = _build(SamplingTestSpec, data["sampling_test"], "sampling_test")
    return EvalConfig(**data)


def load_config(path: str | Path, overrides: list[str] | None = None) -> EvalConfig:
    """Reads a YAML or JSON recipe; `overrides` are `key.sub=value` strings (values parsed as YAML)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No such eval config: {path}.")
    text = path.read_text()
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    for item in overrides or []:
        apply_override(data, item)
    return config_from_dict(data)


def apply_override(data: dict[str, Any], item: str) -> None:
    """`decoding.max_new_tokens=32` -> data["decoding"]["max_new_tokens"] = 32 (in place)."""
    key, sep, value = item.partition("=")
    if not sep:
        raise ValueError(f"Override {item!r} must look like key=value (e.g. decoding.max_new_tokens=32).")
    *parents, last = key.strip().split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise TypeError(f"Override {item!r}: {part!r} is not a mapping.")
    node[last] = yaml.safe_load(value)


def config_to_dict(config: EvalConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)
