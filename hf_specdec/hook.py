"""How `model.generate(..., assistant_model=strategy)` reaches hf_specdec.

Transformers 5.23 has no public hook for a custom candidate generator: `_get_candidate_generator` is internal and
`_assisted_decoding` hard-codes its verifier and batch size 1. It does accept `custom_generate=<callable>`, which
keeps all of generate's preparation (generation config, logits processors, stopping criteria, max length, cache,
streamer prompt) and replaces only the decoding loop. So `install()` wraps `GenerationMixin.generate` once:

* `assistant_model` is an `hf_specdec` strategy -> the same `generate` call, with `custom_generate` set to
  `hf_specdec.decoding.speculative_decode` bound to the strategy, and `assistant_model=None`;
* anything else (no assistant, a `PreTrainedModel` assistant, prompt lookup, ...) -> the original `generate`,
  untouched.

The wrapper is version-guarded: it refuses to install on Transformers outside [5.23, 6).
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
import os

import transformers
from packaging.version import Version
from transformers import GenerationMixin, StoppingCriteriaList
from transformers.generation.stopping_criteria import StopStringCriteria

from .engine import speculative_decode
from .strategies.base import SpeculativeStrategy

SUPPORTED_TRANSFORMERS = (Version("5.23.0"), Version("6.0.0"))
_CONFLICTING_KWARGS = ("prompt_lookup_num_tokens", "assistant_early_exit", "assistant_tokenizer")


def _check_transformers_version() -> None:
    version = Version(transformers.__version__)
    low, high = SUPPORTED_TRANSFORMERS
    if not low <= version < high:
        raise ImportError(f"hf_specdec supports transformers>={low},<{high}; found {version}. "
                          f"Install a supported version: pip install 'transformers>={low},<{high}'.")
    if "custom_generate" not in inspect.signature(GenerationMixin.generate).parameters:
        raise ImportError("This transformers build has no `custom_generate` argument in generate(); "
                          f"install transformers>={low},<{high}.")


def install() -> None:
    """Wraps `GenerationMixin.generate` (idempotent)."""
    if getattr(GenerationMixin.generate, "_hf_specdec_original", None) is not None:
        return
    _check_transformers_version()
    original = GenerationMixin.generate
    signature = inspect.signature(original)

    @functools.wraps(original)
    def generate(self, *args, **kwargs):
        arguments = signature.bind_partial(self, *args, **kwargs).arguments
        strategy = arguments.get("assistant_model")
        if not isinstance(strategy, SpeculativeStrategy):
            check_assistant(strategy)
            return original(self, *args, **kwargs)
        return _generate_with_strategy(original, self, strategy, dict(arguments))

    generate._hf_specdec_original = original
    GenerationMixin.generate = generate


def check_assistant(assistant) -> None:
    """Refuses what neither hf_specdec nor Transformers' assisted generation can run, saying what is accepted."""
    if assistant is None or isinstance(assistant, GenerationMixin):
        return
    hint = ""
    if isinstance(assistant, (str, os.PathLike)):
        hint = (" To run a saved strategy, load it first: "
                f"hf_specdec.AutoStrategy.from_pretrained({str(assistant)!r}), "
                f"or pass custom_generate={str(assistant)!r}, trust_remote_code=True; for a draft model, load it with "
                "AutoModelForCausalLM.from_pretrained.")
    raise TypeError(f"assistant_model got a {type(assistant).__name__}. It accepts an hf_specdec strategy "
                    "(NGramStrategy(), NASDStrategy(), DraftModelStrategy(draft), MedusaStrategy(heads), or "
                    "AutoStrategy.from_pretrained(folder)), a Transformers model (Transformers' own assisted "
                    f"generation), or None.{hint}")


def uninstall() -> None:
    """Restores Transformers' own `generate`."""
    original = getattr(GenerationMixin.generate, "_hf_specdec_original", None)
    if original is not None:
        GenerationMixin.generate = original


def _generate_with_strategy(original, model, strategy: SpeculativeStrategy, arguments: dict):
    arguments.pop("self")
    extra = arguments.pop("kwargs", {})
    if arguments.get("custom_generate") is not None:
        raise ValueError("assistant_model=<hf_specdec strategy> already replaces the decoding loop; do not also "
                         "pass custom_generate.")
    conflicts = [key for key in _CONFLICTING_KWARGS if extra.get(key) is not None]
    if conflicts:
        raise ValueError(f"{conflicts} configure Transformers' own assisted generation and cannot be combined with "
                         "an hf_specdec strategy; remove them.")
    added_override = _move_stop_strings_into_criteria(model, arguments, extra)
    if "use_cache" not in extra and arguments.get("generation_config") is None:
        extra["use_cache"] = True  # drafts are verified against the KV cache; some configs (MPT) default it off
    arguments["assistant_model"] = None
    arguments["custom_generate"] = functools.partial(speculative_decode, strategy=strategy,
                                                     streamer=arguments.get("streamer"))
    if not (added_override and arguments.get("generation_config") is not None):
        return original(model, **arguments, **extra)
    with _OwnStopStringsQuiet():
        return original(model, **arguments, **extra)


class _OwnStopStringsQuiet(logging.Filter):
    """Drops Transformers' "generation_config together with generation-related arguments" warning while the only
    such argument is the `stop_strings=None` the hook itself added (see `_move_stop_strings_into_criteria`): the
    user passed a generation_config alone and did nothing deprecated."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("generation_config` together" in message and "({'stop_strings'})" in message)

    def __enter__(self):
        logging.getLogger("transformers.generation.utils").addFilter(self)
        return self

    def __exit__(self, *exc):
        logging.getLogger("transformers.generation.utils").removeFilter(self)
        return False


def _move_stop_strings_into_criteria(model, arguments: dict, extra: dict) -> bool:
    """generate drops the `tokenizer` kwarg on the `custom_generate` path, so it could not build the stop-string
    criterion itself; build it here from the same settings and pass it as a stopping criterion. Returns whether
    it added a `stop_strings=None` kwarg the user did not pass (to override the model's default)."""
    user_passed = "stop_strings" in extra
    tokenizer = extra.pop("tokenizer", None)
    passed_config = arguments.get("generation_config")
    stop_strings = extra.pop("stop_strings", None)
    if stop_strings is None and passed_config is not None:
        stop_strings = passed_config.stop_strings
    if stop_strings is None:
        stop_strings = model.generation_config.stop_strings
    if stop_strings is None:
        return False
    if tokenizer is None:
        raise ValueError("stop_strings need the tokenizer: pass tokenizer=... to generate().")
    if passed_config is not None and passed_config.stop_strings is not None:
        arguments["generation_config"] = passed_config = copy.deepcopy(passed_config)
        passed_config.stop_strings = None
    if model.generation_config.stop_strings is not None:
        extra["stop_strings"] = None  # overrides the model default, which generate would otherwise fill back in
    criteria = StoppingCriteriaList(arguments.get("stopping_criteria") or [])
    criteria.append(StopStringCriteria(tokenizer=tokenizer, stop_strings=stop_strings))
    arguments["stopping_criteria"] = criteria
    return model.generation_config.stop_strings is not None and not user_passed
