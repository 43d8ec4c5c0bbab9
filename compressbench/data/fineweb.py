"""FineWeb (hub ``HuggingFaceFW/fineweb``): web documents as contexts, questions from a file.

Public schema, one document per row::

    {"text": "...", "id": "<urn:uuid:...>", "dump": "CC-MAIN-2013-20", "url": "...",
     "date": "...", "file_path": "...", "language": "en", "language_score": 0.97,
     "token_count": 1234}

Context = ``text``; context id = ``id`` (else ``url``). The questions file (see
:mod:`compressbench.data._questions`) refers to documents by ``context_id``; examples follow
the questions file's order. Optional filters ``min_token_count`` / ``max_token_count`` use the
row's ``token_count`` field (the paper used 15k-28k-token documents).
From the hub, rows are streamed and reading stops once every referenced document is found.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from compressbench.data._questions import join_questions, needed_context_ids, read_questions
from compressbench.data._rows import Located, hub_rows, local_rows, require
from compressbench.core.errors import DataError
from compressbench.core.types import Example


def load_fineweb(path: str | Path | None = None, hub_id: str | None = None, split: str | None = None,
                 questions: str | Path | None = None, hub_config: str | None = None,
                 min_token_count: int | None = None, max_token_count: int | None = None,
                 dataset: str = "fineweb") -> list[Example]:
    """Examples from FineWeb documents (local file/folder or hub) and a questions file."""
    if questions is None:
        raise DataError("fineweb has contexts only: pass `questions` (a JSONL file of "
                        "{context_id, question, reference}) in the dataset spec")
    qrows = read_questions(questions)
    needed = needed_context_ids(qrows)
    rows: Iterable[Located]
    if path is not None:
        rows = ((f"{f}: {loc}", r) for f, loc, r in local_rows(path, split))
    else:
        rows = ((f"{hub_id}: {loc}", r) for loc, r in hub_rows(str(hub_id), split or "train", hub_config,
                                                                  streaming=True))
    contexts: dict[str, str] = {}
    meta: dict[str, dict[str, Any]] = {}
    n_rows = 0
    for where, r in rows:
        n_rows += 1
        text = require(r, "text", where)
        doc_id = r.get("id") or r.get("url")
        if not isinstance(doc_id, str) or not doc_id:
            raise DataError(f"{where}: missing field 'id' (and no 'url' to use instead)")
        tc = r.get("token_count")
        if isinstance(tc, int) and ((min_token_count is not None and tc < min_token_count)
                                    or (max_token_count is not None and tc > max_token_count)):
            continue
        contexts[doc_id] = text
        meta[doc_id] = {k: r[k] for k in ("url", "dump", "date", "token_count") if r.get(k) is not None}
        if path is None and needed.issubset(contexts):
            break
    if n_rows == 0:
        raise DataError(f"fineweb dataset {path or hub_id} has no rows")
    return join_questions(qrows, contexts, dataset, f"the fineweb documents ({path or hub_id})", meta)


def from_spec(spec: Mapping[str, Any], dataset: str, **opts: Any) -> list[Example]:
    """The ``fineweb`` entry of :data:`compressbench.data.DATASETS`: a checked dataset spec -> Examples."""
    return load_fineweb(spec.get("path"), spec.get("hub_id"), spec.get("split"), spec.get("questions"),
                        dataset=dataset, **opts)
