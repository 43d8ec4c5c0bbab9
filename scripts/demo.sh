#!/usr/bin/env bash
# Set up (idempotent) and run the offline demo on the built-in synthetic dataset with SmolLM2-135M.
# Extra arguments go to `compressbench demo` (e.g. `bash scripts/demo.sh --limit 4`); for more log
# lines run `.venv/bin/compressbench -v demo` after set-up.
# Torch CPU threads: the hf backend's default (half the usable CPUs, 1 on a 2-core machine; see
# compressbench/backends/hf.py, choose_cpu_threads), unless OMP_NUM_THREADS or
# COMPRESSBENCH_TORCH_THREADS is set.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
VENV="${COMPRESSBENCH_VENV:-.venv}"
echo "demo: compressbench demo $* (a progress line per stage follows; the README quick start says how long it takes)"
exec "$VENV/bin/compressbench" demo "$@"
