"""The sweep driver: grid expansion, the stage loop, records and summary.

A *group* (:class:`compressbench.engine.stages.Group`: dataset, compressor, prompt, temperature, seed)
owns the M compressions per example and one (N, M, N) log-prob tensor shared by every predictor.
A *cell* (:class:`compressbench.engine.records.CellId`: a group plus predictor, scorer and predictor mode)
owns one record per example and one summary row.

Stages (:mod:`compressbench.engine.stages`) run model by model, so each model is loaded at most once per
sweep and only on a cache miss (a fully cached resume loads nothing); the
:class:`compressbench.engine.scheduler.Scheduler` releases a model after the last stage that uses it:

1. compress: every model compressor writes M samples per example; baselines are filled in;
2. score: the scorer's tensor and the MI estimate per group;
3. predict (per ``predictor_mode``): every predictor answers from each compression;
4. judge (optional): the judge grades free-form answers;
5. records: one :class:`compressbench.engine.records.RunRecord` per (cell, example) appended to
   ``records.jsonl``; then the summary.

Model work goes through an :class:`compressbench.engine.scheduler.Executor` (default
:class:`compressbench.engine.scheduler.LocalExecutor`) and the cache
(:class:`compressbench.engine.caching.CachedModel`); only this driver writes the run directory, holding
its lock (:class:`compressbench.engine.store.RunLock`) for the whole run.

Identity of a result: a record is keyed by its cell key (the cell's axes plus a hash of the prompt
ids, sampling settings, model identities incl. revision, and the content hash of the dataset) and
its example id, and carries its example's content hash. An edited dataset row (or prompt file, or
model revision) gives new records; the old ones are superseded
(:func:`compressbench.engine.records.current_records`) and never summarised or reported. The summary
says how many records were recomputed.

Context overflow (``on_context_overflow``): before a cache miss is generated, the variable text of
the prompt is measured with the model's ``count_tokens`` and the window read from its ``info()``
at that moment (:mod:`compressbench.engine.model_work`); ``truncate`` cuts the text at a word boundary
and records the kept token count in ``context_truncated[role]``; ``fail`` fails the example.
Failed examples count towards ``max_error_rate``; past it the sweep writes what it has and raises
:class:`compressbench.core.errors.SweepAborted`. A failed example is not a result: a rerun computes
every failed (cell, example) again (transient failures are never cached) and its record replaces
the failed one (see :meth:`Sweep._write_records`), so fixing the cause and rerunning gives the
records and summary of a clean run.

Cost: ``flops[role]`` of every record is :func:`compressbench.measure.cost.role_cost` of its usage (the
one FLOPs function; the summary sums it and the report recomputes it the same way). Scorer usage
per example ``i`` is its row of the shared-prefix schedule: its share of the one prefill of prefix
``x_i`` (split evenly among the groups scored after it in that round,
:func:`compressbench.engine.model_work.share_prefills`) plus every compression of the group scored
after it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import subprocess
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from compressbench.backends import max_in_flight
from compressbench.measure.baselines import is_baseline
from compressbench.engine.caching import CachedModel
from compressbench.engine.config import SweepConfig
from compressbench.core.errors import DataError, SweepAborted
from compressbench.core.progress import Progress
from compressbench.engine.records import (
    RECORD_VERSION,
    CellId,
    RunRecord,
    append_records,
    example_hash,
    read_records,
)
from compressbench.engine.scheduler import (
    BackendFactory,
    Executor,
    ModelRegistry,
    Scheduler,
    build_executor,
)
from compressbench.engine.stages import (
    PREDICT_STAGES,
    Compressions,
    Group,
    Prediction,
    Prompts,
    StageContext,
    baseline_compressions,
    compress,
    judge,
    make_record,
    score_groups,
)
from compressbench.engine.store import RunStore, canonical_json, text_hash
from compressbench.engine.summary import SUMMARY_COLUMNS, mi_columns, summary_row
from compressbench.core.types import Example
from compressbench.core.paths import PACKAGE_DIR
from compressbench.core.version import __version__
from compressbench.data import load_dataset
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

log = logging.getLogger(__name__)

__all__ = ["SUMMARY_COLUMNS", "Sweep", "SweepResult", "expand_grid", "run_sweep"]


def expand_grid(config: SweepConfig) -> list[Group]:
    """Every group, in a deterministic order (dataset, prompt, temperature, seed, compressor)."""
    return [Group(d.name, c, p, t, s)
            for d in config.datasets for p in config.prompts for t in config.temperatures
            for s in config.seeds for c in config.compressors]


def load_examples(config: SweepConfig, given: Mapping[str, Sequence[Example]] | None) -> dict[str, list[Example]]:
    """Each dataset's examples (``given`` by name where given, else ``load_dataset``), cut to
    ``limit``; ids unique."""
    out: dict[str, list[Example]] = {}
    for d in config.datasets:
        if given is not None and d.name in given:
            exs = list(given[d.name])
        else:
            exs = list(load_dataset({**d.spec, "name": d.name}))
        if config.limit is not None:
            exs = exs[: config.limit]
        if not exs:
            raise DataError(f"dataset {d.name!r} has no examples; check its spec {dict(d.spec)} and --limit")
        dup = [k for k, v in Counter(e.id for e in exs).items() if v > 1]
        if dup:
            raise DataError(f"dataset {d.name!r} has duplicate example ids {dup[:5]}; ids must be unique")
        out[d.name] = exs
    return out


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PACKAGE_DIR,
                             capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


@dataclass
class SweepResult:
    run_dir: Path
    rows: list[dict[str, Any]]
    n_records_written: int
    n_recomputed: int
    model_loads: dict[str, int]
    cache_hits: int
    cache_misses: int


@dataclass
class _State:
    """What the stages produced in this run."""

    comps: dict[Group, list[Compressions]]
    estimates: dict[tuple[Group, str], Any]  # (group, scorer) -> MIEstimate or None
    preds: dict[tuple[Group, str], list[Prediction]]
    #: (group, scorer) -> the group's compressions as that scorer saw them (token counts, pointwise
    #: MI, scorer usage); the first scorer's are ``comps[group]`` itself.
    scored: dict[tuple[Group, str], list[Compressions]] = dataclasses.field(default_factory=dict)


class Sweep:
    """One sweep over a config into a run directory (resumable). Use :func:`run_sweep`."""

    def __init__(self, config: SweepConfig, runs_dir: str | Path, *, backend_factory: BackendFactory | None = None,
                 executor: Executor | None = None, progress: bool = True,
                 examples: Mapping[str, Sequence[Example]] | None = None):
        self.config = config
        self.store = RunStore(Path(runs_dir) / config.name)
        self.executor: Executor = executor or build_executor(config, backend_factory)
        self.progress = progress
        self.examples = load_examples(config, examples)
        self.prompts = Prompts.load(config)
        self.hashes = {(d, e.id): example_hash(e) for d, exs in self.examples.items() for e in exs}
        self._latest: dict[tuple[str, str], RunRecord] = {}
        self._models: dict[str, CachedModel] = {}
        self._created: str | None = None

    def model(self, name: str) -> CachedModel:
        if name not in self._models:
            spec = self.config.models.get(name)
            self._models[name] = CachedModel(name, self.registry, self.executor, self.store.cache,
                                             overflow=self.config.on_context_overflow, progress=self.progress,
                                             min_batch=max_in_flight(spec.backend, spec.options) if spec else None)
        return self._models[name]

    def _write_manifest(self) -> None:
        infos = self.registry.infos()
        self.store.write_manifest({
            "compressbench_version": __version__, "record_version": RECORD_VERSION, "git_sha": _git_sha(),
            "created_utc": self._created, "seeds": list(self.config.seeds), "prompt_ids": self.prompts.ids(),
            "models": {n: {**m.to_dict(), "info": infos.get(n)} for n, m in self.config.models.items()},
        })

    def run(self) -> SweepResult:
        with self.store.lock():
            self.store.prepare(self.config.to_yaml())
            self.store.repair()
            self._existing = read_records(self.store.root)
            self._latest = {(r.cell_key, r.example_id): r for r in self._existing}
            path = self.store.root / "manifest.json"
            old = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
            self._created = old.get("created_utc") or datetime.now(timezone.utc).isoformat(timespec="seconds")
            known = {n: (m or {}).get("info") for n, m in old.get("models", {}).items()}
            self.registry = ModelRegistry(self.config, self.executor, known, on_change=self._write_manifest)
            self._write_manifest()
            try:
                return self._run()
            finally:
                self.executor.close()

    def _each(self, tasks: list[tuple[str, Callable[[], None]]], stage: str, sched: Scheduler) -> None:
        """Run a stage's ``(model, work)`` tasks in order, or several at once when the executor can
        (``executor.parallelism`` > 1, e.g. Ray actors: each task's model work goes to a free
        replica; the cache and the run directory stay in this process). A model is released after
        its last task of the stage unless a later stage uses it."""
        left = Counter(m for m, _ in tasks)

        def finished(model: str) -> None:
            left[model] -= 1
            if left[model] == 0:
                sched.done(model, stage)

        par = int(getattr(self.executor, "parallelism", 1) or 1)
        if par <= 1 or len(tasks) <= 1:
            for model, work in tasks:
                work()
                finished(model)
            return

        pool = ThreadPoolExecutor(max_workers=min(par, len(tasks)), thread_name_prefix=f"cb-{stage}")
        try:
            futures = {pool.submit(work): model for model, work in tasks}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for f in done:
                    f.result()  # re-raises a task's error here, in the driver thread
                    finished(futures[f])
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _run(self) -> SweepResult:
        cfg, exs = self.config, self.examples
        sched = Scheduler(cfg, self.executor)
        ctx = StageContext(cfg, self.prompts, self.model)
        groups = expand_grid(cfg)
        st = _State({}, {}, {})
        def do_compress(g: Group) -> None:
            st.comps[g] = compress(ctx, g, exs[g.dataset])

        def do_score_set(gs: list[Group], sc: str) -> None:
            ests = score_groups(ctx, gs, exs[gs[0].dataset], {g: st.scored[(g, sc)] for g in gs}, sc)
            for g in gs:
                st.estimates[(g, sc)] = ests[g]

        def do_predict(g: Group, model: str) -> None:
            predict = PREDICT_STAGES[cfg.mode_of(model)]
            st.preds[(g, model)] = predict(ctx, g, model, exs[g.dataset], st.comps[g])

        self._each([(model, lambda g=g: do_compress(g)) for model in sched.compressor_models(cfg)
                    for g in groups if g.compressor == model], "compressor", sched)
        for g in (g for g in groups if is_baseline(g.compressor)):
            st.comps[g] = baseline_compressions(ctx, g, exs[g.dataset])
        self._check_error_rate(groups, st)
        for g in groups:  # other scorers see copies taken before the first scorer fills its facts in
            for sc in cfg.scorers[1:]:
                st.scored[(g, sc)] = [dataclasses.replace(c, truncated=dict(c.truncated)) for c in st.comps[g]]
            st.scored[(g, cfg.scorer)] = st.comps[g]
        by_dataset: dict[str, list[Group]] = {}
        for g in groups:  # groups of one dataset share the scoring prefixes: one prefill each per sweep
            by_dataset.setdefault(g.dataset, []).append(g)
        for sc in cfg.scorers:
            with Progress(f"score (MI) {sc}", len(groups), enabled=self.progress, unit="groups") as bar:
                def score_set(gs: list[Group], sc: str = sc) -> None:
                    do_score_set(gs, sc)
                    bar.update(len(gs))

                self._each([(sc, lambda gs=gs: score_set(gs)) for gs in by_dataset.values()], "scorer", sched)
        if all(n in self.registry.infos() for n in cfg.model_names_in_use()):
            self._write_estimates(groups, st)  # now, if the cell keys need no model loaded; else with the records
        self._check_error_rate(groups, st)
        self._each([(model, lambda g=g, m=model: do_predict(g, m)) for model in cfg.predictors for g in groups],
                   "predictor", sched)
        if cfg.judge:
            judge_model = cfg.judge
            self._each([(judge_model, lambda g=g, m=model, p=preds: judge(ctx, g, m, exs[g.dataset], p))
                        for (g, model), preds in st.preds.items()], "judge", sched)
            sched.done(cfg.judge, "judge")
        n_written, n_recomputed = self._write_records(groups, st)
        rows = self._summarise(groups, st)
        self.store.write_summary(rows, SUMMARY_COLUMNS,
                                 {"records": {"written": n_written, "recomputed": n_recomputed}})
        self._write_manifest()
        n_fail, n_all = self._failures(groups, st)
        if n_all and n_fail / n_all > cfg.max_error_rate:
            raise SweepAborted(self._abort_message(groups, st))
        cache = self.store.cache
        log.info("sweep %s: %d records written (%d recomputed: they had failed, or their example, prompt or model "
                 "changed); "
                 "cache: %d hits, %d misses; model loads: %s", cfg.name, n_written, n_recomputed, cache.hits,
                 cache.misses, dict(self.executor.loads) or "none")
        return SweepResult(self.store.root, rows, n_written, n_recomputed, dict(self.executor.loads), cache.hits,
                           cache.misses)

    # ------------------------------------------------------------------ identity

    def cell_keys(self, groups: list[Group]) -> dict[tuple[Group, str, str], tuple[CellId, str]]:
        """(CellId, cell key) of every cell, keyed by (group, predictor, scorer); the key's hash
        covers prompt ids, sampling settings, the cell's model identities (incl. revision) and the
        dataset's content."""
        cfg = self.config
        common = {"prompts": self.prompts.ids(), "samples": cfg.samples, "mnt": dict(cfg.max_new_tokens),
                  "pt": cfg.predictor_temperature, "overflow": cfg.on_context_overflow, "n_boot": cfg.mi_n_boot}
        if cfg.mi_negatives != "all" or cfg.mi_identity_negatives != "all":  # "all" keeps the keys of before
            common["negatives"] = [cfg.mi_negatives, cfg.mi_identity_negatives, cfg.mi_auto_margin_bits,
                                   cfg.mi_design_seed]
        data = {d: text_hash("".join(self.hashes[(d, e.id)] for e in exs)) for d, exs in self.examples.items()}
        ident = {n: self.registry.identity(n) for n in cfg.model_names_in_use()}
        out = {}
        for g in groups:
            for p in cfg.predictors:
                for sc in cfg.scorers:
                    material = {**common, "data": data[g.dataset],
                                "compressor": ident.get(g.compressor, g.compressor),
                                "predictor": ident[p], "scorer": ident[sc],
                                "judge": ident.get(cfg.judge) if cfg.judge else None}
                    cell = g.cell(p, sc, cfg.mode_of(p))
                    out[(g, p, sc)] = (cell, cell.key(text_hash(canonical_json(material))[:12]))
        return out

    # ------------------------------------------------------------------ records

    def _failures(self, groups: list[Group], st: _State) -> tuple[int, int]:
        return len(self._errors(groups, st)), sum(len(st.comps.get(g, [])) for g in groups) * len(self.config.predictors)

    def _errors(self, groups: list[Group], st: _State) -> list[str]:
        """The error of every failed (example, predictor) so far."""
        out = []
        for g in groups:
            for i, comp in enumerate(st.comps.get(g, [])):
                for model in self.config.predictors:
                    p = st.preds.get((g, model))
                    err = comp.error if comp.error is not None else (p[i].error if p is not None else None)
                    if err is not None:
                        out.append(err)
        return out

    def _abort_message(self, groups: list[Group], st: _State) -> str:
        errors = self._errors(groups, st)
        n_fail, n_all = self._failures(groups, st)
        return (f"sweep aborted: {n_fail} of {n_all} examples failed ({n_fail / n_all:.0%} > max_error_rate "
                f"{self.config.max_error_rate:.0%}). {most_common_error(errors)}\nEvery error is in "
                f"{self.store.records_path} (field 'error'). Fix the cause and rerun the same command (every "
                "failed example is computed again), or raise max_error_rate (--set max_error_rate=...)")

    def _check_error_rate(self, groups: list[Group], st: _State) -> None:
        n_fail, n_all = self._failures(groups, st)
        if n_all and n_fail / n_all > self.config.max_error_rate:
            # Record the failed examples so the user can see why, then stop.
            failed = _State(st.comps, st.estimates, {(g, m): [Prediction() for _ in self.examples[g.dataset]]
                                                     for g in groups for m in self.config.predictors})
            self._write_records(groups, failed, only_failed=True)
            raise SweepAborted(self._abort_message(groups, st))

    def _write_estimates(self, groups: list[Group], st: _State) -> None:
        """``mi_estimates.json``: each cell's MI columns from its group's estimate, so a report of a
        run that stopped before its summary shows the summary's MI (one function: ``mi_columns``)."""
        self.store.write_estimates({ck: mi_columns(st.estimates[(g, sc)])
                                    for (g, _p, sc), (_cell, ck) in self.cell_keys(groups).items()
                                    if st.estimates.get((g, sc)) is not None})

    def _write_records(self, groups: list[Group], st: _State, *, only_failed: bool = False) -> tuple[int, int]:
        """Append the records not on disk yet: (written, recomputed = replacing an older record of
        the same cell and example).

        A failed example is not a result: a record on disk is kept only if this run computed the
        same record (wall time aside). So a failed (cell, example), recomputed this run (transient
        failures are never cached), is replaced by its new outcome, and a success whose group
        changed (an example that failed before now scores, so every pointwise MI of the group
        moves) is replaced too; a rerun after a fault is fixed gives the records of a clean run.
        A success is never replaced by a failure (an outage on a rerun loses no result)."""
        cfg = self.config
        latest = self._latest
        seen = {(r.cell, r.example_id) for r in self._existing}
        keys = self.cell_keys(groups)
        if st.estimates:
            self._write_estimates(groups, st)
        n = n_re = 0
        with self.store.writer() as w:
            for (g, model, sc), (cell, ck) in keys.items():
                comps = st.scored.get((g, sc), st.comps[g])
                batch: list[RunRecord] = []
                for i, ex in enumerate(self.examples[g.dataset]):
                    old = latest.get((ck, ex.id))
                    if old is not None and old.example_hash != self.hashes[(g.dataset, ex.id)]:
                        old = None  # an edited example: the old record is superseded, not replaced
                    comp, pred = comps[i], st.preds[(g, model)][i]
                    if only_failed and comp.error is None and pred.error is None:
                        continue
                    rec = make_record(cell, ck, ex, comp, pred,
                                      {"compressor": g.compressor, "predictor": model, "scorer": sc,
                                       "judge": cfg.judge}, self.registry.cost_info)
                    if old is not None and ((rec.error is not None and old.error is None) or _same_record(old, rec)):
                        continue
                    batch.append(rec)
                    latest[(ck, ex.id)] = rec
                    n_re += (cell, ex.id) in seen
                n += append_records(w, batch)
        return n, n_re

    def _summarise(self, groups: list[Group], st: _State) -> list[dict[str, Any]]:
        latest = self._latest  # what was on disk at the start plus what this run appended
        rows = []
        for (g, _model, sc), (cell, ck) in self.cell_keys(groups).items():
            recs = [latest[(ck, e.id)] for e in self.examples[g.dataset] if (ck, e.id) in latest
                    and latest[(ck, e.id)].example_hash == self.hashes[(g.dataset, e.id)]]
            rows.append(summary_row(cell, ck, self.prompts.compress[g.prompt.label].id, self.config.samples, recs,
                                    st.estimates.get((g, sc))))
        return rows


def _same_record(a: RunRecord, b: RunRecord) -> bool:
    """Whether two records hold the same outcome (their wall times aside)."""
    da, db = a.to_dict(), b.to_dict()
    da.pop("wall_s", None)
    db.pop("wall_s", None)
    return json.dumps(da, sort_keys=True) == json.dumps(db, sort_keys=True)  # NaN equals NaN here


def _error_kind(error: str) -> str:
    """What an error message says with its particulars (numbers, quoted text) blanked out, so the
    same failure on different examples counts as one kind."""
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", error)
    return re.sub(r"\d+(?:\.\d+)?", "#", text)[:160]


def most_common_error(errors: Sequence[str], *, max_chars: int = 800) -> str:
    """``Most common error (k of n failures): <one example, in full>`` for an abort message."""
    if not errors:
        return "No error message was recorded."
    kinds = Counter(_error_kind(e) for e in errors)
    kind, n = kinds.most_common(1)[0]
    example = next(e for e in errors if _error_kind(e) == kind)
    if len(example) > max_chars:
        example = example[:max_chars] + " ..."
    others = f"; {len(kinds) - 1} other kind(s)" if len(kinds) > 1 else ""
    return f"Most common error ({n} of {len(errors)} failures{others}), for example:\n  {example}"


def run_sweep(config: SweepConfig, runs_dir: str | Path = "runs", *, backend_factory: BackendFactory | None = None,
              executor: Executor | None = None, progress: bool = True,
              examples: Mapping[str, Sequence[Example]] | None = None) -> SweepResult:
    """Run (or resume) a sweep into ``<runs_dir>/<config.name>/``; returns the summary rows.

    `backend_factory(kind, model, **options)` builds backends for the default
    :class:`compressbench.engine.scheduler.LocalExecutor` (default :func:`compressbench.backends.load_backend`);
    `executor` replaces that executor; `examples` replaces ``load_dataset`` per dataset name.
    """
    return Sweep(config, runs_dir, backend_factory=backend_factory, executor=executor, progress=progress,
                 examples=examples).run()
