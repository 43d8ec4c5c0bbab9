#!/usr/bin/env bash
# One prepared check for a GPU machine (not needed by CI; the lead runs it when a GPU is lent).
#
#   bash bench/gpu_check.sh            # figures go to $OUT if set, else bench/out/gpu/
#   TINY=1 DEVICE=cpu PYTHON=.venv/bin/python bash bench/gpu_check.sh   # the same steps at toy sizes
#                                      # on CPU: checks the script runs, measures nothing
#
# Assumes the machine's python3 already has torch (CUDA) and transformers; no network. Small
# wheels may be carried in .whl/ (installed with --no-index). vllm's wheels are too large to
# carry, so the script detects whether vllm imports and, if not, says so and skips that part.
# Steps (each bounded by `timeout`; the whole script stays well under 8 minutes):
#   1. environment report (GPU, torch, transformers, vllm present or not);
#   2-3. bench/scoring.py on CUDA with a real-sized random Llama (hidden 2048, 16 layers, 32 heads,
#      8 KV heads, intermediate 8192, vocabulary 32000: about 1.0B parameters, bfloat16): (a) per-pair,
#      (b) score_matrix with prefix batching, (c) raw forward over (b)'s tokens, at the issue-2
#      sizes (16 x 512-token prefixes, 32 x 64-token continuations) and at 64 x 2048-token
#      prefixes with 128 x 128-token continuations; then the ratios against issue 13's goal
#      ((b)/(c) >= 0.6, (a)/(b) >= 0.8 x the ideal token ratio);
#   4. only if vllm imports: VLLMBackend (prompt_logprobs) vs HFBackend shared-prefix score_matrix
#      on the same random Llama, on CUDA: wall-time ratio and max |difference| in nats.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-bench/out/gpu}"
mkdir -p "$OUT_DIR"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
DEVICE="${DEVICE:-cuda}"
TINY="${TINY:-0}"
SUMMARY="$OUT_DIR/summary.txt"
: > "$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --find-links .whl .whl/*.whl 2>&1 | tail -3
fi

say "== 1. environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$SUMMARY" \
  || say "nvidia-smi not available"
"$PY" - <<'PY' 2>&1 | tee -a "$SUMMARY"
import importlib.util
import torch, transformers
print(f"torch {torch.__version__} cuda={torch.cuda.is_available()} transformers {transformers.__version__}")
for mod in ("numpy", "scipy", "httpx", "yaml", "click", "tqdm", "vllm"):
    print(f"{mod}: {'present' if importlib.util.find_spec(mod) else 'MISSING'}")
PY
HAVE_VLLM=0
if "$PY" -c "import vllm" >/dev/null 2>&1; then HAVE_VLLM=1; fi

# The real-sized random model of issue 13 (Llama-3.2-1B-like shape, about 1.0B parameters, bf16).
MODEL_ARGS="--dtype bfloat16 --hidden 2048 --layers 16 --heads 32 --kv-heads 8 --intermediate 8192 --vocab 32000"
SMALL="--n-prefixes 16 --prefix-tokens 512 --n-continuations 32 --continuation-tokens 64"
LARGE="--n-prefixes 64 --prefix-tokens 2048 --n-continuations 128 --continuation-tokens 128 --max-batch-tokens 262144"
if [ "$TINY" = 1 ]; then  # CPU try-out of the same steps at toy sizes (not a measurement)
  MODEL_ARGS="--dtype bfloat16 --hidden 64 --layers 2 --heads 4 --kv-heads 2 --intermediate 128 --vocab 512"
  SMALL="--n-prefixes 4 --prefix-tokens 32 --n-continuations 6 --continuation-tokens 8 --prefix-batching 4"
  LARGE="--n-prefixes 6 --prefix-tokens 64 --n-continuations 8 --continuation-tokens 12 --prefix-batching 6"
fi

say "== 2. score_matrix (prefix batching) vs per-pair vs raw forward, issue-2 sizes, 1.0B bf16 model"
# shellcheck disable=SC2086
timeout 240 "$PY" bench/scoring.py --device "$DEVICE" $MODEL_ARGS $SMALL --json "$OUT_DIR/scoring_small.json" 2>&1 \
  | tail -16 | tee -a "$SUMMARY"
say "exit status: ${PIPESTATUS[0]}"

say "== 3. the same at 64 x 2048-token prefixes, 128 x 128-token continuations"
# shellcheck disable=SC2086
timeout 360 "$PY" bench/scoring.py --device "$DEVICE" $MODEL_ARGS $LARGE --json "$OUT_DIR/scoring_large.json" 2>&1 \
  | tail -16 | tee -a "$SUMMARY"
say "exit status: ${PIPESTATUS[0]}"

say "== ratios against the goal ((b)/(c) >= 0.6; (a)/(b) >= 0.8 x ideal token ratio)"
"$PY" - "$OUT_DIR" <<'PY' 2>&1 | tee -a "$SUMMARY"
import json, sys
from pathlib import Path
for name in ("scoring_small", "scoring_large"):
    p = Path(sys.argv[1]) / f"{name}.json"
    if not p.is_file():
        print(f"{name}: no figures (the run failed or timed out)")
        continue
    f = json.loads(p.read_text())
    print(f"{name}: ideal {f['ideal_token_ratio']:.2f}; a {f['seconds_a_per_pair']:.2f} s, b {f['seconds_b_score_matrix']:.2f} s, "
          f"c {f['seconds_c_raw_forward']:.2f} s; (a)/(b) {f['speedup_a_over_b']:.2f} = "
          f"{f['speedup_a_over_b_vs_ideal']:.2f} x ideal; (b)/(c) {f['throughput_b_over_c']:.2f}; "
          f"max |a-b| {f['max_abs_diff_nats_per_token']:.1e} nats/token; goal {'met' if all(f['gpu_goal'].values()) else 'NOT met'}")
PY

say "== 4. vLLM (prompt_logprobs) vs transformers shared prefix"
if [ "$TINY" = 1 ]; then
  say "TINY=1: skipped (vLLM needs a GPU)"
elif [ "$HAVE_VLLM" -eq 0 ]; then
  say "vllm is NOT installed on this machine (its wheels are too large to carry in .whl/): skipped."
  say "To run it: pip install vllm on a GPU machine with network, then rerun this script."
else
  # A file, not stdin: vLLM's engine process re-imports the main module.
  cat > "$OUT_DIR/vllm_vs_hf.py" <<'PY'
import json, sys, tempfile, time
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path.cwd() / "tests"))
sys.path.insert(0, str(Path.cwd()))


def main(out_dir: str) -> None:
    from conftest import _train_tokenizer  # a byte-level BPE trained on stdlib sources (~2 s)

    from compressbench.backends.hf import HFBackend
    from compressbench.backends.vllm import VLLMBackend

    tmp = Path(tempfile.mkdtemp())
    tok = _train_tokenizer(add_bos=True)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=384, intermediate_size=1536, num_hidden_layers=6,
                      num_attention_heads=6, num_key_value_heads=6, head_dim=64, max_position_embeddings=2048,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(tmp)
    tok.save_pretrained(tmp)
    src = Path("compressbench/backends/openai_http.py").read_text()
    prefixes = [src[i * 2000:(i + 1) * 2000] for i in range(16)]
    conts = [src[50000 + j * 250:50000 + (j + 1) * 250] for j in range(32)]
    hf = HFBackend(str(tmp), device="cuda")
    hf.score_matrix(prefixes[:1], conts[:2])
    torch.cuda.synchronize(); t0 = time.perf_counter()
    m_hf = hf.score_matrix(prefixes, conts)
    torch.cuda.synchronize(); t_hf = time.perf_counter() - t0
    del hf
    torch.cuda.empty_cache()
    v = VLLMBackend(str(tmp), dtype="float32", max_model_len=2048, gpu_memory_utilization=0.5)
    v.score_matrix(prefixes[:1], conts[:2])
    t0 = time.perf_counter()
    m_v = v.score_matrix(prefixes, conts)
    t_v = time.perf_counter() - t0
    n_tok = np.array(v.count_tokens(conts))[None, :]
    res = {"hf_shared_prefix_s": t_hf, "vllm_prompt_logprobs_s": t_v, "hf_over_vllm": t_hf / t_v,
           "max_abs_diff_nats": float(np.abs(m_hf - m_v).max()),
           "max_abs_diff_nats_per_token": float((np.abs(m_hf - m_v) / n_tok).max())}
    print(json.dumps(res, indent=1))
    Path(out_dir, "vllm_vs_hf.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
PY
  timeout 240 "$PY" "$OUT_DIR/vllm_vs_hf.py" "$OUT_DIR" 2>&1 | tail -20 | tee -a "$SUMMARY"
  say "exit status: ${PIPESTATUS[0]}"
fi
say "== done; figures in $OUT_DIR"
