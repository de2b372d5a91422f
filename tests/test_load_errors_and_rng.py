"""What a newcomer meets first: load errors that name the folder or file and the fix, `heads/...` found from any
working directory, and building or loading a strategy that leaves the caller's random state alone."""

from __future__ import annotations

import shutil

import pytest
import torch
from test_medusa import make_heads

import hf_specdec
from hf_specdec.config import CONFIG_NAME, StrategyConfig
from hf_specdec.distilled_draft import load_draft
from hf_specdec.eagle_drafter import EagleDrafter
from hf_specdec.folders import SOURCE_ROOT, resolve_folder
from hf_specdec.medusa_heads import MedusaHeads


@pytest.fixture(scope="module")
def medusa_folder(tmp_path_factory, tiny_llama):
    folder = tmp_path_factory.mktemp("saved") / "medusa"
    hf_specdec.MedusaStrategy(make_heads(tiny_llama, num_heads=3, seed=3)).save_pretrained(folder, target=tiny_llama)
    return folder


LOADERS = {
    "AutoStrategy": hf_specdec.AutoStrategy.from_pretrained,
    "MedusaStrategy": hf_specdec.MedusaStrategy.from_pretrained,
    "StrategyConfig": StrategyConfig.from_pretrained,
    "MedusaHeads": MedusaHeads.from_pretrained,
    "EagleDrafter": EagleDrafter.from_pretrained,
}


@pytest.mark.parametrize("loader", sorted(LOADERS))
@pytest.mark.parametrize("name", ["does/not/exist", "./missing", "/no/such/folder"])
def test_a_missing_local_folder_is_named_not_sent_to_the_hub(loader, name):
    with pytest.raises(FileNotFoundError, match="No such local folder") as caught:
        LOADERS[loader](name)
    assert name in str(caught.value) and "save_pretrained" in str(caught.value)


def test_a_name_that_could_be_a_repo_id_says_both_when_offline(monkeypatch):
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("check your internet connection")

    monkeypatch.setattr("huggingface_hub.snapshot_download", offline)
    with pytest.raises(FileNotFoundError, match="No such local folder: 'me/nothing'.*no Hub repo"):
        hf_specdec.AutoStrategy.from_pretrained("me/nothing")


@pytest.mark.parametrize("file", [CONFIG_NAME, "config.json"])
def test_a_corrupt_json_file_is_named(medusa_folder, tmp_path, tiny_llama, file):
    broken = tmp_path / "broken"
    shutil.copytree(medusa_folder, broken)
    (broken / file).write_text("{not json")
    loaders = [hf_specdec.AutoStrategy.from_pretrained, hf_specdec.MedusaStrategy.from_pretrained]
    loaders += [MedusaHeads.from_pretrained] if file == "config.json" else [StrategyConfig.from_pretrained]
    for load in loaders:
        with pytest.raises(ValueError, match="is not valid JSON") as caught:
            load(broken)
        assert str(broken / file) in str(caught.value)
    with pytest.raises(ValueError, match="is not valid JSON"):  # through Transformers' custom_generate loader
        tiny_llama.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=2, custom_generate=str(broken),
                            trust_remote_code=True)


def test_a_missing_weights_file_is_named(medusa_folder, tmp_path):
    broken = tmp_path / "no-weights"
    shutil.copytree(medusa_folder, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="lacks model.safetensors"):
        hf_specdec.AutoStrategy.from_pretrained(broken)


def test_a_draft_folder_is_not_taken_for_a_strategy_folder(tmp_path):
    (tmp_path / "hf_specdec_draft.json").write_text("{}")
    with pytest.raises(ValueError, match="distilled draft.*load_draft"):
        hf_specdec.AutoStrategy.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="No such local folder"):
        load_draft(tmp_path / "nope", None)


def test_committed_heads_are_found_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_folder("heads/hydra-smollm2-135m") == SOURCE_ROOT / "heads" / "hydra-smollm2-135m"
    assert StrategyConfig.from_pretrained("heads/hydra-smollm2-135m").strategy_type == "medusa"


def _sample(model) -> list[int]:
    out = model.generate(torch.tensor([[1, 2, 3, 4]]), max_new_tokens=12, do_sample=True, top_k=0)
    return out[0].tolist()


@pytest.mark.parametrize("build", ["for_model", "AutoStrategy", "MedusaHeads", "EagleStrategy"])
def test_building_a_strategy_leaves_the_random_state_alone(build, medusa_folder, tmp_path, tiny_llama):
    """Same seed, same sample, whether or not a strategy was built or loaded in between."""
    eagle_folder = tmp_path / "eagle"
    if build == "EagleStrategy":
        from hf_specdec.eagle_drafter import EagleDrafterConfig

        drafter = EagleDrafter(EagleDrafterConfig.for_target(tiny_llama.config))
        hf_specdec.EagleStrategy(drafter).save_pretrained(eagle_folder, target=tiny_llama)
    builders = {
        "for_model": lambda: hf_specdec.AutoStrategy.for_model(tiny_llama, search=[medusa_folder]),
        "AutoStrategy": lambda: hf_specdec.AutoStrategy.from_pretrained(medusa_folder),
        "MedusaHeads": lambda: MedusaHeads.from_pretrained(medusa_folder),
        "EagleStrategy": lambda: hf_specdec.EagleStrategy.from_pretrained(eagle_folder),
    }
    torch.manual_seed(0)
    expected = _sample(tiny_llama)
    torch.manual_seed(0)
    builders[build]()
    assert _sample(tiny_llama) == expected
