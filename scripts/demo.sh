#!/usr/bin/env bash
# The main job from a fresh clone: install what is missing (skipped when installed), then `hf-specdec demo`
# (arguments pass through, e.g. `scripts/demo.sh --code 4 --prose 4`). Writes results/demo.png.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec python -m hf_specdec.cli demo "$@"
