#!/usr/bin/env bash
# The tests from a fresh clone: install what is missing (skipped when installed), then README's test command
# (arguments pass to pytest, e.g. `scripts/test.sh tests/test_cli.py`). .ci/run calls this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec python -m pytest -q "$@"
