"""Benchmark: shared-prefix score_matrix vs one full forward per pair vs the raw forward limit.

Defaults (issue 2, item 7): N = 16 prefixes of 512 tokens, 32 continuations of 64 tokens
(M = 2 per prefix), a random ~16M-parameter Llama (hidden 384, 6 layers), float32, 2 threads.

Timed in one run:
  (a) per-pair: ``HFBackend.score`` on all N x C (prefix, continuation) pairs, i.e. one full
      forward over prefix + continuation per pair, batched;
  (b) shared prefix: ``HFBackend.score_matrix(prefixes, continuations)`` (``--prefix-batching``:
      "auto" groups several prefixes per forward on CUDA, one prefix at a time on CPU);
  (c) raw limit: plain batched forwards (no cache, no scoring) over exactly the tokens (b)
      processes: N prefixes, then N x C continuation inputs of L_c - 1 tokens, with logits.

Printed: ideal token ratio N*C*(Lp+Lc) / (N*Lp + N*C*Lc), (a)/(b) time, (b) vs (c) tokens/s,
max |a - b| in nats, peak extra memory of each. Bar (CPU, issue 2): (a)/(b) >= 6.1, (b) >= 0.8 x
(c) tokens/s, max |a - b| <= 1e-4 nats (float32). GPU goal (issue 13): (b)/(c) >= 0.6 and
(a)/(b) >= 0.8 x the ideal token ratio. In bfloat16 the per-pair and shared-prefix paths round
differently, so max |a - b| is reported per token and only checked loosely (<= 0.05 nats/token).

    .venv/bin/python bench/scoring.py                       # the issue's sizes, CPU
    .venv/bin/python bench/scoring.py --device cuda --n-prefixes 64 --json runs/bench_scoring.json
    # issue 13's real-sized model (1.1B parameters) at 64 x 2048-token prefixes, 128 x 128 continuations:
    python bench/scoring.py --device cuda --dtype bfloat16 --hidden 2048 --layers 16 --heads 32 --kv-heads 8 \
        --intermediate 8192 --vocab 32000 --n-prefixes 64 --prefix-tokens 2048 --n-continuations 128 \
        --continuation-tokens 128 --max-batch-tokens 262144
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-prefixes", type=int, default=16)
    ap.add_argument("--prefix-tokens", type=int, default=512)
    ap.add_argument("--n-continuations", type=int, default=32)
    ap.add_argument("--continuation-tokens", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--kv-heads", type=int, default=None, help="key/value heads (default: --heads)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--intermediate", type=int, default=1536)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-batch-tokens", type=int, default=32768)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prefix-batching", default="auto",
                    help='HFBackend prefix_batching for (b): "auto" (grouped on CUDA, one prefix at a time on CPU), '
                         '"off", or N (at most N prefixes per forward)')
    ap.add_argument("--json", type=Path, default=None, help="write the figures to this JSON file")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from _common import build_random_llama, load_average, random_texts, timed
    from compressbench.backends.hf import HFBackend

    torch.set_num_threads(args.threads)
    n_p, l_p, n_c, l_c = args.n_prefixes, args.prefix_tokens, args.n_continuations, args.continuation_tokens
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        d = build_random_llama(Path(tmp) / "llama", vocab=args.vocab, hidden=args.hidden, layers=args.layers,
                               heads=args.heads, intermediate=args.intermediate, n_ctx=max(2048, l_p + l_c),
                               seed=args.seed, kv_heads=args.kv_heads, dtype=args.dtype)
        prefix_batching = int(args.prefix_batching) if args.prefix_batching.isdigit() else args.prefix_batching
        backend = HFBackend(str(d), device=args.device, threads=args.threads, max_batch_tokens=args.max_batch_tokens,
                            prefix_batching=prefix_batching, dtype=args.dtype)
    info = backend.info()
    prefixes = random_texts(n_p, l_p, args.vocab, rng)
    conts = random_texts(n_c, l_c, args.vocab, rng)
    assert backend.count_tokens(prefixes) == [l_p] * n_p and backend.count_tokens(conts) == [l_c] * n_c

    load_before = load_average()
    # Warm-up (allocator, kernels) on a small slice, not timed.
    backend.score_matrix(prefixes[:1], conts[:2])
    backend.score(prefixes[:2], conts[:2])

    flat_p = [p for p in prefixes for _ in conts]
    flat_c = [c for _ in prefixes for c in conts]
    scored_a, t_a, mem_a, cpu_a = timed(lambda: backend.score(flat_p, flat_c), args.device)
    matrix_a = np.array([t.total_nats for t in scored_a]).reshape(n_p, n_c)
    matrix_b, t_b, mem_b, cpu_b = timed(lambda: backend.score_matrix(prefixes, conts), args.device)

    model, dev = backend.model, backend.device
    p_ids = torch.tensor(backend._encode(prefixes, special=True))
    c_in = torch.tensor(backend._encode(conts, special=False))[:, :-1]

    def raw() -> None:
        with torch.inference_mode():
            pb = max(1, args.max_batch_tokens // l_p)
            for s in range(0, n_p, pb):
                model(input_ids=p_ids[s:s + pb].to(dev), logits_to_keep=1)
            rows = c_in.repeat(n_p, 1)
            cb = max(1, args.max_batch_tokens // (l_p + l_c - 1))  # same batch size as score_matrix
            for s in range(0, rows.shape[0], cb):
                model(input_ids=rows[s:s + cb].to(dev)).logits.float().logsumexp(-1)

    _, t_c, mem_c, cpu_c = timed(raw, args.device)
    tokens_b = n_p * l_p + n_p * n_c * (l_c - 1)
    tokens_a = n_p * n_c * (l_p + l_c)
    ideal = tokens_a / (n_p * l_p + n_p * n_c * l_c)
    figures = {
        "config": {**vars(args), "json": str(args.json) if args.json else None, "n_params": info.n_params,
                   "prefix_group_limit": backend._prefix_group_limit(),
                   "torch": torch.__version__, "transformers": __import__("transformers").__version__},
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "ideal_token_ratio": ideal,
        "seconds_a_per_pair": t_a,
        "seconds_b_score_matrix": t_b,
        "seconds_c_raw_forward": t_c,
        "cpu_seconds": {"a": cpu_a, "b": cpu_b, "c": cpu_c},
        "speedup_a_over_b": t_a / t_b,
        "speedup_a_over_b_cpu_time": cpu_a / cpu_b,
        "throughput_b_over_c_cpu_time": cpu_c / cpu_b,
        "tokens_per_s_a": tokens_a / t_a,
        "tokens_per_s_b": tokens_b / t_b,
        "tokens_per_s_c": tokens_b / t_c,
        "throughput_b_over_c": t_c / t_b,
        "max_abs_diff_nats": float(np.max(np.abs(matrix_a - matrix_b))),
        "max_abs_diff_nats_per_token": float(np.max(np.abs(matrix_a - matrix_b))) / l_c,
        "peak_extra_mem_mib": {"a": mem_a / 2**20, "b": mem_b / 2**20, "c": mem_c / 2**20},
    }
    figures["speedup_a_over_b_vs_ideal"] = figures["speedup_a_over_b"] / ideal
    exact = (figures["max_abs_diff_nats"] <= 1e-4 if args.dtype == "float32"
             else figures["max_abs_diff_nats_per_token"] <= 0.05)
    figures["bar"] = {
        "speedup_ge_6.1": figures["speedup_a_over_b"] >= 6.1,
        "throughput_ge_0.8": figures["throughput_b_over_c"] >= 0.8,
        "max_diff_ok": exact,
    }
    figures["gpu_goal"] = {
        "speedup_ge_0.8_ideal": figures["speedup_a_over_b_vs_ideal"] >= 0.8,
        "throughput_ge_0.6": figures["throughput_b_over_c"] >= 0.6,
        "max_diff_ok": exact,
    }
    print(f"model: random Llama, {info.n_params / 1e6:.1f}M params, hidden {args.hidden}, {args.layers} layers, "
          f"{args.dtype}, {args.threads} threads, {args.device}; load avg before {load_before}, after "
          f"{figures['load_average_after']}")
    print(f"N={n_p} prefixes x {l_p} tok, {n_c} continuations x {l_c} tok; prefix batching "
          f"{args.prefix_batching!r} (up to {backend._prefix_group_limit()} prefixes per forward)")
    print(f"ideal token ratio          {ideal:.2f}")
    print(f"(a) per-pair forwards      {t_a:8.2f} s  {figures['tokens_per_s_a']:9.0f} tok/s  peak +{mem_a / 2**20:.0f} MiB")
    print(f"(b) score_matrix           {t_b:8.2f} s  {figures['tokens_per_s_b']:9.0f} tok/s  peak +{mem_b / 2**20:.0f} MiB")
    print(f"(c) raw forward, b's tokens {t_c:7.2f} s  {figures['tokens_per_s_c']:9.0f} tok/s  peak +{mem_c / 2**20:.0f} MiB")
    print(f"CPU seconds (all threads): a {cpu_a:.2f}, b {cpu_b:.2f}, c {cpu_c:.2f}")
    print(f"(a)/(b) = {figures['speedup_a_over_b']:.2f}  (bar >= 6.1; by CPU time "
          f"{figures['speedup_a_over_b_cpu_time']:.2f})")
    print(f"(b)/(c) throughput = {figures['throughput_b_over_c']:.2f}  (bar >= 0.8; by CPU time "
          f"{figures['throughput_b_over_c_cpu_time']:.2f})")
    print(f"(a)/(b) / ideal token ratio = {figures['speedup_a_over_b_vs_ideal']:.2f}  (GPU goal >= 0.8)")
    print(f"max |a - b| = {figures['max_abs_diff_nats']:.2e} nats, {figures['max_abs_diff_nats_per_token']:.2e} "
          f"nats/token  ({'bar <= 1e-4 nats' if args.dtype == 'float32' else 'sanity <= 0.05 nats/token'})")
    print("bar met" if all(figures["bar"].values()) else f"bar NOT met: {figures['bar']}")
    print("GPU goal met" if all(figures["gpu_goal"].values()) else f"GPU goal NOT met: {figures['gpu_goal']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
