"""Reports from run directories: per-cell numbers against the records, cost against hand
computations, the rate-distortion fit against known parameters, correlations against scipy,
Pareto fronts against brute force, and every output format parsed back."""

from __future__ import annotations

import base64
import io
import json
import math
import os

import numpy as np
import yaml
import pytest
from click.testing import CliRunner
from run_fixtures import (
    ANSWER_TOKENS,
    COMPRESSORS,
    CONTEXT_TOKENS,
    M_SAMPLES,
    N_EXAMPLES,
    PREDICTOR_RD,
    QUESTION_TOKENS,
    SHAPES,
    model_entry,
    true_accuracy,
    usage_for,
    write_run,
)

from compressbench.core.errors import DataError, UsageError
from compressbench.analysis.report import (
    build_report,
    correlate,
    fit_rate_distortion,
    load_run,
    pareto_front,
    rd_curve,
    render,
)

pd = pytest.importorskip("pandas")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("runs"))


def _report_scope(fixture_name: str, config: pytest.Config) -> str:
    """Built once per module, except under scripts/mutation.sh (COMPRESSBENCH_MUTATION=1): mutmut
    runs, for each mutant, only the tests that called the mutated function, and a module-scoped
    fixture calls it inside the first test that uses it only, so every later test would be left out."""
    return "function" if os.environ.get("COMPRESSBENCH_MUTATION") else "module"


@pytest.fixture(scope=_report_scope)
def report(run_dir):
    return build_report(run_dir, n_boot=500)


def _cell(report, compressor, predictor):
    c = report.cells
    rows = c[(c["compressor"] == compressor) & (c["predictor"] == predictor)]
    assert len(rows) == 1
    return rows.iloc[0]


def test_cells_match_records(report, run_dir):
    cells = report.cells
    assert len(cells) == (len(COMPRESSORS) + 2) * len(PREDICTOR_RD)
    # accuracy of every cell = the mean of its records' scores (computed here from the file)
    scores: dict[tuple, list] = {}
    for line in (run_dir / "records.jsonl").read_text().splitlines():
        r = json.loads(line)
        scores.setdefault((r["cell"]["compressor"], r["cell"]["predictor"]), []).append(r["score"])
    for (comp, pred), s in scores.items():
        assert _cell(report, comp, pred)["accuracy"] == pytest.approx(sum(s) / len(s), abs=1e-12)
    base = cells[cells["is_baseline"]]
    assert set(base["compressor"]) == {"identity", "empty"}
    assert set(base["reference"]) == {"no compression", "empty context"}
    row = _cell(report, "qwen-3b", "gpt-4o")
    assert row["accuracy_vs_identity"] == pytest.approx(true_accuracy("qwen-3b", "gpt-4o") / 0.92)
    # with a summary.json the report shows the sweep's numbers for every statistic column
    summary = json.loads((run_dir / "summary.json").read_text())["rows"]
    for srow in summary:
        cell = _cell(report, srow["compressor"], srow["predictor"])
        for col in ("n", "accuracy", "mi_bits", "mi_ci_low_bits", "ceiling_bits", "bits_per_token",
                    "mean_compression_tokens", "mean_ref_nll_nats"):
            want = math.nan if srow[col] is None else srow[col]
            assert cell[col] == pytest.approx(want, nan_ok=True, abs=1e-12), (srow["compressor"], col)


def test_rate_and_ceiling_computed_from_records(tmp_path):
    # Without a summary the report computes them: rate = mean pointwise MI / mean compression tokens
    # and ceiling = log2 of the number of examples, here counted from the records file by hand.
    run = write_run(tmp_path, with_summary=False)
    rep = build_report(run, n_boot=100)
    recs: dict[tuple, list] = {}
    for line in (run / "records.jsonl").read_text().splitlines():
        r = json.loads(line)
        recs.setdefault((r["cell"]["compressor"], r["cell"]["predictor"]), []).append(r)
    for (comp, pred), rs in recs.items():
        mi = np.mean([np.mean(r["pointwise_mi_bits"]) for r in rs])
        tokens = np.mean([t for r in rs for t in r["compression_n_tokens"]])
        cell = _cell(rep, comp, pred)
        assert cell["ceiling_bits"] == pytest.approx(math.log2(len({r["example_id"] for r in rs})), abs=1e-12)
        assert cell["mi_bits"] == pytest.approx(max(0.0, mi), abs=1e-12)
        if tokens > 0:
            assert cell["bits_per_token"] == pytest.approx(max(0.0, mi) / tokens, rel=1e-12)
        else:
            assert math.isnan(cell["bits_per_token"])
    assert _cell(rep, "qwen-3b", "gpt-4o")["bits_per_token"] == pytest.approx(2.1 / 45, rel=1e-12)


def test_costs_by_hand(report):
    # paid predictor gpt-4o, per query: prompt (L + 50) * M tokens, completion 5 * M, at $2.50 / $10 per 1M
    length = COMPRESSORS["qwen-3b"][3]
    usd = ((length + QUESTION_TOKENS) * M_SAMPLES * 2.50 + ANSWER_TOKENS * M_SAMPLES * 10.00) / 1e6
    row = _cell(report, "qwen-3b", "gpt-4o")
    assert row["usd_predictor"] == pytest.approx(usd)
    assert row["usd_per_query"] == pytest.approx(usd)  # the compressor is local: $0 API
    # identity: the predictor reads the whole context
    ident = _cell(report, "identity", "gpt-4o")
    assert ident["usd_per_query"] == pytest.approx(((CONTEXT_TOKENS + QUESTION_TOKENS) * M_SAMPLES * 2.5
                                                   + ANSWER_TOKENS * M_SAMPLES * 10) / 1e6)
    assert row["usd_vs_identity"] == pytest.approx(usd / ident["usd_per_query"])
    # compressor FLOPs: M calls of P = 1050 prompt tokens, G = 45 generated; sum over positions t of
    # 2N plus, per layer, Q K^T and A V at 2*t*d_attn each, written out here independently of compressbench.measure.cost
    sh = SHAPES["qwen-3b"]
    n, layers, da = COMPRESSORS["qwen-3b"][0], sh["n_layers"], sh["n_heads"] * sh["head_dim"]
    p = CONTEXT_TOKENS + QUESTION_TOKENS
    per_call = sum(2 * n + layers * (2 * t * da + 2 * t * da) for t in range(1, p + length + 1))
    assert row["gflops_compressor"] == pytest.approx(M_SAMPLES * per_call / 1e9, rel=1e-12)
    assert row["gflops_per_compression"] == pytest.approx(per_call / 1e9, rel=1e-12)
    # gpt-4o's size is unknown: its FLOPs and so the system's FLOPs stay unknown, never 0
    assert math.isnan(row["gflops_predictor"]) and math.isnan(row["gflops_per_query"])
    local = _cell(report, "qwen-3b", "llama-8b")
    assert local["usd_per_query"] == 0.0
    assert local["gflops_per_query"] == pytest.approx(local["gflops_compressor"] + local["gflops_predictor"])
    assert _cell(report, "identity", "llama-8b")["gflops_compressor"] == 0.0


def test_unknown_usage_and_missing_price_stay_unknown(tmp_path):
    run = write_run(tmp_path)
    lines = (run / "records.jsonl").read_text().splitlines()
    rec = json.loads(lines[-1])  # a qwen-7b / gpt-4o record
    rec["usage"]["predictor"]["n_prompt_tokens"] = None
    lines[-1] = json.dumps(rec)
    (run / "records.jsonl").write_text("\n".join(lines) + "\n")
    prices = tmp_path / "prices.yaml"
    prices.write_text("models: {}\n")
    rep = build_report(run, n_boot=200)
    assert math.isnan(_cell(rep, rec["cell"]["compressor"], "gpt-4o")["usd_per_query"])
    assert _cell(rep, "qwen-3b", "gpt-4o")["usd_per_query"] > 0
    rep2 = build_report(run, prices=prices, n_boot=200)
    assert rep2.cells[rep2.cells["predictor"] == "gpt-4o"]["usd_per_query"].isna().all()
    assert any("no price for paid model 'gpt-4o'" in n for n in rep2.notes)


def test_rate_distortion_fit_recovers_parameters():
    rng = np.random.default_rng(0)
    r = np.linspace(0.0, 2.0, 25)
    d = rd_curve(r, 0.55, 1.7, 0.12) + rng.normal(0, 0.004, r.size)
    fit = fit_rate_distortion(r, d)
    assert fit.ok
    assert fit.c == pytest.approx(0.55, abs=0.02)
    assert fit.b == pytest.approx(1.7, abs=0.1)
    assert fit.d0 == pytest.approx(0.12, abs=0.02)
    assert fit.r2 > 0.99
    # R^2 by its definition
    resid = d - rd_curve(r, fit.c, fit.b, fit.d0)
    assert fit.r2 == pytest.approx(1 - np.sum(resid**2) / np.sum((d - d.mean()) ** 2))
    few = fit_rate_distortion([0.1, 0.2, 0.3], [0.5, 0.4, 0.3])
    assert not few.ok and "too few points" in few.note and math.isnan(few.c)


def test_report_fits_each_predictor(report):
    fits = report.rate_distortion.set_index("predictor")
    for pred, (c, b, d0) in PREDICTOR_RD.items():
        assert fits.loc[pred, "n_points"] == len(COMPRESSORS)
        assert fits.loc[pred, "c"] == pytest.approx(c, rel=1e-4)
        assert fits.loc[pred, "b"] == pytest.approx(b, rel=1e-4)
        assert fits.loc[pred, "d0"] == pytest.approx(d0, abs=1e-5)


def _corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r along the last axis (vectorised for scipy.stats.bootstrap)."""
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    return (a * b).sum(axis=-1) / np.sqrt((a * a).sum(axis=-1) * (b * b).sum(axis=-1))


def test_correlations_match_scipy(report):
    from scipy import stats

    rng = np.random.default_rng(3)
    x = rng.normal(size=30)
    y = 0.6 * x + rng.normal(scale=0.8, size=30)
    c = correlate(x, y, n_boot=20_000, seed=1)
    assert c.pearson_r == pytest.approx(stats.pearsonr(x, y)[0])
    assert c.pearson_p == pytest.approx(stats.pearsonr(x, y)[1])
    assert c.spearman_rho == pytest.approx(stats.spearmanr(x, y)[0])
    assert c.spearman_p == pytest.approx(stats.spearmanr(x, y)[1])
    # scipy's percentile bootstrap of the same statistics, 20,000 resamples each: the two Monte Carlo
    # estimates of each 95% bound agree to ~0.005 (a 90% interval would be ~0.04 narrower per side)
    ref = stats.bootstrap((x, y), lambda a, b, axis=-1: _corr(a, b), paired=True, vectorized=True,
                          n_resamples=20_000, method="percentile", rng=np.random.default_rng(7))
    assert c.pearson_ci_low == pytest.approx(ref.confidence_interval.low, abs=0.012)
    assert c.pearson_ci_high == pytest.approx(ref.confidence_interval.high, abs=0.012)
    ref_s = stats.bootstrap((x, y), lambda a, b, axis=-1: _corr(stats.rankdata(a, axis=-1), stats.rankdata(b, axis=-1)),
                            paired=True, vectorized=True, n_resamples=20_000, method="percentile",
                            rng=np.random.default_rng(8))
    assert c.spearman_ci_low == pytest.approx(ref_s.confidence_interval.low, abs=0.012)
    assert c.spearman_ci_high == pytest.approx(ref_s.confidence_interval.high, abs=0.012)
    narrow = correlate(x, y, n_boot=20_000, seed=1, level=0.9)
    assert c.pearson_ci_low < narrow.pearson_ci_low - 0.02 and narrow.pearson_ci_high < c.pearson_ci_high - 0.01
    assert c.pearson_ci_low < c.pearson_r < c.pearson_ci_high
    assert correlate([1, 2], [3, 4]).note.startswith("too few")
    # in the report: MI vs accuracy across one predictor's cells other than empty (identity
    # included): each compressor once, never once per predictor
    co = report.correlations.set_index(["predictor", "x", "y"])
    for pred in PREDICTOR_RD:
        sub = report.cells[(report.cells["compressor"] != "empty") & (report.cells["predictor"] == pred)]
        assert len(sub) == len(COMPRESSORS) + 1 == co.loc[(pred, "mi_bits", "accuracy"), "n"]
        assert co.loc[(pred, "mi_bits", "accuracy"), "pearson_r"] == pytest.approx(
            stats.pearsonr(sub["mi_bits"], sub["accuracy"])[0])
        assert co.loc[(pred, "mi_bits", "mean_ref_nll_nats"), "spearman_rho"] == pytest.approx(-1.0)
    assert len(report.correlations) == 4 * len(PREDICTOR_RD)  # 4 pairs per predictor, none pooled


def test_pareto_front_brute_force():
    rng = np.random.default_rng(5)
    cost, acc = rng.uniform(size=40), rng.uniform(size=40)
    cost[3] = np.nan
    mask = pareto_front(cost, acc)
    for i in range(40):
        dominated = any(j != i and cost[j] <= cost[i] and acc[j] >= acc[i] and (cost[j] < cost[i] or acc[j] > acc[i])
                        for j in range(40) if np.isfinite(cost[j]))
        assert mask[i] == (np.isfinite(cost[i]) and not dominated)
    assert pareto_front([1, 2, 3], [0.5, 0.7, 0.6]).tolist() == [True, True, False]
    # None is an unknown cost or accuracy: never on the front, and it dominates nothing
    assert pareto_front([1, None, 2, 0.5], [0.5, 0.9, 0.7, None]).tolist() == [True, False, True, False]


def test_report_pareto(report):
    c = report.cells
    gpt = c[c["predictor"] == "gpt-4o"]
    # among gpt-4o cells the cheapest-and-best is qwen-7b (shortest compression, highest accuracy)
    assert bool(_cell(report, "qwen-7b", "gpt-4o")["pareto_gflops"]) is False  # FLOPs unknown
    assert bool(_cell(report, "identity", "llama-8b")["pareto_usd"])  # $0 and the best accuracy
    assert not gpt["pareto_usd"].any()  # every paid cell is dominated by a free local one at 0.92


def test_fallback_without_summary(tmp_path, report):
    run = write_run(tmp_path, with_summary=False)
    rep = build_report(run, n_boot=300)
    assert any("no summary.json" in n for n in rep.notes)
    a = rep.cells.set_index(["compressor", "predictor"])
    b = report.cells.set_index(["compressor", "predictor"])
    for key in b.index:
        assert a.loc[key, "accuracy"] == pytest.approx(b.loc[key, "accuracy"], abs=1e-12)
        assert a.loc[key, "mi_bits"] == pytest.approx(b.loc[key, "mi_bits"], abs=1e-12)  # mean of +-0.1
        assert a.loc[key, "ceiling_bits"] == pytest.approx(math.log2(N_EXAMPLES))
        lo, hi = a.loc[key, "accuracy_ci_low"], a.loc[key, "accuracy_ci_high"]
        assert lo <= a.loc[key, "accuracy"] <= hi


def test_formats_parse_back(report):
    csv = pd.read_csv(io.StringIO(render(report, "csv")))
    assert len(csv) == len(report.cells)
    assert {"accuracy", "accuracy_ci_low", "mi_bits", "bits_per_token", "usd_per_query",
            "gflops_compressor", "is_baseline", "pareto_usd"} <= set(csv.columns)
    assert csv["accuracy"].tolist() == pytest.approx(report.cells["accuracy"].tolist())
    js = json.loads(render(report, "json"))
    assert len(js["cells"]) == len(report.cells) and len(js["rate_distortion"]) == 2
    assert "log base 2" in js["bits_note"]
    assert js["cells"][0]["gflops_predictor"] is None or isinstance(js["cells"][0]["gflops_predictor"], float)
    md = render(report, "markdown")
    assert "## Rate–distortion fits" in md and "| dataset" in md and "no compression" in md
    table = render(report, "table")
    assert "accuracy [95% CI]" in table and "qwen-7b" in table
    html = render(report, "html")
    # cells, fits, correlations, per-example signal AUROCs (pointwise MI, length), the MI router, MI cost
    assert html.count("<table") == 6 and "<h2>Plots</h2>" in html
    imgs = html.split('src="data:image/png;base64,')[1:]
    assert len(imgs) >= 5
    png = base64.b64decode(imgs[0].split('"', 1)[0])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http" not in html.replace("http-equiv", "")  # self-contained: nothing fetched
    with pytest.raises(UsageError):
        render(report, "xml")


def test_bad_run_directories(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        build_report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no records.jsonl"):
        build_report(tmp_path / "empty")
    run = write_run(tmp_path)
    text = (run / "records.jsonl").read_text()
    (run / "records.jsonl").write_text(text + '{"cell": {"data')  # killed mid-write: skipped
    assert len(build_report(run, n_boot=100).cells) == (len(COMPRESSORS) + 2) * len(PREDICTOR_RD)
    lines = text.splitlines()
    (run / "records.jsonl").write_text("\n".join([lines[0], "{oops", *lines[1:]]) + "\n")
    with pytest.raises(DataError, match="line 2"):
        build_report(run)


def test_cli_report(run_dir, tmp_path):
    from compressbench.cli.main import cli
    from compressbench.cli.report import register

    register(cli)
    runner = CliRunner()
    res = runner.invoke(cli, ["report", str(run_dir), "--format", "json", "--bootstrap", "200"])
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.output)["cells"]) == (len(COMPRESSORS) + 2) * len(PREDICTOR_RD)
    out = tmp_path / "r.md"
    res = runner.invoke(cli, ["report", str(run_dir), "--format", "markdown", "--out", str(out), "--bootstrap", "200"])
    assert res.exit_code == 0 and out.read_text().startswith("# compressbench report")
    # local compute priced from a GPU-hour rate
    res = runner.invoke(cli, ["report", str(run_dir), "--format", "csv", "--bootstrap", "200", "--gpu-usd-per-hour", "3.6",
                              "--gpu-flops-per-s", "1e12"])
    assert res.exit_code == 0, res.output
    df = pd.read_csv(io.StringIO(res.output))
    row = df[(df["compressor"] == "qwen-3b") & (df["predictor"] == "llama-8b")].iloc[0]
    assert row["local_usd_per_query"] == pytest.approx(row["gflops_per_query"] * 1e9 / 1e12 / 3600 * 3.6)
    # usage errors exit 2 with a message
    assert runner.invoke(cli, ["report", str(tmp_path / "nope")]).exit_code == 2
    res = runner.invoke(cli, ["report", str(run_dir), "--gpu-usd-per-hour", "2"])
    assert res.exit_code == 2 and "go together" in res.output
    assert runner.invoke(cli, ["report", str(run_dir), "--format", "xml"]).exit_code == 2


def test_config_info_overrides_manifest_sizes(tmp_path):
    """A sweep config's `models.<name>.info` (e.g. the size of an API model) reaches the report,
    over what the backend put in the manifest; `--meta`-style overrides win over both."""
    run = write_run(tmp_path)
    cfg = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    cfg["models"]["gpt-4o"]["info"] = {"n_params": 2e11, "family": "gpt-4o"}
    cfg["models"]["qwen-7b"]["info"] = {"family": "qwen2.5-instruct"}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    models = load_run(run).models
    assert models["gpt-4o"].info.n_params == 2e11  # the manifest said unknown (None)
    assert models["qwen-7b"].info.family == "qwen2.5-instruct"
    assert models["qwen-7b"].info.n_params == 7e9  # fields the config does not set stay the manifest's
    models = load_run(run, {"gpt-4o": {"n_params": 1e12}}).models
    assert models["gpt-4o"].info.n_params == 1e12


# ----------------------------------------------------------------------------- found by mutation testing


def test_rd_curve_by_hand():
    # D(R) = C exp(-b R) + D0 (the fit test above generates its data with this same function)
    assert rd_curve(2.0, 0.5, 0.3, 0.1) == pytest.approx(0.5 * math.exp(-0.6) + 0.1, rel=1e-15)
    np.testing.assert_allclose(rd_curve([0, 1], 0.4, 2.0, 0.2), [0.6, 0.4 * math.exp(-2.0) + 0.2], rtol=1e-15)


def test_interval_functions_edges_and_levels():
    from statistics import NormalDist

    from compressbench.core.stats import accuracy_interval, bootstrap_mean_ci, finite, wilson_interval

    z = NormalDist().inv_cdf(0.975)
    lo, hi = wilson_interval(1, 1)  # by hand: center = (1 + z^2/2) / (1 + z^2), half = z^2 / 2 / (1 + z^2)
    assert lo == pytest.approx(1 / (1 + z * z), rel=1e-12) and hi == pytest.approx(1.0, abs=1e-12)
    assert wilson_interval(0, 0) == (None, None)
    assert accuracy_interval([1.0]) == wilson_interval(1, 1)
    assert accuracy_interval([1.0, 0.0, 1.0], level=0.8) == wilson_interval(2, 3, 0.8)
    scores = [0.25, 0.5, 0.75, 1.0, 0.5]
    assert accuracy_interval(scores, level=0.8) == bootstrap_mean_ci(scores, level=0.8)[1:]
    assert accuracy_interval([0.5]) == (None, None)  # one non-binary score: no interval
    m, lo, hi = bootstrap_mean_ci([3.0])
    assert m == 3.0 and math.isnan(lo) and math.isnan(hi)
    assert all(math.isnan(v) for v in bootstrap_mean_ci([]))
    assert all(math.isnan(v) for v in bootstrap_mean_ci([None, float("nan")]))
    assert finite([None, 1.0, float("inf"), 2]).tolist() == [1.0, 2.0]


# --- found by mutation testing: the cost columns of a cell, from each role's cost by hand


def _edit_run_for_costs(run):
    """The gpt-4o predictor under a model id unlike its config name; the predictor usage of one
    record of each model-compressor cell lost (unknown), and the compressor usage of another record
    of the (qwen-0.5b, gpt-4o) cell."""
    man = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    man["models"]["gpt-4o"]["model"] = "openai/gpt-4o-0806"
    (run / "manifest.json").write_text(json.dumps(man), encoding="utf-8")
    lines = (run / "records.jsonl").read_text(encoding="utf-8").splitlines()
    out, lost = [], set()
    for line in lines:
        d = json.loads(line)
        cell = (d["cell"]["compressor"], d["cell"]["predictor"])
        if cell[0] == "qwen-0.5b" and cell not in lost:
            d["usage"]["predictor"] = None
            lost.add(cell)
        elif cell == ("qwen-0.5b", "gpt-4o") and cell + ("compressor",) not in lost:
            d["usage"]["compressor"] = None
            lost.add(cell + ("compressor",))
        out.append(json.dumps(d))
    (run / "records.jsonl").write_text("\n".join(out) + "\n", encoding="utf-8")
    return run


def test_cost_columns_are_role_costs_summed_and_averaged_by_hand(tmp_path):
    from compressbench.measure.cost import LocalRate, PriceTable, model_info_from_dict, role_cost

    run = _edit_run_for_costs(write_run(tmp_path, compressors=["empty", "qwen-0.5b"],
                                        predictors=["llama-8b", "gpt-4o"]))
    price_entry = {"input_usd_per_mtok": 2.5, "output_usd_per_mtok": 10.0, "as_of": "2025-01-01"}
    by_model_id = PriceTable.from_dict({"models": {"openai/gpt-4o-0806": price_entry}})
    by_config_name = PriceTable.from_dict({"models": {"gpt-4o": price_entry}})
    rate = LocalRate(usd_per_gpu_hour=3.6, effective_flops_per_s=1e12)
    info = {n: model_info_from_dict(model_entry(n)["info"], reference=n) for n in ("qwen-0.5b", "llama-8b", "scorer-7b")}

    def flops(role, comp, pred):
        u = usage_for(comp, pred)[role]
        return role_cost(role, u, info[{"compressor": comp, "predictor": pred, "scorer": "scorer-7b"}[role]]).flops

    def local_usd(f):  # LocalRate's documented formula
        return f / 1e12 / 3600 * 3.6

    gpt_usd = (2.5 * 100 + 10.0 * 10) / 1e6  # the empty cell's predictor: 100 prompt, 10 completion tokens
    assert usage_for("empty", "gpt-4o")["predictor"] == {"n_prompt_tokens": 100, "n_completion_tokens": 10, "n_calls": 2}
    fc, fl = flops("compressor", "qwen-0.5b", "llama-8b"), flops("predictor", "empty", "llama-8b")
    nan = math.nan
    expected = {  # (compressor, predictor) -> column -> value
        ("empty", "llama-8b"): {
            "gflops_compressor": 0.0, "usd_compressor": 0.0, "gflops_per_compression": 0.0,
            "gflops_predictor": fl / 1e9, "usd_predictor": 0.0, "gflops_per_query": (0.0 + 0.0 + fl) / 1e9,
            "usd_per_query": 0.0, "local_usd_per_query": local_usd(fl),
            "gflops_scorer": flops("scorer", "empty", "llama-8b") / 1e9, "usd_scorer": 0.0},
        ("empty", "gpt-4o"): {  # a paid predictor: no FLOPs known, its dollars from the price by model id
            "gflops_compressor": 0.0, "gflops_per_compression": 0.0, "gflops_predictor": nan,
            "usd_predictor": gpt_usd, "gflops_per_query": nan, "usd_per_query": 0.0 + 0.0 + gpt_usd,
            "local_usd_per_query": 0.0},
        ("qwen-0.5b", "llama-8b"): {  # one record's predictor usage lost: unknown, except its API dollars (local: 0)
            "gflops_compressor": fc / 1e9, "usd_compressor": 0.0, "gflops_per_compression": fc / 1e9 / M_SAMPLES,
            "gflops_predictor": nan, "usd_predictor": 0.0, "gflops_per_query": nan, "usd_per_query": 0.0,
            "local_usd_per_query": nan},
        ("qwen-0.5b", "gpt-4o"): {  # and one record's compressor usage lost
            "gflops_compressor": nan, "gflops_per_compression": nan, "usd_compressor": 0.0, "usd_predictor": nan,
            "usd_per_query": nan, "local_usd_per_query": nan},
    }

    def check(rep, cells):
        for (comp, pred), cols in cells.items():
            row = _cell(rep, comp, pred)
            for col, want in cols.items():
                got = row[col]
                if math.isnan(want):
                    assert math.isnan(got), (comp, pred, col, got)
                elif col.startswith("local_usd"):
                    assert got == pytest.approx(want, rel=1e-12, abs=0.0), (comp, pred, col)
                else:  # sums and means of equal values: exact
                    assert got == want, (comp, pred, col, got, want)

    rep = build_report(run, prices=by_model_id, local_rate=rate, n_boot=50)
    check(rep, expected)
    assert not any("no price" in n for n in rep.notes)
    # the price found under the config's name instead of the model id: the same dollars
    check(build_report(run, prices=by_config_name, local_rate=rate, n_boot=50),
          {("empty", "gpt-4o"): {"usd_predictor": gpt_usd, "usd_per_query": gpt_usd}})
    # no price: unknown dollars and a note naming the model id; no local rate: no local column
    unpriced = build_report(run, prices=PriceTable.from_dict({"models": {}}, path="empty.yaml"), n_boot=50)
    check(unpriced, {("empty", "gpt-4o"): {"usd_predictor": nan, "usd_per_query": nan},
                     ("empty", "llama-8b"): {"usd_per_query": 0.0}})
    assert "local_usd_per_query" not in unpriced.cells.columns
    assert "no price for paid model 'openai/gpt-4o-0806' in empty.yaml: its dollars are unknown (add it to the " \
        "price table or pass --prices)" in unpriced.notes
    # a scorer named by the cells but described nowhere (no manifest or config entry): its FLOPs are unknown
    man = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    del man["models"]["scorer-7b"]
    (run / "manifest.json").write_text(json.dumps(man), encoding="utf-8")
    cfg = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    del cfg["models"]["scorer-7b"]
    (run / "config.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    check(build_report(run, prices=by_model_id, n_boot=50),
          {("empty", "llama-8b"): {"gflops_scorer": nan, "usd_scorer": 0.0, "gflops_per_query": fl / 1e9}})


# --- found by mutation testing: the rate-distortion fit against an independent least-squares
# optimum, its notes, and the identity ratios on a grid with more than one value per axis


def _profile_least_squares(r: np.ndarray, d: np.ndarray) -> tuple[float, float, float, float]:
    """The bounded least-squares optimum of d ~ C exp(-b r) + D0 (C >= 0, b >= 0, 0 <= D0 <= 1), found
    another way than curve_fit: for a fixed b the model is linear in (C, D0), solved exactly by
    scipy's bounded linear least squares; the profile SSE(b) is minimised over a grid, then refined.
    Returns (C, b, D0, SSE)."""
    from scipy.optimize import lsq_linear, minimize_scalar

    def solve(b: float) -> tuple[float, float, float]:
        a = np.column_stack([np.exp(-b * r), np.ones_like(r)])
        sol = lsq_linear(a, d, bounds=([0.0, 0.0], [np.inf, 1.0]), method="bvls", tol=1e-14)
        return float(sol.x[0]), float(sol.x[1]), float(np.sum((a @ sol.x - d) ** 2))

    grid = np.concatenate([[0.0], np.geomspace(1e-3, 1e3, 3000)])
    sse = [solve(b)[2] for b in grid]
    i = int(np.argmin(sse))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
    b = float(minimize_scalar(lambda x: solve(x)[2], bounds=(lo, hi), method="bounded",
                              options={"xatol": 1e-12}).x) if hi > lo else float(grid[i])
    c, d0, s = solve(b)
    return c, b, d0, s


@pytest.mark.parametrize(("name", "c", "b", "d0"), [
    ("slow decay, b < 1", 0.6, 0.4, 0.1),
    ("plateau above 1: D0 held at its bound", 0.5, 2.0, 1.3),
    ("steep decay", 0.7, 6.0, 0.05),
])
def test_fit_is_the_bounded_least_squares_optimum(name, c, b, d0):
    rng = np.random.default_rng(11)
    r = np.linspace(0.0, 3.0, 14)
    d = rd_curve(r, c, b, d0) + rng.normal(0, 0.01, r.size)
    fit = fit_rate_distortion(r, d)
    rc, rb, rd0, rsse = _profile_least_squares(r, d)
    assert fit.n_points == 14, name
    # a parameter at its bound: the optimum is kept, but the fit is not one the data supports
    assert fit.ok == (d0 <= 1.0), name
    if d0 > 1.0:
        assert fit.note.startswith("no exponential fit supported by these 14 cells: parameters at their bounds (D0 = 1")
    sse = float(np.sum((d - rd_curve(r, fit.c, fit.b, fit.d0)) ** 2))
    assert sse == pytest.approx(rsse, rel=1e-6, abs=1e-12), name
    assert (fit.c, fit.b, fit.d0) == pytest.approx((rc, rb, rd0), rel=1e-3, abs=1e-4), name
    assert 0.0 <= fit.d0 <= 1.0 and fit.rmse == pytest.approx(math.sqrt(sse / 14))
    assert fit.r2 == pytest.approx(1 - sse / np.sum((d - d.mean()) ** 2))
    if fit.d0 < 1.0:  # an interior optimum: curve_fit's standard errors, sqrt(diag(s^2 (J^T J)^-1)), by hand
        e = np.exp(-fit.b * r)
        jac = np.column_stack([e, -fit.c * r * e, np.ones_like(r)])
        se = np.sqrt(np.diag(sse / (r.size - 3) * np.linalg.inv(jac.T @ jac)))
        assert (fit.c_se, fit.b_se, fit.d0_se) == pytest.approx(tuple(se), rel=1e-3), name
    else:
        assert fit.d0 == 1.0


def test_fit_notes_counts_and_unknown_points(monkeypatch):
    r = [0.0, 0.5, 1.0, 2.0, 3.0]
    d = [0.8, 0.5, 0.35, 0.25, 0.22]
    five = fit_rate_distortion(r, d)  # exactly the minimum number of points (3 parameters + 2)
    assert five.ok and five.n_points == 5 and five.note == ""
    # NaN, inf and None are unknown points: dropped, the same fit as without them
    padded = fit_rate_distortion([*r, np.nan, 1.5, None, 4.0], [*d, 0.3, np.inf, 0.2, None])
    assert padded.n_points == 5 and (padded.c, padded.b, padded.d0) == (five.c, five.b, five.d0)
    four = fit_rate_distortion(r[:4], d[:4])
    assert (four.n_points, four.note) == (4, "no exponential fit supported by these 4 cells: too few points for "
                                             "3 parameters (need >= 5: parameters + 2)")
    assert not four.ok and math.isnan(four.c) and math.isnan(four.r2)
    few = fit_rate_distortion([0.1, 0.2, np.nan, 0.3], [0.5, 0.4, 0.3, np.nan])
    assert few.n_points == 2 and few.note.startswith("no exponential fit supported by these 2 cells: too few")
    same = fit_rate_distortion([0.5] * 5, [0.1, 0.2, 0.3, 0.4, 0.5])
    assert (same.n_points, same.note) == (5, "no exponential fit supported by these 5 cells: all cells have the same rate")
    # constant distortion: R^2 undefined (SS_tot = 0), not a division error, and no fit supported
    flat = fit_rate_distortion([0.0, 0.5, 1.0, 2.0, 3.0], [0.3] * 5)
    assert flat.n_points == 5 and math.isnan(flat.r2) and not flat.ok
    assert "same distortion" in flat.note
    assert flat.c * math.exp(-flat.b * 0.0) + flat.d0 == pytest.approx(0.3, abs=1e-6)

    def fails(*args, **kwargs):
        raise RuntimeError("Optimal parameters not found")

    monkeypatch.setattr("scipy.optimize.curve_fit", fails)
    bad = fit_rate_distortion(r, d)
    assert (bad.n_points, bad.note) == (5, "no exponential fit supported by these 5 cells: the fit did not "
                                           "converge (Optimal parameters not found)")
    assert not bad.ok and math.isnan(bad.b)


def test_correlation_counts_names_notes_and_unknown_points():
    x = [0.1, 0.4, 0.35, 0.8]
    y = [0.2, 0.3, 0.5, 0.9]
    c = correlate(x, y, x_name="mi_bits", y_name="accuracy", n_boot=300, seed=2)
    assert (c.x, c.y, c.n, c.note) == ("mi_bits", "accuracy", 4, "")
    assert c.pearson_r == pytest.approx(np.corrcoef(x, y)[0, 1])
    three = correlate(x[:3], y[:3], n_boot=300)  # exactly the minimum number of points
    assert three.n == 3 and three.note == "" and math.isfinite(three.spearman_rho)
    assert (three.x, three.y) == ("x", "y")  # the default names
    # NaN, inf and None are unknown: dropped, the same numbers as without them
    padded = correlate([*x, np.nan, 0.5, None, 0.7], [*y, 0.1, np.inf, 0.4, None], x_name="mi_bits",
                       y_name="accuracy", n_boot=300, seed=2)
    assert padded == c
    few = correlate([0.1, np.nan, 0.3], [0.2, 0.5, np.inf], x_name="a", y_name="b")
    assert (few.x, few.y, few.n, few.note) == ("a", "b", 1, "too few cells to correlate (have 1, need >= 3)")
    assert math.isnan(few.pearson_r) and math.isnan(few.spearman_ci_low)
    for xs, ys in (([0.5, 0.5, 0.5, 0.5], y), (x, [0.3, 0.3, 0.3, 0.3]), ([1.0, 2.0, 3.0], [0.7, 0.7, 0.7])):
        flat = correlate(xs, ys, x_name="a", y_name="b")
        assert (flat.x, flat.y, flat.n, flat.note) == ("a", "b", len(xs), "one variable is constant across cells")
        assert math.isnan(flat.pearson_r)
    # a spread of exactly 1 is not constant
    assert correlate([0.0, 1.0, 0.5], [0.2, 0.4, 0.3], n_boot=50).note == ""
    assert correlate([0.2, 0.4, 0.3], [0.0, 1.0, 0.5], n_boot=50).note == ""
    rng = np.random.default_rng(4)
    bx = rng.normal(size=20)
    by = bx + rng.normal(size=20)
    default = correlate(bx, by)
    assert default == correlate(bx, by, n_boot=2000, seed=0, level=0.95)  # the documented defaults
    for other in (correlate(bx, by, seed=1), correlate(bx, by, n_boot=2001)):
        assert (other.pearson_ci_low, other.spearman_ci_high) != (default.pearson_ci_low, default.spearman_ci_high)


def test_fit_standard_errors_are_unknown_when_scipy_cannot_estimate_the_covariance(monkeypatch):
    """scipy returns an all-inf covariance when the Jacobian is singular: the SEs are NaN, not inf."""
    import scipy.optimize

    real = scipy.optimize.curve_fit

    def singular(*args, **kwargs):
        popt, pcov = real(*args, **kwargs)
        return popt, np.full_like(pcov, np.inf)

    r, d = [0.0, 0.5, 1.0, 2.0, 3.0], [0.6, 0.4, 0.3, 0.22, 0.2]
    good = fit_rate_distortion(r, d)
    monkeypatch.setattr(scipy.optimize, "curve_fit", singular)
    fit = fit_rate_distortion(r, d)
    assert fit.ok and (fit.c, fit.b, fit.d0) == (good.c, good.b, good.d0)
    assert all(isinstance(v, float) and math.isnan(v) for v in (fit.c_se, fit.b_se, fit.d0_se))
    assert all(math.isfinite(v) for v in (good.c_se, good.b_se, good.d0_se))


def test_identity_ratios_match_the_identity_cell_of_the_same_grid_point():
    import pandas as pd

    from compressbench.analysis.report import _add_identity_ratios

    def cell(ds, pred, seed, comp, acc, usd, scorer="s1"):
        return {"dataset": ds, "predictor": pred, "seed": seed, "compressor": comp, "accuracy": acc,
                "usd_per_query": usd, "scorer": scorer, "predictor_mode": "generate", "temperature": 0.0,
                "prompt": "q"}

    rows = [
        cell("d2", "p2", 0, "c", 0.5, 0.02),  # no identity cell for (d2, p2): no ratio (and the next rows still get theirs)
        cell("d1", "p1", 0, "identity", 0.8, 0.02),
        cell("d1", "p1", 1, "identity", 0.5, 0.04),
        cell("d1", "p2", 0, "identity", 0.4, 0.0),  # a local predictor: $0, no dollar ratio
        cell("d2", "p1", 0, "identity", 0.0, 0.01),  # identity answered nothing: no accuracy ratio
        cell("d1", "p1", 0, "c", 0.6, 0.01),
        cell("d1", "p1", 1, "c", 0.4, 0.01),  # seed 1's identity, not seed 0's (listed first)
        cell("d1", "p2", 0, "c", 0.2, 0.001),  # a paid compressor before a $0 identity: no dollar ratio
        cell("d1", "p2", 1, "c", 0.3, 0.0),  # no seed-1 identity for p2: falls back to seed 0's
        cell("d2", "p1", 0, "c", 0.5, 0.005),
        cell("d1", "p1", 0, "c", 0.4, 0.03, scorer="s2"),  # another scorer, no identity under it: s1's
    ]
    df = pd.DataFrame(rows)
    _add_identity_ratios(df)
    nan = math.nan
    want = [(nan, nan), (1.0, 1.0), (1.0, 1.0), (1.0, nan), (nan, 1.0), (0.6 / 0.8, 0.01 / 0.02),
            (0.4 / 0.5, 0.01 / 0.04), (0.2 / 0.4, nan), (0.3 / 0.4, nan), (nan, 0.005 / 0.01), (0.4 / 0.8, 0.03 / 0.02)]
    got = list(zip(df["accuracy_vs_identity"], df["usd_vs_identity"]))
    for i, (g, w) in enumerate(zip(got, want)):
        for gv, wv in zip(g, w):
            assert (math.isnan(gv) and math.isnan(wv)) or gv == pytest.approx(wv, rel=1e-12), (i, g, w)
    # a grid without any identity cell: both columns exist and are NaN
    none = pd.DataFrame([r for r in rows if r["compressor"] != "identity"])
    _add_identity_ratios(none)
    assert none["accuracy_vs_identity"].isna().all() and none["usd_vs_identity"].isna().all()
    assert none["accuracy_vs_identity"].dtype == float and none["usd_vs_identity"].dtype == float
