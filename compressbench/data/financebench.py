"""FinanceBench (hub ``PatronusAI/financebench``; the repository's ``financebench_open_source.jsonl``).

Public schema, one row per question::

    {"financebench_id": "financebench_id_03029", "company": "3M", "doc_name": "3M_2018_10K",
     "question_type": "metrics-generated", "question_reasoning": "...",
     "question": "...", "answer": "$1577.00", "justification": "...",
     "evidence": [{"evidence_text": "...", "doc_name": "3M_2018_10K",
                   "evidence_page_num": 59, "evidence_text_full_page": "..."}, ...],
     "doc_type": "10k", "doc_period": 2018, ...}

Each row becomes one Example: question; answers = (answer,); reference = answer; context =
the evidence pages (``context_field``, default ``evidence_text_full_page``, falling back to
``evidence_text``) joined by a blank line, duplicates dropped; or, with ``docs_dir``, the whole
filing read from ``<docs_dir>/<doc_name>.txt`` (the PDFs parsed to text beforehand).
Id: ``financebench_id`` (else ``financebench-<sha1 of doc_name and question, 12 hex>``).
Order: file order. ``evidence`` may also be a JSON string (some exports store it so).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from compressbench.data._rows import Located, hub_rows, local_rows, read_text, require
from compressbench.core.errors import DataError
from compressbench.core.types import Example

_CONTEXT_FIELDS = ("evidence_text_full_page", "evidence_text")
_META = ("company", "doc_name", "question_type", "question_reasoning", "doc_type", "doc_period", "justification")


def _evidence_context(row: Mapping[str, Any], where: str, context_field: str) -> str:
    evidence = row.get("evidence")
    if isinstance(evidence, str):
        try:
            evidence = json.loads(evidence)
        except json.JSONDecodeError:
            raise DataError(f"{where}: field 'evidence' is a string but not valid JSON") from None
    if isinstance(evidence, Mapping):  # columnar form: {"evidence_text": [...], ...}
        n = max((len(v) for v in evidence.values() if isinstance(v, list)), default=0)
        evidence = [{k: v[i] for k, v in evidence.items() if isinstance(v, list) and i < len(v)} for i in range(n)]
    if not isinstance(evidence, list) or not evidence:
        raise DataError(f"{where}: missing field 'evidence' (a non-empty list of evidence objects)")
    fields = (context_field,) + tuple(f for f in _CONTEXT_FIELDS if f != context_field)
    pages: list[str] = []
    for k, ev in enumerate(evidence, start=1):
        if not isinstance(ev, Mapping):
            raise DataError(f"{where}: evidence {k} must be an object")
        text = next((ev[f] for f in fields if isinstance(ev.get(f), str) and ev[f].strip()), None)
        if text is None:
            raise DataError(f"{where}: evidence {k}: missing field {context_field!r}")
        text = text.strip()
        if text not in pages:
            pages.append(text)
    return "\n\n".join(pages)


def examples_from_rows(rows: Iterable[tuple[str, Mapping[str, Any]]], *, context_field: str,
                       docs_dir: str | Path | None, dataset: str) -> list[Example]:
    """Build Examples from (location, row) pairs in the public schema."""
    if context_field not in _CONTEXT_FIELDS:
        raise DataError(f"financebench context_field must be one of {list(_CONTEXT_FIELDS)}, got {context_field!r}")
    out: list[Example] = []
    for where, row in rows:
        question = require(row, "question", where).strip()
        answer = require(row, "answer", where, (str, int, float))
        answer = str(answer).strip()
        if docs_dir is not None:
            doc = require(row, "doc_name", where)
            doc_path = Path(docs_dir) / f"{doc}.txt"
            if not doc_path.is_file():
                raise DataError(f"{where}: no parsed filing {doc_path} for doc_name {doc!r} (docs_dir holds "
                                "<doc_name>.txt files)")
            context = read_text(doc_path).strip()
        else:
            context = _evidence_context(row, where, context_field)
        fb_id = row.get("financebench_id")
        if not isinstance(fb_id, str) or not fb_id.strip():
            key = f"{row.get('doc_name', '')}\n{question}".encode()
            fb_id = f"financebench-{hashlib.sha1(key).hexdigest()[:12]}"
        meta = {k: row[k] for k in _META if row.get(k) is not None}
        out.append(Example(id=fb_id, context=context, question=question, answers=(answer,),
                           reference=answer, dataset=dataset, metadata=meta))
    return out


def load_financebench(path: str | Path | None = None, hub_id: str | None = None, split: str | None = None,
                      context_field: str = "evidence_text_full_page", docs_dir: str | Path | None = None,
                      dataset: str = "financebench") -> list[Example]:
    """Examples from a local FinanceBench file/folder (JSONL, JSON list, Parquet) or the hub."""
    rows: Iterable[Located]
    if path is not None:
        rows = [(f"{f}: {loc}", r) for f, loc, r in local_rows(path, split)]
    else:
        rows = [(f"{hub_id}: {loc}", r) for loc, r in hub_rows(str(hub_id), split or "train")]
    examples = examples_from_rows(rows, context_field=context_field, docs_dir=docs_dir, dataset=dataset)
    if not examples:
        raise DataError(f"financebench dataset {path or hub_id} has no rows")
    return examples


def from_spec(spec: Mapping[str, Any], dataset: str, **opts: Any) -> list[Example]:
    """The ``financebench`` entry of :data:`compressbench.data.DATASETS`: a checked dataset spec -> Examples."""
    return load_financebench(spec.get("path"), spec.get("hub_id"), spec.get("split"), dataset=dataset, **opts)
