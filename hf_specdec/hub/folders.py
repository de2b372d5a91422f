"""Where saved folders are found and how their JSON files are read, with errors that name the path.

This module imports nothing from hf_specdec, so every other module may use it without forming an import circle.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

# The source tree's root: `heads/...` folders committed with the repository live under it.
SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the repository root: this file is hf_specdec/hub/folders.py


def find_committed(relative: str | os.PathLike) -> Path | None:
    """A folder committed with the repo (e.g. `heads/...`), under the working directory or the source tree."""
    for root in (Path.cwd(), SOURCE_ROOT):
        if (root / relative).is_dir():
            return root / relative
    return None


def looks_local(path_or_repo_id: str | os.PathLike) -> bool:
    """Whether the name can only be a local path: a Hub repo id is `name` or `owner/name`, never absolute, never
    with `.`/`..` parts, never with more than one slash."""
    text = os.fspath(path_or_repo_id)
    parts = Path(text).parts
    return (isinstance(path_or_repo_id, Path) or Path(text).is_absolute() or text.startswith(("~", "."))
            or len(parts) > 2 or any(p in (".", "..") for p in parts) or "\\" in text)


def local_folder(path_or_repo_id: str | os.PathLike) -> Path | None:
    """The local folder the name means (as given, or a relative `heads/...` path found from any working directory);
    None when it can be a Hub repo id. A name that can only be a path and is no folder is refused here, before any
    network call, with "No such local folder" rather than the Hub client's repo-id validation error."""
    path = Path(os.fspath(path_or_repo_id)).expanduser()
    if path.is_dir():
        return path
    if not path.is_absolute() and (committed := find_committed(path)) is not None:
        return committed
    if path.exists():
        raise NotADirectoryError(f"{os.fspath(path_or_repo_id)!r} is a file, not a folder: pass the folder it was "
                                 "saved to.")
    if looks_local(path_or_repo_id):
        raise FileNotFoundError(f"No such local folder: {os.fspath(path_or_repo_id)!r}{_where_looked(path)}. Pass "
                                "the folder save_pretrained wrote, or a Hub repo id 'owner/name'.")
    return None


def _where_looked(path: Path) -> str:
    if path.is_absolute():
        return ""
    roots = dict.fromkeys([Path.cwd(), SOURCE_ROOT])  # the same folder once when run from the source tree
    return f" (looked under {' and '.join(map(str, roots))})"


def from_hub(path_or_repo_id: str | os.PathLike, fetch):
    """`fetch()` (a Hub download), its failure reworded: the name was no local folder either, so say both."""
    try:
        return fetch()
    except Exception as error:  # HFValidationError, offline and not-found errors all mean the same to the caller
        first_line = str(error).splitlines()[0] if str(error) else ""
        raise FileNotFoundError(f"No such local folder: {os.fspath(path_or_repo_id)!r}"
                                f"{_where_looked(Path(os.fspath(path_or_repo_id)))}, and no Hub repo by that name could be fetched "
                                f"({type(error).__name__}: {first_line}). Pass the folder save_pretrained wrote, or "
                                "a Hub repo id 'owner/name' while online.") from error


def resolve_folder(path_or_repo_id: str | os.PathLike, **hub_kwargs: Any) -> Path:
    """A local folder (see `local_folder`), else a snapshot of the Hub repo (`huggingface_hub.snapshot_download`)."""
    folder = local_folder(path_or_repo_id)
    if folder is not None:
        return folder
    from huggingface_hub import snapshot_download

    return Path(from_hub(path_or_repo_id, lambda: snapshot_download(str(path_or_repo_id), **hub_kwargs)))


def read_json(path: str | os.PathLike) -> Any:
    """`json.loads` of a file, with the file's path in the error when it is missing or not valid JSON."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing: the folder is incomplete; save it again with "
                                "save_pretrained.") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); it is damaged: restore it or save the folder "
                         "again with save_pretrained.") from error
