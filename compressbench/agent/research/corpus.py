"""Documents and questions of a research benchmark: the built-in generated one or your own folder.

Bring your own:

- documents: a folder of ``.txt`` / ``.md`` files (one document each; id = the path relative to
  the folder, title = the first line when it is a markdown heading ``# ...``) and/or ``.jsonl``
  files with one document per line, ``{"id": str, "text": str, "title": str (optional)}``.
  Files are read in sorted order; hidden files and other suffixes are skipped.
- questions: a JSONL file, one question per line, ``{"id": str, "question": str, "answers": [str]
  | str, "metric": "numeric" | "exact" | "f1" (optional; default by the answers), "gold_doc_ids":
  [str] and "evidence": {doc id: sentence} (optional: gold-document recall, the oracle arm)}``
  (``options`` for multiple choice and ``reference`` work as in compressbench's own dataset
  schema; ``predictor_mode: loglik`` needs ``options``).

Every problem is a :class:`~compressbench.core.errors.DataError` naming the file, line and field:
an empty folder, an empty or duplicate document, a question without gold answers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compressbench.core.errors import DataError
from compressbench.measure.metrics import METRICS, default_metric
from compressbench.core.types import Example
from compressbench.data.local import parse_gold

DOC_SUFFIXES = (".txt", ".md", ".jsonl")


@dataclass(frozen=True)
class Document:
    """One searchable document."""

    id: str
    text: str
    title: str = ""

    @property
    def content(self) -> str:
        """What a reader sees: the title line (if any), then the text."""
        return f"{self.title}\n{self.text}" if self.title else self.text


@dataclass(frozen=True)
class Question:
    """A research question: an Example (question, gold answers) and the metric that scores it.

    ``example.context`` is empty: the agent has to find the facts. ``gold_doc_ids`` names the
    documents that hold the needed facts, when known (the generated benchmark knows them), and
    ``evidence`` pairs each gold document with the sentence of it that states the fact (the
    oracle arm keeps exactly those). ``options`` is the question's option set for
    ``predictor_mode: loglik`` (the gold answer once, same-type distractors), when it has one.
    """

    example: Example
    metric: str
    gold_doc_ids: tuple[str, ...] = ()
    options: tuple[str, ...] = ()
    evidence: tuple[tuple[str, str], ...] = ()

    @property
    def id(self) -> str:
        return self.example.id

    @property
    def text(self) -> str:
        return self.example.question

    def choice_example(self) -> Example | None:
        """The question as a multiple-choice Example (options, the gold letter; metric ``choice``)
        for the likelihood predictor, or None when it has no option set."""
        if self.example.options:
            return self.example
        if not self.options or not self.example.answers:
            return None
        letter = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[self.options.index(self.example.answers[0])]
        return Example(id=self.example.id, context="", question=self.example.question, options=self.options,
                        answers=(letter,), dataset=self.example.dataset)


def check_corpus(docs: Iterable[Document], where: str = "corpus") -> list[Document]:
    """The documents as a list; DataError for an empty corpus, an empty text or a duplicate id."""
    out = list(docs)
    if not out:
        raise DataError(f"{where} holds no documents; a research run needs something to search "
                        f"(a folder of {', '.join(DOC_SUFFIXES)} files, or the generated benchmark)")
    seen: set[str] = set()
    for d in out:
        if not isinstance(d, Document):
            raise DataError(f"{where}: expected Document objects, got {type(d).__name__}")
        if not d.text.strip():
            raise DataError(f"{where}: document {d.id!r} is empty")
        if d.id in seen:
            raise DataError(f"{where}: document id {d.id!r} appears twice; ids must be unique")
        seen.add(d.id)
    return out


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc}); convert it or remove it from the folder") from None


def _jsonl_rows(path: Path) -> Iterator[tuple[int, str, Any]]:
    """``(line number, "<path>: line N", parsed JSON)`` for each non-blank line of a JSONL file."""
    for n, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}: line {n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where} is not valid JSON ({exc.msg})") from None
        yield n, where, row


def load_documents(folder: str | Path) -> list[Document]:
    """Documents of a folder (see the module doc); DataError when it is missing or holds none."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"document folder {root} does not exist (or is not a folder)")
    docs: list[Document] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if any(part.startswith(".") for part in path.relative_to(root).parts) or path.suffix not in DOC_SUFFIXES:
            continue
        if path.suffix == ".jsonl":
            for n, where, row in _jsonl_rows(path):
                if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                    raise DataError(f"{where}: needs a string field 'text' (and 'id', optional 'title')")
                doc_id = row.get("id", f"{rel}:{n}")
                if not isinstance(doc_id, (str, int)):
                    raise DataError(f"{where}: field 'id' must be a string")
                docs.append(Document(str(doc_id), row["text"], str(row.get("title") or "")))
        else:
            text = _read_text(path)
            title = ""
            first, _, rest = text.partition("\n")
            if path.suffix == ".md" and first.startswith("#"):
                title, text = first.lstrip("#").strip(), rest
            docs.append(Document(rel, text.strip(), title))
    return check_corpus(docs, f"document folder {root}")


def load_questions(path: str | Path, *, dataset: str = "research") -> list[Question]:
    """Questions of a JSONL file (see the module doc)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"questions file {p} does not exist")
    out: list[Question] = []
    ids: set[str] = set()
    for n, where, row in _jsonl_rows(p):
        if not isinstance(row, dict):
            raise DataError(f"{where}: each line must be a JSON object with 'question' and 'answers'")
        q = row.get("question")
        if not isinstance(q, str) or not q.strip():
            raise DataError(f"{where}: missing field 'question' (a non-empty string)")
        options, answers, reference = parse_gold(row, where, missing="answers")
        qid = str(row.get("id", f"q{n}"))
        if qid in ids:
            raise DataError(f"{where}: question id {qid!r} appears twice")
        ids.add(qid)
        ex = Example(id=qid, context="", question=q, answers=answers, options=options, reference=reference,
                     dataset=dataset)
        metric = row.get("metric") or default_metric(ex)
        if metric not in METRICS or metric in ("judge", "ref_nll"):
            raise DataError(f"{where}: metric {metric!r} is not one a research run can score; use "
                            "numeric, exact, f1 or choice")
        gold_docs = row.get("gold_doc_ids") or ()
        evidence = row.get("evidence") or {}
        if not isinstance(evidence, dict):
            raise DataError(f"{where}: field 'evidence' must be a mapping document id -> sentence")
        out.append(Question(ex, metric, tuple(str(d) for d in gold_docs),
                            evidence=tuple((str(k), str(v)) for k, v in evidence.items())))
    if not out:
        raise DataError(f"questions file {p} holds no questions")
    return out


def documents_to_jsonl(docs: Sequence[Document]) -> str:
    """The documents as JSONL (the format :func:`load_documents` reads back)."""
    return "".join(json.dumps({"id": d.id, "title": d.title, "text": d.text}, ensure_ascii=False) + "\n"
                   for d in docs)


def questions_to_jsonl(questions: Sequence[Question]) -> str:
    """The questions as JSONL (the format :func:`load_questions` reads back)."""
    return "".join(json.dumps({"id": q.id, "question": q.text, "answers": list(q.example.answers),
                               "metric": q.metric, "gold_doc_ids": list(q.gold_doc_ids),
                               **({"evidence": dict(q.evidence)} if q.evidence else {})},
                              ensure_ascii=False) + "\n" for q in questions)


__all__ = ["DOC_SUFFIXES", "Document", "Question", "check_corpus", "documents_to_jsonl", "load_documents",
           "load_questions", "questions_to_jsonl"]
