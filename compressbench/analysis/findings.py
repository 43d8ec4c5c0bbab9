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
  its bootstrap CI (:func:`compressbench.analysis.report.correlate`);
- the rate-distortion fit over the compressing cells (model compressors and the keep:k ladder:
  not the identity, not empty; :func:`compressbench.analysis.report.fit_rate_distortion`);
- the cost-accuracy Pareto front of this predictor's cells (GFLOPs or $ per query,
  :func:`compressbench.analysis.report.pareto_front`);
- the model compressors by size.

Nothing here is canned: every number comes from the records. :func:`format_findings` renders the
block the demo prints.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compressbench.measure.baselines import keep_count
from compressbench.core.tables import fmt, fmt_ci


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
    from compressbench.engine.records import current_records, read_records
    from compressbench.analysis.report import build_report, correlate, fit_rate_distortion, one_protocol, pareto_front

    report = build_report(run_dir, n_boot=n_boot, seed=seed)
    records = current_records(read_records(run_dir))
    out = []
    cells = report.cells
    for (ds, pred, sc, mode), sub in cells.groupby(["dataset", "predictor", "scorer", "predictor_mode"], sort=True):
        recs = [r for r in records if (r.cell.dataset, r.cell.predictor, r.cell.scorer, r.cell.predictor_mode)
                == (ds, pred, sc, mode)]
        comps = []
        for _, row in sub.iterrows():
            comps.append(CompressorFinding(
                compressor=str(row["compressor"]), n=int(_f(row["n"])), accuracy=_f(row["accuracy"]),
                accuracy_ci=(_f(row["accuracy_ci_low"]), _f(row["accuracy_ci_high"])),
                mi_bits=_f(row["mi_bits"]), mi_ci_bits=(_f(row["mi_ci_low_bits"]), _f(row["mi_ci_high_bits"])),
                retained_bits=_f(row.get("retained_bits")), bits_per_token=_f(row["bits_per_token"]),
                compression_tokens=_f(row["mean_compression_tokens"]),
                gflops_per_query=_f(row.get("gflops_per_query")), params=_f(row["compressor_params"]),
                negatives=_negatives_label(row), mi_ceiling_bits=_f(row.get("ceiling_bits")),
                design_seed=None if not math.isfinite(_f(row.get("mi_design_seed"))) else int(row["mi_design_seed"])))
        by = {c.compressor: c for c in comps}
        chance = _chance(recs)
        ident, empty = by.get("identity"), by.get("empty")
        ladder = sorted((c for c in by if keep_count(c) is not None), key=lambda c: keep_count(c) or 0)
        pooled_notes: list[str] = []  # the report's rule: MI of different K is never pooled
        study = one_protocol(sub[sub["in_study"]], f"Findings {ds} / {pred}: Spearman rho", pooled_notes)
        corr = correlate(study["mi_bits"], study["accuracy"], x_name="mi_bits", y_name="accuracy",
                         n_boot=n_boot, seed=seed)
        comp_cells = one_protocol(sub[sub["compresses"]], f"Findings {ds} / {pred}: rate-distortion fit", pooled_notes)
        fit = fit_rate_distortion(comp_cells["bits_per_token"], comp_cells["distortion"])
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
            spearman_rho=corr.spearman_rho, spearman_ci=(corr.spearman_ci_low, corr.spearman_ci_high),
            spearman_n=corr.n, spearman_note=corr.note, rd_fit=dict(fit.__dict__),
            pareto=tuple(str(c) for c in front["compressor"]), pareto_cost="$" if use_usd else "GFLOPs",
            model_sizes=tuple(sizes), notes=tuple(report.notes) + tuple(pooled_notes),
        ))
    return out


def _negatives_label(row: Any) -> str:
    """``all``, ``K=7``, ``auto K=31``, ``not measured`` or "" (a run without the field)."""
    neg = row.get("mi_negatives")
    if not isinstance(neg, str):
        return ""
    k = _f(row.get("mi_n_negatives"))
    kk = f"K={int(k)}" if math.isfinite(k) else ""
    return {"fixed": kk, "auto": f"auto {kk}".strip(), "all": f"all ({kk})" if kk else "all"}.get(neg, neg)


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
        sampled = any(c.negatives and not c.negatives.startswith("all") for c in f.compressors)
        if sampled:
            seeds = sorted({c.design_seed for c in f.compressors if c.design_seed is not None})
            lines.append("    MI with sampled negatives: each compression against its own context and K others "
                         "(a balanced design" + (f", seed {', '.join(map(str, seeds))}" if seeds else "")
                         + "); its ceiling is log2(K + 1)")
        neg_col = f"{'negatives (ceiling)':<24} " if sampled else ""
        lines.append(f"    {'compressor':<{width}} {'accuracy':<22} {'MI bits':<22} {neg_col}{'known bits kept':<16} "
                     f"{'tokens':<7} GFLOPs/query")
        for c in f.compressors:
            name = c.compressor + (f" ({_params(c.params)})" if math.isfinite(c.params) else "")
            lines.append(f"    {name:<{width}} {fmt_ci(c.accuracy, *c.accuracy_ci):<22} "
                         f"{fmt_ci(c.mi_bits, *c.mi_ci_bits):<22} "
                         + (f"{(c.negatives + ' (' + fmt(c.mi_ceiling_bits) + ')') if c.negatives else '':<24} "
                            if sampled else "")
                         + f"{fmt(c.retained_bits):<16} "
                         f"{fmt(c.compression_tokens):<7} {fmt(c.gflops_per_query)}")
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
        else:
            lines.append(f"  - Spearman rho(MI, accuracy) over the {f.spearman_n} non-empty cells: "
                         f"{fmt_ci(f.spearman_rho, *f.spearman_ci)}.")
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
