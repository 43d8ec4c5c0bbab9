"""A per-example router, evaluated offline from a run's records (no model calls).

Policy (needs no gold answer): the *arms* of a (dataset, predictor, scorer, prompt, temperature,
seed) are its compressors in order of mean deployed cost, the identity (no compression) last as
the fallback; the oracle ``keep:<k>`` ladder is not an arm (it reads the task's answer key). For
a threshold τ and a signal s (``pointwise_mi_bits``: the compression's pointwise MI about its
context; ``confidence``: the predictor's ``max_k q(o_k | z)``), an example is served by

    the cheapest arm whose s >= τ, else the next, ..., else the identity.

Cost of a routed query (the report's one cost rule, :func:`compressbench.analysis.report.record_costs`,
per record): the compressor cost of every arm tried, plus the predictor cost of every arm tried for
``confidence`` (the signal is the predictor's own output) or of the serving arm only for
``pointwise_mi_bits``. As in the report, the MI scorer is a measurement cost: it is reported in its
own column (``scorer_cost``, the scorer cost of every arm tried), not in the deployed cost; and a
deployment would need a reference set of contexts to compute a pointwise MI.

Evaluation (:func:`evaluate_router`):

- **curve**: accuracy and mean cost over all examples at every τ on the grid of the signal's
  observed values (no τ is chosen for it), beside every fixed arm;
- **held-out points**: the examples are split in two halves with ``numpy.random.default_rng(seed)``;
  for each fixed arm as a budget, τ is chosen on one half (the highest accuracy whose mean cost
  there is at most that arm's mean cost there; ties: the lower cost) and applied to the other half,
  and the reverse, so each example is evaluated once with a τ chosen without it. Reported: the
  router's held-out accuracy (Wilson CI) and mean cost, the fixed arm's on the same examples, and
  the paired accuracy difference with a percentile-bootstrap CI over examples
  (:func:`compressbench.core.stats.bootstrap_mean_ci`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from compressbench.analysis.signals import record_signals
from compressbench.core.stats import accuracy_interval, bootstrap_mean_ci
from compressbench.engine.records import RunRecord
from compressbench.measure.baselines import keep_count
from compressbench.core.errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

#: Signals a router may use (no gold answer needed).
ROUTER_SIGNALS: tuple[str, ...] = ("confidence", "pointwise_mi_bits")
#: The router's group: a cell without its compressor.
GROUP_AXES: tuple[str, ...] = ("dataset", "predictor", "scorer", "predictor_mode", "prompt", "temperature", "seed")
FALLBACK = "identity"
SPLIT_SEED = 0


@dataclass(frozen=True)
class Arms:
    """One group's arms on its common examples: ``names`` cheapest first (the fallback last);
    arrays of shape (n_arms, n_examples)."""

    names: tuple[str, ...]
    example_ids: tuple[str, ...]
    correct: np.ndarray  # 0/1 (score >= 0.5)
    compressor_cost: np.ndarray
    predictor_cost: np.ndarray
    scorer_cost: np.ndarray
    signals: Mapping[str, np.ndarray]  # signal -> (n_arms, n_examples), NaN = unknown (never clears τ)
    cost_unit: str = "GFLOPs"  # or "$" (API dollars)

    @property
    def system_cost(self) -> np.ndarray:
        return self.compressor_cost + self.predictor_cost


def route(arms: Arms, signal: str, tau: float, idx: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(serving arm, deployed cost, scorer cost) per example of ``idx`` (default: all) at threshold
    ``tau``: the first arm whose signal >= tau, else the fallback (the last arm)."""
    cols = np.arange(arms.correct.shape[1]) if idx is None else np.asarray(idx)
    s = arms.signals[signal][:-1, cols]
    clears = np.nan_to_num(s, nan=-np.inf) >= tau
    k = arms.correct.shape[0]
    chosen = np.where(clears.any(axis=0), clears.argmax(axis=0), k - 1)
    tried = np.arange(k)[:, None] <= chosen[None, :]  # (k, n): arms run for each example
    comp = (arms.compressor_cost[:, cols] * tried).sum(axis=0)
    if signal == "confidence":
        pred = (arms.predictor_cost[:, cols] * tried).sum(axis=0)
    else:
        pred = arms.predictor_cost[chosen, cols]
    scorer = (arms.scorer_cost[:, cols] * tried).sum(axis=0) if signal == "pointwise_mi_bits" else np.zeros(cols.size)
    return chosen, comp + pred, scorer


def tau_grid(arms: Arms, signal: str, idx: np.ndarray | None = None) -> np.ndarray:
    """Candidate thresholds: the signal's distinct finite values on ``idx`` (the non-fallback arms)
    and +inf (always the fallback)."""
    cols = slice(None) if idx is None else np.asarray(idx)
    vals = arms.signals[signal][:-1, cols]
    return np.append(np.unique(vals[np.isfinite(vals)]), np.inf)


def choose_tau(arms: Arms, signal: str, train: np.ndarray, budget: float) -> float:
    """The τ with the highest accuracy on the ``train`` examples among those whose mean deployed
    cost there is <= ``budget`` (ties: the lower cost, then the lower τ); when none fits, the
    cheapest τ. Only ``train`` columns are read."""
    best: tuple[float, float, float] | None = None
    cheapest: tuple[float, float] | None = None
    for tau in tau_grid(arms, signal, train):
        chosen, cost, _ = route(arms, signal, float(tau), train)
        acc = float(arms.correct[chosen, train].mean())
        c = float(cost.mean())
        if cheapest is None or c < cheapest[0]:
            cheapest = (c, float(tau))
        if c <= budget * (1 + 1e-9) and (best is None or (acc, -c, -tau) > (best[0], -best[1], -best[2])):
            best = (acc, c, float(tau))
    if best is not None:
        return best[2]
    assert cheapest is not None
    return cheapest[1]


def split_halves(n: int, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint halves of ``range(n)`` from ``default_rng(seed).permutation(n)``."""
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[: n // 2]), np.sort(perm[n // 2:])


@dataclass(frozen=True)
class HeldOut:
    """The router held out against one fixed arm (its budget), each example routed with a τ chosen
    on the other half."""

    signal: str
    budget_arm: str
    n: int
    tau_a: float  # chosen on half A, applied to half B
    tau_b: float  # chosen on half B, applied to half A
    accuracy: float
    accuracy_ci: tuple[float, float]
    cost: float
    scorer_cost: float
    fixed_accuracy: float
    fixed_accuracy_ci: tuple[float, float]
    fixed_cost: float
    diff: float  # router accuracy - fixed accuracy, paired over examples
    diff_ci: tuple[float, float]
    served: Mapping[str, int]  # arm -> examples it served

    @property
    def verdict(self) -> str:
        lo, hi = self.diff_ci
        cheaper = self.cost <= self.fixed_cost * (1 + 1e-9)
        if math.isfinite(lo) and lo > 0:
            return "beats it" + ("" if cheaper else " (at a higher held-out cost)")
        if math.isfinite(hi) and hi < 0:
            return "is worse"
        return "does not differ measurably (CI spans 0)"


def held_out(arms: Arms, signal: str, budget_arm: str, seed: int = SPLIT_SEED) -> HeldOut:
    """Choose τ on one half (budget: ``budget_arm``'s mean deployed cost on that half), evaluate on
    the other, and the reverse (:func:`split_halves`)."""
    j = arms.names.index(budget_arm)
    n = arms.correct.shape[1]
    a, b = split_halves(n, seed)
    tau_a = choose_tau(arms, signal, a, float(arms.system_cost[j, a].mean()))
    tau_b = choose_tau(arms, signal, b, float(arms.system_cost[j, b].mean()))
    correct = np.empty(n)
    cost = np.empty(n)
    scorer = np.empty(n)
    chosen_all = np.empty(n, dtype=int)
    for tau, evaluate in ((tau_a, b), (tau_b, a)):
        chosen, c, s = route(arms, signal, tau, evaluate)
        correct[evaluate], cost[evaluate], scorer[evaluate] = arms.correct[chosen, evaluate], c, s
        chosen_all[evaluate] = chosen
    fixed = arms.correct[j]
    diff, dlo, dhi = bootstrap_mean_ci(correct - fixed)
    lo, hi = accuracy_interval(correct)
    flo, fhi = accuracy_interval(fixed)
    served = {arms.names[k]: int((chosen_all == k).sum()) for k in range(len(arms.names))}
    return HeldOut(signal, budget_arm, n, tau_a, tau_b, float(correct.mean()), (_f(lo), _f(hi)),
                   float(cost.mean()), float(scorer.mean()), float(fixed.mean()), (_f(flo), _f(fhi)),
                   float(arms.system_cost[j].mean()), diff, (dlo, dhi), served)


def _f(v: Any) -> float:
    return math.nan if v is None else float(v)


def build_arms(records: Sequence[RunRecord], costs: Sequence[Mapping[str, float]], *,
               arm_names: Sequence[str] | None = None) -> dict[tuple[Any, ...], Arms | str]:
    """Per group (:data:`GROUP_AXES` values): its :class:`Arms`, or a sentence saying why it has
    none. ``costs`` is aligned with ``records`` (:func:`compressbench.analysis.report.record_costs`);
    ``arm_names`` limits the compressors tried before the identity (default: every one but ``keep:<k>``).
    A group's cost is in API dollars when any of its arms costs dollars (a paid model), else in
    GFLOPs (``Arms.cost_unit``)."""
    per: dict[tuple[Any, ...], dict[str, dict[str, tuple[RunRecord, Mapping[str, float]]]]] = {}
    for rec, cost in zip(records, costs):
        key = tuple(getattr(rec.cell, a) for a in GROUP_AXES)
        comp = rec.cell.compressor
        if comp != FALLBACK and (keep_count(comp) is not None if arm_names is None else comp not in arm_names):
            continue  # the oracle ladder is not deployable (or not among the arms asked for)
        if rec.error is not None or rec.score is None:
            continue
        per.setdefault(key, {}).setdefault(rec.cell.compressor, {})[rec.example_id] = (rec, cost)
    out: dict[tuple[Any, ...], Arms | str] = {}
    for key, by_comp in sorted(per.items(), key=lambda kv: tuple(map(str, kv[0]))):
        if FALLBACK not in by_comp:
            out[key] = f"no {FALLBACK} cell to fall back to"
            continue
        if len(by_comp) < 2:
            out[key] = "only the identity: nothing to route between"
            continue
        ids = sorted(set.intersection(*(set(d) for d in by_comp.values())))
        if len(ids) < 4:
            out[key] = f"{len(ids)} examples answered by every arm (need >= 4 to split in halves)"
            continue

        def arr(comp: str, f: Any) -> np.ndarray:
            return np.array([f(*by_comp[comp][i]) for i in ids], dtype=float)

        paid = any(k.get("usd_per_query", 0.0) > 0 for d in by_comp.values() for _, k in d.values())
        col = "usd" if paid else "gflops"
        comp_cost = {c: arr(c, lambda r, k: k.get(f"{col}_compressor", math.nan)) for c in by_comp}
        pred_cost = {c: arr(c, lambda r, k: k.get(f"{col}_predictor", math.nan)) for c in by_comp}
        unknown = [c for c in by_comp if not (np.isfinite(comp_cost[c]).all() and np.isfinite(pred_cost[c]).all())]
        if unknown:
            out[key] = f"unknown cost for {', '.join(sorted(unknown))}"
            continue
        order = sorted((c for c in by_comp if c != FALLBACK), key=lambda c: (float(np.mean(comp_cost[c] + pred_cost[c])), c))
        names = (*order, FALLBACK)
        sigs = {s: np.vstack([arr(c, lambda r, k, s=s: record_signals(r)[s]) for c in names]) for s in ROUTER_SIGNALS}
        out[key] = Arms(names, tuple(ids),
                        np.vstack([arr(c, lambda r, k: float(r.score >= 0.5)) for c in names]),
                        np.vstack([comp_cost[c] for c in names]), np.vstack([pred_cost[c] for c in names]),
                        np.vstack([arr(c, lambda r, k: k.get(f"{col}_scorer", math.nan)) for c in names]), sigs,
                        "$" if paid else "GFLOPs")
    return out


@dataclass
class RouterResult:
    """The router's tables: ``fixed`` (every arm), ``curve`` (accuracy and cost per τ), ``held_out``
    (per signal and budget arm), each row with its group's ``cost_unit`` ('GFLOPs' or '$') per query;
    ``seed`` of the split; ``notes`` say what was not routed."""

    fixed: pd.DataFrame
    curve: pd.DataFrame
    held_out: pd.DataFrame
    seed: int
    notes: list[str] = field(default_factory=list)


def evaluate_router(records: Sequence[RunRecord], costs: Sequence[Mapping[str, float]], *,
                    seed: int = SPLIT_SEED, signals: Sequence[str] = ROUTER_SIGNALS,
                    arm_names: Sequence[str] | None = None) -> RouterResult:
    """The fixed arms, the τ curve and the held-out router points of every group (module
    docstring); ``arm_names``: the compressors tried before the identity (default: all but keep:k)."""
    # lazy: pandas (the [data]/[plot] extra) loads only when a table is built
    import pandas as pd

    bad = [s for s in signals if s not in ROUTER_SIGNALS]
    if bad:
        raise UsageError(f"unknown router signal(s) {bad}; choose from {', '.join(ROUTER_SIGNALS)}")
    fixed, curve, held, notes = [], [], [], []
    for key, arms in build_arms(records, costs, arm_names=arm_names).items():
        g = dict(zip(GROUP_AXES, key))
        if isinstance(arms, str):
            notes.append(f"router for {'/'.join(map(str, key))}: {arms}")
            continue
        n = arms.correct.shape[1]
        for k, name in enumerate(arms.names):
            lo, hi = accuracy_interval(arms.correct[k])
            fixed.append({**g, "compressor": name, "n": n, "accuracy": float(arms.correct[k].mean()),
                          "accuracy_ci_low": _f(lo), "accuracy_ci_high": _f(hi),
                          "cost": float(arms.system_cost[k].mean()), "cost_unit": arms.cost_unit,
                          "fallback": name == FALLBACK})
        for s in signals:
            if not np.isfinite(arms.signals[s][:-1]).any():
                notes.append(f"router for {'/'.join(map(str, key))}: no {s} in the records")
                continue
            for tau in tau_grid(arms, s):
                chosen, cost, sc = route(arms, s, float(tau))
                curve.append({**g, "signal": s, "tau": float(tau), "n": n,
                              "accuracy": float(arms.correct[chosen, np.arange(n)].mean()),
                              "cost": float(cost.mean()), "scorer_cost": float(sc.mean()),
                              "cost_unit": arms.cost_unit})
            for budget in arms.names:
                h = held_out(arms, s, budget, seed)
                held.append({**g, "signal": s, "budget_compressor": budget, "n": h.n, "tau_a": h.tau_a,
                             "tau_b": h.tau_b, "accuracy": h.accuracy, "accuracy_ci_low": h.accuracy_ci[0],
                             "accuracy_ci_high": h.accuracy_ci[1], "cost": h.cost, "scorer_cost": h.scorer_cost,
                             "fixed_accuracy": h.fixed_accuracy, "fixed_accuracy_ci_low": h.fixed_accuracy_ci[0],
                             "fixed_accuracy_ci_high": h.fixed_accuracy_ci[1], "fixed_cost": h.fixed_cost,
                             "diff": h.diff, "diff_ci_low": h.diff_ci[0], "diff_ci_high": h.diff_ci[1],
                             "cost_unit": arms.cost_unit, "verdict": h.verdict,
                             "served": ", ".join(f"{a} {m}" for a, m in h.served.items() if m)})
    g_cols = list(GROUP_AXES)
    return RouterResult(
        pd.DataFrame(fixed, columns=[*g_cols, "compressor", "n", "accuracy", "accuracy_ci_low", "accuracy_ci_high",
                                     "cost", "cost_unit", "fallback"]),
        pd.DataFrame(curve, columns=[*g_cols, "signal", "tau", "n", "accuracy", "cost", "scorer_cost", "cost_unit"]),
        pd.DataFrame(held, columns=[*g_cols, "signal", "budget_compressor", "n", "tau_a", "tau_b", "accuracy",
                                    "accuracy_ci_low", "accuracy_ci_high", "cost", "scorer_cost", "fixed_accuracy",
                                    "fixed_accuracy_ci_low", "fixed_accuracy_ci_high", "fixed_cost", "diff",
                                    "diff_ci_low", "diff_ci_high", "cost_unit", "verdict", "served"]),
        seed, notes)


def best_fixed(fixed: pd.DataFrame) -> pd.Series | None:
    """The most accurate non-fallback arm of one group's ``fixed`` rows (ties: the cheaper)."""
    sub = fixed[~fixed["fallback"]]
    if sub.empty:
        return None
    return sub.sort_values(["accuracy", "cost"], ascending=[False, True], kind="stable").iloc[0]




def curve_front(curve: pd.DataFrame) -> pd.DataFrame:
    """The τ points of ``curve`` no other τ of the same group and signal dominates (cost <= and
    accuracy >=, one strictly): the accuracy-cost frontier a user picks τ from. Of several τ with
    the same cost and accuracy, the lowest is kept."""
    # lazy: pandas (the [data]/[plot] extra) loads only when a table is built
    import pandas as pd

    keep = []
    for _, sub in curve.groupby([*GROUP_AXES, "signal"], sort=True):
        sub = sub.sort_values("tau", kind="stable").drop_duplicates(["cost", "accuracy"])
        c, a = sub["cost"].to_numpy(float), sub["accuracy"].to_numpy(float)
        dominated = ((c[None, :] <= c[:, None]) & (a[None, :] >= a[:, None])
                     & ((c[None, :] < c[:, None]) | (a[None, :] > a[:, None]))).any(axis=1)
        keep.append(sub[~dominated].sort_values("cost", kind="stable"))
    return pd.concat(keep) if keep else curve.iloc[:0]


__all__ = ["Arms", "FALLBACK", "GROUP_AXES", "HeldOut", "ROUTER_SIGNALS", "RouterResult", "SPLIT_SEED", "best_fixed",
           "build_arms", "choose_tau", "curve_front", "evaluate_router", "held_out", "route", "split_halves",
           "tau_grid"]
