"""QASPER (hub ``allenai/qasper``; also the original ``qasper-*-v0.3.json`` release files).

Two public layouts are read:

- the hub rows (JSONL/Parquet exports or the hub itself), one paper per row, columnar::

    {"id": "1909.00694", "title": "...", "abstract": "...",
     "full_text": {"section_name": ["Introduction", ...], "paragraphs": [["...", ...], ...]},
     "qas": {"question": ["...", ...], "question_id": ["...", ...],
             "answers": [{"answer": [{"unanswerable": false, "extractive_spans": ["..."],
                                      "yes_no": null, "free_form_answer": "", "evidence": [...],
                                      "highlighted_evidence": [...]}, ...],
                          "annotation_id": [...], "worker_id": [...]}, ...]}}

- the original release JSON, a mapping paper id -> paper with row-oriented lists
  (``full_text: [{"section_name", "paragraphs"}]``, ``qas: [{"question", "question_id",
  "answers": [{"answer": {...}, "annotation_id", "worker_id"}]}]``).

Only answerable extractive questions are kept: at least one annotation has extractive spans
and none marks the question unanswerable. answers = each extractive annotation's spans joined
by ", " (as the official QASPER evaluator does), duplicates dropped; reference = the first.
Context = title, abstract and every section (name, then its paragraphs), blank-line separated.
Id: ``question_id``. Order: papers in file order, questions in paper order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from compressbench.data._rows import hub_rows, local_rows, read_json, require
from compressbench.core.errors import DataError
from compressbench.core.types import Example


def _rows_of(value: Any, where: str, field: str) -> list[dict[str, Any]]:
    """A list of row objects from either a row list or a columnar {key: [values]} mapping."""
    if isinstance(value, list):
        if not all(isinstance(v, Mapping) for v in value):
            raise DataError(f"{where}: field {field!r} must be a list of objects")
        return [dict(v) for v in value]
    if isinstance(value, Mapping):
        cols = {k: v for k, v in value.items() if isinstance(v, list)}
        n = max((len(v) for v in cols.values()), default=0)
        return [{k: v[i] for k, v in cols.items() if i < len(v)} for i in range(n)]
    raise DataError(f"{where}: field {field!r} must be a list or a columnar mapping")


def _context(paper: Mapping[str, Any], where: str) -> str:
    parts = []
    title = paper.get("title")
    if isinstance(title, str) and title.strip():
        parts.append(title.strip())
    abstract = paper.get("abstract")
    if isinstance(abstract, str) and abstract.strip():
        parts.append("Abstract\n" + abstract.strip())
    if paper.get("full_text") is None:
        raise DataError(f"{where}: missing field 'full_text'")
    for sec in _rows_of(paper["full_text"], where, "full_text"):
        paras = [p.strip() for p in sec.get("paragraphs") or [] if isinstance(p, str) and p.strip()]
        name = sec.get("section_name")
        block = ([name.strip()] if isinstance(name, str) and name.strip() else []) + paras
        if block:
            parts.append("\n".join(block))
    return "\n\n".join(parts)


def _answer_dicts(answers: Any, where: str) -> list[dict[str, Any]]:
    """The inner answer objects of one question (row or columnar layout)."""
    out = []
    for ann in _rows_of(answers, where, "answers"):
        inner = ann.get("answer")
        if isinstance(inner, list):  # hub layout: {"answer": [ {...} ], "annotation_id": [...]}
            out.extend(dict(a) for a in inner if isinstance(a, Mapping))
        elif isinstance(inner, Mapping):
            out.append(dict(inner))
        else:
            raise DataError(f"{where}: each answer needs an 'answer' object")
    return out


def examples_from_papers(papers: Iterable[tuple[str, str | None, Mapping[str, Any]]],
                         dataset: str = "qasper") -> list[Example]:
    """Build Examples from (location, paper id or None, paper) triples."""
    out: list[Example] = []
    for where, paper_id, paper in papers:
        pid = paper_id if paper_id is not None else require(paper, "id", where)
        where = f"{where} (paper {pid})"
        if paper.get("qas") is None:
            raise DataError(f"{where}: missing field 'qas'")
        qas = _rows_of(paper["qas"], where, "qas")
        context: str | None = None
        for k, qa in enumerate(qas, start=1):
            wq = f"{where}: question {k}"
            question = require(qa, "question", wq).strip()
            qid = require(qa, "question_id", wq)
            answers = _answer_dicts(qa.get("answers") or [], wq)
            if any(a.get("unanswerable") for a in answers):
                continue
            golds: list[str] = []
            for a in answers:
                spans = [s.strip() for s in a.get("extractive_spans") or [] if isinstance(s, str) and s.strip()]
                if spans:
                    gold = ", ".join(spans)
                    if gold not in golds:
                        golds.append(gold)
            if not golds:
                continue
            if context is None:
                context = _context(paper, where)
            out.append(Example(id=qid, context=context, question=question, answers=tuple(golds),
                               reference=golds[0], dataset=dataset,
                               metadata={"paper_id": pid, "title": paper.get("title")}))
    return out


def load_qasper(path: str | Path | None = None, hub_id: str | None = None, split: str | None = None,
                dataset: str = "qasper") -> list[Example]:
    """Examples from a local QASPER file/folder (either layout) or the hub (``allenai/qasper``)."""
    papers: list[tuple[str, str | None, Mapping[str, Any]]] = []
    if path is not None:
        p = Path(path)
        data = read_json(p) if p.is_file() and p.suffix.lower() == ".json" else None
        if isinstance(data, dict) and not ("qas" in data and "full_text" in data):
            papers = [(f"{p}", str(pid), paper) for pid, paper in data.items() if isinstance(paper, Mapping)]
        else:
            papers = [(f"{f}: {loc}", None, r) for f, loc, r in local_rows(p, split)]
    else:
        papers = [(f"{hub_id}: {loc}", None, r) for loc, r in hub_rows(str(hub_id), split or "test")]
    examples = examples_from_papers(papers, dataset=dataset)
    if not examples:
        raise DataError(f"qasper dataset {path or hub_id} has no answerable extractive questions")
    return examples


def from_spec(spec: Mapping[str, Any], dataset: str, **opts: Any) -> list[Example]:
    """The ``qasper`` entry of :data:`compressbench.data.DATASETS`: a checked dataset spec -> Examples."""
    return load_qasper(spec.get("path"), spec.get("hub_id"), spec.get("split"), dataset=dataset)
