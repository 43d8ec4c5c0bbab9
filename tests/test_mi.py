"""The MI estimator (compressbench.measure.mi) against hand computations and known answers.

Expected values are computed here independently: explicit probabilities and math.log for the
hand cases, an exact enumeration over collision counts (scipy.stats.binom) for the discrete
channel, the channel's closed-form I(X;Z), and a plain Python loop over explicit resamples for
the vectorised bootstrap.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import binom

from compressbench.core.errors import UsageError
from compressbench.measure.mi import MIEstimate, _bootstrap_nats, estimate_mi, mi_vs_n

LN2 = math.log(2.0)

# Two contexts, two compressions each: P[i][j] = (p(z_ij | x_0), p(z_ij | x_1)).
P_HAND = [[(0.5, 0.1), (0.2, 0.2)],
          [(0.05, 0.4), (0.1, 0.3)]]


def hand_logp() -> np.ndarray:
    return np.log(np.array(P_HAND))  # (2, 2, 2), logp[i, j, l]


# ----------------------------------------------------------------------------- hand cases


def test_two_contexts_by_hand():
    est = estimate_mi(hand_logp(), n_boot=0)
    # Pointwise p_own / ((p_0 + p_1) / 2):
    #   z00: 0.5 / 0.3 = 5/3,  z01: 0.2 / 0.2 = 1,  z10: 0.4 / 0.225 = 16/9,  z11: 0.3 / 0.2 = 3/2
    # mean of the logs = ln(5/3 * 1 * 16/9 * 3/2) / 4 = ln(40/9) / 4 nats.
    assert est.nats_raw == pytest.approx(math.log(40 / 9) / 4, abs=1e-12)
    assert est.bits_raw == pytest.approx(math.log2(40 / 9) / 4, abs=1e-12)
    assert est.bits == est.bits_raw  # positive: clipping changes nothing
    expected_pointwise = [[math.log2(5 / 3), 0.0], [math.log2(16 / 9), math.log2(1.5)]]
    np.testing.assert_allclose(est.pointwise_bits, expected_pointwise, rtol=0, atol=1e-12)
    assert est.ceiling_bits == 1.0
    assert (est.n_contexts, est.n_samples, est.marginal) == (2, 2, "mixture")
    assert est.ci_low_bits is None and est.ci_high_bits is None  # n_boot=0: no interval


def test_leave_one_out_by_hand_is_not_capped():
    est = estimate_mi(hand_logp(), n_boot=0, marginal="leave_one_out")
    # Pointwise p_own / p_other (N - 1 = 1): 5, 1, 8, 3 -> mean log2 = log2(120) / 4 = 1.727 bits > log2 2.
    assert est.bits_raw == pytest.approx(math.log2(120) / 4, abs=1e-12)
    np.testing.assert_allclose(est.pointwise_bits, [[math.log2(5), 0.0], [math.log2(8), math.log2(3)]],
                               rtol=0, atol=1e-12)
    assert est.bits_raw > est.ceiling_bits == 1.0


def test_leave_one_out_three_contexts_by_hand():
    # One compression per context (shape (N, N)). Row i: p(z_i | x_0..x_2).
    p = np.array([[0.6, 0.2, 0.1],
                  [0.3, 0.3, 0.3],
                  [0.1, 0.4, 0.05]])
    est = estimate_mi(np.log(p), n_boot=0, marginal="leave_one_out")
    # p_own / mean of the other two: 0.6/0.15 = 4, 0.3/0.3 = 1, 0.05/0.25 = 0.2
    assert est.bits_raw == pytest.approx((math.log2(4) + 0 + math.log2(0.2)) / 3, abs=1e-12)
    mix = estimate_mi(np.log(p), n_boot=0)
    # p_own / mean of all three: 0.6/0.3 = 2, 1, 0.05/0.55*3 = 3/11
    assert mix.bits_raw == pytest.approx((1 + 0 + math.log2(3 / 11)) / 3, abs=1e-12)


def test_bits_per_token_by_hand():
    n_tokens = [[3, 5], [4, 8]]  # mean 5 tokens
    est = estimate_mi(hand_logp(), n_tokens=n_tokens, n_boot=0)
    assert est.mean_tokens == 5.0
    assert est.bits_per_token == pytest.approx(math.log2(40 / 9) / 4 / 5, abs=1e-12)


def test_bits_per_token_interval_with_constant_length_is_the_bits_interval_over_length():
    rng = np.random.default_rng(3)
    logp = channel_logp(rng, k=8, q=0.7, n=12, m=3)
    est = estimate_mi(logp, n_tokens=np.full((12, 3), 40), seed=5)
    assert est.bits_per_token == pytest.approx(est.bits / 40, rel=1e-12)
    assert est.bits_per_token_ci_low == pytest.approx(est.ci_low_bits / 40, rel=1e-12)
    assert est.bits_per_token_ci_high == pytest.approx(est.ci_high_bits / 40, rel=1e-12)


def test_bits_are_nats_over_ln2_everywhere():
    rng = np.random.default_rng(0)
    logp = channel_logp(rng, k=6, q=0.5, n=10, m=4)
    est = estimate_mi(logp, clip=False, n_tokens=rng.integers(1, 30, size=(10, 4)))
    assert est.bits_raw == est.nats_raw / LN2
    assert est.pointwise_bits.mean() == pytest.approx(est.bits_raw, abs=1e-13)
    # The same tensor expressed in log2 units, evaluated by hand with numpy's log2 mixture:
    lp2 = logp / LN2
    own = lp2[np.arange(10), :, np.arange(10)]
    mix = np.log2(np.mean(2.0 ** lp2, axis=2))
    np.testing.assert_allclose(est.pointwise_bits, own - mix, rtol=0, atol=1e-12)
    assert est.bits_per_token == pytest.approx(est.bits_raw / est.mean_tokens, rel=1e-12)


def test_identity_channel_is_exactly_log2_n():
    n, m = 7, 3
    logp = np.full((n, m, n), -np.inf)
    logp[np.arange(n), :, np.arange(n)] = np.log(0.5)  # certain-ish under its own context only
    est = estimate_mi(logp)
    assert est.bits == pytest.approx(math.log2(n), abs=1e-12)
    assert est.ceiling_bits == math.log2(n)
    assert est.at_ceiling
    # Every resample still identifies each compression's context: the interval is the ceiling.
    assert est.ci_low_bits == pytest.approx(math.log2(n), abs=1e-12)
    assert est.ci_high_bits == pytest.approx(math.log2(n), abs=1e-12)


def test_identity_channel_leave_one_out_is_infinite_and_json_safe():
    n = 4
    logp = np.full((n, 2, n), -np.inf)
    logp[np.arange(n), :, np.arange(n)] = 0.0
    est = estimate_mi(logp, marginal="leave_one_out", n_boot=50)
    assert est.bits_raw == math.inf
    d = est.to_dict()
    assert d["bits"] is None and d["pointwise_bits"][0][0] is None
    json.dumps(d, allow_nan=False)


def test_context_free_compressions_give_zero():
    # The scorer's log p(z | x_l) does not depend on l: each term is ln p - ln(mean p) = 0.
    rng = np.random.default_rng(1)
    per_z = -rng.gamma(2.0, 20.0, size=(9, 3, 1))
    logp = np.repeat(per_z, 9, axis=2)
    raw = estimate_mi(logp, clip=False, n_boot=0)
    assert raw.bits_raw <= 1e-12
    assert abs(raw.bits_raw) < 1e-12
    clipped = estimate_mi(logp, n_boot=0)
    assert 0.0 <= clipped.bits < 1e-12


def test_compressions_independent_of_context_average_below_zero_and_clip_to_zero():
    # z drawn from the marginal (uniform), ignoring x, but scored by a channel that depends on x.
    # By Jensen the expected raw estimate is <= 0; clipping reports 0 whenever raw < 0.
    rng = np.random.default_rng(2)
    k, q, n, m = 4, 0.6, 8, 4
    a, b = q + (1 - q) / k, (1 - q) / k
    raws = []
    for _ in range(300):
        x = rng.integers(k, size=n)
        z = rng.integers(k, size=(n, m))
        logp = np.log(np.where(z[:, :, None] == x[None, None, :], a, b))
        raw = estimate_mi(logp, clip=False, n_boot=0).bits_raw
        clipped = estimate_mi(logp, n_boot=0).bits
        assert clipped == max(0.0, raw)
        raws.append(raw)
    assert np.mean(raws) < 0
    assert np.mean(np.array(raws) < 0) > 0.5


def test_two_dimensional_input_means_one_sample():
    rng = np.random.default_rng(4)
    logp = channel_logp(rng, k=5, q=0.5, n=6, m=1)
    a = estimate_mi(logp[:, 0, :], n_tokens=[3, 4, 5, 6, 7, 8], seed=1)
    b = estimate_mi(logp, n_tokens=[[3], [4], [5], [6], [7], [8]], seed=1)
    assert a.n_samples == 1
    assert (a.bits, a.ci_low_bits, a.ci_high_bits, a.bits_per_token) == (
        b.bits, b.ci_low_bits, b.ci_high_bits, b.bits_per_token)


# ----------------------------------------------------------------------------- discrete channel
#
# x uniform over K symbols; z = x with probability q, else uniform over K symbols. So
# p(z | x) = a = q + (1 - q)/K when z = x, else b = (1 - q)/K.


def channel_logp(rng: np.random.Generator, *, k: int, q: float, n: int, m: int) -> np.ndarray:
    x = rng.integers(k, size=n)
    keep = rng.random((n, m)) < q
    z = np.where(keep, x[:, None], rng.integers(k, size=(n, m)))
    a, b = q + (1 - q) / k, (1 - q) / k
    return np.log(np.where(z[:, :, None] == x[None, None, :], a, b))


def channel_expectation_bits(k: int, q: float, n: int) -> float:
    """E[estimate] by exact enumeration. By symmetry it is E[term of z_11]; given x_1 and z_11,
    the other N - 1 contexts equal z_11 independently with probability 1/K, so only whether
    z_11 = x_1 and the number c of other contexts equal to z_11 matter."""
    a, b = q + (1 - q) / k, (1 - q) / k
    total = 0.0
    for p_own, prob in ((a, a), (b, 1 - a)):  # z_11 = x_1 with probability a
        for c in range(n):
            marginal = (p_own + c * a + (n - 1 - c) * b) / n
            total += prob * binom.pmf(c, n - 1, 1 / k) * math.log2(p_own / marginal)
    return total


def channel_true_mi_bits(k: int, q: float) -> float:
    """I(X;Z) = H(Z) - H(Z|X) = log2 K + a log2 a + (K - 1) b log2 b (Z is uniform)."""
    a, b = q + (1 - q) / k, (1 - q) / k
    return math.log2(k) + a * math.log2(a) + (k - 1) * b * math.log2(b)


def test_enumeration_is_right_on_a_tiny_case():
    # Cross-check the enumeration itself: K = 2, N = 2, M = 1 has 2 x 2 x 2 = 8 equally weighted
    # (x_1, x_2, z_1) outcomes weighted by p(z_1 | x_1); list them all.
    k, q, n = 2, 0.5, 2
    a, b = q + (1 - q) / k, (1 - q) / k
    total = 0.0
    for x1 in range(2):
        for x2 in range(2):
            for z in range(2):
                p1 = a if z == x1 else b
                p2 = a if z == x2 else b
                total += 0.25 * p1 * math.log2(p1 / ((p1 + p2) / 2))
    assert channel_expectation_bits(k, q, n) == pytest.approx(total, abs=1e-12)


def test_discrete_channel_mean_matches_exact_expectation():
    k, q, n, m = 64, 0.9, 16, 8
    rng = np.random.default_rng(20240601)
    values = [estimate_mi(channel_logp(rng, k=k, q=q, n=n, m=m), clip=False, n_boot=0).bits
              for _ in range(500)]
    expected = channel_expectation_bits(k, q, n)
    assert np.mean(values) == pytest.approx(expected, rel=0.01)


def test_discrete_channel_estimate_moves_toward_true_mi_as_n_grows():
    k, q, m = 64, 0.9, 4
    true_mi = channel_true_mi_bits(k, q)
    sizes = [2, 4, 8, 16, 32, 64, 128]
    exact = [channel_expectation_bits(k, q, n) for n in sizes]
    assert all(e < true_mi for e in exact)
    assert all(e1 < e2 for e1, e2 in zip(exact, exact[1:]))  # gap to I(X;Z) shrinks with N
    assert true_mi - exact[-1] < 0.25 * (true_mi - exact[0])
    rng = np.random.default_rng(7)
    means = {n: np.mean([estimate_mi(channel_logp(rng, k=k, q=q, n=n, m=m), clip=False, n_boot=0).bits
                         for _ in range(100)]) for n in (4, 16, 64)}
    assert means[4] < means[16] < means[64] < true_mi
    for n, v in means.items():
        assert v == pytest.approx(exact[sizes.index(n)], rel=0.03)


def _coverage(k: float, q: float, n: int, m: int, own_copies: str) -> float:
    expected = channel_expectation_bits(k, q, n)
    hits = 0
    for seed in range(200):
        rng = np.random.default_rng(10_000 + seed)
        est = estimate_mi(channel_logp(rng, k=k, q=q, n=n, m=m), clip=False, seed=seed,
                          boot_own_copies=own_copies)
        hits += est.ci_low_bits <= expected <= est.ci_high_bits
    return hits / 200


@pytest.mark.parametrize(("k", "q"), [(16, 0.8), (4, 0.6)])
def test_bootstrap_interval_covers_the_expectation(k, q):
    assert _coverage(k, q, n=8, m=4, own_copies="once") >= 0.90


def test_counting_own_duplicates_in_the_marginal_undercovers():
    # Why the default treats a context's own duplicates as one: counting every copy (the literal
    # "mixture over the resampled set") pulls the replicates down and the interval misses.
    assert _coverage(16, 0.8, n=8, m=4, own_copies="all") < 0.80


# ----------------------------------------------------------------------------- the bootstrap


def _loop_replicate(logp: np.ndarray, draw: np.ndarray, marginal: str, own_copies: str) -> float:
    """One bootstrap replicate by brute force over the drawn positions (no vectorisation)."""
    n, m, _ = logp.shape
    total = 0.0
    for k, i in enumerate(draw):
        for j in range(m):
            vals, weights = [], []
            n_other_draws = sum(1 for l in draw if l != i)
            for k2, l in enumerate(draw):
                if k2 == k:  # the drawn copy itself
                    if marginal == "leave_one_out":
                        continue
                    vals.append(logp[i, j, i])
                    weights.append(1.0)
                elif l == i:  # another copy of the same context
                    if own_copies == "once":
                        continue
                    vals.append(logp[i, j, i])
                    weights.append(1.0)
                else:
                    vals.append(logp[i, j, l])
                    weights.append((n - 1) / n_other_draws
                                   if own_copies == "once" and marginal == "mixture" else 1.0)
            if own_copies == "once":
                slots = n if marginal == "mixture" else n_other_draws
            else:
                slots = n if marginal == "mixture" else n - 1
            top = max(vals)
            log_marg = top + math.log(sum(w * math.exp(v - top) for v, w in zip(vals, weights)) / slots)
            total += logp[i, j, i] - log_marg
    return total / (n * m)


@pytest.mark.parametrize("marginal", ["mixture", "leave_one_out"])
@pytest.mark.parametrize("own_copies", ["once", "all"])
@pytest.mark.parametrize("scale", [1.0, 60.0])  # 60: differences of thousands of nats (underflow path)
def test_vectorised_bootstrap_equals_a_loop(marginal, own_copies, scale):
    rng = np.random.default_rng(11)
    n, m = 9, 3
    logp = -rng.gamma(2.0, 3.0, size=(n, m, n)) * scale
    logp[np.arange(n), :, np.arange(n)] *= 0.3
    draws = [rng.integers(n, size=n) for _ in range(25)]
    counts = np.array([np.bincount(d, minlength=n) for d in draws])
    got = _bootstrap_nats(logp, counts, marginal, own_copies)
    want = np.array([_loop_replicate(logp, d, marginal, own_copies) for d in draws])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-9)


def test_full_resample_reproduces_the_estimate():
    rng = np.random.default_rng(12)
    logp = channel_logp(rng, k=8, q=0.6, n=10, m=2)
    for marginal in ("mixture", "leave_one_out"):
        for own_copies in ("once", "all"):
            rep = _bootstrap_nats(logp, np.ones((1, 10), dtype=int), marginal, own_copies)[0]
            assert rep == pytest.approx(estimate_mi(logp, n_boot=0, marginal=marginal).nats_raw, abs=1e-12)


def test_bootstrap_is_deterministic_for_a_seed():
    rng = np.random.default_rng(13)
    logp = channel_logp(rng, k=8, q=0.6, n=12, m=2)
    a, b = estimate_mi(logp, seed=3), estimate_mi(logp, seed=3)
    c = estimate_mi(logp, seed=4)
    assert (a.ci_low_bits, a.ci_high_bits) == (b.ci_low_bits, b.ci_high_bits)
    assert (a.ci_low_bits, a.ci_high_bits) != (c.ci_low_bits, c.ci_high_bits)
    assert a.ci_low_bits_raw <= a.bits_raw <= a.ci_high_bits_raw
    wider = estimate_mi(logp, seed=3, ci=0.99)
    assert wider.ci_low_bits_raw <= a.ci_low_bits_raw and wider.ci_high_bits_raw >= a.ci_high_bits_raw


def test_clipping_applies_to_the_interval_too():
    rng = np.random.default_rng(14)
    k, q, n = 4, 0.6, 8
    a, b = q + (1 - q) / k, (1 - q) / k
    x = rng.integers(k, size=n)
    z = rng.integers(k, size=(n, 3))  # independent of x: raw estimate near or below 0
    logp = np.log(np.where(z[:, :, None] == x[None, None, :], a, b))
    raw = estimate_mi(logp, clip=False, seed=0)
    clipped = estimate_mi(logp, clip=True, seed=0)
    assert raw.ci_low_bits < 0
    assert clipped.ci_low_bits == max(0.0, raw.ci_low_bits) == 0.0
    assert clipped.ci_high_bits == max(0.0, raw.ci_high_bits)
    assert clipped.ci_low_bits_raw == raw.ci_low_bits  # the raw interval is kept


def test_to_dict_is_plain_json():
    est = estimate_mi(hand_logp(), n_tokens=[[3, 5], [4, 8]], n_boot=100)
    d = est.to_dict()
    text = json.dumps(d, allow_nan=False)
    back = json.loads(text)
    assert back["bits"] == est.bits and back["ceiling_bits"] == 1.0
    assert back["pointwise_bits"] == est.pointwise_bits.tolist()
    assert back["bits_per_token"] == est.bits_per_token
    assert isinstance(est, MIEstimate)


# ----------------------------------------------------------------------------- mi_vs_n


def test_mi_vs_n_on_the_identity_channel_tracks_the_ceiling():
    n = 16
    logp = np.full((n, 2, n), -np.inf)
    logp[np.arange(n), :, np.arange(n)] = 0.0
    points = mi_vs_n(logp, [2, 4, 8, 16], n_subsets=5, n_boot=50, seed=1)
    assert [p.n_contexts for p in points] == [2, 4, 8, 16]
    assert [p.n_subsets for p in points] == [5, 5, 5, 1]  # all contexts: one subset
    for p in points:
        assert p.bits == pytest.approx(math.log2(p.n_contexts), abs=1e-12)
        assert p.ceiling_bits == math.log2(p.n_contexts)
        assert p.ci_low_bits == pytest.approx(p.bits, abs=1e-12)
    json.dumps([p.to_dict() for p in points], allow_nan=False)


def test_mi_vs_n_subset_estimates_are_estimates_on_subsets():
    p = np.array([[0.6, 0.2, 0.1],
                  [0.3, 0.3, 0.3],
                  [0.1, 0.4, 0.05]])
    logp = np.log(p)
    pairs = []
    for sub in ([0, 1], [0, 2], [1, 2]):  # by hand: p_own / mean over the pair
        terms = [math.log2(p[i, i] / ((p[i, sub[0]] + p[i, sub[1]]) / 2)) for i in sub]
        pairs.append(max(0.0, sum(terms) / 2))
    for seed in range(5):
        (pt,) = mi_vs_n(logp, [2], n_subsets=1, n_boot=0, seed=seed)
        assert min(abs(pt.bits - v) for v in pairs) < 1e-12
        assert pt.ci_low_bits is None
    (many,) = mi_vs_n(logp, [2], n_subsets=40, n_boot=0, seed=0)
    assert min(pairs) < many.bits < max(pairs)
    (full,) = mi_vs_n(logp, [3], n_boot=100)
    assert full.bits == estimate_mi(logp, n_boot=0).bits


def test_mi_vs_n_grows_with_n_on_a_channel():
    rng = np.random.default_rng(15)
    logp = channel_logp(rng, k=64, q=0.9, n=48, m=2)
    points = mi_vs_n(logp, [4, 12, 48], n_subsets=10, n_boot=100, seed=0,
                     n_tokens=np.full((48, 2), 10))
    bits = [p.bits for p in points]
    assert bits[0] < bits[1] < bits[2]
    for p in points:
        assert p.ci_low_bits <= p.bits <= p.ci_high_bits
        assert p.bits_per_token == pytest.approx(p.bits / 10, rel=1e-12)


def test_mi_vs_n_bad_sizes():
    logp = hand_logp()
    with pytest.raises(UsageError, match=r"sizes\[0\] = 3"):
        mi_vs_n(logp, [3])
    with pytest.raises(UsageError, match=r"sizes\[1\] = 1"):
        mi_vs_n(logp, [2, 1])
    with pytest.raises(UsageError, match="sizes is empty"):
        mi_vs_n(logp, [])
    with pytest.raises(UsageError, match="n_subsets"):
        mi_vs_n(logp, [2], n_subsets=0)


# ----------------------------------------------------------------------------- bad input


def _good(n: int = 3, m: int = 2) -> np.ndarray:
    return np.log(np.full((n, m, n), 0.25))


@pytest.mark.parametrize(
    ("mutate", "pattern"),
    [
        (lambda a: a.__setitem__((1, 0, 2), np.nan), r"logp\[1, 0, 2\] is NaN"),
        (lambda a: a.__setitem__((2, 1, 0), np.inf), r"logp\[2, 1, 0\] is \+inf"),
        (lambda a: a.__setitem__((0, 1, 1), 0.5), r"logp\[0, 1, 1\] = 0.5 is positive"),
        (lambda a: a.__setitem__((1, 1, 1), -np.inf), r"logp\[1, 1, 1\] is -inf.*own context"),
    ],
)
def test_bad_values_name_the_entry(mutate, pattern):
    a = _good()
    mutate(a)
    with pytest.raises(UsageError, match=pattern) as info:
        estimate_mi(a)
    assert isinstance(info.value, ValueError)


def test_allowed_values():
    a = _good()
    a[0, 0, 2] = -np.inf  # impossible under another context: fine
    a[1, 0, 1] = 5e-5  # rounding above 0 within the tolerance: fine
    est = estimate_mi(a, n_boot=10)
    assert math.isfinite(est.bits_raw)


@pytest.mark.parametrize(
    ("logp", "pattern"),
    [
        (np.zeros(3), r"shape \(N, M, N\).*1 dimension"),
        (np.zeros((2, 2, 2, 2)), "4 dimension"),
        (np.zeros((3, 2, 4)), "axis 0 .* 3 entries but axis 2 .* 4"),
        (np.zeros((1, 3, 1)), r"at least 2 contexts \(N >= 2\); got N = 1"),
        (np.zeros((3, 0, 3)), "M = 0"),
        ([["a", "b"], ["c", "d"]], "array of numbers"),
    ],
)
def test_bad_shapes(logp, pattern):
    with pytest.raises(ValueError, match=pattern):
        estimate_mi(logp)


@pytest.mark.parametrize(
    ("n_tokens", "pattern"),
    [
        (np.ones((3, 3)), r"n_tokens must have shape \(N, M\) = \(3, 2\).*\(3, 3\)"),
        (np.ones(3), r"shape \(3,\)"),
        ([[1, 2], [3, -1], [1, 1]], r"n_tokens\[1, 1\] = -1.0"),
        ([[1, 2], [3, np.nan], [1, 1]], r"n_tokens\[1, 1\] = nan"),
        (np.zeros((3, 2)), "all 0"),
    ],
)
def test_bad_token_counts(n_tokens, pattern):
    with pytest.raises(UsageError, match=pattern):
        estimate_mi(_good(), n_tokens=n_tokens)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"marginal": "loo"}, "marginal must be one of mixture, leave_one_out"),
        ({"ci": 1.5}, "ci must be a confidence level"),
        ({"ci": 0}, "ci must be a confidence level"),
        ({"n_boot": -1}, "n_boot must be an integer >= 0"),
        ({"n_boot": 10.5}, "n_boot must be an integer >= 0"),
        ({"clip": "yes"}, "clip must be True or False"),
        ({"boot_own_copies": "some"}, "boot_own_copies must be one of once, all"),
    ],
)
def test_bad_options(kwargs, pattern):
    with pytest.raises(UsageError, match=pattern):
        estimate_mi(_good(), **kwargs)


# ----------------------------------------------------------------------------- found by mutation testing
#
# Each test below pins down behaviour that a mutant of compressbench/measure/mi.py changed while every test
# above still passed (see TESTING.md). Expected values are independent: loops over explicit
# resamples, np.quantile on those, or the documented defaults and fields.


def _draws_from_counts(counts: np.ndarray) -> list[np.ndarray]:
    return [np.repeat(np.arange(counts.shape[1]), c) for c in counts]


@pytest.mark.parametrize("marginal", ["mixture", "leave_one_out"])
@pytest.mark.parametrize("own_copies", ["once", "all"])
@pytest.mark.parametrize("ci", [0.8, 0.95])
def test_interval_is_the_percentile_interval_of_loop_replicates(marginal, own_copies, ci):
    from compressbench.measure.mi import _resample_counts

    rng = np.random.default_rng(31)
    n, m, n_boot, seed = 7, 2, 60, 9
    logp = channel_logp(rng, k=6, q=0.6, n=n, m=m)
    est = estimate_mi(logp, clip=False, ci=ci, n_boot=n_boot, seed=seed, marginal=marginal,
                      boot_own_copies=own_copies)
    counts = _resample_counts(n, n_boot, seed)
    assert counts.shape == (n_boot, n) and (counts.sum(axis=1) == n).all()
    reps = np.array([_loop_replicate(logp, d, marginal, own_copies) for d in _draws_from_counts(counts)]) / LN2
    reps = reps[~np.isnan(reps)]
    lo, hi = np.quantile(reps, [(1 - ci) / 2, 1 - (1 - ci) / 2])
    assert est.ci_low_bits_raw == pytest.approx(lo, abs=1e-9)
    assert est.ci_high_bits_raw == pytest.approx(hi, abs=1e-9)


def test_one_bootstrap_resample_gives_a_point_interval():
    from compressbench.measure.mi import _resample_counts

    rng = np.random.default_rng(32)
    logp = channel_logp(rng, k=6, q=0.6, n=6, m=2)
    est = estimate_mi(logp, clip=False, n_boot=1, seed=4)
    (draw,) = _draws_from_counts(_resample_counts(6, 1, 4))
    rep = _loop_replicate(logp, draw, "mixture", "once") / LN2
    assert est.ci_low_bits_raw == pytest.approx(rep, abs=1e-12)
    assert est.ci_high_bits_raw == pytest.approx(rep, abs=1e-12)


def test_documented_defaults():
    rng = np.random.default_rng(33)
    logp = channel_logp(rng, k=6, q=0.6, n=8, m=2)
    plain = estimate_mi(logp)
    explicit = estimate_mi(logp, clip=True, ci=0.95, n_boot=1000, seed=0, marginal="mixture",
                           boot_own_copies="once")
    assert plain.to_dict() == explicit.to_dict()
    assert (plain.n_boot, plain.seed, plain.ci, plain.clipped, plain.marginal, plain.boot_own_copies) == (
        1000, 0, 0.95, True, "mixture", "once")
    points = mi_vs_n(logp, [4])
    assert points[0].n_subsets == 20
    assert [p.to_dict() for p in points] == [p.to_dict() for p in mi_vs_n(
        logp, [4], n_subsets=20, seed=0, clip=True, ci=0.95, n_boot=200, marginal="mixture",
        boot_own_copies="once")]
    # and the default n_boot is the one that reaches the interval: 201 resamples give another one here
    big = channel_logp(rng, k=12, q=0.7, n=24, m=2)
    assert mi_vs_n(big, [12]) == mi_vs_n(big, [12], n_boot=200)
    assert mi_vs_n(big, [12])[0].ci_low_bits != mi_vs_n(big, [12], n_boot=201)[0].ci_low_bits


def test_options_are_recorded_in_the_estimate_and_its_dict():
    est = estimate_mi(hand_logp(), n_tokens=[[3, 5], [4, 8]], clip=False, ci=0.9, n_boot=7, seed=3,
                      marginal="leave_one_out", boot_own_copies="all")
    assert (est.clipped, est.ci, est.n_boot, est.seed, est.marginal, est.boot_own_copies) == (
        False, 0.9, 7, 3, "leave_one_out", "all")
    d = est.to_dict()
    assert {k: d[k] for k in ("clipped", "ci", "n_boot", "seed", "marginal", "boot_own_copies",
                              "n_contexts", "n_samples", "at_ceiling")} == {
        "clipped": False, "ci": 0.9, "n_boot": 7, "seed": 3, "marginal": "leave_one_out",
        "boot_own_copies": "all", "n_contexts": 2, "n_samples": 2, "at_ceiling": False}
    n = 3
    ident = np.full((n, 1, n), -np.inf)
    ident[np.arange(n), :, np.arange(n)] = -2.0
    assert estimate_mi(ident, n_boot=0).to_dict()["at_ceiling"] is True
    assert set(d) == set(MIEstimate.__dataclass_fields__) | {"at_ceiling", "kind"}
    assert d["kind"] == "all contexts"


def test_clip_false_keeps_negative_estimates_and_rates():
    # A context-free compression scored by a context-sensitive scorer: raw < 0 (Jensen).
    a = np.log([0.5, 0.1, 0.2, 0.05])
    logp = np.tile(a, (4, 3, 1))
    gap_bits = (a.mean() - math.log(np.mean(np.exp(a)))) / LN2
    raw = estimate_mi(logp, clip=False, n_boot=0, n_tokens=np.full((4, 3), 4))
    assert raw.bits == raw.bits_raw == pytest.approx(gap_bits, abs=1e-12) and raw.bits < 0
    assert raw.bits_per_token == pytest.approx(gap_bits / 4, abs=1e-12)
    assert raw.bits_per_token_ci_low is None and raw.bits_per_token_ci_high is None  # n_boot = 0
    clipped = estimate_mi(logp, n_boot=0, n_tokens=np.full((4, 3), 4))
    assert clipped.bits == 0.0 and clipped.bits_per_token == 0.0


def test_rate_interval_unclipped_and_clipped_on_a_noisy_channel():
    rng = np.random.default_rng(14)
    k, q, n = 4, 0.6, 8
    a, b = q + (1 - q) / k, (1 - q) / k
    x = rng.integers(k, size=n)
    z = rng.integers(k, size=(n, 3))  # independent of x
    logp = np.log(np.where(z[:, :, None] == x[None, None, :], a, b))
    tok = np.full((n, 3), 5)
    raw = estimate_mi(logp, clip=False, seed=0, n_tokens=tok)
    assert raw.ci_low_bits < 0
    assert raw.bits_per_token_ci_low == pytest.approx(raw.ci_low_bits / 5, abs=1e-12)
    assert raw.bits_per_token_ci_high == pytest.approx(raw.ci_high_bits / 5, abs=1e-12)
    clipped = estimate_mi(logp, seed=0, n_tokens=tok)
    assert clipped.bits_per_token_ci_low == 0.0
    assert clipped.bits_per_token_ci_high == pytest.approx(max(0.0, raw.ci_high_bits) / 5, abs=1e-12)


def test_rate_with_less_than_one_token_per_compression():
    # Mean length 0.5 tokens in every context (one empty compression and a one-token one): the rate is
    # bits / 0.5 and its interval the bits interval over 0.5.
    rng = np.random.default_rng(35)
    logp = channel_logp(rng, k=6, q=0.8, n=6, m=2)
    tok = np.tile([1, 0], (6, 1))
    est = estimate_mi(logp, n_tokens=tok, seed=2)
    assert est.mean_tokens == 0.5 and est.bits_per_token == pytest.approx(est.bits / 0.5, rel=1e-12)
    assert est.bits_per_token_ci_low == pytest.approx(est.ci_low_bits / 0.5, rel=1e-12)
    assert est.bits_per_token_ci_high == pytest.approx(est.ci_high_bits / 0.5, rel=1e-12)


def test_rate_interval_drops_resamples_without_tokens():
    # Contexts 0 and 1 have empty compressions: a resample of only those has no tokens and no rate.
    from compressbench.measure.mi import _resample_counts

    rng = np.random.default_rng(36)
    n, n_boot = 3, 300
    logp = channel_logp(rng, k=6, q=0.9, n=n, m=2)
    tok = np.array([[0, 0], [0, 0], [4, 4]])
    est = estimate_mi(logp, n_tokens=tok, n_boot=n_boot, seed=1)
    counts = _resample_counts(n, n_boot, 1)
    reps = np.array([_loop_replicate(logp, d, "mixture", "once") for d in _draws_from_counts(counts)]) / LN2
    mean_tok = counts @ tok.mean(axis=1) / n
    keep = (mean_tok > 0) & ~np.isnan(reps)
    assert (~keep).any()  # some resamples hold no token at all
    rates = np.maximum(reps[keep], 0.0) / mean_tok[keep]
    assert est.bits_per_token_ci_low == pytest.approx(np.quantile(rates, 0.025), abs=1e-9)
    assert est.bits_per_token_ci_high == pytest.approx(np.quantile(rates, 0.975), abs=1e-9)
    assert math.isfinite(est.bits_per_token_ci_high)


def test_percentile_interval_with_infinite_replicates_uses_outer_order_statistics():
    from compressbench.measure.mi import _percentile_interval

    v = np.array([3.0, np.inf, 1.0, np.nan, 2.0, np.inf])  # NaN ignored; sorted: 1, 2, 3, inf, inf
    assert _percentile_interval(v, 0.1) == (1.0, math.inf)  # positions 0.4 -> lower 0, 3.6 -> higher 4
    assert _percentile_interval(v, 0.3) == (2.0, math.inf)  # 1.2 -> 1; 2.8 -> 3
    assert _percentile_interval(np.array([1.0, 2.0, 4.0]), 0.25) == (1.5, 3.0)  # finite: interpolated
    lo, hi = _percentile_interval(np.array([np.nan, np.nan]), 0.1)
    assert math.isnan(lo) and math.isnan(hi)
    assert _percentile_interval(np.array([5.0]), 0.025) == (5.0, 5.0)


@pytest.mark.parametrize("scale", [1.0, 60.0])
def test_bootstrap_underflow_path_when_the_row_maximum_is_not_drawn(scale):
    # Context 0 makes every compression likely (log p = -1); all others are thousands of nats
    # lower. In resamples without context 0 the scaled sums underflow and are recomputed exactly.
    rng = np.random.default_rng(37)
    n, m = 6, 2
    logp = -1000.0 * scale - rng.gamma(2.0, 3.0, size=(n, m, n))
    logp[:, :, 0] = -1.0
    draws = [rng.integers(1, n, size=n) for _ in range(10)] + [rng.integers(n, size=n) for _ in range(10)]
    counts = np.array([np.bincount(d, minlength=n) for d in draws])
    for marginal in ("mixture", "leave_one_out"):
        for own_copies in ("once", "all"):
            got = _bootstrap_nats(logp, counts, marginal, own_copies)
            want = np.array([_loop_replicate(logp, d, marginal, own_copies) for d in draws])
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-9, err_msg=f"{marginal} {own_copies}")


@pytest.mark.filterwarnings("error")
def test_no_floating_point_warnings_on_infinite_and_empty_cases():
    n = 4
    ident = np.full((n, 2, n), -np.inf)
    ident[np.arange(n), :, np.arange(n)] = -1.0
    for marginal in ("mixture", "leave_one_out"):
        for own_copies in ("once", "all"):
            estimate_mi(ident, n_boot=50, marginal=marginal, boot_own_copies=own_copies,
                        n_tokens=[[0, 0], [0, 0], [3, 3], [2, 2]])
            mi_vs_n(ident, [2, 4], n_subsets=3, n_boot=20, marginal=marginal, boot_own_copies=own_copies)
    rng = np.random.default_rng(38)
    big = -3000.0 - rng.gamma(2.0, 3.0, size=(5, 2, 5))
    big[:, :, 0] = -1.0
    estimate_mi(big, n_boot=100, marginal="leave_one_out")
    estimate_mi(big, n_boot=100)


def test_positive_tolerance_boundary_and_level_one_is_refused():
    from compressbench.measure.mi import POSITIVE_TOLERANCE_NATS

    a = _good()
    a[0, 1, 2] = POSITIVE_TOLERANCE_NATS  # exactly at the tolerance: accepted as rounding
    estimate_mi(a, n_boot=0)
    a[0, 1, 2] = POSITIVE_TOLERANCE_NATS * 1.5
    with pytest.raises(UsageError, match="is positive"):
        estimate_mi(a, n_boot=0)
    for level in (1.0, 1, "0.95", True):
        with pytest.raises(UsageError, match="ci must be a confidence level"):
            estimate_mi(_good(), ci=level)


@pytest.mark.parametrize(
    ("logp", "kwargs", "message"),
    [
        (np.zeros((3, 0, 3)), {}, r"^logp has no compressions \(M = 0\); give at least one per context$"),
        (np.where(np.eye(3)[:, None, :] > 0, np.nan, -1.0) * np.ones((3, 2, 3)), {},
         r"^logp\[0, 0, 0\] is NaN \(6 NaN entries\); log-probabilities must be numbers <= 0 \(or -inf\)$"),
        (np.where(np.eye(3)[:, None, :] > 0, -np.inf, -1.0) * np.ones((3, 1, 3)), {},
         r"^logp\[0, 0, 0\] is -inf: compression 0 of context 0 is impossible under its own context, so it "
         r"cannot have been sampled from it; check the scorer and the index order \(logp\[i, j, l\] = "
         r"log p\(z_ij \| x_l\)\)$"),
        (np.full((2, 1, 2), -1.0), {"n_tokens": [[0], [0]]},
         r"^n_tokens are all 0: bits per token is undefined for empty compressions$"),
        (np.full((2, 1, 2), -1.0), {"n_tokens": [["a"], ["b"]]}, r"^n_tokens must be an array of token counts: "),
    ],
)
def test_error_messages_in_full(logp, kwargs, message):
    with pytest.raises(UsageError, match=message):
        estimate_mi(logp, **kwargs)


def test_mi_vs_n_options_reach_every_subset_estimate():
    p = np.array([[0.6, 0.2, 0.1],
                  [0.3, 0.3, 0.3],
                  [0.1, 0.4, 0.05]])
    logp = np.log(p)
    # leave-one-out on a pair: p_own / p_other; unclipped, so a negative pair stays negative
    pairs = {}
    for sub in ([0, 1], [0, 2], [1, 2]):
        terms = [math.log2(p[i, i] / p[i, [l for l in sub if l != i][0]]) for i in sub]
        pairs[tuple(sub)] = sum(terms) / 2
    assert min(pairs.values()) < 0
    for seed in range(6):
        (pt,) = mi_vs_n(logp, [2], n_subsets=1, n_boot=0, seed=seed, marginal="leave_one_out", clip=False)
        assert min(abs(pt.bits - v) for v in pairs.values()) < 1e-12
    (full,) = mi_vs_n(logp, 3, n_boot=0, marginal="leave_one_out", clip=False)  # a single size as an int
    assert full.bits == pytest.approx(estimate_mi(logp, n_boot=0, marginal="leave_one_out").bits_raw, abs=1e-12)
    assert full.bits_per_token is None  # no token counts given


def test_mi_vs_n_subset_spread_is_the_sd_of_the_drawn_estimates():
    p = np.array([[0.6, 0.2, 0.1],
                  [0.3, 0.3, 0.3],
                  [0.1, 0.4, 0.05]])
    values = []
    for sub in ([0, 1], [0, 2], [1, 2]):
        terms = [math.log2(p[i, i] / ((p[i, sub[0]] + p[i, sub[1]]) / 2)) for i in sub]
        values.append(max(0.0, sum(terms) / 2))
    seen_spread = False
    for seed in range(8):
        (pt,) = mi_vs_n(np.log(p), [2], n_subsets=2, n_boot=0, seed=seed)
        # two draws a, b from the three pair values: mean (a + b) / 2 and sd |a - b| / 2
        assert any(pt.bits == pytest.approx((a + b) / 2, abs=1e-12)
                   and pt.subset_sd_bits == pytest.approx(abs(a - b) / 2, abs=1e-12)
                   for a in values for b in values)
        seen_spread |= pt.subset_sd_bits > 0
    assert seen_spread


def test_mi_vs_n_is_deterministic_and_clips_its_pooled_interval():
    rng = np.random.default_rng(14)
    k, q, n = 4, 0.6, 8
    a, b = q + (1 - q) / k, (1 - q) / k
    x = rng.integers(k, size=n)
    z = rng.integers(k, size=(n, 3))  # independent of x: replicates straddle 0
    logp = np.log(np.where(z[:, :, None] == x[None, None, :], a, b))
    one = mi_vs_n(logp, [4, 8], n_subsets=5, n_boot=50, seed=3, clip=False)
    two = mi_vs_n(logp, [4, 8], n_subsets=5, n_boot=50, seed=3, clip=False)
    assert [p.to_dict() for p in one] == [p.to_dict() for p in two]
    assert all(p.ci_low_bits < 0 for p in one)
    clipped = mi_vs_n(logp, [4, 8], n_subsets=5, n_boot=50, seed=3)
    for c, r in zip(clipped, one):
        assert c.ci_low_bits == 0.0 and c.ci_high_bits == pytest.approx(max(0.0, r.ci_high_bits), abs=1e-12)
    (single,) = mi_vs_n(logp, [8], n_boot=1, seed=3, clip=False)
    assert single.ci_low_bits is not None and single.ci_low_bits == single.ci_high_bits  # one replicate
    d = one[0].to_dict()
    assert d == {"n_contexts": 4, "n_subsets": 5, "bits": one[0].bits, "ci_low_bits": one[0].ci_low_bits,
                 "ci_high_bits": one[0].ci_high_bits, "subset_sd_bits": one[0].subset_sd_bits,
                 "ceiling_bits": 2.0, "bits_per_token": None}


@pytest.mark.parametrize(("marginal", "own_copies"), [("mixture", "once"), ("mixture", "all"),
                                                       ("leave_one_out", "once"), ("leave_one_out", "all")])
def test_mi_vs_n_on_all_contexts_bootstraps_like_estimate_mi(marginal, own_copies):
    # With every context (one subset) the pooled replicates are one bootstrap of the whole set, so
    # the interval matches estimate_mi's up to Monte Carlo error (20,000 resamples: about 0.01 bits
    # apart; a wrong level, marginal or own-copies rule moves it by 0.05 bits or more).
    rng = np.random.default_rng(21)
    logp = channel_logp(rng, k=8, q=0.6, n=12, m=2)
    kw = dict(n_boot=20_000, ci=0.9, clip=False, marginal=marginal, boot_own_copies=own_copies)
    (pt,) = mi_vs_n(logp, [12], seed=3, **kw)
    est = estimate_mi(logp, seed=0, **kw)
    assert pt.ci_low_bits == pytest.approx(est.ci_low_bits, abs=0.025)
    assert pt.ci_high_bits == pytest.approx(est.ci_high_bits, abs=0.025)
    (wide,) = mi_vs_n(logp, [12], seed=3, **{**kw, "ci": 0.5})
    assert pt.ci_low_bits <= wide.ci_low_bits <= wide.ci_high_bits <= pt.ci_high_bits


@pytest.mark.parametrize(("kwargs", "pattern"), [
    ({"n_subsets": True}, "n_subsets must be an integer >= 1"),
    ({"sizes": [True]}, r"sizes\[0\] = True"),
])
def test_mi_vs_n_refuses_booleans(kwargs, pattern):
    args = {"sizes": [2], **kwargs}
    with pytest.raises(UsageError, match=pattern):
        mi_vs_n(hand_logp(), **args)


def test_mi_vs_n_dict_is_json_safe_with_infinite_estimates_and_empty_sizes_message():
    n = 4
    ident = np.full((n, 1, n), -np.inf)
    ident[np.arange(n), :, np.arange(n)] = -1.0
    (pt,) = mi_vs_n(ident, [3], n_subsets=2, n_boot=5, marginal="leave_one_out")
    d = pt.to_dict()
    assert d["bits"] is None and d["subset_sd_bits"] is None  # +inf and NaN become null
    json.dumps(d, allow_nan=False)
    with pytest.raises(UsageError, match=r"^sizes is empty; give the context counts to evaluate, e\.g\. \[4, 8, 16\]$"):
        mi_vs_n(hand_logp(), [])
