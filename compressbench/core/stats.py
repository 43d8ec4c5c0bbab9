"""The interval and summary statistics used by the sweep's summary and by reports: one function
per statistic, so a report computes exactly what the sweep computed.

- accuracy (mean score in [0, 1] over answered examples): :func:`accuracy_interval` (Wilson for 0/1
  scores, else a seeded percentile bootstrap);
- any other per-example mean (pointwise MI, reference NLL): :func:`bootstrap_mean_ci`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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


def rd_curve(rate_bits: np.ndarray | float, c: float, b: float, d0: float) -> np.ndarray | float:
    """Distortion model ``D(R) = C * exp(-b * R) + D0`` (R in bits per token, D = 1 - accuracy)."""
    return c * np.exp(-b * np.asarray(rate_bits, dtype=float)) + d0
