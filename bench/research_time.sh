#!/usr/bin/env bash
# Time the default `compressbench research` run (issue 20's bar: <= 8 min wall on 2 idle cores
# after set-up) and print the figures BENCHMARKS.md records: wall, CPU (user + sys), peak RSS and
# the load average before and after (the run is only comparable on an idle machine).
#
#   bash bench/research_time.sh              # a fresh run directory under $TMPDIR
#   PYTHON=.venv/bin/python THREADS=2 bash bench/research_time.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export OMP_NUM_THREADS="${THREADS:-1}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
RUNS="$(mktemp -d)"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg); OMP_NUM_THREADS=$OMP_NUM_THREADS"
/usr/bin/time -v "$PY" -m compressbench research --runs-dir "$RUNS" 2> "$RUNS/stderr.txt" | tee "$RUNS/stdout.txt"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
grep -E "Elapsed|User time|System time|Maximum resident" "$RUNS/stderr.txt"
echo "run directory: $RUNS/research"
