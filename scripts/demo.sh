#!/usr/bin/env bash
# Set up (idempotent) and run the offline demo on the built-in synthetic dataset with SmolLM2-135M.
# Extra arguments go to `compressbench demo` (e.g. `--limit 4`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
VENV="${COMPRESSBENCH_VENV:-.venv}"
exec "$VENV/bin/compressbench" demo "$@"
