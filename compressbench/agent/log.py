r"""A small library API for use inside a running agent: record what its compressor did, score later.

An agent that compresses contexts (summaries of tool output, memory, a long document) can log
each ``(context, query, compression)`` triple cheaply in its hot path and estimate the mutual
information I(X; Z) between contexts and compressions later, with any scorer backend::

    from compressbench.agent import CompressionLog

    log = CompressionLog("runs/agent/compressions.jsonl")
    cid = log.record(context, query, summary, compressor="summarise-v2")   # no model needed
    ...
    estimates = log.estimate(scorer)          # {compressor: MIEstimate}, bits (log base 2)

The log file
------------
One JSON object per line, appended and fsync'ed by :class:`compressbench.core.jsonl.JsonlAppender`:
a torn last line left by a killed process is cut off when the log is next opened for writing
(a complete last line that only lacks its newline is kept), and skipped when read; a write that
fails part-way (disk full, I/O error) is cut back off at once, so no complete line is ever lost
and no partial line merges with the next. Any ``str`` can be recorded (lone surrogates are
written as ``\uXXXX`` escapes). Each line holds::

    {"v": 1, "id": <context id>, "compressor": str, "example_id": str | null,
     "context": str, "query": str, "compression": str, "metadata": {...},
     "time_unix_s": float}

``id`` is the first 16 hex digits of the SHA-256 of the canonical JSON of ``[context, query]``:
the same (context, query) pair recorded again gets the same id, so several compressions of one
context become the M samples ``z_i1..z_iM`` of that context in the estimate. The query is part
of the id because the scoring prefix holds both (``prefix(x_l, q_l)``, see
:mod:`compressbench.measure.scoring`). Each line repeats its context, so a line can be read on its own.

One process should write a given file (threads are fine: :meth:`CompressionLog.record` holds a
per-instance lock). Recording imports nothing heavy: no torch, no scipy.

Recording again what the file already held (a script run twice on one log) silently grows M
with repeats, so the first :meth:`CompressionLog.record` of a log object on an existing file reads
the file's (compressor, context id, compression) keys once (files up to
``REPEAT_CHECK_MAX_BYTES``), and the first record that repeats one of them logs a warning naming
the file. Repeats within one log object's own records (M samples that happen to agree) do not warn.

Estimating
----------
:meth:`CompressionLog.estimate` groups the lines by compressor and, per compressor, by context
id (in order of first appearance). The estimator needs a rectangular (N, M) set of samples, so
it takes M as the most common number of samples per context (ties go to the larger M); a
context with more than M samples keeps its first M (file order), one with fewer is dropped.
Both are reported in a logged message and in the :class:`Selection` returned by
:meth:`CompressionLog.select`. With ``max_contexts`` a seeded random subset of the contexts is
kept (file order preserved). The (N, M) set then goes to :func:`compressbench.measure.scoring.score_mi`
unchanged, so the estimate is exactly what ``score_mi`` returns on the same examples and
compressions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compressbench.core.errors import DataError, UsageError
from compressbench.core.jsonl import JsonlAppender, read_jsonl
from compressbench.core.types import Example
import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from compressbench.measure.mi import MIEstimate

log = logging.getLogger(__name__)

#: Version of the line format written by :meth:`CompressionLog.record`.
LOG_VERSION = 1
#: Larger existing log files are not read for the repeat check (see the module docstring).
REPEAT_CHECK_MAX_BYTES = 64 << 20
_REQUIRED = ("id", "compressor", "context", "query", "compression")


def context_id(context: str, query: str) -> str:
    """The id of a (context, query) pair: SHA-256 of canonical JSON ``[context, query]``, 16 hex digits."""
    material = json.dumps([context, query], ensure_ascii=False, separators=(",", ":"))
    # surrogatepass: any str has an id (lone surrogates included); valid text hashes its plain UTF-8
    return hashlib.sha256(material.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _check_str(name: str, value: Any, *, allow_empty: bool = True) -> str:
    if not isinstance(value, str):
        raise UsageError(f"{name} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise UsageError(f"{name} must be a non-empty string")
    return value


@dataclass(frozen=True)
class Selection:
    """The rectangular (N, M) sample set taken from a log for one compressor.

    examples[i] is context i (``Example.id`` = its context id); compressions[i] holds its M
    compressions. ``trimmed_ids``: contexts that had more than M samples (their first M kept);
    ``dropped_ids``: contexts with fewer than M samples (left out); ``unselected_ids``:
    contexts left out by ``max_contexts``.
    """

    compressor: str
    examples: tuple[Example, ...]
    compressions: tuple[tuple[str, ...], ...]
    n_samples: int
    n_contexts_logged: int
    trimmed_ids: tuple[str, ...] = ()
    dropped_ids: tuple[str, ...] = ()
    unselected_ids: tuple[str, ...] = field(default=())

    @property
    def n_contexts(self) -> int:
        """N, the number of contexts selected."""
        return len(self.examples)

    @property
    def note(self) -> str:
        """One line saying what was kept, trimmed and dropped."""
        parts = [(f"compressor {self.compressor!r}: {self.n_contexts} of {self.n_contexts_logged} logged "
                  f"contexts with M = {self.n_samples} samples each")]
        if self.trimmed_ids:
            parts.append(f"{len(self.trimmed_ids)} with more samples kept their first {self.n_samples}")
        if self.dropped_ids:
            parts.append(f"{len(self.dropped_ids)} with fewer than {self.n_samples} samples dropped")
        if self.unselected_ids:
            parts.append(f"{len(self.unselected_ids)} left out by max_contexts")
        return "; ".join(parts)


class CompressionLog:
    """An append-only JSONL log of an agent's (context, query, compression) triples.

    ``path`` is the log file (created with its folder on the first :meth:`record`). The file is
    opened for appending on the first record and kept open; call :meth:`close` (or use the log
    as a context manager) when done. Safe to call from several threads of one process.
    """

    def __init__(self, path: str | Path):
        p = Path(path)
        if p.is_dir():
            raise UsageError(f"{p} is a folder; CompressionLog needs a file path, e.g. {p / 'compressions.jsonl'}")
        self.path = p
        self._lock = threading.Lock()
        self._writer: JsonlAppender | None = None
        self._earlier: set[tuple[str, str, str]] | None = None  # keys the file held before this object wrote
        self._warned_repeat = False

    # ------------------------------------------------------------------ recording

    def record(
        self,
        context: str,
        query: str,
        compression: str,
        *,
        compressor: str = "default",
        example_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Append one triple (one line, fsync'ed) and return its context id (see :func:`context_id`).

        ``compressor`` names what produced the compression (estimates are per compressor);
        ``example_id`` is the agent's own label for the item; ``metadata`` any JSON-serialisable
        mapping (model name, step, cost...). Raises UsageError for non-string texts, an empty
        compressor name or metadata that JSON cannot hold; nothing is written then. Raises
        StoreError when the disk refuses the write: the log is then as it was before the call.
        """
        _check_str("context", context)
        _check_str("query", query)
        _check_str("compression", compression)
        _check_str("compressor", compressor, allow_empty=False)
        if example_id is not None:
            _check_str("example_id", example_id)
        if metadata is not None and not isinstance(metadata, Mapping):
            raise UsageError(f"metadata must be a mapping (dict) or None, got {type(metadata).__name__}")
        cid = context_id(context, query)
        line = {"v": LOG_VERSION, "id": cid, "compressor": compressor, "example_id": example_id,
                "context": context, "query": query, "compression": compression,
                "metadata": dict(metadata or {}), "time_unix_s": time.time()}
        with self._lock:
            if self._writer is None:
                self._writer = JsonlAppender(self.path)  # repairs a torn tail, then appends
            if self._earlier is None:
                self._earlier = self._keys_already_logged()
            if not self._warned_repeat and _repeat_key(compressor, cid, compression) in self._earlier:
                self._warned_repeat = True
                log.warning("%s already held this compression of context %s by compressor %r before this log "
                            "object wrote to it (the same script run twice?); it is recorded again and counts as "
                            "one more of the context's M samples. Start from a new log file to measure one run "
                            "(warned once per log object)", self.path, cid, compressor)
            try:
                self._writer.append([line])
            except (TypeError, ValueError) as exc:  # encoding fails before anything is written
                raise UsageError(f"metadata must be JSON-serialisable (strings, numbers, lists, dicts): {exc}") from None
        return cid

    def _keys_already_logged(self) -> set[tuple[str, str, str]]:
        try:
            size = self.path.stat().st_size
        except OSError:
            return set()
        if size == 0 or size > REPEAT_CHECK_MAX_BYTES:
            return set()
        try:
            rows = read_jsonl(self.path, skip_bad=True)
        except (OSError, DataError):  # the check never stops a record; entries() reports a bad file
            return set()
        return {_repeat_key(str(r["compressor"]), str(r["id"]), str(r["compression"]))
                for r in rows if isinstance(r, dict) and all(k in r for k in _REQUIRED)}

    def close(self) -> None:
        """Close the file (a later :meth:`record` opens it again)."""
        with self._lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None

    def __enter__(self) -> CompressionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ reading

    def entries(self) -> list[dict[str, Any]]:
        """All complete lines, in file order (``[]`` before the first record).

        A torn last line (a crash mid-write) is skipped, and so is any other unreadable line
        (with a warning naming the file and line), so one damaged line never hides the rest.
        Raises DataError for a line that is not a JSON object with the fields
        ``id, compressor, context, query, compression`` (a file that is not a compression log).
        """
        with self._lock:
            rows = read_jsonl(self.path, skip_bad=True)
        for n, row in enumerate(rows, 1):
            if not isinstance(row, dict) or any(k not in row for k in _REQUIRED):
                raise DataError(f"{self.path}: entry {n} is not a compression-log line (needs fields "
                                f"{', '.join(_REQUIRED)}); is this file a CompressionLog?")
        return rows

    def select(
        self,
        *,
        compressor: str | Sequence[str] | None = None,
        min_contexts: int = 2,
        max_contexts: int | None = None,
        seed: int = 0,
    ) -> dict[str, Selection]:
        """The rectangular sample set of each compressor (see the module doc for the rules).

        ``compressor``: one name, several, or None for every compressor in the log. A named
        compressor with fewer than ``min_contexts`` usable contexts raises UsageError; with
        ``compressor=None`` such compressors are skipped with a warning, and UsageError is raised
        only if none is left.
        """
        if not isinstance(min_contexts, int) or min_contexts < 2:
            raise UsageError(f"min_contexts must be an integer >= 2 (MI needs at least 2 contexts), got {min_contexts!r}")
        if max_contexts is not None and (not isinstance(max_contexts, int) or max_contexts < min_contexts):
            raise UsageError(f"max_contexts must be None or an integer >= min_contexts ({min_contexts}), "
                             f"got {max_contexts!r}")
        rows = self.entries()
        if not rows:
            raise UsageError(f"{self.path}: no compressions recorded yet; call record() first")
        by_comp: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_comp.setdefault(str(row["compressor"]), []).append(row)
        if compressor is None:
            wanted, strict = list(by_comp), False
        else:
            wanted = [compressor] if isinstance(compressor, str) else list(compressor)
            strict = True
            unknown = [c for c in wanted if c not in by_comp]
            if unknown:
                raise UsageError(f"no entries for compressor(s) {', '.join(map(repr, unknown))} in {self.path}; "
                                 f"the log holds: {', '.join(map(repr, by_comp))}")
        out: dict[str, Selection] = {}
        for name in wanted:
            sel = _select_one(name, by_comp[name], max_contexts=max_contexts, seed=seed)
            if sel.n_contexts < min_contexts:
                msg = (f"compressor {name!r}: only {sel.n_contexts} context(s) with M = {sel.n_samples} "
                       f"samples ({sel.n_contexts_logged} distinct contexts logged); MI needs at least "
                       f"{min_contexts}. Record compressions of more contexts (or lower min_contexts, >= 2)")
                if strict:
                    raise UsageError(msg)
                log.warning("skipping %s", msg)
                continue
            if sel.trimmed_ids or sel.dropped_ids or sel.unselected_ids:
                log.warning("%s", sel.note)
            else:
                log.info("%s", sel.note)
            out[name] = sel
        if not out:
            raise UsageError(f"{self.path}: no compressor has at least {min_contexts} contexts with the same "
                             "number of samples; record compressions of more contexts")
        return out

    def estimate(
        self,
        scorer: Any,
        *,
        compressor: str | Sequence[str] | None = None,
        min_contexts: int = 2,
        max_contexts: int | None = None,
        seed: int = 0,
        mi_negatives: str | int = "all",
        **estimate_kwargs: Any,
    ) -> dict[str, MIEstimate]:
        """I(X; Z) in bits per compressor: ``{compressor: MIEstimate}``.

        Takes :meth:`select`'s (N, M) set for each compressor and returns
        ``scoring.score_mi(scorer, examples, compressions, seed=seed, mi_negatives=mi_negatives,
        **estimate_kwargs)``. ``mi_negatives``: ``"all"`` (every context, the default here),
        an integer K (a seeded balanced design of K negatives, ceiling log2(K + 1)) or ``"auto"``
        (K grown from 15 as needed; see :func:`compressbench.measure.scoring.score_mi`).
        ``estimate_kwargs``: ``prompt`` (the scoring prompt), ``design_seed``, ``auto_margin_bits``
        and :func:`compressbench.measure.mi.estimate_mi`'s options (clip, ci, n_boot, marginal, ...).
        ``seed`` picks the ``max_contexts`` subset and seeds the bootstrap.
        """
        from compressbench.measure.scoring import score_mi  # lazy: scoring imports scipy; recording stays light

        sels = self.select(compressor=compressor, min_contexts=min_contexts, max_contexts=max_contexts, seed=seed)
        return {name: score_mi(scorer, list(sel.examples), [list(c) for c in sel.compressions],
                               seed=seed, mi_negatives=mi_negatives, **estimate_kwargs)
                for name, sel in sels.items()}


def _repeat_key(compressor: str, cid: str, compression: str) -> tuple[str, str, str]:
    return compressor, cid, hashlib.sha256(compression.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _select_one(name: str, rows: list[dict[str, Any]], *, max_contexts: int | None, seed: int) -> Selection:
    """Group one compressor's lines by context id and cut them to a rectangular (N, M) set."""
    first: dict[str, dict[str, Any]] = {}
    samples: dict[str, list[str]] = {}
    for row in rows:
        cid = str(row["id"])
        if cid not in first:
            first[cid] = row
            samples[cid] = []
        samples[cid].append(str(row["compression"]))
    counts = Counter(len(s) for s in samples.values())
    m = max(counts, key=lambda k: (counts[k], k))  # most common M; ties -> larger M
    kept = [cid for cid in first if len(samples[cid]) >= m]
    trimmed = tuple(cid for cid in kept if len(samples[cid]) > m)
    dropped = tuple(cid for cid in first if len(samples[cid]) < m)
    unselected: tuple[str, ...] = ()
    if max_contexts is not None and len(kept) > max_contexts:
        pick = set(np.random.default_rng(seed).choice(len(kept), size=max_contexts, replace=False).tolist())
        unselected = tuple(cid for k, cid in enumerate(kept) if k not in pick)
        kept = [cid for k, cid in enumerate(kept) if k in pick]
    examples = tuple(
        Example(id=cid, context=str(first[cid]["context"]), question=str(first[cid]["query"]), dataset="agent",
                metadata={"compressor": name, "example_id": first[cid].get("example_id")})
        for cid in kept
    )
    return Selection(compressor=name, examples=examples,
                     compressions=tuple(tuple(samples[cid][:m]) for cid in kept), n_samples=m,
                     n_contexts_logged=len(first), trimmed_ids=trimmed, dropped_ids=dropped,
                     unselected_ids=unselected)


def estimate_online(
    scorer: Any,
    contexts: Sequence[str],
    queries: Sequence[str],
    compressions: Sequence[Sequence[str]],
    **kw: Any,
) -> MIEstimate:
    """I(X; Z) in bits for triples held in memory: ``scoring.score_mi`` on Examples built from them.

    ``contexts[i]`` and ``queries[i]`` form context i; ``compressions[i]`` is its list of M
    compression strings (the same M for every context). ``kw`` goes to ``score_mi`` (prompt,
    seed, n_boot, ci, clip, marginal). Raises UsageError for non-string contexts/queries or
    lists of different lengths; ``score_mi`` checks the compressions.
    """
    for name, seq in (("contexts", contexts), ("queries", queries)):
        if isinstance(seq, str) or not isinstance(seq, Sequence):
            raise UsageError(f"{name} must be a list of strings, got {type(seq).__name__}")
        for k, v in enumerate(seq):
            _check_str(f"{name}[{k}]", v)
    if len(contexts) != len(queries):
        raise UsageError(f"contexts has {len(contexts)} items but queries has {len(queries)}; "
                         "give one query per context")
    from compressbench.measure.scoring import score_mi  # lazy: scoring imports scipy; recording stays light

    examples = [Example(id=context_id(c, q), context=c, question=q, dataset="agent")
                for c, q in zip(contexts, queries, strict=True)]
    return score_mi(scorer, examples, compressions, **kw)


__all__ = ["LOG_VERSION", "CompressionLog", "Selection", "context_id", "estimate_online"]

