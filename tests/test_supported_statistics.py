"""Statistics across cells say only what the data supports, and say it once (issues 18.5, 22.4):

- one statistic per question: a correlation over cells counts each compressor's MI once (per
  predictor, never pooled over predictors), and the report, the Findings and the mi_accuracy plot
  print the same rho and CI for the same cells;
- the rate-distortion fit is reported as "no exponential fit supported by these N cells" and not
  drawn when it has fewer points than parameters + 2, does not beat the constant model (R^2 <= 0)
  or has a parameter at its bound;
- a correlation whose CI spans 0 is worded so.

Run directories come from tests/run_fixtures.py (the real writers); expected values from scipy
and from the constructed data."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import run_fixtures
from run_fixtures import COMPRESSORS, PREDICTOR_RD, write_run

from compressbench.analysis.findings import format_findings, run_findings
from compressbench.analysis.plots import correlation_text, fig_mi_accuracy, fig_rate_distortion
from compressbench.analysis.report import build_report, correlation_note, display_fits, render
from compressbench.core.stats import fit_rate_distortion, rd_curve, spans_zero
from compressbench.core.tables import fmt_ci

pytest.importorskip("matplotlib")
N_BOOT = 300


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory):
    """The synthetic run with two compressors' MI moved so MI no longer orders accuracy exactly
    (rho < 1 with a wide CI): qwen-7b keeps its rate (so its accuracy) with less MI and a shorter
    compression, llama-1b gets more MI at a longer compression."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(COMPRESSORS, "qwen-7b", (7e9, "qwen2.5", 1.1, 13))
        mp.setitem(COMPRESSORS, "llama-1b", (1.2e9, "llama3.2", 2.4, 400))
        return write_run(tmp_path_factory.mktemp("mixed"))


def test_report_findings_and_plot_print_one_rho_and_ci_per_predictor(mixed_run):
    from scipy import stats

    rep = build_report(mixed_run, n_boot=N_BOOT)
    findings = {f.predictor: f for f in run_findings(mixed_run, n_boot=N_BOOT)}
    text = format_findings(list(findings.values()))
    report_text = render(rep, "table")
    fig = fig_mi_accuracy(rep)
    labels = [ln.get_label() for ln in fig.axes[0].get_lines()]
    assert set(findings) == set(PREDICTOR_RD)
    rhos = []
    for pred, f in findings.items():
        cells = rep.cells[(rep.cells["predictor"] == pred) & (rep.cells["compressor"] != "empty")]
        assert len(cells) == len(COMPRESSORS) + 1  # each compressor (and the identity) once
        (row,) = rep.correlations[(rep.correlations["predictor"] == pred) & (rep.correlations["x"] == "mi_bits")
                                  & (rep.correlations["y"] == "accuracy")].to_dict(orient="records")
        rho = stats.spearmanr(cells["mi_bits"], cells["accuracy"]).statistic
        rhos.append(rho)
        assert row["n"] == f.spearman_n == len(cells)  # not 2 x: the other predictor's cells are not pooled
        assert row["spearman_rho"] == pytest.approx(rho) and f.spearman_rho == row["spearman_rho"]
        assert f.spearman_ci == (row["spearman_ci_low"], row["spearman_ci_high"])
        printed = fmt_ci(row["spearman_rho"], row["spearman_ci_low"], row["spearman_ci_high"])
        assert f"over the {len(cells)} non-empty cells: {printed}" in text  # the Findings
        assert printed in report_text  # the report's table
        (label,) = [lab for lab in labels if lab.startswith(f"predictor {pred}:")]  # the plot
        assert f"ρ = {printed}" in label and f"{len(cells)} cells" in label
        r = fmt_ci(row["pearson_r"], row["pearson_ci_low"], row["pearson_ci_high"])
        assert f"r = {r}" in label and r in report_text
        assert row["pearson_r"] == pytest.approx(stats.pearsonr(cells["mi_bits"], cells["accuracy"])[0])
    assert all(0 < rho < 1 for rho in rhos)  # the moved MI values do break the perfect order


def test_mi_accuracy_lines_are_per_predictor_in_the_model_colour(mixed_run):
    from matplotlib.colors import to_rgba

    from compressbench.analysis.plots import model_colors

    rep = build_report(mixed_run, n_boot=N_BOOT)
    colors = model_colors(rep)
    ax = fig_mi_accuracy(rep).axes[0]
    unsupported = 0
    for pred in PREDICTOR_RD:
        (pts,) = [ln for ln in ax.get_lines() if ln.get_label().startswith(f"predictor {pred}:")]
        lines = [ln for ln in ax.get_lines() if ln.get_label() == f"least-squares line, predictor {pred}"]
        assert len(pts.get_xdata()) == len(COMPRESSORS) + 1
        assert to_rgba(pts.get_color()) == to_rgba(colors[pred])
        (row,) = rep.correlations[(rep.correlations["predictor"] == pred) & (rep.correlations["x"] == "mi_bits")
                                  & (rep.correlations["y"] == "accuracy")].to_dict(orient="records")
        if spans_zero(row["pearson_ci_low"], row["pearson_ci_high"]):
            unsupported += 1
            assert lines == []  # a correlation the data does not support is not drawn as a line
            continue
        (line,) = lines
        assert to_rgba(line.get_color()) == to_rgba(colors[pred])
        # the line is this predictor's own least-squares line
        cells = rep.cells[(rep.cells["predictor"] == pred) & (rep.cells["compressor"] != "empty")]
        slope, icpt = np.polyfit(cells["mi_bits"], cells["accuracy"], 1)
        xs = np.asarray(line.get_xdata(), dtype=float)
        np.testing.assert_allclose(np.asarray(line.get_ydata(), dtype=float), slope * xs + icpt, rtol=1e-9)
    assert unsupported >= 1  # this run's moved MI values leave at least one predictor without support


# ------------------------------------------------------------------------- the degenerate-fit rule


def test_a_supported_fit_beats_the_constant_model_with_interior_parameters():
    r = np.linspace(0.0, 3.0, 8)
    d = rd_curve(r, 0.5, 1.5, 0.1)
    fit = fit_rate_distortion(r, d)
    assert fit.ok and fit.note == "" and fit.n_points == 8
    assert (fit.c, fit.b, fit.d0) == pytest.approx((0.5, 1.5, 0.1), rel=1e-4)
    assert fit.r2 == pytest.approx(1.0)


def test_fewer_points_than_parameters_plus_two_is_no_fit():
    r = np.array([0.0, 0.5, 1.0, 2.0, 3.0])
    d = rd_curve(r, 0.5, 1.5, 0.1)
    assert fit_rate_distortion(r, d).ok  # 5 = 3 parameters + 2
    four = fit_rate_distortion(r[:4], d[:4])  # an exact curve, but 4 points for 3 parameters
    assert not four.ok and four.note.startswith("no exponential fit supported by these 4 cells: too few points")
    assert math.isnan(four.c) and math.isnan(four.r2)


def test_a_fit_that_does_not_beat_the_constant_model_is_no_fit(monkeypatch):
    # distortion rising with rate: a decaying exponential can do no better than a constant
    r = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    d = np.array([0.10, 0.20, 0.12, 0.25, 0.22, 0.30])
    flat = fit_rate_distortion(r, d)
    assert not flat.ok and flat.note.startswith("no exponential fit supported by these 6 cells: ")
    assert flat.r2 == pytest.approx(0.0, abs=1e-6)  # the constant model's R^2, by definition
    # R^2 <= 0 on its own (parameters inside their bounds): the rule reads the fit's R^2
    import scipy.optimize

    popt = np.array([0.4, 3.0, 0.5])  # far above every point
    monkeypatch.setattr(scipy.optimize, "curve_fit", lambda *a, **k: (popt, np.eye(3) * 1e-4))
    worse = fit_rate_distortion(r, d)
    resid = d - rd_curve(r, *popt)
    r2 = 1 - np.sum(resid**2) / np.sum((d - d.mean()) ** 2)
    assert r2 < 0 and worse.r2 == pytest.approx(r2)
    assert worse.note == f"no exponential fit supported by these 6 cells: it does not beat the constant model " \
                         f"(R^2 = {r2:.2f} <= 0)"


@pytest.mark.parametrize(("c", "b", "d0", "bound"), [
    (0.6, 2.0, 0.0, "D0 = 0"),  # no error floor: D0 at its lower bound
    (0.3, 1.0, 1.2, "D0 = 1"),  # a floor above 1: D0 held at its upper bound
])
def test_a_parameter_at_its_bound_is_no_fit(c, b, d0, bound):
    r = np.linspace(0.0, 3.0, 10)
    d = rd_curve(r, c, b, d0)
    fit = fit_rate_distortion(r, d)
    assert not fit.ok and fit.r2 > 0  # it does beat the constant, but a parameter sits at a bound
    assert fit.note.startswith(f"no exponential fit supported by these 10 cells: parameters at their bounds ({bound}")


def test_a_flat_exponent_is_b_at_its_bound(monkeypatch):
    import scipy.optimize

    r = np.linspace(0.0, 2.0, 6)
    popt = np.array([0.1, 1e-4, 0.4])  # b * max(R) = 2e-4: a straight line over the data (slope -1e-5)
    d = rd_curve(r, *popt) + np.array([1, -1, 1, -1, 1, -1]) * 1e-7
    monkeypatch.setattr(scipy.optimize, "curve_fit", lambda *a, **k: (popt, np.eye(3) * 1e-4))
    fit = fit_rate_distortion(r, d)
    assert fit.r2 > 0.5 and not fit.ok
    assert fit.note.startswith("no exponential fit supported by these 6 cells: parameters at their bounds (b = 0;")


def test_an_unsupported_fit_is_reported_and_not_drawn(tmp_path):
    comps = ["identity", "empty", "qwen-0.5b", "qwen-1.5b", "qwen-3b", "qwen-7b"]  # 4 compressing cells
    rep = build_report(write_run(tmp_path, compressors=comps), n_boot=N_BOOT)
    assert len(rep.rate_distortion) == len(PREDICTOR_RD)
    assert rep.rate_distortion["note"].str.startswith("no exponential fit supported by these 4 cells").all()
    shown = display_fits(rep)
    assert (shown[["C", "b (per bit/token)", "D0", "RMSE"]] == "–").all().all()  # no parameters shown
    ax = fig_rate_distortion(rep).axes[0]
    assert not [ln for ln in ax.get_lines() if ln.get_label().startswith("fit:")]
    assert sorted(ln.get_label() for ln in ax.get_lines()) == sorted(PREDICTOR_RD)  # the points only
    (why,) = [t for t in ax.texts if t.get_gid() == "rd-no-fit"]
    assert why.get_text().startswith("No curve drawn") and " ".join(why.get_text().split()).count(
        "no exponential fit supported by these 4 cells: too few points") == len(PREDICTOR_RD)
    text = format_findings(run_findings(rep.run_dir, n_boot=N_BOOT))
    assert text.count("no exponential fit supported by these 4 cells") == len(PREDICTOR_RD)
    assert "D(R) = " not in text.replace("D(R) = C exp(-b R) + D0", "")  # no fitted curve printed
    # the full synthetic run: six compressing cells on a true curve, fitted and drawn for each predictor
    full = build_report(write_run(tmp_path / "full"), n_boot=N_BOOT)
    assert full.rate_distortion["note"].eq("").all()
    ax = fig_rate_distortion(full).axes[0]
    assert len([ln for ln in ax.get_lines() if ln.get_label().startswith("fit:")]) == len(PREDICTOR_RD)
    assert not [t for t in ax.texts if t.get_gid() == "rd-no-fit"]


# ------------------------------------------------------------------------- intervals that span 0


def test_correlations_whose_ci_spans_zero_are_worded_so(mixed_run):
    assert spans_zero(-0.2, 0.5) and spans_zero(0.0, 0.3) and not spans_zero(0.1, 0.9)
    assert not spans_zero(math.nan, 0.5) and not spans_zero(-0.9, -0.1)
    row = {"note": "", "n": 6, "pearson_r": 0.56, "pearson_ci_low": -0.52, "pearson_ci_high": 0.99,
           "spearman_rho": 0.41, "spearman_ci_low": 0.05, "spearman_ci_high": 0.9}
    assert correlation_note(row) == "Pearson's 95% CI spans 0: no evidence of a relation on these cells"
    assert correlation_note({**row, "spearman_ci_low": -0.79}) == (
        "Pearson's and Spearman's 95% CIs span 0: no evidence of a relation on these cells")
    assert correlation_note({**row, "pearson_ci_low": 0.1}) == ""
    assert correlation_note({**row, "note": "too few cells"}) == "too few cells"
    assert correlation_text(row).endswith("6 cells (r: CI spans 0)")
    assert "CI spans 0" not in correlation_text({**row, "pearson_ci_low": 0.1})
    # the Findings: the same line, worded by whether its CI holds 0
    (f, *_) = run_findings(mixed_run, n_boot=N_BOOT)
    wide = dataclasses.replace(f, spearman_rho=0.41, spearman_ci=(-0.79, 1.0))
    narrow = dataclasses.replace(f, spearman_rho=0.9, spearman_ci=(0.2, 1.0))
    assert "0.410 [-0.790, 1.00]; the 95% CI spans 0: these cells do not show that MI ranks" in format_findings([wide])
    assert "spans 0" not in format_findings([narrow]).split("Spearman rho")[1].split("\n")[0]
