"""Laws that hold for every input, checked with hypothesis on generated inputs.

MI estimator: invariant under relabelling the contexts (and reordering a context's samples),
at most log2 N (mixture), exactly log2 N on an identity channel, exactly 0 when the scorer
ignores the context, <= 0 (the Jensen gap) when every compression is the same string, bits =
nats / ln 2, clipping is max(0, raw), intervals nested as the level grows. Scoring: the tensor
follows the examples when they are reordered; a real model's score_matrix rows follow its
prefixes. Pareto fronts equal a brute-force dominance check. Intervals nest as the level grows.

Examples are bounded (``max_examples``) and derandomised, with no deadline, so CI runs the same
inputs every time and is never flaky on a slow machine.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from compressbench.mi import estimate_mi
from compressbench.scoring import build_logp_tensor
from compressbench.types import Example

LN2 = math.log(2.0)
FAST = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=4, deadline=None, derandomize=True, database=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@st.composite
def logp_tensors(draw, *, max_n: int = 6, max_m: int = 3, allow_neg_inf: bool = True):
    """(N, M, N) log-probabilities in nats: finite on the diagonal, -inf allowed elsewhere."""
    n = draw(st.integers(2, max_n))
    m = draw(st.integers(1, max_m))
    values = st.floats(-60.0, 0.0, allow_nan=False, allow_infinity=False)
    arr = draw(arrays(np.float64, (n, m, n), elements=values))
    if allow_neg_inf:
        mask = draw(arrays(np.bool_, (n, m, n)))
        arr = np.where(mask & ~np.eye(n, dtype=bool)[:, None, :], -np.inf, arr)
    return arr


def _mixture_bits_by_loop(logp: np.ndarray) -> float:
    """The mixture estimate written out term by term with math.log/math.exp (reference)."""
    n, m, _ = logp.shape
    total = 0.0
    for i in range(n):
        for j in range(m):
            top = max(logp[i, j])
            mix = sum(math.exp(v - top) for v in logp[i, j] if v != -math.inf) / n
            total += logp[i, j, i] - (top + math.log(mix))
    return total / (n * m) / LN2


# ----------------------------------------------------------------------------- MI laws


@FAST
@given(logp=logp_tensors(), data=st.data())
def test_mi_is_invariant_under_relabelling_contexts_and_reordering_samples(logp, data):
    n, m, _ = logp.shape
    perm = np.array(data.draw(st.permutations(range(n))))
    samples = np.array(data.draw(st.permutations(range(m))))
    moved = logp[perm][:, samples][:, :, perm]
    a = estimate_mi(logp, n_boot=0, clip=False)
    b = estimate_mi(moved, n_boot=0, clip=False)
    assert b.bits_raw == pytest.approx(a.bits_raw, abs=1e-9)
    np.testing.assert_allclose(b.pointwise_bits, a.pointwise_bits[perm][:, samples], rtol=0, atol=1e-9)
    loo_a = estimate_mi(logp, n_boot=0, clip=False, marginal="leave_one_out")
    loo_b = estimate_mi(moved, n_boot=0, clip=False, marginal="leave_one_out")
    assert loo_b.bits_raw == pytest.approx(loo_a.bits_raw, abs=1e-9) or (
        math.isinf(loo_a.bits_raw) and loo_a.bits_raw == loo_b.bits_raw)


@FAST
@given(logp=logp_tensors())
def test_mixture_estimate_equals_the_loop_and_is_at_most_log2_n(logp):
    n = logp.shape[0]
    est = estimate_mi(logp, n_boot=0, clip=False)
    assert est.bits_raw == pytest.approx(_mixture_bits_by_loop(logp), abs=1e-9)
    assert est.bits_raw <= math.log2(n) + 1e-12
    assert (est.pointwise_bits <= math.log2(n) + 1e-12).all()
    assert est.ceiling_bits == math.log2(n)


@FAST
@given(n=st.integers(2, 8), m=st.integers(1, 3), data=st.data())
def test_identity_channel_is_exactly_log2_n(n, m, data):
    own = data.draw(arrays(np.float64, (n, m), elements=st.floats(-80.0, 0.0)))
    logp = np.full((n, m, n), -np.inf)
    logp[np.arange(n), :, np.arange(n)] = own
    est = estimate_mi(logp, n_boot=20, seed=data.draw(st.integers(0, 100)))
    assert est.bits == pytest.approx(math.log2(n), abs=1e-12)
    assert est.ci_low_bits == pytest.approx(math.log2(n), abs=1e-12)
    assert est.ci_high_bits == pytest.approx(math.log2(n), abs=1e-12)


@FAST
@given(logp=logp_tensors(allow_neg_inf=False))
def test_a_scorer_that_ignores_the_context_gives_zero(logp):
    free = np.repeat(logp[:, :, :1], logp.shape[0], axis=2)  # log p(z | x_l) the same for every l
    est = estimate_mi(free, n_boot=0, clip=False)
    assert est.bits_raw == pytest.approx(0.0, abs=1e-12)


@FAST
@given(n=st.integers(2, 8), m=st.integers(1, 3),
       a=arrays(np.float64, 8, elements=st.floats(-60.0, 0.0)))
def test_one_compression_for_every_context_is_at_most_zero(n, m, a):
    # A context-free compressor (the same string z for every context), scored by a context-aware
    # scorer with a_l = log p(z | x_l): raw = mean_l a_l - log mean_l exp(a_l) <= 0 (Jensen).
    a = a[:n]
    logp = np.tile(a, (n, m, 1))
    raw = estimate_mi(logp, n_boot=0, clip=False).bits_raw
    gap = (a.mean() - (a.max() + math.log(np.mean(np.exp(a - a.max()))))) / LN2
    assert raw <= 1e-12
    assert raw == pytest.approx(gap, abs=1e-9)
    assert 0.0 <= estimate_mi(logp, n_boot=0).bits <= 1e-12  # clipped (0 up to float rounding)


@FAST
@given(logp=logp_tensors(), tokens=st.integers(1, 40))
def test_bits_are_nats_over_ln2_and_clipping_is_max_zero(logp, tokens):
    n, m, _ = logp.shape
    est = estimate_mi(logp, n_boot=0, n_tokens=np.full((n, m), tokens))
    assert est.bits_raw == est.nats_raw / LN2
    assert est.pointwise_bits.mean() == pytest.approx(est.bits_raw, abs=1e-9)
    assert est.bits == max(0.0, est.bits_raw)
    assert est.bits_per_token == pytest.approx(est.bits / tokens, rel=1e-12, abs=1e-15)


@FAST
@given(logp=logp_tensors(max_n=7), seed=st.integers(0, 1000),
       marginal=st.sampled_from(["mixture", "leave_one_out"]),
       levels=st.lists(st.floats(0.05, 0.99), min_size=2, max_size=4, unique=True))
def test_mi_intervals_are_nested_as_the_level_grows(logp, seed, marginal, levels):
    intervals = [estimate_mi(logp, n_boot=80, seed=seed, ci=c, clip=False, marginal=marginal)
                 for c in sorted(levels)]
    for inner, outer in zip(intervals, intervals[1:]):
        if any(v is None or math.isnan(v) for v in (inner.ci_low_bits, outer.ci_low_bits)):
            continue
        assert outer.ci_low_bits <= inner.ci_low_bits <= inner.ci_high_bits <= outer.ci_high_bits


# ----------------------------------------------------------------------------- scoring


class _KnownScorer:
    """log p(continuation | prefix) from numbers written into the texts (a stand-in scorer)."""

    name = "known"

    def __init__(self, table: np.ndarray):
        self.table = table

    def score_matrix(self, prefixes, continuations):
        rows = [int(re.search(r"ctx(\d+)\b", p).group(1)) for p in prefixes]
        cols = [int(c.split("_")[1]) for c in continuations]
        return self.table[np.ix_(rows, cols)]

    def count_tokens(self, texts):
        return [1 + int(t.split("_")[1]) % 3 for t in texts]


@FAST
@given(n=st.integers(2, 5), m=st.integers(1, 3), data=st.data())
def test_logp_tensor_follows_the_examples_when_they_are_reordered(n, m, data):
    table = data.draw(arrays(np.float64, (n, n * m), elements=st.floats(-30.0, -0.01)))
    exs = [Example(id=str(k), context=f"ctx{k} text", question=f"q{k}?") for k in range(n)]
    comps = [[f"z_{i * m + j}" for j in range(m)] for i in range(n)]
    perm = data.draw(st.permutations(range(n)))
    scorer = _KnownScorer(table)
    base = build_logp_tensor(scorer, exs, comps).logp_nats
    moved = build_logp_tensor(scorer, [exs[k] for k in perm], [comps[k] for k in perm]).logp_nats
    np.testing.assert_array_equal(moved, base[perm][:, :, perm])
    for i in range(n):
        for j in range(m):
            for l in range(n):
                assert base[i, j, l] == table[l, i * m + j]


_PREFIXES = ["def add(a, b): return a + b\n# add returns", "import os\nprint(os.getcwd())",
             "class Stack:\n    pass", "# a comment only"]
_CONTS = [" the sum", " a path", " Stack", " nothing at all here", "!"]


@pytest.fixture(scope="module")
def base_matrix(tiny_llama) -> np.ndarray:
    return tiny_llama.score_matrix(_PREFIXES, _CONTS)


@FEW
@given(perm=st.permutations(range(len(_PREFIXES))), cperm=st.permutations(range(len(_CONTS))))
def test_real_score_matrix_rows_follow_the_prefixes(tiny_llama, base_matrix, perm, cperm):
    # The shared-prefix path batches prefixes and continuations by length; the score of a
    # (prefix, continuation) pair must not depend on where either sits in the lists.
    base = base_matrix
    moved = tiny_llama.score_matrix([_PREFIXES[k] for k in perm], [_CONTS[k] for k in cperm])
    np.testing.assert_allclose(moved, base[np.ix_(list(perm), list(cperm))], rtol=0, atol=1e-4)


# ----------------------------------------------------------------------------- Pareto and intervals


def _dominated_by_loop(cost: list[float], acc: list[float]) -> list[bool]:
    out = []
    for i, (ci, ai) in enumerate(zip(cost, acc)):
        if not (math.isfinite(ci) and math.isfinite(ai)):
            out.append(False)
            continue
        beaten = any(k != i and math.isfinite(ck) and math.isfinite(ak) and ck <= ci and ak >= ai
                     and (ck < ci or ak > ai) for k, (ck, ak) in enumerate(zip(cost, acc)))
        out.append(not beaten)
    return out


_POINT = st.one_of(st.sampled_from([0.0, 0.5, 1.0, math.nan, math.inf]), st.floats(0.0, 10.0))


@FAST
@given(points=st.lists(st.tuples(_POINT, _POINT), min_size=0, max_size=12))
def test_pareto_front_equals_brute_force(points):
    from compressbench.report import pareto_front

    cost = [c for c, _ in points]
    acc = [a for _, a in points]
    assert pareto_front(cost, acc).tolist() == _dominated_by_loop(cost, acc)


@FAST
@given(values=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=30), seed=st.integers(0, 100),
       levels=st.lists(st.floats(0.05, 0.99), min_size=2, max_size=4, unique=True))
def test_bootstrap_mean_intervals_are_nested_as_the_level_grows(values, seed, levels):
    from compressbench.report import bootstrap_mean_ci

    out = [bootstrap_mean_ci(values, n_boot=200, seed=seed, level=c) for c in sorted(levels)]
    for (m1, lo1, hi1), (m2, lo2, hi2) in zip(out, out[1:]):
        assert m1 == m2 == pytest.approx(float(np.mean(values)))
        assert lo2 <= lo1 <= hi1 <= hi2
