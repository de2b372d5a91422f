"""Old home of the decoding loop, kept so `hf_specdec.decoding.speculative_decode` still imports: the loop is
`hf_specdec.engine` now (`engine.loop`, `engine.step`)."""

from .engine import check_cache, check_request, process_scores, select_token, speculative_decode

__all__ = ["check_cache", "check_request", "process_scores", "select_token", "speculative_decode"]
