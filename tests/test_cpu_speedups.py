"""`optimize_for_cpu` changes speed, not results: same logits (to float rounding) and the same greedy tokens."""

import copy

import pytest
import torch
from torch import nn
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

import hf_specdec
from conftest import make_llama, repetitive_prompt
from hf_specdec import cpu_speedups
from hf_specdec.compat import CACHE_KWARG
from hf_specdec.cpu_speedups import (CpuLinear, is_cpu_optimized, optimize_for_cpu, restore_cpu_defaults,
                                     should_use_fast_kernels)


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=1000, tie_word_embeddings=True,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


@torch.inference_mode()
def cached_logits(model, prompt, new_tokens):
    """Logits of `new_tokens` [1, K] after `prompt` [1, T] is in a DynamicCache: [1, K, V]."""
    cache = DynamicCache(config=model.config)
    model(prompt, **{CACHE_KWARG: cache}, use_cache=True)
    return model(new_tokens, **{CACHE_KWARG: cache}, use_cache=True, logits_to_keep=new_tokens.shape[1]).logits


@pytest.mark.parametrize("k", [1, 2, 5, 11])
def test_same_logits_with_cache(k):
    model = tiny_llama()
    prompt, new = torch.randint(3, 1000, (1, 30)), torch.randint(3, 1000, (1, k))
    expected = cached_logits(model, prompt, new)
    optimize_for_cpu(model)
    torch.testing.assert_close(cached_logits(model, prompt, new), expected, atol=1e-4, rtol=0)


def test_same_greedy_generation():
    model = tiny_llama()
    prompt = torch.randint(3, 1000, (2, 12))
    kwargs = {"attention_mask": torch.ones_like(prompt), "max_new_tokens": 20, "do_sample": False}
    with torch.inference_mode():
        expected = model.generate(prompt, **kwargs)
        actual = optimize_for_cpu(model).generate(prompt, **kwargs)
    assert torch.equal(actual, expected)


def test_every_linear_switched_and_tying_kept():
    model = optimize_for_cpu(tiny_llama())
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears and all(isinstance(m, CpuLinear) for m in linears)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert set(model.state_dict()) == set(tiny_llama().state_dict())


def test_idempotent_and_restorable():
    model = tiny_llama()
    prompt = torch.randint(3, 1000, (1, 8))
    expected = cached_logits(model, prompt, prompt[:, :3])
    assert optimize_for_cpu(optimize_for_cpu(model)) is model and is_cpu_optimized(model)
    restore_cpu_defaults(model)
    assert not is_cpu_optimized(model)
    assert all(type(m) is nn.Linear for m in model.modules() if isinstance(m, nn.Linear))
    assert torch.equal(cached_logits(model, prompt, prompt[:, :3]), expected)


def test_tied_head_follows_embedding_updates():
    model = optimize_for_cpu(tiny_llama())
    prompt, new = torch.randint(3, 1000, (1, 10)), torch.randint(3, 1000, (1, 4))
    cached_logits(model, prompt, new)  # builds the derived weights
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(-2.0)  # in place, as an optimizer or load_state_dict would
    reference = restore_cpu_defaults(copy.deepcopy(model))
    torch.testing.assert_close(cached_logits(model, prompt, new), cached_logits(reference, prompt, new),
                               atol=1e-4, rtol=0)


def test_autograd_falls_back_to_f_linear():
    model = optimize_for_cpu(tiny_llama())
    loss = model(torch.randint(3, 1000, (1, 6))).logits.sum()
    loss.backward()
    assert model.model.embed_tokens.weight.grad is not None


def test_deepcopy_of_optimized_model_works():
    model = optimize_for_cpu(tiny_llama())
    prompt, new = torch.randint(3, 1000, (1, 10)), torch.randint(3, 1000, (1, 3))
    clone = copy.deepcopy(model)
    assert clone.lm_head.weight is clone.model.embed_tokens.weight
    torch.testing.assert_close(cached_logits(clone, prompt, new), cached_logits(model, prompt, new), atol=0, rtol=0)


def test_our_loop_uses_the_fast_kernels_for_the_call_only(monkeypatch):
    """cpu_kernels='auto' (the default): the target multiplies with CpuLinear inside our loop, and is plain
    nn.Linear again afterwards, so the user's own generate calls keep PyTorch's kernels; 'off' leaves it alone."""
    model = make_llama()
    seen = []
    strategy = hf_specdec.NGramStrategy()
    strategy.step_listeners.append(lambda event: seen.append(is_cpu_optimized(model)))
    prompt = repetitive_prompt(0)
    plain = model.generate(prompt, max_new_tokens=12, do_sample=False)
    assert torch.equal(model.generate(prompt, max_new_tokens=12, do_sample=False, assistant_model=strategy), plain)
    assert seen and all(seen)
    assert not is_cpu_optimized(model) and all(type(m) is nn.Linear for m in model.modules() if isinstance(m, nn.Linear))
    assert cpu_speedups._KEPT.get(model.lm_head) is not None  # kept for the next call: no rebuild
    copy.deepcopy(model)  # the layers carry nothing a copy cannot take

    seen.clear()
    strategy = hf_specdec.NGramStrategy(cpu_kernels="off")
    strategy.step_listeners.append(lambda event: seen.append(is_cpu_optimized(model)))
    model.generate(prompt, max_new_tokens=12, do_sample=False, assistant_model=strategy)
    assert seen and not any(seen)
    restore_cpu_defaults(model)
    assert model.lm_head not in cpu_speedups._KEPT


def test_fast_kernel_rule_memory_dtype_and_device(monkeypatch):
    model = make_llama()
    assert should_use_fast_kernels(model)
    monkeypatch.setattr(cpu_speedups, "_available_memory", lambda: None)  # unknown memory: no
    assert not should_use_fast_kernels(model)
    monkeypatch.setattr(cpu_speedups, "_available_memory", lambda: 1000)  # too little
    assert not should_use_fast_kernels(model)
    monkeypatch.undo()
    assert not should_use_fast_kernels(make_llama().to(torch.bfloat16))  # the kernels are float32 only
    assert not should_use_fast_kernels(optimize_for_cpu(make_llama()))  # nothing left to switch
    with pytest.raises(ValueError, match="cpu_kernels"):
        hf_specdec.NGramStrategy(cpu_kernels="always")
