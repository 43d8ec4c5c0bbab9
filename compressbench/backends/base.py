"""The backend seam: the one small interface every model backend implements.

Batch-first and order-preserving:

- ``generate(chats, params) -> list[Generation]``: one Generation (with ``params.n`` samples) per
  chat, in input order. The backend applies its own chat template.
- ``score(prefixes, continuations) -> list[TokenLogprobs]``: pairs ``prefixes[i]`` with
  ``continuations[i]``; natural-log probability of each continuation token after its prefix.
- ``score_matrix(prefixes, continuations) -> np.ndarray``: the cross product, shape
  ``(len(prefixes), len(continuations))``, float64, entry ``[p, c]`` = total
  ``log p(continuations[c] | prefixes[p])`` in nats.
- ``score_subsets(prefixes, continuations, subsets) -> list[np.ndarray]``: entry ``p`` holds
  ``log p(continuations[c] | prefixes[p])`` (nats) for ``c in subsets[p]``, in that order: each
  prefix scores only the continuations it needs (sampled negatives, several groups after one
  prefill). :class:`BaseBackend` builds it on ``score_matrix`` (one call per prefix); HF overrides it.
- ``count_tokens(texts) -> list[int]``: continuation token counts under the tokenisation contract.
- ``info() -> ModelInfo``: size and shape for cost accounting and manifests.

Tokenisation contract (every backend, tested): the prefix is tokenised with the tokenizer's
special tokens (a BOS token if the tokenizer adds one); the continuation is tokenised once, on
its own, without special tokens, and its ids are appended to the prefix's ids. So every entry of
a ``score_matrix`` column scores the same token sequence. Prefix + continuation is never
re-tokenised as one string.

Everything cross-cutting (caching, retries, usage accounting, progress) lives in wrappers, not here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from compressbench.core.errors import UsageError
from compressbench.core.types import Chat, Generation, GenerationParams, ModelInfo, TokenLogprobs


@runtime_checkable
class Backend(Protocol):
    """What the rest of compressbench needs from a model."""

    name: str

    def generate(self, chats: Sequence[Chat], params: GenerationParams) -> list[Generation]: ...

    def score(self, prefixes: Sequence[str], continuations: Sequence[str]) -> list[TokenLogprobs]: ...

    def score_matrix(self, prefixes: Sequence[str], continuations: Sequence[str]) -> np.ndarray: ...

    def score_subsets(self, prefixes: Sequence[str], continuations: Sequence[str],
                      subsets: Sequence[Sequence[int]]) -> list[np.ndarray]: ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]: ...

    def info(self) -> ModelInfo: ...


def check_texts(texts: Sequence[str], what: str) -> list[str]:
    """Validate a batch of strings; raise UsageError naming the bad entry."""
    if isinstance(texts, str):
        raise UsageError(f"{what} must be a list of strings, got a single string; wrap it in a list")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise UsageError(f"{what}[{i}] must be a string, got {type(t).__name__}")
    return out


def check_pairs(prefixes: Sequence[str], continuations: Sequence[str]) -> tuple[list[str], list[str]]:
    """Validate the inputs of ``score`` (equal-length lists of strings)."""
    p = check_texts(prefixes, "prefixes")
    c = check_texts(continuations, "continuations")
    if len(p) != len(c):
        raise UsageError(
            f"score() pairs prefixes[i] with continuations[i]: got {len(p)} prefixes and "
            f"{len(c)} continuations; use score_matrix() for the cross product"
        )
    return p, c


def check_subsets(prefixes: Sequence[str], continuations: Sequence[str],
                  subsets: Sequence[Sequence[int]]) -> tuple[list[str], list[str], list[np.ndarray]]:
    """Validate the inputs of ``score_subsets``: one list of continuation indices per prefix."""
    p = check_texts(prefixes, "prefixes")
    c = check_texts(continuations, "continuations")
    subs = list(subsets)
    if len(subs) != len(p):
        raise UsageError(f"score_subsets() needs one list of continuation indices per prefix: got {len(p)} "
                         f"prefixes and {len(subs)} subsets")
    out = []
    for k, sub in enumerate(subs):
        idx = np.asarray(list(sub), dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(c)):
            raise UsageError(f"subsets[{k}] holds an index outside 0..{len(c) - 1} (the continuations)")
        out.append(idx)
    return p, c, out


def _check_chat(i: int, chat: Chat) -> None:
    if isinstance(chat, (str, dict)) or len(chat) == 0:
        raise UsageError(f"chats[{i}] must be a non-empty list of {{'role','content'}} messages")
    for k, msg in enumerate(chat):
        if not isinstance(msg.get("role"), str) or not isinstance(msg.get("content"), str):
            raise UsageError(f"chats[{i}][{k}] needs string 'role' and 'content' fields")


def check_chats(chats: Sequence[Chat]) -> list[Chat]:
    """Validate a batch of chats (each a non-empty list of {role, content} mappings)."""
    if isinstance(chats, (str, dict)):
        raise UsageError("chats must be a list of chats (each a list of {'role','content'} messages)")
    out = list(chats)
    for i, chat in enumerate(out):
        _check_chat(i, chat)
    return out


def check_prompts(prompts: Sequence[Chat | str]) -> list[Chat | str]:
    """Validate a batch of generation inputs: each a chat, or a plain-text completion prompt (str).

    A plain string is a completion-style prompt for a model without a chat template: the
    backend tokenises it as it stands (with its special tokens, e.g. BOS) and continues it.
    """
    if isinstance(prompts, (str, dict)):
        raise UsageError("chats must be a list (of chats, or of plain-text completion prompts)")
    out = list(prompts)
    for i, item in enumerate(out):
        if not isinstance(item, str):
            _check_chat(i, item)
    return out


class BaseBackend:
    """Shared behaviour for backends: a generic ``score_matrix`` that loops over ``score``.

    Fast backends override ``score_matrix`` (shared prefixes, server prefix caches).
    """

    name: str = "backend"

    def score_matrix(self, prefixes: Sequence[str], continuations: Sequence[str]) -> np.ndarray:
        p = check_texts(prefixes, "prefixes")
        c = check_texts(continuations, "continuations")
        out = np.empty((len(p), len(c)), dtype=np.float64)
        if not p or not c:
            return out
        flat_p = [pp for pp in p for _ in c]
        flat_c = [cc for _ in p for cc in c]
        for k, tl in enumerate(self.score(flat_p, flat_c)):  # type: ignore[attr-defined]
            out[k // len(c), k % len(c)] = tl.total_nats
        return out

    def score_subsets(self, prefixes: Sequence[str], continuations: Sequence[str],
                      subsets: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """``out[p][r] = log p(continuations[subsets[p][r]] | prefixes[p])`` (nats), float64.

        Default: one ``score_matrix([prefix], its continuations)`` call per prefix (a backend with
        a prefix cache pays one prefill each); backends with a faster path override it."""
        return score_subsets_by_matrix(self, prefixes, continuations, subsets)


def score_subsets_by_matrix(backend: Any, prefixes: Sequence[str], continuations: Sequence[str],
                            subsets: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """``score_subsets`` for any backend with ``score_matrix``: one ``score_matrix([prefix], its
    continuations)`` call per prefix."""
    p, c, subs = check_subsets(prefixes, continuations, subsets)
    out = []
    for pp, idx in zip(p, subs):
        if idx.size == 0:
            out.append(np.zeros(0, dtype=np.float64))
            continue
        row = np.asarray(backend.score_matrix([pp], [c[int(i)] for i in idx]), dtype=np.float64)
        out.append(row.reshape(-1))
    return out


def prompt_format(backend: Any) -> str:
    """``chat`` when the backend applies a chat template, ``completion`` for a model without one
    (backends that do not say are taken to be chat models)."""
    return "chat" if getattr(backend, "has_chat_template", True) else "completion"
