"""Built-in baseline compressors. They take part in MI and accuracy like any model.

- ``identity``: the compression is the full context (the predictor sees everything).
- ``empty``: the compression is the empty string (the predictor sees only the question);
  its MI is exactly 0 (log p of an empty sequence is 0 under every context).
- ``truncate:<n>``: the longest prefix of the context, cut at a whitespace boundary, whose token
  count under the **scorer's** tokenizer (``scorer.count_tokens``, the same count that
  ``compression_n_tokens`` and bits per token use) is at most ``n``. Cutting at word boundaries keeps
  it independent of how a tokenizer splits a word; a first word longer than ``n`` tokens gives "".

Baselines cost no compressor tokens or FLOPs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from compressbench.core.errors import ConfigError
from compressbench.core.types import Example
from compressbench.data.known_info import is_known_info, keep_slots

CountTokens = Callable[[Sequence[str]], list[int]]

_WORD_END = re.compile(r"\S+")
#: Baseline compressors built into the sweep.
BASELINE_NAMES = ("identity", "empty")
_TRUNCATE_RE = re.compile(r"^truncate:(\d+)$")
_KEEP_RE = re.compile(r"^keep:(\d+)$")


def is_baseline(name: str) -> bool:
    """The one rule for "is this compressor a built-in baseline": ``identity``, ``empty``,
    ``truncate:<n>``, ``keep:<k>`` (config validation, the sweep, reports and plots all ask this function)."""
    name = str(name)
    return name in BASELINE_NAMES or _TRUNCATE_RE.match(name) is not None or _KEEP_RE.match(name) is not None


def truncate_tokens(name: str) -> int | None:
    """The token budget of a ``truncate:<n>`` baseline, else None."""
    m = _TRUNCATE_RE.match(str(name))
    return int(m.group(1)) if m else None


def keep_count(name: str) -> int | None:
    """The k of a ``keep:<k>`` baseline name, else None."""
    m = _KEEP_RE.match(str(name))
    return int(m.group(1)) if m else None


def baseline_label(name: str) -> str | None:
    """A human label for a baseline compressor (reports, plots), else None."""
    if name == "identity":
        return "no compression"
    if name == "empty":
        return "empty context"
    n = truncate_tokens(name)
    if n is not None:
        return f"first {n} tokens"
    k = keep_count(name)
    return None if k is None else f"first {k} slot sentences"


def baseline_kind(name: str) -> str | None:
    """``identity``, ``empty``, ``truncate`` or ``keep`` for a baseline, else None."""
    if name in BASELINE_NAMES:
        return name
    if truncate_tokens(name) is not None:
        return "truncate"
    return "keep" if keep_count(name) is not None else None


def in_study(name: str) -> bool:
    """Whether a compressor's cells are points of the MI-accuracy correlations: every compressor
    but ``empty``, whose MI is 0 by construction. The keep:k ladder, truncations and the identity
    are points of known or bounded information; model compressors are what is studied."""
    return str(name) != "empty"


def is_compression(name: str) -> bool:
    """Whether a compressor's cells are points of a rate-distortion fit: the ones that compress
    (model compressors, ``truncate:<n>``, ``keep:<k>``), not the ``identity`` (the whole context,
    no rate limit) nor ``empty``."""
    return str(name) not in BASELINE_NAMES


def needs_tokenizer(name: str) -> bool:
    """Whether the baseline counts tokens (``truncate:<n>`` uses the scorer's tokenizer)."""
    return truncate_tokens(name) is not None


def needs_example(name: str) -> bool:
    """Whether the baseline reads the example's structure (``keep:<k>`` reads known_info slots)."""
    return keep_count(name) is not None


def truncate_to_tokens(text: str, max_tokens: int, count_tokens: CountTokens) -> str:
    """The longest word-boundary prefix of `text` with ``count_tokens([prefix])[0] <= max_tokens``.

    Binary search over word ends: O(log n_words) calls of `count_tokens`. Token counts grow with
    the prefix length for every BPE tokenizer, which the search relies on.
    """
    if max_tokens < 0:
        raise ConfigError(f"a token budget must be >= 0, got {max_tokens}")
    if not text or count_tokens([text])[0] <= max_tokens:
        return text
    ends = [m.end() for m in _WORD_END.finditer(text)]
    lo, hi = 0, len(ends)  # ends[:lo] known to fit (lo words); hi words known not to fit
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if count_tokens([text[: ends[mid - 1]]])[0] <= max_tokens:
            lo = mid
        else:
            hi = mid
    return text[: ends[lo - 1]] if lo > 0 else ""


def baseline_compression(name: str, context: str, count_tokens: CountTokens | None = None,
                         example: Example | None = None) -> str:
    """The compression a baseline writes for `context` (see the module docstring).

    ``keep:<k>`` needs the known-information ``example`` (whose context is `context`).
    """
    k = keep_count(name)
    if k is not None:
        if example is None or not is_known_info(example):
            raise ConfigError(f"baseline {name} keeps known slot sentences: it works only on the known_info "
                              "dataset kind; use truncate:<tokens> for other datasets")
        return keep_slots(example, k)
    if name == "identity":
        return context
    if name == "empty":
        return ""
    n = truncate_tokens(name)
    if n is None or not is_baseline(name):
        raise ConfigError(f"{name!r} is not a baseline; use identity, empty, truncate:<tokens> or keep:<k>")
    if count_tokens is None:
        raise ConfigError(f"baseline {name} needs a tokenizer (the scorer's count_tokens)")
    return truncate_to_tokens(context, n, count_tokens)
