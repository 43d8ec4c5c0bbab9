"""Run the research benchmark into a run directory (``compressbench research``), through the engine.

``runs/<name>/`` is a run store (:class:`compressbench.engine.store.RunStore`) like a sweep's:
``config.yaml`` (resolved), ``manifest.json`` (``"kind": "research"``, models with their info, the
price the predictor is billed at, the planner and predictor mode, the benchmark),
``records.jsonl`` (the research records of :mod:`compressbench.engine.records`, append-only),
``cache/`` (every model call's result) and ``summary.json`` / ``summary.csv`` (one row per arm:
accuracy with 95% CI, MI per round, predictor tokens and dollars, the cost-accuracy front; see
:mod:`compressbench.agent.research.report`).

Models are the engine's: a :class:`compressbench.engine.scheduler.LocalExecutor` loads each one
on first use (at most once), a :class:`~compressbench.engine.scheduler.ModelRegistry` knows their
info (from the manifest on a resume, so a fully cached resume loads nothing), every call goes
through a :class:`compressbench.engine.caching.CachedModel` (compressions, the likelihood
predictor's scored options, generated replies, ``truncate:<n>`` and the MI tensors), and a
:class:`~compressbench.engine.scheduler.Scheduler` releases a compressor after its arm.

Resume: rerun the same command; the questions already answered in an arm are skipped and the
ones in flight when the run was killed are redone from the cache (no model call for work done
before). MI per round is computed once all questions of an arm are done; it is recomputed only
when the set of questions changed.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from compressbench.agent.research.config import EMPTY, ORACLE, ResearchConfig, is_research_baseline, is_truncate
from compressbench.agent.research.corpus import Document, Question, load_documents, load_questions
from compressbench.core.errors import ConfigError, DataError, UsageError
from compressbench.engine.records import (
    RESEARCH_RECORD_VERSION,
    RESEARCH_RUN_KIND,
    UNCOMPRESSED,
    ResearchAnswerRecord,
    ResearchRoundMIRecord,
    ResearchRoundRecord,
    read_research_records,
)
from compressbench.agent.research.agent import AgentSettings, ResearchAgent
from compressbench.agent.research.bench import generate_benchmark
from compressbench.agent.research.report import write_summary
from compressbench.agent.research.search import BM25Search
from compressbench.agent.step import StepResult
from compressbench.core.progress import Progress
from compressbench.core.prompts import load_prompt
from compressbench.core.types import Example, GenerationParams
from compressbench.core.version import __version__
from compressbench.engine.caching import CachedModel
from compressbench.engine.model_work import ChatSpec
from compressbench.engine.scheduler import LocalExecutor, ModelRegistry, Scheduler
from compressbench.engine.store import RunStore, read_jsonl
from compressbench.measure.cost import PriceTable, role_cost
from compressbench.measure.mi import estimate_mi
import dataclasses
import json
import math
import numpy as np

log = logging.getLogger(__name__)

BackendFactory = Callable[..., Any]
#: Seed of the MI bootstrap and of the per-round document sample (seeded: reruns are identical).
MI_SEED = 0


@dataclass(frozen=True)
class ResearchResult:
    run_dir: Path
    rows: list[dict[str, Any]]
    n_new_questions: int
    model_loads: dict[str, int]
    cache_hits: int
    cache_misses: int


@dataclass(frozen=True)
class _Models:
    """What :class:`compressbench.engine.scheduler.ModelRegistry` reads of a config: the model specs."""

    models: Mapping[str, Any]


def _zero_usage() -> dict[str, int]:
    return {"n_prompt_tokens": 0, "n_completion_tokens": 0, "n_calls": 0}


class BaselineNotes:
    """A compressor arm that is not a model; it costs nothing (0 tokens, 0 FLOPs: known zero).

    - ``truncate:<n>``: the longest word-boundary prefix with at most n tokens under the scorer's
      tokenizer (``truncate(contexts) -> texts``, the engine's cached ``truncate:<n>`` baseline);
    - ``empty``: no note at all (the predictor reads only the question);
    - ``oracle``: each gold document's evidence sentence (``Question.evidence``), nothing from any
      other document.
    """

    def __init__(self, name: str, truncate: Callable[[list[str]], list[str]] | None = None):
        if not is_research_baseline(name):
            raise ConfigError(f"{name!r} is not a research baseline (truncate:<tokens>, empty, oracle)")
        if is_truncate(name) is not None and truncate is None:
            raise ConfigError(f"{name} needs the scorer's tokenizer")
        self.name, self._truncate = name, truncate

    def compress_docs(self, pairs: Sequence[tuple[Document, Question]], n: int = 1) -> list[Any]:
        if is_truncate(self.name) is not None:
            assert self._truncate is not None
            texts = self._truncate([d.content for d, _ in pairs])
        elif self.name == EMPTY:
            texts = ["" for _ in pairs]
        else:
            texts = [dict(q.evidence).get(d.id, "") for d, q in pairs]
        return [StepResult(d.content, q.text, (t,) * n, _zero_usage(), 0.0, 0.0, None)
                for (d, q), t in zip(pairs, texts)]


class CachedCompressor:
    """A model compressor through the run's cache: one :class:`~compressbench.engine.model_work.ChatSpec`
    per (document, question) (the document is the slot fitted to the window), FLOPs from the
    model's size (:func:`compressbench.measure.cost.role_cost`)."""

    def __init__(self, name: str, model: Any, prompt: Any, params: Any, batch_size: int, info: Any):
        self.name, self._model, self._prompt, self._params = name, model, prompt, params
        self._batch_size, self._info = batch_size, info

    def compress_docs(self, pairs: Sequence[tuple[Document, Question]], n: int = 1) -> list[Any]:

        specs = [ChatSpec(self._prompt, {"question": q.text}, "context", d.content) for d, q in pairs]
        params = dataclasses.replace(self._params, n=n)
        outcomes = self._model.generate(specs, params, self._batch_size, f"research compress {self.name}")
        out: list[Any] = []
        for (d, q), o in zip(pairs, outcomes):
            if o.error is not None:
                out.append(DataError(f"compressor {self.name}: {o.error}"))
                continue
            u = {"n_prompt_tokens": o.n_prompt_tokens, "n_completion_tokens": o.n_completion_tokens, "n_calls": 1}
            out.append(StepResult(d.content, q.text, tuple(o.texts), u, o.wall_s,
                                  role_cost("compressor", u, self._info).flops, None))
        return out


def load_benchmark(config: ResearchConfig) -> tuple[list[Document], list[Question]]:
    """The corpus and questions the config names (the first ``limit`` questions); a DataError when
    the arms need what the questions lack (options for loglik, evidence for the oracle)."""
    b = config.benchmark
    if b["kind"] == "generated":
        docs, qs = generate_benchmark(int(b.get("seed", 0)), int(b.get("n_companies", 12)),
                                      int(b.get("n_questions", 20)), int(b.get("n_options", 4)))
    else:
        docs, qs = load_documents(b["path"]), load_questions(b["questions"])
    qs = qs[: config.limit] if config.limit else qs
    if config.predictor_mode == "loglik":
        bad = [q.id for q in qs if q.choice_example() is None]
        if bad:
            raise DataError(f"predictor_mode loglik scores each question's options, and questions {bad[:5]} have "
                            "none; give 'options' in the questions file, or set predictor_mode: generate")
    if ORACLE in config.compressors:
        bad = [q.id for q in qs if not q.evidence]
        if bad:
            raise DataError(f"the oracle arm keeps each gold document's evidence sentence, and questions {bad[:5]} "
                            "have none; give 'evidence' in the questions file, or drop oracle from compressors")
    return docs, qs


def research_stages(config: ResearchConfig) -> tuple[tuple[str, ...], dict[str, set[str]]]:
    """The run's stages in order (one per arm, then MI scoring) and the models each uses (for the
    engine's :class:`~compressbench.engine.scheduler.Scheduler`)."""
    uses: dict[str, set[str]] = {}
    for arm in config.arms:
        models = {config.predictor}
        if arm in config.model_compressors:
            models.add(arm)
        if is_truncate(arm) is not None and config.scorer:
            models.add(config.scorer)
        uses[f"arm:{arm}"] = models
    scored = [c for c in config.compressors if c != EMPTY]
    uses["scorer"] = {config.scorer} if config.scorer and scored else set()
    return tuple(uses), uses


def run_research(config: ResearchConfig, runs_dir: str | Path = "runs", *,
                 backend_factory: BackendFactory | None = None,
                 search: Callable[[str, int], Sequence[Document]] | None = None,
                 progress: bool = False) -> ResearchResult:
    """Run (or resume) every arm of ``config`` on its benchmark into ``<runs_dir>/<config.name>/``.

    ``search`` replaces the built-in BM25 over the benchmark's documents (same documents, your
    search); ``backend_factory(kind, model, **options)`` builds the models (default
    :func:`compressbench.load_backend`). ``progress``: progress lines (:class:`compressbench.core.progress.Progress`).
    """
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
        search = BM25Search(docs)
    store = RunStore(Path(runs_dir) / config.name)
    with store.lock():  # one writer per run directory (a second one gets RunDirBusy)
        return _Run(config, store, docs, questions, price, search, backend_factory, progress).run()


class _Run:
    def __init__(self, config: ResearchConfig, store: Any, docs: list[Document], questions: list[Question],
                 price: Any, search: Callable[[str, int], Sequence[Document]],
                 backend_factory: BackendFactory | None, progress: bool):
        self.config, self.store, self.docs, self.questions = config, store, docs, questions
        self.price, self.search, self.progress = price, search, progress
        self.specs = config.model_specs()
        self.executor = LocalExecutor(self.specs, backend_factory)
        self._models: dict[str, Any] = {}
        self.created = datetime.now(timezone.utc).isoformat(timespec="seconds")

    # ------------------------------------------------------------------ engine

    def model(self, name: str) -> Any:
        if name not in self._models:
            self._models[name] = CachedModel(name, self.registry, self.executor, self.store.cache,
                                             overflow="truncate", progress=self.progress)
        return self._models[name]

    def _manifest(self) -> dict[str, Any]:
        cfg, price = self.config, self.price
        infos = self.registry.infos()
        return {
            "kind": RESEARCH_RUN_KIND, "record_version": RESEARCH_RECORD_VERSION, "name": cfg.name,
            "compressbench_version": __version__, "created_utc": self.created,
            "models": {n: {**s.to_dict(), "info": infos.get(n)} for n, s in self.specs.items()},
            "predictor": cfg.predictor, "scorer": cfg.scorer, "arms": list(cfg.arms),
            "predictor_mode": cfg.predictor_mode, "planner": cfg.planner,
            "predictor_price": None if price is None else {
                "entry": price.model, "input_usd_per_mtok": price.input_usd_per_mtok,
                "output_usd_per_mtok": price.output_usd_per_mtok, "as_of": price.as_of, "source": price.source},
            "benchmark": dict(cfg.benchmark), "n_documents": len(self.docs), "n_questions": len(self.questions),
            "bits_note": "MI in bits (log base 2)",
        }

    def _write_manifest(self) -> None:
        self.store.write_manifest(self._manifest())

    def run(self) -> ResearchResult:

        store = self.store
        store.prepare(self.config.to_yaml())
        store.repair()
        path = store.root / "manifest.json"
        old = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        self.created = old.get("created_utc") or self.created
        known = {n: (m or {}).get("info") for n, m in (old.get("models") or {}).items()}
        self.registry = ModelRegistry(_Models(self.specs), self.executor, known,  # type: ignore[arg-type]
                                      on_change=self._write_manifest)
        self._write_manifest()
        try:
            n_new = self._run()
        finally:
            self.executor.close()

        rows = write_summary(store.root)
        cache = store.cache
        log.info("research %s: %d question runs this time; cache: %d hits, %d misses; model loads: %s",
                 self.config.name, n_new, cache.hits, cache.misses, dict(self.executor.loads) or "none")
        return ResearchResult(store.root, rows, n_new, dict(self.executor.loads), cache.hits, cache.misses)

    def _compressor(self, arm: str) -> Any:
        cfg = self.config
        if arm == UNCOMPRESSED:
            return None
        if is_research_baseline(arm):
            scorer = cfg.scorer
            trunc = None if scorer is None else (lambda cs: self.model(scorer).baseline(arm, cs))
            return BaselineNotes(arm, trunc if is_truncate(arm) is not None else None)
        params = GenerationParams(max_new_tokens=cfg.max_new_tokens["compressor"], temperature=cfg.temperature,
                                  n=cfg.samples, seed=0)
        return CachedCompressor(arm, self.model(arm), load_prompt(cfg.compress_prompt), params,
                                max(cfg.batch_size * cfg.docs_per_query, 1), self.registry.cost_info(arm))

    def _run(self) -> int:
        cfg, store = self.config, self.store
        stages, uses = research_stages(cfg)
        sched = Scheduler(None, self.executor, uses=uses, stages=stages)
        done = {(d["arm"], d["question_id"]) for d in read_jsonl(store.records_path) if d.get("kind") == "answer"}
        settings = AgentSettings(rounds=cfg.rounds, docs_per_query=cfg.docs_per_query, max_queries=cfg.max_queries,
                                 plan=cfg.plan, samples=cfg.samples,
                                 max_new_tokens_predictor=cfg.max_new_tokens["predictor"],
                                 predictor_mode=cfg.predictor_mode, planner=cfg.planner,
                                 batch_size=max(cfg.batch_size, 1), loglik_prompt_format=cfg.loglik_prompt_format)
        n_new = 0
        with store.writer() as writer:
            for arm in cfg.arms:
                pending = [q for q in self.questions if (arm, q.id) not in done]
                if pending:
                    agent = ResearchAgent(self.model(cfg.predictor), self.search, compressor=self._compressor(arm),
                                          arm=arm, settings=settings, predictor_info=self.registry.cost_info(cfg.predictor),
                                          predictor_price=self.price)
                    with Progress(f"research {arm}", len(pending), enabled=self.progress, unit="questions") as bar:
                        for start in range(0, len(pending), cfg.batch_size):
                            chunk = pending[start:start + cfg.batch_size]
                            for answer, rounds in agent.run_batch(chunk):
                                writer.append([r.to_dict() for r in rounds] + [answer.to_dict()])
                                n_new += 1
                            bar.update(len(chunk))
                for m in uses[f"arm:{arm}"]:
                    sched.done(m, f"arm:{arm}")
            self._round_mi(writer)
        if cfg.scorer:
            sched.done(cfg.scorer, "scorer")
        return n_new

    def _round_mi(self, writer: Any) -> None:
        """One ResearchRoundMIRecord per compressed arm and round (skipped when one for the same
        questions exists): MI between the round's documents (at most ``mi_max_contexts``, a seeded
        sample) and their compressions, from the scorer's cached log-prob tensor."""

        cfg = self.config
        recs = read_research_records(self.store.root)
        have = {(r.arm, r.round, r.question_ids) for r in recs if isinstance(r, ResearchRoundMIRecord)}
        questions = {r.question_id: r.question for r in recs if isinstance(r, ResearchAnswerRecord)}
        by_id = {d.id: d for d in self.docs}
        prompt = load_prompt("mi_score")

        n_rounds = sum(len({r.round for r in recs if isinstance(r, ResearchRoundRecord) and r.arm == a})
                       for a in cfg.compressors)
        bar = Progress("research MI per round", n_rounds, enabled=self.progress, unit="rounds")
        for arm in cfg.compressors:
            rounds = [r for r in recs if isinstance(r, ResearchRoundRecord) and r.arm == arm]
            for rnd in sorted({r.round for r in rounds}):
                bar.update(1)
                these = [r for r in rounds if r.round == rnd]
                qids = tuple(sorted({r.question_id for r in these}))
                if (arm, rnd, qids) in have:
                    continue
                pairs = [(f"{r.question_id}/{doc_id}", doc_id, r.question_id, zs) for r in these
                         for doc_id, zs in zip(r.doc_ids, r.compressions)]
                n_all = len(pairs)
                if cfg.mi_max_contexts is not None and n_all > cfg.mi_max_contexts:
                    keep = sorted(random.Random(f"{MI_SEED}/{arm}/{rnd}").sample(range(n_all), cfg.mi_max_contexts))
                    pairs = [pairs[i] for i in keep]
                sampled = "" if len(pairs) == n_all else f" (a seeded sample of {len(pairs)} of {n_all} documents)"
                rec: ResearchRoundMIRecord
                if len(pairs) < 2 or cfg.scorer is None:
                    note = ("no scorer configured" if cfg.scorer is None
                            else f"only {len(pairs)} document(s) compressed in this round; MI needs at least 2")
                    rec = ResearchRoundMIRecord(arm, rnd, len(pairs), cfg.samples, None, question_ids=qids, note=note)
                elif arm == EMPTY:
                    rec = ResearchRoundMIRecord(arm, rnd, len(pairs), cfg.samples, 0.0, 0.0, 0.0, 0.0,
                                                math.log2(len(pairs)), None, 0.0, question_ids=qids,
                                                note="empty notes: MI is 0 by construction" + sampled)
                else:
                    exs = [Example(id=key, context=by_id[doc_id].content, question=questions.get(qid, ""))
                           for key, doc_id, qid, _ in pairs]
                    texts = [list(zs) for *_, zs in pairs]
                    res = self.model(cfg.scorer).logp_tensor(exs, texts, prompt, cfg.samples)
                    ok = [i for i, e in enumerate(res.errors) if e is None]
                    if res.logp is None or len(ok) < 2:
                        why = next((e for e in res.errors if e), "fewer than 2 documents could be scored")
                        rec = ResearchRoundMIRecord(arm, rnd, len(ok), cfg.samples, None, question_ids=qids,
                                                    note=f"MI undefined: {why}")
                    else:
                        sub = np.asarray(res.logp)[np.ix_(ok, range(cfg.samples), ok)]
                        n_tok = np.array([res.n_tokens[i] for i in ok], dtype=float)
                        est = estimate_mi(sub, n_tokens=n_tok if n_tok.any() else None, n_boot=cfg.mi_n_boot,
                                          seed=MI_SEED)
                        rec = ResearchRoundMIRecord(arm, rnd, est.n_contexts, est.n_samples, est.bits, est.bits_raw,
                                                    est.ci_low_bits, est.ci_high_bits, est.ceiling_bits,
                                                    est.bits_per_token, est.mean_tokens, question_ids=qids,
                                                    note=sampled.strip(" ()") or None)
                writer.append([rec.to_dict()])
        bar.close()


__all__ = ["BaselineNotes", "CachedCompressor", "ResearchResult", "load_benchmark", "research_stages",
           "run_research"]
