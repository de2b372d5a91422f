"""hf_specdec's modules import each other without circles (scripts/import_cycles.py, function-level imports too)."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _checker():
    spec = importlib.util.spec_from_file_location("import_cycles", ROOT / "scripts" / "import_cycles.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclass-free, but `from __future__ import annotations` wants a module entry
    spec.loader.exec_module(module)
    return module


def test_no_import_circle_in_hf_specdec():
    cycles = _checker().import_cycles(ROOT / "hf_specdec")
    assert cycles == [], f"import circles (break them by moving the shared code into the module that owns it): {cycles}"


def test_checker_finds_a_circle_through_a_function_level_import(tmp_path):
    """The check itself can fail: a circle closed only inside a function is still a circle; TYPE_CHECKING is not."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .b import f\n")
    (package / "b.py").write_text("def f():\n    from .a import g\n")
    (package / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import x\n")
    (package / "d.py").write_text("from . import c\n")
    (package / "e.py").write_text("from pkg import d\n")
    checker = _checker()
    assert checker.import_cycles(package) == [["pkg.a", "pkg.b"]]
    (package / "c.py").write_text("from .e import x\n")  # c -> e -> d -> c, through `from pkg import d`
    assert sorted(checker.import_cycles(package)) == [["pkg.a", "pkg.b"], ["pkg.c", "pkg.d", "pkg.e"]]
