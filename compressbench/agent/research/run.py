"""Run the research benchmark into a run directory (``compressbench research``).

``runs/<name>/`` holds ``config.yaml`` (resolved), ``manifest.json`` (``"kind": "research"``,
models, the price the predictor is billed at, the benchmark), ``records.jsonl`` (typed records
of :mod:`compressbench.agent.research.records`, append-only) and ``summary.json`` / ``summary.csv``
(one row per arm: accuracy with 95% CI, MI per round, predictor tokens and dollars; see
:mod:`compressbench.agent.research.report`).

Resume: rerun the same command and the questions already answered in an arm are skipped; a
killed run loses at most the questions in flight (a question's records are written in one
append). MI per round is computed once all questions of an arm are done; it is recomputed
only when the set of questions changed.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from compressbench.core.errors import ConfigError, UsageError
from compressbench.agent.research.config import ResearchConfig, is_truncate
from compressbench.agent.research.corpus import Document, Question
from compressbench.agent.research.records import (
    RESEARCH_RECORD_VERSION,
    RUN_KIND,
    UNCOMPRESSED,
    AnswerRecord,
    RoundMIRecord,
    RoundRecord,
    record_from_dict,
)

log = logging.getLogger(__name__)

RECORDS = "records.jsonl"
BackendFactory = Callable[..., Any]


@dataclass(frozen=True)
class ResearchResult:
    run_dir: Path
    rows: list[dict[str, Any]]
    n_new_questions: int


class BaselineCompressor:
    """``truncate:<n>`` as a compressor for the agent: the longest word-boundary prefix with at most
    n tokens under the scorer's tokenizer (:func:`compressbench.measure.baselines.truncate_to_tokens`).
    It costs nothing (0 tokens, 0 FLOPs: known zero, not unknown)."""

    def __init__(self, name: str, count_tokens: Callable[[Sequence[str]], list[int]]):
        n = is_truncate(name)
        if n is None:
            raise ConfigError(f"{name!r} is not a truncate:<tokens> baseline")
        self.name, self.n_tokens, self.count_tokens = name, n, count_tokens

    def batch(self, items: Sequence[tuple[str, str]], n: int = 1) -> list[Any]:
        from compressbench.measure.baselines import truncate_to_tokens
        from compressbench.agent.step import StepResult

        zero = {"n_prompt_tokens": 0, "n_completion_tokens": 0, "n_calls": 0}
        return [StepResult(c, q, (truncate_to_tokens(c, self.n_tokens, self.count_tokens),) * n, zero, 0.0, 0.0, None)
                for c, q in items]


def load_benchmark(config: ResearchConfig) -> tuple[list[Document], list[Question]]:
    """The corpus and questions the config names (the first ``limit`` questions)."""
    b = config.benchmark
    if b["kind"] == "generated":
        from compressbench.agent.research.bench import generate_benchmark

        docs, qs = generate_benchmark(int(b.get("seed", 0)), int(b.get("n_companies", 12)),
                                      int(b.get("n_questions", 20)))
    else:
        from compressbench.agent.research.corpus import load_documents, load_questions

        docs, qs = load_documents(b["path"]), load_questions(b["questions"])
    return docs, qs[: config.limit] if config.limit else qs


class _Models:
    """Each named model loaded once (predictor, compressor and scorer may be the same)."""

    def __init__(self, config: ResearchConfig, factory: BackendFactory | None):
        from compressbench.backends import load_backend

        self.config = config
        self.factory = factory or load_backend
        self._loaded: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        if name not in self._loaded:
            spec = self.config.models[name]
            log.info("loading model %s (%s %s)", name, spec["backend"], spec["model"])
            self._loaded[name] = self.factory(spec["backend"], spec["model"], **dict(spec.get("options") or {}))
        return self._loaded[name]

    def info(self, name: str) -> Any:
        from compressbench.measure.cost import model_info_from_dict

        b = self.get(name)
        info = b.info() if callable(getattr(b, "info", None)) else None
        over = self.config.models[name].get("info") or {}
        if over:
            base = {k: v for k, v in (vars(info).items() if info is not None else ()) if k != "extra"}
            info = model_info_from_dict({**base, **over}, reference=name)
        return info


def _prepare(run_dir: Path, config_yaml: str) -> None:
    from compressbench.engine.store import atomic_write_text

    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = run_dir / "config.yaml"
    if cfg.exists():
        old = cfg.read_text(encoding="utf-8")
        if old != config_yaml:
            import difflib

            diff = "".join(difflib.unified_diff(old.splitlines(True), config_yaml.splitlines(True),
                                                "config.yaml (in the run)", "config (now)", n=0))
            raise ConfigError(f"{run_dir} holds a research run of a different config; resuming would mix "
                              f"results. Use another --runs-dir, another name (--set name=...), or delete the "
                              f"folder.\n{diff}")
        return
    atomic_write_text(cfg, config_yaml)


def read_research_records(run_dir: str | Path) -> list[Any]:
    """The typed records of a research run, in file order (a torn last line is skipped)."""
    from compressbench.engine.store import read_jsonl

    return [record_from_dict(d) for d in read_jsonl(Path(run_dir) / RECORDS)]


def is_research_run(run_dir: str | Path) -> bool:
    """Whether ``run_dir``'s manifest says it is a research run."""
    p = Path(run_dir) / "manifest.json"
    try:
        return json.loads(p.read_text(encoding="utf-8")).get("kind") == RUN_KIND
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def _manifest(config: ResearchConfig, models: _Models, docs: list[Document], qs: list[Question],
              price: Any, created: str) -> dict[str, Any]:
    from compressbench import __version__

    used = {config.predictor, *(c for c in config.compressors if is_truncate(c) is None)}
    if config.scorer:
        used.add(config.scorer)
    infos = {}
    for name in sorted(used):  # models the config names but no role uses are not loaded
        info = models.info(name)
        infos[name] = None if info is None else {k: v for k, v in vars(info).items() if k != "extra"}
    return {
        "kind": RUN_KIND, "record_version": RESEARCH_RECORD_VERSION, "name": config.name,
        "compressbench_version": __version__, "created": created,
        "models": {n: {**dict(s), "info": infos.get(n)} for n, s in config.models.items()},
        "predictor": config.predictor, "scorer": config.scorer, "arms": list(config.arms),
        "predictor_price": None if price is None else {
            "entry": price.model, "input_usd_per_mtok": price.input_usd_per_mtok,
            "output_usd_per_mtok": price.output_usd_per_mtok, "as_of": price.as_of, "source": price.source},
        "benchmark": dict(config.benchmark), "n_documents": len(docs), "n_questions": len(qs),
        "bits_note": "MI in bits (log base 2)",
    }


def run_research(config: ResearchConfig, runs_dir: str | Path = "runs", *,
                 backend_factory: BackendFactory | None = None,
                 search: Callable[[str, int], Sequence[Document]] | None = None,
                 progress: bool = False) -> ResearchResult:
    """Run (or resume) every arm of ``config`` on its benchmark into ``<runs_dir>/<config.name>/``.

    ``search`` replaces the built-in BM25 over the benchmark's documents (same documents, your
    search); ``backend_factory(kind, model, **options)`` builds the models (default
    :func:`compressbench.load_backend`).
    """
    from compressbench.measure.cost import PriceTable
    from compressbench.engine.store import RunLock

    docs, questions = load_benchmark(config)
    if not questions:
        raise UsageError("the benchmark has no questions (check limit)")
    price = None
    if config.predictor_price:
        table = PriceTable.load(config.prices)
        price = table.lookup(config.predictor_price)
        if price is None:
            raise ConfigError(f"predictor_price {config.predictor_price!r} is not an entry of {table.path}; "
                              f"known: {', '.join(sorted({p.model for p in table.prices.values()}))}")
    if search is None:
        from compressbench.agent.research.search import BM25Search

        search = BM25Search(docs)
    run_dir = Path(runs_dir) / config.name
    with RunLock(run_dir):  # one writer per run directory (a second one gets RunDirBusy)
        return _run_locked(config, run_dir, docs, questions, price, search, backend_factory, progress)


def _run_locked(config: ResearchConfig, run_dir: Path, docs: list[Document], questions: list[Question], price: Any,
                search: Callable[[str, int], Sequence[Document]], backend_factory: BackendFactory | None,
                progress: bool) -> ResearchResult:
    from compressbench.agent.step import CompressionStep
    from compressbench.agent.research.agent import AgentSettings, ResearchAgent
    from compressbench.agent.research.report import write_summary
    from compressbench.engine.store import RecordWriter, atomic_write_text, read_jsonl, repair_records

    _prepare(run_dir, config.to_yaml())
    records_path = run_dir / RECORDS
    repair_records(records_path)
    done = {(d["arm"], d["question_id"]) for d in read_jsonl(records_path) if d.get("kind") == "answer"}
    models = _Models(config, backend_factory)
    manifest_path = run_dir / "manifest.json"
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if manifest_path.exists():
        created = json.loads(manifest_path.read_text(encoding="utf-8")).get("created", created)
    settings = AgentSettings(rounds=config.rounds, docs_per_query=config.docs_per_query,
                             max_queries=config.max_queries, plan=config.plan, samples=config.samples,
                             max_new_tokens_predictor=config.max_new_tokens["predictor"])
    n_new = 0
    todo = {arm: [q for q in questions if (arm, q.id) not in done] for arm in config.arms}
    if any(todo.values()):
        atomic_write_text(manifest_path, json.dumps(_manifest(config, models, docs, questions, price, created),
                                                    indent=2, default=str))
    with RecordWriter(records_path) as writer:
        for arm, pending in todo.items():
            if not pending:
                continue
            if arm == UNCOMPRESSED:
                compressor = None
            elif is_truncate(arm) is not None:
                compressor = BaselineCompressor(arm, models.get(config.scorer).count_tokens)
            else:
                compressor = CompressionStep(models.get(arm), config.compress_prompt, name=arm,
                                             max_new_tokens=config.max_new_tokens["compressor"],
                                             temperature=config.temperature, seed=0, info=models.info(arm))
            agent = ResearchAgent(models.get(config.predictor), search, compressor=compressor, arm=arm,
                                  settings=settings, predictor_info=models.info(config.predictor),
                                  predictor_price=price)
            for start in range(0, len(pending), config.batch_size):
                chunk = pending[start:start + config.batch_size]
                t0 = time.perf_counter()
                for answer, rounds in agent.run_batch(chunk):
                    writer.append([r.to_dict() for r in rounds] + [answer.to_dict()])
                    n_new += 1
                msg = f"research {arm}: {min(start + len(chunk), len(pending))}/{len(pending)} questions " \
                      f"({time.perf_counter() - t0:.1f} s for the last {len(chunk)})"
                log.info("%s", msg)
                if progress:
                    import click

                    click.echo(msg, err=True)
        _round_mi(config, models, run_dir, writer, progress)
    rows = write_summary(run_dir)
    return ResearchResult(run_dir, rows, n_new)


def _round_mi(config: ResearchConfig, models: _Models, run_dir: Path, writer: Any, progress: bool) -> None:
    """Append one RoundMIRecord per compressed arm and round (skipped when one for the same questions exists)."""
    from compressbench.measure.scoring import score_mi
    from compressbench.core.types import Example

    recs = read_research_records(run_dir)
    have = {(r.arm, r.round, r.question_ids) for r in recs if isinstance(r, RoundMIRecord)}
    questions = {r.question_id: r.question for r in recs if isinstance(r, AnswerRecord)}
    docs, _ = load_benchmark(config)
    by_id = {d.id: d for d in docs}
    for arm in config.compressors:
        rounds = [r for r in recs if isinstance(r, RoundRecord) and r.arm == arm]
        for rnd in sorted({r.round for r in rounds}):
            these = [r for r in rounds if r.round == rnd]
            qids = tuple(sorted({r.question_id for r in these}))
            if (arm, rnd, qids) in have:
                continue
            examples, comps = [], []
            for r in these:
                for doc_id, zs in zip(r.doc_ids, r.compressions):
                    examples.append(Example(id=f"{r.question_id}/{doc_id}", context=by_id[doc_id].content,
                                            question=questions.get(r.question_id, "")))
                    comps.append(list(zs))
            rec: RoundMIRecord
            if len(examples) < 2 or config.scorer is None:
                note = ("no scorer configured" if config.scorer is None
                        else f"only {len(examples)} document(s) compressed in this round; MI needs at least 2")
                rec = RoundMIRecord(arm, rnd, len(examples), config.samples, None, question_ids=qids, note=note)
            else:
                if progress:
                    import click

                    click.echo(f"MI {arm} round {rnd}: scoring {len(examples)} documents", err=True)
                est = score_mi(models.get(config.scorer), examples, comps, n_boot=config.mi_n_boot, seed=0)
                rec = RoundMIRecord(arm, rnd, est.n_contexts, est.n_samples, est.bits, est.bits_raw, est.ci_low_bits,
                                    est.ci_high_bits, est.ceiling_bits, est.bits_per_token, est.mean_tokens,
                                    question_ids=qids)
            writer.append([rec.to_dict()])


def summary_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows as CSV (nested per-round lists written as JSON)."""
    if not rows:
        return ""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    for r in rows:
        w.writerow({k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in r.items()})
    return buf.getvalue()


__all__ = ["BaselineCompressor", "ResearchResult", "is_research_run", "load_benchmark", "read_research_records",
           "run_research", "summary_csv"]
