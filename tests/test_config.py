"""Configs save, load and publish like PEFT configs; bad values are refused with a clear message."""

from __future__ import annotations

import json

import pytest

import hf_specdec
from hf_specdec.config import CONFIG_NAME, StrategyConfig

CONFIGS = [
    hf_specdec.NGramConfig(num_speculative_tokens=7, max_ngram_size=4, schedule="heuristic"),
    hf_specdec.NASDConfig(storage="onelevel", top_k_filler=5, reset_between_calls=False),
    hf_specdec.DraftModelConfig(schedule="entropy", entropy_threshold=1.5, gamma_max=8),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.strategy_type)
def test_round_trip(config, tmp_path):
    config.save_pretrained(tmp_path)
    data = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert data["strategy_type"] == config.strategy_type
    assert list(data) == sorted(data)  # sorted keys: stable diffs on the Hub
    assert StrategyConfig.from_pretrained(tmp_path) == config
    assert type(config).from_pretrained(tmp_path) == config


def test_strategy_from_pretrained(tmp_path, tiny_draft):
    hf_specdec.NGramStrategy(num_speculative_tokens=3).save_pretrained(tmp_path / "ngram")
    assert hf_specdec.NGramStrategy.from_pretrained(tmp_path / "ngram").config.num_speculative_tokens == 3
    hf_specdec.DraftModelStrategy(tiny_draft, num_speculative_tokens=2).save_pretrained(tmp_path / "draft")
    strategy = hf_specdec.DraftModelStrategy.from_pretrained(tmp_path / "draft", tiny_draft)
    assert strategy.config.num_speculative_tokens == 2 and strategy.draft_model is tiny_draft


def test_loading_the_wrong_type_or_unknown_keys_fails(tmp_path):
    hf_specdec.NGramConfig().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not 'nasd'"):
        hf_specdec.NASDConfig.from_pretrained(tmp_path)
    data = json.loads((tmp_path / CONFIG_NAME).read_text())
    data["speling_mistake"] = 1
    (tmp_path / CONFIG_NAME).write_text(json.dumps(data))
    with pytest.raises(ValueError, match="speling_mistake"):
        StrategyConfig.from_pretrained(tmp_path)


def test_push_to_hub_uploads_the_json(monkeypatch):
    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, private=None, exist_ok=False):
            calls["repo"] = repo_id

        def upload_folder(self, repo_id, folder_path, commit_message):
            from pathlib import Path

            calls["files"] = sorted(p.name for p in Path(folder_path).iterdir())
            calls["content"] = json.loads((Path(folder_path) / CONFIG_NAME).read_text())
            return "https://hub/commit/1"

    monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
    # A config alone uploads only its JSON; a strategy uploads its whole folder (tests/test_publishing.py).
    url = hf_specdec.NGramConfig(num_speculative_tokens=4).push_to_hub("me/ngram", token="t")
    assert url == "https://hub/commit/1"
    assert calls["repo"] == "me/ngram" and calls["files"] == [CONFIG_NAME]
    assert calls["content"]["num_speculative_tokens"] == 4


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: hf_specdec.NGramConfig(num_speculative_tokens=0), "num_speculative_tokens"),
        (lambda: hf_specdec.NGramConfig(schedule="entropy"), "needs a drafter with a distribution"),
        (lambda: hf_specdec.NGramConfig(schedule="fast"), "schedule must be one of"),
        (lambda: hf_specdec.NASDConfig(storage="tree"), "storage must be one of"),
        (lambda: hf_specdec.DraftModelConfig(gamma_min=5, gamma_max=2), "gamma_min"),
        (lambda: hf_specdec.DraftModelConfig(verification="magic"), "verification must be one of"),
    ],
)
def test_bad_values_are_refused(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()
