"""Strategy configs: dataclasses that save, load and publish as one JSON file, like PEFT configs."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .hub.folders import from_hub, local_folder, read_json

CONFIG_NAME = "hf_specdec_config.json"

SCHEDULES = ("constant", "heuristic", "entropy")
VERIFICATIONS = ("auto", "greedy", "speculative_sampling", "typical")

# strategy_type -> config class; filled by `register_config`.
CONFIG_REGISTRY: dict[str, type[StrategyConfig]] = {}


def reject_unknown_keys(cls: type, data: dict[str, Any], owner: str) -> None:
    """Raises ValueError if `data` has keys that are not fields of dataclass `cls`, listing the known ones."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"Unknown keys for {owner}: {unknown}. Known keys: {sorted(known)}.")


def register_config(cls: type[StrategyConfig]) -> type[StrategyConfig]:
    """Class decorator: lets `StrategyConfig.from_pretrained` rebuild the right subclass from its JSON."""
    CONFIG_REGISTRY[cls.strategy_type] = cls
    return cls


@dataclass
class StrategyConfig:
    """Settings every speculative strategy shares.

    `num_speculative_tokens` is K: the draft length for the constant schedule and the starting K for the others.
    """

    strategy_type: ClassVar[str] = "base"

    num_speculative_tokens: int = field(default=6, metadata={"help": "Draft length K (starting value for adaptive schedules)."})
    schedule: str = field(default="constant", metadata={"help": f"How K changes between steps: one of {SCHEDULES}."})
    gamma_min: int = field(default=1, metadata={"help": "Smallest K an adaptive schedule may pick."})
    gamma_max: int = field(default=10, metadata={"help": "Largest K an adaptive schedule may pick."})
    entropy_threshold: float = field(
        default=2.0, metadata={"help": "entropy schedule: stop drafting once the draft's entropy (nats) exceeds this."}
    )
    ema_alpha: float = field(default=0.5, metadata={"help": "entropy schedule: weight of the newest step in the EMA."})
    verification: str = field(
        default="auto",
        metadata={"help": f"One of {VERIFICATIONS}. 'auto': greedy match or lossless speculative sampling. 'typical' is LOSSY."},
    )
    typical_posterior_threshold: float = field(default=0.09, metadata={"help": "typical acceptance: epsilon."})
    typical_posterior_alpha: float = field(default=0.3, metadata={"help": "typical acceptance: delta (scales exp(-H))."})
    cpu_kernels: str = field(
        default="auto",
        metadata={"help": "'auto': a float32 target on the CPU runs our loop with hf_specdec's skinny-matmul kernels "
                          "(as optimize_for_cpu gives; a multi-token verify then costs about one decode step), where "
                          "two more copies of its linear weights fit in half the available memory; the model's own "
                          "generate calls keep PyTorch's kernels. 'off': our loop uses the model as it is."},
    )

    def __post_init__(self) -> None:
        if not isinstance(self.num_speculative_tokens, int) or self.num_speculative_tokens < 1:
            raise ValueError(f"num_speculative_tokens must be an integer >= 1, got {self.num_speculative_tokens!r}.")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}.")
        if not 1 <= self.gamma_min <= self.gamma_max:
            raise ValueError(f"Need 1 <= gamma_min <= gamma_max, got gamma_min={self.gamma_min}, gamma_max={self.gamma_max}.")
        if not 0.0 < self.ema_alpha <= 1.0:
            raise ValueError(f"ema_alpha must be in (0, 1], got {self.ema_alpha}.")
        if self.cpu_kernels not in ("auto", "off"):
            raise ValueError(f"cpu_kernels must be 'auto' or 'off', got {self.cpu_kernels!r}.")
        if self.verification not in VERIFICATIONS:
            raise ValueError(f"verification must be one of {VERIFICATIONS}, got {self.verification!r}.")

    # ---- serialisation -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"strategy_type": self.strategy_type, **dataclasses.asdict(self)}

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Writes `hf_specdec_config.json` into `save_directory` (created if needed) and returns its path."""
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / CONFIG_NAME
        path.write_text(self.to_json_string())
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StrategyConfig:
        data = dict(data)
        strategy_type = data.pop("strategy_type", cls.strategy_type)
        target_cls = CONFIG_REGISTRY.get(strategy_type)
        if target_cls is None:
            raise ValueError(f"Unknown strategy_type {strategy_type!r}; known: {sorted(CONFIG_REGISTRY)}.")
        if cls is not StrategyConfig and not issubclass(target_cls, cls):
            raise ValueError(f"This config is for strategy {strategy_type!r}, not {cls.strategy_type!r}.")
        reject_unknown_keys(target_cls, data, target_cls.__name__)
        return target_cls(**data)

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, **hub_kwargs: Any) -> StrategyConfig:
        """Loads from a local directory (or JSON file) first, else from a Hub repo via `huggingface_hub`."""
        path = Path(path_or_repo_id)
        if not path.is_file():
            folder = local_folder(path_or_repo_id)
            if folder is None:
                from huggingface_hub import hf_hub_download

                path = Path(from_hub(path_or_repo_id,
                                     lambda: hf_hub_download(str(path_or_repo_id), CONFIG_NAME, **hub_kwargs)))
            else:
                path = folder / CONFIG_NAME
                if not path.is_file():
                    raise ValueError(f"{path_or_repo_id} has no {CONFIG_NAME}, so it is not an hf_specdec strategy "
                                     f"folder (write one with strategy.save_pretrained). {_what_it_is(folder)}")
        return cls.from_dict(read_json(path))

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, token: str | None = None,
                    commit_message: str = "Upload hf_specdec config") -> str:
        """Creates `repo_id` if needed and uploads the JSON config; returns the commit URL."""
        return push_folder_to_hub(self.save_pretrained, repo_id, private=private, token=token,
                                  commit_message=commit_message)


def _what_it_is(folder: Path) -> str:
    """How to load a folder that is not a strategy folder, judged by the files it holds."""
    if (folder / "hf_specdec_draft.json").is_file():
        return ("It is a distilled draft (hf_specdec_draft.json): load it with hf_specdec.distilled_draft.load_draft("
                "folder, target) and pass hf_specdec.DraftModelStrategy(draft) as assistant_model.")
    return ("A folder of Medusa heads alone loads with MedusaStrategy(MedusaHeads.from_pretrained(folder)), an EAGLE "
            "drafter alone with EagleStrategy(EagleDrafter.from_pretrained(folder)).")


def local_or_hub_files(path_or_repo_id: str | os.PathLike, names: tuple[str, ...], **hub_kwargs: Any) -> list[Path]:
    """The files `names` of a local folder if `path_or_repo_id` is one (a missing file named), else downloaded from
    that Hub repo."""
    directory = local_folder(path_or_repo_id)
    if directory is not None:
        missing = [name for name in names if not (directory / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{directory} lacks {', '.join(missing)}: it is not a complete saved folder; save "
                                    "it again with save_pretrained.")
        return [directory / name for name in names]
    from huggingface_hub import hf_hub_download

    return from_hub(path_or_repo_id,
                    lambda: [Path(hf_hub_download(str(path_or_repo_id), name, **hub_kwargs)) for name in names])


def push_folder_to_hub(save_pretrained: Callable[[str], Any], repo_id: str, *, private: bool | None,
                       token: str | None, commit_message: str) -> str:
    """Creates `repo_id` if needed, writes what `save_pretrained(folder)` saves and uploads it; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(tmp)
        commit = api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message)
    return str(commit)
