"""Datasets -> ``list[Example]`` with stable ids and a deterministic order.

The one entry point is :func:`load_dataset`, called with a dataset spec (a mapping, as written
in a sweep config)::

    load_dataset({"kind": "synthetic", "n_patients": 8, "seed": 0, "limit": 16})
    load_dataset({"kind": "jsonl", "path": "data/my_task.jsonl", "split": "test"})
    load_dataset({"kind": "longhealth", "path": "LongHealth/data/benchmark_v5.json"})
    load_dataset({"kind": "fineweb", "path": "fineweb_docs.parquet", "questions": "fw_questions.jsonl"})

Spec keys (all kinds):

- ``kind``: jsonl | parquet | longhealth | financebench | qasper | fineweb | wildchat | synthetic |
  known_info
  (``jsonl`` and ``parquet`` both read compressbench's own schema, see :mod:`.local`, from
  .jsonl, .json or .parquet files).
- ``path``: a local file or folder; or ``hub_id``: a Hugging Face dataset id, read through
  ``datasets`` when online (financebench, qasper, fineweb, wildchat). Offline, ``hub_id`` raises
  DataError saying to pass a local ``path``. A folder is read file by file in sorted order;
  with ``split``, only files named ``<split>*`` are read.
- ``split``: which split (folder file prefix; for a single file, rows with a matching ``split``
  field when rows carry one). None = everything.
- ``limit``: keep the first ``limit`` examples (after ``shuffle``). ``seed``: the synthetic
  generator's seed, and the shuffle seed. ``shuffle``: shuffle with ``random.Random(seed)``
  before ``limit`` (default false: file order).
- ``questions``: the questions file of context-only datasets (fineweb, wildchat), see
  :mod:`._questions`.
- ``name``: the dataset name stored in each Example (default: the kind).

Kind-specific keys: longhealth ``separator``; financebench ``context_field``, ``docs_dir``;
fineweb ``hub_config``, ``min_token_count``, ``max_token_count``; wildchat ``language``,
``min_turns``, ``max_turns``, ``group_size``; synthetic ``n_patients``,
``n_questions_per_patient``, ``n_options``; known_info ``n_contexts``, ``n_slots``, ``n_values``
(see :mod:`.known_info`: K slots of V values, a known K log2 V bits per context). Unknown keys raise DataError with a "did you mean".

Every error is a :class:`~compressbench.core.errors.DataError` (a UsageError: CLI exit code 2)
saying what was wrong (file, row, field, byte offset) and what to do. An empty dataset is an
error. ``datasets``, pandas and pyarrow are imported only inside the loaders that need them.
"""

from __future__ import annotations

import difflib
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from compressbench.core.errors import DataError
from compressbench.core.registry import Registry
from compressbench.core.types import Example

__all__ = ["COMMON_KEYS", "DATASETS", "DatasetKind", "KIND_KEYS", "KINDS", "load_dataset"]

COMMON_KEYS = frozenset({"kind", "path", "hub_id", "split", "limit", "seed", "shuffle", "questions", "name"})


@dataclass(frozen=True)
class DatasetKind:
    """One dataset kind. ``target``: its module's ``"module:from_spec"``, called (on first use) as
    ``from_spec(spec, dataset=name, **kind_options)`` and returning the Examples; ``keys``: the spec
    keys of this kind only (their values are the ``kind_options``); ``source``: ``local`` (a
    ``path``), ``hub`` (a ``path`` or, online, a ``hub_id``) or ``generated`` (from ``seed``, no
    path); ``questions``: a context-only kind, whose questions come from a ``questions`` file."""

    target: str
    keys: frozenset[str] = frozenset()
    source: str = "local"
    questions: bool = False


def _kind(module: str, *keys: str, source: str = "local", questions: bool = False) -> DatasetKind:
    return DatasetKind(f"compressbench.data.{module}:from_spec", frozenset(keys), source, questions)


#: dataset kind -> its descriptor; a new kind is one entry here and one module with ``from_spec``.
DATASETS: Registry[DatasetKind] = Registry("dataset kind", {
    "jsonl": _kind("local"),
    "parquet": _kind("local"),
    "longhealth": _kind("longhealth", "separator"),
    "financebench": _kind("financebench", "context_field", "docs_dir", source="hub"),
    "qasper": _kind("qasper", source="hub"),
    "fineweb": _kind("fineweb", "hub_config", "min_token_count", "max_token_count", source="hub", questions=True),
    "wildchat": _kind("wildchat", "language", "min_turns", "max_turns", "group_size", source="hub", questions=True),
    "synthetic": _kind("synthetic", "n_patients", "n_questions_per_patient", "n_options", source="generated"),
    "known_info": _kind("known_info", "n_contexts", "n_slots", "n_values", source="generated"),
})
#: kind -> its own spec keys (read from :data:`DATASETS`).
KIND_KEYS: dict[str, frozenset[str]] = {k: DATASETS[k].keys for k in DATASETS}
KINDS = DATASETS.names()


def _did_you_mean(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_spec(spec: Mapping[str, Any]) -> str:
    if not isinstance(spec, Mapping):
        raise DataError(f"a dataset spec must be a mapping with at least 'kind', got {type(spec).__name__}")
    kind = spec.get("kind")
    if kind not in DATASETS:
        hint = _did_you_mean(str(kind), KINDS) if kind is not None else ""
        raise DataError(f"dataset kind {kind!r} is unknown{hint}; known kinds: {', '.join(KINDS)}")
    desc = DATASETS[kind]
    allowed = COMMON_KEYS | desc.keys
    for key in spec:
        if key not in allowed:
            raise DataError(f"unknown key {key!r} in {kind} dataset spec{_did_you_mean(str(key), allowed)}; "
                            f"allowed keys: {', '.join(sorted(allowed))}")
    has_path, has_hub = spec.get("path") is not None, spec.get("hub_id") is not None
    if desc.source == "generated":
        if has_path or has_hub:
            raise DataError(f"the {kind} dataset is generated: drop 'path'/'hub_id' from its spec")
    elif has_path and has_hub:
        raise DataError(f"{kind} dataset spec has both 'path' and 'hub_id'; give one")
    elif not has_path and not has_hub:
        hub = " or 'hub_id' (online)" if desc.source == "hub" else ""
        raise DataError(f"{kind} dataset spec needs 'path' (a local file or folder){hub}")
    elif has_hub and desc.source != "hub":
        raise DataError(f"{kind} datasets are read from local files only: pass 'path' instead of 'hub_id'")
    if not desc.questions and spec.get("questions") is not None:
        context_only = ", ".join(k for k in DATASETS if DATASETS[k].questions)
        raise DataError(f"'questions' applies to context-only datasets ({context_only}), not {kind}")
    limit = spec.get("limit")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise DataError(f"dataset 'limit' must be a positive integer or null, got {limit!r}")
    seed = spec.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise DataError(f"dataset 'seed' must be an integer, got {seed!r}")
    split = spec.get("split")
    if split is not None and not isinstance(split, str):
        raise DataError(f"dataset 'split' must be a string, got {split!r}")
    return str(kind)


def load_dataset(spec: Mapping[str, Any]) -> list[Example]:
    """Load the dataset a spec describes (keys above) as Examples, in a deterministic order.

    Ids are stable across loads (taken from the data, or derived from its content/position).
    Raises DataError for bad specs, unreadable or malformed files, duplicate ids and empty
    datasets.
    """
    kind = _check_spec(spec)
    opts = {k: spec[k] for k in DATASETS[kind].keys if k in spec}
    examples = DATASETS.load(kind)(spec, dataset=str(spec.get("name") or kind), **opts)
    if not examples:
        raise DataError(f"{kind} dataset {spec.get('path') or spec.get('hub_id') or ''} is empty")
    seen: set[str] = set()
    for ex in examples:
        if ex.id in seen:
            raise DataError(f"{kind} dataset has duplicate example id {ex.id!r}; ids must be unique")
        seen.add(ex.id)
    if spec.get("shuffle"):
        random.Random(spec.get("seed") or 0).shuffle(examples)
    limit = spec.get("limit")
    if limit is not None:
        examples = examples[:limit]
    return examples
