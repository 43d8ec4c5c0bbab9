"""Per-cell statistics from records: the sweep's ``summary.csv``/``summary.json`` rows, and the same
function for a report that has only records (:func:`cell_stats`).

Accuracy is the mean score over the examples that did not fail (an unparseable answer counts as
0 and is counted in ``n_unscored``), with :func:`compressbench.core.stats.accuracy_interval`. MI comes
from the group's estimate (:func:`compressbench.measure.mi.estimate_mi`) when the sweep has it, else from
the records' pointwise MI (mean over examples, :func:`compressbench.core.stats.bootstrap_mean_ci`).

Usable bits about the answer (``predictor_mode: loglik``): the mean over examples of the records'
``pvi_bits`` (:func:`compressbench.measure.predict_loglik.pvi_bits`, log base 2) with
:func:`compressbench.core.stats.bootstrap_mean_ci`; ``usable_ceiling_bits`` is the mean over examples
of ``-log2 q(a* | empty)`` (:func:`compressbench.measure.predict_loglik.gold_surprisal_bits` of the
empty compression: the most the mean can reach) and ``usable_bound_bits`` the mean log2 #options of
the choice questions (the ceiling of a predictor that is uniform without context).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from compressbench.engine.records import CELL_AXES, ROLES, CellId, RunRecord
from compressbench.core.stats import accuracy_interval, bootstrap_mean_ci, finite
from compressbench.measure.predict_loglik import gold_surprisal_bits

SUMMARY_COLUMNS: tuple[str, ...] = (
    *CELL_AXES, "cell_key", "prompt_id",
    "n", "n_samples", "n_errors", "n_unscored",
    "accuracy", "accuracy_ci_low", "accuracy_ci_high", "accuracy_norm",
    "mi_bits", "mi_bits_raw", "mi_ci_low_bits", "mi_ci_high_bits", "ceiling_bits", "bits_per_token",
    "mi_negatives", "mi_n_negatives", "mi_design_seed", "mi_k_stop",
    "mi_kind", "mi_saturated", "mi_bound_bits", "mi_bound_ci_low_bits", "mi_bound_ci_high_bits", "mi_correction_bits",
    "bits_per_token_ci_low", "bits_per_token_ci_high", "mean_compression_tokens", "mean_ref_nll_nats", "retained_bits",
    "usable_bits", "usable_bits_ci_low", "usable_bits_ci_high", "usable_ceiling_bits", "usable_bound_bits",
    *(f"tokens_{r}_{k}" for r in ROLES for k in ("prompt", "completion", "cached")),
    *(f"flops_{r}" for r in ROLES),
    "wall_s",
)
#: The statistic columns (what a report takes from a summary row).
STAT_COLUMNS: tuple[str, ...] = tuple(c for c in SUMMARY_COLUMNS if c not in CELL_AXES and c != "cell_key")


#: The MI columns of a summary row -> the ``MIEstimate`` attribute each comes from (:func:`mi_columns`).
MI_COLUMNS: dict[str, str] = {
    "mi_bits": "bits", "mi_bits_raw": "bits_raw", "mi_ci_low_bits": "ci_low_bits", "mi_ci_high_bits": "ci_high_bits",
    "ceiling_bits": "ceiling_bits", "bits_per_token": "bits_per_token",
    "bits_per_token_ci_low": "bits_per_token_ci_low", "bits_per_token_ci_high": "bits_per_token_ci_high"}


def mi_columns(est: Any) -> dict[str, Any]:
    """The MI columns of a group's estimate: an ``MIEstimate``, or these columns as the sweep
    stored them (``mi_estimates.json``, :func:`compressbench.engine.store.read_estimates`), so a
    report without ``summary.json`` shows exactly what the summary would."""
    if isinstance(est, Mapping):
        return {k: est.get(k) for k in MI_COLUMNS}
    return {k: getattr(est, attr) for k, attr in MI_COLUMNS.items()}


def cell_stats(recs: Sequence[RunRecord], est: Any = None, n_samples: int | None = None) -> dict[str, Any]:
    """Every statistic column of one cell's records; ``est`` is the group's MIEstimate or its
    stored columns (:func:`mi_columns`; None: MI from the records' pointwise terms, the point
    and interval clipped at 0 like the estimator's)."""
    ok = [r for r in recs if r.error is None]
    scored = [r.score for r in ok if r.score is not None]
    lo, hi = accuracy_interval(scored)
    nlls = finite([r.ref_nll_nats for r in ok])
    toks = [t for r in ok for t in (r.compression_n_tokens or ())]
    mean_tokens = float(np.mean(toks)) if toks else None
    kept = [float(np.mean(r.retained_bits)) for r in ok if r.retained_bits]
    normed = [r.score_norm for r in ok if r.score_norm is not None]
    usable, ulo, uhi = bootstrap_mean_ci([r.pvi_bits for r in ok])
    n_opts = [len(r.loglik[0]["options"]) for r in ok if r.loglik and r.loglik[0].get("options")]
    ceiling = finite([gold_surprisal_bits(r.loglik_empty, r.gold) for r in ok if r.loglik_empty is not None])
    if est is not None:
        mi = mi_columns(est)
    else:
        per_ex = [float(np.mean(finite(r.pointwise_mi_bits or ()))) for r in ok if finite(r.pointwise_mi_bits or ()).size]
        raw, mlo, mhi = bootstrap_mean_ci(per_ex)
        n_ctx = len(per_ex)
        bits = max(0.0, raw) if math.isfinite(raw) else None
        # clipped at 0 like the point (the estimator's convention: MI cannot be negative)
        mi = {"mi_bits": bits, "mi_bits_raw": raw if math.isfinite(raw) else None,
              "mi_ci_low_bits": max(0.0, mlo) if math.isfinite(mlo) else None,
              "mi_ci_high_bits": max(0.0, mhi) if math.isfinite(mhi) else None,
              "ceiling_bits": math.log2(n_ctx) if n_ctx else None,
              "bits_per_token": bits / mean_tokens if bits is not None and mean_tokens else None,
              "bits_per_token_ci_low": None, "bits_per_token_ci_high": None}
    mi.update(_negatives_stats(ok, est))
    row: dict[str, Any] = {
        "n": len(recs),
        "n_samples": n_samples if n_samples is not None else max((len(r.compressions) for r in recs), default=0),
        "n_errors": len(recs) - len(ok), "n_unscored": sum(1 for r in ok if r.unscored),
        "accuracy": float(np.mean(scored)) if scored else None, "accuracy_ci_low": lo, "accuracy_ci_high": hi,
        "accuracy_norm": float(np.mean(normed)) if normed else None,
        **mi,
        "mean_compression_tokens": mean_tokens,
        "mean_ref_nll_nats": float(nlls.mean()) if nlls.size else None,
        # known-information tasks: mean over examples of the bits their compressions keep verbatim
        "retained_bits": float(np.mean(kept)) if kept else None,
        "usable_bits": usable if math.isfinite(usable) else None,
        "usable_bits_ci_low": ulo if math.isfinite(ulo) else None,
        "usable_bits_ci_high": uhi if math.isfinite(uhi) else None,
        "usable_ceiling_bits": float(ceiling.mean()) if ceiling.size else None,
        "usable_bound_bits": float(np.mean(np.log2(n_opts))) if n_opts else None,
        "wall_s": float(sum(r.wall_s for r in recs)),
    }
    for role in ROLES:
        usages = [r.usage.get(role) for r in recs]
        for kind in ("prompt", "completion", "cached"):
            vals = [None if u is None else getattr(u, f"n_{kind}_prompt_tokens" if kind == "cached"
                                                   else f"n_{kind}_tokens") for u in usages]
            if kind == "cached":
                vals = [v or 0 for u, v in zip(usages, vals) if u is not None]
                row[f"tokens_{role}_cached"] = int(sum(vals)) if recs and len(vals) == len(recs) else None
            else:
                row[f"tokens_{role}_{kind}"] = None if not recs or any(v is None for v in vals) else int(sum(vals))
        fl = [r.flops.get(role) for r in recs]
        row[f"flops_{role}"] = None if not recs or any(v is None for v in fl) else float(sum(fl))
    return row


#: How the MI was measured: summary column -> the estimate's attribute (the record's ``mi_estimate`` key).
_HOW_COLUMNS: dict[str, str] = {
    "mi_negatives": "negatives", "mi_n_negatives": "n_negatives", "mi_design_seed": "design_seed",
    "mi_k_stop": "k_stop", "mi_kind": "kind", "mi_saturated": "saturated", "mi_bound_bits": "bound_bits",
    "mi_bound_ci_low_bits": "bound_ci_low_bits", "mi_bound_ci_high_bits": "bound_ci_high_bits",
    "mi_correction_bits": "correction_bits"}


def _negatives_stats(ok: Sequence[RunRecord], est: Any) -> dict[str, Any]:
    """How the cell's MI was measured: ``mi_negatives`` (all | fixed | auto, or ``not measured``),
    ``mi_n_negatives`` (K; the ceiling is log2(K + 1)), ``mi_design_seed``, ``mi_k_stop`` (auto: why
    K stopped), ``mi_kind`` (what ``mi_bits`` is: all contexts | corrected | saturated: a lower
    bound), ``mi_saturated``, the raw InfoNCE bound ``mi_bound_bits`` with its interval and
    ``mi_correction_bits`` (sampled negatives); from the estimate, else from the records' ``mi_estimate``."""
    info: Any = None
    if est is not None and not isinstance(est, Mapping):  # stored MI columns (mi_estimates.json): the records say
        info = {attr: getattr(est, attr, None) for attr in _HOW_COLUMNS.values()}
        info["negatives"] = getattr(est, "negatives", "all")
        info["ceiling_bits"] = est.ceiling_bits
    else:
        info = next((r.mi_estimate for r in ok if r.mi_estimate), None)
    if not info:
        return dict.fromkeys(_HOW_COLUMNS)
    if info.get("measured") is False:
        return {**dict.fromkeys(_HOW_COLUMNS), "mi_negatives": "not measured", "mi_bits": None, "mi_bits_raw": None,
                "mi_ci_low_bits": None, "mi_ci_high_bits": None, "ceiling_bits": None, "bits_per_token": None}
    out = {col: info.get(attr) for col, attr in _HOW_COLUMNS.items()}
    if est is None and info.get("ceiling_bits") is not None:
        out["ceiling_bits"] = info["ceiling_bits"]  # log2(K + 1), not log2 N, for sampled negatives
    return out


def summary_row(cell: CellId, cell_key: str, prompt_id: str, n_samples: int, recs: Sequence[RunRecord],
                est: Any) -> dict[str, Any]:
    """One summary row (docs/run_format.md) from a cell's current records and its group's MIEstimate."""
    return {**cell.as_dict(), "cell_key": cell_key, "prompt_id": prompt_id, **cell_stats(recs, est, n_samples)}
