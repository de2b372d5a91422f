"""`AutoStrategy`: rebuild any saved strategy from its folder or Hub repo, the class picked from its config."""

from __future__ import annotations

import os
from typing import Any

from .config import StrategyConfig
from .publishing import resolve_folder
from .strategies import STRATEGIES, SpeculativeStrategy


class AutoStrategy:
    """`AutoStrategy.from_pretrained("me/smollm2-hydra")`: the right strategy class with its heads or draft loaded."""

    def __init__(self) -> None:
        raise TypeError("AutoStrategy is not instantiated; use AutoStrategy.from_pretrained(folder_or_repo).")

    @staticmethod
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
