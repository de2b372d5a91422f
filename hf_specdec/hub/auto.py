"""`AutoStrategy`: rebuild any saved strategy from its folder or Hub repo, the class picked from its config."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..config import CONFIG_NAME, StrategyConfig
from .folders import find_committed, resolve_folder
from .publishing import made_for_model
from ..rng import keeps_rng
from ..strategies import STRATEGIES, NGramStrategy, SpeculativeStrategy

COMMITTED = Path("heads")  # the strategy folders that ship with the repo
# Fastest first, as `hf-specdec demo` measured them on SmolLM2-135M-Instruct (README): Hydra 2.00x code / 1.34x
# prose, Medusa 1.87x / 1.34x, both with prompt lookup in front.
FASTEST_FIRST = ("hydra-smollm2-135m", "medusa-smollm2-135m")


class AutoStrategy:
    """`AutoStrategy.from_pretrained("me/smollm2-hydra")`: the right strategy class with its heads or draft loaded."""

    def __init__(self) -> None:
        raise TypeError("AutoStrategy is not instantiated; use AutoStrategy.from_pretrained(folder_or_repo).")

    @staticmethod
    @keeps_rng
    def from_pretrained(path_or_repo_id: str | os.PathLike, *args: Any, **overrides: Any) -> SpeculativeStrategy:
        """Positional arguments (e.g. a draft model in memory) and setting overrides pass to the class's own
        `from_pretrained`."""
        directory = resolve_folder(path_or_repo_id)
        strategy_type = StrategyConfig.from_pretrained(directory).strategy_type
        strategy_class = STRATEGIES.get(strategy_type)
        if strategy_class is None:
            raise ValueError(f"{path_or_repo_id} holds a {strategy_type!r} config, which no strategy class loads; "
                             f"known: {sorted(STRATEGIES)}.")
        return strategy_class.from_pretrained(directory, *args, **overrides)

    @staticmethod
    @keeps_rng
    def for_model(model, search: list[str | os.PathLike] | None = None) -> SpeculativeStrategy:
        """The fastest strategy available for `model`: a strategy folder made for it (the committed `heads/`
        folders, fastest first, then any folder under `search`), else `NGramStrategy()`, which fits any model."""
        for folder in _candidate_folders(search):
            if made_for_model(folder, model):
                return AutoStrategy.from_pretrained(folder)
        return NGramStrategy()


def _candidate_folders(search: list[str | os.PathLike] | None) -> list[Path]:
    committed = find_committed(COMMITTED)
    roots = [Path(p) for p in (search or [])] + ([committed] if committed else [])
    folders = [f for root in roots for f in ([root] if (root / CONFIG_NAME).is_file() else sorted(root.iterdir()))
               if (f / CONFIG_NAME).is_file()]
    rank = {name: i for i, name in enumerate(FASTEST_FIRST)}
    return sorted(folders, key=lambda f: rank.get(f.name, len(rank)))
