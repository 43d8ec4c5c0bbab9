"""The run record: one typed line of ``records.jsonl`` per (cell, example), and the one module that
writes and reads it (the sweep writes; the report, plots and test fixtures read; fixtures are built
by the same writer).

- :class:`CellId` is the identity of a cell: every grid axis (dataset, compressor, predictor,
  prompt, temperature, seed) plus the scorer and the predictor mode. The sweep, its summary and
  the report group by exactly these fields (:data:`CELL_AXES`).
- :class:`RunRecord` holds one example's outcome in one cell, with ``version`` =
  :data:`RECORD_VERSION` and ``example_hash`` (:func:`example_hash`: SHA-256 of the example's
  content: context, question, options, gold answers, reference). A record is *current* for an
  example only while its hash matches the example; a changed row gets a new record, appended
  after the old one, and :func:`current_records` (last record per ``(cell_key, example_id)``)
  never reports the stale one.
- ``usage[role]`` is :class:`RoleUsage` (token counts summed over the role's calls for this
  example; None = unknown); ``flops[role]`` is :func:`compressbench.measure.cost.role_cost` of it.

Lines of another version fail with :class:`RecordVersionError` naming the version that wrote them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compressbench.measure.cost import ROLES
from compressbench.core.errors import DataError, RecordVersionError
from compressbench.engine.store import RECORDS, RecordWriter, canonical_json, read_jsonl
from compressbench.core.types import Example
import math

#: Version of the record format (docs/run_format.md). 1: records before typed records (no
#: ``version``, ``example_hash``, ``scorer`` or ``predictor_mode``).
RECORD_VERSION = 2


def example_hash(ex: Example) -> str:
    """SHA-256 (hex, first 16 bytes) of what defines an example's results: id, context, question,
    options, gold answers and reference answer (not its metadata)."""
    material = {"id": ex.id, "context": ex.context, "question": ex.question, "options": list(ex.options),
                "answers": list(ex.answers), "reference": ex.reference}
    return hashlib.sha256(canonical_json(material).encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True, order=True)
class CellId:
    """Everything that names a cell: the grid axes plus the scorer and predictor mode."""

    dataset: str
    compressor: str
    predictor: str
    prompt: str
    temperature: float
    seed: int
    scorer: str
    predictor_mode: str = "generate"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CellId:
        try:
            return cls(dataset=str(d["dataset"]), compressor=str(d["compressor"]), predictor=str(d["predictor"]),
                       prompt=str(d["prompt"]), temperature=float(d["temperature"]), seed=int(d["seed"]),
                       scorer=str(d["scorer"]), predictor_mode=str(d.get("predictor_mode", "generate")))
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"a record's cell lacks or garbles {exc}; expected the fields {', '.join(CELL_AXES)}"
                            ) from None

    def label(self) -> str:
        """Readable form used in cell keys: ``dataset/compressor/predictor/prompt/T0.7/s0/scorer/mode``."""
        return (f"{self.dataset}/{self.compressor}/{self.predictor}/{self.prompt}/T{self.temperature:g}/"
                f"s{self.seed}/{self.scorer}/{self.predictor_mode}")

    def key(self, salt: str) -> str:
        """The cell key: the readable label plus a hash of everything else that changes its records
        (prompt ids, sampling settings, model identities)."""
        return f"{self.label()}#{salt}"


#: The cell identity fields, in order (the report's and the summary's cell columns).
CELL_AXES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(CellId))


@dataclass(frozen=True)
class RoleUsage:
    """Tokens one role used for one example, summed over its calls (None = unknown, never 0)."""

    n_prompt_tokens: int | None
    n_completion_tokens: int | None
    n_calls: int
    n_cached_prompt_tokens: int | None = None
    #: Calls that scored continuations after one shared prefix (the MI scorer's rows, the loglik
    #: predictor's options): ``(prefix_tokens, sum of continuation tokens, sum of their squares)`` per
    #: call, so :func:`compressbench.measure.cost.role_cost` charges one prefill plus continuations that
    #: attend to the prefix, not one long prefill of everything. Their tokens are in
    #: ``n_prompt_tokens`` too (prefix + continuations) and each is one of ``n_calls``.
    shared_prefix_calls: tuple[tuple[int, ...], ...] = ()

    def __add__(self, other: RoleUsage) -> RoleUsage:
        def add(a: int | None, b: int | None) -> int | None:
            return None if a is None or b is None else a + b

        cached = (None if self.n_cached_prompt_tokens is None and other.n_cached_prompt_tokens is None
                  else (self.n_cached_prompt_tokens or 0) + (other.n_cached_prompt_tokens or 0))
        return RoleUsage(add(self.n_prompt_tokens, other.n_prompt_tokens),
                         add(self.n_completion_tokens, other.n_completion_tokens), self.n_calls + other.n_calls,
                         cached, self.shared_prefix_calls + other.shared_prefix_calls)

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"n_prompt_tokens": self.n_prompt_tokens,
                             "n_completion_tokens": self.n_completion_tokens, "n_calls": self.n_calls}
        if self.n_cached_prompt_tokens is not None:
            d["n_cached_prompt_tokens"] = self.n_cached_prompt_tokens
        if self.shared_prefix_calls:
            d["shared_prefix_calls"] = [list(c) for c in self.shared_prefix_calls]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> RoleUsage | None:
        if d is None:
            return None
        # [P, S1, S2] or [P, S1, S2, n] (1/n of the prefill: measure.cost.prefill_share)
        shared = tuple(tuple(int(x) for x in c) for c in d.get("shared_prefix_calls") or ())
        return cls(d.get("n_prompt_tokens"), d.get("n_completion_tokens"), int(d.get("n_calls") or 0),
                   d.get("n_cached_prompt_tokens"), shared)


NO_CALLS = RoleUsage(0, 0, 0)


@dataclass(frozen=True)
class RunRecord:
    """One (cell, example) outcome. ``score`` is in [0, 1]; an answer that could not be parsed or
    scored is counted wrong (``score`` 0.0, ``unscored`` True, the reason in ``score_error``);
    ``score`` is None only for a failed example (``error``) or a task without accuracy (ref_nll)."""

    cell: CellId
    cell_key: str
    example_id: str
    example_hash: str
    compressions: tuple[str, ...]
    compression_n_tokens: tuple[int, ...] | None
    pointwise_mi_bits: tuple[float, ...] | None
    predictions: tuple[str, ...]
    answers: tuple[str | None, ...]
    voted_answer: str | None
    gold: tuple[str, ...]
    score: float | None
    score_error: str | None
    unscored: bool
    metric: str
    ref_nll_nats: float | None
    error: str | None
    context_truncated: Mapping[str, int] | None
    usage: Mapping[str, RoleUsage | None]
    flops: Mapping[str, float | None]
    wall_s: float
    version: int = RECORD_VERSION
    #: Known-information tasks: bits of the context each compression sample keeps verbatim
    #: (:func:`compressbench.data.known_info.retained_bits`); None for other tasks.
    retained_bits: tuple[float, ...] | None = None
    #: ``predictor_mode: loglik``: the length-normalised choice's score (lm-eval ``acc_norm``),
    #: majority-voted over the samples like ``score``; and each sample's scored options.
    score_norm: float | None = None
    loglik: tuple[Mapping[str, Any], ...] | None = None
    #: How each model role was prompted: ``chat`` (its chat template) or ``completion`` (plain-text
    #: form, a model without a chat template).
    prompt_formats: Mapping[str, str] | None = None
    #: ``predictor_mode: loglik``: usable information about the answer, in bits (log base 2), mean
    #: over the samples of :func:`compressbench.measure.predict_loglik.pvi_bits` (the compression vs
    #: the empty compression of the same example); the predictor's confidence ``max_k q(o_k | z)``
    #: (mean over the samples; choice questions); and the predictor's scoring of the empty
    #: compression (one object like a ``loglik`` entry). None where they do not apply.
    pvi_bits: float | None = None
    confidence: float | None = None
    loglik_empty: Mapping[str, Any] | None = None
    #: The group's MI estimate and how it was measured: ``bits``, ``ci_low_bits``, ``ci_high_bits``,
    #: ``ceiling_bits`` (log2(K + 1)), ``negatives`` (all | fixed | auto), ``n_negatives`` (K),
    #: ``design_seed``, ``k_stop`` (auto: why K stopped), ``kind`` (all contexts | corrected |
    #: saturated: a lower bound), ``saturated``, ``bound_bits`` with ``bound_ci_low_bits`` /
    #: ``bound_ci_high_bits`` (sampled negatives: the raw InfoNCE bound, ceiling log2(K + 1)) and
    #: ``correction_bits`` (what the bias correction adds); or ``{"measured": False, "why": ...}``
    #: (the identity baseline with ``mi_identity_negatives: skip``). None: no estimate.
    mi_estimate: Mapping[str, Any] | None = None

    @property
    def ok(self) -> bool:
        """The example did not fail (it may still be unscored)."""
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version, "cell": self.cell.as_dict(), "cell_key": self.cell_key,
            "example_id": self.example_id, "example_hash": self.example_hash,
            "compressions": list(self.compressions),
            "compression_n_tokens": None if self.compression_n_tokens is None else list(self.compression_n_tokens),
            "pointwise_mi_bits": None if self.pointwise_mi_bits is None else list(self.pointwise_mi_bits),
            "predictions": list(self.predictions), "answers": list(self.answers),
            "voted_answer": self.voted_answer, "gold": list(self.gold), "score": self.score,
            "score_error": self.score_error, "unscored": self.unscored, "metric": self.metric,
            "ref_nll_nats": self.ref_nll_nats, "error": self.error,
            "context_truncated": None if not self.context_truncated else dict(self.context_truncated),
            "usage": {r: (None if u is None else u.as_dict()) for r, u in self.usage.items()},
            "flops": dict(self.flops), "wall_s": self.wall_s,
            "retained_bits": None if self.retained_bits is None else list(self.retained_bits),
            "score_norm": self.score_norm,
            "loglik": None if self.loglik is None else [dict(x) for x in self.loglik],
            "prompt_formats": None if not self.prompt_formats else dict(self.prompt_formats),
            "pvi_bits": self.pvi_bits, "confidence": self.confidence,
            "loglik_empty": None if self.loglik_empty is None else dict(self.loglik_empty),
            **({"mi_estimate": dict(self.mi_estimate)} if self.mi_estimate is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "a record") -> RunRecord:
        version = d.get("version", 1) if isinstance(d, Mapping) else None
        if version != RECORD_VERSION:
            raise RecordVersionError(
                f"{where} was written by record format version {version} (this compressbench reads version "
                f"{RECORD_VERSION}); rerun the sweep into a new run directory, or report it with the "
                f"compressbench version that wrote it")
        try:
            score = d["score"]
            return cls(
                cell=CellId.from_dict(d["cell"]), cell_key=str(d["cell_key"]), example_id=str(d["example_id"]),
                example_hash=str(d["example_hash"]), compressions=tuple(d["compressions"]),
                compression_n_tokens=None if d.get("compression_n_tokens") is None else tuple(d["compression_n_tokens"]),
                pointwise_mi_bits=None if d.get("pointwise_mi_bits") is None else tuple(d["pointwise_mi_bits"]),
                predictions=tuple(d["predictions"]), answers=tuple(d["answers"]), voted_answer=d.get("voted_answer"),
                gold=tuple(d["gold"]), score=None if score is None else float(score),
                score_error=d.get("score_error"), unscored=bool(d.get("unscored", False)), metric=str(d["metric"]),
                ref_nll_nats=d.get("ref_nll_nats"), error=d.get("error"),
                context_truncated=d.get("context_truncated") or None,
                usage={r: RoleUsage.from_dict(u) for r, u in (d.get("usage") or {}).items()},
                flops=dict(d.get("flops") or {}), wall_s=float(d.get("wall_s") or 0.0), version=version,
                retained_bits=None if d.get("retained_bits") is None else tuple(float(b) for b in d["retained_bits"]),
                score_norm=None if d.get("score_norm") is None else float(d["score_norm"]),
                loglik=None if d.get("loglik") is None else tuple(d["loglik"]),
                prompt_formats=d.get("prompt_formats") or None,
                pvi_bits=None if d.get("pvi_bits") is None else float(d["pvi_bits"]),
                confidence=None if d.get("confidence") is None else float(d["confidence"]),
                loglik_empty=d.get("loglik_empty"),
                mi_estimate=d.get("mi_estimate"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{where} is malformed ({type(exc).__name__}: {exc}); was records.jsonl edited by hand?"
                            ) from None


# --------------------------------------------------------------------------- files


def records_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / RECORDS


def append_records(writer: RecordWriter, records: Iterable[RunRecord]) -> int:
    """Append records (one JSON line each, flushed and fsync'ed) through a store RecordWriter."""
    return writer.append(r.to_dict() for r in records)


def write_records(run_dir: str | Path, records: Iterable[RunRecord]) -> int:
    """Append records to ``<run_dir>/records.jsonl`` (the writer tests and fixtures use too)."""
    with RecordWriter(records_path(run_dir)) as w:
        return append_records(w, records)


def read_records(run_dir: str | Path) -> list[RunRecord]:
    """Every complete record of a run in file order (stale ones included; see :func:`current_records`)."""
    path = records_path(run_dir)
    return [RunRecord.from_dict(d, f"{path} record {i}") for i, d in enumerate(read_jsonl(path), 1)]


def current_records(records: Sequence[RunRecord]) -> list[RunRecord]:
    """The last record of every ``(cell_key, example_id)``, in first-seen order: a record appended
    for an edited example supersedes the stale one."""
    last: dict[tuple[str, str], RunRecord] = {}
    for r in records:
        last.pop((r.cell_key, r.example_id), None)
        last[(r.cell_key, r.example_id)] = r
    return list(last.values())


def records_by_cell(records: Iterable[RunRecord]) -> dict[CellId, list[RunRecord]]:
    out: dict[CellId, list[RunRecord]] = {}
    for r in records:
        out.setdefault(r.cell, []).append(r)
    return out


def dumps_record(record: RunRecord) -> str:
    return json.dumps(record.to_dict(), ensure_ascii=False)


# --------------------------------------------------------------------------- research records
# The typed records of a ``compressbench research`` run (a ``"kind": "research"`` manifest), the
# family next to RunRecord: same run store (RunStore), one line each in ``records.jsonl``.
#
# - ResearchRoundRecord (``"kind": "round"``): one agent round of one question in one arm: the
#   queries issued, the retrieved doc ids, the compressions (none in ``uncompressed``), the entities
#   the ``entities`` planner found in the round's notes, the predictor's reply or scored options,
#   the answer after this round and its score, usage per role.
# - ResearchAnswerRecord (``"kind": "answer"``): one question in one arm: the final answer, its
#   score, a failure (``no_answer``) or an error, the planner and predictor mode, totals per role
#   (in ``loglik`` mode also the option set and the gold option letters).
# - ResearchRoundMIRecord (``"kind": "round_mi"``): MI (bits, log base 2) between the documents
#   compressed in one round and their compressions, over the questions of an arm.
#
# Usage per role is ``{"compressor": ResearchUsage, "predictor": ResearchUsage}``; None = unknown
# (never 0). A question's round records and its answer record are appended in one write.

#: Version of the research record format. 2: the round's answer/score/options/entities, the
#: answer's planner and predictor mode.
RESEARCH_RECORD_VERSION = 2
#: The ``kind`` a research run's manifest carries.
RESEARCH_RUN_KIND = "research"
#: The research arm in which the predictor reads the raw documents.
UNCOMPRESSED = "uncompressed"
RESEARCH_ROLES = ("compressor", "predictor")


def _add_known(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a + b


@dataclass(frozen=True)
class ResearchUsage:
    """Tokens, calls, FLOPs and API dollars of one research role. None = unknown."""

    n_prompt_tokens: int | None = 0
    n_completion_tokens: int | None = 0
    n_calls: int = 0
    flops: float | None = 0.0
    api_usd: float | None = None

    def __add__(self, other: ResearchUsage) -> ResearchUsage:
        api = (self.api_usd if other.api_usd is None else other.api_usd if self.api_usd is None
               else self.api_usd + other.api_usd)
        p = _add_known(self.n_prompt_tokens, other.n_prompt_tokens)
        c = _add_known(self.n_completion_tokens, other.n_completion_tokens)
        return ResearchUsage(None if p is None else int(p), None if c is None else int(c),
                             self.n_calls + other.n_calls, _add_known(self.flops, other.flops), api)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> ResearchUsage:
        d = d or {}
        return cls(d.get("n_prompt_tokens"), d.get("n_completion_tokens"), int(d.get("n_calls") or 0),
                   d.get("flops"), d.get("api_usd"))


def _usage_dict(usage: Mapping[str, ResearchUsage]) -> dict[str, Any]:
    return {role: dataclasses.asdict(u) for role, u in usage.items()}


@dataclass(frozen=True)
class ResearchRoundRecord:
    arm: str
    question_id: str
    round: int
    queries: tuple[str, ...]
    doc_ids: tuple[str, ...]
    compressions: tuple[tuple[str, ...], ...]  # per doc, its M samples (the first one is read)
    predictor_reply: str | None
    action: str  # "answer" | "search" | "none" (nothing usable; the agent searched on) | "read"
    usage: Mapping[str, ResearchUsage] = dataclasses.field(default_factory=dict)
    wall_s: float = 0.0
    answer: str | None = None  # the answer the agent holds after this round (None: none yet)
    score: float | None = None  # its score (a question with no answer yet: 0.0)
    loglik: Mapping[str, Any] | None = None  # predictor_mode loglik: the scored options
    entities: tuple[str, ...] = ()  # planner entities: names found in this round's notes
    kind: str = "round"
    v: int = RESEARCH_RECORD_VERSION

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["usage"] = _usage_dict(self.usage)
        return d


@dataclass(frozen=True)
class ResearchAnswerRecord:
    arm: str
    question_id: str
    question: str
    gold: tuple[str, ...]
    metric: str
    answer: str | None
    score: float | None  # None: not scored (error); a no_answer failure scores 0.0
    failure: str | None  # "no_answer" when the predictor gave no answer within R rounds
    error: str | None  # a search/model error that stopped this question
    n_rounds: int
    doc_ids: tuple[str, ...]
    gold_doc_ids: tuple[str, ...]
    usage: Mapping[str, ResearchUsage] = dataclasses.field(default_factory=dict)
    wall_s: float = 0.0
    options: tuple[str, ...] = ()  # predictor_mode loglik: the option set (gold once)
    gold_letters: tuple[str, ...] = ()  # predictor_mode loglik: the gold option letter(s) the score counts
    planner: str = "model"
    predictor_mode: str = "generate"
    kind: str = "answer"
    v: int = RESEARCH_RECORD_VERSION

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["usage"] = _usage_dict(self.usage)
        return d

    @property
    def gold_recall(self) -> float | None:
        """Share of the gold documents the agent retrieved (None when gold documents are unknown)."""
        if not self.gold_doc_ids:
            return None
        return len(set(self.gold_doc_ids) & set(self.doc_ids)) / len(set(self.gold_doc_ids))


@dataclass(frozen=True)
class ResearchRoundMIRecord:
    arm: str
    round: int
    n_contexts: int
    n_samples: int
    mi_bits: float | None
    mi_bits_raw: float | None = None
    mi_ci_low_bits: float | None = None
    mi_ci_high_bits: float | None = None
    ceiling_bits: float | None = None
    bits_per_token: float | None = None
    mean_compression_tokens: float | None = None
    question_ids: tuple[str, ...] = ()
    note: str | None = None  # why mi_bits is None, when it is
    kind: str = "round_mi"
    v: int = RESEARCH_RECORD_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_RESEARCH_TYPES: dict[str, type] = {"round": ResearchRoundRecord, "answer": ResearchAnswerRecord,
                                    "round_mi": ResearchRoundMIRecord}
ResearchRecord = ResearchRoundRecord | ResearchAnswerRecord | ResearchRoundMIRecord


def _tuplify(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_tuplify(x) for x in v)
    return v


def research_record_from_dict(d: Mapping[str, Any]) -> ResearchRecord:
    """A typed research record from one JSON line; RecordVersionError for another version,
    DataError for an unknown kind or missing fields."""
    kind = d.get("kind")
    cls = _RESEARCH_TYPES.get(str(kind))
    if cls is None:
        raise DataError(f"not a research record (kind {kind!r}); known kinds: {', '.join(_RESEARCH_TYPES)}")
    if d.get("v") != RESEARCH_RECORD_VERSION:
        raise RecordVersionError(f"research record version {d.get('v')!r} is not {RESEARCH_RECORD_VERSION}; "
                                 "this compressbench cannot read it (rerun into a new run directory)")
    names = {f.name for f in dataclasses.fields(cls)}
    kw = {k: ({r: ResearchUsage.from_dict(u) for r, u in (v or {}).items()} if k == "usage"
              else v if k == "loglik" else _tuplify(v)) for k, v in d.items() if k in names}
    try:
        rec = cls(**kw)
    except TypeError as exc:
        raise DataError(f"research record of kind {kind!r} is missing fields: {exc}") from None
    if isinstance(rec, ResearchAnswerRecord) and rec.score is not None and math.isnan(rec.score):
        rec = dataclasses.replace(rec, score=None)
    return rec


def read_research_records(run_dir: str | Path) -> list[ResearchRecord]:
    """The typed records of a research run, in file order (a torn last line is skipped)."""
    return [research_record_from_dict(d) for d in read_jsonl(records_path(run_dir))]


__all__ = ["CELL_AXES", "NO_CALLS", "RECORD_VERSION", "RESEARCH_RECORD_VERSION", "RESEARCH_ROLES",
           "RESEARCH_RUN_KIND", "ROLES", "UNCOMPRESSED", "CellId", "ResearchAnswerRecord",
           "ResearchRecord", "ResearchRoundMIRecord", "ResearchRoundRecord", "ResearchUsage", "RoleUsage",
           "RunRecord", "append_records", "current_records", "example_hash", "read_records",
           "read_research_records", "records_by_cell", "research_record_from_dict", "write_records"]
