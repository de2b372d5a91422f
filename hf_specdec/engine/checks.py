"""Clear errors instead of silently wrong output, or a hang: what a request, a model or a setup must satisfy."""

from __future__ import annotations

import functools
import inspect
import re
import sys

import torch
from transformers import GenerationConfig, PreTrainedModel
from transformers.generation.streamers import BaseStreamer

FLASH_KERNELS = ("flash_attention_2", "flash_attention_3", "flash_attention_4", "kernels-community/flash-attn",
                 "kernels-community/vllm-flash-attn3")


def is_batch(model: PreTrainedModel, input_ids: torch.LongTensor, model_kwargs: dict) -> bool:
    """Several rows, or padding (generate drops an all-ones mask): steps then need slot masks."""
    return not model.config.is_encoder_decoder and (
        input_ids.shape[0] > 1 or model_kwargs.get("attention_mask") is not None)


def check_request(model: PreTrainedModel, input_ids: torch.LongTensor, generation_config: GenerationConfig,
                  model_kwargs: dict, streamer: BaseStreamer | None = None) -> None:
    if generation_config.num_beams != 1:
        raise ValueError(f"Speculative decoding replaces greedy/sampling decoding; num_beams={generation_config.num_beams} "
                         "is not supported. Set num_beams=1.")
    if input_ids.shape[1] == 0:
        raise ValueError("hf_specdec strategies need input_ids with at least one token (inputs_embeds alone "
                         "are not supported).")
    if not model_kwargs.get("use_cache", True):
        where = " (this model's config sets use_cache=False)" if not getattr(model.config, "use_cache", True) else ""
        raise ValueError(f"Speculative decoding verifies drafts against the KV cache: use_cache=False{where} is not "
                         "supported. Pass use_cache=True to generate.")
    if generation_config.return_dict_in_generate and (generation_config.output_attentions
                                                      or generation_config.output_hidden_states):
        raise ValueError("output_attentions / output_hidden_states are not supported with an hf_specdec strategy; "
                         "output_scores and output_logits are.")
    check_distributed(model)
    check_causal(model)
    check_known_unsupported(model, is_batch(model, input_ids, model_kwargs))
    if model.config.is_encoder_decoder:
        if input_ids.shape[0] != 1:
            raise ValueError(f"hf_specdec supports encoder-decoder targets at batch size 1 for now, got "
                             f"{input_ids.shape[0]} rows (num_return_sequences counts): call generate once per input.")
        if model_kwargs.get("decoder_attention_mask") is not None:
            raise ValueError("A decoder_attention_mask is not supported with an hf_specdec strategy; drop it (the "
                             "encoder's attention_mask may have padding).")
    elif is_batch(model, input_ids, model_kwargs):
        check_batch_request(generation_config, streamer)
        check_attention(model)


# Causal LM classes whose forward cannot verify several new tokens over a cache (the verify step's one need), or not
# in a padded batch; found by `python -m hf_specdec.arch_sweep`. The reason is part of the message.
MULTI_TOKEN_UNSUPPORTED = {
    "ProphetNetForCausalLM": "its decoder supports a cache only for one new token per forward (an assertion in "
                             "Transformers' ProphetNet)",
    "CpmAntForCausalLM": "its attention mask is built for the new tokens only, not over the cached ones, so several "
                         "new tokens over a cache fail in the forward",
    "XLMWithLMHeadModel": "its attention mask is built from sequence lengths without the cached tokens, so several "
                          "new tokens over a cache fail in the forward",
}
BATCH_UNSUPPORTED = {
    "OpenAIGPTLMHeadModel": "its attention applies a fixed upper-left causal mask and cannot take a 4D mask over "
                            "cache slots",
    "GitForCausalLM": "with a cache it prepends image-patch slots to a 2D attention mask (even without an image), "
                      "which a 4D mask over cache slots cannot reproduce",
}


def check_known_unsupported(model: PreTrainedModel, batched: bool) -> None:
    name = type(model).__name__
    if name in MULTI_TOKEN_UNSUPPORTED:
        raise ValueError(f"{name} cannot be used with speculative decoding: {MULTI_TOKEN_UNSUPPORTED[name]}. Use "
                         "plain generate for this model.")
    if batched and name in BATCH_UNSUPPORTED:
        raise ValueError(f"Padded batches are not supported for {name}: {BATCH_UNSUPPORTED[name]}. Generate one "
                         "prompt at a time (a batch of one unpadded row is supported).")
    if batched and "position_ids" not in inspect.signature(model.forward).parameters:
        raise ValueError(f"Padded batches are not supported for {name}: its forward takes no position_ids and "
                         "derives positions from the cache length, which a batch's masked dead slots and compaction "
                         "change, so outputs would differ from plain generate. Generate one prompt at a time (a "
                         "batch of one unpadded row is supported).")


def check_causal(model: PreTrainedModel) -> None:
    """BERT-style causal LM heads (BertLMHeadModel, RobertaForCausalLM, ...) attend bidirectionally unless their config
    says `is_decoder=True`: a verify forward's earlier positions would then see the draft tokens after them, and the
    output would differ from plain generate."""
    config = model.config
    if (not config.is_encoder_decoder and getattr(config, "is_decoder", None) is False
            and reads_is_decoder(type(model))):
        raise ValueError(f"{type(model).__name__} has is_decoder=False in its config, so it attends bidirectionally "
                         "and a verify forward's positions would see the draft tokens after them. Load it with "
                         "is_decoder=True (e.g. from_pretrained(..., is_decoder=True)), as Transformers asks for "
                         "standalone use of this head.")


@functools.cache
def reads_is_decoder(model_class: type) -> bool:
    """Whether the class's modeling code switches causal attention on `config.is_decoder` (BERT-style); many configs
    carry the attribute without reading it (GPT-NeoX's is always causal)."""
    try:
        source = inspect.getsource(sys.modules[model_class.__module__])
    except (OSError, TypeError, KeyError):
        return False
    return re.search(r"(= ?config\.is_decoder|is_causal=config\.is_decoder|if (self\.)?config\.is_decoder)",
                     source) is not None


def check_batch_request(generation_config: GenerationConfig, streamer: BaseStreamer | None) -> None:
    """What batches do not do (yet)."""
    if streamer is not None:
        raise ValueError("Streaming needs a batch of one unpadded prompt (as Transformers' streamers do); drop the "
                         "streamer or generate one prompt at a time.")
    if generation_config.return_dict_in_generate and (generation_config.output_scores
                                                      or generation_config.output_logits):
        raise ValueError("output_scores / output_logits are supported for one unpadded prompt; rows of a batch "
                         "accept different numbers of tokens per step, so per-step score tensors do not line up. "
                         "Generate one prompt at a time to get them.")


def check_attention(model: PreTrainedModel) -> None:
    """Tree drafts and batches verify with a custom 4D attention mask, which flash-attention kernels do not take."""
    implementation = getattr(model.config, "_attn_implementation", None)
    if implementation in FLASH_KERNELS:
        raise ValueError(f"Tree drafts and batches need a 4D attention mask, which {implementation} does not take. "
                         "Load the target with attn_implementation='sdpa' (or call "
                         "model.set_attn_implementation('sdpa')), or decode one unpadded prompt at a time with a "
                         "chain (e.g. MedusaStrategy(heads, tree=None), EagleStrategy(drafter, tree=None), "
                         "NGramStrategy(), DraftModelStrategy(draft)).")


def check_distributed(model: PreTrainedModel) -> None:
    """Under DeepSpeed ZeRO-3 or FSDP every rank must run the same number of forwards (`synced_gpus`), which
    Transformers does not pass to a callable `custom_generate`: the ranks would hang."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1):
        return
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
    from transformers.integrations.fsdp import is_fsdp_managed_module
    if is_deepspeed_zero3_enabled() or is_fsdp_managed_module(model):
        raise ValueError("hf_specdec does not run under DeepSpeed ZeRO-3 or FSDP: ranks accept different numbers of "
                         "tokens per step and would wait for each other forever. Generate with the full model on "
                         "each rank (gather the weights, or use tensor parallelism), or use plain generate.")
