"""The known-information study through the sweep on tiny random models (fast): keep:k baselines,
retained bits, the likelihood predictor (a chat model and a model without a chat template), two
MI scorers with their rank agreement, and the Findings computed from the run."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from compressbench.engine.config import config_from_dict
from compressbench.data.known_info import generate_known_info, keep_slots
from compressbench.analysis.findings import format_findings, run_findings
from compressbench.engine.records import read_records
from compressbench.analysis.report import build_report, rank_agreement, render
from compressbench.engine.sweep import run_sweep

SPEC = {"kind": "known_info", "name": "ki", "n_contexts": 6, "n_slots": 3, "n_values": 2, "seed": 1}


def _without_chat_template(src: Path, dst: Path) -> Path:
    """A copy of a tiny model directory whose tokenizer has no chat template (a 'base model')."""
    shutil.copytree(src, dst)
    (dst / "chat_template.jinja").unlink(missing_ok=True)
    cfg_path = dst / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("chat_template", None)
    cfg_path.write_text(json.dumps(cfg))
    return dst


@pytest.fixture(scope="module")
def study_run(tiny_llama_dir, tiny_gpt2_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    base = _without_chat_template(tiny_gpt2_dir, root / "gpt2-base")
    raw = {
        "name": "study",
        "models": {"chat": {"backend": "hf", "model": str(tiny_llama_dir), "options": {"threads": 1}},
                   "base": {"backend": "hf", "model": str(base), "options": {"threads": 1}}},
        "compressors": ["chat", "base", "identity", "empty", "keep:1", "keep:2"],
        "predictors": ["chat", "base"],
        "scorers": ["chat", "base"],
        "mi_prompt": "mi_score_agnostic",
        "predictor_mode": "loglik",
        "loglik_prompt_format": "auto",  # the chat model through its template, the base model in plain text
        "datasets": [SPEC],
        "samples": 2,
        "temperatures": [0.8],
        "max_new_tokens": {"compressor": 8, "predictor": 4},
        "max_error_rate": 1.0,
        "mi_n_boot": 50,
    }
    cfg = config_from_dict(raw)
    result = run_sweep(cfg, root / "runs", progress=False)
    return cfg, result


def test_records_carry_retained_bits_loglik_detail_and_prompt_formats(study_run):
    cfg, result = study_run
    exs = {e.id: e for e in generate_known_info(**{k: SPEC[k] for k in ("n_contexts", "n_slots", "n_values", "seed")})}
    recs = read_records(result.run_dir)
    assert len(recs) == 6 * 2 * 2 * 6  # compressors x predictors x scorers x examples
    for r in recs:
        assert r.error is None and r.cell.predictor_mode == "loglik"
        ex = exs[r.example_id]
        comp = r.cell.compressor
        if comp.startswith("keep:"):
            k = int(comp.split(":")[1])
            assert r.compressions == (keep_slots(ex, k),) * 2
            assert r.retained_bits == (float(k),) * 2  # k slots of log2 2 = 1 bit each
        elif comp == "identity":
            assert r.retained_bits == (3.0, 3.0)
        elif comp == "empty":
            assert r.retained_bits == (0.0, 0.0)
        # the likelihood predictor: one entry per compression sample, answer = argmax of the totals
        assert len(r.loglik) == 2 and r.predictions == tuple(d["answer"] for d in r.loglik)
        for d in r.loglik:
            lls = [o["logprob_nats"] for o in d["options"]]
            assert [o["option"] for o in d["options"]] == list(ex.options)
            assert d["answer"] == "AB"[int(np.argmax(lls))]
            per_char = np.array(lls) / np.array([len(o) for o in ex.options])
            assert d["answer_norm"] == "AB"[int(np.argmax(per_char))]
        assert r.score in (0.0, 1.0) and r.score_norm in (0.0, 1.0)
        # predictor cost: per sample one prefix, then the options scored after it (shared prefix)
        u = r.usage["predictor"]
        assert u.n_calls == 2 and len(u.shared_prefix_calls) == 2
        for (prefix, s1, s2), d in zip(u.shared_prefix_calls, r.loglik):
            lens = [o["n_tokens"] for o in d["options"]]
            assert prefix > 0 and s1 == sum(lens) and s2 == sum(n * n for n in lens)
        assert u.n_prompt_tokens == sum(p + s for p, s, _ in u.shared_prefix_calls)
        assert r.prompt_formats["predictor"] == ("chat" if r.cell.predictor == "chat" else "completion")
        if comp in ("chat", "base"):
            assert r.prompt_formats["compressor"] == ("chat" if comp == "chat" else "completion")
            # a model without a chat template replies with one line
            assert all("\n" not in z for z in r.compressions) if comp == "base" else True


def test_summary_has_retained_bits_and_cells_per_scorer(study_run):
    _, result = study_run
    rows = json.loads((Path(result.run_dir) / "summary.json").read_text())["rows"]
    assert len(rows) == 6 * 2 * 2
    recs = read_records(result.run_dir)
    for row in rows:
        mine = [r for r in recs if r.cell_key == row["cell_key"]]
        assert row["retained_bits"] == pytest.approx(np.mean([np.mean(r.retained_bits) for r in mine]))
        assert row["accuracy_norm"] == pytest.approx(np.mean([r.score_norm for r in mine]))
        if row["compressor"] == "keep:2":
            assert row["retained_bits"] == 2.0
    # the same compressions scored by two scorers: same accuracy, MI per scorer
    by = {(r["compressor"], r["predictor"], r["scorer"]): r for r in rows}
    for comp in ("identity", "keep:1"):
        assert by[(comp, "chat", "chat")]["accuracy"] == by[(comp, "chat", "base")]["accuracy"]
    assert by[("empty", "chat", "base")]["mi_bits_raw"] == 0.0


def test_report_ranks_compressors_under_both_scorers_with_kendall_tau(study_run):
    _, result = study_run
    rep = build_report(result.run_dir, n_boot=200)
    ag = rep.scorer_agreement
    assert len(ag) == 2  # one row per predictor (the pair chat vs base)
    rows = json.loads((Path(result.run_dir) / "summary.json").read_text())["rows"]
    for _, a in ag.iterrows():
        mi = {(r["compressor"], r["scorer"]): r["mi_bits_raw"] for r in rows
              if r["predictor"] == a["predictor"] and r["compressor"] != "empty"}
        comps = sorted({c for c, _ in mi})
        x = [mi[(c, a["scorer_a"])] for c in comps]
        y = [mi[(c, a["scorer_b"])] for c in comps]
        assert a["n"] == 5
        assert a["kendall_tau"] == pytest.approx(stats.kendalltau(x, y).statistic)
        assert a["mean_offset_bits"] == pytest.approx(np.mean(np.array(y) - np.array(x)))
        assert a["tau_ci_low"] <= a["kendall_tau"] <= a["tau_ci_high"]
    text = render(rep, "table")
    assert "MI scorer agreement" in text and "Kendall" in text and "retained bits" in text


def test_rank_agreement_by_hand():
    same = rank_agreement([1.0, 2.0, 3.0, 4.0], [2.0, 3.5, 4.0, 6.0], n_boot=100)
    assert same.kendall_tau == 1.0 and same.mean_offset_bits == pytest.approx(1.375)
    rev = rank_agreement([1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0], n_boot=100)
    assert rev.kendall_tau == -1.0
    # one discordant pair of 6: tau = (5 - 1) / 6
    assert rank_agreement([1, 2, 3, 4], [1, 2, 4, 3], n_boot=10).kendall_tau == pytest.approx(4 / 6)
    assert "too few" in rank_agreement([1, 2], [2, 1]).note


def test_findings_are_computed_from_the_run(study_run):
    _, result = study_run
    fs = run_findings(result.run_dir, n_boot=200)
    assert {(f.predictor, f.scorer) for f in fs} == {(p, s) for p in ("chat", "base") for s in ("chat", "base")}
    rows = json.loads((Path(result.run_dir) / "summary.json").read_text())["rows"]
    for f in fs:
        by = {r["compressor"]: r for r in rows if r["predictor"] == f.predictor and r["scorer"] == f.scorer}
        assert f.identity_minus_empty == pytest.approx(by["identity"]["accuracy"] - by["empty"]["accuracy"])
        assert f.chance == 0.5 and f.empty_minus_chance == pytest.approx(by["empty"]["accuracy"] - 0.5)
        assert f.ladder == ("keep:1", "keep:2")
        assert f.ladder_mi_rises == (by["keep:2"]["mi_bits"] > by["keep:1"]["mi_bits"])
        assert f.spearman_n == 5  # every compressor but empty
        xs = [by[c]["mi_bits"] for c in by if c != "empty"]
        ys = [by[c]["accuracy"] for c in by if c != "empty"]
        if np.ptp(xs) > 0 and np.ptp(ys) > 0:
            assert f.spearman_rho == pytest.approx(stats.spearmanr(xs, ys).statistic)
        assert [s for s, _ in f.model_sizes] == ["chat", "base"] or [s for s, _ in f.model_sizes] == ["base", "chat"]
        assert f.pareto and all(c in by for c in f.pareto)
        assert math.isfinite(f.ceiling_bits) and f.ceiling_bits == pytest.approx(math.log2(6))
    text = format_findings(fs)
    assert text.count("Spearman rho(MI, accuracy)") == 4 and "Pareto front" in text and "oracle ladder" in text


# --- Without a model (found by mutation testing: the scorer-agreement test above runs a torch model,
# which mutmut's forked workers cannot run).


def _exact_bootstrap_taus(x: list[float], y: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Every one of the n**n equally likely resamples of the n pairs, constant sides dropped (as
    rank_agreement documents): the exact bootstrap distribution of tau-b, as (values, probabilities)."""
    import itertools

    n = len(x)
    taus = []
    for idx in itertools.product(range(n), repeat=n):
        xs, ys = [x[i] for i in idx], [y[i] for i in idx]
        if len(set(xs)) > 1 and len(set(ys)) > 1:
            taus.append(round(float(stats.kendalltau(xs, ys).statistic), 12))
    values, counts = np.unique(taus, return_counts=True)
    return values, counts / counts.sum()


def _exact_quantile(values: np.ndarray, probs: np.ndarray, q: float, n_boot: int) -> float:
    cdf = np.cumsum(probs)
    i = int(np.searchsorted(cdf, q))
    # a Monte Carlo quantile of n_boot draws lands on this atom only if q is well inside it: more than
    # 5 standard deviations of the empirical CDF from either edge (checked, not assumed)
    assert min(abs(cdf[i] - q), abs((cdf[i - 1] if i else 0.0) - q)) > 5 * math.sqrt(q * (1 - q) / n_boot)
    return float(values[i])


def test_rank_agreement_interval_equals_the_exact_bootstrap_quantiles():
    x = [0.1, 0.5, 0.9, 1.4]
    y = [0.3, 0.2, 1.1, 1.0]
    values, probs = _exact_bootstrap_taus(x, y)
    n_boot = 8000
    ag = rank_agreement(x, y, n_boot=n_boot, seed=3)
    assert ag.n == 4 and ag.kendall_tau == pytest.approx(1 / 3)  # 4 concordant, 2 discordant pairs of 6
    assert ag.mean_offset_bits == pytest.approx(np.mean(np.subtract(y, x)))
    assert (ag.tau_ci_low, ag.tau_ci_high) == (_exact_quantile(values, probs, 0.025, n_boot),
                                               _exact_quantile(values, probs, 0.975, n_boot))
    narrow = rank_agreement(x, y, n_boot=n_boot, seed=3, level=0.5)
    assert (narrow.tau_ci_low, narrow.tau_ci_high) == pytest.approx(
        (_exact_quantile(values, probs, 0.25, n_boot), _exact_quantile(values, probs, 0.75, n_boot)), abs=1e-12)
    assert ag.note == "" and narrow.tau_ci_low > ag.tau_ci_low


def test_rank_agreement_drops_non_finite_pairs_and_says_why_it_cannot_rank():
    x = [1.0, 2.0, np.nan, 3.0, 4.0, 5.0]
    y = [1.5, 2.0, 9.0, np.inf, 4.5, 4.0]
    ag = rank_agreement(x, y, n_boot=50)
    assert ag.n == 4 and ag.kendall_tau == pytest.approx(stats.kendalltau([1, 2, 4, 5], [1.5, 2, 4.5, 4]).statistic)
    assert ag.mean_offset_bits == pytest.approx(np.mean([0.5, 0.0, 0.5, -1.0]))
    few = rank_agreement([1.0, np.nan, 2.0], [1.0, 2.0, 3.0])
    assert few.n == 2 and few.note == "too few compressors to rank (have 2, need >= 3)"
    assert math.isnan(few.kendall_tau) and math.isnan(few.mean_offset_bits)
    flat = rank_agreement([1.0, 2.0, 3.0], [0.5, 0.5, 0.5])
    assert flat.note == "one scorer gives every compressor the same MI" and math.isnan(flat.kendall_tau)
    assert flat.mean_offset_bits == pytest.approx(-1.5) and flat.n == 3
    flat_a = rank_agreement([2.0, 2.0, 2.0], [0.5, 1.5, 1.0])
    assert flat_a.note.startswith("one scorer") and math.isnan(flat_a.tau_ci_low)


def test_rank_agreement_seed_defaults_and_unknown_values():
    rng = np.random.default_rng(2)
    x = rng.normal(size=12)
    y = x + rng.normal(scale=0.8, size=12)
    a = rank_agreement(x, y, n_boot=200, seed=5)
    assert rank_agreement(x, y, n_boot=200, seed=5) == a  # seeded: the same interval every time
    assert (rank_agreement(x, y, n_boot=200, seed=6).tau_ci_low, rank_agreement(x, y, n_boot=300, seed=5).tau_ci_low) \
        != (a.tau_ci_low, a.tau_ci_low)
    assert rank_agreement(x, y) == rank_agreement(x, y, n_boot=2000, seed=0, level=0.95)  # the documented defaults
    # None is an unknown value, dropped like NaN
    with_none = rank_agreement([*x, None], [*y, 1.0], n_boot=200, seed=5)
    assert with_none == a
    assert rank_agreement([*x, 1.0], [*y, None], n_boot=200, seed=5) == a


def _agreement_cells(mi_raw: dict, comps: list[str]):
    import pandas as pd

    rows = [{"dataset": "d", "predictor": p, "prompt": "pr", "temperature": 0.0, "seed": 0,
             "predictor_mode": "loglik", "scorer": s, "compressor": c, "in_study": c != "empty",
             "mi_bits_raw": v, "mi_bits": max(v, 0.0)}
            for (p, s), vals in mi_raw.items() for c, v in zip(comps, vals)]
    return pd.DataFrame(rows)


def test_scorer_agreement_pairs_every_two_scorers_per_group_on_raw_mi():
    from compressbench.analysis.report import scorer_agreement

    comps = ["empty", "identity", "keep:1", "keep:2", "keep:3", "truncate", "first", "last", "mid"]
    rng = np.random.default_rng(8)
    base = rng.normal(size=8)
    mi_raw = {  # (predictor, scorer) -> raw MI per compressor; empty (first) is outside the study.
        # p2 is listed first: the output is sorted by group, not in input order
        ("p2", "s1"): [0.0, *base],
        ("p2", "s2"): [0.0, *(-base)],
        ("p1", "s1"): [9.0, *(base + rng.normal(scale=0.5, size=8))],
        ("p1", "s2"): [0.0, *(base + rng.normal(scale=0.5, size=8))],
        ("p1", "s3"): [0.0, *rng.normal(size=8)],
    }
    out = scorer_agreement(_agreement_cells(mi_raw, comps), n_boot=200, seed=4)
    assert list(out[["predictor", "scorer_a", "scorer_b"]].itertuples(index=False, name=None)) == [
        ("p1", "s1", "s2"), ("p1", "s1", "s3"), ("p1", "s2", "s3"), ("p2", "s1", "s2")]
    order = np.argsort(comps[1:])  # the pairs are resampled in compressor-name order
    for r in out.itertuples():
        a, b = mi_raw[(r.predictor, r.scorer_a)][1:], mi_raw[(r.predictor, r.scorer_b)][1:]
        ref = rank_agreement(np.take(a, order), np.take(b, order), n_boot=200, seed=4)
        assert r.dataset == "d" and r.n == 8 and r.note == ""
        assert r.kendall_tau == pytest.approx(stats.kendalltau(a, b).statistic)
        assert (r.tau_ci_low, r.tau_ci_high, r.mean_offset_bits) == pytest.approx(
            (ref.tau_ci_low, ref.tau_ci_high, ref.mean_offset_bits))
    # the resampling is this call's (n_boot, seed): other values give another interval here
    other = rank_agreement(np.take(mi_raw[("p1", "s1")][1:], order), np.take(mi_raw[("p1", "s2")][1:], order),
                           n_boot=2000, seed=0)
    assert (other.tau_ci_low, other.tau_ci_high) != (out.iloc[0]["tau_ci_low"], out.iloc[0]["tau_ci_high"])
    assert out.iloc[3]["kendall_tau"] == pytest.approx(-1.0)
    # exactly two scorers: one pair per group
    two = scorer_agreement(_agreement_cells({k: v for k, v in mi_raw.items() if k[1] != "s3"}, comps), n_boot=50)
    assert list(two[["predictor", "scorer_a", "scorer_b"]].itertuples(index=False, name=None)) == [
        ("p1", "s1", "s2"), ("p2", "s1", "s2")]
    # raw, not clipped: clipping at 0 would tie every negative estimate
    neg = {("p", "s1"): [0.0, -0.3, -0.2, -0.1, 0.4], ("p", "s2"): [0.0, -0.9, -0.5, -0.4, 0.1]}
    assert scorer_agreement(_agreement_cells(neg, comps[:5]), n_boot=50).iloc[0]["kendall_tau"] == pytest.approx(1.0)
    one = _agreement_cells({k: v for k, v in mi_raw.items() if k[1] == "s1"}, comps)
    empty = scorer_agreement(one)
    assert empty.empty and list(empty.columns) == list(out.columns)
    many = [f"c{i:02d}" for i in range(30)]  # enough compressors that the interval moves with the draws
    big = rng.normal(size=30)
    cells = _agreement_cells({("p", "s1"): big, ("p", "s2"): big + rng.normal(size=30)}, many)
    default = scorer_agreement(cells)
    assert default.equals(scorer_agreement(cells, n_boot=2000, seed=0))  # the documented defaults
    for other in (scorer_agreement(cells, seed=1), scorer_agreement(cells, n_boot=2001)):
        assert not other[["tau_ci_low", "tau_ci_high"]].equals(default[["tau_ci_low", "tau_ci_high"]])


def test_resamples_with_a_constant_side_are_dropped_not_counted_as_nan():
    """Found by mutation testing: with ties, a resample can hold one value of x (or of y) only; it has
    no correlation or rank order, and the intervals must come from the other resamples (never NaN)."""
    from compressbench.analysis.report import correlate

    x, y = [1.0, 1.0, 1.0, 2.0], [0.5, 0.7, 0.9, 1.0]  # x constant on every resample of its first 3 pairs
    ag = rank_agreement(x, y, n_boot=2000, seed=1)
    co = correlate(x, y, n_boot=2000, seed=1)
    for lo, hi in ((ag.tau_ci_low, ag.tau_ci_high), (co.pearson_ci_low, co.pearson_ci_high),
                   (co.spearman_ci_low, co.spearman_ci_high)):
        assert math.isfinite(lo) and math.isfinite(hi) and -1.0 <= lo <= hi <= 1.0
    ag_y = rank_agreement(y, x, n_boot=2000, seed=1)  # the same with the constant side as y
    assert math.isfinite(ag_y.tau_ci_low) and math.isfinite(ag_y.tau_ci_high)
