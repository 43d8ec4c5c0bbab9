"""WildChat (hub ``allenai/WildChat-1M``): chat histories as contexts, questions from a file.

Public schema, one conversation per row::

    {"conversation_hash": "...", "model": "gpt-3.5-turbo-0613", "timestamp": ...,
     "conversation": [{"role": "user", "content": "...", "language": "English", ...},
                      {"role": "assistant", "content": "...", ...}, ...],
     "turn": 2, "language": "English", "hashed_ip": "...", "toxic": false, ...}

Context = the conversation rendered as ``User: ...`` / ``Assistant: ...`` paragraphs; context
id = ``conversation_hash``. Filters: ``language`` (row field ``language``, e.g. "English"),
``min_turns`` / ``max_turns`` (row field ``turn``; the paper used 4-8 turns).
With ``group_size`` = g > 1, each run of g consecutive kept conversations becomes one "memory"
context (``Conversation 1:`` ... blocks) with id ``group-<k>`` (k = 1, 2, ...; a short last
group is kept). The questions file (see :mod:`compressbench.data._questions`) refers to
contexts by ``context_id``; examples follow its order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from compressbench.data._questions import join_questions, read_questions
from compressbench.data._rows import Located, hub_rows, local_rows, require
from compressbench.core.errors import DataError
from compressbench.core.types import Example

_ROLE_NAMES = {"user": "User", "assistant": "Assistant", "system": "System"}


def render_conversation(messages: list[Mapping[str, Any]], where: str) -> str:
    """``User: ...`` / ``Assistant: ...`` paragraphs, one per message, in order."""
    parts = []
    for k, m in enumerate(messages, start=1):
        if not isinstance(m, Mapping):
            raise DataError(f"{where}: conversation message {k} must be an object with role and content")
        role = require(m, "role", f"{where}: conversation message {k}")
        content = m.get("content")
        if not isinstance(content, str):
            raise DataError(f"{where}: conversation message {k}: missing field 'content'")
        parts.append(f"{_ROLE_NAMES.get(role, role.capitalize())}: {content.strip()}")
    return "\n\n".join(parts)


def load_wildchat(path: str | Path | None = None, hub_id: str | None = None, split: str | None = None,
                  questions: str | Path | None = None, language: str | None = None,
                  min_turns: int | None = None, max_turns: int | None = None, group_size: int = 1,
                  dataset: str = "wildchat") -> list[Example]:
    """Examples from WildChat conversations (local file/folder or hub) and a questions file."""
    if questions is None:
        raise DataError("wildchat has contexts only: pass `questions` (a JSONL file of "
                        "{context_id, question, reference}) in the dataset spec")
    if not isinstance(group_size, int) or group_size < 1:
        raise DataError(f"wildchat group_size must be an integer >= 1, got {group_size!r}")
    qrows = read_questions(questions)
    needed = {r["context_id"] for _, r in qrows}
    rows: Iterable[Located]
    if path is not None:
        rows = ((f"{f}: {loc}", r) for f, loc, r in local_rows(path, split))
    else:
        rows = ((f"{hub_id}: {loc}", r) for loc, r in hub_rows(str(hub_id), split or "train", streaming=True))
    kept: list[tuple[str, str, dict[str, Any]]] = []
    n_rows = 0
    for where, r in rows:
        n_rows += 1
        conv = require(r, "conversation", where, list)
        chash = require(r, "conversation_hash", where)
        if language is not None and r.get("language") != language:
            continue
        turn = r.get("turn")
        if isinstance(turn, int) and ((min_turns is not None and turn < min_turns)
                                      or (max_turns is not None and turn > max_turns)):
            continue
        kept.append((chash, render_conversation(conv, where),
                     {k: r[k] for k in ("model", "language", "turn") if r.get(k) is not None}))
        if path is None and group_size == 1 and needed.issubset(c for c, _, _ in kept):
            break
    if n_rows == 0:
        raise DataError(f"wildchat dataset {path or hub_id} has no rows")
    contexts: dict[str, str] = {}
    meta: dict[str, dict[str, Any]] = {}
    if group_size == 1:
        for chash, text, m in kept:
            contexts[chash] = text
            meta[chash] = m
    else:
        for g in range(0, len(kept), group_size):
            members = kept[g:g + group_size]
            cid = f"group-{g // group_size + 1}"
            contexts[cid] = "\n\n".join(f"Conversation {i}:\n{text}" for i, (_, text, _) in enumerate(members, 1))
            meta[cid] = {"conversation_hashes": [c for c, _, _ in members]}
    return join_questions(qrows, contexts, dataset, f"the wildchat conversations ({path or hub_id})", meta)


def from_spec(spec: Mapping[str, Any], dataset: str, **opts: Any) -> list[Example]:
    """The ``wildchat`` entry of :data:`compressbench.data.DATASETS`: a checked dataset spec -> Examples."""
    return load_wildchat(spec.get("path"), spec.get("hub_id"), spec.get("split"), spec.get("questions"),
                         dataset=dataset, **opts)
