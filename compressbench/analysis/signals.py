"""Per-example signals, judged: how well does each predict that an example is answered correctly?

For every cell and every signal, the AUROC of the signal for the event "this example is answered
correctly" (``score >= 0.5``: right for 0/1 scores) with a 95% percentile-bootstrap CI from
resampling the cell's examples. AUROC = P(signal of a correct example > signal of a wrong one)
+ 1/2 P(tie) (the Mann-Whitney U statistic over n_correct * n_wrong, average ranks for ties):
0.5 = no signal, 1 = separates perfectly, below 0.5 = higher values go with wrong answers.

Signals (per record, means over the compression samples):

- ``pointwise_mi_bits``: the example's pointwise MI about its context (bits, log2; from the MI
  estimate, needs no answer);
- ``confidence``: the likelihood predictor's ``max_k q(o_k | z)`` (needs no answer);
- ``compression_tokens``: the compression's length (scorer tokens);
- ``pvi_bits``: usable bits about the answer (:func:`compressbench.measure.predict_loglik.pvi_bits`),
  an **oracle** reference: it needs the gold answer, so no router can use it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from compressbench.core.stats import BOOTSTRAP_SEED, N_BOOT
from compressbench.engine.records import CELL_AXES, RunRecord

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

#: signal -> (label, needs the gold answer)
SIGNALS: dict[str, tuple[str, bool]] = {
    "pointwise_mi_bits": ("pointwise MI (bits)", False),
    "confidence": ("predictor confidence", False),
    "compression_tokens": ("compression length (tokens)", False),
    "pvi_bits": ("usable bits, PVI (oracle)", True),
}
MIN_CLASS = 1  # examples needed in each class (correct, wrong) for an AUROC


def _mean(values: Sequence[Any] | None) -> float:
    arr = np.array([np.nan if v is None else float(v) for v in values or ()], dtype=float)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else math.nan


def record_signals(rec: RunRecord) -> dict[str, float]:
    """The signals of one record (NaN where unknown)."""
    return {
        "pointwise_mi_bits": _mean(rec.pointwise_mi_bits),
        "confidence": math.nan if rec.confidence is None else float(rec.confidence),
        "compression_tokens": _mean(rec.compression_n_tokens),
        "pvi_bits": math.nan if rec.pvi_bits is None else float(rec.pvi_bits),
    }


def is_correct(rec: RunRecord) -> bool | None:
    """Was the example answered correctly (``score >= 0.5``)? None when it has no score."""
    return None if rec.error is not None or rec.score is None else bool(rec.score >= 0.5)


def _auroc_rows(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """AUROC of each row of ``scores`` against the same row of boolean ``labels`` (NaN for a row
    with one class): Mann-Whitney U from average ranks over n_pos * n_neg."""
    # lazy: scipy loads only when a statistic needs it (the agent's recording path stays light)
    from scipy.stats import rankdata

    ranks = rankdata(scores, axis=1)
    n_pos = labels.sum(axis=1).astype(float)
    n_neg = labels.shape[1] - n_pos
    u = (ranks * labels).sum(axis=1) - n_pos * (n_pos + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """AUROC of ``scores`` for the positive ``labels`` (ties count 1/2); NaN without both classes."""
    s, y = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in length ({s.size} vs {y.size})")
    return float(_auroc_rows(s[None, :], y[None, :])[0]) if s.size else math.nan


@dataclass(frozen=True)
class AUROC:
    """An AUROC with its percentile-bootstrap CI; ``note`` says why it is missing."""

    auroc: float
    ci_low: float
    ci_high: float
    n_pos: int
    n_neg: int
    note: str = ""


def auroc_ci(scores: Sequence[float], labels: Sequence[bool], *, n_boot: int = N_BOOT, seed: int = BOOTSTRAP_SEED,
             level: float = 0.95) -> AUROC:
    """:func:`auroc` over the pairs with a finite score, with a percentile-bootstrap CI from
    resampling them (``default_rng(seed)``; resamples with one class only are dropped)."""
    s, y = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    ok = np.isfinite(s)
    s, y = s[ok], y[ok]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos < MIN_CLASS or n_neg < MIN_CLASS:
        return AUROC(math.nan, math.nan, math.nan, n_pos, n_neg,
                     note=f"one class only ({n_pos} correct, {n_neg} wrong)")
    point = auroc(s, y)
    idx = np.random.default_rng(seed).integers(0, s.size, size=(n_boot, s.size))
    boots = _auroc_rows(s[idx], y[idx])
    boots = boots[np.isfinite(boots)]
    a = (1 - level) / 2
    lo, hi = (float(np.quantile(boots, a)), float(np.quantile(boots, 1 - a))) if boots.size else (math.nan, math.nan)
    return AUROC(point, lo, hi, n_pos, n_neg)


def signal_table(records: Sequence[RunRecord], *, n_boot: int = N_BOOT, seed: int = BOOTSTRAP_SEED) -> pd.DataFrame:
    """One row per (cell, signal) with a known value in the cell: the cell's axes, ``signal``,
    ``oracle`` (needs the answer), ``auroc``, ``auroc_ci_low``, ``auroc_ci_high``, ``n_correct``,
    ``n_wrong`` and a ``note``."""
    # lazy: pandas (the [data]/[plot] extra) loads only when a table is built
    import pandas as pd

    by_cell: dict[Any, list[RunRecord]] = {}
    for r in records:
        by_cell.setdefault(r.cell, []).append(r)
    rows = []
    for cell in sorted(by_cell):
        recs = [r for r in by_cell[cell] if is_correct(r) is not None]
        labels = [bool(is_correct(r)) for r in recs]
        sigs = [record_signals(r) for r in recs]
        for name, (_, oracle) in SIGNALS.items():
            vals = np.array([s[name] for s in sigs], dtype=float)
            if not np.isfinite(vals).any():
                continue
            a = auroc_ci(vals, labels, n_boot=n_boot, seed=seed)
            rows.append({**cell.as_dict(), "signal": name, "oracle": oracle, "auroc": a.auroc,
                         "auroc_ci_low": a.ci_low, "auroc_ci_high": a.ci_high, "n_correct": a.n_pos,
                         "n_wrong": a.n_neg, "note": a.note})
    cols = [*CELL_AXES, "signal", "oracle", "auroc", "auroc_ci_low", "auroc_ci_high", "n_correct", "n_wrong", "note"]
    return pd.DataFrame(rows, columns=cols)


__all__ = ["AUROC", "SIGNALS", "auroc", "auroc_ci", "is_correct", "record_signals", "signal_table"]
