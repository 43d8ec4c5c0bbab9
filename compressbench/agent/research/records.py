"""The typed, versioned records of a research run (``records.jsonl`` of a ``kind: research`` run).

Three kinds of line, each a frozen dataclass with ``to_dict`` / ``from_dict``:

- :class:`RoundRecord` (``"kind": "round"``): one agent round of one question in one arm: the
  queries, the retrieved doc ids, the compressions (empty in the ``uncompressed`` arm), the
  predictor's reply and action, usage per role.
- :class:`AnswerRecord` (``"kind": "answer"``): one question in one arm: the answer, its score,
  a failure (``no_answer``: the predictor gave none within R rounds) or an error (search or model
  failed), totals per role.
- :class:`RoundMIRecord` (``"kind": "round_mi"``): the MI (bits, log base 2) between the
  documents compressed in one round and their compressions, over all questions of an arm.

Usage per role is ``{"compressor": RoleUsage, "predictor": RoleUsage}`` with
``n_prompt_tokens, n_completion_tokens, n_calls, flops, api_usd``; None means unknown (never 0).
A question's round records and its answer record are appended in one write, so a killed run
leaves each question complete or absent (a torn last line is cut off on the next open).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from compressbench.core.errors import DataError

#: Version of the research record format.
RESEARCH_RECORD_VERSION = 1
#: The ``kind`` a research run's manifest carries.
RUN_KIND = "research"
#: The arm in which the predictor reads the raw documents.
UNCOMPRESSED = "uncompressed"
RESEARCH_ROLES = ("compressor", "predictor")


def _add(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a + b


@dataclass(frozen=True)
class RoleUsage:
    """Tokens, calls, FLOPs and API dollars of one role. None = unknown."""

    n_prompt_tokens: int | None = 0
    n_completion_tokens: int | None = 0
    n_calls: int = 0
    flops: float | None = 0.0
    api_usd: float | None = None

    def __add__(self, other: RoleUsage) -> RoleUsage:
        api = (self.api_usd if other.api_usd is None else other.api_usd if self.api_usd is None
               else self.api_usd + other.api_usd)
        p = _add(self.n_prompt_tokens, other.n_prompt_tokens)
        c = _add(self.n_completion_tokens, other.n_completion_tokens)
        return RoleUsage(None if p is None else int(p), None if c is None else int(c),
                         self.n_calls + other.n_calls, _add(self.flops, other.flops), api)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> RoleUsage:
        d = d or {}
        return cls(d.get("n_prompt_tokens"), d.get("n_completion_tokens"), int(d.get("n_calls") or 0),
                   d.get("flops"), d.get("api_usd"))


def _usage_dict(usage: Mapping[str, RoleUsage]) -> dict[str, Any]:
    return {role: asdict(u) for role, u in usage.items()}


def _usage_from(d: Mapping[str, Any] | None) -> dict[str, RoleUsage]:
    return {role: RoleUsage.from_dict(v) for role, v in (d or {}).items()}


@dataclass(frozen=True)
class RoundRecord:
    arm: str
    question_id: str
    round: int
    queries: tuple[str, ...]
    doc_ids: tuple[str, ...]
    compressions: tuple[tuple[str, ...], ...]  # per doc, its M samples (the first one is read)
    predictor_reply: str | None
    action: str  # "answer" | "search" | "none" (nothing usable; the agent searched on)
    usage: Mapping[str, RoleUsage] = field(default_factory=dict)
    wall_s: float = 0.0
    kind: str = "round"
    v: int = RESEARCH_RECORD_VERSION

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["usage"] = _usage_dict(self.usage)
        return d


@dataclass(frozen=True)
class AnswerRecord:
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
    usage: Mapping[str, RoleUsage] = field(default_factory=dict)
    wall_s: float = 0.0
    kind: str = "answer"
    v: int = RESEARCH_RECORD_VERSION

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["usage"] = _usage_dict(self.usage)
        return d

    @property
    def gold_recall(self) -> float | None:
        """Share of the gold documents the agent retrieved (None when gold documents are unknown)."""
        if not self.gold_doc_ids:
            return None
        return len(set(self.gold_doc_ids) & set(self.doc_ids)) / len(set(self.gold_doc_ids))


@dataclass(frozen=True)
class RoundMIRecord:
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
        return asdict(self)


_TYPES: dict[str, type] = {"round": RoundRecord, "answer": AnswerRecord, "round_mi": RoundMIRecord}
Record = RoundRecord | AnswerRecord | RoundMIRecord


def _tuplify(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_tuplify(x) for x in v)
    return v


def record_from_dict(d: Mapping[str, Any]) -> Record:
    """A typed record from one JSON line; DataError for an unknown kind or version, or missing fields."""
    kind = d.get("kind")
    cls = _TYPES.get(str(kind))
    if cls is None:
        raise DataError(f"not a research record (kind {kind!r}); known kinds: {', '.join(_TYPES)}")
    if d.get("v") != RESEARCH_RECORD_VERSION:
        raise DataError(f"research record version {d.get('v')!r} is not {RESEARCH_RECORD_VERSION}; "
                        "this compressbench cannot read it")
    names = {f.name for f in fields(cls)}
    kw = {k: (_usage_from(v) if k == "usage" else _tuplify(v)) for k, v in d.items() if k in names}
    try:
        rec = cls(**kw)
    except TypeError as exc:
        raise DataError(f"research record of kind {kind!r} is missing fields: {exc}") from None
    if isinstance(rec, AnswerRecord) and rec.score is not None and math.isnan(rec.score):
        rec = AnswerRecord(**{**kw, "score": None})
    return rec


__all__ = ["RESEARCH_RECORD_VERSION", "RESEARCH_ROLES", "RUN_KIND", "UNCOMPRESSED", "AnswerRecord", "Record",
           "RoleUsage", "RoundMIRecord", "RoundRecord", "record_from_dict"]
