"""Questions supplied by file for context-only datasets (FineWeb, WildChat).

A questions file (JSONL, JSON list or Parquet) has one row per question::

    {"context_id": "<urn:uuid:...>",   # required: the id of the context (document / conversation)
     "question": "...",                # required
     "reference": "...",               # reference answer (for perplexity scoring) ...
     "answers": ["..."],               # ... and/or gold answers
     "options": [...],                 # optional multiple choice, as in the local schema
     "id": "..."}                      # optional; default "<context_id>/q<k>", k = 1, 2, ... per context

Examples come out in questions-file order.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from compressbench.data._rows import local_rows, require
from compressbench.data.local import parse_gold
from compressbench.core.errors import DataError
from compressbench.core.types import Example

_KNOWN = {"context_id", "question", "reference", "answers", "options", "id"}


def read_questions(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """(location, row) for each question row, validated for the required fields."""
    rows = [(f"{f}: {loc}", r) for f, loc, r in local_rows(path, None)]
    if not rows:
        raise DataError(f"questions file {path} has no rows")
    for where, r in rows:
        cid = r.get("context_id")
        if isinstance(cid, int) and not isinstance(cid, bool):
            r["context_id"] = str(cid)
        require(r, "context_id", where)
        require(r, "question", where)
    return rows


def needed_context_ids(rows: list[tuple[str, dict[str, Any]]]) -> set[str]:
    return {r["context_id"] for _, r in rows}


def join_questions(rows: list[tuple[str, dict[str, Any]]], contexts: Mapping[str, str],
                   dataset: str, source: str, context_meta: Mapping[str, Mapping[str, Any]] | None = None
                   ) -> list[Example]:
    """One Example per question row, its context looked up by ``context_id`` in ``contexts``."""
    out: list[Example] = []
    per_context: dict[str, int] = {}
    for where, r in rows:
        cid = r["context_id"]
        if cid not in contexts:
            known = list(contexts)[:5]
            raise DataError(f"{where}: context_id {cid!r} is not in {source} (first ids there: {known})")
        per_context[cid] = per_context.get(cid, 0) + 1
        options, answers, reference = parse_gold(r, where, missing="reference")
        qid = r.get("id")
        if qid is None:
            qid = f"{cid}/q{per_context[cid]}"
        meta = {"context_id": cid, **(context_meta or {}).get(cid, {})}
        meta.update({k: v for k, v in r.items() if k not in _KNOWN})
        out.append(Example(id=str(qid), context=contexts[cid], question=r["question"].strip(), answers=answers,
                           options=options, reference=reference, dataset=dataset, metadata=meta))
    return out
