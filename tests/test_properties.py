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

from compressbench.measure.mi import estimate_mi
from compressbench.measure.scoring import build_logp_tensor
from compressbench.core.types import Example

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
    from compressbench.analysis.report import pareto_front

    cost = [c for c, _ in points]
    acc = [a for _, a in points]
    assert pareto_front(cost, acc).tolist() == _dominated_by_loop(cost, acc)


@FAST
@given(values=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=30), seed=st.integers(0, 100),
       levels=st.lists(st.floats(0.05, 0.99), min_size=2, max_size=4, unique=True))
def test_bootstrap_mean_intervals_are_nested_as_the_level_grows(values, seed, levels):
    from compressbench.analysis.report import bootstrap_mean_ci

    out = [bootstrap_mean_ci(values, n_boot=200, seed=seed, level=c) for c in sorted(levels)]
    for (m1, lo1, hi1), (m2, lo2, hi2) in zip(out, out[1:]):
        assert m1 == m2 == pytest.approx(float(np.mean(values)))
        assert lo2 <= lo1 <= hi1 <= hi2


@FAST
@given(k=st.integers(0, 60), extra=st.integers(0, 60),
       levels=st.lists(st.floats(0.05, 0.99), min_size=2, max_size=4, unique=True))
def test_wilson_intervals_are_nested_and_inside_0_1(k, extra, levels):
    from compressbench.core.stats import wilson_interval

    n = k + extra
    if n == 0:
        assert wilson_interval(k, n) == (None, None)
        return
    out = [wilson_interval(k, n, level) for level in sorted(levels)]
    eps = 1e-12  # at k = n (or 0) the bound is 1 (or 0) up to float rounding
    for (lo1, hi1), (lo2, hi2) in zip(out, out[1:]):
        assert 0.0 <= lo2 <= lo1 + eps and lo1 <= k / n + eps
        assert k / n - eps <= hi1 <= hi2 + eps and hi2 <= 1.0


@FAST
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # constant resamples: numpy's corrcoef warns, they are dropped
@given(values=st.lists(st.floats(-5.0, 5.0), min_size=4, max_size=25), data=st.data(),
       levels=st.lists(st.floats(0.3, 0.99), min_size=2, max_size=3, unique=True))
def test_correlation_intervals_are_nested_as_the_level_grows(values, data, levels):
    from compressbench.analysis.report import correlate

    y = data.draw(st.lists(st.floats(-5.0, 5.0), min_size=len(values), max_size=len(values)))
    out = [correlate(values, y, n_boot=100, seed=3, level=c) for c in sorted(levels)]
    for inner, outer in zip(out, out[1:]):
        if inner.note or math.isnan(inner.pearson_ci_low):
            continue
        assert outer.pearson_ci_low <= inner.pearson_ci_low <= inner.pearson_ci_high <= outer.pearson_ci_high
        assert outer.spearman_ci_low <= inner.spearman_ci_low <= inner.spearman_ci_high <= outer.spearman_ci_high


# ----------------------------------------------------------------------------- cost

_INFO = st.builds(
    lambda n, layers, heads, hd: __import__("compressbench.core.types", fromlist=["ModelInfo"]).ModelInfo(
        reference="m", n_params=n, n_layers=layers, n_heads=heads, head_dim=hd),
    st.integers(10**5, 10**10), st.integers(1, 80), st.integers(1, 64), st.integers(8, 256))


@FAST
@given(info=_INFO, p=st.integers(0, 5000), g=st.integers(0, 2000))
def test_flops_are_additive_over_positions(info, p, g):
    # Generating G tokens after P costs what prefilling the last G of P + G positions costs.
    from compressbench.measure.cost import generation_flops, prefill_flops

    assert prefill_flops(info, p) + generation_flops(info, p, g) == pytest.approx(prefill_flops(info, p + g), rel=1e-12)
    # per position t: 2 N + 4 n_layers d_attn t, summed by hand for short calls
    if p + g <= 200:
        da = info.n_heads * info.head_dim
        by_hand = sum(2 * info.n_params + 4 * info.n_layers * da * t for t in range(1, p + g + 1))
        assert prefill_flops(info, p + g) == pytest.approx(by_hand, rel=1e-12)


@FAST
@given(info=_INFO, calls=st.integers(1, 8), p=st.integers(1, 3000), g=st.integers(0, 500))
def test_role_cost_of_equal_calls_is_additive(info, calls, p, g):
    from compressbench.measure.cost import role_cost

    one = role_cost("predictor", {"n_prompt_tokens": p, "n_completion_tokens": g, "n_calls": 1}, info)
    many = role_cost("predictor", {"n_prompt_tokens": calls * p, "n_completion_tokens": calls * g,
                                   "n_calls": calls}, info)
    assert many.flops == pytest.approx(calls * one.flops, rel=1e-12)
    assert many.flops == pytest.approx(many.prefill_flops + many.generation_flops, rel=1e-12)


@FAST
@given(prices=st.tuples(st.floats(0.0, 100.0), st.floats(0.0, 100.0), st.one_of(st.none(), st.floats(0.0, 100.0))),
       a=st.tuples(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6)),
       b=st.tuples(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6)))
def test_dollars_are_additive_over_calls(prices, a, b):
    from compressbench.measure.cost import Price

    price = Price("m", prices[0], prices[1], prices[2], as_of="2026-01-01")
    (p1, g1, c1), (p2, g2, c2) = a, b
    c1, c2 = min(c1, p1), min(c2, p2)
    total = price.usd(p1 + p2, g1 + g2, c1 + c2)
    assert total == pytest.approx(price.usd(p1, g1, c1) + price.usd(p2, g2, c2), rel=1e-9, abs=1e-12)
    cached = prices[0] if prices[2] is None else prices[2]
    assert total == pytest.approx(((p1 + p2 - c1 - c2) * prices[0] + (c1 + c2) * cached + (g1 + g2) * prices[1]) / 1e6,
                                  rel=1e-9, abs=1e-12)


def test_system_cost_is_the_sum_of_its_roles(tmp_path):
    # The deployed system's cost per query = compressor + predictor, in every cell (scorer and judge
    # are measurement costs, kept apart); unknown (NaN) stays unknown.
    from run_fixtures import write_run

    from compressbench.analysis.report import build_report

    cells = build_report(write_run(tmp_path), n_boot=50).cells
    for unit in ("gflops", "usd"):
        parts = cells[f"{unit}_compressor"] + cells[f"{unit}_predictor"]
        total = cells[f"{unit}_per_query"]
        assert (parts.isna() == total.isna()).all()
        np.testing.assert_allclose(total[total.notna()], parts[total.notna()], rtol=1e-12)
    assert cells["usd_per_query"].notna().any() and cells["gflops_per_query"].notna().any()
