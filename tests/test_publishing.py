"""Strategy folders: `custom_generate` runs them without importing hf_specdec, `AutoStrategy` loads them, the Hub
upload sends the folder, and a folder made for another target is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import make_llama, repetitive_prompt
from test_medusa import make_heads

import hf_specdec
from hf_specdec.config import CONFIG_NAME
from hf_specdec.publishing import TARGET_FILE

NEW_TOKENS = 24


def strategies(model, draft) -> dict[str, hf_specdec.SpeculativeStrategy]:
    return {
        "ngram": hf_specdec.NGramStrategy(num_speculative_tokens=4),
        "nasd": hf_specdec.NASDStrategy(storage="onelevel", top_k_filler=2),
        "medusa": hf_specdec.MedusaStrategy(make_heads(model, num_heads=3, seed=3), tree="default"),
        "hydra": hf_specdec.MedusaStrategy(make_heads(model, num_heads=3, seed=4, conditioned=True), tree="dynamic"),
        "draft_model": hf_specdec.DraftModelStrategy(draft, num_speculative_tokens=3),
    }


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_llama, tiny_draft):
    """Each strategy's greedy output in process, and its folder saved after that call."""
    root = tmp_path_factory.mktemp("strategies")
    prompt = repetitive_prompt(7)
    results = {}
    for name, strategy in strategies(tiny_llama, tiny_draft).items():
        output = tiny_llama.generate(prompt, max_new_tokens=NEW_TOKENS, do_sample=False, assistant_model=strategy)
        strategy.save_pretrained(root / name)
        results[name] = (root / name, strategy, output[0].tolist())
    tiny_llama.save_pretrained(root / "target")
    return root, prompt, results


def test_folder_layout_and_model_card(saved):
    _, _, results = saved
    folder, strategy, _ = results["medusa"]
    names = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert {CONFIG_NAME, TARGET_FILE, "config.json", "model.safetensors", "README.md", "custom_generate/generate.py",
            "custom_generate/requirements.txt"} <= names
    assert (folder / "custom_generate/requirements.txt").read_text().startswith("hf_specdec")
    card = (folder / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: transformers" in card and "custom_generate" in card
    assert "mean accepted length (latest call)" in card  # measured numbers of the call before saving
    # honest about what the folder needs: hf_specdec installed, from source (no index serves it); no placeholder
    assert "not on PyPI" in card and "pip install hf_specdec" not in card and "its target" not in card
    assert "hf_specdec" in (folder / "custom_generate/generate.py").read_text()
    assert (results["draft_model"][0] / "draft" / "config.json").is_file()


@pytest.mark.parametrize("name", ["ngram", "nasd", "medusa", "hydra", "draft_model"])
def test_auto_strategy_loads_the_same_strategy(saved, tiny_llama, name):
    _, prompt, results = saved
    folder, original, expected = results[name]
    loaded = hf_specdec.AutoStrategy.from_pretrained(folder)
    assert type(loaded) is type(original) and loaded.config == original.config
    output = tiny_llama.generate(prompt, max_new_tokens=NEW_TOKENS, do_sample=False, assistant_model=loaded)
    assert output[0].tolist() == expected


def test_custom_generate_runs_every_folder_without_importing_hf_specdec(saved, tmp_path):
    """A fresh interpreter that never imports hf_specdec itself: Transformers loads custom_generate/generate.py."""
    root, prompt, results = saved
    script = textwrap.dedent(f"""
        import json, sys
        import torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(root / "target")!r}).eval()
        widths = []  # tokens per target forward: > 1 after the prefill only when drafts are verified
        model.register_forward_pre_hook(lambda m, a, kw: widths.append(kw["input_ids"].shape[1]), with_kwargs=True)
        prompt = torch.tensor({prompt.tolist()!r})
        assert "hf_specdec" not in sys.modules
        outputs = {{}}
        for name in {sorted(results)!r}:
            widths.clear()
            out = model.generate(prompt, max_new_tokens={NEW_TOKENS}, do_sample=False,
                                 custom_generate={str(root)!r} + "/" + name, trust_remote_code=True)
            outputs[name] = [out[0].tolist(), max(widths[1:])]
        print(json.dumps(outputs))
    """)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    outputs = json.loads(done.stdout.strip().splitlines()[-1])
    assert {name: tokens for name, (tokens, _) in outputs.items()} == {n: r[2] for n, r in results.items()}
    assert all(widest > 1 for _, widest in outputs.values())  # drafts were verified: our loop ran


def test_custom_generate_finds_a_moved_folder(saved, tmp_path, tiny_llama):
    """The folder is found from the `custom_generate=` argument, not from where it was first saved."""
    import shutil

    _, prompt, results = saved
    moved = tmp_path / "moved-ngram"
    shutil.copytree(results["ngram"][0], moved)
    out = tiny_llama.generate(prompt, max_new_tokens=NEW_TOKENS, do_sample=False, custom_generate=str(moved),
                              trust_remote_code=True)
    assert out[0].tolist() == results["ngram"][2]


def test_a_folder_for_another_target_is_refused(saved, tiny_llama):
    _, prompt, results = saved
    strategy = hf_specdec.AutoStrategy.from_pretrained(results["ngram"][0])
    other = make_llama(layers=3)
    with pytest.raises(ValueError, match=r"made for .*num_hidden_layers 2 \(this target: 3\)"):
        other.generate(prompt, max_new_tokens=4, assistant_model=strategy)
    assert tiny_llama.generate(prompt, max_new_tokens=4, assistant_model=strategy).shape[1] == prompt.shape[1] + 4


def test_push_to_hub_uploads_the_folder_with_weights(monkeypatch, tiny_llama):
    uploaded = {}

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private=None, exist_ok=False):
            uploaded["repo"] = repo_id

        def upload_folder(self, repo_id, folder_path, commit_message):
            folder = Path(folder_path)
            uploaded["files"] = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
            uploaded["generate.py"] = (folder / "custom_generate" / "generate.py").read_text()
            uploaded["card"] = (folder / "README.md").read_text()
            return "https://hub/commit/2"

    monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
    strategy = hf_specdec.MedusaStrategy(make_heads(tiny_llama, num_heads=2))
    url = strategy.push_to_hub("me/tiny-medusa", target=tiny_llama, base_model="org/tiny-llama")
    assert url == "https://hub/commit/2" and uploaded["repo"] == "me/tiny-medusa"
    assert {"model.safetensors", "config.json", CONFIG_NAME, TARGET_FILE, "custom_generate/generate.py",
            "custom_generate/requirements.txt", "README.md"} <= uploaded["files"]
    assert "REPO_ID = 'me/tiny-medusa'" in uploaded["generate.py"]
    assert "base_model: org/tiny-llama" in uploaded["card"] and 'from_pretrained("me/tiny-medusa")' in uploaded["card"]


def test_draft_pointer_instead_of_weights(tmp_path, tiny_draft):
    tiny_draft.save_pretrained(tmp_path / "draft-src")
    draft = type(tiny_draft).from_pretrained(tmp_path / "draft-src")
    hf_specdec.DraftModelStrategy(draft).save_pretrained(tmp_path / "s", include_draft=False)
    assert not (tmp_path / "s" / "draft").exists()
    loaded = hf_specdec.AutoStrategy.from_pretrained(tmp_path / "s")
    assert torch.equal(loaded.draft_model.lm_head.weight, tiny_draft.lm_head.weight)
    hf_specdec.NGramStrategy().save_pretrained(tmp_path / "n")
    with pytest.raises(ValueError, match="not 'draft_model'"):
        hf_specdec.DraftModelStrategy.from_pretrained(tmp_path / "n")


@pytest.mark.parametrize("bad", ["ngram", 3])
def test_unknown_assistant_model_is_explained(tiny_llama, bad):
    prompt = repetitive_prompt(1)
    with pytest.raises(TypeError, match="accepts an hf_specdec strategy") as info:
        tiny_llama.generate(prompt, max_new_tokens=2, assistant_model=bad)
    assert ("AutoStrategy.from_pretrained('ngram')" in str(info.value)) == isinstance(bad, str)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["medusa-smollm2-135m", "hydra-smollm2-135m"])
def test_committed_folders_run_on_the_real_target(name):
    """heads/* are strategy folders: AutoStrategy and custom_generate both give plain generate's tokens."""
    from hf_specdec.data import load_humaneval
    from hf_specdec.models import load_smollm2, load_smollm2_tokenizer

    folder = Path(__file__).resolve().parents[1] / "heads" / name
    model, tokenizer = load_smollm2(), load_smollm2_tokenizer()
    prompt = tokenizer(load_humaneval(limit=1)[0].text, return_tensors="pt").input_ids
    expected = model.generate(prompt, max_new_tokens=32, do_sample=False)
    strategy = hf_specdec.AutoStrategy.from_pretrained(folder)
    assert isinstance(strategy, hf_specdec.MedusaStrategy) and strategy.config.lookup_min_ngram == 2
    assert torch.equal(model.generate(prompt, max_new_tokens=32, do_sample=False, assistant_model=strategy), expected)
    assert strategy.last_stats.mean_accepted_length > 1.2
    out = model.generate(prompt, max_new_tokens=32, do_sample=False, custom_generate=str(folder),
                         trust_remote_code=True)
    assert torch.equal(out, expected)
    assert hf_specdec.AutoStrategy.for_model(model).heads.config.token_conditioned  # Hydra: the fastest measured


def test_auto_strategy_downloads_a_hub_repo_snapshot(monkeypatch, saved):
    """A repo id (not a local folder) goes through `huggingface_hub.snapshot_download` (faked here, offline)."""
    _, _, results = saved
    asked = []

    def fake_snapshot_download(repo_id, **kwargs):
        asked.append(repo_id)
        return str(results["nasd"][0])

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot_download)
    strategy = hf_specdec.AutoStrategy.from_pretrained("me/tiny-nasd")
    assert asked == ["me/tiny-nasd"] and isinstance(strategy, hf_specdec.NASDStrategy)


def test_for_model_picks_a_folder_made_for_the_model_else_ngram(saved, tiny_llama):
    root, _, results = saved
    assert type(hf_specdec.AutoStrategy.for_model(make_llama(layers=3))) is hf_specdec.NGramStrategy
    found = hf_specdec.AutoStrategy.for_model(tiny_llama, search=[results["hydra"][0]])
    assert isinstance(found, hf_specdec.MedusaStrategy) and found.config.tree == "dynamic"
