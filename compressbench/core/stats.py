"""The interval and summary statistics used by the sweep's summary and by reports: one function
per statistic, so a report computes exactly what the sweep computed.

Per cell (over examples):

- accuracy (mean score in [0, 1] over answered examples): :func:`accuracy_interval` (Wilson for 0/1
  scores, else a seeded percentile bootstrap);
- any other per-example mean (pointwise MI, reference NLL): :func:`bootstrap_mean_ci`.

Across cells (what :mod:`compressbench.analysis.report` tabulates):

- the rate-distortion fit ``D(R) = C exp(-b R) + D0`` (:func:`fit_rate_distortion`, the model
  :func:`rd_curve`);
- Pearson and Spearman correlations with percentile-bootstrap CIs over resampled pairs
  (:func:`correlate`);
- the Pareto front of cost against accuracy (:func:`pareto_front`);
- Kendall's tau-b of two scorers' values with a bootstrap CI (:func:`rank_agreement`).

scipy is imported inside the functions that use it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

#: Seed and resamples of the bootstrap intervals (seeded: reruns give identical intervals).
BOOTSTRAP_SEED = 0
N_BOOT = 2000


def finite(values: Sequence[Any]) -> np.ndarray:
    """The finite float values of ``values`` (None and NaN dropped)."""
    arr = np.array([np.nan if v is None else float(v) for v in values], dtype=float)
    return arr[np.isfinite(arr)]


def wilson_interval(k: float, n: int, level: float = 0.95) -> tuple[float | None, float | None]:
    """Wilson score interval for k successes in n trials::

        center = (p + z^2/(2n)) / (1 + z^2/n),  half = z / (1 + z^2/n) * sqrt(p(1-p)/n + z^2/(4n^2))
    """
    if n <= 0:
        return None, None
    z = NormalDist().inv_cdf(0.5 + level / 2)
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def bootstrap_mean_ci(values: Sequence[Any], *, n_boot: int = N_BOOT, seed: int = BOOTSTRAP_SEED,
                      level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): percentile-bootstrap CI of the mean over the finite values (NaN if none;
    no interval from one value)."""
    x = finite(values)
    if x.size == 0:
        return (math.nan, math.nan, math.nan)
    if x.size == 1:
        return (float(x[0]), math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    a = (1 - level) / 2
    return float(x.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def accuracy_interval(scores: Sequence[float], level: float = 0.95) -> tuple[float | None, float | None]:
    """95% CI of a mean score in [0, 1]: Wilson for 0/1 scores, else the seeded percentile bootstrap
    of :func:`bootstrap_mean_ci`. ``(None, None)`` without scores."""
    arr = finite(scores)
    if arr.size == 0:
        return None, None
    if np.all((arr == 0) | (arr == 1)):
        return wilson_interval(float(arr.sum()), int(arr.size), level)
    _, lo, hi = bootstrap_mean_ci(arr, level=level)
    return (None if math.isnan(lo) else lo), (None if math.isnan(hi) else hi)


# ----------------------------------------------------------------------------------- across cells
# The statistics the report computes over a run's cells (:mod:`compressbench.analysis.report`):
# the rate-distortion fit, correlations, the Pareto front and the rank agreement of two scorers.

#: Fewest finite points for the rate-distortion fit (3 parameters + 2: with one spare point a
#: three-parameter curve still passes through almost any data) and for a correlation.
MIN_FIT_POINTS = 5
MIN_CORR_POINTS = 3


@dataclass(frozen=True)
class RDFit:
    """A rate-distortion fit. ``note`` is empty for a fit the data supports; otherwise it says
    ``no exponential fit supported by these N cells: <why>``, and the parameters are NaN when
    nothing was fitted (too few points, one rate, no convergence) or are the rejected fit's (it
    does not beat the constant model, or a parameter sits at its bound)."""

    n_points: int
    c: float = math.nan
    b: float = math.nan
    d0: float = math.nan
    c_se: float = math.nan
    b_se: float = math.nan
    d0_se: float = math.nan
    r2: float = math.nan
    rmse: float = math.nan
    note: str = ""

    @property
    def ok(self) -> bool:
        return not self.note


def _finite_pairs(x: Sequence[Any], y: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """The pairs (x_i, y_i) where both are known, as float arrays: NaN, inf and None are unknown."""
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(xa) & np.isfinite(ya)
    return xa[ok], ya[ok]


#: Tolerances of the "parameter at its bound" rule: C or D0 within this of 0 (or D0 of 1), in
#: distortion units (0.1 percentage points of accuracy, below what a cell's accuracy resolves;
#: curve_fit stops short of a bound by ~1e-5 on exact data); b flat when ``b * max(R) <``
#: :data:`FLAT_EXPONENT` (the exponential changes by less than 0.1% over the data, so the curve is
#: a constant there).
BOUND_TOL = 1e-3
FLAT_EXPONENT = 1e-3


def no_fit_note(n: int, why: str) -> str:
    """The note of a fit the data does not support: ``no exponential fit supported by these N cells: why``."""
    return f"no exponential fit supported by these {n} cells: {why}"


def _at_bounds(c: float, b: float, d0: float, r: np.ndarray) -> list[str]:
    """The parameters of ``D(R) = C exp(-b R) + D0`` at a bound of the fit (C >= 0, b >= 0,
    0 <= D0 <= 1), as ``["C = 0", ...]``."""
    out = []
    if c <= BOUND_TOL:
        out.append("C = 0")
    if b * float(np.max(np.abs(r))) < FLAT_EXPONENT:
        out.append("b = 0")
    if d0 <= BOUND_TOL:
        out.append("D0 = 0")
    elif d0 >= 1.0 - BOUND_TOL:
        out.append("D0 = 1")
    return out


def fit_rate_distortion(rate_bits: Sequence[float], distortion: Sequence[float]) -> RDFit:
    """Least-squares fit of ``D(R) = C exp(-b R) + D0`` with ``curve_fit`` (bounds C, b >= 0,
    0 <= D0 <= 1); ``R^2 = 1 - SS_res/SS_tot``. The fit is *supported* (empty note) only when it has
    at least :data:`MIN_FIT_POINTS` finite points (3 parameters + 2), beats the constant model
    (``R^2 > 0``) and has no parameter at a bound (:func:`_at_bounds`); otherwise the note says
    ``no exponential fit supported by these N cells`` and why, and nothing should be drawn."""
    # lazy: scipy loads only when a statistic needs it (the agent's recording path stays light)
    from scipy.optimize import curve_fit

    r, d = _finite_pairs(rate_bits, distortion)
    n = int(r.size)
    if n < MIN_FIT_POINTS:
        return RDFit(n, note=no_fit_note(n, f"too few points for 3 parameters (need >= {MIN_FIT_POINTS}: "
                                            "parameters + 2)"))
    if np.ptp(r) == 0:
        return RDFit(n, note=no_fit_note(n, "all cells have the same rate"))
    d0_guess = float(np.clip(d.min() * 0.9, 0.0, 1.0))
    c_guess = float(max(d.max() - d0_guess, 1e-3))
    b_guess = float(1.0 / max(np.mean(np.abs(r)), 1e-6))
    try:
        popt, pcov = curve_fit(rd_curve, r, d, p0=(c_guess, b_guess, d0_guess),
                               bounds=([0.0, 0.0, 0.0], [np.inf, np.inf, 1.0]), maxfev=20000)
    except (RuntimeError, ValueError) as exc:
        return RDFit(n, note=no_fit_note(n, f"the fit did not converge ({exc})"))
    resid = d - rd_curve(r, *popt)
    ss_res = float(np.sum(resid**2))
    ss_tot = float(np.sum((d - d.mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else math.nan
    with np.errstate(invalid="ignore"):
        se = np.sqrt(np.diag(pcov)) if np.all(np.isfinite(pcov)) else np.full(3, np.nan)
    note = ""
    if ss_tot == 0:
        note = no_fit_note(n, "every cell has the same distortion (the constant model fits exactly)")
    elif not r2 > 0:
        note = no_fit_note(n, f"it does not beat the constant model (R^2 = {r2:.2f} <= 0)")
    elif bounds := _at_bounds(float(popt[0]), float(popt[1]), float(popt[2]), r):
        note = no_fit_note(n, f"parameters at their bounds ({', '.join(bounds)}; R^2 = {r2:.2f})")
    return RDFit(n, float(popt[0]), float(popt[1]), float(popt[2]), float(se[0]), float(se[1]),
                 float(se[2]), r2, math.sqrt(ss_res / n), note)


@dataclass(frozen=True)
class Correlation:
    """Pearson and Spearman correlation of ``x`` with ``y`` with bootstrap CIs (NaN if too few)."""

    x: str
    y: str
    n: int
    pearson_r: float = math.nan
    pearson_p: float = math.nan
    pearson_ci_low: float = math.nan
    pearson_ci_high: float = math.nan
    spearman_rho: float = math.nan
    spearman_p: float = math.nan
    spearman_ci_low: float = math.nan
    spearman_ci_high: float = math.nan
    note: str = ""


def spans_zero(low: float, high: float) -> bool:
    """Whether an interval ``[low, high]`` holds 0 (a correlation the data cannot tell from none);
    False when either bound is unknown."""
    return bool(math.isfinite(low) and math.isfinite(high) and low <= 0.0 <= high)


def _paired_resamples(xa: np.ndarray, ya: np.ndarray, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n_boot`` bootstrap resamples of the pairs (one per row, drawn with ``default_rng(seed)``),
    without the rows where x or y is constant (no correlation or rank order is defined there)."""
    idx = np.random.default_rng(seed).integers(0, xa.size, size=(n_boot, xa.size))
    xs, ys = xa[idx], ya[idx]
    keep = (np.ptp(xs, axis=1) > 0) & (np.ptp(ys, axis=1) > 0)
    return xs[keep], ys[keep]


def _row_pearson(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Pearson's r of each row of ``xs`` with the same row of ``ys``."""
    xc, yc = xs - xs.mean(axis=1, keepdims=True), ys - ys.mean(axis=1, keepdims=True)
    return np.clip((xc * yc).sum(axis=1) / np.sqrt((xc * xc).sum(axis=1) * (yc * yc).sum(axis=1)), -1.0, 1.0)


def _row_kendall_tau_b(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of each row of ``xs`` with the same row of ``ys`` (``scipy.stats.kendalltau``'s
    default): (concordant - discordant) / sqrt((pairs - ties in x) (pairs - ties in y)) over the pairs
    i < j. Rows must not be constant."""
    sx = np.sign(xs[:, :, None] - xs[:, None, :])
    sy = np.sign(ys[:, :, None] - ys[:, None, :])
    n = xs.shape[1]
    upper = np.triu(np.ones((n, n), dtype=bool), k=1)
    s = (sx * sy)[:, upper].sum(axis=1)
    untied_x, untied_y = (sx[:, upper] != 0).sum(axis=1), (sy[:, upper] != 0).sum(axis=1)
    return np.clip(s / np.sqrt(untied_x * untied_y), -1.0, 1.0)


def _percentile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    """The percentile-bootstrap interval at ``level`` (NaN, NaN when no resample was usable)."""
    if not len(values):
        return math.nan, math.nan
    a = (1 - level) / 2
    return float(np.quantile(values, a)), float(np.quantile(values, 1 - a))


def correlate(x: Sequence[float], y: Sequence[float], *, x_name: str = "x", y_name: str = "y",
              n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> Correlation:
    """Pearson r and Spearman rho (``scipy.stats``) with percentile-bootstrap CIs from resampling
    the (x, y) pairs; resamples where x or y is constant are dropped."""
    # lazy: scipy loads only when a statistic needs it (the agent's recording path stays light)
    from scipy import stats

    xa, ya = _finite_pairs(x, y)
    n = int(xa.size)
    if n < MIN_CORR_POINTS:
        return Correlation(x_name, y_name, n, note=f"too few cells to correlate (have {n}, need >= {MIN_CORR_POINTS})")
    if np.ptp(xa) == 0 or np.ptp(ya) == 0:
        return Correlation(x_name, y_name, n, note="one variable is constant across cells")
    pr = stats.pearsonr(xa, ya)
    sr = stats.spearmanr(xa, ya)
    xs, ys = _paired_resamples(xa, ya, n_boot, seed)
    bp = _row_pearson(xs, ys)
    bs = _row_pearson(stats.rankdata(xs, axis=1), stats.rankdata(ys, axis=1))
    (pl, ph), (sl, sh) = _percentile_interval(bp, level), _percentile_interval(bs, level)
    return Correlation(x_name, y_name, n, float(pr[0]), float(pr[1]), pl, ph,
                       float(sr[0]), float(sr[1]), sl, sh)


def pareto_front(cost: Sequence[float], accuracy: Sequence[float]) -> np.ndarray:
    """Boolean mask of the points no other point dominates (cost <= and accuracy >=, one strictly).
    Points with a non-finite cost or accuracy are never on the front."""
    c = np.asarray(cost, dtype=float)
    a = np.asarray(accuracy, dtype=float)
    ok = np.isfinite(c) & np.isfinite(a)
    mask = np.zeros(c.size, dtype=bool)
    for i in np.flatnonzero(ok):
        others = ok.copy()
        others[i] = False
        dominated = others & (c <= c[i]) & (a >= a[i]) & ((c < c[i]) | (a > a[i]))
        mask[i] = not dominated.any()
    return mask


@dataclass(frozen=True)
class RankAgreement:
    """Kendall's tau between two scorers' MI over the same compressors, with a bootstrap CI."""

    n: int
    kendall_tau: float = math.nan
    tau_ci_low: float = math.nan
    tau_ci_high: float = math.nan
    mean_offset_bits: float = math.nan  # mean of (MI under scorer b - MI under scorer a)
    note: str = ""


def rank_agreement(a: Sequence[float], b: Sequence[float], *, n_boot: int = 2000, seed: int = 0,
                   level: float = 0.95) -> RankAgreement:
    """Kendall's tau (``scipy.stats.kendalltau``, tau-b) of paired values ``a``, ``b`` with a
    percentile-bootstrap CI from resampling the pairs (resamples where either side is constant are
    dropped), and the mean offset ``b - a``."""
    # lazy: scipy loads only when a statistic needs it (the agent's recording path stays light)
    from scipy import stats

    xa, ya = _finite_pairs(a, b)
    n = int(xa.size)
    if n < MIN_CORR_POINTS:
        return RankAgreement(n, note=f"too few compressors to rank (have {n}, need >= {MIN_CORR_POINTS})")
    offset = float(np.mean(ya - xa))
    if np.ptp(xa) == 0 or np.ptp(ya) == 0:
        return RankAgreement(n, mean_offset_bits=offset, note="one scorer gives every compressor the same MI")
    tau = float(stats.kendalltau(xa, ya).statistic)
    xs, ys = _paired_resamples(xa, ya, n_boot, seed)
    lo, hi = _percentile_interval(_row_kendall_tau_b(xs, ys), level)
    return RankAgreement(n, tau, lo, hi, offset)


def rd_curve(rate_bits: np.ndarray | float, c: float, b: float, d0: float) -> np.ndarray | float:
    """Distortion model ``D(R) = C * exp(-b * R) + D0`` (R in bits per token, D = 1 - accuracy)."""
    return c * np.exp(-b * np.asarray(rate_bits, dtype=float)) + d0
