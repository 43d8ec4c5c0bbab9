"""Measure the known-information task with the keep:k ladder and a real scorer: MI (bits) against
the known bits k log2 V, accuracy of the likelihood predictor, and the time each part takes.

    PYTHONPATH=. python bench/known_info_ladder.py --n 48 --slots 4 --values 4 [--model smollm2-135m]

Used to pick the demo's defaults (N, K, V): the ladder must stay below the log2 N ceiling.
Prints one line per rung; numbers go into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=48, help="contexts N")
    ap.add_argument("--slots", type=int, default=4, help="slots K")
    ap.add_argument("--values", type=int, default=4, help="values per slot V")
    ap.add_argument("--model", default="smollm2-135m", help="scorer and predictor")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from compressbench.backends.hf import HFBackend
    from compressbench.data.known_info import generate_known_info, keep_slots, retained_bits
    from compressbench.measure.predict_loglik import choice_scores, predict_loglik
    from compressbench.measure.scoring import score_mi

    t0 = time.perf_counter()
    backend = HFBackend(args.model)
    print(f"load {args.model}: {time.perf_counter() - t0:.1f} s", flush=True)
    exs = generate_known_info(n_contexts=args.n, n_slots=args.slots, n_values=args.values, seed=args.seed)
    print(f"N={args.n} K={args.slots} V={args.values}: {args.slots * math.log2(args.values):.1f} bits per context, "
          f"ceiling log2 N = {math.log2(args.n):.2f} bits, chance {1 / args.values:.3f}; "
          f"context {backend.count_tokens([exs[0].context])[0]} tokens", flush=True)
    rungs = [("empty", lambda e: "")] + [(f"keep:{k}", lambda e, k=k: keep_slots(e, k))
                                         for k in range(1, args.slots)] + [("identity", lambda e: e.context)]
    for name, compress in rungs:
        comps = [compress(e) for e in exs]
        t0 = time.perf_counter()
        est = score_mi(backend, exs, [[z] for z in comps], n_boot=200, seed=0)
        t_mi = time.perf_counter() - t0
        t0 = time.perf_counter()
        scores = [choice_scores(predict_loglik(backend, e, z), e) for e, z in zip(exs, comps)]
        t_pred = time.perf_counter() - t0
        known = float(np.mean([retained_bits(e, z) for e, z in zip(exs, comps)]))
        acc = float(np.mean([s[0] for s in scores]))
        acc_norm = float(np.mean([s[1] for s in scores]))
        print(f"{name:9s} MI {est.bits:5.2f} bits [{est.ci_low_bits:.2f}, {est.ci_high_bits:.2f}]  "
              f"retained {known:5.2f} bits  acc {acc:.3f}  acc_norm {acc_norm:.3f}  "
              f"(MI {t_mi:.1f} s, predict {t_pred:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
