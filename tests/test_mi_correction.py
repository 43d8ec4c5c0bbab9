"""The bias-corrected estimate with sampled negatives (issue 19): its expectation on a deterministic
class channel against exact hypergeometric expectations (scipy), the pointwise formula against a
hand loop, K = N - 1 against every context, no scoring beyond the design's entries (counted),
saturation ("saturated: a lower bound") in the estimate, the summary, the report and the Findings,
and auto's rule (stop, grow, jump) on hand-built estimates."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import hypergeom

from compressbench.core.types import Example
from compressbench.measure.mi import (
    KIND_ALL,
    KIND_CORRECTED,
    KIND_SATURATED,
    auto_next_k,
    correction_weight,
    estimate_mi,
    estimate_mi_negatives,
    half_negatives,
    negatives_design,
)
from compressbench.measure.scoring import build_logp_tensor, score_mi

# ----------------------------------------------------------------------------- the class channel


def _class_logp(n: int, classes: int) -> np.ndarray:
    """A deterministic channel: context l has class l mod C (N / C contexts each), its compression
    names the class, p(z | x_l) = 1 under the contexts of that class and 0 under the others."""
    cls = np.arange(n) % classes
    same = cls[:, None] == cls[None, :]
    return np.where(same, 0.0, -np.inf)[:, None, :]  # (N, 1, N) nats


def _expected_bound_bits(n: int, classes: int, k: int) -> float:
    """E[log2((K + 1) / (1 + B))], B ~ Hypergeom(N - 1 others, N / C - 1 of the own class, K drawn):
    row i's negatives are a uniform K-subset of the other contexts (a random design), and the
    pointwise term is log2((K + 1) / #{own class among its K + 1})."""
    if k == 0:
        return 0.0
    b = np.arange(0, min(k, n // classes - 1) + 1)
    pmf = hypergeom(n - 1, n // classes - 1, k).pmf(b)
    return float((pmf * np.log2((k + 1) / (1 + b))).sum())


def _expected_corrected_bits(n: int, classes: int, k: int) -> float:
    """E[corrected] = E[bound_K] + a (E[bound_K] - E[bound_K']) by linearity, K' + 1 = (K + 1) / 2 and
    a = 1 - (K + 1) / N (K odd; the nested K'-design is a uniform K'-subset too)."""
    kp = (k + 1) // 2 - 1
    a = 1.0 - (k + 1) / n
    return (1 + a) * _expected_bound_bits(n, classes, k) - a * _expected_bound_bits(n, classes, kp)


@pytest.mark.parametrize(("n", "bits", "k"), [(128, 1, 15), (128, 2, 15), (128, 3, 15), (128, 3, 31),
                                              (128, 2, 7), (64, 3, 31), (32, 1, 7)])
def test_corrected_expectation_is_the_all_estimate_and_the_bound_is_not(n, bits, k):
    classes = 2**bits
    lp = _class_logp(n, classes)
    assert estimate_mi(lp, n_boot=0).bits == pytest.approx(bits, abs=1e-9)  # all: log2(N / (N / C)) = log2 C
    exact_corr, exact_bound = _expected_corrected_bits(n, classes, k), _expected_bound_bits(n, classes, k)
    # the expectations (scipy, not the code under test): the corrected one within 0.05 bits of all
    # wherever the bound is at least 1.2 bits below its ceiling, the bound itself lower by more
    assert math.log2(k + 1) - exact_bound >= 1.2
    assert abs(exact_corr - bits) <= 0.05
    if bits >= 2 or k <= 7:
        assert bits - exact_bound >= 0.07
    # the code's estimate, averaged over 300 random designs, has that expectation
    ests = [estimate_mi_negatives(lp, k=k, design_seed=s, n_boot=0, clip=False) for s in range(300)]
    assert not any(e.saturated for e in ests)
    mean_corr = np.mean([e.bits_raw for e in ests])
    mean_bound = np.mean([e.bound_bits_raw for e in ests])
    assert mean_bound == pytest.approx(exact_bound, abs=0.02)
    assert mean_corr == pytest.approx(exact_corr, abs=0.03)
    assert all(e.kind == KIND_CORRECTED and e.ceiling_bits == math.log2(k + 1) for e in ests)


def test_near_its_ceiling_the_bound_is_saturated_and_reported_as_a_lower_bound():
    n, classes, k = 128, 32, 15  # 5 bits against a ceiling of log2 16 = 4 bits
    lp = _class_logp(n, classes)
    est = estimate_mi_negatives(lp, k=k, n_boot=200)
    assert est.saturated and est.kind == KIND_SATURATED == "saturated: a lower bound"
    assert est.bits == est.bound_bits and est.ci_high_bits == est.bound_ci_high_bits  # the bound, not extrapolated
    assert est.bits < 5.0 and est.at_ceiling
    # the correction is still computed (what auto uses to jump), but not applied
    assert est.correction_bits is not None and est.correction_bits > 0
    # the margin decides: with a margin of 0 bits the same design counts as not saturated
    assert not estimate_mi_negatives(lp, k=k, n_boot=200, margin_bits=0.0).saturated


# ----------------------------------------------------------------------------- the formula


@pytest.mark.parametrize(("n", "m", "k"), [(12, 2, 7), (9, 1, 3), (10, 3, 1), (11, 2, 4)])
def test_corrected_pointwise_against_a_hand_loop(n, m, k):
    rng = np.random.default_rng(n * 10 + k)
    lp = np.log(rng.dirichlet(np.ones(6), size=(n, m, n))[..., 0]) - rng.uniform(0, 2, size=(n, m, n))
    d = negatives_design(n, k, seed=5)
    kp = (k + 1) // 2 - 1
    assert half_negatives(k) == kp
    # a from the 1 / (K + 1) bias model, written out: I_all - I_K = c (1/(K+1) - 1/N), I_K - I_K' = c (1/(K'+1) - 1/(K+1))
    a = (1 / (k + 1) - 1 / n) / (1 / (kp + 1) - 1 / (k + 1))
    assert correction_weight(k, n) == pytest.approx(a)
    if (k + 1) % 2 == 0:
        assert a == pytest.approx(1 - (k + 1) / n)
    hand = np.empty((n, m))
    for i in range(n):
        for j in range(m):
            own = lp[i, j, i]
            bound = own - logsumexp([lp[i, j, l] for l in d[i]]) + math.log(k + 1)
            half = 0.0 if kp == 0 else own - logsumexp([lp[i, j, l] for l in d[i, : kp + 1]]) + math.log(kp + 1)
            hand[i, j] = (bound + a * (bound - half)) / math.log(2)
    est = estimate_mi_negatives(lp, k=k, design_seed=5, n_boot=0, clip=False, margin_bits=-100.0)
    assert not est.saturated
    np.testing.assert_allclose(est.pointwise_bits, hand, atol=1e-12)
    assert est.bits_raw == pytest.approx(hand.mean(), abs=1e-12)
    assert est.correction_bits == pytest.approx(est.bits_raw - est.bound_bits_raw, abs=1e-12)


def test_k_1_uses_a_zero_half_estimate():
    # K = 1: K' = 0, whose estimate is 0 (a context explains itself): corrected = bound (1 + a), a = 1 - 2/N
    n = 16
    lp = _class_logp(n, 2)
    est = estimate_mi_negatives(lp, k=1, n_boot=0, clip=False, margin_bits=0.0)
    assert est.bits_raw == pytest.approx(est.bound_bits_raw * (2 - 2 / n))
    exact = _expected_bound_bits(n, 2, 1)
    assert exact == pytest.approx((n // 2) / (n - 1))  # by hand: the negative is of the other class (1 bit) or not (0)
    assert abs((2 - 2 / n) * exact - 1.0) < 0.08  # the 1-bit channel: 1.0 bit from K = 1


def test_k_of_n_minus_1_is_every_context_with_no_bound_or_correction():
    lp = _class_logp(16, 4)
    ref = estimate_mi(lp, n_boot=100, seed=0)
    for got in (estimate_mi_negatives(lp, k=15, n_boot=100, seed=0),
                estimate_mi_negatives(lp, k=40, n_boot=100, seed=0)):
        assert (got.pointwise_bits == ref.pointwise_bits).all()
        assert (got.bits, got.ci_low_bits, got.ci_high_bits) == (ref.bits, ref.ci_low_bits, ref.ci_high_bits)
        assert (got.bound_bits, got.correction_bits, got.saturated, got.kind) == (None, None, False, KIND_ALL)


# ----------------------------------------------------------------------------- scoring: nothing extra


def _prefix_class(prefix: str) -> int:
    return int(prefix.split("ctx")[1].split()[0])


class Counter:
    """A deterministic scorer: compression "class a of C" has log-prob log 0.9 under contexts of
    class a (l mod C), 30 nats less under the others; counts every (prefix, continuation) scored."""

    name = "counter"

    def __init__(self) -> None:
        self.pairs: list[tuple[str, str]] = []
        self.calls = 0

    def _lp(self, p: str, c: str) -> float:
        a, classes = (int(v) for v in c.split()[1::2])
        return math.log(0.9) if _prefix_class(p) % classes == a else math.log(0.9) - 30.0

    def score_matrix(self, prefixes: Sequence[str], continuations: Sequence[str]) -> np.ndarray:
        self.calls += 1
        self.pairs.extend((p, c) for p in prefixes for c in continuations)
        return np.array([[self._lp(p, c) for c in continuations] for p in prefixes])

    def score_subsets(self, prefixes: Sequence[str], continuations: Sequence[str],
                      subsets: Sequence[Sequence[int]]) -> list[np.ndarray]:
        self.calls += 1
        self.pairs.extend((p, continuations[i]) for p, sub in zip(prefixes, subsets) for i in sub)
        return [np.array([self._lp(p, continuations[i]) for i in sub]) for p, sub in zip(prefixes, subsets)]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) for t in texts]


def _examples(n: int, classes: int, unique: bool) -> tuple[list[Example], list[list[str]]]:
    exs = [Example(id=f"e{l}", context=f"ctx{l} text", question="q?") for l in range(n)]
    # unique: each row's compression is its own text; else rows of one class share the same text
    comps = [[f"class {i % classes} of {classes}" + (f" row{i}" if unique else "")] for i in range(n)]
    return exs, comps


def test_fixed_k_scores_only_the_design_and_corrects_from_it():
    n, k = 48, 15
    exs, comps = _examples(n, 4, unique=True)
    rec = Counter()
    est = score_mi(rec, exs, comps, mi_negatives=k, n_boot=0)
    assert len(rec.pairs) == n * (k + 1) and rec.calls == 1  # the design's entries, one call
    full = build_logp_tensor(Counter(), exs, comps).logp_nats
    # the corrected value from the full tensor by hand (the K' = 7 columns are inside the K = 15 design)
    d = negatives_design(n, k, seed=0)
    own = full[np.arange(n), 0, np.arange(n)]
    b15 = own - logsumexp(full[np.arange(n)[:, None], 0, d], axis=1) + math.log(16)
    b7 = own - logsumexp(full[np.arange(n)[:, None], 0, d[:, :8]], axis=1) + math.log(8)
    assert est.bits_raw == pytest.approx(np.mean(b15 + (1 - 16 / n) * (b15 - b7)) / math.log(2), abs=1e-12)


@pytest.mark.parametrize("unique", [True, False])
def test_auto_scores_each_pair_once_over_its_rounds(unique):
    n = 64
    exs, comps = _examples(n, 64, unique=unique)  # 6 bits: saturated at every K < N - 1
    rec = Counter()
    est = score_mi(rec, exs, comps, mi_negatives="auto", n_boot=100)
    assert est.n_negatives == n - 1 and est.kind == KIND_ALL and est.bits == pytest.approx(6.0, abs=1e-6)
    assert len(set(rec.pairs)) == len(rec.pairs)  # no (prefix, compression) pair scored twice
    assert len(rec.pairs) == n * n  # every pair once: no more than all
    assert rec.calls <= 3  # 15, then straight past 31 where saturated (to 63 = N - 1 here)
    exs, comps = _examples(n, 8, unique=unique)  # 3 bits: shared texts are scored once per prefix
    rec = Counter()
    est = score_mi(rec, exs, comps, mi_negatives="auto", n_boot=100)
    assert len(set(rec.pairs)) == len(rec.pairs)
    if not unique:
        assert len(rec.pairs) <= n * 8  # at most each prefix x each distinct text


# ----------------------------------------------------------------------------- auto's rule


def _est(n: int, k: int, bound: float, correction: float, saturated: bool, half_width: float = 0.1):
    base = estimate_mi_negatives(_class_logp(n, 2), k=k, n_boot=0)
    return dataclasses.replace(base, bound_bits=bound, bound_bits_raw=bound, bound_ci_high_bits=bound + half_width,
                               correction_bits=correction, saturated=saturated)


def test_auto_next_k_stops_grows_and_jumps():
    n = 256
    assert auto_next_k(_est(n, 15, 2.0, 0.2, False)) is None  # trustworthy: stop
    assert auto_next_k(_est(n, 15, 2.0, 0.3, False)) == 31  # a large correction (> 0.25 bit): the next doubling
    assert auto_next_k(_est(n, 15, 2.0, 0.3, False), correction_bits=0.5) is None
    # saturated at K = 15: the K whose ceiling is the margin above bound + correction + half-width
    assert auto_next_k(_est(n, 15, 3.8, 1.0, True)) == 63  # 3.8 + 1.0 + 0.1 + 1 = 5.9 <= log2 64
    assert auto_next_k(_est(n, 15, 4.8, 1.0, True)) == 255  # asks for K = 127: K + 1 >= N / 2, so N - 1
    assert auto_next_k(_est(n, 15, 3.8, 0.0, True)) == 31  # at least one doubling, no further than it asks
    assert auto_next_k(_est(n, 15, 3.9, 3.0, True)) == 255  # beyond every K: N - 1
    assert auto_next_k(_est(n, 255, 3.9, 3.0, True)) is None  # N - 1: done


# ----------------------------------------------------------------------------- records, summary, report


def test_summary_and_report_say_saturated():
    from compressbench.analysis.findings import _negatives_label
    from compressbench.analysis.report import _negatives_text
    from compressbench.engine.summary import _negatives_stats

    lp = _class_logp(128, 32)
    sat = estimate_mi_negatives(lp, k=7, n_boot=50)
    ok = estimate_mi_negatives(_class_logp(128, 2), k=15, n_boot=50)
    cols = _negatives_stats([], sat)
    assert (cols["mi_kind"], cols["mi_saturated"], cols["mi_n_negatives"]) == (KIND_SATURATED, True, 7)
    assert cols["mi_bound_bits"] == sat.bound_bits and cols["mi_correction_bits"] == sat.correction_bits
    assert _negatives_text("fixed", 7, None, cols["mi_saturated"]) == "K=7 (saturated: a lower bound)"
    assert _negatives_label({"mi_negatives": "fixed", "mi_n_negatives": 7, "mi_saturated": True}) == \
        "K=7 saturated: a lower bound"
    cols = _negatives_stats([], ok)
    assert (cols["mi_kind"], cols["mi_saturated"]) == (KIND_CORRECTED, False)
    assert cols["mi_bound_bits"] < ok.bits  # the corrected estimate sits above its bound
    assert _negatives_text("fixed", 15, None, False) == "K=15"
    full = _negatives_stats([], estimate_mi(lp, n_boot=0))
    assert (full["mi_kind"], full["mi_bound_bits"], full["mi_correction_bits"]) == (KIND_ALL, None, None)


@pytest.mark.parametrize("unique", [True, False])
def test_distinct_pairs_counts_what_the_scorer_is_asked(unique):
    from compressbench.measure.scoring import distinct_pairs, score_prefixes

    n, k = 40, 7
    exs, comps = _examples(n, 4, unique=unique)
    d = negatives_design(n, k, seed=0)
    rec = Counter()
    build_logp_tensor(rec, exs, comps, design=d)
    assert distinct_pairs(score_prefixes(exs), comps, d) == len(rec.pairs)
    rec = Counter()
    build_logp_tensor(rec, exs, comps)
    assert distinct_pairs(score_prefixes(exs), comps) == len(rec.pairs) == n * (n if unique else 4)


def test_auto_scores_every_context_at_once_where_compressions_repeat():
    from compressbench.measure.mi import STOP_CHEAP
    from compressbench.measure.scoring import auto_scores_all, score_prefixes

    n = 64
    exs, comps = _examples(n, 4, unique=False)  # 4 distinct texts: the full matrix is 64 x 4 pairs
    assert auto_scores_all(score_prefixes(exs), comps)
    rec = Counter()
    est = score_mi(rec, exs, comps, mi_negatives="auto", n_boot=100)
    ref = estimate_mi(build_logp_tensor(Counter(), exs, comps).logp_nats, n_boot=100)
    assert (est.bits, est.ci_low_bits, est.ci_high_bits) == (ref.bits, ref.ci_low_bits, ref.ci_high_bits)
    assert (est.k_stop, est.n_negatives, est.negatives, est.kind) == (STOP_CHEAP, n - 1, "auto", KIND_ALL)
    assert rec.calls == 1 and len(rec.pairs) == n * 4
    exs, comps = _examples(n, 4, unique=True)  # distinct texts: 64 x 64 against 64 x 16
    assert not auto_scores_all(score_prefixes(exs), comps)
    assert score_mi(Counter(), exs, comps, mi_negatives="auto", n_boot=100).k_stop != STOP_CHEAP


def test_findings_call_only_k_below_n_minus_1_sampled():
    from compressbench.analysis.findings import _sampled

    assert _sampled("K=7", 32) and _sampled("auto K=15", 32) and _sampled("K=7 saturated: a lower bound", 32)
    assert not _sampled("auto K=31", 32) and not _sampled("all (K=31)", 32) and not _sampled("", 32)
    assert not _sampled("not measured", 32)


def test_a_sweep_records_the_k_of_every_auto_round(tmp_path, tiny_llama_dir):
    """In a sweep, ``auto`` starts at K = 15; compressions that identify their context saturate that
    design (bound 4 bits = its ceiling), so it goes on to every context (N - 1 = 39) in a second
    round. The records say so (``k_path``) and every example's prefix was scored once per round."""
    from compressbench.backends import load_backend
    from compressbench.engine.config import config_from_dict
    from compressbench.engine.records import read_records
    from compressbench.engine.sweep import run_sweep

    rows = [{"id": f"r{i}", "context": f"Record{i:03d} holds item {i} of the store.", "question": "Which record?",
             "options": ["one", "two"], "answers": ["A"]} for i in range(40)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    class Identifying:
        """The tiny Llama, but its scores say which context a compression came from."""

        def __init__(self, inner):
            self.inner, self.rounds = inner, []

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def score_matrix(self, prefixes, continuations):
            return np.array([[-0.1 if c.strip() and c.strip() in p else -30.0 for c in continuations]
                             for p in prefixes])

        def score_subsets(self, prefixes, continuations, subsets):
            self.rounds.append(len(prefixes))
            full = self.score_matrix(prefixes, continuations)
            return [full[r, list(s)] for r, s in enumerate(subsets)]

    made = []

    def factory(kind, model, **options):
        made.append(Identifying(load_backend(kind, model, **options)))
        return made[-1]

    cfg = config_from_dict({
        "name": "kpath", "models": {"tiny": {"backend": "hf", "model": str(tiny_llama_dir), "options": {"threads": 1}}},
        "compressors": ["truncate:8"], "predictors": ["tiny"], "scorer": "tiny", "predictor_mode": "loglik",
        "datasets": [{"kind": "jsonl", "path": str(data), "name": "local"}], "samples": 1,
        "temperatures": [0.0], "max_new_tokens": {"compressor": 4, "predictor": 4}, "mi_n_boot": 100,
        "mi_negatives": "auto"})
    run_sweep(cfg, tmp_path / "runs", backend_factory=factory, progress=False)
    recs = read_records(tmp_path / "runs" / "kpath")
    est = recs[0].mi_estimate
    assert est["k_path"] == [15, 39] and est["n_negatives"] == 39 and est["negatives"] == "auto"
    assert all(r.mi_estimate["k_path"] == [15, 39] for r in recs)
    assert sum(made[0].rounds) == 2 * 40  # each of the 40 prefixes once per round
