"""Secrets, once: what an API key looks like, and how every message and every text a remote model
returns is cleaned of one before it is shown, logged, stored or cached.

Used by :mod:`compressbench.backends.options` (a config value that looks like a key is refused) and
by the HTTP backend and its transport (:mod:`compressbench.backends.openai_http`,
:mod:`compressbench.backends.transport`: errors, log lines, ``info()`` and generated text pass
through :func:`redact`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import parse_qsl, urlsplit

REDACTED = "[redacted]"
#: A key piece this long (or the whole key, if shorter) is recognised anywhere in a text.
KEY_PIECE_CHARS = 8
#: Query parameters that carry credentials in URLs.
SECRET_QUERY_PARAMS: tuple[str, ...] = ("key", "api_key", "api-key", "apikey", "token", "access_token", "auth",
                                        "sig", "signature", "password", "secret")

_QUERY_SECRET_RE = re.compile(
    r"(?i)([?&;](?:" + "|".join(map(re.escape, SECRET_QUERY_PARAMS)) + r")=)[^&#\s\"'<>]+")
_USERINFO_RE = re.compile(r"(?i)(\b[a-z][a-z0-9+.\-]*://[^/\s:@]*:)[^@/\s]+(@)")
_AUTH_RE = re.compile(r"(?i)(\b(?:authorization|x-api-key|api-key)[\"']?\s*[:=]\s*[\"']?)(?:(?:bearer|basic|token)\s+)?"
                      r"[^\s\"',;}]+")
_BEARER_RE = re.compile(r"(?i)(\bbearer\s+)[^\s\"',;}]+")
#: Key formats redacted wherever they appear (OpenAI-style sk-/rk-/pk- keys, Hugging Face tokens).
_KEY_RE = re.compile(r"\b(?:(?:sk|rk|pk)-[A-Za-z0-9_\-]{8,}|hf_[A-Za-z0-9]{20,})")
#: A config value that looks like a key (stricter than redaction: a value is refused on it).
_KEY_LIKE = re.compile(r"(?i)(\bsk-[A-Za-z0-9_\-]{12,}|\bbearer\s+\S{8,}|\bhf_[A-Za-z0-9]{20,})")


def redact(text: str, secrets: Sequence[str] = ()) -> str:
    """``text`` with every secret removed: each of ``secrets`` (and any 8-character piece of one, so
    a key cut short by a server is caught too), Authorization/Bearer values, ``sk-...`` and
    ``hf_...`` keys, passwords in URLs and credential query parameters. Apply before truncating."""
    for secret in secrets:
        if not secret or len(secret) < 4:
            continue
        text = text.replace(secret, REDACTED)
        n = min(KEY_PIECE_CHARS, len(secret))
        pieces = {secret[i:i + n] for i in range(len(secret) - n + 1)}
        finder = re.compile("(?=(" + "|".join(map(re.escape, sorted(pieces))) + "))")
        merged: list[list[int]] = []
        for m in finder.finditer(text):  # overlapping matches, in order of their start
            a, b = m.start(), m.start() + n
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        if merged:
            out, pos = [], 0
            for a, b in merged:
                out += [text[pos:a], REDACTED]
                pos = b
            out.append(text[pos:])
            text = "".join(out)
    text = _USERINFO_RE.sub(lambda m: m.group(1) + REDACTED + m.group(2), text)
    text = _QUERY_SECRET_RE.sub(lambda m: m.group(1) + REDACTED, text)
    text = _AUTH_RE.sub(lambda m: m.group(1) + REDACTED, text)
    text = _BEARER_RE.sub(lambda m: m.group(1) + REDACTED, text)
    return _KEY_RE.sub(REDACTED, text)


def looks_like_key(text: str) -> bool:
    """Whether ``text`` holds something shaped like an API key (``sk-...``, a Bearer value, ``hf_...``)."""
    return _KEY_LIKE.search(text) is not None


def url_credential(url: str) -> str | None:
    """What part of ``url`` carries a credential (``password``, ``query parameter 'key'``), or None."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.password:
        return "a password in the URL"
    for k, _ in parse_qsl(parts.query, keep_blank_values=True):
        if k.lower() in SECRET_QUERY_PARAMS:
            return f"query parameter {k!r}"
    return None


__all__ = ["KEY_PIECE_CHARS", "REDACTED", "SECRET_QUERY_PARAMS", "looks_like_key", "redact", "url_credential"]
