"""README's two commands, the Makefile, the scripts and .ci/run say the same thing."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _commands(text: str) -> list[str]:
    return [line.split("#")[0].strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_commands_are_the_make_targets_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Setup, main job, tests\n\n```bash\n(.*?)```", readme, re.S).group(1)
    assert _commands(block) == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert "demo:" in makefile and "\tbash scripts/demo.sh" in makefile
    assert "test:" in makefile and "\tbash scripts/test.sh" in makefile
    for script in ("demo.sh", "test.sh"):
        assert "bash scripts/install.sh" in (ROOT / "scripts" / script).read_text()
    assert _commands((ROOT / "scripts" / "test.sh").read_text())[-1] == 'exec python -m pytest -q "$@"'
    assert _commands((ROOT / ".ci" / "run").read_text())[-2:] == ["bash scripts/install.sh", "bash scripts/test.sh"]


def test_install_script_skips_itself_when_done():
    text = (ROOT / "scripts" / "install.sh").read_text()
    assert "already installed" in text and "FORCE" in text and "STAMP" in text
    assert "/.install-stamp" in (ROOT / ".gitignore").read_text().splitlines()
