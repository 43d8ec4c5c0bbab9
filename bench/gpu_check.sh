#!/usr/bin/env bash
# One prepared check for a GPU machine (not needed by CI; the lead runs it when a GPU is lent).
#
#   bash bench/gpu_check.sh            # figures go to $OUT if set, else bench/out/gpu/
#
# Assumes the machine's python3 already has torch (CUDA) and transformers; no network. Small
# wheels may be carried in .whl/ (installed with --no-index). vllm's wheels are too large to
# carry, so the script detects whether vllm imports and, if not, says so and skips that part.
# Steps (each bounded by `timeout`; the whole script stays well under 8 minutes):
#   1. environment report (GPU, torch, transformers, vllm present or not);
#   2. the transformers shared-prefix scoring benchmark on CUDA (bench/scoring.py --device cuda);
#   3. only if vllm imports: VLLMBackend (prompt_logprobs) vs HFBackend shared-prefix score_matrix
#      on the same random Llama, on CUDA: wall-time ratio and max |difference| in nats.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-bench/out/gpu}"
mkdir -p "$OUT_DIR"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
SUMMARY="$OUT_DIR/summary.txt"
: > "$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --find-links .whl .whl/*.whl 2>&1 | tail -3
fi

say "== 1. environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$SUMMARY"
"$PY" - <<'PY' 2>&1 | tee -a "$SUMMARY"
import importlib.util
import torch, transformers
print(f"torch {torch.__version__} cuda={torch.cuda.is_available()} transformers {transformers.__version__}")
for mod in ("numpy", "scipy", "httpx", "yaml", "click", "tqdm", "vllm"):
    print(f"{mod}: {'present' if importlib.util.find_spec(mod) else 'MISSING'}")
PY
HAVE_VLLM=0
if "$PY" -c "import vllm" >/dev/null 2>&1; then HAVE_VLLM=1; fi

say "== 2. transformers shared-prefix scoring on CUDA (bench/scoring.py)"
if [ -f bench/scoring.py ]; then
  timeout 300 "$PY" bench/scoring.py --device cuda --n-prefixes 64 --json "$OUT_DIR/scoring_cuda.json" 2>&1 \
    | tail -25 | tee -a "$SUMMARY"
  say "exit status: ${PIPESTATUS[0]}"
else
  say "bench/scoring.py is missing; skipped"
fi

say "== 3. vLLM (prompt_logprobs) vs transformers shared prefix"
if [ "$HAVE_VLLM" -eq 0 ]; then
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
