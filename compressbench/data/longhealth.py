"""LongHealth: the benchmark's JSON file (``benchmark_v5.json`` in the LongHealth repository).

Public schema (a mapping from patient id to patient)::

    {"patient_01": {"name": ..., "birthday": ..., "diagnosis": ...,
                    "texts": {"text_0": "...", "text_1": "...", ...},
                    "questions": [{"No": 1, "question": "...",
                                   "answer_a": "...", ..., "answer_e": "...",
                                   "correct": "<text of the correct option>",
                                   "answer_location": {...}}, ...]}, ...}

Each question becomes one Example: context = the patient's texts in numeric key order
(``text_0, text_1, ..., text_10``) joined by a blank line; options = (answer_a .. answer_e);
answers = (the correct letter,), found by matching ``correct`` to an option's text (a letter
"A".."E" is accepted too); reference = the correct option's text.
Id: ``<patient id>-q<No>``. Order: patients in file order, questions in file order.
The benchmark has no splits; ``split`` is ignored. There is no hub copy: pass ``path``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from compressbench.data._rows import read_json, require
from compressbench.core.errors import DataError
from compressbench.core.types import Example

_OPTION_FIELDS = ("answer_a", "answer_b", "answer_c", "answer_d", "answer_e")


def _text_order(key: str) -> tuple[str, int, str]:
    """Natural order for text keys: text_2 before text_10."""
    m = re.match(r"^(.*?)(\d+)$", key)
    return (m.group(1), int(m.group(2)), key) if m else (key, -1, key)


def load_longhealth(path: str | Path, separator: str = "\n\n", dataset: str = "longhealth") -> list[Example]:
    """Examples from a LongHealth benchmark JSON file (schema above)."""
    p = Path(path)
    if p.is_dir():
        candidates = sorted(p.glob("benchmark*.json"))
        if not candidates:
            raise DataError(f"no benchmark*.json file in {p}; pass the LongHealth benchmark JSON as `path`")
        p = candidates[-1]
    data = read_json(p)
    if not isinstance(data, dict):
        raise DataError(f"{p}: expected a mapping of patient id -> patient (the LongHealth benchmark JSON)")
    examples: list[Example] = []
    for patient_id, patient in data.items():
        where_p = f"{p}: patient {patient_id!r}"
        if not isinstance(patient, dict):
            raise DataError(f"{where_p}: expected an object with 'texts' and 'questions'")
        texts = require(patient, "texts", where_p, dict)
        questions = require(patient, "questions", where_p, list)
        if not texts:
            raise DataError(f"{where_p}: field 'texts' is empty")
        parts = []
        for key in sorted(texts, key=_text_order):
            if not isinstance(texts[key], str):
                raise DataError(f"{where_p}: texts[{key!r}] must be a string")
            parts.append(texts[key].strip())
        context = separator.join(parts)
        for k, q in enumerate(questions, start=1):
            if not isinstance(q, dict):
                raise DataError(f"{where_p}: question {k} must be an object")
            number = q.get("No", k)
            where = f"{where_p}: question {k} (No {number})"
            question = require(q, "question", where)
            options = tuple(require(q, f, where).strip() for f in _OPTION_FIELDS)
            correct = require(q, "correct", where).strip()
            if correct in options:
                letter = "ABCDE"[options.index(correct)]
            elif len(correct) == 1 and correct.upper() in "ABCDE":
                letter = correct.upper()
            else:
                raise DataError(f"{where}: field 'correct' ({correct[:80]!r}) matches none of answer_a..answer_e")
            meta: dict[str, Any] = {"patient_id": str(patient_id), "question_no": number}
            for key in ("name", "diagnosis"):
                if key in patient:
                    meta[f"patient_{key}"] = patient[key]
            if "answer_location" in q:
                meta["answer_location"] = q["answer_location"]
            examples.append(Example(
                id=f"{patient_id}-q{number}", context=context, question=question.strip(),
                answers=(letter,), options=options, reference=options["ABCDE".index(letter)],
                dataset=dataset, metadata=meta,
            ))
    if not examples:
        raise DataError(f"{p}: no questions found (the LongHealth file has no patients or no questions)")
    ids = [e.id for e in examples]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"{p}: duplicate question id {dup!r} (two questions with the same 'No')")
    return examples


def from_spec(spec: Mapping[str, Any], dataset: str, **opts: Any) -> list[Example]:
    """The ``longhealth`` entry of :data:`compressbench.data.DATASETS`: a checked dataset spec -> Examples."""
    return load_longhealth(spec.get("path"), dataset=dataset, **opts)
