"""Sampled negatives (issue 19): the balanced design, the estimate with K negatives against a hand
computation, K = N - 1 against every context, auto's schedule and stopping rule, the scoring seam
(``score_subsets``), one prefill per scoring prefix across groups (tiny random Llama), the
identity baseline's own K in the plan and the sweep, and the report's refusal to pool MI of
different K."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pytest
from scipy.special import logsumexp

from compressbench.core.errors import ConfigError, UsageError
from compressbench.core.types import Example
from compressbench.measure.mi import (
    STOP_ALL,
    STOP_BELOW_CEILING,
    auto_schedule,
    estimate_mi,
    estimate_mi_negatives,
    negatives_design,
    parse_negatives,
)
from compressbench.measure.scoring import TensorJob, build_logp_tensor, build_logp_tensors, score_mi

# ----------------------------------------------------------------------------- the design


@pytest.mark.parametrize(("n", "k"), [(2, 1), (10, 3), (17, 8), (32, 15), (40, 39)])
def test_design_is_balanced_distinct_and_seeded(n, k):
    d = negatives_design(n, k, seed=3)
    assert d.shape == (n, k + 1)
    assert (d[:, 0] == np.arange(n)).all()  # column 0: the context itself
    for i in range(n):
        assert len(set(d[i].tolist())) == k + 1  # distinct, and no negative is the context itself
    # every context is a negative exactly K times
    assert np.bincount(d[:, 1:].ravel(), minlength=n).tolist() == [k] * n
    assert (negatives_design(n, k, seed=3) == d).all()  # seeded
    if k < n - 1:
        assert (negatives_design(n, n - 1, seed=3)[:, : k + 1] == d).all()  # nested in every larger K
    if n > 3 and k < n - 1:
        assert not (negatives_design(n, k, seed=4) == d).all()


def test_design_of_n_minus_1_is_every_context():
    d = negatives_design(9, 8, seed=0)
    assert all(sorted(row) == list(range(9)) for row in d.tolist())


@pytest.mark.parametrize(("n", "k"), [(1, 1), (5, 0), (5, 5), (5, 2.5)])
def test_design_rejects_bad_sizes(n, k):
    with pytest.raises(UsageError):
        negatives_design(n, k)


def test_parse_negatives():
    assert parse_negatives("all") == "all" and parse_negatives(" Auto ") == "auto"
    assert parse_negatives(7) == 7 and parse_negatives("31") == 31
    for bad in (0, -3, True, 2.5, "some", None):
        with pytest.raises(UsageError, match="mi_negatives must be"):
            parse_negatives(bad)


def test_auto_schedule_doubles_k_plus_1_up_to_n_minus_1():
    assert auto_schedule(128) == [15, 31, 63, 127]
    assert auto_schedule(40) == [15, 31, 39]
    assert auto_schedule(10) == [9]
    assert auto_schedule(16) == [15]


# ----------------------------------------------------------------------------- the estimate


def _random_logp(n: int, m: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.log(rng.dirichlet(np.ones(8), size=(n, m, n))[..., 0]) - rng.uniform(0, 3, size=(n, m, n))


@pytest.mark.parametrize(("n", "m", "k"), [(9, 2, 3), (12, 1, 5), (7, 3, 1)])
def test_sampled_estimate_against_a_hand_loop(n, m, k):
    lp = _random_logp(n, m, seed=n + k)
    d = negatives_design(n, k, seed=11)
    est = estimate_mi_negatives(lp, k=k, design_seed=11, n_boot=0)
    terms = [lp[i, j, i] - logsumexp([lp[i, j, l] for l in d[i]]) + math.log(k + 1)
             for i in range(n) for j in range(m)]
    assert est.bound_bits_raw == pytest.approx(np.mean(terms) / math.log(2), abs=1e-12)  # the InfoNCE bound
    assert est.ceiling_bits == pytest.approx(math.log2(k + 1))
    assert est.n_negatives == k and est.design_seed == 11 and est.negatives == "fixed"
    # unscored entries (NaN) outside the design are never read
    holes = np.full_like(lp, np.nan)
    rows = np.repeat(np.arange(n), k + 1)
    for j in range(m):
        holes[rows, j, d.ravel()] = lp[rows, j, d.ravel()]
    assert estimate_mi_negatives(holes, k=k, design_seed=11, n_boot=0).bits_raw == est.bits_raw


def test_sampled_estimate_interval_resamples_contexts():
    lp = _random_logp(20, 2, seed=1)
    est = estimate_mi_negatives(lp, k=5, n_boot=500, seed=0, clip=False)
    assert est.ci_low_bits <= est.bits <= est.ci_high_bits
    rng = np.random.default_rng(0)  # the same resamples by hand: means of per-context means
    per_ctx = est.pointwise_bits.mean(axis=1)
    boot = rng.multinomial(20, np.full(20, 1 / 20), size=500) @ per_ctx / 20
    assert est.ci_low_bits == pytest.approx(np.quantile(boot, 0.025))
    assert est.ci_high_bits == pytest.approx(np.quantile(boot, 0.975))


def test_k_of_n_minus_1_is_the_all_estimator_bit_for_bit():
    lp = _random_logp(10, 2, seed=5)
    ref = estimate_mi(lp, n_boot=300, seed=0)
    est = estimate_mi_negatives(lp, k=9, n_boot=300, seed=0)
    for f in ("bits", "bits_raw", "ci_low_bits", "ci_high_bits", "ceiling_bits"):
        assert getattr(est, f) == getattr(ref, f), f
    assert (est.pointwise_bits == ref.pointwise_bits).all()
    # and the sampled formula with the full design agrees with the mixture estimator (independent code)
    d = negatives_design(10, 9, seed=0)
    sub = np.take_along_axis(lp, d[:, None, :].repeat(2, axis=1), axis=2)
    pointwise = sub[:, :, 0] - logsumexp(sub, axis=2) + math.log(10)
    assert pointwise.mean() / math.log(2) == pytest.approx(ref.bits_raw, abs=1e-12)


# ----------------------------------------------------------------------------- scoring


def _known(prefix: str, cont: str) -> float:
    """A discrete channel: compression "v<a>" is likely under contexts of class a (l mod C)."""
    (l,) = re.findall(r"ctx(\d+)\b", prefix)
    (a,) = re.findall(r"v(\d+)", cont)
    classes = int(re.findall(r"C(\d+)", cont)[0])
    return math.log(0.9) if int(l) % classes == int(a) else math.log(0.9) - 30.0


class Recorder:
    """score_matrix only (a backend without score_subsets gets the seam's default) and a log of
    every (prefix, continuation) pair scored."""

    name = "recorder"

    def __init__(self) -> None:
        self.pairs: list[tuple[str, str]] = []
        self.prefixes: list[str] = []

    def score_matrix(self, prefixes: Sequence[str], continuations: Sequence[str]) -> np.ndarray:
        self.prefixes.extend(prefixes)
        self.pairs.extend((p, c) for p in prefixes for c in continuations)
        return np.array([[_known(p, c) for c in continuations] for p in prefixes])

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) for t in texts]


def _channel(n: int, classes: int, m: int = 1) -> tuple[list[Example], list[list[str]]]:
    exs = [Example(id=f"e{l}", context=f"ctx{l} text", question="q?") for l in range(n)]
    comps = [[f"v{i % classes} C{classes} s{j} i{i}" for j in range(m)] for i in range(n)]
    return exs, comps


def test_all_is_todays_estimator_exactly():
    exs, comps = _channel(12, 4, m=2)
    ref = estimate_mi(build_logp_tensor(Recorder(), exs, comps).logp_nats,
                      n_tokens=build_logp_tensor(Recorder(), exs, comps).n_tokens, n_boot=200, seed=0)
    got = score_mi(Recorder(), exs, comps, mi_negatives="all", n_boot=200, seed=0)
    for f in ("bits", "bits_raw", "ci_low_bits", "ci_high_bits", "ceiling_bits", "bits_per_token", "negatives"):
        assert getattr(got, f) == getattr(ref, f), f
    assert (got.pointwise_bits == ref.pointwise_bits).all()
    assert score_mi(Recorder(), exs, comps, mi_negatives=11, n_boot=200).bits == ref.bits  # K >= N - 1: all


def test_k_scores_only_the_design_entries():
    n, m, k = 20, 2, 5
    exs, comps = _channel(n, 4, m)
    rec = Recorder()
    est = score_mi(rec, exs, comps, mi_negatives=k, n_boot=0)
    assert len(rec.pairs) == n * m * (k + 1)  # not N * M * N
    assert len(rec.prefixes) == n  # each prefix once (the seam's default: one call per prefix)
    full = build_logp_tensor(Recorder(), exs, comps).logp_nats
    assert est.bits_raw == estimate_mi_negatives(full, k=k, n_boot=0).bits_raw
    assert est.ceiling_bits == pytest.approx(math.log2(k + 1)) and est.n_negatives == k


def test_auto_stops_below_the_ceiling_and_grows_to_all_at_it():
    exs, comps = _channel(64, 2)  # 1 bit: far below log2 16 = 4 bits
    low = score_mi(Recorder(), exs, comps, mi_negatives="auto", n_boot=200)
    assert (low.n_negatives, low.k_stop, low.negatives) == (15, STOP_BELOW_CEILING, "auto")
    exs, comps = _channel(64, 64)  # every compression names its context: at every ceiling
    rec = Recorder()
    high = score_mi(rec, exs, comps, mi_negatives="auto", n_boot=200)
    assert (high.n_negatives, high.k_stop) == (63, STOP_ALL)
    assert high.bits == pytest.approx(6.0, abs=1e-6)  # log2 64: the all estimator at the end
    assert len(set(rec.pairs)) == len(rec.pairs) == 64 * 64  # growing K re-scored nothing
    # 2 bits: not saturated (the interval's top stays below 4 - 0.5); the correction, I_15 - I_7 times
    # (1 - 16 / 64) by hand, decides: above the bound K grows, below it auto stops at K = 15
    exs, comps = _channel(64, 4)
    full = build_logp_tensor(Recorder(), exs, comps).logp_nats
    i15 = estimate_mi_negatives(full, k=15, n_boot=0, clip=False).bound_bits_raw
    i7 = estimate_mi_negatives(full, k=7, n_boot=0, clip=False).bound_bits_raw
    gain = (i15 - i7) * (1 - 16 / 64)  # the 1 / (K + 1) bias left from K = 15 to N - 1 = 63
    assert estimate_mi_negatives(full, k=15, n_boot=0).correction_bits == pytest.approx(gain) and gain > 0.1
    stops = score_mi(Recorder(), exs, comps, mi_negatives="auto", n_boot=200, auto_margin_bits=0.5,
                     auto_correction_bits=gain + 0.01)
    assert (stops.n_negatives, stops.saturated, stops.k_stop) == (15, False, STOP_BELOW_CEILING)
    rising = score_mi(Recorder(), exs, comps, mi_negatives="auto", n_boot=200, auto_margin_bits=0.5,
                      auto_correction_bits=gain - 0.01)
    assert rising.n_negatives == 31 and rising.k_stop in (STOP_BELOW_CEILING, STOP_ALL)


def test_jobs_sharing_prefixes_prefill_each_once_and_equal_separate_scoring():
    exs, comps_a = _channel(10, 2, m=2)
    _, comps_b = _channel(10, 5, m=1)
    rec = Recorder()
    d = negatives_design(10, 3, seed=0)
    a, b = build_logp_tensors(rec, [TensorJob(exs, comps_a), TensorJob(exs, comps_b, design=d)])
    assert sorted(rec.prefixes) == sorted(set(rec.prefixes)) and len(rec.prefixes) == 10  # one prefill each
    alone_a = build_logp_tensor(Recorder(), exs, comps_a).logp_nats
    alone_b = build_logp_tensor(Recorder(), exs, comps_b, design=d).logp_nats
    assert np.array_equal(a.logp_nats, alone_a)
    assert np.array_equal(np.isnan(b.logp_nats), np.isnan(alone_b))
    assert np.allclose(b.logp_nats[~np.isnan(b.logp_nats)], alone_b[~np.isnan(alone_b)])


def test_score_subsets_default_validates():
    from compressbench.backends.base import score_subsets_by_matrix

    with pytest.raises(UsageError, match="one list of continuation indices per prefix"):
        score_subsets_by_matrix(Recorder(), ["ctx0"], ["v0 C2"], [[0], [0]])
    with pytest.raises(UsageError, match="outside"):
        score_subsets_by_matrix(Recorder(), ["ctx0"], ["v0 C2"], [[1]])


def test_tiny_llama_score_subsets_equal_score_matrix(tiny_llama):
    prefixes = ["The box is red and small.", "A record of random choices: the colour is blue.", "Short."]
    conts = ["The colour is red.", "blue", "An animal, a horse, stands in the field.", ""]
    mat = tiny_llama.score_matrix(prefixes, conts)
    subsets = [[0, 2], [3, 1, 0], [2]]
    got = tiny_llama.score_subsets(prefixes, conts, subsets)
    for p, sub in enumerate(subsets):
        assert np.allclose(got[p], mat[p, sub], atol=1e-4)


def test_tiny_llama_one_prefill_sharing_equals_per_group_scoring(tiny_llama):
    exs = [Example(id=f"e{l}", context=f"Item {l}: the box holds {l} red apples and {l + 2} pears.",
                   question="How many apples?") for l in range(6)]
    first = [[f"{i} apples"] for i in range(6)]  # M = 1, every context
    second = [[f"The box holds {i + 1} pears.", "pears"] for i in range(6)]  # M = 2, a design of K = 2
    d = negatives_design(6, 2, seed=1)
    jobs = [TensorJob(exs, first), TensorJob(exs, second, design=d)]
    together = build_logp_tensors(tiny_llama, jobs)
    for job, t in zip(jobs, together):
        alone = build_logp_tensor(tiny_llama, job.examples, job.compressions, design=job.design).logp_nats
        assert np.array_equal(np.isnan(t.logp_nats), np.isnan(alone))
        ok = ~np.isnan(alone)
        assert np.abs(t.logp_nats[ok] - alone[ok]).max() <= 1e-4  # nats per entry


# ----------------------------------------------------------------------------- config, plan, report


def test_config_keys():
    from compressbench.engine.config import config_from_dict

    base = {"name": "x", "models": {"m": {"backend": "hf", "model": "smollm2-135m"}}, "compressors": ["m"],
            "predictors": ["m"], "scorer": "m", "datasets": [{"kind": "synthetic"}]}
    cfg = config_from_dict(base)
    assert (cfg.mi_negatives, cfg.mi_identity_negatives, cfg.mi_auto_margin_bits) == ("auto", 7, 1.0)
    cfg = config_from_dict({**base, "mi_negatives": 31, "mi_identity_negatives": "skip", "mi_design_seed": 4})
    assert (cfg.mi_negatives, cfg.mi_identity_negatives, cfg.mi_design_seed) == (31, "skip", 4)
    assert config_from_dict(cfg.to_dict()).mi_negatives == 31  # round trip
    for bad in ({"mi_negatives": "most"}, {"mi_negatives": 0}, {"mi_identity_negatives": "auto"},
                {"mi_auto_margin_bits": -1}, {"mi_design_seed": "x"}):
        with pytest.raises(ConfigError):
            config_from_dict({**base, **bad})


def _plan_config(identity_negatives, negatives="auto"):
    from compressbench.engine.config import config_from_dict

    return config_from_dict({
        "name": "p", "models": {"m": {"backend": "openai", "model": "m", "options": {"base_url": "http://127.0.0.1:1/v1"},
                                      "info": {"n_params": 1e9, "n_layers": 16, "n_heads": 16, "head_dim": 64}}},
        "compressors": ["m", "identity"], "predictors": ["m"], "scorer": "m",
        "datasets": [{"kind": "synthetic", "name": "d"}], "samples": 2,
        "mi_negatives": negatives, "mi_identity_negatives": identity_negatives})


def test_plan_prices_the_identity_on_its_own_line_with_its_own_k():
    from compressbench.analysis.plan import format_plan, make_plan
    from compressbench.measure.cost import generation_flops, prefill_flops

    assume = {"d": (100, 1000)}
    p7 = make_plan(_plan_config(7), assume=assume, use_tokenizers=False)
    lines = {(w.stage, w.part): w for w in p7.works}
    ident, model = lines[("score", "identity")], lines[("score", "")]
    # identity: 100 rows, each its prefix + (K + 1) = 8 whole contexts (its M = 2 copies are one text)
    prefix = model.segments[0][1]
    assert ident.segments[0][2] == 8 and model.segments[0][2] == 2 * 16  # model: M (K + 1), auto at K = 15
    info = __import__("compressbench.analysis.plan", fromlist=["_info_for"])._info_for(_plan_config(7), "m", None)
    # each of the 100 prefixes is prefilled once for the two groups (m, identity), each charged half
    assert all(seg[1] == prefix for seg in ident.segments + model.segments)
    assert ident.prefill_flops == pytest.approx(100 * prefill_flops(info, prefix) / 2)
    assert model.prefill_flops == pytest.approx(ident.prefill_flops)
    zbar = ident.segments[0][3]
    assert ident.generation_flops == pytest.approx(100 * 8 * generation_flops(info, prefix, zbar))
    text = format_plan(p7)
    assert "score     m [identity]" in text and "MI measurement / compression FLOPs" in text
    total = p7.mi_ratio[-1]
    assert total["dataset"] == "total"
    assert total["ratio"] == pytest.approx(model.flops / lines[("compress", "")].flops)
    assert total["identity_flops"] == pytest.approx(ident.flops)
    # a larger identity K costs proportionally more; skip removes its line
    p31 = make_plan(_plan_config(31), assume=assume, use_tokenizers=False)
    ident31 = next(w for w in p31.works if w.part == "identity")
    assert ident31.generation_flops == pytest.approx(ident.generation_flops * 32 / 8)
    skip = make_plan(_plan_config("skip"), assume=assume, use_tokenizers=False)
    assert not [w for w in skip.works if w.part == "identity"] and skip.mi_ratio[-1]["identity_flops"] == 0.0


def _cells(rows):
    from compressbench.analysis.report import mi_protocol

    df = pd.DataFrame(rows)
    df["mi_protocol"] = [mi_protocol(r) for r in rows]
    return df


def test_report_refuses_to_pool_different_k():
    from compressbench.analysis.report import one_protocol

    rows = [{"compressor": c, "mi_negatives": neg, "mi_n_negatives": k, "mi_bits": b}
            for c, neg, k, b in [("a", "auto", 15, 1.0), ("b", "auto", 31, 2.0), ("c", "auto", 63, 3.0),
                                 ("identity", "fixed", 7, 2.9), ("x", "fixed", 31, 1.0),
                                 ("skipped", "not measured", None, None)]]
    notes: list[str] = []
    kept = one_protocol(_cells(rows), "correlations on d", notes)
    # auto's K differ per group by design (each estimate the margin below its own ceiling): pooled;
    # a fixed K=7 or K=31 is another measurement: left out and said so
    assert sorted(kept["compressor"]) == ["a", "b", "c", "skipped"]
    assert len(notes) == 1 and "identity (K=7)" in notes[0] and "x (K=31)" in notes[0]
    same = [{"compressor": c, "mi_negatives": "fixed", "mi_n_negatives": 15} for c in "abc"]
    notes = []
    assert len(one_protocol(_cells(same), "fits", notes)) == 3 and notes == []
    mixed = [{"compressor": "a", "mi_negatives": "fixed", "mi_n_negatives": 15},
             {"compressor": "b", "mi_negatives": "fixed", "mi_n_negatives": 31},
             {"compressor": "c", "mi_negatives": "all", "mi_n_negatives": 31},
             {"compressor": "d", "mi_negatives": None, "mi_n_negatives": None}]  # an older run's row: all
    notes = []
    kept = one_protocol(_cells(mixed), "fits", notes)
    assert sorted(kept["compressor"]) == ["c", "d"] and "a (K=15)" in notes[0] and "b (K=31)" in notes[0]
    # a fixed K that is every other context is the all estimator (and pools with it)
    lp = _random_logp(6, 1, seed=2)
    assert estimate_mi_negatives(lp, k=7, negatives="fixed", n_boot=0).negatives == "all"


# ----------------------------------------------------------------------------- the sweep


def test_sweep_prices_identity_with_its_own_k_or_skips_it(tmp_path, tiny_llama_dir):
    import json

    from compressbench.analysis.report import build_report
    from compressbench.engine.config import config_from_dict
    from compressbench.engine.records import read_records
    from compressbench.engine.sweep import run_sweep

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "context": f"Item {i}: the box on shelf {i} weighs {2 * i} kg.",
                                        "question": "Which shelf?", "answers": ["x"]}) + "\n" for i in range(8)),
                    encoding="utf-8")
    base = {"name": "neg", "models": {"tiny": {"backend": "hf", "model": str(tiny_llama_dir), "options": {"threads": 1}}},
            "compressors": ["identity", "truncate:4"], "predictors": ["tiny"], "scorer": "tiny",
            "datasets": [{"kind": "jsonl", "path": str(data), "name": "local"}], "samples": 1,
            "max_new_tokens": {"compressor": 4, "predictor": 4}, "max_error_rate": 1.0, "mi_n_boot": 50,
            "mi_negatives": 5}
    res = run_sweep(config_from_dict({**base, "mi_identity_negatives": 2}), tmp_path / "a", progress=False)
    rows = {r["compressor"]: r for r in res.rows}
    assert (rows["identity"]["mi_negatives"], rows["identity"]["mi_n_negatives"]) == ("fixed", 2)
    assert rows["identity"]["ceiling_bits"] == pytest.approx(math.log2(3))
    assert (rows["truncate:4"]["mi_negatives"], rows["truncate:4"]["mi_n_negatives"]) == ("fixed", 5)
    recs = {r.cell.compressor: r for r in read_records(res.run_dir)}
    ident = recs["identity"]
    assert ident.mi_estimate["n_negatives"] == 2 and ident.mi_estimate["design_seed"] == 0
    # its row of the scorer: its prefix and (K + 1) = 3 continuations, each a whole context (the
    # prefix was prefilled once for both groups: [P, S1, S2, 2] in each, half of it charged to each)
    longest = max(n for r in read_records(res.run_dir) if r.cell.compressor == "identity"
                  for n in r.compression_n_tokens)
    (_p, s1, _s2, *_), = ident.usage["scorer"].shared_prefix_calls
    assert 0 < s1 <= 3 * longest
    # what the estimate is travels from the records to the summary and the report's table
    assert ident.mi_estimate["kind"] == rows["identity"]["mi_kind"] in ("corrected", "saturated: a lower bound")
    assert rows["identity"]["mi_saturated"] == (rows["identity"]["mi_kind"] == "saturated: a lower bound")
    assert rows["identity"]["mi_bound_bits"] == pytest.approx(ident.mi_estimate["bound_bits"])
    report = build_report(res.run_dir)
    from compressbench.analysis.report import display_cells

    table = display_cells(report)
    (shown,) = table.loc[table["compressor"].str.startswith("identity"), "MI negatives (K)"]
    assert shown.startswith("K=2") and ("saturated: a lower bound" in shown) == rows["identity"]["mi_saturated"]
    cost = report.mi_cost.set_index("dataset")
    assert cost.loc["local", "identity_flops"] > 0 and cost.loc["local", "mi_flops"] > 0
    ident_flops = sum(r.flops["scorer"] for r in read_records(res.run_dir) if r.cell.compressor == "identity")
    assert cost.loc["local", "identity_flops"] == pytest.approx(ident_flops)
    skip = run_sweep(config_from_dict({**base, "mi_identity_negatives": "skip"}), tmp_path / "b", progress=False)
    rows = {r["compressor"]: r for r in skip.rows}
    assert rows["identity"]["mi_negatives"] == "not measured" and rows["identity"]["mi_bits"] is None
    srecs = [r for r in read_records(skip.run_dir) if r.cell.compressor == "identity"]
    assert all(r.mi_estimate == {"measured": False, "why": r.mi_estimate["why"]} for r in srecs)
    assert all(r.usage["scorer"].n_calls == 0 and r.flops["scorer"] == 0.0 for r in srecs)


def test_compression_log_estimate_takes_mi_negatives(tmp_path):
    from compressbench.agent import CompressionLog

    log = CompressionLog(tmp_path / "log.jsonl")
    exs, comps = _channel(20, 4)
    for ex, row in zip(exs, comps):
        log.record(ex.context, ex.question, row[0])
    rec = Recorder()
    est = log.estimate(rec, n_boot=0, mi_negatives=3)["default"]
    assert (est.n_negatives, est.ceiling_bits, est.negatives) == (3, 2.0, "fixed")
    assert len(rec.pairs) == 20 * 4  # each compression under its own context and 3 others
    full = log.estimate(Recorder(), n_boot=0)["default"]  # the default here: every context
    assert full.n_negatives == 19 and full.ceiling_bits == pytest.approx(math.log2(20))
