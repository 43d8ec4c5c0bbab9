r"""A reference deep-research agent: plan, search, compress each document, answer or ask again.

One question goes through up to R rounds::

    round 1   queries = [question] (+ the predictor's planned queries with planner: model and plan)
    each round:
      search(query, k) for every query; keep the first k documents per query not read before
      compressed arm:   the compressor condenses each new document for the question (one batched
                        call over the documents of every question in the batch); a baseline arm
                        (truncate:<n>, empty, oracle) writes its notes without a model
      uncompressed arm: the predictor will read the raw documents instead
      the predictor reads all notes so far and
        predictor_mode loglik:   scores each of the question's options after the notes (the
                                 sweep's likelihood predictor, compressbench.measure.predict_loglik);
                                 the most likely option is its answer after this round; the
                                 question goes on to round R
        predictor_mode generate: replies "ANSWER: ..." (done) or "SEARCH: ..." lines
                                 (prompts/research_step.yaml); in round R it must answer
                                 (prompts/research_final.yaml); a reply that still only asks for
                                 searches, or an empty one, is the failure "no_answer"
      the next round's queries:
        planner entities: the names and companies (runs of two or more capitalised words) found
                          in this round's notes that are not in the question and were not searched
                          before, in order of appearance, at most max_queries, each searched with
                          the question's words (the question's own names left out); none found:
                          the question again (documents not yet read)
        planner model:    the predictor's SEARCH lines (none: the question again)

Questions of a batch move through the rounds together, so every model call is batched across
questions. A search function that raises, or a model call that fails for one question, ends that
question with an ``error`` (the others go on). Usage per role is counted per round: compressor
tokens and FLOPs and predictor tokens, FLOPs and API dollars at the price it is billed at
(``predictor_price``: any entry of ``configs/prices.yaml``, so a local stand-in can be billed as
the API model it stands in for).

Model calls go through the engine's model work (:mod:`compressbench.engine.model_work`): a plain
backend is called directly (:class:`DirectModel`); ``compressbench research`` passes the run's
:class:`compressbench.engine.caching.CachedModel` instead, so a resumed run makes no model call for
work already cached.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from compressbench.agent.research.config import check_modes
from compressbench.agent.research.corpus import Document, Question
from compressbench.core.errors import CompressbenchError, UsageError
from compressbench.core.prompts import Prompt, load_prompt
from compressbench.core.types import Example, GenerationParams
from compressbench.engine import model_work
from compressbench.engine.caching import CachedModel
from compressbench.engine.model_work import ChatSpec, GenOutcome
from compressbench.engine.records import UNCOMPRESSED, ResearchAnswerRecord, ResearchRoundRecord, ResearchUsage
from compressbench.measure.cost import role_cost
from compressbench.measure.metrics import find_json_object, parse_prediction, score_example

log = logging.getLogger(__name__)

_BULLET = r"^\s*(?:\d+[.)]\s*)?\W*"  # "1. ", "- ", "**" before the keyword
_ANSWER_LINE = re.compile(_BULLET + r"(?:final\s+)?answer\s*[:\-]\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE)
_SEARCH_LINE = re.compile(_BULLET + r"(?:search|query)\s*(?:\d+\s*)?[:\-]\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE)
_WORD = r"[A-Z][a-z]+(?:-[A-Z][a-z]+)?"
_ENTITY = re.compile(rf"\b{_WORD}(?:[ \t]+{_WORD})+\b")
#: Capitalised words that start a sentence, not a name ("The Vantrix ..." -> "Vantrix ...").
_NOT_NAMES = frozenset({"A", "An", "The", "In", "At", "For", "It", "Its", "This", "That", "These", "Analysts",
                        "Estimates", "Answer", "Notes", "Question", "Document", "History", "Who", "What", "Which",
                        "How", "When", "Where"})


def find_entities(text: str) -> list[str]:
    """Names and companies in ``text``: runs of two or more capitalised words ("Vantrix Dynamics",
    "Mira Halvorsen", "Ruiz-Lamberti"), a leading sentence word ("The", "Analysts", ...) dropped,
    in order of first appearance, each once."""
    out: dict[str, None] = {}
    for m in _ENTITY.finditer(text):
        words = m.group(0).split()
        while words and words[0] in _NOT_NAMES:
            words = words[1:]
        if len(words) >= 2:
            out.setdefault(" ".join(words), None)
    return list(out)


def plan_from_entities(question: str, notes: Sequence[str], searched: set[str], max_queries: int,
                       max_query_chars: int = 200) -> tuple[list[str], list[str]]:
    """The ``entities`` planner: ``(entities found, next queries)``.

    Entities are those of the notes (:func:`find_entities`) that are not in the question and not in
    ``searched`` (entities searched before, lower-cased; updated in place); each query is the entity
    followed by the question with its own names left out."""
    in_question = {e.lower() for e in find_entities(question)}
    found = [e for e in find_entities("\n".join(notes)) if e.lower() not in in_question]
    fresh = [e for e in found if e.lower() not in searched][:max_queries]
    rest = question
    for e in find_entities(question):
        rest = rest.replace(e, " ")
    rest = " ".join(rest.split())
    searched.update(e.lower() for e in fresh)
    return found, [f"{e} {rest}"[:max_query_chars] for e in fresh]


@dataclass(frozen=True)
class AgentSettings:
    """How the agent searches and talks to its models."""

    rounds: int = 2
    docs_per_query: int = 3
    max_queries: int = 2
    plan: bool = True
    samples: int = 1  # compressions per document (M, for MI); the first is read by the predictor
    max_new_tokens_predictor: int = 64
    max_query_chars: int = 200
    predictor_mode: str = "generate"
    planner: str = "model"
    batch_size: int = 16  # model calls per batch
    loglik_prompt_format: str = "completion"  # predictor_mode loglik: completion | chat | auto

    def __post_init__(self) -> None:
        for name in ("rounds", "docs_per_query", "max_queries", "samples", "max_new_tokens_predictor", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise UsageError(f"{name} must be an integer >= 1, got {v!r}")
        check_modes(self.predictor_mode, self.planner)


@dataclass(frozen=True)
class Reply:
    """A predictor reply, parsed."""

    answer: str | None
    queries: tuple[str, ...]


def parse_reply(text: str | None, *, final: bool, question: Example | None = None, max_queries: int = 2,
                max_query_chars: int = 200) -> Reply:
    """Read an ANSWER line (or JSON ``answer``) and SEARCH lines (or JSON ``queries``).

    In the final round a reply with no ANSWER and no SEARCH line is the answer itself (parsed
    with :func:`compressbench.measure.metrics.parse_prediction`); a reply that only asks for searches,
    or an empty one, has no answer.
    """
    if text is None or not text.strip():
        return Reply(None, ())
    answer = None
    queries: list[str] = []
    obj = find_json_object(text, "answer")
    if obj is not None and obj.get("answer") not in (None, ""):
        answer = str(obj["answer"]).strip()
    m = _ANSWER_LINE.search(text)
    if answer is None and m:
        answer = m.group(1).strip().strip("\"'").strip() or None
    qobj = find_json_object(text, "queries")
    if qobj is not None and isinstance(qobj.get("queries"), list):
        queries = [str(q) for q in qobj["queries"] if str(q).strip()]
    queries += [q.strip().strip("\"'") for q in _SEARCH_LINE.findall(text)]
    seen: dict[str, None] = {}
    for q in queries:
        q = q[:max_query_chars].strip()
        if q and q.lower() not in (s.lower() for s in seen):
            seen[q] = None
    queries = list(seen)[:max_queries]
    if final and answer is None and not queries:
        ex = question or Example(id="q", context="", question="")
        answer = parse_prediction(text, ex).answer
    return Reply(answer, tuple(queries))


class DirectModel:
    """A backend called directly, through the same model work the run's cache sends its misses to
    (:func:`compressbench.engine.model_work.generate_batch`, :func:`~compressbench.engine.model_work.loglik_batch`);
    the method signatures are :class:`compressbench.engine.caching.CachedModel`'s."""

    def __init__(self, backend: Any, name: str | None = None, *, overflow: str = "truncate"):
        self.backend = backend
        self.name = name or str(getattr(backend, "name", type(backend).__name__))
        self._overflow = overflow

    def generate(self, specs: Sequence[ChatSpec], params: GenerationParams, batch_size: int,
                 desc: str = "") -> list[GenOutcome]:
        out: list[GenOutcome] = []
        for start in range(0, len(specs), batch_size):
            out += model_work.generate_batch(self.backend, specs[start:start + batch_size], params, self._overflow,
                                             self.name)
        return out

    def loglik(self, items: Sequence[tuple[Example, str]], prompt: Prompt, prompt_format: str = "auto",
               desc: str = "") -> list[dict[str, Any]]:
        return model_work.loglik_batch(self.backend, items, prompt, prompt_format)


def as_model(model: Any) -> Any:
    """A CachedModel or DirectModel as is; any backend wrapped in a :class:`DirectModel`."""
    return model if isinstance(model, (CachedModel, DirectModel)) else DirectModel(model)


@dataclass
class _State:
    """One question's progress through the rounds."""

    question: Question
    choice: Example | None = None  # the multiple-choice form (predictor_mode loglik)
    read: list[Document] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)  # the queries of the next search
    searched_entities: set[str] = field(default_factory=set)
    searched: tuple[str, ...] = ()  # the queries this round searched
    rounds: list[ResearchRoundRecord] = field(default_factory=list)
    answer: str | None = None
    score: float | None = None
    error: str | None = None
    done: bool = False
    wall_s: float = 0.0
    # the current round's work in progress
    new_docs: list[Document] = field(default_factory=list)
    new_notes: list[str] = field(default_factory=list)
    compressions: list[tuple[str, ...]] = field(default_factory=list)
    usage: dict[str, ResearchUsage] = field(default_factory=dict)
    reply: str | None = None
    loglik: dict[str, Any] | None = None
    entities: tuple[str, ...] = ()
    action: str = "none"


Compressor = Any  # a CompressionStep (or anything with .batch(items, n) -> list[StepResult]) or .compress_docs


class ResearchAgent:
    """The loop above. ``compressor=None`` is the ``uncompressed`` arm.

    Args:
        predictor: a backend (``generate`` for predictor_mode generate; ``score_matrix``, ``score``
            and ``count_tokens`` for loglik), or a :class:`~compressbench.engine.caching.CachedModel`.
        search: ``search(query, k) -> list[Document]`` (e.g. :class:`~compressbench.agent.research.search.BM25Search`).
        compressor: a :class:`~compressbench.agent.step.CompressionStep` (any backend or
            callable, e.g. a baseline), anything with ``compress_docs([(Document, Question)], n)``
            (the run's cached compressors and baselines), or None to let the predictor read the raw
            documents.
        arm: the name recorded for this configuration (default: the compressor's name or ``uncompressed``).
        settings: :class:`AgentSettings`.
        predictor_info: the predictor's ModelInfo for FLOPs (default ``predictor.info()``).
        predictor_price: a :class:`~compressbench.measure.cost.Price` the predictor's tokens are billed at (None: no dollars).
    """

    def __init__(self, predictor: Any, search: Callable[[str, int], Sequence[Document]], *,
                 compressor: Compressor | None = None, arm: str | None = None,
                 settings: AgentSettings | None = None, predictor_info: Any = None,
                 predictor_price: Any = None) -> None:
        self.settings = settings or AgentSettings()
        raw = predictor
        if not isinstance(raw, (CachedModel, DirectModel)):
            need = ("generate",) if self.settings.predictor_mode == "generate" else ("score_matrix", "count_tokens")
            missing = [m for m in need if not callable(getattr(raw, m, None))]
            if missing:
                raise UsageError(f"predictor must be a backend with {', '.join(need)}() for predictor_mode "
                                 f"{self.settings.predictor_mode}, got {type(raw).__name__}")
        if not callable(search):
            raise UsageError(f"search must be a callable search(query, k) -> list[Document], got {type(search).__name__}")
        self.predictor = as_model(raw)
        self.search = search
        self.compressor = compressor
        self.arm = arm or (UNCOMPRESSED if compressor is None else str(getattr(compressor, "name", "compressor")))
        if predictor_info is None and callable(getattr(raw, "info", None)) and not isinstance(raw, CachedModel):
            predictor_info = raw.info()
        self.predictor_info = predictor_info
        self.predictor_price = predictor_price
        self.prompts = {k: load_prompt(f"research_{k}") for k in ("plan", "step", "final")}
        self.prompts["loglik"] = load_prompt("predict_loglik")

    # ------------------------------------------------------------------ public

    def run(self, question: Question | str) -> tuple[ResearchAnswerRecord, list[ResearchRoundRecord]]:
        """One question (a :class:`Question`, or a plain string with no gold answer): its answer
        record and its round records."""
        if isinstance(question, str):
            question = Question(Example(id="q", context="", question=question), "f1")
        return self.run_batch([question])[0]

    def run_batch(self, questions: Sequence[Question]) -> list[tuple[ResearchAnswerRecord, list[ResearchRoundRecord]]]:
        """Run questions together (batched model calls); one (answer, rounds) per question, in order."""
        s = self.settings
        states = [_State(q) for q in questions]
        if s.predictor_mode == "loglik":
            for st in states:
                st.choice = st.question.choice_example()
                if st.choice is None:
                    raise UsageError(f"question {st.question.id!r} has no option set; predictor_mode loglik "
                                     "scores options (the generated benchmark has them; give 'options' in your "
                                     "questions file, or use predictor_mode: generate)")
        for r in range(1, s.rounds + 1):
            active = [st for st in states if not st.done]
            if not active:
                break
            t0 = time.perf_counter()
            for st in active:
                st.new_docs, st.new_notes, st.compressions, st.searched = [], [], [], ()
                st.reply, st.loglik, st.entities, st.action = None, None, (), "none"
                st.usage = {"compressor": ResearchUsage(), "predictor": ResearchUsage()}
            if r == 1:
                self._first_queries(active)
            self._search(active, r)
            live = [st for st in active if st.error is None]
            if self.compressor is not None:
                self._compress(live)
            else:
                for st in live:
                    st.new_notes = [f"[{d.id}] {d.content}" for d in st.new_docs]
            for st in live:
                st.notes += st.new_notes
            live = [st for st in live if st.error is None]
            final = r == s.rounds
            if s.predictor_mode == "loglik":
                self._score_options(live, final=final)
            else:
                self._decide(live, final=final)
            if s.planner == "entities" and not final:
                for st in live:
                    if not st.done and st.error is None:
                        found, queries = plan_from_entities(st.question.text, st.new_notes, st.searched_entities,
                                                            s.max_queries, s.max_query_chars)
                        st.entities = tuple(found)
                        st.queries = queries or [st.question.text[: s.max_query_chars]]
            per_q = (time.perf_counter() - t0) / len(active)
            for st in active:
                st.wall_s += per_q
                st.rounds.append(ResearchRoundRecord(
                    arm=self.arm, question_id=st.question.id, round=r, queries=st.searched,
                    doc_ids=tuple(d.id for d in st.new_docs), compressions=tuple(st.compressions),
                    predictor_reply=st.reply, action=st.action, usage=dict(st.usage), wall_s=per_q,
                    answer=st.answer, score=st.score if st.error is None else None, loglik=st.loglik,
                    entities=st.entities))
                if st.error is not None:
                    st.done = True
        return [(self._answer_record(st), st.rounds) for st in states]

    # ------------------------------------------------------------------ stages

    def _generate(self, states: list[_State], specs: list[ChatSpec], what: str) -> list[str | None]:
        """One batched predictor call (failures are kept per chat by the model work)."""
        params = GenerationParams(max_new_tokens=self.settings.max_new_tokens_predictor, temperature=0.0, n=1,
                                  seed=0)
        try:
            outcomes = self.predictor.generate(specs, params, self.settings.batch_size, f"research {what}")
        except CompressbenchError as exc:  # the model could not be reached at all
            outcomes = [GenOutcome(error=model_work.err_text(exc)) for _ in specs]
        texts: list[str | None] = []
        for st, o in zip(states, outcomes):
            if o.error is not None:
                st.error = f"predictor ({what}) failed: {o.error}"
                texts.append(None)
                continue
            st.usage["predictor"] = st.usage["predictor"] + self._predictor_usage(
                {"n_prompt_tokens": o.n_prompt_tokens, "n_completion_tokens": o.n_completion_tokens, "n_calls": 1})
            texts.append(o.texts[0] if o.texts else "")
        return texts

    def _predictor_usage(self, usage: dict[str, Any]) -> ResearchUsage:
        rc = role_cost("predictor", usage, self.predictor_info, paid_api=self.predictor_price is not None,
                       price=self.predictor_price)
        return ResearchUsage(usage.get("n_prompt_tokens"), usage.get("n_completion_tokens"), 1, rc.flops, rc.api_usd)

    def _first_queries(self, states: list[_State]) -> None:
        for st in states:
            st.queries = [st.question.text[: self.settings.max_query_chars]]
        if not self.settings.plan or self.settings.planner != "model":
            return
        p = self.prompts["plan"]
        specs = [ChatSpec(p, {"max_queries": str(self.settings.max_queries)}, "question", st.question.text)
                 for st in states]
        for st, text in zip(states, self._generate(states, specs, "plan")):
            if text is None:
                continue
            planned = parse_reply(text, final=False, max_queries=self.settings.max_queries,
                                  max_query_chars=self.settings.max_query_chars).queries
            st.queries += [q for q in planned if q.lower() != st.queries[0].lower()]

    def _search(self, states: list[_State], r: int) -> None:
        k = self.settings.docs_per_query
        for st in states:
            if st.done or st.error:
                continue
            seen = {d.id for d in st.read}
            st.searched = tuple(st.queries)
            for q in st.queries:
                try:
                    hits = list(self.search(q, k + len(seen)))
                except Exception as exc:  # noqa: BLE001 - any search backend; recorded, the run goes on
                    st.error = f"search failed in round {r} for query {q!r}: {type(exc).__name__}: {exc}"
                    break
                bad = [h for h in hits if not isinstance(h, Document)]
                if bad:
                    st.error = (f"search returned {type(bad[0]).__name__} for query {q!r}; a search function "
                                "must return compressbench.agent.research.Document objects")
                    break
                fresh = [h for h in hits if h.id not in seen][:k]
                seen.update(h.id for h in fresh)
                st.new_docs += fresh
            st.read += st.new_docs

    def _compress(self, states: list[_State]) -> None:
        owners = [(st, d) for st in states for d in st.new_docs]
        if not owners:
            return
        try:
            if callable(getattr(self.compressor, "compress_docs", None)):
                results = self.compressor.compress_docs([(d, st.question) for st, d in owners], self.settings.samples)
            else:
                results = self.compressor.batch([(d.content, st.question.text) for st, d in owners],
                                                n=self.settings.samples)
        except CompressbenchError as exc:
            for st, _ in owners:
                st.error = f"compressor failed: {type(exc).__name__}: {exc}"
            return
        for (st, d), res in zip(owners, results):
            if isinstance(res, BaseException):
                st.error = st.error or f"compressor failed: {type(res).__name__}: {res}"
                continue
            st.compressions.append(tuple(res.compressions))
            if res.compressions[0].strip():  # an empty note (the empty or oracle arm) is not shown
                st.new_notes.append(f"[{d.id}] {res.compressions[0]}")
            u = res.usage
            st.usage["compressor"] = st.usage["compressor"] + ResearchUsage(
                u.get("n_prompt_tokens"), u.get("n_completion_tokens"), int(u.get("n_calls") or 0), res.flops,
                res.api_usd)

    @staticmethod
    def _notes_text(st: _State) -> str:
        return "\n".join(st.notes) if st.notes else "(no notes)"

    def _score_options(self, states: list[_State], *, final: bool) -> None:
        """predictor_mode loglik: the likelihood predictor on (the question's options, the notes so far)."""
        if not states:
            return
        items = [(st.choice, self._notes_text(st)) for st in states]
        try:
            outcomes = self.predictor.loglik(items, self.prompts["loglik"], self.settings.loglik_prompt_format,
                                           "research predict (loglik)")
        except CompressbenchError as exc:
            outcomes = [{"error": model_work.err_text(exc)} for _ in items]
        for st, o in zip(states, outcomes):
            if "error" in o:
                st.error = f"predictor (loglik) failed: {o['error']}"
                continue
            shared = o.get("shared_prefix")
            st.usage["predictor"] = st.usage["predictor"] + self._predictor_usage(
                {"n_prompt_tokens": int(o.get("n_prompt_tokens") or 0), "n_completion_tokens": 0, "n_calls": 1,
                 "shared_prefix_calls": [shared] if shared else []})
            letter = o.get("answer")
            ex = st.choice
            assert ex is not None
            st.answer = ex.options["ABCDEFGHIJKLMNOPQRSTUVWXYZ".index(letter)] if letter else None
            sc = score_example(ex, letter, "choice")
            st.score = None if sc.error else sc.value
            st.loglik = {k: o.get(k) for k in ("answer", "answer_norm", "options", "prompt_format")}
            st.action = "answer" if final else "read"
            if final:
                st.done = True

    def _decide(self, states: list[_State], *, final: bool) -> None:
        states = [st for st in states if st.error is None]
        if not states:
            return
        p = self.prompts["final" if final else "step"]
        specs = [ChatSpec(p, {"question": st.question.text, "max_queries": str(self.settings.max_queries)},
                          "notes", self._notes_text(st)) for st in states]
        for st, text in zip(states, self._generate(states, specs, "final answer" if final else "decide")):
            if text is None:
                continue
            st.reply = text
            rep = parse_reply(text, final=final, question=st.question.example,
                              max_queries=self.settings.max_queries, max_query_chars=self.settings.max_query_chars)
            if rep.answer is not None:
                st.answer, st.action, st.done = rep.answer, "answer", True
                q = st.question
                if q.example.answers or q.example.options:
                    sc = score_example(q.example, rep.answer, q.metric)
                    st.score = None if sc.error else sc.value
            elif final:
                st.action, st.done = ("search" if rep.queries else "none"), True
            elif rep.queries:
                st.queries, st.action = list(rep.queries), "search"
            else:
                st.queries, st.action = [st.question.text[: self.settings.max_query_chars]], "none"
            if st.answer is None and (st.question.example.answers or st.question.example.options):
                st.score = 0.0  # no answer yet: wrong so far

    def _answer_record(self, st: _State) -> ResearchAnswerRecord:
        q = st.question
        usage = {"compressor": ResearchUsage(), "predictor": ResearchUsage()}
        for rr in st.rounds:
            for role, u in rr.usage.items():
                usage[role] = usage[role] + u
        failure = None
        score: float | None = None
        if st.error is None:
            if st.answer is None:
                failure, score = "no_answer", 0.0
            elif q.example.answers or q.example.options:
                score = st.score
        loglik = self.settings.predictor_mode == "loglik"
        return ResearchAnswerRecord(
            arm=self.arm, question_id=q.id, question=q.text, gold=tuple(q.example.answers),
            metric="choice" if loglik else q.metric, answer=st.answer, score=score, failure=failure, error=st.error,
            n_rounds=len(st.rounds), doc_ids=tuple(d.id for d in st.read), gold_doc_ids=q.gold_doc_ids, usage=usage,
            wall_s=st.wall_s, options=st.choice.options if (loglik and st.choice is not None) else (),
            gold_letters=tuple(st.choice.answers) if (loglik and st.choice is not None) else (),
            planner=self.settings.planner, predictor_mode=self.settings.predictor_mode)


__all__ = ["AgentSettings", "DirectModel", "Reply", "ResearchAgent", "as_model",
           "find_entities", "parse_reply", "plan_from_entities"]
