"""The one step engine: every `generate(assistant_model=strategy)` call, a batch of one or many, a chain or a tree,
decodes through `loop.speculative_decode` -> `step.step`."""

from .cache import check_cache
from .checks import check_request
from .loop import speculative_decode
from .scoring import process_scores, select_token

__all__ = ["check_cache", "check_request", "process_scores", "select_token", "speculative_decode"]
