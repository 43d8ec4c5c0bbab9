"""The method's figures, drawn from a run's report tables (matplotlib, Agg backend, PNG and SVG).

Six plots (each a function returning a matplotlib Figure, or raising :class:`PlotSkipped` with the
reason when the run's data cannot support it; :func:`plot_report` logs the reason and moves on):

1. ``cost_accuracy``: accuracy (95% CI bars) vs API $ per query (GFLOPs per query when no role
   is a paid API), one marker per compressor, a line per predictor, the Pareto front, baselines
   (``identity`` = no compression) marked;
2. ``compressor_scaling``: accuracy, compression length (tokens) and GFLOPs per compression vs
   compressor size (parameters), a line per family, the no-compression accuracy as a dashed line;
3. ``mi_scaling``: MI (bits, log2) and bits per token vs compressor size, a line per family, the
   ``log2 N`` ceiling dotted;
4. ``rate_distortion``: distortion ``1 - accuracy`` vs rate (bits per token), one colour per
   predictor, with the fitted ``D(R) = C exp(-b R) + D0`` curve where the data supports a fit
   (else the points only, and the panel says why);
5. ``mi_accuracy``: accuracy (and reference-answer NLL, when the run has it) vs MI, a colour and a
   least-squares line per predictor, labelled with the report's Pearson r and Spearman rho (95%
   CIs) over that predictor's cells;
6. ``scaling_both``: accuracy when scaling the compressor (a line per predictor) next to accuracy
   when scaling the predictor (a line per compressor); needs >= 2 sizes of each.

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
from typing import TYPE_CHECKING, Any

import numpy as np

from compressbench.measure.baselines import baseline_kind
from compressbench.core.stats import rd_curve, spans_zero

if TYPE_CHECKING:  # pragma: no cover  (plots read report tables; report imports plots, never the reverse)
    import pandas as pd

    from compressbench.analysis.report import Report
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

PLOT_NAMES: tuple[str, ...] = ("cost_accuracy", "compressor_scaling", "mi_scaling", "rate_distortion",
                               "mi_accuracy", "scaling_both")
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
    import matplotlib

    return matplotlib.colormaps["tab10"]


def model_colors(report: Report) -> dict[str, Any]:
    """One colour per model, the same in every panel and every plot: the models that play a
    compressor or a predictor in the run, in name order, take the tab10 colours in turn (a model
    that is both compressor and predictor keeps one colour)."""
    cells = report.cells
    names = sorted({*map(str, cells.loc[~cells["is_baseline"], "compressor"]), *map(str, cells["predictor"])})
    colors = _colors()
    return {name: colors(i % 10) for i, name in enumerate(names)}


def _figure(ncols: int, width: float = 5.2, height: float = 4.2) -> tuple[Figure, list[Any]]:
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


def _size_axis(ax: Any) -> None:
    """Log x axis of model sizes with 1-2-5 ticks labelled '500M', '1B', '2B'."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(format_params))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _finish_size_panel(ax: Any, ylabel: str) -> None:
    """A panel against compressor size: size axis, labels, and a legend when something is labelled."""
    _size_axis(ax)
    ax.set_xlabel("compressor size (parameters)")
    ax.set_ylabel(ylabel)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


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
    for ax, ds in zip(axes, datasets):
        sub = cells[cells["dataset"] == ds]
        series = ["predictor", *_varying(sub, ["prompt"])]
        pred_color: dict[str, Any] = {}
        for k, (key, grp) in enumerate(_models(sub).groupby(series, sort=True)):
            grp = grp.sort_values(xcol)
            color = colors(k % 10)
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
                pred_color[pred] = colors(n_series % 10)
                n_series += 1
            ax.errorbar([row[xcol]], [row["accuracy"]], yerr=None if base_err is None else base_err[:, k:k + 1],
                        fmt=_BASELINE_MARKERS[kind], color=pred_color[pred], markeredgecolor="black",
                        markersize=14 if kind == "identity" else 9, capsize=3, alpha=0.85)
            if kind in ("keep", "truncate"):  # a ladder: say which rung
                ax.annotate(str(row["compressor"]).split(":", 1)[1], (row[xcol], row["accuracy"]), fontsize=6,
                            xytext=(4, -8), textcoords="offset points")
        front = sub[sub[pcol]].sort_values(xcol)
        if len(front):
            ax.step(front[xcol], front["accuracy"], where="post", linestyle="--", color="black",
                    linewidth=1.2, marker="o", markersize=16, markerfacecolor="none", label="Pareto front")
        ax.margins(x=0.2, y=0.08)
        _log_x_if_wide(ax, sub[xcol].to_numpy(dtype=float))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy")
        ax.set_title(f"Cost vs accuracy: {ds}")
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


# ----------------------------------------------------------------------------- 2. compressor scaling


def _sized(cells: pd.DataFrame) -> pd.DataFrame:
    sized = _models(cells)
    sized = sized[np.isfinite(sized["compressor_params"]) & (sized["compressor_params"] > 0)]
    if sized.empty:
        raise PlotSkipped("no compressor has a known size (n_params in the manifest or meta overrides)")
    return sized.assign(compressor_family=sized["compressor_family"].replace("", "unknown family"))


def fig_compressor_scaling(report: Report) -> Figure:
    """Accuracy, compression tokens and GFLOPs per compression vs compressor size, a line per family."""
    sized = _sized(report.cells)
    fig, axes = _figure(3, width=4.6)
    panels = [("accuracy", "accuracy", ["predictor", "dataset", "prompt"]),
              ("mean_compression_tokens", "compression length (tokens)", ["dataset", "prompt"]),
              ("gflops_per_compression", "GFLOPs per compression", ["dataset", "prompt"])]
    for ax, (col, ylabel, extra) in zip(axes, panels):
        keys = ["compressor_family", *_varying(sized, extra)]
        data = sized.groupby([*keys, "compressor"], sort=True).agg(
            x=("compressor_params", "first"), y=(col, "mean"),
            lo=(f"{col}_ci_low", "mean") if f"{col}_ci_low" in sized else (col, "mean"),
            hi=(f"{col}_ci_high", "mean") if f"{col}_ci_high" in sized else (col, "mean")).reset_index()
        for key, grp in data.groupby(keys, sort=True):
            grp = grp.sort_values("x")
            ok = np.isfinite(grp["y"])
            if not ok.any():
                continue
            grp = grp[ok]
            yerr = np.vstack([np.clip(grp["y"] - grp["lo"], 0, None), np.clip(grp["hi"] - grp["y"], 0, None)])
            ax.errorbar(grp["x"], grp["y"], yerr=np.nan_to_num(yerr), fmt="o-", capsize=3,
                        label=" · ".join(map(str, key if isinstance(key, tuple) else (key,))))
        if col == "accuracy":
            ident = report.cells[report.cells["compressor"] == "identity"]
            ys = [v for v in data["y"] if math.isfinite(v)]
            for k, (_, row) in enumerate(ident.drop_duplicates(["dataset", "predictor"]).iterrows()):
                if math.isfinite(row["accuracy"]):
                    ax.axhline(row["accuracy"], linestyle=("--", "-.", ":")[k % 3], color="black", linewidth=1,
                               label=f"no compression → {row['predictor']}")
                    ys.append(row["accuracy"])
            if ys:
                pad = 0.05 * (max(ys) - min(ys) or 1.0)
                ax.set_ylim(min(ys) - pad - 0.05, max(ys) + pad + 0.05)
        _finish_size_panel(ax, ylabel)
    fig.suptitle("Scaling the compressor")
    return fig


# ----------------------------------------------------------------------------- 3. MI scaling


def fig_mi_scaling(report: Report) -> Figure:
    """MI (bits) and bits per token vs compressor size, a line per family, log2 N ceiling dotted."""
    sized = _sized(report.cells)
    if not np.isfinite(sized["mi_bits"]).any():
        raise PlotSkipped("no cell has an MI estimate")
    # MI depends on compressor, scorer and data, not on the predictor: one point per compressor
    sized = sized.drop_duplicates(["dataset", "compressor", "prompt"])
    fig, axes = _figure(2)
    keys = ["compressor_family", *_varying(sized, ["dataset", "prompt"])]
    panels = [("mi_bits", "mi_ci_low_bits", "mi_ci_high_bits", "MI (bits, log2)"),
              ("bits_per_token", "bits_per_token_ci_low", "bits_per_token_ci_high", "bits per compression token")]
    for ax, (col, lo, hi, ylabel) in zip(axes, panels):
        for key, grp in sized.groupby(keys, sort=True):
            grp = grp.sort_values("compressor_params")
            grp = grp[np.isfinite(grp[col])]
            if grp.empty:
                continue
            ax.errorbar(grp["compressor_params"], grp[col], yerr=_yerr(grp, col, lo, hi), fmt="o-", capsize=3,
                        label=" · ".join(map(str, key if isinstance(key, tuple) else (key,))))
        if col == "mi_bits":
            for ceil in sorted(set(sized["ceiling_bits"].dropna())):
                ax.axhline(ceil, linestyle=":", color="black", linewidth=1.5,
                           label=f"log2 N ceiling = {ceil:.2f} bits")
            top = max([*sized["ceiling_bits"].dropna(), *sized["mi_ci_high_bits"].dropna(), *sized["mi_bits"].dropna()])
            ax.set_ylim(0, top * 1.08 if top > 0 else 1.0)
        else:
            ax.set_ylim(bottom=0)
        _finish_size_panel(ax, ylabel)
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
        for key, grp in sub.groupby(list(keys), sort=True):
            group = dict(zip(keys, key))
            c = color.get(str(group["predictor"]), "gray")
            name = " · ".join([*(str(group[k]) for k in ("scorer", "predictor_mode") if k in varying),
                               str(group["predictor"])])
            ax.plot(grp["bits_per_token"], grp["distortion"], "o", color=c, label=name)
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
            import textwrap

            text = "No curve drawn:\n" + "\n".join(textwrap.fill(w, 70) for w in why_not)
            ax.text(0.02, 0.02, text, transform=ax.transAxes, fontsize=6, va="bottom", ha="left",
                    bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "gray", "alpha": 0.9},
                    gid="rd-no-fit")
        ax.set_xlabel("rate R (bits per compression token)")
        ax.set_ylabel("distortion (1 − accuracy)")
        ax.set_title(f"Rate–distortion: {ds}")
        ax.legend(fontsize=7, loc="upper right")
    return fig


# ----------------------------------------------------------------------------- 5. MI vs accuracy


def _series_label(group: dict[str, Any], varying: Sequence[str]) -> str:
    """``predictor P`` with the dataset, MI scorer and predictor mode prefixed when they vary."""
    extra = [str(group[k]) for k in ("dataset", "scorer", "predictor_mode") if k in varying]
    return " · ".join([*extra, f"predictor {group['predictor']}"])


def correlation_text(row: Any) -> str:
    """A correlation row of the report (``Report.correlations``) as the plots print it: Pearson r
    and Spearman rho with their 95% CIs over n cells, or the reason there is none."""
    from compressbench.core.tables import fmt_ci

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
        for key, grp in sub.groupby(list(keys), sort=True):
            group = dict(zip(keys, key))
            c = color.get(str(group["predictor"]), "gray")
            row = report.correlation(group, "mi_bits", col)
            ax.plot(grp["mi_bits"], grp[col], "o", color=c,
                    label=f"{_series_label(group, varying)}: {correlation_text(row)}")
            for _, r in grp.iterrows():
                ax.annotate(str(r["compressor"]), (r["mi_bits"], r[col]), fontsize=6, xytext=(3, 3),
                            textcoords="offset points")
            x, y = grp["mi_bits"].to_numpy(float), grp[col].to_numpy(float)
            if row is not None and not row["note"]:
                slope, icpt = np.polyfit(x, y, 1)
                xs = np.linspace(x.min(), x.max(), 50)
                ax.plot(xs, slope * xs + icpt, "-", color=c, linewidth=1, alpha=0.7,
                        label=f"least-squares line, {_series_label(group, varying)}")
        ax.set_xlabel("MI (bits, log2)")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.15))
    fig.suptitle("Does MI predict downstream quality? (per predictor: each compressor's MI once)")
    return fig


# ----------------------------------------------------------------------------- 6. scaling both


def fig_scaling_both(report: Report) -> Figure:
    """Accuracy vs compressor size (line per predictor) beside accuracy vs predictor size (line per compressor)."""
    pts = _models(report.cells)
    pts = pts[np.isfinite(pts["compressor_params"]) & np.isfinite(pts["predictor_params"])
              & np.isfinite(pts["accuracy"])]
    n_c, n_p = pts["compressor_params"].nunique(), pts["predictor_params"].nunique()
    if n_c < 2 or n_p < 2:
        raise PlotSkipped(f"needs >= 2 compressor sizes and >= 2 predictor sizes with known parameters "
                          f"(have {n_c} and {n_p})")
    pts = pts.assign(compressor_family=pts["compressor_family"].replace("", "unknown family"))
    pts = pts.groupby(["compressor", "predictor"], sort=True).agg(
        cp=("compressor_params", "first"), pp=("predictor_params", "first"),
        fam=("compressor_family", "first"), acc=("accuracy", "mean")).reset_index()
    fig, axes = _figure(2)
    axes[1].sharey(axes[0])
    for (pred, fam), grp in pts.groupby(["predictor", "fam"], sort=True):
        grp = grp.sort_values("cp")
        axes[0].plot(grp["cp"], grp["acc"], "o-", label=f"predictor {pred} · {fam} compressors")
    for comp, grp in pts.groupby("compressor", sort=True):
        grp = grp.sort_values("pp")
        axes[1].plot(grp["pp"], grp["acc"], "s--", label=f"compressor {comp}")
    axes[0].set_xlabel("compressor size (parameters)")
    axes[1].set_xlabel("predictor size (parameters)")
    for ax, title in zip(axes, ["scaling the compressor", "scaling the predictor"]):
        _size_axis(ax)
        ax.set_ylabel("accuracy")
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.suptitle("Where to spend parameters: compressor or predictor")
    return fig


PLOTS: dict[str, Callable[[Report], Figure]] = {
    "cost_accuracy": fig_cost_accuracy,
    "compressor_scaling": fig_compressor_scaling,
    "mi_scaling": fig_mi_scaling,
    "rate_distortion": fig_rate_distortion,
    "mi_accuracy": fig_mi_accuracy,
    "scaling_both": fig_scaling_both,
}


def plot_report(report: Report, out_dir: str | Path, *, formats: Sequence[str] = ("png", "svg"),
                names: Sequence[str] | None = None, dpi: int = 120) -> PlotResult:
    """Draw every plot the run supports into ``out_dir/<name>.<fmt>``; skipped plots are logged
    with their reason and listed in the result."""
    from compressbench.core.errors import UsageError

    bad = [f for f in formats if f not in ("png", "svg")]
    if bad:
        raise UsageError(f"unknown plot format(s) {bad}; choose png and/or svg")
    unknown = [n for n in (names or []) if n not in PLOTS]
    if unknown:
        raise UsageError(f"unknown plot(s) {unknown}; known plots: {', '.join(PLOT_NAMES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = PlotResult()
    for name in names or PLOT_NAMES:
        try:
            fig = PLOTS[name](report)
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
