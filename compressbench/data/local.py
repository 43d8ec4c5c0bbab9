"""Local JSONL / JSON / Parquet datasets in compressbench's own schema.

One row per example::

    {"id": "q1",                         # required, unique, non-empty string
     "context": "...",                   # required: the text the compressor reads
     "question": "...",                  # required
     "options": ["...", "...", ...],     # optional: multiple choice, lettered A, B, C, ... in order
                                         #   (or a mapping {"A": "...", "B": "...", ...})
     "answers": ["B"],                   # gold answers: a list or one string; for multiple choice
                                         #   letters, or option texts (mapped back to their letters)
     "reference": "...",                 # optional: reference answer for perplexity scoring
     "split": "test",                    # optional: kept only if it equals spec `split`
     "metadata": {...}}                  # optional; any other fields also go into metadata

Each row needs ``answers`` or ``reference`` (or both). Errors name the file, the row (``line N``
for JSONL, ``row N`` for Parquet, ``item N`` for a JSON list) and the field.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from compressbench.data._rows import local_rows, require
from compressbench.core.errors import DataError
from compressbench.core.types import Example

LETTERS = string.ascii_uppercase
_KNOWN = {"id", "context", "question", "options", "answers", "reference", "split", "metadata"}


def parse_options(value: Any, where: str) -> tuple[str, ...]:
    """Options as a tuple in letter order, from a list or a {"A": ..., "B": ...} mapping."""
    if value is None:
        return ()
    if isinstance(value, Mapping):
        keys = sorted(str(k).strip().upper() for k in value)
        if keys != list(LETTERS[: len(keys)]):
            raise DataError(f"{where}: field 'options' keys must be consecutive letters A, B, ...; got {keys}")
        items = [value[k] if k in value else value[k.lower()] for k in keys]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise DataError(f"{where}: field 'options' must be a list or a mapping, got {type(value).__name__}")
    if len(items) == 1 or len(items) > len(LETTERS):
        raise DataError(f"{where}: field 'options' must hold 2 to 26 choices, got {len(items)}")
    for i, it in enumerate(items):
        if not isinstance(it, str) or not it.strip():
            raise DataError(f"{where}: option {LETTERS[i]} must be a non-empty string")
    return tuple(items)


def parse_gold(row: Mapping[str, Any], where: str, *, missing: str) -> tuple[tuple[str, ...], tuple[str, ...], str | None]:
    """``(options, answers, reference)`` of a question row; a question needs answers or a reference.

    ``missing`` names the field the error asks for when both are absent.
    """
    options = parse_options(row.get("options"), where)
    answers = parse_answers(row.get("answers"), options, where)
    reference = row.get("reference")
    if reference is not None and (not isinstance(reference, str) or not reference.strip()):
        raise DataError(f"{where}: field 'reference' must be a non-empty string when given")
    if not answers and reference is None:
        raise DataError(f"{where}: missing field {missing!r} (each question needs 'answers' or 'reference')")
    return options, answers, reference


def parse_answers(value: Any, options: tuple[str, ...], where: str) -> tuple[str, ...]:
    """Gold answers as a tuple of strings; for multiple choice, as option letters.

    A multiple-choice answer may be a letter ("b", "B") or an option's exact text.
    """
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(a, str) for a in value):
        raise DataError(f"{where}: field 'answers' must be a string or a list of strings")
    answers = [a.strip() for a in value if a.strip()]
    if not options:
        return tuple(answers)
    letters = LETTERS[: len(options)]
    out = []
    for a in answers:
        if a.upper() in letters and len(a) == 1:
            out.append(a.upper())
        elif a in options:
            out.append(letters[options.index(a)])
        else:
            raise DataError(
                f"{where}: answer {a!r} is neither an option letter ({letters[0]}-{letters[-1]}) "
                "nor the exact text of an option"
            )
    return tuple(out)


def example_from_row(row: Mapping[str, Any], where: str, dataset: str) -> Example:
    """Validate one row of the local schema and build its Example."""
    ex_id = row.get("id")
    if isinstance(ex_id, int) and not isinstance(ex_id, bool):
        ex_id = str(ex_id)
    ex_id = require({**row, "id": ex_id}, "id", where)
    context = require(row, "context", where)
    question = require(row, "question", where)
    options, answers, reference = parse_gold(row, where, missing="answers")
    metadata: dict[str, Any] = dict(row.get("metadata") or {})
    metadata.update({k: v for k, v in row.items() if k not in _KNOWN})
    return Example(id=ex_id, context=context, question=question, answers=answers, options=options,
                   reference=reference, dataset=dataset, metadata=metadata)


def load_local(path: str | Path, split: str | None = None, dataset: str = "local") -> list[Example]:
    """Examples from a local JSONL/JSON/Parquet file or folder in the schema above, in file order.

    Raises DataError for a missing field (naming file, row and field), duplicate ids, bad
    encodings and empty datasets.
    """
    examples: list[Example] = []
    seen: dict[str, str] = {}
    for file, loc, row in local_rows(path, split):
        where = f"{file}: {loc}"
        ex = example_from_row(row, where, dataset)
        if ex.id in seen:
            raise DataError(f"{where}: duplicate id {ex.id!r} (first at {seen[ex.id]}); ids must be unique")
        seen[ex.id] = where
        examples.append(ex)
    if not examples:
        raise DataError(f"dataset {path} has no rows")
    return examples


def from_spec(spec: Mapping[str, Any], dataset: str, **opts: Any) -> list[Example]:
    """The ``jsonl``/``parquet`` entry of :data:`compressbench.data.DATASETS`: a checked dataset spec -> Examples."""
    return load_local(spec.get("path"), spec.get("split"), dataset=dataset)
