"""hf_specdec: speculative decoding for Hugging Face Transformers, through `generate(assistant_model=strategy)`.

Importing the package installs the generate hook (see `hf_specdec.hook`); plain `generate` calls are unchanged.
"""

from . import hook
from ._version import __version__
from .hub.auto import AutoStrategy
from .config import StrategyConfig
from .drafters.eagle_drafter import EagleDrafter, EagleDrafterConfig
from .drafters.medusa_heads import MedusaHeads, MedusaHeadsConfig
from .mixture import sample_geometric_mixture
from .mixture_math import GeometricMixture
from .drafters.quantized_draft import quantize_draft
from .stats import GenerationStats, StepEvent
from .strategies import (
    STRATEGIES,
    Draft,
    DraftModelConfig,
    DraftModelStrategy,
    EagleConfig,
    EagleStrategy,
    MedusaConfig,
    MedusaStrategy,
    NASDConfig,
    NASDStrategy,
    NGramConfig,
    NGramStrategy,
    RecyclingConfig,
    RecyclingStrategy,
    SpeculativeStrategy,
    SuffixConfig,
    SuffixStrategy,
)
from .verify import greedy_verify, speculative_sampling_verify, typical_acceptance_verify

hook.install()

__all__ = [
    "AutoStrategy",
    "STRATEGIES",
    "Draft",
    "DraftModelConfig",
    "DraftModelStrategy",
    "EagleConfig",
    "EagleDrafter",
    "EagleDrafterConfig",
    "EagleStrategy",
    "GenerationStats",
    "GeometricMixture",
    "MedusaConfig",
    "MedusaHeads",
    "MedusaHeadsConfig",
    "MedusaStrategy",
    "NASDConfig",
    "NASDStrategy",
    "NGramConfig",
    "NGramStrategy",
    "RecyclingConfig",
    "RecyclingStrategy",
    "SpeculativeStrategy",
    "StepEvent",
    "StrategyConfig",
    "SuffixConfig",
    "SuffixStrategy",
    "greedy_verify",
    "quantize_draft",
    "sample_geometric_mixture",
    "speculative_sampling_verify",
    "typical_acceptance_verify",
]
