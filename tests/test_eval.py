"""The evaluation suite end to end on tiny random models built in-process (`tiny-random-llama`), offline."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import yaml

import hf_specdec.engine.verification
from hf_specdec.data import Prompt
from hf_specdec.eval import main
from hf_specdec.eval.config import ModelSpec, config_from_dict, load_config
from hf_specdec.eval.loading import EvalPrompt, tiny_target
from hf_specdec.eval.methods import MethodFactory, skip_reason
from hf_specdec.eval.metrics import load_metric
from hf_specdec.eval.runner import RecordStore, first_difference, read_records
from hf_specdec.eval.sampling_test import run_sampling_test, summarise_sampling
from hf_specdec.tiny_models import SIMPLE_CHAT_TEMPLATE, byte_tokenizer

PROMPTS = [
    {"id": "code1", "category": "code", "prompt": "for i in range(10):\n    print(i)\nfor j in range(10):\n    print("},
    {"id": "prose1", "category": "writing", "prompt": "The sea is blue. The sky is blue. The sea is"},
]
METHODS = [
    {"name": "plain", "type": "plain"},
    {"name": "transformers-prompt-lookup", "type": "prompt_lookup", "num_tokens": 10},
    {"name": "ngram", "type": "ngram"},
    {"name": "nasd-onelevel", "type": "nasd", "storage": "onelevel", "top_k_filler": 2},
    {"name": "draft-k3", "type": "draft_model", "num_speculative_tokens": 3, "sweep": "draft"},
    {"name": "medusa-tree", "type": "medusa", "heads": "no/such/heads", "tree": "default"},
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one thread is ~100x faster than two on a busy 2-core machine (no spinning OpenMP workers)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Nothing may come from the Hub: the metrics load from local folders, the prompts from a local file."""
    import datasets
    import evaluate

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


def write_recipe(directory, **changes) -> str:
    prompts = directory / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(row) + "\n" for row in PROMPTS))
    recipe = {"target": {"name": "tiny-random-llama", "seed": 0}, "draft": {"name": "tiny-random-llama", "seed": 1,
              "layers": 1}, "datasets": [{"kind": "jsonl", "path": str(prompts), "name": "tiny"}],
              "decoding": {"max_new_tokens": 10}, "warmup_tokens": 4, "threads": 1, "methods": METHODS,
              "sampling_test": {"enabled": True, "num_prefixes": 1, "num_samples": 12, "num_tokens": 3}}
    recipe.update(changes)
    path = directory / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("eval")
    recipe = write_recipe(directory)
    out = directory / "out"
    with pytest.warns(UserWarning, match="skipping method 'medusa-tree'"):
        assert main(["--config", recipe, "--out", str(out), "--no-progress"]) == 0
    return recipe, out


def test_run_writes_parseable_outputs(finished_run):
    _, out = finished_run
    results = json.loads((out / "results.json").read_text())
    assert set(results["summary"]["tiny"]) == {"plain", "transformers-prompt-lookup", "ngram", "nasd-onelevel",
                                               "draft-k3"}
    assert results["meta"]["skipped"] == {"medusa-tree": "heads directory no/such/heads does not exist (train the "
                                                         "heads first)"}
    ngram = results["summary"]["tiny"]["ngram"]
    assert ngram["speedup_vs_plain"]["num_prompts"] == 2 and ngram["mean_accepted_length"] >= 1.0
    assert ngram["speedup_vs_transformers-prompt-lookup"]["speedup"] > 0
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert {r["method"] for r in rows} >= {"ngram", "medusa-tree"}
    report = (out / "report.md").read_text()
    assert "## Speed" in report and "tiny/code" in report and "code1, prose1" in report
    for name in ("speedup_by_category.png", "accepted_lengths.png", "speedup_vs_k.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_greedy_outputs_match_plain_everywhere(finished_run):
    _, out = finished_run
    results = json.loads((out / "results.json").read_text())
    for name, numbers in results["summary"]["tiny"].items():
        if name != "plain":
            assert numbers["greedy_checked"] == 2 and numbers["greedy_matches"] == 2, name
    assert results["mismatches"] == []
    assert {s["method"] for s in results["sampling_test"]} == {"transformers-prompt-lookup", "ngram",
                                                               "nasd-onelevel", "draft-k3"}
    assert all(s["passed"] for s in results["sampling_test"])
    assert {s["method"]: s["drafted_tokens_verified"] for s in results["sampling_test"]}["draft-k3"] > 0


def test_resume_skips_finished_pairs(finished_run):
    recipe, out = finished_run
    records_file = out / "records-0.jsonl"
    before = records_file.read_text().splitlines()
    assert main(["--config", recipe, "--out", str(out), "--no-progress"]) == 0  # nothing left to do
    assert records_file.read_text().splitlines() == before
    # Stop "during" the second prompt: drop its last speed record and everything after it, plus a torn line.
    speed = [i for i, line in enumerate(before) if json.loads(line)["kind"] == "speed"]
    cut = speed[-1]
    records_file.write_text("\n".join(before[:cut]) + "\n" + before[cut][:20])
    assert main(["--config", recipe, "--out", str(out), "--no-progress"]) == 0
    after = read_records(out)
    assert len(after) == len(before)
    kept = {(r["kind"], r["uid"], r["method"]): r for r in map(json.loads, before[:cut])}
    for record in after:  # finished pairs were not run again
        key = (record["kind"], record["uid"], record["method"])
        if key in kept:
            assert record == kept[key]
    assert main(["--config", recipe, "--out", str(out), "--report-only"]) == 0


def test_resume_refuses_another_recipe(finished_run, tmp_path):
    _, out = finished_run
    other = write_recipe(tmp_path, decoding={"max_new_tokens": 5})
    with pytest.raises(ValueError, match="another recipe"):
        main(["--config", other, "--out", str(out), "--no-progress"])


def broken_verify(draft_tokens, p, q=None, generator=None):
    """A deliberately wrong verifier: accepts every drafted token."""
    k = draft_tokens.shape[0]
    return k, int(torch.multinomial(p[k], 1, generator=generator))


def test_sampling_test_catches_a_broken_verifier(tmp_path, monkeypatch):
    config = config_from_dict({
        "target": "tiny-random-llama", "datasets": [{"kind": "jsonl", "path": "unused.jsonl"}],
        "methods": [{"name": "plain", "type": "plain"}, {"name": "draft", "type": "draft_model"}],
        "sampling_test": {"enabled": True, "num_samples": 100, "num_tokens": 3}})
    # Sharp target and draft that disagree: accepting every draft makes tokens 2-3 follow the draft, not the target.
    model = tiny_target(ModelSpec("tiny-random-llama", seed=0, logit_scale=40.0))
    draft = tiny_target(ModelSpec("tiny-random-llama", seed=1, layers=1, logit_scale=40.0))
    tokenizer = byte_tokenizer(SIMPLE_CHAT_TEMPLATE)
    prefix = [EvalPrompt("tiny/0", 0, Prompt("0", "tiny", "", PROMPTS[0]["prompt"]))]
    metric = load_metric("distribution_match")

    def verdict(out_dir):
        store = RecordStore(out_dir)
        run_sampling_test(model, tokenizer, MethodFactory(model, draft), prefix, config.methods, config, store,
                          show_progress=False)
        return summarise_sampling(store.records, "plain", config.sampling_test, metric)[0]

    correct = verdict(tmp_path / "ok")
    assert correct["passed"] and correct["informative_tests"] > 0 and correct["drafted_tokens_verified"] > 0, correct
    monkeypatch.setattr(hf_specdec.engine.verification, "speculative_sampling_verify", broken_verify)
    broken = verdict(tmp_path / "broken")
    assert broken["verdict"] == "FAIL" and broken["combined_p_value"] < 1e-3, broken


def test_metrics_load_offline_from_local_folders():
    speedup = load_metric("speedup")
    result = speedup.compute(predictions=[1.0, 2.0], references=[2.0, 2.0])
    assert result["speedup"] == pytest.approx(4 / 3) and result["median"] == pytest.approx(1.5)
    match = load_metric("distribution_match")
    assert match.compute(predictions=[1, 2] * 50, references=[1, 2] * 50)["p_value"] == 1.0
    assert match.compute(predictions=[1] * 90 + [2] * 10, references=[1, 2] * 50)["p_value"] < 1e-6


def test_recipe_errors_are_clear(tmp_path):
    base = {"target": "tiny-random-llama", "datasets": [{"kind": "jsonl", "path": "p.jsonl"}],
            "methods": [{"name": "plain", "type": "plain"}]}
    with pytest.raises(ValueError, match="Unknown keys for decoding"):
        config_from_dict({**base, "decoding": {"max_tokens": 3}})
    with pytest.raises(ValueError, match="Unknown keys for the recipe's top level"):
        config_from_dict({**base, "modle": "x"})
    with pytest.raises(ValueError, match="type 'plain'"):
        config_from_dict({**base, "methods": [{"name": "ngram", "type": "ngram"}]})
    config = config_from_dict({**base, "methods": base["methods"] + [{"name": "x", "type": "lookahead"}]})
    with pytest.raises(ValueError, match="unknown type 'lookahead'"):
        skip_reason(config.methods[1], config)
    config = config_from_dict({**base, "methods": base["methods"] + [{"name": "e", "type": "draft_model",
                                                                      "schedule": "entropy"}]})
    assert "draft model" in skip_reason(config.methods[1], config)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(base))
    assert load_config(path, ["decoding.max_new_tokens=7", "limit=1"]).decoding.max_new_tokens == 7


def test_first_difference():
    assert first_difference([1, 2, 3], [1, 2, 3]) is None
    assert first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert first_difference([1, 2, 3], [1, 2]) == 2


def test_default_recipes_load():
    full = load_config("recipes/eval/humaneval_mtbench.yaml")
    assert full.decoding.max_new_tokens == 128 and not full.decoding.do_sample and full.limit is None
    assert [m.name for m in full.methods][:2] == ["plain", "transformers-prompt-lookup"]
    ablation = load_config("recipes/eval/ablation.yaml")
    assert any(m.options.get("schedule") == "entropy" for m in ablation.methods)


def test_heads_key_loads_heads_for_any_strategy(tmp_path, monkeypatch):
    """`heads: <dir>` passes `<Strategy>.heads_class.from_pretrained(dir)` as the strategy's first argument."""
    from hf_specdec.eval import methods
    from hf_specdec.strategies import NGramStrategy

    class FakeHeads(torch.nn.Module):
        @classmethod
        def from_pretrained(cls, path):
            heads = cls()
            heads.path = path
            return heads

    class FakeHeadsStrategy(NGramStrategy):
        heads_class = FakeHeads

        def __init__(self, heads, **overrides):
            super().__init__(**overrides)
            self.heads = heads

    monkeypatch.setitem(methods.STRATEGIES, "fake_heads", FakeHeadsStrategy)
    (tmp_path / "heads").mkdir()
    config = config_from_dict({"target": "tiny-random-llama", "datasets": [{"kind": "jsonl", "path": "p.jsonl"}],
                               "methods": [{"name": "plain", "type": "plain"},
                                           {"name": "h", "type": "fake_heads", "heads": str(tmp_path / "heads"),
                                            "num_speculative_tokens": 3}]})
    spec = config.methods[1]
    assert skip_reason(spec, config) is None and spec.options == {"num_speculative_tokens": 3}
    factory = MethodFactory(tiny_target(ModelSpec("tiny-random-llama")))
    strategy = factory.generate_kwargs(spec)["assistant_model"]
    assert isinstance(strategy, FakeHeadsStrategy) and strategy.heads.path == str(tmp_path / "heads")
    assert strategy.config.num_speculative_tokens == 3
    assert factory.generate_kwargs(spec)["assistant_model"].heads is strategy.heads  # loaded once


def test_mismatch_reports_position_and_top2_gap(tmp_path):
    """A made-up diverging output: the record names the first differing position, and the target's top-1 token
    there is plain greedy's token (the gap is measured on plain's prefix)."""
    from hf_specdec.eval.config import MethodSpec
    from hf_specdec.eval.runner import check_prompt, encode

    model, tokenizer = tiny_target(ModelSpec("tiny-random-llama")), byte_tokenizer(SIMPLE_CHAT_TEMPLATE)
    prompt = EvalPrompt("tiny/0", 0, Prompt("0", "tiny", "", PROMPTS[1]["prompt"]))
    input_ids = encode(tokenizer, prompt.prompt.text, model.device)
    plain = model.generate(input_ids, max_new_tokens=8, do_sample=False)[0, input_ids.shape[1]:].tolist()
    wrong = plain[:5] + [(plain[5] + 1) % 256] + plain[6:]
    store = RecordStore(tmp_path)
    for name, output in (("plain", plain), ("broken", wrong)):
        store.append({"kind": "speed", "uid": prompt.uid, "method": name, "output": output})
    specs = [MethodSpec("plain", "plain"), MethodSpec("broken", "ngram")]
    check_prompt(model, input_ids, prompt, specs, "plain", store)
    record = store.find("match", prompt.uid, "broken")
    assert not record["match"] and record["position"] == 5
    assert record["top1"] == plain[5] and record["method_token"] == wrong[5] and record["logit_gap"] >= 0


def test_accelerate_launch_on_cpu_starts_two_processes(tmp_path):
    """The documented CPU command: `accelerate launch --multi_gpu --num_processes 2` (torchrun + gloo underneath)
    splits the prompts over two processes and writes one report."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    recipe = write_recipe(tmp_path, methods=METHODS[:3], sampling_test={"enabled": False})
    out = tmp_path / "out"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--main_process_port", str(port), "-m", "hf_specdec.eval", "--config", recipe, "--out", str(out),
               "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    meta = json.loads((out / "results.json").read_text())["meta"]
    assert meta["processes"] == 2 and (out / "report.md").is_file()


def test_a_distilled_draft_folder_loads_with_the_targets_shared_weights(tmp_path):
    from hf_specdec.distilled_draft import build_draft, save_draft
    from hf_specdec.eval.loading import load_draft_model

    target = tiny_target(ModelSpec("tiny-random-llama", seed=0))
    save_draft(build_draft(target, [0]), tmp_path, target, source_layers=[0])
    draft = load_draft_model(ModelSpec(str(tmp_path)), target)
    assert draft.get_input_embeddings() is target.get_input_embeddings()
    assert draft.config.num_hidden_layers == 1
