r"""Mutual information between contexts and their compressions, from token log-probabilities.

Pure numpy/scipy: no torch, no backend imports. The model-facing half (building the log-prob
tensor with a scorer model) is :mod:`compressbench.measure.scoring`.

The estimator
-------------
N contexts :math:`x_1..x_N`, M compressions sampled per context, :math:`z_{ij} \sim p(z|x_i)`,
and ``logp[i, j, l] = log p(z_ij | x_l)`` in **nats** (summed token log-probabilities of the
compression after a scoring prompt that holds context ``x_l`` and its query). The mixture
estimate (He et al. 2025, arXiv 2512.21720) is::

    I_hat = 1/(N*M) * sum_{i,j} [ logp[i,j,i] - logsumexp_l(logp[i,j,l]) + log N ]     (nats)

i.e. the marginal ``p(z)`` is the mixture ``1/N sum_l p(z | x_l)`` over the same N contexts,
``l = i`` included. Everything is computed with logsumexp; nothing is exponentiated on its own.
Results are reported in **bits** (``bits = nats / ln 2``).

Ceiling. Because the mixture contains the compression's own context, each pointwise term is at
most ``log N``, so ``I_hat <= log2 N`` bits. An estimate at (or near) the ceiling says only
"at least this much": every compression identifies its own context among these N. To measure
more, use more contexts; :func:`mi_vs_n` shows whether the estimate is still growing with N.

Clipping. Finite-sample estimates can be negative (the true MI cannot). With ``clip=True``
(the method's convention) ``bits`` is ``max(0, bits_raw)``; this hides how negative the raw value
was, i.e. how much noise there is when the compressions carry (almost) nothing about their
contexts. The raw value is always kept (``bits_raw``, ``nats_raw``, ``pointwise_bits``).

Leave-one-out marginal. ``marginal="leave_one_out"`` takes the mixture over the *other*
contexts only (``l != i``) and adds ``log(N - 1)``::

    I_loo = 1/(N*M) * sum_{i,j} [ logp[i,j,i] - logsumexp_{l != i}(logp[i,j,l]) + log(N-1) ]

It is not capped at ``log N`` (it is +inf when a compression is impossible under every other
context). Prefer it when the mixture estimate sits at its ceiling and you cannot add contexts:
it then still ranks compressors that all identify their context. It tends to overestimate
(the own context is missing from the marginal), so report it as such and never compare it with
mixture estimates. For unbiased-looking numbers below the ceiling, use the mixture.

Sampled negatives (``mi_negatives``). The mixture over all N contexts is the InfoNCE form with
N - 1 negatives and costs N*M*N scored entries. With K < N - 1, each compression is scored under
its own context and K others from a seeded, balanced design (:func:`negatives_design`: every
context is a negative exactly K times, so each prefix still scores the same batch after one
prefill; N prefills plus N*M*(K + 1) continuations). The same form over those K + 1 contexts,
``I_K`` (:func:`estimate_mi_negatives`'s ``bound_bits``), is a lower bound capped at
``log2(K + 1)``, low against the all-context estimate by about ``c / (K + 1)`` (the own context
weighs 1 / (K + 1) in the mixture instead of 1 / N; in the weak-signal limit ``I_K = I (1 - 1/(K+1))``
to first order). The reported estimate is its **bias-corrected** extrapolation to all N contexts
(:func:`corrected_pointwise_nats`), per compression, from entries already scored (the design of
``K' = floor((K + 1) / 2) - 1`` is nested in that of K)::

    pmi_c = pmi_K + a (pmi_K - pmi_K'),   a = (1/(K+1) - 1/N) / (1/(K'+1) - 1/(K+1))  (= 1 - (K+1)/N
                                                                                       when K'+1 = (K+1)/2)

so its bootstrap interval over contexts includes the correction's variance. K = 1 (K' = 0) uses
``pmi_0 = 0`` (one context explains itself: the K = 0 estimate is 0 by definition). On a
deterministic class channel of 2^k classes (exact hypergeometric expectations) the corrected
estimate is within 0.06 bits of the all-context one wherever the bound is at least 1.2 bits
below its ceiling, while the bound is low by up to 0.33 bits there; nearer the ceiling the
extrapolation fails (at 0.7 bits: 0.15 low, at 0.35 bits: 0.6 low): a K-design cannot see
information it cannot resolve. Hence **saturation** (:func:`is_saturated`): where the bound's
interval reaches within ``margin_bits`` (1 bit, ``mi_auto_margin_bits``) of ``log2(K + 1)`` the
estimate is reported as the bound itself, flagged ``saturated`` ("saturated: a lower bound"),
never as the corrected number. ``auto`` (:func:`auto_next_k`) starts at K = 15 and stops at the
first K where the estimate is not saturated and its correction is at most
``AUTO_CORRECTION_BITS``; else it grows K (saturated: straight to the K whose ceiling clears the
corrected interval by the margin, at least one doubling, and N - 1 where that K + 1 >= N / 2), up
to N - 1 (where it is :func:`estimate_mi` itself); where the full matrix of distinct pairs is as
cheap as the start design it scores every context at once
(:func:`compressbench.measure.scoring.auto_scores_all`). Never compare estimates of different K as if they were one
measurement: the report refuses to pool them.

Confidence intervals. Bootstrap over contexts: resample N context indices with replacement,
recompute the whole estimate with the marginal taken over the resampled set (duplicates of
other contexts count with their multiplicity), and take the percentile interval.
Deterministic for a given seed. A context drawn c times contributes its terms c times; by
default (``boot_own_copies="once"``) its own marginal holds it in one of the N slots and the
other drawn contexts fill the other N - 1. Counting all c copies in its own marginal
(``boot_own_copies="all"``) treats a unit drawn twice as a second context that explains its
compressions perfectly: each duplicated context loses about log c, the replicates sit below
the estimate and the interval misses. In the tests' discrete channel (K = 16 symbols, q = 0.8,
N = 8, M = 4) the 95% interval covered the estimator's expectation in 63% of 200 seeds with
"all" and in 97.5% with "once" (K = 4, q = 0.6: 92% and 98%).
At the ceiling (every compression identifies its context) every "once" replicate equals
log N too, so the interval collapses to the ceiling: that is the cue to add contexts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy.special import logsumexp

from compressbench.core.errors import UsageError
from compressbench.core.types import LN2  # the one nats -> bits constant (bits = nats / ln 2)

#: Log-probabilities up to this many nats above 0 are accepted as rounding error (a sum of
#: ~1,000 float32 token log-probs of near-certain tokens can land a little above 0); larger
#: positive values are rejected (a probability cannot exceed 1). Values are used as given.
POSITIVE_TOLERANCE_NATS = 1e-4

Marginal = Literal["mixture", "leave_one_out"]
_MARGINALS = ("mixture", "leave_one_out")
OwnCopies = Literal["once", "all"]
_OWN_COPIES = ("once", "all")

# Below this, a bootstrap mixture sum (scaled by the row maximum) may have underflowed; such
# entries are recomputed exactly with a weighted logsumexp.
_UNDERFLOW_GUARD = 1e-250


@dataclass(frozen=True)
class MIEstimate:
    """An MI estimate in bits (log base 2), with its ceiling, bootstrap interval and rate.

    Fields:
        bits: the estimate, clipped at 0 when ``clipped`` is True, else equal to ``bits_raw``.
        bits_raw, nats_raw: the unclipped estimate (``bits_raw = nats_raw / ln 2``).
        ci_low_bits, ci_high_bits: percentile bootstrap interval at level ``ci`` (clipped at 0
            when ``clipped``); None when ``n_boot == 0``.
        ci_low_bits_raw, ci_high_bits_raw: the same interval before clipping.
        ceiling_bits: ``log2 N``, the most the mixture estimator can return. The leave-one-out
            estimator is not bounded by it.
        pointwise_bits: (N, M) array, the per-compression terms (their mean is ``bits_raw``).
        n_contexts (N), n_samples (M), marginal, clipped, ci (level), n_boot, seed,
        boot_own_copies (how the bootstrap treats a context's own duplicates; see the module doc).
        mean_tokens: mean compression length in tokens (None without ``n_tokens``).
        bits_per_token: ``bits / mean_tokens`` (the method's rate R), with its bootstrap interval
            ``bits_per_token_ci_low`` / ``bits_per_token_ci_high`` (same resamples as ``bits``).
    """

    bits: float
    bits_raw: float
    nats_raw: float
    ci_low_bits: float | None
    ci_high_bits: float | None
    ci_low_bits_raw: float | None
    ci_high_bits_raw: float | None
    ceiling_bits: float
    pointwise_bits: np.ndarray
    n_contexts: int
    n_samples: int
    marginal: str
    clipped: bool
    ci: float
    n_boot: int
    seed: int | None
    boot_own_copies: str = "once"
    mean_tokens: float | None = None
    bits_per_token: float | None = None
    bits_per_token_ci_low: float | None = None
    bits_per_token_ci_high: float | None = None
    #: Sampled negatives (:func:`estimate_mi_negatives`): "all" (every other context, the mixture
    #: estimator above), "fixed" (K given) or "auto" (K grown per group, see :func:`auto_next_k`).
    negatives: str = "all"
    #: K, the negatives each compression was scored against (N - 1 with "all"); ceiling log2(K + 1).
    n_negatives: int | None = None
    #: Seed of the balanced design of negatives (None with "all": no design).
    design_seed: int | None = None
    #: "auto" only: why K stopped growing (:data:`STOP_BELOW_CEILING`, :data:`STOP_ALL` or :data:`STOP_CHEAP`).
    k_stop: str | None = None
    #: Sampled negatives (K < N - 1) only, else None: the raw InfoNCE estimate over the K + 1 contexts,
    #: a lower bound with ceiling ``ceiling_bits`` = log2(K + 1) (clipped at 0 like ``bits``; ``_raw``
    #: unclipped), and its interval (clipped).
    bound_bits: float | None = None
    bound_bits_raw: float | None = None
    bound_ci_low_bits: float | None = None
    bound_ci_high_bits: float | None = None
    #: What the extrapolation to all N contexts adds to the bound (bits, unclipped means); computed
    #: also where saturated (then not applied). None with every context.
    correction_bits: float | None = None
    #: True where the bound's interval reaches within the margin of its ceiling (:func:`is_saturated`):
    #: then ``bits`` / ``pointwise_bits`` / the interval are the bound's ("saturated: a lower bound"),
    #: not the corrected estimate's.
    saturated: bool = False

    @property
    def kind(self) -> str:
        """What ``bits`` is (:func:`estimate_kind`)."""
        return estimate_kind(self.bound_bits is not None, self.saturated)

    @property
    def at_ceiling(self) -> bool:
        """True when the mixture estimate is within 1% of ``log2 N``: add contexts to learn more
        (sampled negatives: when it is saturated, :func:`is_saturated`)."""
        if self.bound_bits is not None:
            return self.saturated
        return self.marginal == "mixture" and self.bits_raw >= 0.99 * self.ceiling_bits

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe values (floats, ints, strings, bools, None, nested lists).

        Non-finite floats (only possible as +inf with the leave-one-out marginal) become None,
        so the result passes ``json.dumps(..., allow_nan=False)``.
        """
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if name == "pointwise_bits":
                out[name] = [[_json_float(v) for v in row] for row in np.asarray(value).tolist()]
            elif isinstance(value, (bool, str, int)) or value is None:
                out[name] = value
            else:
                out[name] = _json_float(value)
        out["at_ceiling"] = self.at_ceiling
        out["kind"] = self.kind
        return out


def _json_float(value: Any) -> float | None:
    v = float(value)
    return v if math.isfinite(v) else None


def _fmt_index(idx: Sequence[int]) -> str:
    return ", ".join(str(int(k)) for k in idx)


def validate_logp(logp: Any) -> np.ndarray:
    """Check a log-prob tensor and return it as float64 of shape (N, M, N).

    Accepts shape (N, M, N) or (N, N) (then M = 1). Raises :class:`UsageError` (a ValueError)
    naming the offending entry for: wrong number of dimensions, N < 2, a last axis that is not
    N long, M = 0, NaN, +inf, a log-probability above ``POSITIVE_TOLERANCE_NATS``, or
    ``logp[i, j, i] = -inf`` (a compression sampled from x_i cannot be impossible under x_i).
    -inf elsewhere is allowed: a compression can be impossible under another context.
    """
    try:
        arr = np.asarray(logp, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"logp must be an array of numbers (log-probabilities in nats): {exc}") from None
    if arr.ndim == 2:
        arr = arr[:, None, :]
    if arr.ndim != 3:
        raise UsageError(
            f"logp must have shape (N, M, N) (or (N, N) for M = 1) with logp[i, j, l] = "
            f"log p(z_ij | x_l) in nats; got {arr.ndim} dimension(s), shape {arr.shape}"
        )
    n, m, n2 = arr.shape
    if n != n2:
        raise UsageError(
            f"logp must have shape (N, M, N): axis 0 (source context i) has {n} entries but "
            f"axis 2 (scoring context l) has {n2}; score every compression under every context"
        )
    if n < 2:
        raise UsageError(f"MI needs at least 2 contexts (N >= 2); got N = {n}")
    if m < 1:
        raise UsageError("logp has no compressions (M = 0); give at least one per context")
    nan = np.argwhere(np.isnan(arr))
    if len(nan):
        raise UsageError(f"logp[{_fmt_index(nan[0])}] is NaN ({len(nan)} NaN entries); "
                         "log-probabilities must be numbers <= 0 (or -inf)")
    pos_inf = np.argwhere(np.isposinf(arr))
    if len(pos_inf):
        raise UsageError(f"logp[{_fmt_index(pos_inf[0])}] is +inf; log-probabilities must be <= 0")
    too_big = np.argwhere(arr > POSITIVE_TOLERANCE_NATS)
    if len(too_big):
        k = tuple(too_big[0])
        raise UsageError(
            f"logp[{_fmt_index(k)}] = {float(arr[k])!r} is positive; log-probabilities (nats) must be "
            f"<= 0 (up to {POSITIVE_TOLERANCE_NATS} of rounding). Pass log p, not p or -log p"
        )
    own = arr[np.arange(n), :, np.arange(n)]  # (N, M): logp[i, j, i]
    bad_own = np.argwhere(np.isneginf(own))
    if len(bad_own):
        i, j = (int(v) for v in bad_own[0])
        raise UsageError(
            f"logp[{i}, {j}, {i}] is -inf: compression {j} of context {i} is impossible under its "
            "own context, so it cannot have been sampled from it; check the scorer and the index "
            "order (logp[i, j, l] = log p(z_ij | x_l))"
        )
    return arr


def _validate_tokens(n_tokens: Any, n: int, m: int) -> np.ndarray:
    try:
        tok = np.asarray(n_tokens, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"n_tokens must be an array of token counts: {exc}") from None
    if m == 1 and tok.shape == (n,):
        tok = tok[:, None]
    if tok.shape != (n, m):
        raise UsageError(
            f"n_tokens must have shape (N, M) = ({n}, {m}) to match logp (one count per "
            f"compression z_ij); got shape {tok.shape}"
        )
    bad = np.argwhere(~np.isfinite(tok) | (tok < 0))
    if len(bad):
        k = tuple(bad[0])
        raise UsageError(f"n_tokens[{_fmt_index(k)}] = {float(tok[k])!r}; token counts must be finite and >= 0")
    if tok.mean() <= 0:
        raise UsageError("n_tokens are all 0: bits per token is undefined for empty compressions")
    return tok


def _pointwise_nats(arr: np.ndarray, marginal: str) -> np.ndarray:
    """(N, M) pointwise terms in nats for a validated (N, M, N) tensor."""
    n = arr.shape[0]
    idx = np.arange(n)
    own = arr[idx, :, idx]
    if marginal == "mixture":
        return own - logsumexp(arr, axis=2) + math.log(n)
    masked = arr.copy()
    masked[idx, :, idx] = -np.inf
    with np.errstate(divide="ignore"):
        lse_others = logsumexp(masked, axis=2)
    return own - lse_others + math.log(n - 1)


def _bootstrap_nats(arr: np.ndarray, counts: np.ndarray, marginal: str,
                    own_copies: str = "once") -> np.ndarray:
    """Estimates (nats) for B bootstrap resamples given as context counts, vectorised.

    ``counts[b, l]`` (B, N) is how often context l was drawn in resample b (rows sum to N).
    Every drawn copy of context i contributes its M terms (row i is weighted
    ``c_i = counts[b, i]``); its marginal is a mixture over the resampled contexts, with
    ``S_ij = sum_{l != i} c_l p(z_ij | x_l)`` the other drawn contexts (duplicates included):

    - ``own_copies="once"`` (default): x_i holds one slot of N and the other N - 1 slots are
      filled by the other drawn contexts in proportion::

          marg_ij = [ p(z_ij|x_i) + (N - 1) / (N - c_i) * S_ij ] / N         (mixture)
          marg_ij = S_ij / (N - c_i)                                          (leave-one-out)

      A second copy of x_i is the same unit drawn twice, not another context that happens to
      explain z_ij perfectly; counting it as one (``"all"``) pulls every replicate down by
      about log c_i and leaves the interval below the estimate.
    - ``own_copies="all"``: every copy counts, ``marg_ij = (c_i p(z_ij|x_i) + S_ij) / N``
      (leave-one-out: ``((c_i - 1) p(z_ij|x_i) + S_ij) / (N - 1)``).

    estimate_b = sum_i c_i sum_j [log p(z_ij|x_i) - log marg_ij] / (N M). A resample with no
    other context (all N draws equal) gives NaN under "once". The sums over l are one matrix
    product on log-probs shifted by each row's maximum; entries whose scaled sum may have
    underflowed are recomputed exactly with a weighted logsumexp.
    """
    n, m, _ = arr.shape
    b_count = counts.shape[0]
    nm = n * m
    idx = np.arange(n)
    own = arr[idx, :, idx].reshape(nm, 1)  # logp[i, j, i] for row (i, j)
    rows = arr.reshape(nm, n)
    row_owner = np.repeat(idx, m)  # context i of each row (i, j)
    shift = rows.max(axis=1, keepdims=True)  # finite: own entries are finite
    scaled = np.exp(rows - shift)  # (NM, N), entries in [0, 1]
    own_scaled = scaled[np.arange(nm), row_owner].copy()
    scaled[np.arange(nm), row_owner] = 0.0  # the own column is added separately
    cf = counts.astype(np.float64)
    c_own = cf[:, row_owner].T  # (NM, B): counts[b, i] for row (i, j)
    present = c_own > 0  # rows whose context is in the resample (others get weight 0)
    n_others = n - c_own  # draws of contexts other than i
    loo = marginal == "leave_one_out"
    with np.errstate(divide="ignore", invalid="ignore"):
        if own_copies == "once":
            own_w = np.zeros_like(c_own) if loo else np.ones_like(c_own)
            other_w = np.ones_like(c_own) if loo else (n - 1) / n_others
            log_norm = np.log(n_others) if loo else np.full_like(c_own, math.log(n))
            undefined = present & (n_others == 0)
        else:
            own_w = c_own - 1.0 if loo else c_own
            other_w = np.ones_like(c_own)
            log_norm = np.full_like(c_own, math.log(n - 1 if loo else n))
            undefined = np.zeros_like(present)
        ok = present & ~undefined
        own_w = np.where(ok, own_w, 0.0)
        other_w = np.where(ok, other_w, 0.0)
        sums = own_w * own_scaled[:, None] + other_w * (scaled @ cf.T)  # (NM, B)
        log_marg = np.log(sums) + shift
    suspect = ok & (sums < _UNDERFLOW_GUARD)
    if suspect.any():
        r_idx, b_idx = np.nonzero(suspect)
        weights = cf[b_idx] * other_w[r_idx, b_idx][:, None]  # (K, N)
        weights[np.arange(len(r_idx)), row_owner[r_idx]] = own_w[r_idx, b_idx]
        with np.errstate(divide="ignore"):
            log_marg[r_idx, b_idx] = logsumexp(rows[r_idx], axis=1, b=weights)
    with np.errstate(invalid="ignore"):
        terms = np.where(ok, own - log_marg + np.where(ok, log_norm, 0.0), 0.0)  # (NM, B)
    terms[undefined] = np.nan
    per_context = terms.reshape(n, m, b_count).sum(axis=1)  # (N, B)
    return (cf * per_context.T).sum(axis=1) / nm


def _percentile_interval(values: np.ndarray, alpha: float) -> tuple[float, float]:
    """The (alpha, 1 - alpha) percentiles of finite-or-infinite values (NaNs ignored).

    Linear interpolation between order statistics when every value is finite; with infinite
    values (leave-one-out) the outer order statistics ("lower"/"higher"), so inf - inf never
    turns into NaN.
    """
    v = values[~np.isnan(values)]
    if v.size == 0:  # every replicate undefined (leave-one-out on a degenerate set)
        return math.nan, math.nan
    if np.isfinite(v).all():
        lo, hi = np.quantile(v, [alpha, 1.0 - alpha])
    else:
        lo = np.quantile(v, alpha, method="lower")
        hi = np.quantile(v, 1.0 - alpha, method="higher")
    return float(lo), float(hi)


def _estimate_fields(pointwise_nats: np.ndarray, tok: np.ndarray | None, *, clip: bool, ci: float, n_boot: int,
                     seed: int | None, resample_bits: Any) -> dict[str, Any]:
    """The :class:`MIEstimate` fields both estimators share, from the (N, M) pointwise terms in nats:
    the point (clipped at 0 when ``clip``, and raw), its percentile interval over ``n_boot``
    resamples of the contexts (``resample_bits(counts)`` gives each resample's estimate in bits,
    ``counts[b, i]`` how often context i is in resample b), and the rate in bits per token with its
    interval (None without token counts, or when no resample has tokens)."""
    n, m = pointwise_nats.shape
    nats_raw = float(pointwise_nats.mean())
    bits_raw = nats_raw / LN2
    bits = max(0.0, bits_raw) if clip else bits_raw
    ci_lo = ci_hi = ci_lo_raw = ci_hi_raw = rate_lo = rate_hi = None
    alpha = (1.0 - ci) / 2.0
    if n_boot > 0:
        counts = _resample_counts(n, n_boot, seed)
        boot_bits = resample_bits(counts)
        ci_lo_raw, ci_hi_raw = _percentile_interval(boot_bits, alpha)
        ci_lo, ci_hi = (max(0.0, ci_lo_raw), max(0.0, ci_hi_raw)) if clip else (ci_lo_raw, ci_hi_raw)
        if tok is not None:
            boot_tokens = counts @ tok.mean(axis=1) / n  # mean tokens of each resample
            boot_for_rate = np.maximum(boot_bits, 0.0) if clip else boot_bits
            with np.errstate(divide="ignore", invalid="ignore"):
                boot_rate = np.where(boot_tokens > 0, boot_for_rate / boot_tokens, np.nan)
            if not np.isnan(boot_rate).all():
                rate_lo, rate_hi = _percentile_interval(boot_rate, alpha)
    mean_tokens = rate = None
    if tok is not None:
        mean_tokens = float(tok.mean())
        rate = bits / mean_tokens
    return {"bits": bits, "bits_raw": bits_raw, "nats_raw": nats_raw, "ci_low_bits": ci_lo, "ci_high_bits": ci_hi,
            "ci_low_bits_raw": ci_lo_raw, "ci_high_bits_raw": ci_hi_raw, "pointwise_bits": pointwise_nats / LN2,
            "n_contexts": n, "n_samples": m, "clipped": clip, "ci": float(ci), "n_boot": int(n_boot), "seed": seed,
            "mean_tokens": mean_tokens, "bits_per_token": rate, "bits_per_token_ci_low": rate_lo,
            "bits_per_token_ci_high": rate_hi}


def _resample_counts(n: int, n_boot: int, seed: int | None) -> np.ndarray:
    """(n_boot, N) counts of each context in N draws with replacement (a multinomial)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot)


def _check_options(clip: Any, ci: Any, n_boot: Any, marginal: Any, own_copies: Any) -> None:
    if own_copies not in _OWN_COPIES:
        raise UsageError(f"boot_own_copies must be one of {', '.join(_OWN_COPIES)}; got {own_copies!r}")
    if marginal not in _MARGINALS:
        raise UsageError(f"marginal must be one of {', '.join(_MARGINALS)}; got {marginal!r}")
    if not isinstance(n_boot, (int, np.integer)) or isinstance(n_boot, bool) or n_boot < 0:
        raise UsageError(f"n_boot must be an integer >= 0 (0 = no interval); got {n_boot!r}")
    if not isinstance(ci, (float, int)) or isinstance(ci, bool) or not 0 < ci < 1:
        raise UsageError(f"ci must be a confidence level strictly between 0 and 1 (e.g. 0.95); got {ci!r}")
    if not isinstance(clip, bool):
        raise UsageError(f"clip must be True or False; got {clip!r}")


def estimate_mi(
    logp: Any,
    *,
    n_tokens: Any = None,
    clip: bool = True,
    ci: float = 0.95,
    n_boot: int = 1000,
    seed: int | None = 0,
    marginal: Marginal = "mixture",
    boot_own_copies: OwnCopies = "once",
) -> MIEstimate:
    """Estimate I(X; Z) in bits from ``logp[i, j, l] = log p(z_ij | x_l)`` (nats).

    Args:
        logp: (N, M, N) array (or (N, N) for M = 1) of summed token log-probabilities in nats.
        n_tokens: optional (N, M) token counts of the compressions; adds ``mean_tokens`` and
            ``bits_per_token = bits / mean_tokens`` (the method's rate R) with its interval.
        clip: report ``bits = max(0, bits_raw)`` (the raw value is always kept).
        ci: level of the percentile bootstrap interval.
        n_boot: bootstrap resamples over contexts (0 = no interval).
        seed: seed of the resampling (same seed, same interval).
        marginal: "mixture" (l = i included; capped at log2 N) or "leave_one_out" (l != i).
        boot_own_copies: "once" (default) or "all": how a resample's marginal counts the
            duplicates of a context's own draw (see the module docstring; keep the default).

    The formula (mixture)::

        I_hat = 1/(N M) sum_{i,j} [ logp[i,j,i] - logsumexp_l logp[i,j,l] + ln N ]  nats
        bits  = I_hat / ln 2,   0 <= ... <= ceiling_bits = log2 N (before clipping: can be < 0)

    Example (two contexts, each compression twice as likely under its own context)::

        >>> import math
        >>> lp = [[math.log(0.2), math.log(0.1)], [math.log(0.1), math.log(0.2)]]
        >>> round(estimate_mi(lp, n_boot=0).bits, 6)  # log2(2 * 0.2 / 0.3)
        0.415037

    Raises:
        UsageError (a ValueError): bad shapes, NaN/+inf/positive log-probs, N < 2, -inf on the
            diagonal ``logp[i, j, i]``, n_tokens not (N, M), bad options.
    """
    _check_options(clip, ci, n_boot, marginal, boot_own_copies)
    arr = validate_logp(logp)
    n, m, _ = arr.shape
    tok = None if n_tokens is None else _validate_tokens(n_tokens, n, m)

    pointwise_nats = _pointwise_nats(arr, marginal)
    fields = _estimate_fields(pointwise_nats, tok, clip=clip, ci=ci, n_boot=n_boot, seed=seed,
                              resample_bits=lambda counts: _bootstrap_nats(arr, counts, marginal, boot_own_copies) / LN2)
    return MIEstimate(
        **fields,
        n_negatives=n - 1,
        ceiling_bits=math.log2(n),
        marginal=marginal,
        boot_own_copies=boot_own_copies,
    )


# --------------------------------------------------------------------------- sampled negatives

#: ``mi_negatives: auto`` starts at this K (ceiling log2 16 = 4 bits) ...
AUTO_START_K = 15
#: ... and grows K while the bound's interval reaches within this many bits of its ceiling
#: log2(K + 1) (saturated, :func:`is_saturated`; the same margin flags a fixed K's estimate as
#: "saturated: a lower bound"), up to N - 1, ...
AUTO_MARGIN_BITS = 1.0
#: ... or while the bias correction (:func:`corrected_pointwise_nats`) adds more than this many bits:
#: its error and its spread over designs grow with its size. Measured (BENCHMARKS.md, issue 19): on
#: SmolLM2 every correction of at most 0.25 bit left the estimate within 0.075 bit of the all-context
#: one; one of 0.40 bit was 0.22 bit off for the seeded design (0.02 on average over 8 designs, sd 0.10).
AUTO_CORRECTION_BITS = 0.25
#: Seed of the balanced design of negatives when none is given.
DESIGN_SEED = 0

#: Why ``auto`` stopped: the estimate is not saturated and its correction is small, or K hit N - 1.
STOP_BELOW_CEILING = "below ceiling margin"
STOP_ALL = "reached N-1"
#: ... or every context was scored at once, as cheap as the start design (repeated compressions).
STOP_CHEAP = "all as cheap as K"
#: What an estimate's ``bits`` is (:func:`estimate_kind`).
KIND_ALL = "all contexts"
KIND_CORRECTED = "corrected"
KIND_SATURATED = "saturated: a lower bound"


def estimate_kind(sampled: bool, saturated: bool) -> str:
    """The words for what an estimate's ``bits`` is: every context (:data:`KIND_ALL`), the
    bias-corrected estimate with K sampled negatives (:data:`KIND_CORRECTED`), or the bound of a
    saturated K-design (:data:`KIND_SATURATED`: "saturated: a lower bound")."""
    if not sampled:
        return KIND_ALL
    return KIND_SATURATED if saturated else KIND_CORRECTED


def parse_negatives(value: Any, what: str = "mi_negatives") -> str | int:
    """``"all"``, ``"auto"`` or an integer K >= 1 (the negatives per compression); UsageError else."""
    if isinstance(value, str) and value.strip().lower() in ("all", "auto"):
        return value.strip().lower()
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1:
        return int(value)
    raise UsageError(f"{what} must be 'all' (every other context), 'auto' (start at K = {AUTO_START_K}, "
                     f"double while near the ceiling) or an integer K >= 1 (negatives per compression); got {value!r}")


def negatives_design(n: int, k: int, seed: int | None = DESIGN_SEED) -> np.ndarray:
    """A seeded, balanced design of K negatives for each of N contexts: an (N, K + 1) int array,
    column 0 the context itself and columns 1..K its negatives (distinct, none equal to it).

    Construction: a random order ``pi`` of the contexts and a random order ``d_1..d_{N-1}`` of
    the offsets 1..N-1; the negatives of ``pi[a]`` are ``pi[(a + d_k) mod N]`` for k = 1..K. So every
    context is a negative exactly K times (once per offset) and each prefix scores the same number
    of continuations; the design of K is the first K + 1 columns of the design of any larger K
    (same seed), so growing K re-scores nothing; K = N - 1 is every other context.
    """
    if not isinstance(n, (int, np.integer)) or n < 2:
        raise UsageError(f"a design of negatives needs N >= 2 contexts; got {n!r}")
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= n - 1:
        raise UsageError(f"K (negatives per compression) must be an integer in [1, N - 1 = {n - 1}]; got {k!r}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    offsets = rng.permutation(np.arange(1, n))[:k]
    pos = np.empty(n, dtype=np.int64)
    pos[order] = np.arange(n)  # position of each context in the order
    cols = (pos[:, None] + np.concatenate([[0], offsets])[None, :]) % n
    return order[cols]


def auto_schedule(n: int, start: int = AUTO_START_K) -> list[int]:
    """The K ``auto`` may visit: ``start``, then K + 1 doubled (31, 63, ...), capped at N - 1."""
    last = n - 1
    ks = [min(start, last)]
    while ks[-1] < last:
        ks.append(min(2 * (ks[-1] + 1) - 1, last))
    return ks


def is_saturated(bound_bits_raw: float, bound_ci_high_bits_raw: float | None, ceiling_bits: float,
                 margin_bits: float = AUTO_MARGIN_BITS) -> bool:
    """Saturation of a K-design: the bound's interval (its upper end; the bound itself without an
    interval) reaches within ``margin_bits`` of its ceiling log2(K + 1). There the extrapolation to
    all contexts cannot be trusted (it cannot recover information the design cannot resolve): the
    estimate is the bound, "saturated: a lower bound"; ``auto`` grows K."""
    top = bound_ci_high_bits_raw if bound_ci_high_bits_raw is not None else bound_bits_raw
    return bool(top >= ceiling_bits - margin_bits)


def half_negatives(k: int) -> int:
    """K' = floor((K + 1) / 2) - 1, the nested design the correction compares K with (0 for K = 1, 2)."""
    return (int(k) + 1) // 2 - 1


def correction_weight(k: int, n: int) -> float:
    """``a`` of the correction: with the bound's bias ``c / (K + 1)``, ``I_all - I_K = a (I_K - I_K')``,
    ``a = (1/(K+1) - 1/N) / (1/(K'+1) - 1/(K+1))`` (= 1 - (K + 1) / N when K' + 1 = (K + 1) / 2)."""
    kp = half_negatives(k)
    return (1.0 / (k + 1) - 1.0 / n) / (1.0 / (kp + 1) - 1.0 / (k + 1))


def corrected_pointwise_nats(sub: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(corrected, bound): the (N, M) pointwise terms in nats from ``sub`` (N, M, K + 1), the entries
    of a design of K negatives (own context first, :func:`gather_negatives`), for N contexts.

    ``bound = sub[..., 0] - logsumexp(sub) + ln(K + 1)`` (InfoNCE with K negatives) and
    ``corrected = bound + a (bound - bound')``, ``bound'`` the same over the first K' + 1 columns
    (the nested design of K' = :func:`half_negatives`; ``bound' = 0`` when K' = 0) and ``a`` =
    :func:`correction_weight`: the extrapolation of the 1 / (K + 1) bias to the all-context
    estimator, from entries already scored. The one rule for every caller (fixed K, auto, the sweep,
    ``score_mi``, ``CompressionLog.estimate``, the report's records)."""
    k = sub.shape[2] - 1
    bound = sub[:, :, 0] - logsumexp(sub, axis=2) + math.log(k + 1)
    kp = half_negatives(k)
    half = np.zeros_like(bound) if kp == 0 else (
        sub[:, :, 0] - logsumexp(sub[:, :, : kp + 1], axis=2) + math.log(kp + 1))
    return bound + correction_weight(k, n) * (bound - half), bound


def auto_next_k(est: MIEstimate, *, margin_bits: float = AUTO_MARGIN_BITS,
                correction_bits: float = AUTO_CORRECTION_BITS) -> int | None:
    """``auto``'s rule after scoring K: None (stop: every context, or the estimate is not saturated
    and its correction is at most ``correction_bits``), else the next K of :func:`auto_schedule`.

    Not saturated but a large correction: the next doubling. Saturated: the smallest K of the
    schedule (at least the next) whose ceiling log2(K + 1) is ``margin_bits`` above the bound plus
    its correction plus its interval's half-width (the corrected estimate is low where saturated,
    so this may need another round); each round prefills every prefix again, so skipping
    doublings that cannot stop saves their prefills; and where that K + 1 is N / 2 or more, N - 1
    at once (such a design scores half of every pair; saturating again would cost more than all)."""
    n, k = est.n_contexts, est.n_negatives
    if k is None or k >= n - 1 or est.bound_bits is None:
        return None
    if not est.saturated and abs(est.correction_bits or 0.0) <= correction_bits:
        return None
    later = [kk for kk in auto_schedule(n) if kk > k]
    if not est.saturated:
        return later[0]
    bound = float(est.bound_bits)
    half_width = max(0.0, (est.bound_ci_high_bits if est.bound_ci_high_bits is not None else bound) - bound)
    target = bound + max(0.0, est.correction_bits or 0.0) + half_width + margin_bits
    nxt = next((kk for kk in later if math.log2(kk + 1) >= target), later[-1])
    # a design of K + 1 >= N / 2 scores half of every pair or more; if it saturates too, its round and its
    # prefills are paid on top of every context's: go to N - 1 at once
    return later[-1] if 2 * (nxt + 1) >= n else nxt


def gather_negatives(logp: np.ndarray, design: np.ndarray) -> np.ndarray:
    """(N, M, K + 1) ``out[i, j, k] = logp[i, j, design[i, k]]`` from an (N, M, N) tensor."""
    return np.take_along_axis(logp, design[:, None, :].repeat(logp.shape[1], axis=1), axis=2)


def estimate_mi_negatives(
    logp: Any,
    *,
    k: int | None = None,
    design_seed: int | None = DESIGN_SEED,
    n_tokens: Any = None,
    clip: bool = True,
    ci: float = 0.95,
    n_boot: int = 1000,
    seed: int | None = 0,
    negatives: str | None = None,
    k_stop: str | None = None,
    margin_bits: float = AUTO_MARGIN_BITS,
) -> MIEstimate:
    r"""The estimate with K sampled negatives per compression: the InfoNCE bound and its
    bias-corrected extrapolation to every context.

    ``logp`` is (N, M, N) in nats; only the entries of the design (:func:`negatives_design` with
    ``k`` and ``design_seed``) are read, the others may be NaN (unscored). With ``D_i`` the
    K + 1 contexts of row i (itself first), the bound (``bound_bits``, ceiling
    ``ceiling_bits = log2(K + 1)``)::

        I_K = 1/(N M) sum_{i,j} [ logp[i,j,i] - logsumexp_{l in D_i} logp[i,j,l] + ln(K + 1) ]  nats

    and the estimate (``bits``, ``pointwise_bits``, the interval) the mean of the corrected
    pointwise terms (:func:`corrected_pointwise_nats`; ``correction_bits`` what it adds), unless
    the bound is saturated (:func:`is_saturated` with ``margin_bits``): then ``bits`` and its
    interval are the bound's and ``saturated`` is True ("saturated: a lower bound").
    ``k`` None or >= N - 1 is :func:`estimate_mi` itself (every context, its bootstrap;
    bit-identical). The interval with K < N - 1 resamples the contexts (rows, each with its own
    fixed negatives) with replacement and averages their pointwise terms: the design is held
    fixed, so the interval covers the sampling of contexts and compressions, not the draw of
    negatives.
    """
    arr = np.asarray(logp, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[:, None, :]
    n = arr.shape[0]
    if k is None or k >= n - 1:
        est = estimate_mi(arr, n_tokens=n_tokens, clip=clip, ci=ci, n_boot=n_boot, seed=seed)
        if negatives in (None, "all", "fixed"):  # K >= N - 1 is every other context: the all estimator
            return est
        return dataclasses.replace(est, negatives=negatives, n_negatives=n - 1, design_seed=design_seed,
                                   k_stop=k_stop)
    _check_options(clip, ci, n_boot, "mixture", "once")
    design = negatives_design(n, int(k), design_seed)
    sub = gather_negatives(arr, design)
    if np.isnan(sub).any():
        i, j, kk = (int(v) for v in np.argwhere(np.isnan(sub))[0])
        raise UsageError(f"logp[{i}, {j}, {int(design[i, kk])}] is NaN but the design of K = {k} negatives "
                         f"(seed {design_seed}) needs it; score the design's entries first")
    _check_sampled(sub)
    m = sub.shape[1]
    tok = None if n_tokens is None else _validate_tokens(n_tokens, n, m)
    corrected, bound = corrected_pointwise_nats(sub, n)  # (N, M) nats each
    fields = {}
    for name, pointwise in (("bound", bound), ("corrected", corrected)):
        fields[name] = _estimate_fields(pointwise, tok, clip=clip, ci=ci, n_boot=n_boot, seed=seed,
                                        resample_bits=lambda counts, pw=pointwise: counts @ (pw.mean(axis=1) / LN2) / n)
    b = fields["bound"]
    ceiling = math.log2(k + 1)
    saturated = is_saturated(b["bits_raw"], b["ci_high_bits_raw"], ceiling, margin_bits)
    return MIEstimate(
        **fields["bound" if saturated else "corrected"], ceiling_bits=ceiling, marginal="mixture",
        negatives=negatives or "fixed", n_negatives=int(k), design_seed=design_seed, k_stop=k_stop,
        bound_bits=b["bits"], bound_bits_raw=b["bits_raw"], bound_ci_low_bits=b["ci_low_bits"],
        bound_ci_high_bits=b["ci_high_bits"], correction_bits=fields["corrected"]["bits_raw"] - b["bits_raw"],
        saturated=saturated,
    )


def _check_sampled(sub: np.ndarray) -> None:
    """Check sampled entries (N, M, K + 1), own context first, with :func:`validate_logp`'s rules."""
    bad = np.argwhere(np.isposinf(sub) | (sub > POSITIVE_TOLERANCE_NATS))
    if len(bad):
        raise UsageError(f"a sampled log-probability {float(sub[tuple(bad[0])])!r} is positive or +inf; "
                         "log-probabilities (nats) must be <= 0")
    own_bad = np.argwhere(np.isneginf(sub[:, :, 0]))
    if len(own_bad):
        i, j = (int(v) for v in own_bad[0])
        raise UsageError(f"logp[{i}, {j}, {i}] is -inf: compression {j} of context {i} is impossible under its "
                         "own context; check the scorer and the index order")


@dataclass(frozen=True)
class MIvsNPoint:
    """The estimate at one number of contexts ``n_contexts``, over random context subsets.

    bits: mean over subsets of each subset's estimate (clipped per subset when ``clipped``).
    ci_low_bits / ci_high_bits: percentile interval of the bootstrap replicates of all subsets
        pooled (covers both which contexts were drawn and the bootstrap over them).
    subset_sd_bits: standard deviation of the subset estimates (0 with one subset).
    ceiling_bits: log2 n_contexts. An estimate close to it at every size means the measurement
        is limited by N, not by the compressions: use more contexts.
    """

    n_contexts: int
    n_subsets: int
    bits: float
    ci_low_bits: float | None
    ci_high_bits: float | None
    subset_sd_bits: float
    ceiling_bits: float
    bits_per_token: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe values (non-finite floats become None)."""
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            out[name] = value if isinstance(value, int) or value is None else _json_float(value)
        return out


def mi_vs_n(
    logp: Any,
    sizes: Sequence[int],
    *,
    n_tokens: Any = None,
    n_subsets: int = 20,
    seed: int | None = 0,
    clip: bool = True,
    ci: float = 0.95,
    n_boot: int = 200,
    marginal: Marginal = "mixture",
    boot_own_copies: OwnCopies = "once",
) -> list[MIvsNPoint]:
    """The estimate and its interval on random subsets of contexts of each size in ``sizes``.

    For each size s (2 <= s <= N): draw ``n_subsets`` subsets of s distinct contexts (one subset,
    all contexts, when s == N), estimate on ``logp[sub][:, :, sub]`` with ``n_boot`` bootstrap
    resamples each, and report the mean estimate, the pooled percentile interval and the
    ceiling log2 s. If the estimate tracks the ceiling as s grows, the compressions carry more
    than the N contexts can show. Deterministic for a given seed.
    """
    arr = validate_logp(logp)
    n, m, _ = arr.shape
    tok = None if n_tokens is None else _validate_tokens(n_tokens, n, m)
    _check_options(clip, ci, n_boot, marginal, boot_own_copies)
    if not isinstance(n_subsets, (int, np.integer)) or isinstance(n_subsets, bool) or n_subsets < 1:
        raise UsageError(f"n_subsets must be an integer >= 1; got {n_subsets!r}")
    if isinstance(sizes, (int, np.integer)):
        sizes = [int(sizes)]
    sizes = list(sizes)
    if not sizes:
        raise UsageError("sizes is empty; give the context counts to evaluate, e.g. [4, 8, 16]")
    for k, s in enumerate(sizes):
        if not isinstance(s, (int, np.integer)) or isinstance(s, bool) or not 2 <= s <= n:
            raise UsageError(f"sizes[{k}] = {s!r}; each size must be an integer in [2, N = {n}]")
    rng = np.random.default_rng(seed)
    alpha = (1.0 - ci) / 2.0
    points: list[MIvsNPoint] = []
    for s in sizes:
        s = int(s)
        draws = 1 if s == n else n_subsets
        estimates: list[float] = []
        rates: list[float] = []
        pooled: list[np.ndarray] = []
        for _ in range(draws):
            sub = np.sort(rng.choice(n, size=s, replace=False))
            part = arr[np.ix_(sub, np.arange(m), sub)]
            est = estimate_mi(
                part, n_tokens=None if tok is None else tok[sub], clip=clip, ci=ci, n_boot=0,
                marginal=marginal,
            )
            estimates.append(est.bits)
            if est.bits_per_token is not None:
                rates.append(est.bits_per_token)
            if n_boot > 0:
                counts = _resample_counts(s, n_boot, int(rng.integers(2**63)))
                boot = _bootstrap_nats(part, counts, marginal, boot_own_copies) / LN2
                pooled.append(np.maximum(boot, 0.0) if clip else boot)
        lo = hi = None
        if pooled:
            lo, hi = _percentile_interval(np.concatenate(pooled), alpha)
        with np.errstate(invalid="ignore"):  # leave-one-out estimates can be +inf: sd NaN, no warning
            sd = float(np.std(estimates))
        points.append(MIvsNPoint(
            n_contexts=s,
            n_subsets=draws,
            bits=float(np.mean(estimates)),
            ci_low_bits=lo,
            ci_high_bits=hi,
            subset_sd_bits=sd,
            ceiling_bits=math.log2(s),
            bits_per_token=float(np.mean(rates)) if rates else None,
        ))
    return points


__all__ = [
    "AUTO_CORRECTION_BITS",
    "AUTO_MARGIN_BITS",
    "KIND_ALL",
    "KIND_CORRECTED",
    "KIND_SATURATED",
    "auto_next_k",
    "corrected_pointwise_nats",
    "correction_weight",
    "estimate_kind",
    "half_negatives",
    "is_saturated",
    "AUTO_START_K",
    "DESIGN_SEED",
    "MIEstimate",
    "auto_schedule",
    "estimate_mi_negatives",
    "gather_negatives",
    "negatives_design",
    "parse_negatives",
    "MIvsNPoint",
    "POSITIVE_TOLERANCE_NATS",
    "estimate_mi",
    "mi_vs_n",
    "validate_logp",
]
