#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite offline, slow tests included.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -m "not slow"`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
VENV="${COMPRESSBENCH_VENV:-.venv}"
exec "$VENV/bin/python" -m pytest "$@"
