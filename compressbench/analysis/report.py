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

Across cells (the statistics themselves live in :mod:`compressbench.core.stats`; this module
loads the run, builds the tables and renders them):

- the *study cells* are every cell but the ``empty`` baseline (:func:`compressbench.measure.baselines.in_study`:
  its MI is 0 by construction); the *compressing cells* also leave out the ``identity`` (no rate
  limit; :func:`compressbench.measure.baselines.is_compression`): model compressors, truncations and the
  keep:k ladder of the known-information task;
- every statistic across cells is computed per *group* (:data:`GROUP_KEYS`: dataset, MI scorer,
  predictor, predictor mode), so a compressor's MI counts once, never once per predictor; the
  Findings and the plots read the report's tables for their fits and correlations;
- rate-distortion fit per group over the compressing cells:
  ``D(R) = C * exp(-b * R) + D0`` with ``D = 1 - accuracy`` and ``R`` in bits per token
  (``scipy.optimize.curve_fit``, bounds ``C >= 0, b >= 0, 0 <= D0 <= 1``), with
  ``R^2 = 1 - SS_res / SS_tot``; a fit with fewer than 5 points (3 parameters + 2), that does
  not beat the constant model (``R^2 <= 0``) or that has a parameter at its bound is *not
  supported*: its note says "no exponential fit supported by these N cells" and why, the table
  shows no parameters and the plot draws no curve;
- Pearson and Spearman correlations of MI (and bits per token) with accuracy and with the
  reference-answer NLL (perplexity tasks), per group over the study cells, with 95%
  percentile-bootstrap CIs from resampling cells; a CI that spans 0 is said so in the note
  (:func:`correlation_note`);
- with several MI scorers (``scorers: [a, b]``): per (dataset, predictor) and scorer pair, the
  rank agreement of their (raw, unclipped) MI over the study compressors, Kendall's tau with a 95%
  percentile bootstrap CI (resampling compressors), and the mean MI offset b - a in bits
  (:func:`scorer_agreement`);
- known-information tasks: ``retained_bits`` (mean bits of the context the compressions keep
  verbatim) beside the MI estimate of each cell;
- Pareto fronts of accuracy (higher is better) against dollars and against GFLOPs per query
  (lower is better), per dataset, baselines included;
- likelihood predictors: usable bits about the answer per cell (summary columns ``usable_bits``
  and CI, from the records' ``pvi_bits``: :func:`compressbench.measure.predict_loglik.pvi_bits`);
- per (cell, signal) the AUROC of pointwise MI, predictor confidence, compression length and PVI
  (an oracle) for "answered correctly" (:func:`compressbench.analysis.signals.signal_table`);
- the offline router (:func:`compressbench.analysis.route.evaluate_router`), its costs from the
  same per-record cost rule as the cells (:func:`record_costs`), τ chosen on one half of the
  examples and evaluated on the other (``route_seed``).
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
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import yaml

from compressbench.analysis.route import RouterResult, evaluate_router
from compressbench.analysis.signals import SIGNALS, signal_table
from compressbench.measure.baselines import baseline_label, in_study, is_baseline, is_compression
from compressbench.measure.mi import KIND_SATURATED
from compressbench.measure.cost import ROLES, LocalRate, PriceTable, mi_cost_ratios, model_info_from_dict, role_cost
from compressbench.core.errors import DataError, UsageError
from compressbench.engine.records import CELL_AXES, CellId, RunRecord, current_records, read_records
from compressbench.core.stats import (  # noqa: F401 (the statistics the report computes are part of its API)
    MIN_CORR_POINTS,
    MIN_FIT_POINTS,
    Correlation,
    RankAgreement,
    RDFit,
    bootstrap_mean_ci,
    correlate,
    fit_rate_distortion,
    pareto_front,
    rank_agreement,
    rd_curve,
    spans_zero,
)
from compressbench.engine.store import read_estimates
from compressbench.engine.summary import STAT_COLUMNS, cell_stats
from compressbench.core.tables import TERMINAL_WIDTH, fmt as _fmt, split_columns
from compressbench.core.tables import fmt_ci as _ci
from compressbench.core.types import ModelInfo
from compressbench.analysis.plots import plot_report
import tempfile
import textwrap

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

log = logging.getLogger(__name__)

#: The report's cell identity is the sweep's (every grid axis plus scorer and predictor mode).
CELL_KEYS: tuple[str, ...] = CELL_AXES
#: Roles counted in a deployed system's cost per query.
SYSTEM_ROLES: tuple[str, ...] = ("compressor", "predictor")
FORMATS: tuple[str, ...] = ("table", "csv", "json", "markdown", "html")
#: The unit of every statistic across cells (rate-distortion fit, correlations): one predictor's
#: cells, per dataset, MI scorer, predictor and predictor mode. A compression's MI does not depend
#: on the predictor, so pooling predictors would count each compressor's MI once per predictor
#: (twice the points, an interval too narrow); within a group each compression setting
#: (compressor, prompt, temperature, seed) is one point. The Findings and the plots read these
#: tables, so all three print the same numbers for the same cells.
GROUP_KEYS: tuple[str, ...] = ("dataset", "scorer", "predictor", "predictor_mode")

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
    #: per (cell, signal): AUROC for "answered correctly" (:mod:`compressbench.analysis.signals`)
    signals: pd.DataFrame | None = None
    #: the offline router (:mod:`compressbench.analysis.route`)
    router: RouterResult | None = None
    #: The unit of the fits and correlations (:data:`GROUP_KEYS`), for readers of the tables
    #: (the plots read the report without importing this module).
    group_keys: ClassVar[tuple[str, ...]] = GROUP_KEYS

    def correlation(self, group: Mapping[str, Any], x: str, y: str) -> dict[str, Any] | None:
        """The correlation of ``x`` with ``y`` over the cells of ``group`` (its :data:`GROUP_KEYS`
        values), as the report tabulates it; None when it has none."""
        return group_row(self.correlations, group, x=x, y=y)

    def fit(self, group: Mapping[str, Any]) -> dict[str, Any] | None:
        """The rate-distortion fit over the compressing cells of ``group``; None when it has none."""
        return group_row(self.rate_distortion, group)
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
            "usable_note": ("usable_bits: mean pointwise V-information about the answer, log2 q(a*|z) - "
                            "log2 q(a*|empty compression), bits (log base 2); at most usable_ceiling_bits "
                            "(mean -log2 q(a*|empty)), which is usable_bound_bits (log2 #options) for a "
                            "predictor uniform without context"),
            "signals": [] if self.signals is None else _records(self.signals),
            "router": None if self.router is None else {
                "split_seed": self.router.seed,
                "fixed": _records(self.router.fixed), "curve": _records(self.router.curve),
                "held_out": _records(self.router.held_out), "notes": list(self.router.notes)},
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
        # lazy: pandas (the [data]/[plot] extra) loads only when a table is built
        import pandas as pd

        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    return v


def _group_label(key: Sequence[Any]) -> str:
    """``dataset / predictor P (mode) / scorer S`` for a :data:`GROUP_KEYS` tuple."""
    g = dict(zip(GROUP_KEYS, key))
    return f"{g['dataset']} / predictor {g['predictor']} ({g['predictor_mode']}) / scorer {g['scorer']}"


def group_row(table: pd.DataFrame, group: Mapping[str, Any], **match: Any) -> dict[str, Any] | None:
    """The row of a per-group table (``Report.rate_distortion`` or ``Report.correlations``) for the
    :data:`GROUP_KEYS` values in ``group`` and the extra column values in ``match`` (e.g.
    ``x="mi_bits", y="accuracy"``), as a dict; None when the table has no such row."""
    ok = np.ones(len(table), dtype=bool)
    for col, val in [*((k, group[k]) for k in GROUP_KEYS), *match.items()]:
        ok &= (table[col] == val).to_numpy()
    rows = table[ok]
    return None if rows.empty else dict(rows.iloc[0])


def _cell_of(rec: RunRecord) -> CellId:
    return rec.cell


def _cell_of_row(row: Mapping[str, Any]) -> CellId | None:
    """The cell of a summary row (None for a row of an older summary format)."""
    try:
        return CellId.from_dict(row)
    except DataError:
        return None


def record_costs(run: RunData, prices: PriceTable, local_rate: LocalRate | None,
                 notes: list[str]) -> list[dict[str, float]]:
    """Cost of each record of ``run.records`` (in order), per role and for the deployed system
    (``gflops_per_query``, ``usd_per_query``: compressor + predictor), from its usage with
    :func:`compressbench.measure.cost.role_cost`: the one cost rule of the report, its cells and
    the router (:mod:`compressbench.analysis.route`). NaN = unknown."""
    missing_price: set[str] = set()
    per_rec: list[dict[str, float]] = []
    for rec in run.records:
        acc: dict[str, float] = {}
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
            acc[f"gflops_{role}"] = np.nan if rc_flops is None else rc_flops / 1e9
            acc[f"usd_{role}"] = np.nan if rc_usd is None else rc_usd
            if role == "compressor":
                acc["gflops_per_compression"] = (
                    np.nan if rc_flops is None or not n_comp else rc_flops / 1e9 / n_comp)
            if role in SYSTEM_ROLES:
                sys_flops = None if (sys_flops is None or rc_flops is None) else sys_flops + rc_flops
                sys_usd = None if (sys_usd is None or rc_usd is None) else sys_usd + rc_usd
                if local_rate is not None:
                    local_usd = None if (local_usd is None or rc_local is None) else local_usd + rc_local
        acc["gflops_per_query"] = np.nan if sys_flops is None else sys_flops / 1e9
        acc["usd_per_query"] = np.nan if sys_usd is None else sys_usd
        if local_rate is not None:
            acc["local_usd_per_query"] = np.nan if local_usd is None else local_usd
        per_rec.append({col: float(v) for col, v in acc.items()})
    for model in sorted(missing_price):
        notes.append(f"no price for paid model {model!r} in {prices.path}: its dollars are unknown "
                     "(add it to the price table or pass --prices)")
    return per_rec


def _cost_rows(run: RunData, per_rec: Sequence[Mapping[str, float]]) -> dict[CellId, dict[str, float]]:
    """Mean cost per query of each cell and role, from :func:`record_costs`."""
    per_cell: dict[CellId, dict[str, list[float]]] = {}
    for rec, cols in zip(run.records, per_rec):
        acc = per_cell.setdefault(_cell_of(rec), {})
        for col, v in cols.items():
            acc.setdefault(col, []).append(v)
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
                 n_boot: int = 2000, seed: int = 0, route_seed: int = 0,
                 route_arms: Sequence[str] | None = None) -> Report:
    """Read a run directory and compute every table of the report (see the module docstring);
    ``route_seed`` splits the examples for the router's held-out evaluation, ``route_arms`` names
    the compressors it tries before the identity (default: all but the keep:k oracles)."""
    # lazy: pandas (the [data]/[plot] extra) loads only when a table is built
    import pandas as pd

    run = load_run(run_dir, meta_overrides)
    table = prices if isinstance(prices, PriceTable) else PriceTable.load(prices)
    rate = local_rate or table.local_rate
    notes: list[str] = []
    rec_costs = record_costs(run, table, rate, notes)
    costs = _cost_rows(run, rec_costs)

    groups: dict[CellId, list[RunRecord]] = {}
    for rec in run.records:
        groups.setdefault(_cell_of(rec), []).append(rec)
    summary = {}
    for srow in run.summary_rows or []:
        cell = _cell_of_row(srow)
        if cell is not None:
            summary[cell] = srow
    estimates = read_estimates(run.path)  # the sweep's own MI columns per cell key, when it got that far
    if run.summary_rows is None:
        notes.append("no summary.json: accuracy recomputed from records; MI from the sweep's estimates "
                     "(mi_estimates.json)" + ("" if estimates else "; none there: pointwise-MI means with "
                                              "bootstrap CIs over examples, clipped at 0"))
    rows = []
    for key, recs in groups.items():
        row: dict[str, Any] = key.as_dict()
        if key in summary:
            srow = summary[key]
            row.update({k: srow.get(k) for k in STAT_COLUMNS})
        else:
            if run.summary_rows is not None:
                notes.append(f"cell {key.label()} is in records.jsonl but not in summary.json; recomputed from records")
            keys = {r.cell_key for r in recs}
            row.update(cell_stats(recs, estimates.get(keys.pop()) if len(keys) == 1 else None))
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
    for key, sub in cells[cells["compresses"]].groupby(list(GROUP_KEYS), sort=True):
        sub = one_protocol(sub, f"rate-distortion fit for {_group_label(key)}", notes)
        fit = fit_rate_distortion(sub["bits_per_token"], sub["distortion"])
        fits.append({**dict(zip(GROUP_KEYS, key)), **fit.__dict__})
        if not fit.ok:
            notes.append(f"rate-distortion fit for {_group_label(key)}: {fit.note}")
    rd = pd.DataFrame(fits, columns=[*GROUP_KEYS, *RDFit.__dataclass_fields__])

    corrs = []
    pairs = [("mi_bits", "accuracy"), ("bits_per_token", "accuracy"), ("mi_bits", "mean_ref_nll_nats"),
             ("bits_per_token", "mean_ref_nll_nats"), ("usable_bits", "accuracy")]
    for key, sub in study.groupby(list(GROUP_KEYS), sort=True):
        sub = one_protocol(sub, f"correlations on {_group_label(key)}", notes)
        for x, y in pairs:
            if x not in sub or y not in sub or sub[x].notna().sum() == 0 or sub[y].notna().sum() == 0:
                continue  # e.g. no reference-answer NLL in this dataset, no usable bits (generate mode)
            c = correlate(sub[x], sub[y], x_name=x, y_name=y, n_boot=n_boot, seed=seed)
            corrs.append({**dict(zip(GROUP_KEYS, key)), **c.__dict__})
            if c.note:
                notes.append(f"correlation {x} vs {y} on {_group_label(key)}: {c.note}")
    corr = pd.DataFrame(corrs, columns=[*GROUP_KEYS, *Correlation.__dataclass_fields__])
    agree = scorer_agreement(cells, n_boot=n_boot, seed=seed, notes=notes)
    sig = signal_table(run.records, n_boot=n_boot, seed=seed)
    router = evaluate_router(run.records, rec_costs, seed=route_seed, arm_names=route_arms)
    return Report(str(run.path), cells, rd, corr, run.models, notes, table.path, agree, sig, router,
                  mi_cost=mi_cost_table(run.records))


def mi_protocol(row: Mapping[str, Any]) -> str:
    """How a cell's MI was measured, as far as pooling goes: ``all/auto`` (every context, or
    ``auto``: K grown per group until the bias-corrected estimate is not saturated and its
    correction is small, so its estimates stand for the all-context one), ``K=<k>`` (a
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
    # lazy: pandas (the [data]/[plot] extra) loads only when a table is built
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
    rows = mi_cost_ratios([{"dataset": k, **v} for k, v in sorted(sums.items())])
    return pd.DataFrame(rows, columns=["dataset", "mi_flops", "identity_flops", "compress_flops", "ratio",
                                       "identity_ratio"])


def scorer_agreement(cells: pd.DataFrame, *, n_boot: int = 2000, seed: int = 0,
                     notes: list[str] | None = None) -> pd.DataFrame:
    """Per (dataset, predictor, prompt, temperature, seed, predictor mode) and each pair of scorers:
    the rank agreement of their MI over the study compressors (:func:`rank_agreement`), the pairs
    taken in compressor-name order (so the interval for a seed does not depend on the order of the
    cells). Empty when the run has one scorer."""
    # lazy: pandas (the [data]/[plot] extra) loads only when a table is built
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
    # lazy: pandas (the [data]/[plot] extra) loads only when a table is built
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
                                 zip(c["mi_negatives"], c["mi_n_negatives"], c["mi_k_stop"],
                                     c["mi_saturated"] if "mi_saturated" in c else [None] * len(c))]}
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


def _negatives_text(negatives: Any, k: Any, stop: Any, saturated: Any = None) -> str:
    """``auto K=31 (below ceiling margin)``, ``K=7``, ``K=7 (saturated: a lower bound)``, ``all K=31``,
    ``not measured`` or ``–``. A saturated estimate is the InfoNCE bound, not the corrected estimate
    (:func:`compressbench.measure.mi.is_saturated`), and says so."""
    if not isinstance(negatives, str):
        return "–"
    if negatives == "not measured":
        return negatives
    kk = "" if k is None or (isinstance(k, float) and math.isnan(k)) else f" K={int(k)}"
    notes = [stop] if isinstance(stop, str) and stop else []
    if isinstance(saturated, (bool, np.bool_)) and saturated:
        notes.append(KIND_SATURATED)
    st = f" ({'; '.join(notes)})" if notes else ""
    return (f"K={int(k)}" if negatives == "fixed" and kk else f"{negatives}{kk}") + st


def display_fits(report: Report) -> pd.DataFrame:
    """The fits for people: a fit the data does not support (a note) shows no parameters, only its
    R² (the reason, when it is one) and the note."""
    # lazy: pandas (the [data]/[plot] extra) loads only when a table is built
    import pandas as pd

    rd = report.rate_distortion
    shown = rd["note"].eq("")

    def param(col: str) -> list[str]:
        return [_ci(v, v - 1.96 * s, v + 1.96 * s) if ok else "–" for v, s, ok in zip(rd[col], rd[f"{col}_se"], shown)]

    return pd.DataFrame({
        "dataset": rd["dataset"], "predictor": rd["predictor"], "points": rd["n_points"],
        "C": param("c"), "b (per bit/token)": param("b"), "D0": param("d0"),
        "R²": rd["r2"].map(_fmt), "RMSE": [_fmt(v) if ok else "–" for v, ok in zip(rd["rmse"], shown)],
        "note": rd["note"],
    })


def display_correlations(report: Report) -> pd.DataFrame:
    # lazy: pandas (the [data]/[plot] extra) loads only when a table is built
    import pandas as pd

    co = report.correlations
    return pd.DataFrame({
        "dataset": co["dataset"], "predictor": co["predictor"], "x": co["x"], "y": co["y"], "cells": co["n"],
        "Pearson r [95% CI]": [_ci(*t) for t in zip(co["pearson_r"], co["pearson_ci_low"], co["pearson_ci_high"])],
        "Spearman ρ [95% CI]": [_ci(*t) for t in zip(co["spearman_rho"], co["spearman_ci_low"], co["spearman_ci_high"])],
        "note": [correlation_note(row) for row in co.to_dict(orient="records")],
    })


def correlation_note(row: Mapping[str, Any]) -> str:
    """The note of a correlation row: why it was not computed, else which 95% CIs span 0 (those
    correlations are not distinguishable from none on these cells); empty when both exclude 0."""
    if row["note"]:
        return str(row["note"])
    spans = [name for name, lo, hi in (("Pearson", row["pearson_ci_low"], row["pearson_ci_high"]),
                                        ("Spearman", row["spearman_ci_low"], row["spearman_ci_high"]))
             if spans_zero(float(lo), float(hi))]
    if not spans:
        return ""
    what = "Pearson's and Spearman's 95% CIs span" if len(spans) == 2 else f"{spans[0]}'s 95% CI spans"
    return f"{what} 0: no evidence of a relation on these cells"


def display_scorer_agreement(report: Report) -> pd.DataFrame:
    # lazy: pandas (the [data]/[plot] extra) loads only when a table is built
    import pandas as pd

    ag = report.scorer_agreement
    return pd.DataFrame({
        "dataset": ag["dataset"], "predictor": ag["predictor"], "scorers": ag["scorer_a"] + " vs " + ag["scorer_b"],
        "compressors": ag["n"],
        "Kendall τ [95% CI]": [_ci(*t) for t in zip(ag["kendall_tau"], ag["tau_ci_low"], ag["tau_ci_high"])],
        "mean MI offset bits (b − a)": ag["mean_offset_bits"].map(_fmt), "note": ag["note"],
    })


def display_usable(report: Report) -> pd.DataFrame:
    """Per cell with usable bits: accuracy, MI about the context and usable bits about the answer."""
    # lazy: pandas (the [data]/[plot] extra) loads only when a table is built
    import pandas as pd

    c = report.cells
    if "usable_bits" not in c or not c["usable_bits"].notna().any():
        return pd.DataFrame()
    c = c[c["usable_bits"].notna()]
    return pd.DataFrame({
        "dataset": c["dataset"], "compressor": c["compressor"], "predictor": c["predictor"],
        **({"scorer": c["scorer"]} if c["scorer"].nunique() > 1 else {}),
        "accuracy [95% CI]": [_ci(*t) for t in zip(c["accuracy"], c["accuracy_ci_low"], c["accuracy_ci_high"])],
        "MI about the context, bits [95% CI]": [_ci(*t) for t in zip(c["mi_bits"], c["mi_ci_low_bits"],
                                                                     c["mi_ci_high_bits"])],
        "usable bits about the answer [95% CI]": [_ci(*t) for t in zip(c["usable_bits"], c["usable_bits_ci_low"],
                                                                       c["usable_bits_ci_high"])],
        "ceiling −log2 q(a*|empty)": c["usable_ceiling_bits"].map(_fmt),
        "log2 #options": c["usable_bound_bits"].map(_fmt),
    })


def display_signals(report: Report) -> pd.DataFrame:
    """AUROC [95% CI] of each per-example signal for "answered correctly", one row per cell."""
    # lazy: pandas (the [data]/[plot] extra) loads only when a table is built
    import pandas as pd

    sig = report.signals
    if sig is None or not len(sig):
        return pd.DataFrame()
    rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    keys = ["dataset", "compressor", "predictor", *(["scorer"] if sig["scorer"].nunique() > 1 else [])]
    for _, r in sig.iterrows():
        row = rows.setdefault(tuple(r[k] for k in keys), {**{k: r[k] for k in keys},
                                                          "correct/wrong": f"{r['n_correct']}/{r['n_wrong']}"})
        row[SIGNALS[r["signal"]][0]] = r["note"] or _ci(r["auroc"], r["auroc_ci_low"], r["auroc_ci_high"])
    return pd.DataFrame(list(rows.values()))


def display_router(report: Report) -> pd.DataFrame:
    """The router's held-out points: per signal and budget arm, router vs that fixed arm."""
    # lazy: pandas (the [data]/[plot] extra) loads only when a table is built
    import pandas as pd

    r = report.router
    if r is None or not len(r.held_out):
        return pd.DataFrame()
    h = r.held_out
    return pd.DataFrame({
        "dataset": h["dataset"], "predictor": h["predictor"], "signal": h["signal"],
        "budget (fixed arm)": h["budget_compressor"], "n": h["n"],
        "τ (A→B; B→A)": [f"{_fmt(a)}; {_fmt(b)}" for a, b in zip(h["tau_a"], h["tau_b"])],
        "router accuracy [95% CI]": [_ci(*t) for t in zip(h["accuracy"], h["accuracy_ci_low"], h["accuracy_ci_high"])],
        "router cost/query": [f"{_fmt(v)} {u}" for v, u in zip(h["cost"], h["cost_unit"])],
        "fixed accuracy [95% CI]": [_ci(*t) for t in zip(h["fixed_accuracy"], h["fixed_accuracy_ci_low"],
                                                          h["fixed_accuracy_ci_high"])],
        "fixed cost/query": [f"{_fmt(v)} {u}" for v, u in zip(h["fixed_cost"], h["cost_unit"])],
        "difference [95% CI]": [_ci(*t) for t in zip(h["diff"], h["diff_ci_low"], h["diff_ci_high"])],
        "served by": h["served"], "router": h["verdict"],
    })


def _sections(report: Report) -> list[tuple[str, pd.DataFrame]]:
    out = [("Cells (per query; reference rows are baselines)", display_cells(report)),
           ("Rate–distortion fits: D(R) = C·exp(−b·R) + D0, R in bits per token", display_fits(report)),
           ("MI vs accuracy / reference NLL across one predictor's cells", display_correlations(report))]
    if report.scorer_agreement is not None and len(report.scorer_agreement):
        out.append(("MI scorer agreement (proxy sensitivity): rank of compressors by MI", display_scorer_agreement(report)))
    usable = display_usable(report)
    if len(usable):
        out.append(("Usable information about the answer (PVI: log2 q(a*|z) − log2 q(a*|empty), bits, log2; "
                    "0 for empty by construction; at most the mean −log2 q(a*|empty), which is log2 #options "
                    "for a predictor uniform without context)",
                    usable))
    signals = display_signals(report)
    if len(signals):
        out.append(("Per-example signals: AUROC for 'answered correctly' (0.5 = no signal; PVI is an oracle: "
                    "it needs the answer) [95% bootstrap CI over examples]", signals))
    router = display_router(report)
    if len(router) and report.router is not None:
        out.append((f"Router, held out: cheapest arm whose signal ≥ τ, else the next, else identity; τ chosen "
                    f"on one half of the examples within the budget arm's cost there, applied to the other "
                    f"(split seed {report.router.seed}); cost = compressor + predictor of every arm tried "
                    f"(confidence) or compressor of every arm tried + predictor of the serving arm (MI)", router))
    if report.mi_cost is not None and len(report.mi_cost):
        out.append(("MI measurement / compression FLOPs (scoring of every compressor but identity, prefills "
                    "included, / the model compressors' compressions; identity's scoring on its own)",
                    display_mi_cost(report)))
    return out


def display_mi_cost(report: Report) -> pd.DataFrame:
    """The MI cost table for people: FLOPs and ratios."""
    # lazy: pandas (the [data]/[plot] extra) loads only when a table is built
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
    # lazy: pandas (the [data]/[plot] extra) loads only when a table is built
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
    # lazy: tabulate (the [plot] extra) loads only for Markdown tables
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
    intro = ("Bits are log base 2. Costs are per query; $ counts paid-API roles only "
             f"(prices: {report.prices_path}); '–' = unknown.")
    parts.append(f"{head}compressbench report: {report.run_dir}\n")
    parts.append((intro if fmt == "markdown" else _wrap_text(intro)) + "\n")
    for title, df in _sections(report):
        parts.append(("## " + title if fmt == "markdown" else _wrap_text(title)) + "\n")
        if not len(df):
            parts.append("(none)")
        elif fmt == "markdown":
            parts.append(tabulate(df, headers="keys", tablefmt=tablefmt, showindex=False, disable_numparse=True))
        else:
            parts.append(_terminal_table(df))
        parts.append("")
    if report.notes:
        parts.append(("## " if fmt == "markdown" else "") + "Notes\n")
        parts.extend(f"- {n}" if fmt == "markdown" else _wrap_text(f"- {n}", indent="  ") for n in report.notes)
    return "\n".join(parts) + "\n"


#: Columns that name a row of a report table; they start every column group of a split table.
_KEY_COLUMNS = ("dataset", "compressor", "predictor", "prompt", "temperature", "seed", "scorer", "predictor_mode",
                "x", "y", "scorers")
#: Longer cells of a terminal table are wrapped onto several lines.
_MAX_CELL_CHARS = 40


def _wrap_text(text: str, *, indent: str = "") -> str:

    return textwrap.fill(text, width=TERMINAL_WIDTH, subsequent_indent=indent, break_on_hyphens=False)


def _terminal_table(df: pd.DataFrame) -> str:
    """A report table for the terminal: long cells wrapped, and split into column groups (the
    row's key columns repeated in each) that fit :data:`compressbench.core.tables.TERMINAL_WIDTH`."""
    # lazy: tabulate (the [plot] extra) loads only for Markdown tables
    from tabulate import tabulate


    def cell(v: Any) -> str:
        s = "" if v is None else str(v)
        return textwrap.fill(s, width=_MAX_CELL_CHARS, break_on_hyphens=False) if len(s) > _MAX_CELL_CHARS else s

    head = [str(c) for c in df.columns]
    body = [[cell(v) for v in row] for row in df.itertuples(index=False, name=None)]
    n_keys = next((i for i, h in enumerate(head) if h not in _KEY_COLUMNS), len(head))
    return "\n\n".join(tabulate(b, headers=h, tablefmt="simple", disable_numparse=True)
                        for h, b in split_columns(head, body, n_keys=n_keys, header_pad=2))


def render_html(report: Report, *, plots_dir: str | Path | None = None) -> str:
    """One self-contained HTML page: the tables, then every plot embedded as a base64 PNG."""
    body = [f"<h1>compressbench report</h1><p>Run: <code>{html.escape(report.run_dir)}</code>. "
            "Bits are log base 2; costs are per query; $ counts paid-API roles only (prices: "
            f"<code>{html.escape(report.prices_path)}</code>); '–' = unknown.</p>"]
    for title, df in _sections(report):
        body.append(f"<h2>{html.escape(title)}</h2>")
        body.append(df.to_html(index=False, escape=True, classes="table", border=0) if len(df) else "<p>(none)</p>")

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
    plot_kw = {k: kwargs.pop(k) for k in ("formats", "names", "dpi") if k in kwargs}
    report = build_report(run_dir, **kwargs)
    return plot_report(report, out_dir if out_dir is not None else Path(run_dir) / "plots", **plot_kw)
