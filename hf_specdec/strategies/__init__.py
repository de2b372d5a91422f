"""One drafter per module; `STRATEGIES` maps each config's `strategy_type` to its class."""

from .base import Draft, SpeculativeStrategy
from .draft_model import DraftModelConfig, DraftModelStrategy
from .eagle import EagleConfig, EagleStrategy
from .medusa import MedusaConfig, MedusaStrategy
from .nasd import NASDConfig, NASDStrategy, NGramStore
from .ngram import NGramConfig, NGramStrategy
from .recycling import RecyclingConfig, RecyclingStrategy
from .suffix import SuffixConfig, SuffixStrategy

STRATEGIES: dict[str, type[SpeculativeStrategy]] = {
    "draft_model": DraftModelStrategy,
    "eagle": EagleStrategy,
    "medusa": MedusaStrategy,
    "nasd": NASDStrategy,
    "ngram": NGramStrategy,
    "recycling": RecyclingStrategy,
    "suffix": SuffixStrategy,
}

__all__ = [
    "STRATEGIES",
    "Draft",
    "DraftModelConfig",
    "DraftModelStrategy",
    "EagleConfig",
    "EagleStrategy",
    "MedusaConfig",
    "MedusaStrategy",
    "NASDConfig",
    "NASDStrategy",
    "NGramConfig",
    "NGramStore",
    "NGramStrategy",
    "RecyclingConfig",
    "RecyclingStrategy",
    "SpeculativeStrategy",
    "SuffixConfig",
    "SuffixStrategy",
]
