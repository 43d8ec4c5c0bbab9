"""Plots from run records: each figure's content (series, labels, reference lines) is checked on
the figure object, and the written PNGs are checked for drawn pixels; SVGs parse as XML."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from run_fixtures import COMPRESSORS, PREDICTOR_RD, true_accuracy, write_run

from compressbench.analysis.plots import (
    DODGE_DECADES,
    PLOT_NAMES,
    PlotSkipped,
    fig_compressor_scaling,
    fig_cost_accuracy,
    fig_mi_accuracy,
    fig_mi_scaling,
    fig_rate_distortion,
    fig_scaling_both,
    format_params,
    plot_report,
)
from compressbench.analysis.report import build_report

pytest.importorskip("matplotlib")

GPT4O_SIZE = {"gpt-4o": {"n_params": 200_000_000_000}}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return build_report(write_run(tmp_path_factory.mktemp("runs")), n_boot=200, meta_overrides=GPT4O_SIZE)


def _labels(ax):
    return [ln.get_label() for ln in ax.get_lines()]


def _png_ink(path: Path) -> float:
    """Fraction of pixels that are not (near) white."""
    import matplotlib.image as mpimg

    img = mpimg.imread(path)[..., :3]
    return float((img.min(axis=-1) < 0.9).mean())


def test_cost_accuracy_content(report):
    fig = fig_cost_accuracy(report)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "API $ per query" and ax.get_ylabel() == "accuracy"
    labels = _labels(ax)
    assert sorted(labels.count(f"predictor {p}") for p in PREDICTOR_RD) == [1] * len(PREDICTOR_RD)  # line per predictor
    assert labels.count("Pareto front") == 1
    stars = [ln for ln in ax.get_lines() if ln.get_marker() == "*"]
    assert len(stars) == len(PREDICTOR_RD)  # the no-compression baseline of each predictor
    # one marker shape per compressor in the legend
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert {f"compressor {c}" for c in COMPRESSORS} <= set(legend)
    # error bars: one per (compressor, predictor) cell, baselines (identity, empty) included
    # (the router's held-out points are error bars too: tests/test_route.py)
    cell_bars = [c for c in ax.containers if not str(c.get_label()).startswith("router")]
    assert len(cell_bars) == (len(COMPRESSORS) + 2) * len(PREDICTOR_RD)
    # the plotted values: each predictor's line holds the fixture's true accuracy of every compressor
    # (by construction of the run), in order of cost
    cells = report.cells
    for pred in PREDICTOR_RD:
        (line,) = [ln for ln in ax.get_lines() if ln.get_label() == f"predictor {pred}"]
        mine = cells[(cells["predictor"] == pred) & ~cells["is_baseline"]].sort_values("usd_per_query")
        np.testing.assert_allclose(np.asarray(line.get_xdata(), dtype=float), mine["usd_per_query"], rtol=1e-12)
        np.testing.assert_allclose(np.asarray(line.get_ydata(), dtype=float), [true_accuracy(c, pred) for c in mine["compressor"]],
                                   rtol=0, atol=1e-12)
    # the Pareto front: the cells no other cell beats on both cost and accuracy (brute force here)
    pts = list(zip(cells["usd_per_query"], cells["accuracy"]))
    front = sorted((c, a) for c, a in pts
                   if not any(c2 <= c and a2 >= a and (c2 < c or a2 > a) for c2, a2 in pts))
    (step,) = [ln for ln in ax.get_lines() if ln.get_label() == "Pareto front"]
    assert len(front) >= 1
    np.testing.assert_allclose(np.column_stack([np.asarray(step.get_xdata(), dtype=float),
                                               np.asarray(step.get_ydata(), dtype=float)]), front, rtol=1e-12)


def test_cost_accuracy_falls_back_to_flops(tmp_path):
    rep = build_report(write_run(tmp_path, predictors=["llama-8b"]), n_boot=100)
    ax = fig_cost_accuracy(rep).axes[0]
    assert ax.get_xlabel().startswith("GFLOPs per query")


def _bars(ax):
    """Each error bar of ``ax`` as (x, y, low, high, colour), from the drawn artists."""
    from matplotlib.colors import to_rgba

    out = []
    for cont in ax.containers:
        data_line, (barcol, *_) = cont.lines[0], cont.lines[2]
        for (x, y), seg in zip(np.column_stack([data_line.get_xdata(), data_line.get_ydata()]), barcol.get_segments()):
            out.append((float(x), float(y), float(min(seg[:, 1])), float(max(seg[:, 1])),
                        to_rgba(data_line.get_color())))
    return out


def _legend(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_compressor_scaling_content(report):
    from matplotlib.colors import to_rgba

    from compressbench.analysis.plots import model_colors

    fig = fig_compressor_scaling(report)
    acc, tok, gfl = fig.axes[:3]
    assert [a.get_ylabel() for a in (acc, tok, gfl)] == ["accuracy", "compression length (tokens)",
                                                       "GFLOPs per compression"]
    assert all(a.get_xlabel() == "compressor size (parameters)" and a.get_xscale() == "log" for a in fig.axes)
    assert len(acc.containers) == len(COMPRESSORS) * len(PREDICTOR_RD)  # a point per compressor and predictor
    assert len(tok.containers) == len(COMPRESSORS)  # compression length does not depend on the predictor
    baselines = [ln for ln in acc.get_lines() if ln.get_label().startswith("no compression")]
    assert len(baselines) == len(PREDICTOR_RD) and all(ln.get_ydata()[0] == 0.92 for ln in baselines)
    colors = {k: to_rgba(v) for k, v in model_colors(report).items()}
    for ax in (acc, tok, gfl):
        # the legend names every model (with its size), never the architecture family alone
        legend = _legend(ax)
        assert {f"{c} ({format_params(v[0])})" for c, v in COMPRESSORS.items()} <= set(legend)
        # no error bar is clipped: every bar end lies inside the y limits
        lo, hi = ax.get_ylim()
        assert all(lo <= b_lo and b_hi <= hi for _, _, b_lo, b_hi, _ in _bars(ax))
        # one colour per model, the same in every panel: each point's colour is its compressor's
        # (x is the size, or the size dodged by half a step either side in the accuracy panel)
        shifts = (1.0,) if ax is not acc else (10 ** (-DODGE_DECADES / 2), 10 ** (DODGE_DECADES / 2))
        for x, _, _, _, col in _bars(ax):
            (name,) = [c for c, v in COMPRESSORS.items() if any(x == pytest.approx(v[0] * f, rel=1e-9) for f in shifts)]
            assert col == colors[name]
    # the two predictors' points at one compressor size sit at distinct x positions (dodged)
    xs = sorted(x for x, *_ in _bars(acc))
    assert len(set(xs)) == len(xs) == len(COMPRESSORS) * len(PREDICTOR_RD)
    want = sorted(v[0] * f for v in COMPRESSORS.values() for f in (10 ** (-DODGE_DECADES / 2), 10 ** (DODGE_DECADES / 2)))
    np.testing.assert_allclose(xs, want, rtol=1e-9)
    # each predictor is in the legend by its marker
    assert {f"predictor {p}" for p in PREDICTOR_RD} <= set(_legend(acc))
    # lines join a family's sizes (both families have >= 2 sizes here), per predictor in the accuracy panel
    family_lines = [ln for ln in acc.get_lines() if ln.get_label().startswith("_family ")]
    assert len(family_lines) == len({v[1] for v in COMPRESSORS.values()}) * len(PREDICTOR_RD)


def test_compressor_scaling_never_clips_and_draws_no_line_for_a_one_size_family(tmp_path):
    """Two compressors of different families (one size each) and a wide CI far below the identity's
    accuracy: no line (no family has two sizes), and every bar and the identity line fit the axis."""
    rep = build_report(write_run(tmp_path, compressors=["identity", "qwen-0.5b", "llama-3b"]), n_boot=100,
                       meta_overrides=GPT4O_SIZE)
    cells = rep.cells
    cells.loc[cells["compressor"] == "qwen-0.5b", "accuracy_ci_low"] = 0.05  # a wide interval, far below
    ax = fig_compressor_scaling(rep).axes[0]
    assert not [ln for ln in ax.get_lines() if ln.get_label().startswith("_family ")]
    lo, hi = ax.get_ylim()
    bars = _bars(ax)
    assert min(b[2] for b in bars) == pytest.approx(0.05) and all(lo <= b[2] and b[3] <= hi for b in bars)
    assert lo < 0.05 and hi > 0.92  # the CI bound and the identity line both inside


def test_mi_scaling_content(report):
    fig = fig_mi_scaling(report)
    mi_ax, bpt_ax = fig.axes[:2]
    assert "bits" in mi_ax.get_ylabel() and "log2" in mi_ax.get_ylabel()
    assert bpt_ax.get_ylabel() == "bits per compression token"
    ceiling = [ln for ln in mi_ax.get_lines() if ln.get_linestyle() == ":"]
    assert len(ceiling) == 1 and list(ceiling[0].get_ydata()) == [3.0, 3.0]
    assert len(mi_ax.containers) == len(COMPRESSORS)  # a point per compressor (MI does not depend on the predictor)
    # each compressor's (size, MI) and (size, MI / L), read from the drawn bars
    got = sorted((x, y) for x, y, *_ in _bars(mi_ax))
    np.testing.assert_allclose(got, sorted((v[0], v[2]) for v in COMPRESSORS.values()), rtol=1e-9, atol=1e-9)
    got = sorted((x, y) for x, y, *_ in _bars(bpt_ax))
    np.testing.assert_allclose(got, sorted((v[0], v[2] / v[3]) for v in COMPRESSORS.values()), rtol=1e-9, atol=1e-9)
    for ax in (mi_ax, bpt_ax):
        lo, hi = ax.get_ylim()
        assert all(lo <= b[2] and b[3] <= hi for b in _bars(ax))
        assert {f"{c} ({format_params(v[0])})" for c, v in COMPRESSORS.items()} <= set(_legend(ax))
    for family in {v[1] for v in COMPRESSORS.values()}:  # a line through each family's sizes, in size order
        (line,) = [ln for ln in mi_ax.get_lines() if ln.get_label() == f"_family {family}"]
        want = sorted((v[0], v[2]) for v in COMPRESSORS.values() if v[1] == family)
        np.testing.assert_allclose(np.asarray(line.get_xdata(), dtype=float), [w[0] for w in want], rtol=1e-12)


def test_rate_distortion_content(report):
    ax = fig_rate_distortion(report).axes[0]
    assert ax.get_xlabel() == "rate R (bits per compression token)"
    assert ax.get_ylabel() == "distortion (1 − accuracy)"
    fits = [ln for ln in ax.get_lines() if ln.get_label().startswith("fit:")]
    assert len(fits) == len(PREDICTOR_RD)
    points = [ln for ln in ax.get_lines() if ln.get_label() in PREDICTOR_RD]
    assert all(len(ln.get_xdata()) == len(COMPRESSORS) for ln in points)
    # the drawn curve is the fitted one: at R = 0 it equals C + D0 of the true curve (0.5 + 0.1 for gpt-4o)
    gpt = [ln for ln in fits if "R² = 1.00" in ln.get_label()]
    assert len(gpt) == 2
    ys = {round(float(ln.get_ydata()[0]), 4) for ln in fits}
    assert ys == {0.6, 0.75}


def test_mi_accuracy_content(report):
    from scipy import stats

    fig = fig_mi_accuracy(report)
    assert len(fig.axes) == 2  # accuracy and reference NLL
    labels = _labels(fig.axes[0])
    for pred in PREDICTOR_RD:  # a series per predictor: every cell but empty (identity included)
        sub = report.cells[(report.cells["compressor"] != "empty") & (report.cells["predictor"] == pred)]
        r = stats.pearsonr(sub["mi_bits"], sub["accuracy"])[0]
        (label,) = [lab for lab in labels if lab.startswith(f"predictor {pred}: ")]
        assert label.startswith(f"predictor {pred}: r = {r:.3f} [") and label.endswith(f"{len(sub)} cells")
        assert f"least-squares line, predictor {pred}" in labels
        (nll,) = [lab for lab in _labels(fig.axes[1]) if lab.startswith(f"predictor {pred}: ")]
        assert nll.startswith(f"predictor {pred}: r = -1.00")
    assert fig.axes[0].get_xlabel() == "MI (bits, log2)"


def test_scaling_both_needs_sizes(tmp_path, report):
    fig = fig_scaling_both(report)
    left, right = fig.axes[:2]
    assert left.get_xlabel() == "compressor size (parameters)" and right.get_xlabel() == "predictor size (parameters)"
    assert len(left.containers) == len(right.containers) == len(COMPRESSORS) * len(PREDICTOR_RD)
    # left: per predictor, a line through each compressor family's sizes; right: no predictor family
    # has two sizes (llama3.1 8B and gpt-4o), so no line
    assert len([ln for ln in left.get_lines() if ln.get_label().startswith("_family ")]) == len(PREDICTOR_RD) * 2
    assert not [ln for ln in right.get_lines() if ln.get_label().startswith("_family ")]
    assert {"llama-8b (8B)", "gpt-4o (200B)"} <= set(_legend(right))
    for ax in (left, right):
        lo, hi = ax.get_ylim()
        assert all(lo <= b[2] and b[3] <= hi for b in _bars(ax))
    no_size = build_report(report.run_dir, n_boot=100)  # gpt-4o's size unknown without the override
    with pytest.raises(PlotSkipped, match="predictor sizes"):
        fig_scaling_both(no_size)


def test_plot_report_writes_the_figures(report, tmp_path):
    import io

    import matplotlib.image as mpimg

    from compressbench.analysis.plots import PLOTS

    res = plot_report(report, tmp_path, dpi=60)
    # usable bits need a likelihood predictor; this run's predictors generate (tests/test_route.py)
    assert sorted(res.written) == sorted(set(PLOT_NAMES) - {"usable_bits"}) and list(res.skipped) == ["usable_bits"]
    for name, paths in res.written.items():
        png, svg = sorted(paths, key=lambda p: p.suffix)
        assert png.suffix == ".png" and svg.suffix == ".svg"
        # the written PNG is the figure the plot function draws, pixel for pixel, at the asked dpi
        fig = PLOTS.load(name)(report)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=60)
        want = mpimg.imread(io.BytesIO(buf.getvalue()))
        got = mpimg.imread(png)
        assert got.shape == want.shape and got.shape[:2] == tuple(
            round(v * 60) for v in fig.get_size_inches()[::-1]), name
        np.testing.assert_array_equal(got, want, err_msg=name)
        assert _png_ink(png) > 0, name
        assert ET.parse(svg).getroot().tag.endswith("svg")


def test_unsupported_plots_are_skipped(tmp_path, caplog):
    rep = build_report(write_run(tmp_path, compressors=["identity", "qwen-3b"], predictors=["gpt-4o"]), n_boot=100)
    with caplog.at_level("INFO", logger="compressbench.analysis.plots"):
        res = plot_report(rep, tmp_path / "plots", formats=("png",))
    assert "scaling_both" in res.skipped and "mi_accuracy" in res.skipped
    assert "skipped" in caplog.text
    assert not (tmp_path / "plots" / "scaling_both.png").exists()
    assert "cost_accuracy" in res.written and "rate_distortion" in res.written  # one point, no fit curve
    ax = fig_rate_distortion(rep).axes[0]
    assert not [ln for ln in ax.get_lines() if ln.get_label().startswith("fit:")]


def test_format_params():
    assert [format_params(x) for x in (5e8, 1.5e9, 1.35e8, 2e11, 0)] == ["500M", "1.5B", "135M", "200B", ""]


def test_cli_plot(tmp_path):
    from compressbench.cli.main import cli
    from compressbench.cli.report import register

    register(cli)
    run = write_run(tmp_path)
    meta = tmp_path / "meta.yaml"
    meta.write_text("gpt-4o: {n_params: 200B, family: gpt-4o}\n")
    res = CliRunner().invoke(cli, ["plot", str(run), "--meta", str(meta), "--format", "png"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (run / "plots").iterdir()) == sorted(f"{n}.png" for n in PLOT_NAMES
                                                                      if n != "usable_bits")  # generate mode
    res = CliRunner().invoke(cli, ["plot", str(run), "--only", "nonsense"])
    assert res.exit_code == 2 and "unknown plot 'nonsense'; known: cost_accuracy, compressor_scaling" in res.output


@pytest.mark.slow
def test_plots_from_a_real_demo_run(demo_run, tmp_path):
    """End to end: the real default demo (SmolLM2 and Gemma), then the report and every plot from its
    records, none skipped: each has the points it needs."""
    _, run = demo_run  # `compressbench demo` in a subprocess (tests/conftest.py)
    rep = build_report(run, n_boot=200)
    cells = rep.cells
    assert len(cells) == 14 and cells["is_baseline"].any() and (~cells["is_baseline"]).any()
    assert np.isfinite(cells["accuracy"]).all()
    model_cells = cells[~cells["is_baseline"]]
    assert (model_cells["gflops_compressor"] > 0).all()  # the real shapes from the manifest
    assert sorted(model_cells["compressor_params"].unique()) == sorted(
        {rep.models["smol"].n_params, rep.models["gemma"].n_params})
    assert (cells["usd_per_query"] == 0).all()  # everything local
    # the demo's five compressing cells per predictor: a fit only where the data supports one
    fits = rep.rate_distortion
    assert (fits["note"].eq("") | fits["note"].str.startswith("no exponential fit supported by these 5 cells")).all()
    res = plot_report(rep, tmp_path / "plots")
    assert res.skipped == {}
    assert sorted(res.written) == sorted(PLOT_NAMES)
    for name, paths in res.written.items():
        png = [p for p in paths if p.suffix == ".png"][0]
        assert _png_ink(png) > 0.02, name
    ax = fig_cost_accuracy(rep).axes[0]
    assert ax.get_xlabel().startswith("GFLOPs per query")
    # the plotted points are the report's cells: (GFLOPs per query, accuracy) of every model cell
    plotted = sorted((float(x), float(y)) for ln in ax.get_lines() if ln.get_label().startswith("predictor ")
                     for x, y in zip(ln.get_xdata(), ln.get_ydata()))
    want = sorted(zip(model_cells["gflops_per_query"].astype(float), model_cells["accuracy"].astype(float)))
    np.testing.assert_allclose(np.array(plotted), np.array(want), rtol=1e-12)
    assert math.isfinite(float(cells["mean_compression_tokens"].iloc[0]))


def test_one_colour_per_model_across_plots(report):
    """A model keeps its colour in every plot: as a predictor (cost_accuracy's line, rate_distortion's
    and mi_accuracy's points) and as a compressor (the scaling plots' points)."""
    from matplotlib.colors import to_rgba

    from compressbench.analysis.plots import model_colors

    colors = {k: to_rgba(v) for k, v in model_colors(report).items()}
    assert len(set(colors.values())) == len(colors)  # distinct colours
    ca = fig_cost_accuracy(report).axes[0]
    rd = fig_rate_distortion(report).axes[0]
    ma = fig_mi_accuracy(report).axes[0]
    for pred in PREDICTOR_RD:
        (line,) = [ln for ln in ca.get_lines() if ln.get_label() == f"predictor {pred}"]
        (pts,) = [ln for ln in rd.get_lines() if ln.get_label() == pred]
        (mi,) = [ln for ln in ma.get_lines() if ln.get_label().startswith(f"predictor {pred}:")]
        assert to_rgba(line.get_color()) == to_rgba(pts.get_markeredgecolor()) == to_rgba(mi.get_markeredgecolor()) \
            == colors[pred]
    for fig in (fig_compressor_scaling(report), fig_mi_scaling(report)):
        for ax in fig.axes:
            for x, _, _, _, col in _bars(ax):
                assert col in {colors[c] for c in COMPRESSORS}
