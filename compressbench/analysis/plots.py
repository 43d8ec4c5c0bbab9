"""The method's figures, drawn from a run's report tables (matplotlib, Agg backend, PNG and SVG).

Seven plots, registered in :data:`PLOTS` (a :class:`compressbench.core.registry.PlotKind` each: its
function and what the run must have for it), each a function returning a matplotlib Figure, or
raising :class:`PlotSkipped` with the reason when the run's data cannot support it;
:func:`plot_report` logs the reason and moves on. A new plot is one entry in :data:`PLOTS` and one
function here (docs/architecture.md):

1. ``cost_accuracy``: accuracy (95% CI bars) vs API $ per query (GFLOPs per query when no role
   is a paid API), one marker per compressor, a line per predictor, the Pareto front, baselines
   (``identity`` = no compression) marked, and the offline router (:mod:`compressbench.analysis.route`):
   its τ frontier per predictor and signal and its held-out point at the best fixed compressor's budget;
2. ``compressor_scaling``: accuracy, compression length (tokens) and GFLOPs per compression vs
   compressor size (parameters), a point per model (named, in its colour) and predictor (a marker
   each, dodged), lines only within a family with >= 2 sizes, the no-compression accuracy as black
   lines;
3. ``mi_scaling``: MI (bits, log2) and bits per token vs compressor size, drawn the same way, the
   ``log2 N`` ceiling dotted;
4. ``rate_distortion``: distortion ``1 - accuracy`` vs rate (bits per token), one colour per
   predictor, with the fitted ``D(R) = C exp(-b R) + D0`` curve where the data supports a fit
   (else the points only, and the panel says why);
5. ``mi_accuracy``: accuracy (and reference-answer NLL, when the run has it) vs MI, a colour and a
   least-squares line per predictor (only where its Pearson r CI excludes 0), labelled with the report's Pearson r and Spearman rho (95%
   CIs) over that predictor's cells;
6. ``scaling_both``: accuracy when scaling the compressor (a marker per predictor) next to accuracy
   when scaling the predictor (a marker per compressor); needs >= 2 sizes of each;
7. ``usable_bits``: accuracy vs MI about the context beside accuracy vs usable bits about the
   answer (``predictor_mode: loglik``), per cell.

Every model keeps one colour in every panel and plot (:func:`model_colors`); no axis clips a CI bar.

Sizes and families come from the manifest's model info (``n_params``, ``family``), overridable with
``meta_overrides`` in :func:`compressbench.analysis.report.build_report` (:func:`compressbench.analysis.report.plot_run`
builds the report and draws it). matplotlib is imported inside
the functions.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from compressbench.analysis.route import best_fixed, curve_front
from compressbench.measure.baselines import baseline_kind
from compressbench.core.stats import rd_curve, spans_zero
from compressbench.core.errors import UsageError
from compressbench.core.registry import PlotKind, Registry
from compressbench.core.tables import fmt_ci
import textwrap

if TYPE_CHECKING:  # pragma: no cover  (plots read report tables; report imports plots, never the reverse)
    import pandas as pd

    from matplotlib.figure import Figure

log = logging.getLogger(__name__)


class Report(Protocol):
    """What the figures read of a :class:`compressbench.analysis.report.Report` (so plots needs no
    import of report, which imports plots to draw itself)."""

    cells: pd.DataFrame
    rate_distortion: pd.DataFrame


_MARKERS = "osD^v<>phP*X"


class PlotSkipped(Exception):
    """The run's data cannot support this plot; the message says why."""


@dataclass
class PlotResult:
    """Files written per plot name, and the reason for each plot that was skipped."""

    written: dict[str, list[Path]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def _colors():
    """The tab10 colour map (figures are built with ``matplotlib.figure.Figure``: no pyplot state)."""
    # lazy: matplotlib (the [plot] extra) loads only when drawing
    import matplotlib

    return matplotlib.colormaps["tab10"]


def _open_marker(j: int, color: Any) -> dict[str, Any]:
    """Point style of the j-th series where series can coincide (two predictors of one compression):
    a different open marker each, so a point on top of another leaves both visible."""
    return {"marker": "osD^v<>p"[j % 8], "linestyle": "none", "markerfacecolor": "none", "markeredgecolor": color,
            "markeredgewidth": 1.6, "markersize": 9 - 2 * (j % 3), "color": color}


def model_colors(report: Report) -> dict[str, Any]:
    """One colour per model, the same in every panel and every plot: the models that play a
    compressor or a predictor in the run, in name order, take the tab10 colours in turn (a model
    that is both compressor and predictor keeps one colour)."""
    cells = report.cells
    names = sorted({*map(str, cells.loc[~cells["is_baseline"], "compressor"]), *map(str, cells["predictor"])})
    colors = _colors()
    palette = [colors(i) for i in range(10) if i != 7]  # tab10 without its grey (the colour of lines and series keys)
    return {name: palette[i % len(palette)] for i, name in enumerate(names)}


def _figure(ncols: int, width: float = 5.2, height: float = 4.2) -> tuple[Figure, list[Any]]:
    # lazy: matplotlib (the [plot] extra) loads only when drawing
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _yerr(df: pd.DataFrame, col: str, lo: str, hi: str) -> np.ndarray | None:
    """Asymmetric error bars from CI columns; None when no CI is known."""
    if lo not in df or hi not in df:
        return None
    low = (df[col] - df[lo]).to_numpy(dtype=float)
    high = (df[hi] - df[col]).to_numpy(dtype=float)
    if not (np.isfinite(low).any() or np.isfinite(high).any()):
        return None
    return np.vstack([np.nan_to_num(np.clip(low, 0, None)), np.nan_to_num(np.clip(high, 0, None))])


def _varying(df: pd.DataFrame, cols: Sequence[str]) -> list[str]:
    return [c for c in cols if c in df and df[c].nunique(dropna=False) > 1]


def _label(row: Any, cols: Sequence[str]) -> str:
    return " · ".join(str(row[c]) for c in cols)


def _models(cells: pd.DataFrame) -> pd.DataFrame:
    return cells[~cells["is_baseline"]]


def _study(cells: pd.DataFrame, column: str = "in_study") -> pd.DataFrame:
    """The study cells (``in_study``: every compressor but ``empty``; ``compresses``: also without
    the identity; see :mod:`compressbench.measure.baselines`) of one MI scorer (the first in name order
    when a run has several; the report tabulates the rest)."""
    first = sorted(cells["scorer"].unique())[0] if len(cells) else None
    return cells[cells[column] & (cells["scorer"] == first)]


def _log_x_if_wide(ax: Any, x: np.ndarray) -> None:
    """Log x axis when every value is positive and they span more than 20x (zeros stay visible)."""
    x = x[np.isfinite(x)]
    if x.size and (x > 0).all() and x.max() / x.min() > 20:
        ax.set_xscale("log")


def format_params(n: float, _pos: Any = None) -> str:
    """A parameter count for an axis: 5e8 -> '500M', 1.5e9 -> '1.5B'."""
    if not (n and math.isfinite(n)) or n <= 0:
        return ""
    for scale, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


def _size_axis(ax: Any, sizes: Sequence[float] = ()) -> None:
    """Log x axis of model sizes with 1-2-5 ticks labelled '500M', '1B', '2B'; when the ``sizes``
    drawn span less than a decade, ticks at those sizes instead (1-2-5 ticks would crowd)."""
    # lazy: matplotlib (the [plot] extra) loads only when drawing
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter, NullLocator

    ax.set_xscale("log")
    known = sorted({float(v) for v in sizes if math.isfinite(v) and v > 0})
    if known and known[-1] / known[0] < 10:
        ax.xaxis.set_major_locator(FixedLocator(known))
        ax.xaxis.set_minor_locator(NullLocator())
    else:
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(format_params))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _finish_size_panel(ax: Any, ylabel: str, handles: Sequence[Any] = (), sizes: Sequence[float] = ()) -> None:
    """A panel against compressor size: size axis (with room for the dodged points), labels, and a
    legend of the models and series drawn (:func:`_draw_scaling`) and the labelled reference lines."""
    _size_axis(ax, sizes)
    ax.margins(x=0.15)
    ax.set_xlabel("compressor size (parameters)")
    ax.set_ylabel(ylabel)
    handles = [*handles, *ax.get_legend_handles_labels()[0]]
    if handles:
        ax.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2)


# ----------------------------------------------------------------------------- 1. cost-accuracy


#: Marker and legend text per kind of baseline compressor (colour = the predictor's).
_BASELINE_MARKERS = {"identity": "*", "empty": "X", "truncate": "P", "keep": "s", "other": "D"}
_BASELINE_LABELS = {"identity": "identity (no compression)", "empty": "empty (no context)",
                    "truncate": "truncate:<n> (first n tokens)", "keep": "keep:<k> (first k slot sentences)",
                    "other": "other baseline"}


def _baseline_kind(name: str) -> str:
    return baseline_kind(name) or "other"


def fig_cost_accuracy(report: Report) -> Figure:
    """Accuracy vs API $ per query (or GFLOPs per query), a line per predictor, Pareto front dashed."""
    cells = report.cells.copy()
    usd = cells["usd_per_query"]
    if np.isfinite(usd).any() and (usd.fillna(0) > 0).any():
        xcol, xlabel, pcol = "usd_per_query", "API $ per query", "pareto_usd"
    elif np.isfinite(cells["gflops_per_query"]).any():
        log.info("cost_accuracy: no paid-API dollars in this run; plotting against GFLOPs per query")
        xcol, xlabel, pcol = "gflops_per_query", "GFLOPs per query (compressor + predictor)", "pareto_gflops"
    else:
        raise PlotSkipped("neither API dollars nor FLOPs are known for any cell")
    cells = cells[np.isfinite(cells[xcol]) & np.isfinite(cells["accuracy"])]
    if cells.empty:
        raise PlotSkipped(f"no cell has both accuracy and {xlabel}")
    datasets = sorted(cells["dataset"].unique())
    fig, axes = _figure(len(datasets), width=7.0)
    compressors = sorted(_models(cells)["compressor"].unique())
    marker = {c: _MARKERS[i % len(_MARKERS)] for i, c in enumerate(compressors)}
    colors = _colors()
    model_color = model_colors(report)
    for ax, ds in zip(axes, datasets):
        sub = cells[cells["dataset"] == ds]
        series = ["predictor", *_varying(sub, ["prompt"])]
        pred_color: dict[str, Any] = {}
        for k, (key, grp) in enumerate(_models(sub).groupby(series, sort=True)):
            grp = grp.sort_values(xcol)
            color = model_color.get(str(grp["predictor"].iloc[0]), colors(k % 10))
            pred_color.setdefault(str(grp["predictor"].iloc[0]), color)
            ax.plot(grp[xcol], grp["accuracy"], "-", color=color, alpha=0.6,
                    label="predictor " + " · ".join(map(str, key if isinstance(key, tuple) else (key,))))
            yerr = _yerr(grp, "accuracy", "accuracy_ci_low", "accuracy_ci_high")
            for j, (_, row) in enumerate(grp.iterrows()):
                ax.errorbar([row[xcol]], [row["accuracy"]],
                            yerr=None if yerr is None else yerr[:, j:j + 1], fmt=marker[row["compressor"]],
                            color=color, markersize=7, capsize=3)
        base = sub[sub["is_baseline"]]
        base_err = _yerr(base, "accuracy", "accuracy_ci_low", "accuracy_ci_high")
        n_series = len(pred_color)
        for k, (_, row) in enumerate(base.iterrows()):
            kind = _baseline_kind(str(row["compressor"]))
            pred = str(row["predictor"])
            if pred not in pred_color:  # a predictor that only saw baselines
                pred_color[pred] = model_color.get(pred, colors(n_series % 10))
                n_series += 1
            ax.errorbar([row[xcol]], [row["accuracy"]], yerr=None if base_err is None else base_err[:, k:k + 1],
                        fmt=_BASELINE_MARKERS[kind], color=pred_color[pred], markeredgecolor="black",
                        markersize=14 if kind == "identity" else 9, capsize=3, alpha=0.85)
            if kind in ("keep", "truncate"):  # a ladder: say which rung
                ax.annotate(str(row["compressor"]).split(":", 1)[1], (row[xcol], row["accuracy"]), fontsize=6,
                            xytext=(4, -8), textcoords="offset points")
        _router_points(ax, report, ds, xcol, pred_color)
        front = sub[sub[pcol]].sort_values(xcol)
        if len(front):
            ax.step(front[xcol], front["accuracy"], where="post", linestyle="--", color="black",
                    linewidth=1.2, marker="o", markersize=16, markerfacecolor="none", label="Pareto front")
        ax.margins(x=0.2, y=0.08)
        _log_x_if_wide(ax, sub[xcol].to_numpy(dtype=float))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy")
        ax.set_title(f"Cost vs accuracy: {ds}")
        # lazy: matplotlib (the [plot] extra) loads only when drawing
        from matplotlib.lines import Line2D

        handles, _ = ax.get_legend_handles_labels()
        handles += [Line2D([], [], marker=marker[c], color="gray", linestyle="none", label=f"compressor {c}")
                    for c in compressors]
        kinds = {_baseline_kind(str(c)) for c in sub.loc[sub["is_baseline"], "compressor"]}
        handles += [Line2D([], [], marker=_BASELINE_MARKERS[kind], color="white", markeredgecolor="black",
                           markerfacecolor="gray", markersize=12 if kind == "identity" else 8, linestyle="none",
                           label=_BASELINE_LABELS[kind]) for kind in _BASELINE_MARKERS if kind in kinds]
        ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


#: Line style of the router's τ frontier per signal (cost_accuracy).
_ROUTER_STYLES = {"confidence": ":", "pointwise_mi_bits": "-."}


def _router_points(ax: Any, report: Report, ds: str, xcol: str, pred_color: dict[str, Any]) -> None:
    """The offline router on a cost-accuracy panel (:mod:`compressbench.analysis.route`): per
    predictor and signal, its accuracy-cost frontier over τ (all examples, thin line) and its
    held-out point at the best fixed compressor's budget (hollow diamond, accuracy CI). Drawn only
    where the router's cost unit is the panel's."""
    r = getattr(report, "router", None)
    if r is None or not len(r.curve):
        return
    unit = "$" if xcol == "usd_per_query" else "GFLOPs"
    curve = curve_front(r.curve[(r.curve["dataset"] == ds) & (r.curve["cost_unit"] == unit)])
    held = r.held_out[(r.held_out["dataset"] == ds) & (r.held_out["cost_unit"] == unit)]
    fixed = r.fixed[(r.fixed["dataset"] == ds) & (r.fixed["cost_unit"] == unit)]
    for (pred, sig), grp in curve.groupby(["predictor", "signal"], sort=True):
        color = pred_color.get(str(pred), "gray")
        ax.plot(grp["cost"], grp["accuracy"], _ROUTER_STYLES.get(str(sig), ":"), color=color, linewidth=1.2,
                marker=".", markersize=4, alpha=0.8, label=f"router τ frontier · {pred} · {sig}")
        best = best_fixed(fixed[fixed["predictor"] == pred])
        if best is None:
            continue
        h = held[(held["predictor"] == pred) & (held["signal"] == sig) & (held["budget_compressor"] == best["compressor"])]
        for _, row in h.iterrows():
            yerr = np.array([[max(row["accuracy"] - row["accuracy_ci_low"], 0)],
                             [max(row["accuracy_ci_high"] - row["accuracy"], 0)]])
            ax.errorbar([row["cost"]], [row["accuracy"]], yerr=np.nan_to_num(yerr), fmt="d", color=color,
                        markerfacecolor="none", markersize=11, markeredgewidth=1.6, capsize=3,
                        label=f"router held out · {pred} · {sig} (budget {best['compressor']})")


# ----------------------------------------------------------------------------- 2. compressor scaling


def _sized(cells: pd.DataFrame) -> pd.DataFrame:
    sized = _models(cells)
    sized = sized[np.isfinite(sized["compressor_params"]) & (sized["compressor_params"] > 0)]
    if sized.empty:
        raise PlotSkipped("no compressor has a known size (n_params in the manifest or meta overrides)")
    return sized.assign(compressor_family=sized["compressor_family"].replace("", "unknown family"))


#: Horizontal dodge between series at one compressor size, in decades of the log size axis (at
#: least; wider axes get 2% of their span), so two predictors' points never sit on each other.
DODGE_DECADES = 0.03


def _scaling_points(sized: pd.DataFrame, col: str, lo: str | None, hi: str | None,
                    series: Sequence[str]) -> pd.DataFrame:
    """One row per (series..., compressor): size ``x``, the mean of ``col`` as ``y`` and of its CI
    columns as ``lo``/``hi`` (``y`` itself without a CI), the compressor's family."""
    have_ci = lo is not None and hi is not None and lo in sized and hi in sized
    return sized.groupby([*series, "compressor"], sort=True).agg(
        x=("compressor_params", "first"), family=("compressor_family", "first"), y=(col, "mean"),
        lo=(lo if have_ci else col, "mean"), hi=(hi if have_ci else col, "mean")).reset_index()


def _draw_scaling(ax: Any, data: pd.DataFrame, series: Sequence[str], color: dict[str, Any],
                  series_name: Callable[[tuple[Any, ...]], str]) -> tuple[list[float], list[Any]]:
    """Draw one scaling panel; return every drawn y value and CI bound (for the axis limits) and
    the legend handles.

    Each (series, compressor) is one point with its 95% CI bar, in the compressor's model colour
    (:func:`model_colors`) with one marker per series; series sit side by side at a size (dodged by
    a few percent on the log axis). A grey line joins a family's compressors only where the family
    has >= 2 sizes (one size shows no scaling). The legend names every model with its size, every
    series by its marker, and every family line."""
    # lazy: matplotlib (the [plot] extra) loads only when drawing
    from matplotlib.lines import Line2D

    data = data[np.isfinite(data["y"])]
    if data.empty:
        return [], []
    keys = sorted({tuple(r) for r in data[list(series)].itertuples(index=False)}) if series else [()]
    span = float(np.log10(data["x"].max()) - np.log10(data["x"].min())) if len(data) else 0.0
    step = max(DODGE_DECADES, 0.02 * span)
    bounds: list[float] = []
    handles: list[Any] = []
    styles: dict[str, str] = {}  # line style per family (the same for every series)
    for j, key in enumerate(keys):
        sub = data[np.all([data[c] == v for c, v in zip(series, key)], axis=0)] if series else data
        factor = 10 ** (step * (j - (len(keys) - 1) / 2))
        marker = _MARKERS[j % len(_MARKERS)]
        for _, row in sub.sort_values("x").iterrows():
            low = max(float(row["y"] - row["lo"]), 0.0) if math.isfinite(row["lo"]) else 0.0
            high = max(float(row["hi"] - row["y"]), 0.0) if math.isfinite(row["hi"]) else 0.0
            ax.errorbar([row["x"] * factor], [row["y"]], yerr=[[low], [high]], fmt=marker, capsize=3,
                        color=color.get(str(row["compressor"]), "gray"), markersize=7,
                        label=f"_{row['compressor']}")  # named in the legend below, once per model
            bounds += [float(row["y"]) - low, float(row["y"]) + high]
        for fam, grp in sub.groupby("family", sort=True):
            if grp["x"].nunique() >= 2:
                grp = grp.sort_values("x")
                style = styles.setdefault(str(fam), ("-", "--", "-.", (0, (5, 1, 1, 1, 1, 1)))[len(styles) % 4])  # ':' is the ceiling
                ax.plot(grp["x"] * factor, grp["y"], color="gray", alpha=0.7, zorder=1, linestyle=style,
                        label=f"_family {fam}")
        if len(keys) > 1:
            handles.append(Line2D([], [], marker=marker, color="gray", linestyle="none", label=series_name(key)))
    handles += [Line2D([], [], color="gray", linestyle=style, label=f"family {fam}") for fam, style in styles.items()]
    models = data.drop_duplicates("compressor").sort_values(["x", "compressor"])
    handles = [Line2D([], [], marker="o", color=color.get(str(r["compressor"]), "gray"), linestyle="none",
                      label=f"{r['compressor']} ({format_params(r['x'])})") for _, r in models.iterrows()] + handles
    return bounds, handles


def _set_ylim_to(ax: Any, values: Sequence[float], *, floor: float | None = None) -> None:
    """y limits that hold every value (points, CI bounds, reference lines) with a 6% margin."""
    vals = [v for v in values if math.isfinite(v)]
    if not vals:
        return
    lo, hi = min(vals), max(vals)
    pad = 0.06 * (hi - lo) if hi > lo else 0.05 * (abs(hi) or 1.0)
    ax.set_ylim(lo - pad if floor is None else max(floor, lo - pad), hi + pad)


def fig_compressor_scaling(report: Report) -> Figure:
    """Accuracy, compression tokens and GFLOPs per compression vs compressor size: a point per model
    compressor (named, in its model colour) and predictor (a marker each, dodged), lines only within
    a family with >= 2 sizes, the no-compression accuracy as black lines; no CI bar is clipped."""
    sized = _sized(report.cells)
    color = model_colors(report)
    fig, axes = _figure(3, width=5.0)
    panels = [("accuracy", "accuracy", ["predictor", "dataset", "prompt"]),
              ("mean_compression_tokens", "compression length (tokens)", ["dataset", "prompt"]),
              ("gflops_per_compression", "GFLOPs per compression", ["dataset", "prompt"])]
    for ax, (col, ylabel, extra) in zip(axes, panels):
        series = _varying(sized, extra)
        if col == "accuracy" and "predictor" not in series:
            series = ["predictor", *series]
        data = _scaling_points(sized, col, f"{col}_ci_low", f"{col}_ci_high", series)
        name = (lambda key, series=series: " · ".join(  # noqa: E731
            f"predictor {v}" if c == "predictor" else str(v) for c, v in zip(series, key)))
        ys, handles = _draw_scaling(ax, data, series, color, name)
        if col == "accuracy":
            ident = report.cells[report.cells["compressor"] == "identity"]
            for k, (_, row) in enumerate(ident.drop_duplicates(["dataset", "predictor"]).iterrows()):
                if math.isfinite(row["accuracy"]):
                    ax.axhline(row["accuracy"], linestyle=("--", "-.", ":")[k % 3], color="black", linewidth=1,
                               label=f"no compression → predictor {row['predictor']}")
                    ys.append(float(row["accuracy"]))
        _set_ylim_to(ax, ys, floor=0.0 if col != "accuracy" else None)
        _finish_size_panel(ax, ylabel, handles, data["x"])
    fig.suptitle("Scaling the compressor")
    return fig


# ----------------------------------------------------------------------------- 3. MI scaling


def fig_mi_scaling(report: Report) -> Figure:
    """MI (bits) and bits per token vs compressor size: a point per model compressor (named, in its
    model colour), lines only within a family with >= 2 sizes, the log2 N ceiling dotted."""
    sized = _sized(report.cells)
    if not np.isfinite(sized["mi_bits"]).any():
        raise PlotSkipped("no cell has an MI estimate")
    # MI depends on compressor, scorer and data, not on the predictor: one point per compressor
    sized = sized.drop_duplicates(["dataset", "compressor", "prompt"])
    color = model_colors(report)
    fig, axes = _figure(2, width=5.4)
    series = _varying(sized, ["dataset", "prompt"])
    panels = [("mi_bits", "mi_ci_low_bits", "mi_ci_high_bits", "MI (bits, log2)"),
              ("bits_per_token", "bits_per_token_ci_low", "bits_per_token_ci_high", "bits per compression token")]
    for ax, (col, lo, hi, ylabel) in zip(axes, panels):
        data = _scaling_points(sized, col, lo, hi, series)
        ys, handles = _draw_scaling(ax, data, series, color, lambda key: " · ".join(map(str, key)))
        if col == "mi_bits":
            for ceil in sorted(set(sized["ceiling_bits"].dropna())):
                ax.axhline(ceil, linestyle=":", color="black", linewidth=1.5,
                           label=f"log2 N ceiling = {ceil:.2f} bits")
                ys.append(float(ceil))
        _set_ylim_to(ax, [0.0, *ys], floor=0.0)
        _finish_size_panel(ax, ylabel, handles, data["x"])
    fig.suptitle("Information in the compressions vs compressor size")
    return fig


# ----------------------------------------------------------------------------- 4. rate-distortion


def fig_rate_distortion(report: Report) -> Figure:
    """Distortion 1 - accuracy vs bits per token, a colour per predictor, and the fitted exponential
    curve of each predictor's cells *only where the data supports it* (the report's fit has no note:
    :func:`compressbench.core.stats.fit_rate_distortion`); otherwise the points alone and, in the
    panel, why no curve is drawn."""
    pts = _study(report.cells, "compresses")
    pts = pts[np.isfinite(pts["bits_per_token"]) & np.isfinite(pts["distortion"])]
    if pts.empty:
        raise PlotSkipped("no compressing cell (model, truncate or keep compressor) has both a rate (bits per "
                          "token) and an accuracy")
    color = model_colors(report)
    keys = report.group_keys
    datasets = sorted(pts["dataset"].unique())
    fig, axes = _figure(len(datasets), width=6.0)
    for ax, ds in zip(axes, datasets):
        sub = pts[pts["dataset"] == ds]
        varying = _varying(sub, [k for k in keys if k != "dataset"])
        why_not = []
        for j, (key, grp) in enumerate(sub.groupby(list(keys), sort=True)):
            group = dict(zip(keys, key))
            c = color.get(str(group["predictor"]), "gray")
            name = " · ".join([*(str(group[k]) for k in ("scorer", "predictor_mode") if k in varying),
                               str(group["predictor"])])
            ax.plot(grp["bits_per_token"], grp["distortion"], label=name, **_open_marker(j, c))
            for _, row in grp.iterrows():
                ax.annotate(str(row["compressor"]), (row["bits_per_token"], row["distortion"]), fontsize=6,
                            xytext=(3, 3), textcoords="offset points")
            fr = report.fit(group)
            if fr is not None and not fr["note"]:
                r = np.linspace(0, max(grp["bits_per_token"].max() * 1.1, 1e-6), 200)
                ax.plot(r, rd_curve(r, fr["c"], fr["b"], fr["d0"]), "-", color=c,
                        label=f"fit: {fr['c']:.3g}·exp(−{fr['b']:.3g}·R) + {fr['d0']:.3g}, R² = {fr['r2']:.2f}")
            else:
                why_not.append(f"predictor {name}: {fr['note'] if fr is not None else 'no fit computed'}")
        if why_not:
            text = "No curve drawn:\n" + "\n".join(textwrap.fill(w, 70) for w in why_not)
            ax.text(0.02, 0.02, text, transform=ax.transAxes, fontsize=6, va="bottom", ha="left",
                    bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "gray", "alpha": 0.9},
                    gid="rd-no-fit")
        ax.set_xlabel("rate R (bits per compression token)")
        ax.set_ylabel("distortion (1 − accuracy)")
        ax.set_title(f"Rate–distortion: {ds}")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    return fig


# ----------------------------------------------------------------------------- 5. MI vs accuracy


def _series_label(group: dict[str, Any], varying: Sequence[str]) -> str:
    """``predictor P`` with the dataset, MI scorer and predictor mode prefixed when they vary."""
    extra = [str(group[k]) for k in ("dataset", "scorer", "predictor_mode") if k in varying]
    return " · ".join([*extra, f"predictor {group['predictor']}"])


def correlation_text(row: Any) -> str:
    """A correlation row of the report (``Report.correlations``) as the plots print it: Pearson r
    and Spearman rho with their 95% CIs over n cells, or the reason there is none."""
    if row is None:
        return "no correlation computed"
    if row["note"]:
        return str(row["note"])
    spans = [s for s, lo, hi in (("r", row["pearson_ci_low"], row["pearson_ci_high"]),
                                 ("ρ", row["spearman_ci_low"], row["spearman_ci_high"]))
             if spans_zero(float(lo), float(hi))]
    return (f"r = {fmt_ci(row['pearson_r'], row['pearson_ci_low'], row['pearson_ci_high'])}, "
            f"ρ = {fmt_ci(row['spearman_rho'], row['spearman_ci_low'], row['spearman_ci_high'])}, "
            f"{int(row['n'])} cells" + (f" ({' and '.join(spans)}: CI spans 0)" if spans else ""))


def fig_mi_accuracy(report: Report) -> Figure:
    """Accuracy (and reference NLL when present) vs MI across one predictor's cells, a colour per
    predictor with its least-squares line, labelled with the report's own correlation of those cells
    (Pearson r and Spearman rho with 95% CIs, per :data:`compressbench.analysis.report.GROUP_KEYS`)."""
    keys = report.group_keys
    pts = _study(report.cells)
    panels = [("accuracy", "accuracy")]
    if np.isfinite(pts["mean_ref_nll_nats"]).sum() >= 3:
        panels.append(("mean_ref_nll_nats", "reference-answer NLL (nats per answer)"))
    usable = [(c, l) for c, l in panels if (np.isfinite(pts["mi_bits"]) & np.isfinite(pts[c])).sum() >= 3]
    if not usable:
        raise PlotSkipped("fewer than 3 cells (other than the empty baseline) have both MI and accuracy "
                          "(or reference NLL)")
    color = model_colors(report)
    fig, axes = _figure(len(usable), width=6.0)
    for ax, (col, ylabel) in zip(axes, usable):
        sub = pts[np.isfinite(pts["mi_bits"]) & np.isfinite(pts[col])]
        varying = _varying(sub, keys)
        for j, (key, grp) in enumerate(sub.groupby(list(keys), sort=True)):
            group = dict(zip(keys, key))
            c = color.get(str(group["predictor"]), "gray")
            row = report.correlation(group, "mi_bits", col)
            ax.plot(grp["mi_bits"], grp[col], label=f"{_series_label(group, varying)}: {correlation_text(row)}",
                    **_open_marker(j, c))
            for _, r in grp.iterrows():
                ax.annotate(str(r["compressor"]), (r["mi_bits"], r[col]), fontsize=6, xytext=(3, 3),
                            textcoords="offset points")
            x, y = grp["mi_bits"].to_numpy(float), grp[col].to_numpy(float)
            # a line only where the data supports one: Pearson r's CI excludes 0 (else the label says so)
            if row is not None and not row["note"] and not spans_zero(float(row["pearson_ci_low"]),
                                                                      float(row["pearson_ci_high"])):
                slope, icpt = np.polyfit(x, y, 1)
                xs = np.linspace(x.min(), x.max(), 50)
                ax.plot(xs, slope * xs + icpt, "-", color=c, linewidth=1, alpha=0.7,
                        label=f"least-squares line, {_series_label(group, varying)}")
        ax.set_xlabel("MI (bits, log2)")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.15))
    fig.suptitle("Does MI predict downstream quality? (per predictor)")
    return fig


# ----------------------------------------------------------------------------- 6. scaling both


def fig_scaling_both(report: Report) -> Figure:
    """Accuracy vs compressor size (a marker per predictor) beside accuracy vs predictor size (a
    marker per compressor). In each panel a point is in the colour of the model on the x axis
    (:func:`model_colors`), named with its size; series at one size are dodged; lines join only the
    models of one family with >= 2 sizes; no CI bar is clipped."""
    pts = _models(report.cells)
    pts = pts[np.isfinite(pts["compressor_params"]) & np.isfinite(pts["predictor_params"])
              & np.isfinite(pts["accuracy"])]
    n_c, n_p = pts["compressor_params"].nunique(), pts["predictor_params"].nunique()
    if n_c < 2 or n_p < 2:
        raise PlotSkipped(f"needs >= 2 compressor sizes and >= 2 predictor sizes with known parameters "
                          f"(have {n_c} and {n_p})")
    pts = pts.assign(compressor_family=pts["compressor_family"].replace("", "unknown family"),
                     predictor_family=pts["predictor_family"].replace("", "unknown family"))
    color = model_colors(report)
    fig, axes = _figure(2, width=5.6)
    # the right panel is the left one with the roles swapped: the predictor is the model on the x axis
    swapped = pts.rename(columns={"compressor": "_c", "predictor": "_p"}).assign(
        compressor=lambda d: d["_p"], predictor=lambda d: d["_c"],
        compressor_params=pts["predictor_params"].to_numpy(), compressor_family=pts["predictor_family"].to_numpy())
    ys: list[float] = []
    for ax, data, other, xlabel in ((axes[0], pts, "predictor", "compressor size (parameters)"),
                                    (axes[1], swapped, "compressor", "predictor size (parameters)")):
        points = _scaling_points(data, "accuracy", "accuracy_ci_low", "accuracy_ci_high", ["predictor"])
        bounds, handles = _draw_scaling(ax, points, ["predictor"], color, lambda key, o=other: f"{o} {key[0]}")
        ys += bounds
        _size_axis(ax, points["x"])
        ax.margins(x=0.15)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy")
        ax.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)
    axes[0].set_title("scaling the compressor")
    axes[1].set_title("scaling the predictor")
    for ax in axes:
        _set_ylim_to(ax, ys)  # one y range for both panels
    fig.suptitle("Where to spend parameters: compressor or predictor")
    return fig


# ----------------------------------------------------------------------------- 7. usable bits


def fig_usable_bits(report: Report) -> Figure:
    """Accuracy vs MI about the context (left) and vs usable bits about the answer (right), one
    colour per predictor, a label per compressor, 95% CI bars on both axes."""
    cells = report.cells
    if "usable_bits" not in cells or not np.isfinite(cells["usable_bits"]).any():
        raise PlotSkipped("no cell has usable bits about the answer (they need predictor_mode: loglik)")
    first = sorted(cells["scorer"].unique())[0]
    pts = cells[(cells["scorer"] == first) & np.isfinite(cells["accuracy"])]
    colors = _colors()
    fig, axes = _figure(2, width=5.6)
    panels = [("mi_bits", "mi_ci_low_bits", "mi_ci_high_bits", "MI about the context (bits, log2)"),
              ("usable_bits", "usable_bits_ci_low", "usable_bits_ci_high",
               "usable bits about the answer: log2 q(a*|z) − log2 q(a*|empty)")]
    preds = sorted(pts["predictor"].unique())
    for ax, (col, lo, hi, xlabel) in zip(axes, panels):
        sub = pts[np.isfinite(pts[col])]
        span = float(np.ptp(sub[col])) if len(sub) else 0.0
        for k, pred in enumerate(preds):
            grp = sub[sub["predictor"] == pred]
            if grp.empty:
                continue
            # dodge the predictors sideways (MI about the context is the same for every predictor)
            dx = (k - (len(preds) - 1) / 2) * 0.012 * (span or 1.0)
            xerr = _yerr(grp, col, lo, hi)
            yerr = _yerr(grp, "accuracy", "accuracy_ci_low", "accuracy_ci_high")
            ax.errorbar(grp[col] + dx, grp["accuracy"], xerr=xerr, yerr=yerr, fmt=_MARKERS[k % len(_MARKERS)],
                        color=colors(k % 10), capsize=2, elinewidth=0.8, markersize=6, linestyle="none",
                        label=f"predictor {pred}")
            for _, row in grp.iterrows():
                ax.annotate(str(row["compressor"]), (row[col] + dx, row["accuracy"]), fontsize=6, xytext=(4, -9 * k + 3),
                            textcoords="offset points", color=colors(k % 10))
        if col == "usable_bits":
            for bound in sorted(set(pts["usable_bound_bits"].dropna())):
                ax.axvline(bound, linestyle=":", color="black", linewidth=1,
                           label=f"log2 #options = {bound:.2g} bits (uniform without context)")
            ax.axvline(0.0, color="gray", linewidth=0.8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy")
        ax.legend(fontsize=7, loc="lower right")
    axes[0].set_title("accuracy vs information about the context")
    axes[1].set_title("accuracy vs usable information about the answer")
    fig.suptitle("MI about the context vs usable bits about the answer (per cell; bits, log2)")
    return fig


def _plot(fn: str, needs: str) -> PlotKind:
    return PlotKind(f"compressbench.analysis.plots:{fn}", needs)


#: plot name -> its descriptor (``fn(report) -> Figure``, raising PlotSkipped with the reason);
#: :func:`plot_report` draws them in this order. A new plot is one entry here and its function.
PLOTS: Registry[PlotKind] = Registry("plot", {
    "cost_accuracy": _plot("fig_cost_accuracy", "accuracy and API $ or FLOPs per query of some cell"),
    "compressor_scaling": _plot("fig_compressor_scaling", "compressors of known size (n_params)"),
    "mi_scaling": _plot("fig_mi_scaling", "an MI estimate of compressors of known size"),
    "rate_distortion": _plot("fig_rate_distortion", "compressing cells with a rate (bits per token) and accuracy"),
    "mi_accuracy": _plot("fig_mi_accuracy", ">= 3 cells with MI and accuracy (or reference NLL)"),
    "scaling_both": _plot("fig_scaling_both", ">= 2 compressor sizes and >= 2 predictor sizes"),
    "usable_bits": _plot("fig_usable_bits", "usable bits about the answer (predictor_mode: loglik)"),
})
#: The plot names, in drawing order (read from :data:`PLOTS`).
PLOT_NAMES: tuple[str, ...] = PLOTS.names()


def plot_report(report: Report, out_dir: str | Path, *, formats: Sequence[str] = ("png", "svg"),
                names: Sequence[str] | None = None, dpi: int = 120) -> PlotResult:
    """Draw every plot the run supports into ``out_dir/<name>.<fmt>``; skipped plots are logged
    with their reason and listed in the result."""
    bad = [f for f in formats if f not in ("png", "svg")]
    if bad:
        raise UsageError(f"unknown plot format(s) {bad}; choose png and/or svg")
    for n in names or ():
        if n not in PLOTS:
            raise PLOTS.unknown(n)  # a ConfigError (UsageError) with a "did you mean"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = PlotResult()
    for name in names or PLOTS.names():
        try:
            fig = PLOTS.load(name)(report)
        except PlotSkipped as why:
            log.info("plot %s skipped: %s", name, why)
            result.skipped[name] = str(why)
            continue
        paths = []
        for fmt in formats:
            p = out / f"{name}.{fmt}"
            fig.savefig(p, format=fmt, dpi=dpi)
            paths.append(p)
        result.written[name] = paths
    return result
