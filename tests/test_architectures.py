"""The architecture sweep (hf_specdec.arch_sweep): every causal LM type Transformers registers, built tiny and random,
gives plain generate's output or a refusal that names its reason, with each strategy and in a padded batch; never a
crash, never a different answer.

The default suite runs a representative subset (one or two types per family and per refusal cause); the full sweep
is marked slow (`pytest -m slow tests/test_architectures.py`)."""

from __future__ import annotations

import pytest

from hf_specdec import arch_sweep

# One or two per family: dense, MoE, sliding-window, compressed-attention, BERT-style, encoder-decoder decoders,
# stateful / recurrent (refused), no-cache (refused). falcon_h1 (15 s of plain generate on its SSM path) is left
# to the slow sweep.
REPRESENTATIVE = ("llama", "gpt2", "bloom", "gpt_neox", "mistral", "gemma2", "qwen3_moe", "deepseek_v3", "bert",
                  "bart", "pegasus", "mpt", "mamba", "minimax", "xlm", "git", "moshi")

# `unbuilt`: the type's tiny config could not be built generically, or plain generate itself fails on it; listed with
# the reason (python -m hf_specdec.arch_sweep), not a failure of hf_specdec.
GOOD = {"identical", "refused", "unbuilt"}
CASES_ALL = arch_sweep.CASES
SINGLE = ("ngram", "nasd", "draft")

# Types that must not be refused (a refusal there would be a regression in reach, which `check` alone accepts).
MUST_BE_IDENTICAL = {"llama": CASES_ALL, "gpt2": CASES_ALL, "gpt_neox": CASES_ALL, "deepseek_v3": CASES_ALL,
                     "qwen3_moe": CASES_ALL, "mistral": SINGLE, "gemma2": SINGLE, "moshi": SINGLE, "bart": SINGLE}


def check(model_type: str, outcomes: dict) -> None:
    bad = {case: outcome for case, outcome in outcomes.items() if outcome.status not in GOOD}
    assert not bad, f"{model_type}: {bad}"
    for case, outcome in outcomes.items():
        if outcome.status in ("refused", "unbuilt"):
            assert len(outcome.detail) > 30, f"{model_type} {case}: a refusal must say why: {outcome.detail!r}"


@pytest.mark.parametrize("model_type", [t for t in REPRESENTATIVE if t not in MUST_BE_IDENTICAL])
def test_representative_architecture(model_type: str) -> None:
    check(model_type, arch_sweep.sweep_type(model_type))


@pytest.mark.slow
def test_every_registered_architecture() -> None:
    results = arch_sweep.sweep(arch_sweep.all_types(), jobs=2, timeout=120.0)
    failures = []
    for model_type, outcomes in results.items():
        try:
            check(model_type, outcomes)
        except AssertionError as error:
            failures.append(str(error))
    assert not failures, "\n".join(failures) + "\n" + arch_sweep.summary(results)


@pytest.mark.parametrize("model_type", sorted(MUST_BE_IDENTICAL))
def test_supported_families_stay_supported(model_type: str) -> None:
    outcomes = arch_sweep.sweep_type(model_type, MUST_BE_IDENTICAL[model_type])
    assert all(o.status == "identical" for o in outcomes.values()), outcomes
