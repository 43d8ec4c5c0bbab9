"""The **Findings** of a run: the method's questions answered from the run's own report.

:func:`run_findings` reads a run directory through :func:`compressbench.analysis.report.build_report` (the
same cells, intervals, fits and Pareto fronts the report shows) and, per (dataset, predictor,
scorer), states:

- accuracy and MI (bits, log base 2) per compressor with their 95% CIs, the known bits the
  compressions keep verbatim (known-information tasks) and the log2 N ceiling;
- identity vs empty (how much the context is worth to the predictor) and how far empty is from
  chance (``1 / number of options``, from the likelihood predictor's records);
- the ``keep:k`` ladder: do MI and accuracy both rise with k;
- the Spearman rho between MI and accuracy over the study cells (every compressor but empty) with
  its bootstrap CI, and the rate-distortion fit over the compressing cells (model compressors and
  the keep:k ladder: not the identity, not empty): the report's own rows for these cells
  (``Report.correlations``, ``Report.rate_distortion``, one per
  :data:`compressbench.analysis.report.GROUP_KEYS`), so the Findings and the report agree;
- the cost-accuracy Pareto front of this predictor's cells (GFLOPs or $ per query,
  :func:`compressbench.core.stats.pareto_front`);
- the model compressors by size;
- usable information about the answer (``predictor_mode: loglik``): per compressor the mean PVI
  ``log2 q(a*|z) - log2 q(a*|empty)`` in bits with its bootstrap CI beside MI about the context and
  accuracy, and the Spearman rho of usable bits with accuracy over the non-empty cells of this
  predictor (each compressor once: one cell per compressor and predictor);
- per-example signals: the AUROC of pointwise MI, predictor confidence, compression length and
  PVI (an oracle: it needs the answer) for "answered correctly", per compressor
  (:mod:`compressbench.analysis.signals`);
- the offline router (:mod:`compressbench.analysis.route`): its held-out accuracy and cost at the budget
  of the best fixed compressor (the most accurate one but the identity), and whether it beats it.

Nothing here is canned: every number comes from the records. :func:`format_findings` renders the
block the demo prints.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compressbench.analysis.route import best_fixed
from compressbench.analysis.signals import SIGNALS
from compressbench.core.stats import Correlation, RDFit, pareto_front, spans_zero
from compressbench.core.tables import fmt, fmt_ci
from compressbench.measure.baselines import keep_count
from compressbench.measure.mi import KIND_SATURATED
from compressbench.analysis.report import build_report, one_protocol
from compressbench.engine.records import current_records, read_records


@dataclass(frozen=True)
class CompressorFinding:
    compressor: str
    n: int
    accuracy: float
    accuracy_ci: tuple[float, float]
    mi_bits: float
    mi_ci_bits: tuple[float, float]
    retained_bits: float
    bits_per_token: float
    compression_tokens: float
    gflops_per_query: float
    params: float  # compressor parameters (NaN for baselines)
    usable_bits: float = math.nan  # mean PVI about the answer, bits (loglik predictors)
    usable_ci_bits: tuple[float, float] = (math.nan, math.nan)
    #: signal -> (AUROC, CI low, CI high, note) for "answered correctly"
    aurocs: Mapping[str, tuple[float, float, float, str]] = field(default_factory=dict)
    #: How its MI was measured: "all", "K=7", "auto K=31", "not measured" (mi_negatives), its ceiling
    #: log2(K + 1) and the design's seed.
    negatives: str = ""
    mi_ceiling_bits: float = math.nan
    design_seed: int | None = None


@dataclass(frozen=True)
class Findings:
    """Findings for one (dataset, predictor, scorer)."""

    dataset: str
    predictor: str
    scorer: str
    predictor_mode: str
    n_contexts: int
    ceiling_bits: float
    chance: float
    compressors: tuple[CompressorFinding, ...]
    identity_minus_empty: float
    empty_minus_chance: float
    ladder: tuple[str, ...]  # keep:k cells in order of k
    ladder_mi_rises: bool | None
    ladder_accuracy_rises: bool | None
    spearman_rho: float
    spearman_ci: tuple[float, float]
    spearman_n: int
    spearman_note: str
    rd_fit: Mapping[str, Any]
    pareto: tuple[str, ...]  # compressors on the cost-accuracy front, cheapest first
    pareto_cost: str  # "GFLOPs" or "$"
    model_sizes: tuple[tuple[str, float], ...]  # (compressor, params), smallest first
    notes: tuple[str, ...] = field(default_factory=tuple)
    usable_rho: float = math.nan  # Spearman rho(usable bits, accuracy) over the non-empty cells
    usable_rho_ci: tuple[float, float] = (math.nan, math.nan)
    usable_rho_n: int = 0
    usable_rho_note: str = ""
    usable_bound_bits: float = math.nan  # mean log2 #options
    usable_ceiling_bits: float = math.nan  # mean -log2 q(a*|empty): the most usable bits can reach
    #: the router at the best fixed compressor's budget, one dict per signal (route.held_out rows)
    router: tuple[Mapping[str, Any], ...] = ()
    router_seed: int = 0

    def by_name(self) -> dict[str, CompressorFinding]:
        return {c.compressor: c for c in self.compressors}


def _f(v: Any) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return math.nan
    return x


def _chance(records: Sequence[Any]) -> float:
    """Mean 1 / (number of options) over the records' likelihood-predictor detail (NaN if none)."""
    vals = [1.0 / len(r.loglik[0]["options"]) for r in records
            if r.loglik and r.loglik[0].get("options")]
    return sum(vals) / len(vals) if vals else math.nan


def _rises(values: Sequence[float]) -> bool | None:
    if len(values) < 2 or any(not math.isfinite(v) for v in values):
        return None
    return all(b > a for a, b in zip(values, values[1:]))


def run_findings(run_dir: str | Path, *, n_boot: int = 2000, seed: int = 0) -> list[Findings]:
    """The findings of every (dataset, predictor, scorer) of a run (see the module docstring)."""
    report = build_report(run_dir, n_boot=n_boot, seed=seed)
    records = current_records(read_records(run_dir))
    out = []
    cells = report.cells
    for (ds, pred, sc, mode), sub in cells.groupby(["dataset", "predictor", "scorer", "predictor_mode"], sort=True):
        recs = [r for r in records if (r.cell.dataset, r.cell.predictor, r.cell.scorer, r.cell.predictor_mode)
                == (ds, pred, sc, mode)]
        comps = []
        sig = report.signals
        for _, row in sub.iterrows():
            aurocs: dict[str, tuple[float, float, float, str]] = {}
            if sig is not None and len(sig):
                mine = sig[(sig["dataset"] == ds) & (sig["predictor"] == pred) & (sig["scorer"] == sc)
                           & (sig["predictor_mode"] == mode) & (sig["compressor"] == row["compressor"])
                           & (sig["prompt"] == row["prompt"]) & (sig["temperature"] == row["temperature"])
                           & (sig["seed"] == row["seed"])]
                aurocs = {str(r["signal"]): (_f(r["auroc"]), _f(r["auroc_ci_low"]), _f(r["auroc_ci_high"]),
                                             str(r["note"])) for _, r in mine.iterrows()}
            comps.append(CompressorFinding(
                compressor=str(row["compressor"]), n=int(_f(row["n"])), accuracy=_f(row["accuracy"]),
                accuracy_ci=(_f(row["accuracy_ci_low"]), _f(row["accuracy_ci_high"])),
                mi_bits=_f(row["mi_bits"]), mi_ci_bits=(_f(row["mi_ci_low_bits"]), _f(row["mi_ci_high_bits"])),
                retained_bits=_f(row.get("retained_bits")), bits_per_token=_f(row["bits_per_token"]),
                compression_tokens=_f(row["mean_compression_tokens"]),
                gflops_per_query=_f(row.get("gflops_per_query")), params=_f(row["compressor_params"]),
                usable_bits=_f(row.get("usable_bits")),
                usable_ci_bits=(_f(row.get("usable_bits_ci_low")), _f(row.get("usable_bits_ci_high"))),
                aurocs=aurocs,
                negatives=_negatives_label(row), mi_ceiling_bits=_f(row.get("ceiling_bits")),
                design_seed=None if not math.isfinite(_f(row.get("mi_design_seed"))) else int(row["mi_design_seed"])))
        by = {c.compressor: c for c in comps}
        chance = _chance(recs)
        ident, empty = by.get("identity"), by.get("empty")
        ladder = sorted((c for c in by if keep_count(c) is not None), key=lambda c: keep_count(c) or 0)
        # the report's own fit and correlations of these cells (one rule, one number: GROUP_KEYS)
        group = {"dataset": ds, "scorer": sc, "predictor": pred, "predictor_mode": mode}
        corr = report.correlation(group, "mi_bits", "accuracy") or Correlation(
            "mi_bits", "accuracy", 0, note="no study cell to correlate").__dict__
        ucorr = report.correlation(group, "usable_bits", "accuracy")
        router_rows = _router_rows(report.router, ds, pred, sc, mode)
        fit = report.fit(group) or RDFit(0, note="no compressing cell to fit").__dict__
        pooled_notes: list[str] = []  # the report's rule, said here: MI of different K is never pooled
        one_protocol(sub[sub["in_study"]], f"Findings {ds} / {pred}: Spearman rho", pooled_notes)
        one_protocol(sub[sub["compresses"]], f"Findings {ds} / {pred}: rate-distortion fit", pooled_notes)
        use_usd = bool(sub["usd_per_query"].fillna(0).gt(0).any())
        cost_col = "usd_per_query" if use_usd else "gflops_per_query"
        front = sub[pareto_front(sub[cost_col], sub["accuracy"])].sort_values(cost_col)
        sizes = sorted(((c.compressor, c.params) for c in comps if math.isfinite(c.params)), key=lambda t: t[1])
        out.append(Findings(
            dataset=str(ds), predictor=str(pred), scorer=str(sc), predictor_mode=str(mode),
            n_contexts=max((c.n for c in comps), default=0),
            ceiling_bits=_f(sub["ceiling_bits"].max()), chance=chance, compressors=tuple(comps),
            identity_minus_empty=(ident.accuracy - empty.accuracy) if ident and empty else math.nan,
            empty_minus_chance=(empty.accuracy - chance) if empty else math.nan,
            ladder=tuple(ladder),
            ladder_mi_rises=_rises([by[c].mi_bits for c in ladder]),
            ladder_accuracy_rises=_rises([by[c].accuracy for c in ladder]),
            spearman_rho=_f(corr["spearman_rho"]), spearman_ci=(_f(corr["spearman_ci_low"]), _f(corr["spearman_ci_high"])),
            spearman_n=int(corr["n"]), spearman_note=str(corr["note"]), rd_fit=fit,
            pareto=tuple(str(c) for c in front["compressor"]), pareto_cost="$" if use_usd else "GFLOPs",
            model_sizes=tuple(sizes), notes=tuple(report.notes) + tuple(pooled_notes),
            usable_rho=_f(ucorr["spearman_rho"]) if ucorr else math.nan,
            usable_rho_ci=(_f(ucorr["spearman_ci_low"]), _f(ucorr["spearman_ci_high"])) if ucorr else (math.nan, math.nan),
            usable_rho_n=int(ucorr["n"]) if ucorr else 0, usable_rho_note=str(ucorr["note"]) if ucorr else "",
            usable_bound_bits=_f(sub["usable_bound_bits"].max()) if "usable_bound_bits" in sub else math.nan,
            usable_ceiling_bits=_f(sub["usable_ceiling_bits"].max()) if "usable_ceiling_bits" in sub else math.nan,
            router=router_rows, router_seed=report.router.seed if report.router else 0,
        ))
    return out


def _router_rows(router: Any, ds: str, pred: str, sc: str, mode: str) -> tuple[Mapping[str, Any], ...]:
    """The router's held-out rows at the budget of this predictor's best fixed compressor, one per
    signal (the first prompt/temperature/seed group of the predictor)."""
    if router is None or not len(router.held_out):
        return ()
    key = ["dataset", "predictor", "scorer", "predictor_mode"]
    fixed = router.fixed[(router.fixed[key] == [ds, pred, sc, mode]).all(axis=1)]
    held = router.held_out[(router.held_out[key] == [ds, pred, sc, mode]).all(axis=1)]
    if fixed.empty or held.empty:
        return ()
    first = fixed.iloc[0]
    same = ["prompt", "temperature", "seed"]
    fixed = fixed[(fixed[same] == [first[c] for c in same]).all(axis=1)]
    held = held[(held[same] == [first[c] for c in same]).all(axis=1)]
    best = best_fixed(fixed)
    if best is None:
        return ()
    ident = fixed[fixed["fallback"]]
    out = []
    for _, h in held[held["budget_compressor"] == best["compressor"]].iterrows():
        d = dict(h)
        if len(ident):
            d["identity_accuracy"], d["identity_cost"] = float(ident.iloc[0]["accuracy"]), float(ident.iloc[0]["cost"])
        out.append(d)
    return tuple(out)


def _ci_words(ci: tuple[float, float]) -> str:
    lo, hi = ci
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return ""
    if lo > 0:
        return " (CI above 0: a positive rank relation)"
    if hi < 0:
        return " (CI below 0: a negative rank relation)"
    assert spans_zero(lo, hi)
    return " (CI spans 0: no relation these cells can show)"


def _signal_lines(f: Findings) -> list[str]:
    """AUROC per signal and compressor (cells with both correct and wrong examples)."""
    names = [s for s in SIGNALS if any(s in c.aurocs for c in f.compressors)]
    rows = [c for c in f.compressors if any(not c.aurocs[s][3] for s in names if s in c.aurocs)]
    if not names or not rows:
        return []
    width = max(len("compressor"), *(len(c.compressor) for c in rows)) + 2
    col = max(24, *(len(SIGNALS[s][0]) + 1 for s in names))
    out = ["  - Per-example signals: AUROC for 'this example is answered correctly' [95% CI] (0.5 = no signal; "
           "PVI is an oracle, it needs the answer):",
           (f"    {'compressor':<{width}} " + " ".join(f"{SIGNALS[s][0]:<{col}}" for s in names)).rstrip()]
    for c in rows:
        cells = []
        for s in names:
            a = c.aurocs.get(s)
            cells.append("–" if a is None else ("(one class)" if a[3] else fmt_ci(a[0], a[1], a[2])))
        out.append(f"    {c.compressor:<{width}} " + " ".join(f"{v:<{col}}" for v in cells).rstrip())
    return out


def _router_lines(f: Findings) -> list[str]:
    out = []
    for h in f.router:
        unit = h["cost_unit"]
        sig = SIGNALS[h["signal"]][0]
        ident = (f"; identity {fmt(h['identity_accuracy'])} at {fmt(h['identity_cost'])}"
                 if "identity_accuracy" in h else "")
        out.append(
            f"  - Router on {sig} (cheapest arm whose {sig} >= tau, else the next, else identity; tau chosen on one "
            f"half within {h['budget_compressor']}'s cost, evaluated on the other, split seed {f.router_seed}): "
            f"held-out accuracy {fmt_ci(h['accuracy'], h['accuracy_ci_low'], h['accuracy_ci_high'])} at "
            f"{fmt(h['cost'])} {unit}/query vs the best fixed compressor {h['budget_compressor']} "
            f"{fmt_ci(h['fixed_accuracy'], h['fixed_accuracy_ci_low'], h['fixed_accuracy_ci_high'])} at "
            f"{fmt(h['fixed_cost'])}{ident}; difference {fmt_ci(h['diff'], h['diff_ci_low'], h['diff_ci_high'])}: "
            f"the router {h['verdict']} (served by {h['served']}).")
    return out


def _negatives_label(row: Any) -> str:
    """``all``, ``K=7``, ``auto K=31``, ``K=7 saturated: a lower bound``, ``not measured`` or "" (a run
    without the field)."""
    neg = row.get("mi_negatives")
    if not isinstance(neg, str):
        return ""
    k = _f(row.get("mi_n_negatives"))
    kk = f"K={int(k)}" if math.isfinite(k) else ""
    label = {"fixed": kk, "auto": f"auto {kk}".strip(), "all": f"all ({kk})" if kk else "all"}.get(neg, neg)
    sat = row.get("mi_saturated")
    return f"{label} {KIND_SATURATED}" if isinstance(sat, (bool, np.bool_)) and sat else label


def _sampled(label: str, n_contexts: int) -> bool:
    """A negatives label (:func:`_negatives_label`) of K < N - 1 sampled negatives (``auto`` that went
    to every context, or scored it at once, is not)."""
    if not label or label.startswith("all") or "K=" not in label:
        return False
    digits = label.split("K=", 1)[1].split()[0]
    return not digits.isdigit() or int(digits) < n_contexts - 1


def _params(n: float) -> str:
    return f"{n / 1e6:.0f}M" if n < 1e9 else f"{n / 1e9:.1f}B"


def format_findings(findings: Sequence[Findings]) -> str:
    """The Findings block (plain text), one section per (dataset, predictor, scorer)."""
    lines = ["", "Findings (computed from this run; MI in bits, log base 2; [95% CI])"]
    for f in findings:
        by = f.by_name()
        lines.append(f"  {f.dataset}: predictor {f.predictor} ({f.predictor_mode}), MI scorer {f.scorer}, "
                     f"N = {f.n_contexts} contexts, MI ceiling log2 N = {fmt(f.ceiling_bits)} bits, "
                     f"chance accuracy {fmt(f.chance)}")
        width = max((len(c.compressor) for c in f.compressors), default=10) + 8
        usable = any(math.isfinite(c.usable_bits) for c in f.compressors)
        sampled = any(_sampled(c.negatives, f.n_contexts) for c in f.compressors)
        if sampled:
            seeds = sorted({c.design_seed for c in f.compressors if c.design_seed is not None})
            lines.append("    MI with sampled negatives: each compression against its own context and K others "
                         "(a balanced design" + (f", seed {', '.join(map(str, seeds))}" if seeds else "")
                         + "); the estimate is its bound (ceiling log2(K + 1)) corrected for the bias of "
                         "K < N - 1 negatives, or, where the bound nears its ceiling, the bound itself: "
                         f"'{KIND_SATURATED}'")
        neg_col = f"{'negatives (ceiling)':<36} " if sampled else ""
        lines.append(f"    {'compressor':<{width}} {'accuracy':<22} {'MI bits (context)':<22} {neg_col}"
                     + (f"{'usable bits (answer)':<24} " if usable else "")
                     + f"{'known bits kept':<16} {'tokens':<7} GFLOPs/query")
        for c in f.compressors:
            name = c.compressor + (f" ({_params(c.params)})" if math.isfinite(c.params) else "")
            lines.append(f"    {name:<{width}} {fmt_ci(c.accuracy, *c.accuracy_ci):<22} "
                         f"{fmt_ci(c.mi_bits, *c.mi_ci_bits):<22} "
                         + (f"{(c.negatives + ' (' + fmt(c.mi_ceiling_bits) + ')') if c.negatives else '':<36} "
                            if sampled else "")
                         + (f"{fmt_ci(c.usable_bits, *c.usable_ci_bits):<24} " if usable else "")
                         + f"{fmt(c.retained_bits):<16} {fmt(c.compression_tokens):<7} {fmt(c.gflops_per_query)}")
        if usable:
            lines.append(f"    (usable bits about the answer = mean log2 q(a*|z) - log2 q(a*|empty), bits: how much "
                         f"more probability the predictor gives the gold answer from the compression than from the "
                         f"question alone; 0 for empty by construction; at most the mean -log2 q(a*|empty) = "
                         f"{fmt(f.usable_ceiling_bits)} bits, which is log2 #options = {fmt(f.usable_bound_bits)} "
                         f"for a predictor uniform without context)")
        if "identity" in by and "empty" in by:
            lines.append(f"  - The full context is worth {f.identity_minus_empty:+.2f} accuracy over no context "
                         f"(identity {fmt(by['identity'].accuracy)} vs empty {fmt(by['empty'].accuracy)}); "
                         f"empty is {f.empty_minus_chance:+.2f} from chance ({fmt(f.chance)}).")
        if f.ladder:
            mi = " -> ".join(fmt(by[c].mi_bits) for c in f.ladder)
            acc = " -> ".join(fmt(by[c].accuracy) for c in f.ladder)
            kept = " -> ".join(fmt(by[c].retained_bits) for c in f.ladder)
            verdict = {True: "rise", False: "do not both rise", None: "cannot be compared"}[
                (f.ladder_mi_rises and f.ladder_accuracy_rises) if None not in (f.ladder_mi_rises,
                                                                                  f.ladder_accuracy_rises) else None]
            lines.append(f"  - Along the oracle ladder {', '.join(f.ladder)} (known bits kept {kept}): "
                         f"MI {mi} bits, accuracy {acc}: they {verdict}.")
        if f.spearman_note:
            lines.append(f"  - Spearman rho(MI, accuracy) over the {f.spearman_n} non-empty cells: {f.spearman_note}.")
        elif spans_zero(*f.spearman_ci):
            lines.append(f"  - Spearman rho(MI, accuracy) over the {f.spearman_n} non-empty cells: "
                         f"{fmt_ci(f.spearman_rho, *f.spearman_ci)}; the 95% CI spans 0: these cells do not "
                         "show that MI ranks compressors by accuracy.")
        else:
            lines.append(f"  - Spearman rho(MI, accuracy) over the {f.spearman_n} non-empty cells: "
                         f"{fmt_ci(f.spearman_rho, *f.spearman_ci)}.")
        if usable:
            what = (f.usable_rho_note if f.usable_rho_note else fmt_ci(f.usable_rho, *f.usable_rho_ci)
                    + _ci_words(f.usable_rho_ci))
            lines.append(f"  - Spearman rho(usable bits, accuracy) over the {f.usable_rho_n} non-empty cells of this "
                         f"predictor (each compressor once): {what}.")
        lines.extend(_signal_lines(f))
        lines.extend(_router_lines(f))
        for note in f.notes:  # the report's rule: MI of different K is never pooled
            if note.startswith(f"Findings {f.dataset} / {f.predictor}:"):
                lines.append(f"  - {note.split(': ', 1)[1]}.")
        fit = f.rd_fit
        if fit.get("note"):
            lines.append(f"  - Rate-distortion fit D(R) = C exp(-b R) + D0 over the compressing cells: {fit['note']}.")
        else:
            lines.append(f"  - Rate-distortion fit over the compressing cells (R = MI bits per compression token, "
                         f"D = 1 - accuracy): D(R) = {fit['c']:.3g} exp(-{fit['b']:.3g} R) + {fit['d0']:.3g}, "
                         f"R^2 = {fit['r2']:.2f} ({fit['n_points']} cells).")
        lines.append(f"  - Cost-accuracy Pareto front ({f.pareto_cost} per query, cheapest first): "
                     + " -> ".join(f"{c} ({fmt(by[c].accuracy)})" for c in f.pareto) + ".")
        if len(f.model_sizes) >= 2:
            sized = ", ".join(f"{c} {_params(p)}: accuracy {fmt(by[c].accuracy)}, MI {fmt(by[c].mi_bits)} bits, "
                              f"{fmt(by[c].compression_tokens)} tokens" for c, p in f.model_sizes)
            lines.append(f"  - Compressor sizes: {sized}.")
        elif f.model_sizes:
            lines.append("  - One model compressor size only: no scaling comparison.")
    return "\n".join(lines)


__all__ = ["CompressorFinding", "Findings", "format_findings", "run_findings"]
