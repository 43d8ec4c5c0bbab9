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
- |estimate_K - estimate_all| per compressor (the bias-corrected estimate, or the bound where
  saturated: "saturated: a lower bound") next to the known bits, the bound and the ceiling
  log2(K + 1), and whether it is within 0.15 bits of all or inside all's 95% interval where the
  issue's bar applies (all <= log2(K + 1) - 1);
- per compressor and in total, all / mode in time and FLOPs.

``--compressor MODEL`` adds a real-model rung named after the model (``--compressor-prompt agnostic``:
``MODEL/agnostic``): each context compressed once, before and outside the timed scoring, as the demo
sweep compresses (``configs/demo.yaml``'s prompt ``query``, M = 1, greedy, its ``max_new_tokens``),
then scored like the ladder's rungs. ``--rungs`` scores only the named rungs.

Auto with other margins and correction bounds is evaluated on the scored "all" tensors (the design
of K is nested in the design of every larger K, so these numbers equal scoring them; no timing;
without auto's all-as-cheap shortcut). ``--save PREFIX`` keeps the tensors (.npz) and timings
(.json). Prints Markdown tables for BENCHMARKS.md and the load average.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

MODES: tuple[Any, ...] = ("all", 7, 15, 31, "auto")
IDENTITY_K = 7
DEMO_CONFIG = "configs/demo.yaml"  # the sweep whose compressor prompt and sampling a --compressor rung uses


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


def offline_auto(lp: np.ndarray, n_boot: int, margin_bits: float, correction_bits: float) -> tuple[list[int], Any]:
    """auto's path (the K it scores) and final estimate, from a fully scored tensor (the design of K is
    nested in that of every larger K, so these are the numbers scoring them gives)."""
    from compressbench.measure.mi import auto_next_k, auto_schedule, estimate_mi_negatives

    n = lp.shape[0]
    k: int | None = auto_schedule(n)[0]
    path = []
    while k is not None:
        path.append(k)
        est = estimate_mi_negatives(lp, k=k, n_boot=n_boot, seed=0, negatives="auto", margin_bits=margin_bits)
        k = auto_next_k(est, margin_bits=margin_bits, correction_bits=correction_bits)
    return path, est


def _cell(e: Any, a: Any, time_s: float | None = None) -> str:
    """One mode's cell: the estimate (corrected, or the bound where saturated), its K and kind,
    |estimate - all| and ok/off against the issue's bar (where all <= log2(K + 1) - 1)."""
    d = abs(e.bits - a.bits)
    inside = a.ci_low_bits <= e.bits <= a.ci_high_bits
    applies = a.bits <= e.ceiling_bits - 1.0 and e.bound_bits is not None
    ok = "" if not applies else (" ok" if (d <= 0.15 or inside) else " **off**")
    kind = " sat." if e.saturated else ""
    bound = f" (bound {e.bound_bits:.3f})" if e.bound_bits is not None else " (= all)"
    t = f", {time_s:.0f} s" if time_s is not None else ""
    return f"{e.bits:.3f}{kind}{bound} K={e.n_negatives}{t}: {d:.3f}{ok}"


def model_compressions(backend: Any, model: str, exs: Sequence[Any], config: str = DEMO_CONFIG,
                       prompt: str | None = None) -> list[str]:
    """Each example's compression by the real model ``model`` (loaded as ``backend``), made once as the
    sweep makes it: the demo config's first compressor prompt (``query``; or the variant ``prompt``),
    M = 1, its first temperature (0.0: greedy) and seed, its ``max_new_tokens`` and overflow rule,
    ``compress_requests`` and ``generate_batch`` in batches of its compressor batch size. Untimed (the
    scoring is what is timed)."""
    from compressbench.engine.config import PromptVariant, load_config
    from compressbench.engine.model_work import generate_batch
    from compressbench.engine.stages import Group, Prompts, compress_requests

    cfg = load_config(config)
    if prompt is not None:
        cfg = dataclasses.replace(cfg, prompts=(PromptVariant(prompt),))
    g = Group("known_info", model, cfg.prompts[0], cfg.temperatures[0], cfg.seeds[0])
    specs, params = compress_requests(cfg, Prompts.load(cfg), g, exs)
    params = dataclasses.replace(params, n=1)
    bs = cfg.batch_size["compressor"]
    out: list[str] = []
    for i in range(0, len(specs), bs):
        for o in generate_batch(backend, specs[i:i + bs], params, cfg.on_context_overflow, model):
            if o.error is not None:
                raise RuntimeError(f"compressor {model}: {o.error}")
            out.append(o.texts[0])
    return out


def run_size(backend: Any, n: int, slots: int, values: int, seed: int, n_boot: int,
             modes: tuple[Any, ...] = MODES, save: str | None = None,
             compressors: Sequence[tuple[str, Any]] = (), rung_names: Sequence[str] | None = None,
             compressor_prompt: str | None = None) -> None:
    import json

    from compressbench.data.known_info import generate_known_info, keep_slots, retained_bits
    from compressbench.measure.mi import AUTO_CORRECTION_BITS, AUTO_MARGIN_BITS, estimate_mi
    from compressbench.measure.scoring import build_logp_tensor, score_mi

    exs = generate_known_info(n_contexts=n, n_slots=slots, n_values=values, seed=seed)
    rungs: list[tuple[str, Any]] = [("empty", lambda e: "")] \
        + [(f"keep:{k}", lambda e, k=k: keep_slots(e, k)) for k in range(1, slots)] \
        + [("identity", lambda e: e.context)]
    for model, comp_backend in compressors:  # generated once, outside the timed scoring
        rung = model if compressor_prompt is None else f"{model}/{compressor_prompt}"
        if rung_names is not None and rung not in rung_names:
            continue
        t0 = time.perf_counter()
        texts = dict(zip((e.id for e in exs), model_compressions(comp_backend, model, exs, prompt=compressor_prompt)))
        print(f"compressions by {rung}: {time.perf_counter() - t0:.1f} s (untimed), {len(set(texts.values()))} "
              f"distinct of {n}; e.g. {next(iter(texts.values()))!r}", flush=True)
        rungs.append((rung, lambda e, t=texts: t[e.id]))
    if rung_names is not None:
        unknown = set(rung_names) - {r for r, _ in rungs}
        if unknown:
            raise SystemExit(f"--rungs: unknown {sorted(unknown)}; known: {[r for r, _ in rungs]}")
        rungs = [r for r in rungs if r[0] in rung_names]
    distinct = len({e.context for e in exs})
    print(f"\n### N = {n} ({slots} slots x {values} values = {slots * math.log2(values):g} bits per context, "
          f"{distinct} distinct contexts; ceiling log2 N = {math.log2(n):.2f} bits)\n", flush=True)
    wall = {_label(m): 0.0 for m in modes}
    flops = {_label(m): 0.0 for m in modes}
    per_rung: dict[str, dict[str, tuple[float, float]]] = {}
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
            if mode == "all":  # score_mi's all path (build the tensor, estimate_mi), keeping the tensor
                t = build_logp_tensor(sc, exs, comps, prompt="mi_score_agnostic")
                est = estimate_mi(t.logp_nats, n_tokens=t.n_tokens if t.n_tokens.any() else None, n_boot=n_boot, seed=0)
                tensors[name] = t.logp_nats
            else:
                est = score_mi(sc, exs, comps, prompt="mi_score_agnostic", mi_negatives=neg, n_boot=n_boot, seed=0)
            dt = time.perf_counter() - t0
            wall[_label(mode)] += dt
            f = sc.flops()
            flops[_label(mode)] += f
            res[_label(mode)] = (est, dt, f)
            per_rung.setdefault(name, {})[_label(mode)] = (dt, f)
            print(f"  {name} {_label(mode)}: {est.bits:.3f} ({est.kind}, K={est.n_negatives}) {dt:.1f} s, "
                  f"{f:.3g} FLOPs, {len(sc.calls)} prefix calls; load {os.getloadavg()[0]:.1f}", flush=True)
        if name not in tensors:
            tensors[name] = build_logp_tensor(backend, exs, comps, prompt="mi_score_agnostic").logp_nats
        rows.append((name, known, res))
    if save:
        np.savez_compressed(f"{save}_N{n}_{slots}x{values}.npz", **{k.replace(":", "_"): v for k, v in tensors.items()})
        with open(f"{save}_N{n}_{slots}x{values}.json", "w", encoding="utf-8") as fh:
            json.dump({"wall_s": wall, "flops": flops, "per_rung": per_rung}, fh, indent=1)

    print("\nEach cell: the estimate (bias-corrected; 'sat.': saturated, the InfoNCE bound reported as a lower "
          "bound), the bound, the K reached, the scoring time, then |estimate - all| and ok/off against the bar "
          "(within 0.15 bits or inside all's 95% CI, where all <= log2(K + 1) - 1).\n")
    print("| compressor | known bits | all: bits [95% CI] | " + " | ".join(_label(m) for m in modes[1:]) + " |")
    print("|---|---:|---|" + "---|" * (len(modes) - 1))
    for name, known, res in rows:
        a = res["all"][0]
        cells = [_cell(res[_label(m)][0], a, res[_label(m)][1] if m == "auto" else None) for m in modes[1:]]
        print(f"| {name} | {known:.2f} | {a.bits:.3f} [{a.ci_low_bits:.3f}, {a.ci_high_bits:.3f}] | "
              + " | ".join(cells) + " |")
    print("\n| mode | scoring wall time | all / mode (time) | scoring FLOPs | all / mode (FLOPs) |")
    print("|---|---:|---:|---:|---:|")
    for m in modes:
        k = _label(m)
        print(f"| {k} | {wall[k]:.1f} s | {wall['all'] / wall[k]:.2f}x | {flops[k]:.3g} | "
              f"{flops['all'] / flops[k]:.2f}x |")
    print("\nper compressor, all / mode (time; FLOPs):")
    for name, d in per_rung.items():
        print(f"  {name}: " + "; ".join(f"{k} {d['all'][0] / v[0]:.2f}x; {d['all'][1] / max(v[1], 1.0):.2f}x"
                                        for k, v in d.items() if k != "all"))
    # auto with other margins and correction bounds, from the full tensors (no timing)
    print(f"\nauto by (margin, correction bound) from the scored all tensors (the sweep's: {AUTO_MARGIN_BITS}, "
          f"{AUTO_CORRECTION_BITS}): K path, estimate, |auto - all|")
    for margin in (0.5, 1.0, 1.5):
        for corr in (0.25, 0.5, 1.0):
            parts = []
            for name, known, res in rows:
                if name == "identity":
                    continue
                path, e = offline_auto(tensors[name], n_boot, margin, corr)
                parts.append(f"{name} {'>'.join(map(str, path))} {e.bits:.3f} {abs(e.bits - res['all'][0].bits):.3f}")
            print(f"  margin {margin}, correction {corr}: " + "; ".join(parts), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="+", default=["32:4:2", "128:4:2"],
                    help="N:SLOTS:VALUES per run (default: the demo's task, 4 slots x 2 values, at N = 32 and 128; "
                         "128:4:4 has mostly distinct contexts: its 'all 15 auto' run took 32 min on a loaded 2-core CPU)")
    ap.add_argument("--model", default="smollm2-135m", help="the scorer")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--modes", nargs="+", default=[str(m) for m in MODES],
                    help="mi_negatives values to compare, 'all' first (default: all 7 15 31 auto)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compressor", nargs="+", default=[],
                    help="real model compressors to add as rungs named after the model (e.g. smollm2-135m): each "
                         "context compressed once as the demo sweep does (configs/demo.yaml's prompt, M = 1, its "
                         "temperature and max_new_tokens), untimed, then scored like the other rungs")
    ap.add_argument("--compressor-prompt", default=None, choices=["query", "agnostic"],
                    help="the --compressor rungs' prompt variant instead of the demo's (query); the rung is then "
                         "named MODEL/VARIANT")
    ap.add_argument("--rungs", nargs="+", default=None,
                    help="score only these rungs (e.g. smollm2-135m, or empty keep:1 identity); default: all")
    ap.add_argument("--save", default=None, help="path prefix: save the full tensors (.npz) and timings (.json)")
    args = ap.parse_args()

    from compressbench.backends.hf import HFBackend

    t0 = time.perf_counter()
    backend = HFBackend(args.model)
    print(f"load {args.model}: {time.perf_counter() - t0:.1f} s; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}", flush=True)
    compressors = [(m, backend if m == args.model else HFBackend(m)) for m in args.compressor]
    for spec in args.runs:
        n, slots, values = (int(x) for x in spec.split(":"))
        modes = tuple(int(m) if m.isdigit() else m for m in args.modes)
        run_size(backend, n, slots, values, args.seed, args.n_boot, modes, args.save, compressors, args.rungs,
                 args.compressor_prompt)
        print(f"load average after N = {n}: {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
