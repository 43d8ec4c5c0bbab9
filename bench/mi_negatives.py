"""Sampled negatives against every context: accuracy and cost of the MI estimate on real SmolLM2.

    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/mi_negatives.py [--runs 32:4:2 128:4:4] [--model smollm2-135m]

The known-information task (``known_info``: S slots of V values, a ``keep:k`` compression keeps
exactly k log2 V bits; query-agnostic scoring prompt ``mi_score_agnostic``, M = 1): the demo's
task, 4 slots x 2 values (4 bits), at N = 32 and N = 128. It has only 16 distinct contexts, and
identical prefixes and compressions are scored once, so "all" is already cheap here (``--runs
128:4:4``: 256 possible contexts, mostly distinct). Compressors: the ladder
``empty, keep:1 .. keep:S-1`` and the identity baseline. For each compressor the estimate is
measured with ``mi_negatives`` = all, K in {7, 15, 31} and auto (the sweep's rule: the identity
baseline with its own ``mi_identity_negatives`` = 7), each one really scored (``score_mi``), one
after the other per compressor, in one run:

- wall time of the scoring and its FLOPs (every prefill and continuation the scorer ran,
  ``cost.shared_prefix_flops`` per prefix), and their ratios all / mode;
- |estimate_K - estimate_all| per compressor next to the known bits and the ceiling log2(K + 1),
  and whether it is within 0.15 bits of all or inside all's 95% interval.

Auto with other margins is evaluated on the scored "all" tensor (the design of K is nested in the
design of every larger K, so these numbers equal scoring them; no timing). Prints Markdown tables
for BENCHMARKS.md and the load average.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

MODES: tuple[Any, ...] = ("all", 7, 15, 31, "auto")
IDENTITY_K = 7


class Counting:
    """A scorer wrapper that notes what it scores; :meth:`flops` then counts it (one prefill per
    prefix per call, then its continuations: :func:`compressbench.measure.cost.shared_prefix_flops`),
    outside the timed part."""

    def __init__(self, backend: Any):
        self.backend = backend
        self.name = backend.name
        self.calls: list[tuple[str, list[str]]] = []

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return self.backend.count_tokens(texts)

    def score_matrix(self, prefixes: Sequence[str], continuations: Sequence[str]) -> np.ndarray:
        self.calls.extend((p, list(continuations)) for p in prefixes)
        return self.backend.score_matrix(prefixes, continuations)

    def score_subsets(self, prefixes: Sequence[str], continuations: Sequence[str],
                      subsets: Sequence[Sequence[int]]) -> list[np.ndarray]:
        self.calls.extend((p, [continuations[i] for i in sub]) for p, sub in zip(prefixes, subsets))
        return self.backend.score_subsets(prefixes, continuations, subsets)

    def flops(self) -> float:
        from compressbench.measure.cost import shared_prefix_flops

        info = self.backend.info()
        total = 0.0
        for prefix, conts in self.calls:
            p = self.backend.count_tokens([prefix])[0]
            lens = self.backend.count_tokens(conts) if conts else []
            total += shared_prefix_flops(info, p, sum(lens), sum(n * n for n in lens)) or 0.0
        return total


def _label(mode: Any) -> str:
    return mode if isinstance(mode, str) else f"K={mode}"


def run_size(backend: Any, n: int, slots: int, values: int, seed: int, n_boot: int,
             modes: tuple[Any, ...] = MODES) -> None:
    from compressbench.data.known_info import generate_known_info, keep_slots, retained_bits
    from compressbench.measure.mi import auto_grows, auto_schedule, estimate_mi_negatives
    from compressbench.measure.scoring import build_logp_tensor, score_mi

    exs = generate_known_info(n_contexts=n, n_slots=slots, n_values=values, seed=seed)
    rungs = [("empty", lambda e: "")] + [(f"keep:{k}", lambda e, k=k: keep_slots(e, k)) for k in range(1, slots)] \
        + [("identity", lambda e: e.context)]
    distinct = len({e.context for e in exs})
    print(f"\n### N = {n} ({slots} slots x {values} values = {slots * math.log2(values):g} bits per context, "
          f"{distinct} distinct contexts; ceiling log2 N = {math.log2(n):.2f} bits)\n", flush=True)
    wall = {_label(m): 0.0 for m in modes}
    flops = {_label(m): 0.0 for m in modes}
    rows = []
    tensors = {}
    for name, compress in rungs:
        comps = [[compress(e)] for e in exs]
        known = float(np.mean([retained_bits(e, c[0]) for e, c in zip(exs, comps)]))
        res = {}
        for mode in modes:
            neg = IDENTITY_K if (mode == "auto" and name == "identity") else mode
            sc = Counting(backend)
            t0 = time.perf_counter()
            est = score_mi(sc, exs, comps, prompt="mi_score_agnostic", mi_negatives=neg, n_boot=n_boot, seed=0)
            dt = time.perf_counter() - t0
            wall[_label(mode)] += dt
            f = sc.flops()
            flops[_label(mode)] += f
            res[_label(mode)] = (est, dt, f)
        tensors[name] = build_logp_tensor(backend, exs, comps, prompt="mi_score_agnostic").logp_nats
        rows.append((name, known, res))
        a = res["all"][0]
        print(f"  {name}: all {a.bits:.3f} [{a.ci_low_bits:.3f}, {a.ci_high_bits:.3f}]  "
              + "  ".join(f"{k} {v[0].bits:.3f} (K={v[0].n_negatives}, {v[1]:.1f} s)" for k, v in res.items()
                          if k != "all"), flush=True)

    print("\n| compressor | known bits | all: bits [95% CI] | " + " | ".join(
        f"{_label(m)}: bits (K, ceiling) |diff|" for m in modes[1:]) + " |")
    print("|---|---:|---|" + "---|" * (len(modes) - 1))
    for name, known, res in rows:
        a = res["all"][0]
        cells = []
        for m in modes[1:]:
            e = res[_label(m)][0]
            d = abs(e.bits - a.bits)
            inside = a.ci_low_bits <= e.bits <= a.ci_high_bits
            applies = a.bits <= e.ceiling_bits - 1.0
            ok = "" if not applies else (" ok" if (d <= 0.15 or inside) else " **off**")
            stop = f", {e.k_stop}" if e.k_stop else ""
            cells.append(f"{e.bits:.3f} (K={e.n_negatives}{stop}, {e.ceiling_bits:.0f}) {d:.3f}{ok}")
        print(f"| {name} | {known:.2f} | {a.bits:.3f} [{a.ci_low_bits:.3f}, {a.ci_high_bits:.3f}] | "
              + " | ".join(cells) + " |")
    print("\n| mode | scoring wall time | all / mode (time) | scoring FLOPs | all / mode (FLOPs) |")
    print("|---|---:|---:|---:|---:|")
    for m in modes:
        k = _label(m)
        print(f"| {k} | {wall[k]:.1f} s | {wall['all'] / wall[k]:.2f}x | {flops[k]:.3g} | "
              f"{flops['all'] / flops[k]:.2f}x |")
    # auto with other margins, from the full tensor (same numbers as scoring the nested designs)
    print("\nauto by margin (bits; the gain rule as in the sweep) from the scored all tensor: K reached, |auto - all|")
    for margin in (0.5, 1.0, 1.5, 2.0):
        parts = []
        for name, known, res in rows:
            lp = tensors[name]
            if name == "identity":
                continue
            for k in auto_schedule(n):
                e = estimate_mi_negatives(lp, k=k, n_boot=n_boot, seed=0, negatives="auto")
                if k >= n - 1 or not auto_grows(lp, k, e, margin_bits=margin):
                    break
            parts.append(f"{name} K={k} {abs(e.bits - res['all'][0].bits):.3f}")
        print(f"  margin {margin}: " + "; ".join(parts), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="+", default=["32:4:2", "128:4:2"],
                    help="N:SLOTS:VALUES per run (default: the demo's task, 4 slots x 2 values, at N = 32 and 128; "
                         "128:4:4 has mostly distinct contexts but its 'all' takes hours on a loaded 2-core CPU)")
    ap.add_argument("--model", default="smollm2-135m", help="the scorer")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--modes", nargs="+", default=[str(m) for m in MODES],
                    help="mi_negatives values to compare, 'all' first (default: all 7 15 31 auto)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from compressbench.backends.hf import HFBackend

    t0 = time.perf_counter()
    backend = HFBackend(args.model)
    print(f"load {args.model}: {time.perf_counter() - t0:.1f} s; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}", flush=True)
    for spec in args.runs:
        n, slots, values = (int(x) for x in spec.split(":"))
        modes = tuple(int(m) if m.isdigit() else m for m in args.modes)
        run_size(backend, n, slots, values, args.seed, args.n_boot, modes)
        print(f"load average after N = {n}: {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
