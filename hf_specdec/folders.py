"""Where saved folders are found and how their JSON files are read, with errors that name the path.

This module imports nothing from hf_specdec, so every other module may use it without forming an import circle.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

# The source tree's root: `heads/...` folders committed with the repository live under it.
SOURCE_ROOT = Path(__file__).resolve().parents[1]


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


def resolve_folder(path_or_repo_id: str | os.PathLike, **hub_kwargs: Any) -> Path:
    """A local folder as it is; a relative `heads/...` path from any working directory (the committed folders);
    else a snapshot of the Hub repo (`huggingface_hub.snapshot_download`). A name that can only be a path and is
    no folder is refused here, before any network call."""
    path = Path(os.fspath(path_or_repo_id)).expanduser()
    if path.is_dir():
        return path
    if not path.is_absolute() and (committed := find_committed(path)) is not None:
        return committed
    if path.exists():
        raise ValueError(f"{os.fspath(path_or_repo_id)!r} is a file, not a folder: pass the folder it was saved to.")
    if looks_local(path_or_repo_id):
        raise FileNotFoundError(f"No such local folder: {os.fspath(path_or_repo_id)!r} (looked under {Path.cwd()} "
                                f"and {SOURCE_ROOT}). Pass the folder save_pretrained wrote, or a Hub repo id "
                                "'owner/name'.")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(path_or_repo_id), **hub_kwargs))
    except Exception as error:  # HFValidationError, offline and not-found errors all mean the same to the caller
        raise FileNotFoundError(f"{os.fspath(path_or_repo_id)!r} is no local folder (looked under {Path.cwd()} and "
                                f"{SOURCE_ROOT}) and could not be fetched as a Hub repo ({type(error).__name__}: "
                                f"{str(error).splitlines()[0] if str(error) else ''}). Pass the folder "
                                "save_pretrained wrote, or a Hub repo id 'owner/name'.") from error


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
