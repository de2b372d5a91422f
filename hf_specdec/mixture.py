"""Sampling the geometric mixture q* ∝ policy^alpha * reference^(1 - alpha) token by token, with no speculation.

`DraftModelStrategy(policy, verify_against=GeometricMixture(alpha))` samples q* speculatively (the policy drafts, q*
verifies). This is the plain sampler it must match: each step both models score the sequence, the same logits
processors act on both, and the next token is drawn from (or, greedy, is the argmax of) q*. Tests compare the two by
chi-square; users may call it to see what q* says without a speculative loop in between.

    out = sample_geometric_mixture(reference, policy, GeometricMixture("auto"), **inputs, do_sample=True)
"""

from __future__ import annotations

import functools

import torch
from transformers import GenerationConfig, LogitsProcessorList, PreTrainedModel, StoppingCriteriaList
from transformers.cache_utils import DynamicCache

from .compat import CACHE_KWARG
from .engine.scoring import select_token
from .mixture_math import GeometricMixture

__all__ = ["geometric_mixture_decode", "sample_geometric_mixture"]


def sample_geometric_mixture(reference: PreTrainedModel, policy: PreTrainedModel,
                             mixture: GeometricMixture | None = None, **generate_kwargs) -> torch.LongTensor:
    """`reference.generate(**generate_kwargs)` with every token drawn from q* instead of the reference alone
    (decoder-only models sharing one vocabulary, batch size 1)."""
    decode = functools.partial(geometric_mixture_decode, policy=policy, mixture=mixture or GeometricMixture())
    return reference.generate(**generate_kwargs, custom_generate=decode)


@torch.no_grad()
def geometric_mixture_decode(model: PreTrainedModel, input_ids: torch.LongTensor,
                             logits_processor: LogitsProcessorList, stopping_criteria: StoppingCriteriaList,
                             generation_config: GenerationConfig, *, policy: PreTrainedModel,
                             mixture: GeometricMixture, **model_kwargs) -> torch.LongTensor:
    """A `custom_generate` loop: one token per step from q*, each model with its own KV cache."""
    if model.config.is_encoder_decoder or policy.config.is_encoder_decoder or input_ids.shape[0] != 1:
        raise ValueError("sample_geometric_mixture supports decoder-only models and batch size 1.")
    mask = model_kwargs.get("attention_mask")
    if mask is not None and not bool(mask.all()):
        raise ValueError("sample_geometric_mixture takes prompts without padding; drop the padded attention_mask.")
    reference_cache, policy_cache = model_kwargs[CACHE_KWARG], DynamicCache(config=policy.config)
    reference_logits = model._prefill(input_ids, generation_config, model_kwargs).logits[:, -1].float()  # [1, V]
    policy_logits = _next_logits(policy, input_ids, policy_cache, 0)
    while True:
        log_reference = logits_processor(input_ids, reference_logits).log_softmax(dim=-1)  # [1, V]
        log_policy = logits_processor(input_ids, policy_logits).log_softmax(dim=-1)  # [1, V]
        log_q, _ = mixture.log_probs(log_policy, log_reference)  # [1, V]
        token = select_token(log_q[0], bool(generation_config.do_sample))
        input_ids = torch.cat([input_ids, input_ids.new_tensor([[token]])], dim=-1)
        if bool(stopping_criteria(input_ids, None).any()):
            return input_ids
        past = input_ids.shape[1] - 1
        reference_logits = _next_logits(model, input_ids[:, -1:], reference_cache, past)
        policy_logits = _next_logits(policy, input_ids[:, -1:], policy_cache, past)


def _next_logits(model: PreTrainedModel, tokens: torch.LongTensor, cache: DynamicCache, past: int) -> torch.Tensor:
    """float32 logits `[1, V]` after `tokens` (`[1, L]`), appended to a cache holding `past` tokens."""
    positions = torch.arange(past, past + tokens.shape[1], device=tokens.device)[None]
    outputs = model(input_ids=tokens, position_ids=positions, **{CACHE_KWARG: cache}, use_cache=True)
    return outputs.logits[:, -1].float()
