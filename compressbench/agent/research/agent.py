r"""A reference deep-research agent: plan, search, compress each document, answer or ask again.

One question goes through up to R rounds::

    round 1   queries = [question] + the predictor's planned queries (prompts/research_plan.yaml)
    each round:
      search(query, k) for every query; keep the first k documents per query not read before
      compressed arm:   the compressor condenses each new document for the question (one batched
                        call over the documents of every question in the batch: in parallel)
      uncompressed arm: the predictor will read the raw documents instead
      the predictor reads all notes so far and replies "ANSWER: ..." (done) or "SEARCH: ..."
      lines (the follow-up queries of the next round; prompts/research_step.yaml). A reply with
      neither searches the question again for documents not yet read.
    round R   the predictor must answer (prompts/research_final.yaml); a reply that still only
              asks for searches, or an empty one, is the failure "no_answer".

Questions of a batch move through the rounds together, so every model call is batched across
questions. A search function that raises, or a model call that fails for one question, ends that
question with an ``error`` (the others go on). Usage per role is counted per round: compressor
tokens and FLOPs (a local model) and predictor tokens, FLOPs and API dollars at the price it is
billed at (``predictor_price``: any entry of ``configs/prices.yaml``, so a local stand-in can be
billed as the API model it stands in for).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from compressbench.core.errors import CompressbenchError, UsageError
from compressbench.agent.research.corpus import Document, Question
from compressbench.agent.research.records import UNCOMPRESSED, AnswerRecord, RoleUsage, RoundRecord
from compressbench.core.types import Example, GenerationParams

log = logging.getLogger(__name__)

_BULLET = r"^\s*(?:\d+[.)]\s*)?\W*"  # "1. ", "- ", "**" before the keyword
_ANSWER_LINE = re.compile(_BULLET + r"(?:final\s+)?answer\s*[:\-]\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE)
_SEARCH_LINE = re.compile(_BULLET + r"(?:search|query)\s*(?:\d+\s*)?[:\-]\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE)


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

    def __post_init__(self) -> None:
        for name in ("rounds", "docs_per_query", "max_queries", "samples", "max_new_tokens_predictor"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise UsageError(f"{name} must be an integer >= 1, got {v!r}")


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
    from compressbench.measure.metrics import find_json_object, parse_prediction

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


@dataclass
class _State:
    """One question's progress through the rounds."""

    question: Question
    read: list[Document] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)  # the queries of the next search
    searched: tuple[str, ...] = ()  # the queries this round searched
    rounds: list[RoundRecord] = field(default_factory=list)
    answer: str | None = None
    error: str | None = None
    done: bool = False
    wall_s: float = 0.0
    # the current round's work in progress
    new_docs: list[Document] = field(default_factory=list)
    compressions: list[tuple[str, ...]] = field(default_factory=list)
    usage: dict[str, RoleUsage] = field(default_factory=dict)
    reply: str | None = None
    action: str = "none"


Compressor = Any  # a CompressionStep (or anything with .batch(items, n) -> list[StepResult])


class ResearchAgent:
    """The loop above. ``compressor=None`` is the ``uncompressed`` arm.

    Args:
        predictor: a backend with ``generate`` (plans, decides, answers).
        search: ``search(query, k) -> list[Document]`` (e.g. :class:`~compressbench.agent.research.search.BM25Search`).
        compressor: a :class:`~compressbench.agent.step.CompressionStep` (any backend or
            callable, e.g. a baseline), or None to let the predictor read the raw documents.
        arm: the name recorded for this configuration (default: the compressor's name or ``uncompressed``).
        settings: :class:`AgentSettings`.
        predictor_info: the predictor's ModelInfo for FLOPs (default ``predictor.info()``).
        predictor_price: a :class:`~compressbench.measure.cost.Price` the predictor's tokens are billed at (None: no dollars).
    """

    def __init__(self, predictor: Any, search: Callable[[str, int], Sequence[Document]], *,
                 compressor: Compressor | None = None, arm: str | None = None,
                 settings: AgentSettings | None = None, predictor_info: Any = None,
                 predictor_price: Any = None) -> None:
        from compressbench.core.prompts import load_prompt

        if not callable(getattr(predictor, "generate", None)):
            raise UsageError(f"predictor must be a backend with generate(), got {type(predictor).__name__}")
        if not callable(search):
            raise UsageError(f"search must be a callable search(query, k) -> list[Document], got {type(search).__name__}")
        self.predictor = predictor
        self.search = search
        self.compressor = compressor
        self.arm = arm or (UNCOMPRESSED if compressor is None else str(getattr(compressor, "name", "compressor")))
        self.settings = settings or AgentSettings()
        if predictor_info is None and callable(getattr(predictor, "info", None)):
            predictor_info = predictor.info()
        self.predictor_info = predictor_info
        self.predictor_price = predictor_price
        self.prompts = {k: load_prompt(f"research_{k}") for k in ("plan", "step", "final")}

    # ------------------------------------------------------------------ public

    def run(self, question: Question | str) -> tuple[AnswerRecord, list[RoundRecord]]:
        """One question (a :class:`Question`, or a plain string with no gold answer): its answer
        record and its round records."""
        if isinstance(question, str):
            question = Question(Example(id="q", context="", question=question), "f1")
        return self.run_batch([question])[0]

    def run_batch(self, questions: Sequence[Question]) -> list[tuple[AnswerRecord, list[RoundRecord]]]:
        """Run questions together (batched model calls); one (answer, rounds) per question, in order."""
        states = [_State(q) for q in questions]
        s = self.settings
        for r in range(1, s.rounds + 1):
            active = [st for st in states if not st.done]
            if not active:
                break
            t0 = time.perf_counter()
            for st in active:
                st.new_docs, st.compressions, st.reply, st.action, st.searched = [], [], None, "none", ()
                st.usage = {"compressor": RoleUsage(), "predictor": RoleUsage()}
            if r == 1:
                self._first_queries(active)
            self._search(active, r)
            if self.compressor is not None:
                self._compress([st for st in active if not st.done])
            else:
                for st in active:
                    if not st.done:
                        st.notes += [f"[{d.id}] {d.content}" for d in st.new_docs]
            self._decide([st for st in active if not st.done], final=(r == s.rounds))
            per_q = (time.perf_counter() - t0) / len(active)
            for st in active:
                st.wall_s += per_q
                st.rounds.append(RoundRecord(
                    arm=self.arm, question_id=st.question.id, round=r, queries=st.searched,
                    doc_ids=tuple(d.id for d in st.new_docs), compressions=tuple(st.compressions),
                    predictor_reply=st.reply, action=st.action, usage=dict(st.usage), wall_s=per_q))
                if st.error is not None:
                    st.done = True
        return [(self._answer_record(st), st.rounds) for st in states]

    # ------------------------------------------------------------------ stages

    def _generate(self, states: list[_State], chats: list[list[dict[str, str]]], what: str) -> list[str | None]:
        """One batched predictor call; on failure, item by item so one bad prompt fails one question."""
        params = GenerationParams(max_new_tokens=self.settings.max_new_tokens_predictor, temperature=0.0, n=1,
                                  seed=0)
        try:
            gens = self.predictor.generate(chats, params)
            results: list[Any] = list(gens)
        except CompressbenchError as exc:
            if len(chats) == 1:
                results = [exc]
            else:
                results = []
                for chat in chats:
                    try:
                        results.append(self.predictor.generate([chat], params)[0])
                    except CompressbenchError as one:
                        results.append(one)
        texts: list[str | None] = []
        for st, g in zip(states, results):
            if isinstance(g, BaseException):
                st.error = f"predictor ({what}) failed: {type(g).__name__}: {g}"
                texts.append(None)
                continue
            st.usage["predictor"] = st.usage["predictor"] + self._predictor_usage(g.usage)
            texts.append(g.text)
        return texts

    def _predictor_usage(self, usage: Any) -> RoleUsage:
        from compressbench.measure.cost import role_cost

        u = {"n_prompt_tokens": usage.n_prompt_tokens, "n_completion_tokens": usage.n_completion_tokens,
             "n_calls": 1}
        rc = role_cost("predictor", u, self.predictor_info, paid_api=self.predictor_price is not None,
                       price=self.predictor_price)
        return RoleUsage(usage.n_prompt_tokens, usage.n_completion_tokens, 1, rc.flops, rc.api_usd)

    def _first_queries(self, states: list[_State]) -> None:
        for st in states:
            st.queries = [st.question.text[: self.settings.max_query_chars]]
        if not self.settings.plan:
            return
        p = self.prompts["plan"]
        chats = [p.render_chat(question=st.question.text, max_queries=str(self.settings.max_queries))
                 for st in states]
        for st, text in zip(states, self._generate(states, chats, "plan")):
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
        items, owners = [], []
        for st in states:
            for d in st.new_docs:
                items.append((d.content, st.question.text))
                owners.append((st, d))
        if not items:
            return
        try:
            results = self.compressor.batch(items, n=self.settings.samples)
        except CompressbenchError as exc:
            for st, _ in owners:
                st.error = f"compressor failed: {type(exc).__name__}: {exc}"
            return
        for (st, d), res in zip(owners, results):
            st.compressions.append(tuple(res.compressions))
            st.notes.append(f"[{d.id}] {res.compressions[0]}")
            u = res.usage
            st.usage["compressor"] = st.usage["compressor"] + RoleUsage(
                u.get("n_prompt_tokens"), u.get("n_completion_tokens"), int(u.get("n_calls") or 0), res.flops,
                res.api_usd)

    def _decide(self, states: list[_State], *, final: bool) -> None:
        states = [st for st in states if st.error is None]
        if not states:
            return
        p = self.prompts["final" if final else "step"]
        chats = []
        for st in states:
            notes = "\n".join(st.notes) if st.notes else "(no documents found)"
            values = {"question": st.question.text, "notes": notes, "max_queries": str(self.settings.max_queries)}
            chats.append(p.render_chat(**{k: v for k, v in values.items() if k in p.fields}))
        for st, text in zip(states, self._generate(states, chats, "final answer" if final else "decide")):
            if text is None:
                continue
            st.reply = text
            rep = parse_reply(text, final=final, question=st.question.example,
                              max_queries=self.settings.max_queries, max_query_chars=self.settings.max_query_chars)
            if rep.answer is not None:
                st.answer, st.action, st.done = rep.answer, "answer", True
            elif final:
                st.action, st.done = ("search" if rep.queries else "none"), True
            elif rep.queries:
                st.queries, st.action = list(rep.queries), "search"
            else:
                st.queries, st.action = [st.question.text[: self.settings.max_query_chars]], "none"

    def _answer_record(self, st: _State) -> AnswerRecord:
        from compressbench.measure.metrics import score_example

        q = st.question
        usage = {"compressor": RoleUsage(), "predictor": RoleUsage()}
        for rr in st.rounds:
            for role, u in rr.usage.items():
                usage[role] = usage[role] + u
        failure = None
        score: float | None = None
        if st.error is None:
            if st.answer is None:
                failure, score = "no_answer", 0.0
            elif q.example.answers or q.example.options:
                sc = score_example(q.example, st.answer, q.metric)
                score = None if sc.error else sc.value
        return AnswerRecord(
            arm=self.arm, question_id=q.id, question=q.text, gold=tuple(q.example.answers), metric=q.metric,
            answer=st.answer, score=score, failure=failure, error=st.error, n_rounds=len(st.rounds),
            doc_ids=tuple(d.id for d in st.read), gold_doc_ids=q.gold_doc_ids, usage=usage, wall_s=st.wall_s)


__all__ = ["AgentSettings", "Reply", "ResearchAgent", "parse_reply"]
