"""Reports from a run directory (``docs/run_format.md``): per-cell tables with confidence intervals
and cost, rate-distortion fits, MI-accuracy correlations and Pareto fronts.

Everything is read from the run's files (``manifest.json``, ``config.yaml``, ``records.jsonl`` and,
when present, ``summary.json``); nothing is re-run. pandas and scipy are imported inside functions.

Per cell (the sweep's cell identity, :data:`compressbench.engine.records.CELL_AXES`: dataset,
compressor, predictor, prompt, temperature, seed, scorer, predictor mode; only the current record
of each example counts, :func:`compressbench.engine.records.current_records`):

- accuracy = mean score over answered examples (an unparseable answer counts as wrong; ``n_unscored``
  says how many), MI in bits (log base 2) with their 95% CIs and the
  ``log2 N`` ceiling, bits per compression token ``R = I / L``, mean compression tokens ``L``:
  taken from ``summary.json`` (the sweep's estimates) when present, else recomputed from the
  records by the sweep's own function (:func:`compressbench.engine.summary.cell_stats`);
- cost per query, per role (compressor, predictor, scorer, judge), from each record's ``usage``
  with :mod:`compressbench.measure.cost` (prefill and generation FLOPs with the attention term; API
  dollars for ``paid_api`` models from the dated price table). ``gflops_per_query`` and
  ``usd_per_query`` count the *deployed system* (compressor + predictor); the scorer and judge
  are measurement costs, reported in their own columns. Unknown usage stays NaN, never 0.
- reference rows: the baseline compressors ``identity`` (no compression), ``empty`` and
  ``truncate:<n>`` are marked ``is_baseline``; ``accuracy_vs_identity`` and ``usd_vs_identity``
  are ratios to the identity row of the same dataset, predictor and prompt.

Across cells:

- the *study cells* are every cell but the ``empty`` baseline (:func:`compressbench.measure.baselines.in_study`:
  its MI is 0 by construction); the *compressing cells* also leave out the ``identity`` (no rate
  limit; :func:`compressbench.measure.baselines.is_compression`): model compressors, truncations and the
  keep:k ladder of the known-information task;
- rate-distortion fit per (dataset, predictor, scorer) over the compressing cells:
  ``D(R) = C * exp(-b * R) + D0`` with ``D = 1 - accuracy`` and ``R`` in bits per token
  (``scipy.optimize.curve_fit``, bounds ``C >= 0, b >= 0, 0 <= D0 <= 1``), with
  ``R^2 = 1 - SS_res / SS_tot``; fewer than 4 points (3 parameters + 1) are not fitted, and
  the row says so;
- Pearson and Spearman correlations of MI (and bits per token) with accuracy and with the
  reference-answer NLL (perplexity tasks), per (dataset, MI scorer) over the study cells (every
  predictor's), with 95% percentile-bootstrap CIs from resampling cells (the demo's Findings give
  them per predictor: :mod:`compressbench.analysis.findings`);
- with several MI scorers (``scorers: [a, b]``): per (dataset, predictor) and scorer pair, the
  rank agreement of their (raw, unclipped) MI over the study compressors, Kendall's tau with a 95%
  percentile bootstrap CI (resampling compressors), and the mean MI offset b - a in bits
  (:func:`scorer_agreement`);
- known-information tasks: ``retained_bits`` (mean bits of the context the compressions keep
  verbatim) beside the MI estimate of each cell;
- Pareto fronts of accuracy (higher is better) against dollars and against GFLOPs per query
  (lower is better), per dataset, baselines included.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from compressbench.measure.baselines import baseline_label, in_study, is_baseline, is_compression
from compressbench.measure.cost import ROLES, LocalRate, PriceTable, model_info_from_dict, role_cost
from compressbench.core.errors import DataError, UsageError
from compressbench.engine.records import CELL_AXES, CellId, RunRecord, current_records, read_records
from compressbench.core.stats import bootstrap_mean_ci, rd_curve  # noqa: F401 (part of this module's API)
from compressbench.engine.summary import STAT_COLUMNS, cell_stats
from compressbench.core.tables import fmt as _fmt
from compressbench.core.tables import fmt_ci as _ci
from compressbench.core.types import ModelInfo

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

log = logging.getLogger(__name__)

#: The report's cell identity is the sweep's (every grid axis plus scorer and predictor mode).
CELL_KEYS: tuple[str, ...] = CELL_AXES
#: Roles counted in a deployed system's cost per query.
SYSTEM_ROLES: tuple[str, ...] = ("compressor", "predictor")
FORMATS: tuple[str, ...] = ("table", "csv", "json", "markdown", "html")
MIN_FIT_POINTS = 4
MIN_CORR_POINTS = 3

# ----------------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class ModelMeta:
    """What the report knows of one named model: shape/size, family and whether it is a paid API."""

    name: str
    model: str
    paid_api: bool
    info: ModelInfo | None

    @property
    def n_params(self) -> float | None:
        return None if self.info is None or self.info.n_params is None else float(self.info.n_params)

    @property
    def family(self) -> str | None:
        return None if self.info is None else self.info.family


@dataclass
class RunData:
    """The files of one run directory, parsed."""

    path: Path
    manifest: dict[str, Any]
    config: dict[str, Any]
    records: list[RunRecord]
    summary_rows: list[dict[str, Any]] | None
    models: dict[str, ModelMeta] = field(default_factory=dict)

    def role_model(self, role: str, cell: CellId) -> str | None:
        """The model name playing ``role`` in ``cell`` (None: no model, e.g. a baseline compressor)."""
        name = {"compressor": cell.compressor, "predictor": cell.predictor, "scorer": cell.scorer,
                "judge": self.config.get("judge")}[role]
        if name is None or (role == "compressor" and is_baseline(str(name))):
            return None
        return str(name)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); was the run interrupted while writing it?") from None


def load_run(run_dir: str | Path, meta_overrides: Mapping[str, Mapping[str, Any]] | None = None) -> RunData:
    """Read a run directory. ``meta_overrides`` maps a model name to ModelInfo fields (e.g.
    ``{"n_params": 1.5e9, "family": "qwen2.5"}``) that replace the manifest's values; a config's
    ``models.<name>.info`` mapping, when present, is applied first."""
    root = Path(run_dir)
    if not root.is_dir():
        raise UsageError(f"run directory {root} does not exist; pass a directory written by "
                         "`compressbench sweep` (e.g. runs/<sweep-name>)")
    rec_path = root / "records.jsonl"
    if not rec_path.is_file():
        raise DataError(f"{root} has no records.jsonl: not a compressbench run directory, or the sweep "
                        "has not written any record yet (run `compressbench sweep` first)")
    records = current_records(read_records(root))
    if not records:
        raise DataError(f"{rec_path} holds no records; nothing to report")
    manifest = _read_json(root / "manifest.json") if (root / "manifest.json").is_file() else {}
    config: dict[str, Any] = {}
    if (root / "config.yaml").is_file():
        config = yaml.safe_load((root / "config.yaml").read_text(encoding="utf-8")) or {}
    summary_rows = None
    if (root / "summary.json").is_file():
        summary_rows = list(_read_json(root / "summary.json").get("rows") or [])
        # the sweep's current cells: records of a cell key the last summary does not list are stale
        current = {r.get("cell_key") for r in summary_rows}
        if None not in current:
            records = [r for r in records if r.cell_key in current] or records
    run = RunData(root, manifest, config, records, summary_rows)
    run.models = _model_meta(manifest, config, meta_overrides or {})
    return run


def _model_meta(manifest: Mapping[str, Any], config: Mapping[str, Any],
                overrides: Mapping[str, Mapping[str, Any]]) -> dict[str, ModelMeta]:
    out: dict[str, ModelMeta] = {}
    m_models = dict(manifest.get("models") or {})
    c_models = dict(config.get("models") or {})
    for name in sorted(set(m_models) | set(c_models) | set(overrides)):
        m = dict(m_models.get(name) or {})
        c = dict(c_models.get(name) or {})
        info_d: dict[str, Any] = dict(m.get("info") or {})
        info_d.update(c.get("info") or {})
        info_d.update(overrides.get(name) or {})
        ref = str(m.get("model") or c.get("model") or name)
        info = model_info_from_dict(info_d, reference=ref) if info_d else None
        paid = bool(m.get("paid_api", c.get("paid_api", False)))
        out[name] = ModelMeta(name=name, model=ref, paid_api=paid, info=info)
    return out


# ----------------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class RDFit:
    """A rate-distortion fit. Parameters are NaN when not fitted; ``note`` says why."""

    n_points: int
    c: float = math.nan
    b: float = math.nan
    d0: float = math.nan
    c_se: float = math.nan
    b_se: float = math.nan
    d0_se: float = math.nan
    r2: float = math.nan
    rmse: float = math.nan
    note: str = ""

    @property
    def ok(self) -> bool:
        return not self.note


def _finite_pairs(x: Sequence[Any], y: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """The pairs (x_i, y_i) where both are known, as float arrays: NaN, inf and None are unknown."""
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(xa) & np.isfinite(ya)
    return xa[ok], ya[ok]


def fit_rate_distortion(rate_bits: Sequence[float], distortion: Sequence[float]) -> RDFit:
    """Least-squares fit of ``D(R) = C exp(-b R) + D0`` with ``curve_fit`` (bounds C, b >= 0,
    0 <= D0 <= 1); ``R^2 = 1 - SS_res/SS_tot``. Needs >= 4 finite points, else a note."""
    from scipy.optimize import curve_fit

    r, d = _finite_pairs(rate_bits, distortion)
    n = int(r.size)
    if n < MIN_FIT_POINTS:
        return RDFit(n, note=f"too few points to fit 3 parameters (have {n}, need >= {MIN_FIT_POINTS})")
    if np.ptp(r) == 0:
        return RDFit(n, note="all cells have the same rate; nothing to fit")
    d0_guess = float(np.clip(d.min() * 0.9, 0.0, 1.0))
    c_guess = float(max(d.max() - d0_guess, 1e-3))
    b_guess = float(1.0 / max(np.mean(np.abs(r)), 1e-6))
    try:
        popt, pcov = curve_fit(rd_curve, r, d, p0=(c_guess, b_guess, d0_guess),
                               bounds=([0.0, 0.0, 0.0], [np.inf, np.inf, 1.0]), maxfev=20000)
    except (RuntimeError, ValueError) as exc:
        return RDFit(n, note=f"fit did not converge: {exc}")
    resid = d - rd_curve(r, *popt)
    ss_res = float(np.sum(resid**2))
    ss_tot = float(np.sum((d - d.mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else math.nan
    with np.errstate(invalid="ignore"):
        se = np.sqrt(np.diag(pcov)) if np.all(np.isfinite(pcov)) else np.full(3, np.nan)
    return RDFit(n, float(popt[0]), float(popt[1]), float(popt[2]), float(se[0]), float(se[1]),
                 float(se[2]), r2, math.sqrt(ss_res / n))


@dataclass(frozen=True)
class Correlation:
    """Pearson and Spearman correlation of ``x`` with ``y`` with bootstrap CIs (NaN if too few)."""

    x: str
    y: str
    n: int
    pearson_r: float = math.nan
    pearson_p: float = math.nan
    pearson_ci_low: float = math.nan
    pearson_ci_high: float = math.nan
    spearman_rho: float = math.nan
    spearman_p: float = math.nan
    spearman_ci_low: float = math.nan
    spearman_ci_high: float = math.nan
    note: str = ""


def _paired_resamples(xa: np.ndarray, ya: np.ndarray, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n_boot`` bootstrap resamples of the pairs (one per row, drawn with ``default_rng(seed)``),
    without the rows where x or y is constant (no correlation or rank order is defined there)."""
    idx = np.random.default_rng(seed).integers(0, xa.size, size=(n_boot, xa.size))
    xs, ys = xa[idx], ya[idx]
    keep = (np.ptp(xs, axis=1) > 0) & (np.ptp(ys, axis=1) > 0)
    return xs[keep], ys[keep]


def _row_pearson(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Pearson's r of each row of ``xs`` with the same row of ``ys``."""
    xc, yc = xs - xs.mean(axis=1, keepdims=True), ys - ys.mean(axis=1, keepdims=True)
    return np.clip((xc * yc).sum(axis=1) / np.sqrt((xc * xc).sum(axis=1) * (yc * yc).sum(axis=1)), -1.0, 1.0)


def _row_kendall_tau_b(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of each row of ``xs`` with the same row of ``ys`` (``scipy.stats.kendalltau``'s
    default): (concordant - discordant) / sqrt((pairs - ties in x) (pairs - ties in y)) over the pairs
    i < j. Rows must not be constant."""
    sx = np.sign(xs[:, :, None] - xs[:, None, :])
    sy = np.sign(ys[:, :, None] - ys[:, None, :])
    n = xs.shape[1]
    upper = np.triu(np.ones((n, n), dtype=bool), k=1)
    s = (sx * sy)[:, upper].sum(axis=1)
    untied_x, untied_y = (sx[:, upper] != 0).sum(axis=1), (sy[:, upper] != 0).sum(axis=1)
    return np.clip(s / np.sqrt(untied_x * untied_y), -1.0, 1.0)


def _percentile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    """The percentile-bootstrap interval at ``level`` (NaN, NaN when no resample was usable)."""
    if not len(values):
        return math.nan, math.nan
    a = (1 - level) / 2
    return float(np.quantile(values, a)), float(np.quantile(values, 1 - a))


def correlate(x: Sequence[float], y: Sequence[float], *, x_name: str = "x", y_name: str = "y",
              n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> Correlation:
    """Pearson r and Spearman rho (``scipy.stats``) with percentile-bootstrap CIs from resampling
    the (x, y) pairs; resamples where x or y is constant are dropped."""
    from scipy import stats

    xa, ya = _finite_pairs(x, y)
    n = int(xa.size)
    if n < MIN_CORR_POINTS:
        return Correlation(x_name, y_name, n, note=f"too few cells to correlate (have {n}, need >= {MIN_CORR_POINTS})")
    if np.ptp(xa) == 0 or np.ptp(ya) == 0:
        return Correlation(x_name, y_name, n, note="one variable is constant across cells")
    pr = stats.pearsonr(xa, ya)
    sr = stats.spearmanr(xa, ya)
    xs, ys = _paired_resamples(xa, ya, n_boot, seed)
    bp = _row_pearson(xs, ys)
    bs = _row_pearson(stats.rankdata(xs, axis=1), stats.rankdata(ys, axis=1))
    (pl, ph), (sl, sh) = _percentile_interval(bp, level), _percentile_interval(bs, level)
    return Correlation(x_name, y_name, n, float(pr[0]), float(pr[1]), pl, ph,
                       float(sr[0]), float(sr[1]), sl, sh)


def pareto_front(cost: Sequence[float], accuracy: Sequence[float]) -> np.ndarray:
    """Boolean mask of the points no other point dominates (cost <= and accuracy >=, one strictly).
    Points with a non-finite cost or accuracy are never on the front."""
    c = np.asarray(cost, dtype=float)
    a = np.asarray(accuracy, dtype=float)
    ok = np.isfinite(c) & np.isfinite(a)
    mask = np.zeros(c.size, dtype=bool)
    for i in np.flatnonzero(ok):
        others = ok.copy()
        others[i] = False
        dominated = others & (c <= c[i]) & (a >= a[i]) & ((c < c[i]) | (a > a[i]))
        mask[i] = not dominated.any()
    return mask


# ----------------------------------------------------------------------------------- the report


@dataclass
class Report:
    """The tables of one run (pandas DataFrames) and notes on what could not be computed."""

    run_dir: str
    cells: pd.DataFrame
    rate_distortion: pd.DataFrame
    correlations: pd.DataFrame
    models: dict[str, ModelMeta]
    notes: list[str]
    prices_path: str
    scorer_agreement: pd.DataFrame | None = None
    #: MI measurement / compression FLOPs per dataset and in total (:func:`mi_cost_table`).
    mi_cost: pd.DataFrame | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON: NaN -> null."""
        return {
            "bits_note": "bits are log base 2; rate R = MI bits per compression token",
            "cost_note": ("gflops_per_query and usd_per_query count the deployed system (compressor + "
                          "predictor); scorer and judge costs are in their own columns; null = unknown"),
            "run_dir": self.run_dir,
            "prices": self.prices_path,
            "cells": _records(self.cells),
            "rate_distortion": _records(self.rate_distortion),
            "correlations": _records(self.correlations),
            "scorer_agreement": [] if self.scorer_agreement is None else _records(self.scorer_agreement),
            "mi_cost": [] if self.mi_cost is None else _records(self.mi_cost),
            "notes": list(self.notes),
        }


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for row in df.to_dict(orient="records"):
        out.append({k: _jsonable(v) for k, v in row.items()})
    return out


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return None if not math.isfinite(float(v)) else float(v)
    if v is None:
        return None
    try:
        import pandas as pd

        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    return v


def _cell_of(rec: RunRecord) -> CellId:
    return rec.cell


def _cell_of_row(row: Mapping[str, Any]) -> CellId | None:
    """The cell of a summary row (None for a row of an older summary format)."""
    try:
        return CellId.from_dict(row)
    except DataError:
        return None


def _cost_rows(run: RunData, prices: PriceTable, local_rate: LocalRate | None,
               notes: list[str]) -> dict[CellId, dict[str, float]]:
    """Mean cost per query of each cell and role, from the records' usage."""
    missing_price: set[str] = set()
    per_cell: dict[CellId, dict[str, list[float]]] = {}
    for rec in run.records:
        key = _cell_of(rec)
        acc = per_cell.setdefault(key, {})
        usage = rec.usage
        n_comp = len(rec.compressions) or None
        sys_flops: float | None = 0.0
        sys_usd: float | None = 0.0
        local_usd: float | None = 0.0 if local_rate else None
        for role in ROLES:
            name = run.role_model(role, rec.cell)
            if name is None:  # role not played (baseline compressor, no judge): known zero
                rc_flops, rc_usd, rc_local = 0.0, 0.0, (0.0 if local_rate else None)
            else:
                meta = run.models.get(name)
                paid = bool(meta and meta.paid_api)
                price = None
                if paid:
                    price = prices.lookup(meta.model) or prices.lookup(name)
                    if price is None:
                        missing_price.add(meta.model)
                usage_role = usage.get(role)
                if usage_role is None:  # not recorded: unknown (API dollars of a local role stay 0)
                    rc_flops, rc_usd, rc_local = None, (None if paid else 0.0), None
                else:
                    rc = role_cost(role, usage_role.as_dict(), meta.info if meta else None, paid_api=paid,
                                   price=price, local_rate=local_rate)
                    rc_flops = rc.flops
                    rc_usd = rc.api_usd if paid else 0.0
                    rc_local = rc.local_usd if not paid else (0.0 if local_rate else None)
            acc.setdefault(f"gflops_{role}", []).append(np.nan if rc_flops is None else rc_flops / 1e9)
            acc.setdefault(f"usd_{role}", []).append(np.nan if rc_usd is None else rc_usd)
            if role == "compressor":
                acc.setdefault("gflops_per_compression", []).append(
                    np.nan if rc_flops is None or not n_comp else rc_flops / 1e9 / n_comp)
            if role in SYSTEM_ROLES:
                sys_flops = None if (sys_flops is None or rc_flops is None) else sys_flops + rc_flops
                sys_usd = None if (sys_usd is None or rc_usd is None) else sys_usd + rc_usd
                if local_rate is not None:
                    local_usd = None if (local_usd is None or rc_local is None) else local_usd + rc_local
        acc.setdefault("gflops_per_query", []).append(np.nan if sys_flops is None else sys_flops / 1e9)
        acc.setdefault("usd_per_query", []).append(np.nan if sys_usd is None else sys_usd)
        if local_rate is not None:
            acc.setdefault("local_usd_per_query", []).append(np.nan if local_usd is None else local_usd)
    for model in sorted(missing_price):
        notes.append(f"no price for paid model {model!r} in {prices.path}: its dollars are unknown "
                     "(add it to the price table or pass --prices)")
    out: dict[CellId, dict[str, float]] = {}
    for key, cols in per_cell.items():
        row: dict[str, float] = {}
        for col, vals in cols.items():
            arr = np.asarray(vals, dtype=float)
            # unknown stays unknown: a cell's mean is NaN if any of its records is unknown
            row[col] = float(arr.mean()) if arr.size and np.all(np.isfinite(arr)) else math.nan
        out[key] = row
    return out


def build_report(run_dir: str | Path, *, prices: PriceTable | str | Path | None = None,
                 local_rate: LocalRate | None = None,
                 meta_overrides: Mapping[str, Mapping[str, Any]] | None = None,
                 n_boot: int = 2000, seed: int = 0) -> Report:
    """Read a run directory and compute every table of the report (see the module docstring)."""
    import pandas as pd

    run = load_run(run_dir, meta_overrides)
    table = prices if isinstance(prices, PriceTable) else PriceTable.load(prices)
    rate = local_rate or table.local_rate
    notes: list[str] = []
    costs = _cost_rows(run, table, rate, notes)

    groups: dict[CellId, list[RunRecord]] = {}
    for rec in run.records:
        groups.setdefault(_cell_of(rec), []).append(rec)
    summary = {}
    for srow in run.summary_rows or []:
        cell = _cell_of_row(srow)
        if cell is not None:
            summary[cell] = srow
    if run.summary_rows is None:
        notes.append("no summary.json: accuracy and MI recomputed from records (pointwise-MI means, "
                     "bootstrap CIs over examples)")
    rows = []
    for key, recs in groups.items():
        row: dict[str, Any] = key.as_dict()
        if key in summary:
            srow = summary[key]
            row.update({k: srow.get(k) for k in STAT_COLUMNS})
        else:
            if run.summary_rows is not None:
                notes.append(f"cell {key.label()} is in records.jsonl but not in summary.json; recomputed from records")
            row.update(cell_stats(recs))
        row.update(costs.get(key, {}))
        comp = row["compressor"]
        meta = run.models.get(comp)
        pmeta = run.models.get(row["predictor"])
        row["is_baseline"] = is_baseline(comp)
        row["in_study"] = in_study(comp)
        row["compresses"] = is_compression(comp)
        row["reference"] = baseline_label(comp) or ""
        row["compressor_params"] = meta.n_params if meta and meta.n_params else math.nan
        row["compressor_family"] = (meta.family if meta and meta.family else "") if not row["is_baseline"] else ""
        row["predictor_params"] = pmeta.n_params if pmeta and pmeta.n_params else math.nan
        row["predictor_family"] = pmeta.family if pmeta and pmeta.family else ""
        row["predictor_paid_api"] = bool(pmeta and pmeta.paid_api)
        rows.append(row)
    for row in rows:
        row["mi_protocol"] = mi_protocol(row)
    cells = pd.DataFrame(rows)
    text_cols = ("dataset", "compressor", "predictor", "prompt", "scorer", "predictor_mode", "prompt_id",
                 "reference", "compressor_family", "predictor_family", "is_baseline", "predictor_paid_api",
                 "in_study", "compresses", "mi_negatives", "mi_k_stop", "mi_protocol")
    num_cols = [c for c in cells.columns if c not in text_cols]
    for c in num_cols:
        cells[c] = pd.to_numeric(cells[c], errors="coerce").astype(float)
    cells["distortion"] = 1.0 - cells["accuracy"]
    cells = cells.sort_values(["dataset", "predictor", "is_baseline", "compressor", "prompt", "temperature", "seed"],
                              ascending=[True, True, False, True, True, True, True], kind="stable"
                              ).reset_index(drop=True)
    _add_identity_ratios(cells)
    cells["pareto_usd"] = False
    cells["pareto_gflops"] = False
    for _, idx in cells.groupby("dataset").groups.items():
        sub = cells.loc[idx]
        cells.loc[idx, "pareto_usd"] = pareto_front(sub["usd_per_query"], sub["accuracy"])
        cells.loc[idx, "pareto_gflops"] = pareto_front(sub["gflops_per_query"], sub["accuracy"])

    fits = []
    study = cells[cells["in_study"]]
    for (ds, pred, sc), sub in cells[cells["compresses"]].groupby(["dataset", "predictor", "scorer"], sort=True):
        sub = one_protocol(sub, f"rate-distortion fit for {ds} / {pred} / scorer {sc}", notes)
        fit = fit_rate_distortion(sub["bits_per_token"], sub["distortion"])
        fits.append({"dataset": ds, "predictor": pred, "scorer": sc, **fit.__dict__})
        if not fit.ok:
            notes.append(f"rate-distortion fit for {ds} / {pred} / scorer {sc}: {fit.note}")
    rd = pd.DataFrame(fits, columns=["dataset", "predictor", "scorer", *RDFit.__dataclass_fields__])

    corrs = []
    pairs = [("mi_bits", "accuracy"), ("bits_per_token", "accuracy"), ("mi_bits", "mean_ref_nll_nats"),
             ("bits_per_token", "mean_ref_nll_nats")]
    for (ds, sc), sub in study.groupby(["dataset", "scorer"], sort=True):
        sub = one_protocol(sub, f"correlations on {ds} / scorer {sc}", notes)
        for x, y in pairs:
            if sub[y].notna().sum() == 0:
                continue  # e.g. no reference-answer NLL in this dataset
            c = correlate(sub[x], sub[y], x_name=x, y_name=y, n_boot=n_boot, seed=seed)
            corrs.append({"dataset": ds, "scorer": sc, **c.__dict__})
            if c.note:
                notes.append(f"correlation {x} vs {y} on {ds} / scorer {sc}: {c.note}")
    corr = pd.DataFrame(corrs, columns=["dataset", "scorer", *Correlation.__dataclass_fields__])
    agree = scorer_agreement(cells, n_boot=n_boot, seed=seed, notes=notes)
    return Report(str(run.path), cells, rd, corr, run.models, notes, table.path, agree, mi_cost_table(run.records))


def mi_protocol(row: Mapping[str, Any]) -> str:
    """How a cell's MI was measured, as far as pooling goes: ``all/auto`` (every context, or
    ``auto``: K grown per group until the interval is the stated margin below the ceiling and the
    estimate has stopped rising, so its estimates stand for the all-context one), ``K=<k>`` (a
    fixed design of K < N - 1 negatives, ceiling log2(K + 1)), or "" (not measured). Rows without
    the field (older runs) are ``all/auto``."""
    neg = row.get("mi_negatives")
    if isinstance(neg, float) and math.isnan(neg):
        neg = None
    if neg == "not measured":
        return ""
    if neg == "fixed":
        k = row.get("mi_n_negatives")
        return f"K={int(k)}" if k is not None and not (isinstance(k, float) and math.isnan(k)) else "K=?"
    return "all/auto"


def one_protocol(sub: pd.DataFrame, what: str, notes: list[str]) -> pd.DataFrame:
    """The cells of ``sub`` whose MI shares one measurement (:func:`mi_protocol`): the report never
    pools MI of different K (different ceilings log2(K + 1) and biases), as it never mixes
    datasets (different N). The protocol with the most cells is kept (ties: the first by name),
    the others are left out with a note saying which."""
    measured = sub[sub["mi_protocol"] != ""]
    kinds = measured["mi_protocol"].value_counts()
    if len(kinds) <= 1:
        return sub
    ranked = sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0]))
    keep = ranked[0][0]
    left = measured[measured["mi_protocol"] != keep]
    notes.append(f"{what}: MI measured with different negatives is not pooled; kept the {ranked[0][1]} cells "
                 f"with mi_negatives {keep}, left out " + ", ".join(
                     f"{c} ({p})" for c, p in sorted(set(zip(left["compressor"], left["mi_protocol"])))))
    return sub[sub["mi_protocol"].isin(["", keep])]


def mi_cost_table(records: Sequence[RunRecord]) -> pd.DataFrame:
    """MI measurement FLOPs / compression FLOPs of a finished run, per dataset and in total, from the
    records' recorded FLOPs (each group's compressor and scorer work counted once, although it
    repeats in the record of every predictor): ``mi_flops`` the scoring of every compressor but the
    identity baseline (prefills included), ``identity_flops`` the identity's scoring on its own,
    ``compress_flops`` the model compressors' compressions, ``ratio = mi_flops / compress_flops``."""
    import pandas as pd

    sums: dict[str, dict[str, float | None]] = {}
    seen: set[tuple[Any, ...]] = set()
    for r in records:
        c = r.cell
        d = sums.setdefault(c.dataset, {"mi_flops": 0.0, "identity_flops": 0.0, "compress_flops": 0.0})
        group = (c.dataset, c.compressor, c.prompt, c.temperature, c.seed, r.example_id)
        for role, field_, key in (("scorer", "identity_flops" if c.compressor == "identity" else "mi_flops",
                                   (*group, c.scorer)), ("compressor", "compress_flops", group)):
            if role == "compressor" and is_baseline(c.compressor):
                continue
            if (role, *key) in seen:
                continue
            seen.add((role, *key))
            f = r.flops.get(role)
            d[field_] = None if f is None or d[field_] is None else d[field_] + float(f)  # type: ignore[operator]
    rows = [{"dataset": k, **v} for k, v in sorted(sums.items())]
    if rows:
        total: dict[str, Any] = {"dataset": "total"}
        for k in ("mi_flops", "identity_flops", "compress_flops"):
            vals = [row[k] for row in rows]
            total[k] = None if any(v is None for v in vals) else float(sum(vals))
        rows.append(total)
    for row in rows:
        row["ratio"] = (row["mi_flops"] / row["compress_flops"]
                        if row["mi_flops"] is not None and row["compress_flops"] else None)
        row["identity_ratio"] = (row["identity_flops"] / row["compress_flops"]
                                 if row["identity_flops"] is not None and row["compress_flops"] else None)
    return pd.DataFrame(rows, columns=["dataset", "mi_flops", "identity_flops", "compress_flops", "ratio",
                                       "identity_ratio"])


@dataclass(frozen=True)
class RankAgreement:
    """Kendall's tau between two scorers' MI over the same compressors, with a bootstrap CI."""

    n: int
    kendall_tau: float = math.nan
    tau_ci_low: float = math.nan
    tau_ci_high: float = math.nan
    mean_offset_bits: float = math.nan  # mean of (MI under scorer b - MI under scorer a)
    note: str = ""


def rank_agreement(a: Sequence[float], b: Sequence[float], *, n_boot: int = 2000, seed: int = 0,
                   level: float = 0.95) -> RankAgreement:
    """Kendall's tau (``scipy.stats.kendalltau``, tau-b) of paired values ``a``, ``b`` with a
    percentile-bootstrap CI from resampling the pairs (resamples where either side is constant are
    dropped), and the mean offset ``b - a``."""
    from scipy import stats

    xa, ya = _finite_pairs(a, b)
    n = int(xa.size)
    if n < MIN_CORR_POINTS:
        return RankAgreement(n, note=f"too few compressors to rank (have {n}, need >= {MIN_CORR_POINTS})")
    offset = float(np.mean(ya - xa))
    if np.ptp(xa) == 0 or np.ptp(ya) == 0:
        return RankAgreement(n, mean_offset_bits=offset, note="one scorer gives every compressor the same MI")
    tau = float(stats.kendalltau(xa, ya).statistic)
    xs, ys = _paired_resamples(xa, ya, n_boot, seed)
    lo, hi = _percentile_interval(_row_kendall_tau_b(xs, ys), level)
    return RankAgreement(n, tau, lo, hi, offset)


def scorer_agreement(cells: pd.DataFrame, *, n_boot: int = 2000, seed: int = 0,
                     notes: list[str] | None = None) -> pd.DataFrame:
    """Per (dataset, predictor, prompt, temperature, seed, predictor mode) and each pair of scorers:
    the rank agreement of their MI over the study compressors (:func:`rank_agreement`), the pairs
    taken in compressor-name order (so the interval for a seed does not depend on the order of the
    cells). Empty when the run has one scorer."""
    import pandas as pd

    cols = ["dataset", "predictor", "scorer_a", "scorer_b", *RankAgreement.__dataclass_fields__]
    rows = []
    if cells["scorer"].nunique() > 1:
        keys = ["dataset", "predictor", "prompt", "temperature", "seed", "predictor_mode"]
        for key, sub in cells[cells["in_study"]].groupby(keys, sort=True):
            if "mi_protocol" in sub:
                sub = pd.concat([one_protocol(part, f"scorer agreement on {key[0]} / {key[1]} / scorer {sc}",
                                              notes if notes is not None else [])
                                 for sc, part in sub.groupby("scorer", sort=True)])
            # raw (unclipped) MI: clipping at 0 would turn every negative estimate into a tie
            wide = sub.pivot_table(index="compressor", columns="scorer", values="mi_bits_raw", aggfunc="first")
            scorers = list(wide.columns)
            for i, a in enumerate(scorers):
                for b in scorers[i + 1:]:
                    ag = rank_agreement(wide[a], wide[b], n_boot=n_boot, seed=seed)
                    rows.append({"dataset": key[0], "predictor": key[1], "scorer_a": a, "scorer_b": b,
                                 **ag.__dict__})
    return pd.DataFrame(rows, columns=cols)


def _add_identity_ratios(cells: pd.DataFrame) -> None:
    cells["accuracy_vs_identity"] = math.nan
    cells["usd_vs_identity"] = math.nan
    ident = cells[cells["compressor"] == "identity"]
    for i, row in cells.iterrows():
        ref = ident[(ident["dataset"] == row["dataset"]) & (ident["predictor"] == row["predictor"])]
        for axis in ("scorer", "predictor_mode", "temperature", "seed", "prompt"):
            same = ref[ref[axis] == row[axis]]
            ref = same if len(same) else ref
        if not len(ref):
            continue
        r = ref.iloc[0]
        if r["accuracy"] and math.isfinite(r["accuracy"]):
            cells.at[i, "accuracy_vs_identity"] = row["accuracy"] / r["accuracy"]
        if r["usd_per_query"] and math.isfinite(r["usd_per_query"]):
            cells.at[i, "usd_vs_identity"] = row["usd_per_query"] / r["usd_per_query"]


# ----------------------------------------------------------------------------------- rendering


def display_cells(report: Report) -> pd.DataFrame:
    """The cell table for people: CIs as ``value [low, high]``, costs per query, reference rows marked."""
    import pandas as pd

    c = report.cells
    varying = {a: c[a] for a in ("temperature", "seed", "scorer", "predictor_mode") if c[a].nunique(dropna=False) > 1}
    count = (lambda v: "–" if not math.isfinite(v) else f"{v:.0f}")  # noqa: E731
    out = pd.DataFrame({
        "dataset": c["dataset"], "compressor": c["compressor"] + c["reference"].map(lambda s: f" ({s})" if s else ""),
        "predictor": c["predictor"], "prompt": c["prompt"], **{a: v.map(str) for a, v in varying.items()},
        "n": c["n"].map(count), "unscored": c["n_unscored"].map(count),
        "accuracy [95% CI]": [_ci(*t) for t in zip(c["accuracy"], c["accuracy_ci_low"], c["accuracy_ci_high"])],
        "MI bits [95% CI]": [_ci(*t) for t in zip(c["mi_bits"], c["mi_ci_low_bits"], c["mi_ci_high_bits"])],
        **({"retained bits": c["retained_bits"].map(_fmt)} if c["retained_bits"].notna().any() else {}),
        "ceiling bits": c["ceiling_bits"].map(_fmt),
        **({"MI negatives (K)": [_negatives_text(*t) for t in
                                 zip(c["mi_negatives"], c["mi_n_negatives"], c["mi_k_stop"])]}
           if "mi_negatives" in c and c["mi_negatives"].notna().any() else {}),
        "bits/token": c["bits_per_token"].map(_fmt),
        "compression tokens": c["mean_compression_tokens"].map(_fmt),
    })
    for role in ROLES:
        col = f"gflops_{role}"
        if col in c and c[col].fillna(0).ne(0).any():
            out[f"GFLOPs {role}"] = c[col].map(_fmt)
    for role in ROLES:
        col = f"usd_{role}"
        if col in c and c[col].fillna(0).ne(0).any():
            out[f"$ {role}"] = c[col].map(_fmt)
    out["GFLOPs/query"] = c["gflops_per_query"].map(_fmt)
    out["$/query"] = c["usd_per_query"].map(_fmt)
    if "local_usd_per_query" in c:
        out["local $/query"] = c["local_usd_per_query"].map(_fmt)
    out["Pareto front"] = [" + ".join(n for n, on in (("$", a), ("GFLOPs", b)) if on)
                           for a, b in zip(c["pareto_usd"], c["pareto_gflops"])]
    return out


def _negatives_text(negatives: Any, k: Any, stop: Any) -> str:
    """``auto K=31 (below ceiling margin)``, ``K=7``, ``all K=31``, ``not measured`` or ``–``."""
    if not isinstance(negatives, str):
        return "–"
    if negatives == "not measured":
        return negatives
    kk = "" if k is None or (isinstance(k, float) and math.isnan(k)) else f" K={int(k)}"
    st = f" ({stop})" if isinstance(stop, str) and stop else ""
    return (f"K={int(k)}" if negatives == "fixed" and kk else f"{negatives}{kk}") + st


def display_fits(report: Report) -> pd.DataFrame:
    import pandas as pd

    rd = report.rate_distortion
    return pd.DataFrame({
        "dataset": rd["dataset"], "predictor": rd["predictor"], "points": rd["n_points"],
        "C": [_ci(v, v - 1.96 * s, v + 1.96 * s) for v, s in zip(rd["c"], rd["c_se"])],
        "b (per bit/token)": [_ci(v, v - 1.96 * s, v + 1.96 * s) for v, s in zip(rd["b"], rd["b_se"])],
        "D0": [_ci(v, v - 1.96 * s, v + 1.96 * s) for v, s in zip(rd["d0"], rd["d0_se"])],
        "R²": rd["r2"].map(_fmt), "RMSE": rd["rmse"].map(_fmt), "note": rd["note"],
    })


def display_correlations(report: Report) -> pd.DataFrame:
    import pandas as pd

    co = report.correlations
    return pd.DataFrame({
        "dataset": co["dataset"], "x": co["x"], "y": co["y"], "cells": co["n"],
        "Pearson r [95% CI]": [_ci(*t) for t in zip(co["pearson_r"], co["pearson_ci_low"], co["pearson_ci_high"])],
        "Spearman ρ [95% CI]": [_ci(*t) for t in zip(co["spearman_rho"], co["spearman_ci_low"], co["spearman_ci_high"])],
        "note": co["note"],
    })


def display_scorer_agreement(report: Report) -> pd.DataFrame:
    import pandas as pd

    ag = report.scorer_agreement
    return pd.DataFrame({
        "dataset": ag["dataset"], "predictor": ag["predictor"], "scorers": ag["scorer_a"] + " vs " + ag["scorer_b"],
        "compressors": ag["n"],
        "Kendall τ [95% CI]": [_ci(*t) for t in zip(ag["kendall_tau"], ag["tau_ci_low"], ag["tau_ci_high"])],
        "mean MI offset bits (b − a)": ag["mean_offset_bits"].map(_fmt), "note": ag["note"],
    })


def _sections(report: Report) -> list[tuple[str, pd.DataFrame]]:
    out = [("Cells (per query; reference rows are baselines)", display_cells(report)),
           ("Rate–distortion fits: D(R) = C·exp(−b·R) + D0, R in bits per token", display_fits(report)),
           ("MI vs accuracy / reference NLL across cells", display_correlations(report))]
    if report.scorer_agreement is not None and len(report.scorer_agreement):
        out.append(("MI scorer agreement (proxy sensitivity): rank of compressors by MI", display_scorer_agreement(report)))
    if report.mi_cost is not None and len(report.mi_cost):
        out.append(("MI measurement / compression FLOPs (scoring of every compressor but identity, prefills "
                    "included, / the model compressors' compressions; identity's scoring on its own)",
                    display_mi_cost(report)))
    return out


def display_mi_cost(report: Report) -> pd.DataFrame:
    """The MI cost table for people: FLOPs and ratios."""
    import pandas as pd

    t = report.mi_cost if report.mi_cost is not None else pd.DataFrame()
    ratio = (lambda v: "–" if v is None or not math.isfinite(v) else f"{v:.2f}x")  # noqa: E731
    return pd.DataFrame({
        "dataset": t["dataset"], "MI measurement GFLOPs": (t["mi_flops"] / 1e9).map(_fmt),
        "compression GFLOPs (model compressors)": (t["compress_flops"] / 1e9).map(_fmt),
        "MI / compression": t["ratio"].map(ratio),
        "identity scoring GFLOPs": (t["identity_flops"] / 1e9).map(_fmt),
        "identity / compression": t["identity_ratio"].map(ratio),
    })


def _is_count_column(name: str) -> bool:
    return name in ("n", "seed") or name.startswith(("n_", "tokens_")) or name.endswith("_params")


def integer_counts(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with its count columns (``n``, ``n_*``, ``tokens_*``, ``seed``, ``*_params``) as integers
    (pandas ``Int64``, blank where unknown) instead of floats, so a CSV says ``6``, not ``6.0``."""
    import pandas as pd

    out = df.copy()
    for col in out.columns:
        values = pd.to_numeric(out[col], errors="coerce") if _is_count_column(str(col)) else None
        if values is None or values.notna().sum() != out[col].notna().sum():
            continue  # not a count column, or it holds non-numbers
        finite = values.dropna()
        if len(finite) and not ((finite % 1) == 0).all():
            continue
        out[col] = values.round().astype("Int64")
    return out


def render(report: Report, fmt: str, *, plots_dir: str | Path | None = None) -> str:
    """The report as text in ``fmt`` (one of :data:`FORMATS`). ``csv`` is the full cell table;
    ``json`` has every table; ``html`` is one self-contained page with the plots embedded as PNG."""
    from tabulate import tabulate

    if fmt not in FORMATS:
        raise UsageError(f"unknown report format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "csv":
        return integer_counts(report.cells).to_csv(index=False)
    if fmt == "json":
        return json.dumps(report.to_dict(), indent=2, allow_nan=False)
    if fmt == "html":
        return render_html(report, plots_dir=plots_dir)
    parts = []
    tablefmt = "github" if fmt == "markdown" else "simple"
    head = "# " if fmt == "markdown" else ""
    parts.append(f"{head}compressbench report: {report.run_dir}\n")
    parts.append("Bits are log base 2. Costs are per query; $ counts paid-API roles only "
                 f"(prices: {report.prices_path}); '–' = unknown.\n")
    for title, df in _sections(report):
        parts.append(("## " if fmt == "markdown" else "") + title + "\n")
        parts.append(tabulate(df, headers="keys", tablefmt=tablefmt, showindex=False, disable_numparse=True)
                     if len(df) else "(none)")
        parts.append("")
    if report.notes:
        parts.append(("## " if fmt == "markdown" else "") + "Notes\n")
        parts.extend(f"- {n}" for n in report.notes)
    return "\n".join(parts) + "\n"


def render_html(report: Report, *, plots_dir: str | Path | None = None) -> str:
    """One self-contained HTML page: the tables, then every plot embedded as a base64 PNG."""
    import tempfile

    body = [f"<h1>compressbench report</h1><p>Run: <code>{html.escape(report.run_dir)}</code>. "
            "Bits are log base 2; costs are per query; $ counts paid-API roles only (prices: "
            f"<code>{html.escape(report.prices_path)}</code>); '–' = unknown.</p>"]
    for title, df in _sections(report):
        body.append(f"<h2>{html.escape(title)}</h2>")
        body.append(df.to_html(index=False, escape=True, classes="table", border=0) if len(df) else "<p>(none)</p>")
    from compressbench.analysis.plots import plot_report

    with tempfile.TemporaryDirectory() as tmp:
        result = plot_report(report, plots_dir or tmp, formats=("png",))
        body.append("<h2>Plots</h2>")
        for name, paths in result.written.items():
            png = [p for p in paths if p.suffix == ".png"][0]
            data = base64.b64encode(png.read_bytes()).decode("ascii")
            body.append(f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{html.escape(name)}</figcaption></figure>")
        for name, why in result.skipped.items():
            body.append(f"<p><em>{html.escape(name)} not drawn: {html.escape(why)}</em></p>")
    if report.notes:
        body.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in report.notes) + "</ul>")
    style = ("body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;"
             "font-size:0.85em}td,th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:left}"
             "img{max-width:100%}figure{margin:1em 0}")
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>compressbench report</title>"
            f"<style>{style}</style></head><body>" + "\n".join(body) + "</body></html>\n")


def write_report(report: Report, fmt: str, out: str | Path) -> Path:
    """Write :func:`render` output to ``out``; returns the path."""
    p = Path(out)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(render(report, fmt), encoding="utf-8")
    return p


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None, **kwargs: Any) -> Any:
    """Build the report of ``run_dir`` and draw its plots (:func:`compressbench.analysis.plots.plot_report`)
    into ``out_dir`` (default ``RUN_DIR/plots``). Keyword arguments go to :func:`build_report`
    except ``formats``/``names``/``dpi``."""
    from compressbench.analysis.plots import plot_report

    plot_kw = {k: kwargs.pop(k) for k in ("formats", "names", "dpi") if k in kwargs}
    report = build_report(run_dir, **kwargs)
    return plot_report(report, out_dir if out_dir is not None else Path(run_dir) / "plots", **plot_kw)
