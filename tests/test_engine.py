"""The one step engine: a batch of one and a batch of four run the same step, the loop reads the device at most 3
times per step (greedy, batch of one), owned modules are moved to the target's device, and models or setups it
cannot serve exactly are refused with the reason."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoConfig, AutoModelForCausalLM

import hf_specdec
import hf_specdec.engine.loop
from conftest import VOCAB, draft_strategy, make_llama, repetitive_prompt
from hf_specdec.medusa_heads import MedusaHeads, MedusaHeadsConfig

SYNC_OPS = ("aten._local_scalar_dense", "aten.nonzero", "aten.item", "aten.is_nonzero")


class HostReads(TorchDispatchMode):
    """Counts tensor-to-Python conversions: `.item()`, `int()`, `bool()`, `nonzero` (each waits for the device) and
    `Tensor.tolist`, which does not dispatch and is counted by a patch."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if any(name in str(func) for name in SYNC_OPS):
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.fixture
def count_host_reads(monkeypatch):
    """Counts host reads inside the loop only (generate's own preparation is not ours)."""
    reads = HostReads()
    original_decode, original_tolist = hf_specdec.engine.loop.decode, torch.Tensor.tolist

    def counted_tolist(tensor):
        reads.count += 1
        return original_tolist(tensor)

    def decode(*args, **kwargs):
        with reads:
            monkeypatch.setattr(torch.Tensor, "tolist", counted_tolist)
            try:
                return original_decode(*args, **kwargs)
            finally:
                monkeypatch.setattr(torch.Tensor, "tolist", original_tolist)

    monkeypatch.setattr(hf_specdec.engine.loop, "decode", decode)
    return reads


@pytest.mark.parametrize("make_strategy", [
    lambda draft: hf_specdec.NGramStrategy(skip_unprofitable_drafts=False),
    lambda draft: draft_strategy(draft, num_speculative_tokens=4),
], ids=["ngram", "draft_model"])
def test_at_most_three_host_reads_per_step_greedy(count_host_reads, tiny_llama, tiny_draft, make_strategy):
    strategy = make_strategy(tiny_draft)
    prompt = repetitive_prompt(3)
    out = tiny_llama.generate(prompt, attention_mask=torch.ones_like(prompt), assistant_model=strategy,
                              max_new_tokens=40, do_sample=False)
    assert torch.equal(out, tiny_llama.generate(prompt, max_new_tokens=40, do_sample=False))
    steps = strategy.last_stats.verify_steps
    assert strategy.last_stats.drafted > 0 and steps >= 5
    # the prefill and the rows' set-up may read a few more, once per call
    print(f"host reads: {count_host_reads.count} over {steps} steps")
    assert count_host_reads.count <= 3 * steps + 4, (count_host_reads.count, steps)


def test_a_batch_of_one_and_a_batch_of_four_run_the_same_step(monkeypatch, tiny_llama):
    calls = []
    original = hf_specdec.engine.loop.step

    def step(run, rows, *args):
        calls.append(len(rows))
        return original(run, rows, *args)

    monkeypatch.setattr(hf_specdec.engine.loop, "step", step)
    prompt = repetitive_prompt(4)
    strategy = hf_specdec.NGramStrategy(skip_unprofitable_drafts=False)
    tiny_llama.generate(prompt, assistant_model=strategy, max_new_tokens=12, do_sample=False)
    tiny_llama.generate(prompt.repeat(4, 1), assistant_model=strategy, max_new_tokens=12, do_sample=False)
    assert 1 in calls and 4 in calls


def test_heads_are_moved_to_the_targets_device_in_begin(monkeypatch, tiny_llama):
    heads = MedusaHeads(MedusaHeadsConfig(hidden_size=32, vocab_size=VOCAB, num_heads=2))
    moved = []
    original_to = MedusaHeads.to

    def to(self, *args, **kwargs):
        moved.append(kwargs.get("device", args[0] if args else None))
        return original_to(self, *args, **kwargs)

    monkeypatch.setattr(MedusaHeads, "to", to)
    tiny_llama.generate(repetitive_prompt(1), assistant_model=hf_specdec.MedusaStrategy(heads), max_new_tokens=3)
    assert moved and all(torch.device(device) == tiny_llama.device for device in moved)


def test_a_draft_vocabulary_built_elsewhere_moves_to_the_drafts_device(monkeypatch, tiny_llama, tiny_draft):
    vocab = torch.arange(0, VOCAB, 2)
    targets = []

    class Elsewhere(torch.Tensor):  # a vocabulary "on another device": records where it is asked to go
        def to(self, *args, **kwargs):
            targets.append(args[0] if args else kwargs.get("device"))
            return vocab

    monkeypatch.setattr(hf_specdec.strategies.draft_model, "carried_draft_vocab",
                        lambda draft: vocab.as_subclass(Elsewhere))
    strategy = draft_strategy(tiny_draft)
    tiny_llama.generate(repetitive_prompt(1), assistant_model=strategy, max_new_tokens=3)
    assert targets == [tiny_draft.device]


def test_flash_attention_gets_a_clear_refusal_for_batches(tiny_llama, monkeypatch):
    monkeypatch.setattr(type(tiny_llama.config), "_attn_implementation", "flash_attention_2", raising=False)
    prompt = repetitive_prompt(2).repeat(2, 1)
    with pytest.raises(ValueError, match="attn_implementation='sdpa'"):
        tiny_llama.generate(prompt, assistant_model=hf_specdec.NGramStrategy(), max_new_tokens=3)


def tiny_model(model_type: str, **sizes):
    config = AutoConfig.for_model(model_type)
    defaults = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    intermediate_size=64, vocab_size=VOCAB, head_dim=8, mamba_d_ssm=32, mamba_n_heads=4,
                    mamba_d_head=8, mamba_d_state=8, state_size=8, mamba_chunk_size=16)
    for key, value in {**defaults, **sizes}.items():
        if hasattr(config, key):
            setattr(config, key, value)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("model_type", ["falcon_h1", "zaya", "mamba"])
def test_models_with_a_recurrent_state_are_refused_with_the_reason(model_type):
    """falcon_h1 and zaya cache a recurrent (SSM) state beside their keys and values in a DynamicLayer subclass;
    `crop` rolled back only the keys, so their output silently differed after a rejected draft."""
    model = tiny_model(model_type)
    with pytest.raises(ValueError, match="recurrent state .* cannot be rolled back"):
        model.generate(torch.tensor([[5, 6, 7, 8, 5, 6, 7]]), assistant_model=hf_specdec.NGramStrategy(),
                       max_new_tokens=5, do_sample=False)


def test_a_cache_layer_that_keeps_a_recurrent_state_is_refused(tiny_llama):
    from transformers.cache_utils import DynamicCache, LinearAttentionAndFullAttentionLayer

    cache = DynamicCache(config=tiny_llama.config)
    cache.layers[0] = LinearAttentionAndFullAttentionLayer()
    with pytest.raises(ValueError, match="recurrent state"):
        hf_specdec.engine.check_cache(cache)


def test_a_recurrent_draft_is_refused(tiny_llama):
    draft = tiny_model("mamba")
    with pytest.raises(ValueError, match="pure-attention draft"):
        tiny_llama.generate(repetitive_prompt(1), assistant_model=draft_strategy(draft), max_new_tokens=3)
