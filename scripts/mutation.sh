#!/usr/bin/env bash
# Mutation testing of the numeric core with mutmut (offline; not part of CI: minutes per module).
#
#   bash scripts/mutation.sh MODULE|all      MODULE: mi scoring metrics cost stats report
#                                            predict_loglik known_info
#   bash scripts/mutation.sh --survivors MODULE   after adding tests: rerun only the mutants that
#                                                 survived the last full run of MODULE
#
# For each module: a fresh scratch copy of the package and the tests under .mutation/<module>/
# (git-ignored), mutmut configured there (setup.cfg) to mutate that one file and to run only its
# fast tests, then `mutmut run`. Every mutant is a small change to the code (an operator, a
# constant, an argument); it is "killed" when at least one test fails on it. Printed at the end,
# and written to .mutation/<module>/summary.txt: killed / total and every surviving mutant with
# its diff (.mutation/<module>/survivors.txt). TESTING.md records the figures and which
# survivors are equivalent (no test can tell them from the original code) and why.
#
# JOBS (default 2) sets mutmut's parallel workers. Wall and CPU seconds are in the summary (on a
# shared machine the CPU seconds are the figure to compare). Needs the `mutation` extra (mutmut); the
# venv is COMPRESSBENCH_VENV or .venv, like scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV="${COMPRESSBENCH_VENV:-.venv}"
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac
MUTMUT="$VENV/bin/mutmut"
JOBS="${JOBS:-2}"
MODULES=(mi scoring metrics cost stats report predict_loglik known_info)

usage() {
  echo "usage: bash scripts/mutation.sh MODULE|all   (MODULE: ${MODULES[*]})" >&2
  exit 2
}
[ $# -eq 1 ] || { [ $# -eq 2 ] && [ "$1" = --survivors ]; } || usage
if [ ! -x "$MUTMUT" ]; then
  echo "mutmut is not installed in $VENV; run: $VENV/bin/pip install -e '.[mutation]'" >&2
  exit 2
fi

# The fast tests that exercise each module (the tests mutmut may run against its mutants), and
# which of the module's functions to mutate (a mutmut name pattern; report.py: the tables it builds,
# cost rows, identity ratios and scorer agreement; its statistics are in core/stats.py).
# Of those tests, the ones marked `slow` or `torch` are left out (-m "not slow and not torch"):
# tests/conftest.py marks every test that uses a torch-model fixture. mutmut forks its workers and
# torch hangs in a forked child (seen with cost.py: workers waiting forever at 0% CPU, which
# mutmut's CPU-time limit never stops); those tests still run in CI.
path_for() {  # the module's file, relative to the repository root
  case "$1" in
    known_info) echo "compressbench/data/known_info.py" ;;
    stats) echo "compressbench/core/stats.py" ;;
    report) echo "compressbench/analysis/report.py" ;;
    *) echo "compressbench/measure/$1.py" ;;
  esac
}
tests_for() {
  case "$1" in
    mi) echo "tests/test_mi.py tests/test_properties.py" ;;
    scoring) echo "tests/test_scoring.py tests/test_properties.py" ;;
    metrics) echo "tests/test_metrics.py" ;;
    cost) echo "tests/test_cost.py tests/test_properties.py" ;;
    stats) echo "tests/test_sweep.py::test_accuracy_intervals tests/test_report.py tests/test_study_sweep.py \
tests/test_properties.py" ;;
    report) echo "tests/test_report.py tests/test_study_sweep.py tests/test_properties.py" ;;
    predict_loglik) echo "tests/test_predict_loglik.py" ;;
    known_info) echo "tests/test_known_info.py" ;;
  esac
}
filter_for() {
  case "$1" in
    report) echo "compressbench.analysis.report.x__cost_rows* compressbench.analysis.report.x__add_identity_ratios* \
compressbench.analysis.report.x_scorer_agreement*" ;;
    *) echo "" ;;
  esac
}

mutmut_run() {  # MODULE LOG [MUTANT NAMES...]: mutmut in MODULE's scratch copy, then its summary
  local m="$1" log="$2" work="$ROOT/.mutation/$1" start end cpu
  shift 2
  start=$(date +%s)
  (cd "$work" && env -u PYTHONPATH HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
      TOKENIZERS_PARALLELISM=false COMPRESSBENCH_MUTATION=1 "$MUTMUT" run --max-children "$JOBS" "$@" \
      > "$work/$log" 2>&1; times > "$work/times.txt") \
    || { tail -n 40 "$work/$log" >&2; echo "mutmut failed on $m" >&2; exit 1; }
  if grep -q "Failed to collect list of tests" "$work/$log"; then
    tail -n 20 "$work/$log" >&2; echo "the tests do not collect against the copy of $m" >&2; exit 1
  fi
  end=$(date +%s)
  # CPU seconds of mutmut and its test workers (the second line of `times`: children's user, system)
  cpu=$(awk 'NR == 2 { n = split($0, t, /[ ms]+/); print int(t[1] * 60 + t[2] + t[3] * 60 + t[4]) }' \
        "$work/times.txt")
  # shellcheck disable=SC2046
  (cd "$work" && "$VENV/bin/python" "$ROOT/scripts/mutation_summary.py" "$(path_for "$m")" "$((end - start))" "$cpu" \
      "$MUTMUT" "$JOBS" $(filter_for "$m"))
}

run_module() {
  local m="$1" work="$ROOT/.mutation/$1"
  local src
  src="$(path_for "$m")"
  [ -f "$src" ] || { echo "no module $src" >&2; exit 2; }
  rm -rf "$work"
  mkdir -p "$work"
  cp -rL compressbench tests pyproject.toml "$work/"
  find "$work" -name __pycache__ -prune -exec rm -rf {} +
  {
    echo "[mutmut]"
    echo "source_paths = compressbench"
    echo "only_mutate = $src"
    echo "pytest_add_cli_args_test_selection ="
    for t in $(tests_for "$m"); do echo "    $t"; done
    echo "pytest_add_cli_args ="
    echo "    -m"
    echo "    not slow and not torch"
    echo "    -p"
    echo "    no:cacheprovider"
  } > "$work/setup.cfg"
  # shellcheck disable=SC2046
  mutmut_run "$m" run.log $(filter_for "$m")
}

rerun_survivors() {  # keep the last run's kills; give its survivors the current tests
  local m="$1" work="$ROOT/.mutation/$1" names
  [ -f "$work/mutants/$(path_for "$m").meta" ] || { echo "no earlier run of $m; run: bash scripts/mutation.sh $m" >&2; exit 2; }
  if ! diff -qr --exclude=__pycache__ compressbench "$work/compressbench" > /dev/null; then
    echo "the package changed since the last full run of $m; run: bash scripts/mutation.sh $m" >&2
    exit 2
  fi
  rm -rf "$work/tests" && cp -rL tests "$work/" && find "$work/tests" -name __pycache__ -prune -exec rm -rf {} +
  names=$("$VENV/bin/python" -c 'import json, sys
codes = json.load(open(sys.argv[1]))["exit_code_by_key"]
print(" ".join(k for k, v in codes.items() if v in (0, 5, 33)))' "$work/mutants/$(path_for "$m").meta")
  # shellcheck disable=SC2086
  mutmut_run "$m" rerun.log $names
}

if [ "$1" = --survivors ]; then
  case " ${MODULES[*]} " in *" $2 "*) rerun_survivors "$2" ;; *) usage ;; esac
elif [ "$1" = all ]; then
  for m in "${MODULES[@]}"; do run_module "$m"; done
  echo "--- all modules"
  cat "$ROOT"/.mutation/*/summary.txt
else
  case " ${MODULES[*]} " in *" $1 "*) run_module "$1" ;; *) usage ;; esac
fi
