"""OpenAI-compatible HTTP backend: ``vllm serve``, SGLang, and OpenAI-style APIs, over httpx.

``OpenAIHTTPBackend(model, base_url=..., ...)`` keeps the synchronous batch seam of base.py
outside and runs httpx's async client inside (one ``asyncio.run`` per batch call; when called from
a running event loop, the batch runs on a worker thread). At most ``max_concurrency`` requests
are in flight per endpoint; ``endpoint_concurrency={url: n}`` sets another limit for some
endpoints (replicas on bigger or smaller GPUs).

Endpoints (``base_url`` may end in ``/v1`` or not; the server root is the URL without it):

- generation: ``POST {root}/v1/chat/completions`` (``n``, ``seed``, ``temperature``, ``top_p``,
  ``max_tokens``, ``stop``). Usage is recorded; a response without usage records
  ``Usage(None, None)`` (unknown), never 0.
- tokenisation: ``POST {root}/tokenize`` with ``{"model", "prompt", "add_special_tokens"}``
  returning ``{"tokens": [...], "max_model_len": ...}`` (vLLM; SGLang's ``/tokenize`` has the same
  shape). Prefixes are tokenised with special tokens, continuations without, separately, so the
  tokenisation contract of base.py holds and the server never re-tokenises prefix + continuation.
- scoring, in the order ``scoring="auto"`` tries them (the first that answers correctly is kept):

  1. ``"completions"``: ``POST {root}/v1/completions`` with the token ids as ``prompt``,
     ``max_tokens=1`` and vLLM's ``prompt_logprobs=0``; if the server rejects that, the classic
     ``echo=true, logprobs=1`` form (``choices[0].logprobs.token_logprobs`` aligned with the
     prompt tokens).
  2. ``"sglang"``: SGLang's native ``POST {root}/generate`` with ``input_ids``,
     ``sampling_params={"max_new_tokens": 0}``, ``return_logprob=true`` and
     ``logprob_start_len=P`` (the prefix length); ``meta_info.input_token_logprobs`` is a list of
     ``[logprob, token_id, text]`` for positions P.. (SGLang's radix cache keeps the prefix warm).

  ``scoring="none"`` declares a generation-only endpoint. A server that can do none of these
  (e.g. a chat-only API) raises ScoringUnsupported at the first ``score``/``score_matrix``/
  ``check_scoring`` call, before any batch work; it stays usable for ``generate``.

Log-probs: for a prompt of ids t_0..t_{P+C-1} (prefix P tokens, continuation C tokens), the
returned ``TokenLogprobs.logprobs_nats[k] = log p(t_{P+k} | t_<P+k)`` (natural log).

Retries: 429, any 5xx, timeouts, connection errors and unreadable (truncated) JSON bodies are
retried up to ``max_retries`` times with exponential backoff and jitter: attempt a (0-based)
waits ``b/2 + U(0, b/2)`` seconds with ``b = min(backoff_max_s, backoff_initial_s * 2**a)``, or the
server's ``Retry-After`` (seconds or an HTTP date, capped at ``retry_after_max_s``) when that is
longer. Other 4xx are not retried. A 200 response whose JSON has the wrong shape (a list, a
message that is not an object, ...) is not retried either: that request fails with a BackendError
naming what was wrong. A final failure is a RemoteError carrying the HTTP status and the server's
message.

Time limits (defaults sized for real servers): each attempt has ``connect_timeout_s`` (10 s) to
connect and ``timeout_s`` (120 s) for the response (a long generation on a loaded server takes
tens of seconds); each request, retries and backoff included, ends after ``request_deadline_s``
(300 s) from its first attempt, whatever ``max_retries`` says.

Circuit breaker (per endpoint): after ``endpoint_max_failures`` (3) consecutive connection
failures or timeouts an endpoint is taken out of service for ``endpoint_cooldown_s`` (60 s); after
the cool-down one more such failure takes it out again at once. With every endpoint out, requests
fail at once (no retries, no waiting) with a RemoteError naming the endpoints and the last cause.
So a refused endpoint fails a whole batch within a second or so, and a hung one within about
``timeout_s`` when at least ``endpoint_max_failures`` requests are in flight (at most
``request_deadline_s`` otherwise).

Several endpoints (``endpoints=[url, ...]``): each request goes to the endpoint chosen by
rendezvous hashing of its routing key (the prefix text for scoring, the chat for generation), so
every request sharing a scoring prefix hits the same server and its prefix cache. The hashing is
weighted by each endpoint's concurrency limit, so an endpoint allowed twice the requests in
flight gets about twice the keys. An endpoint is also taken out after ``endpoint_max_failures``
consecutive 5xx while another endpoint is in service; retries of its requests then hash to the
remaining endpoints.

Secrets: the API key is read from the environment (``api_key_env``) and sent only in the
``Authorization`` header. Every message this backend produces (errors, logs, ``info()``) is passed
through :func:`redact` *before* it is cut to length: the key itself and any 8-character piece of
it, ``Authorization``/``Bearer`` values, ``sk-...`` keys, passwords in URLs and credential query
parameters (``?key=``, ``api_key=``, ``token=``, ...) become ``[redacted]``.

Per-request errors in a batch: every request of a batch runs to its own end (one failure does not
cancel the others). If any request failed for good, the batch call raises ``BatchRemoteError``
(a RemoteError) whose ``errors`` maps each failed input index to its error and whose ``results``
holds the results of the requests that succeeded (None at failed indices).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import email.utils
import hashlib
import json
import logging
import math
import os
import random
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import numpy as np

from compressbench.backends.base import BaseBackend, check_chats, check_pairs, check_texts
from compressbench.core.errors import (
    BackendError,
    CompressbenchError,
    ContextTooLong,
    RemoteError,
    ScoringUnsupported,
    UsageError,
)
from compressbench.core.types import (
    Chat,
    Generation,
    GenerationParams,
    ModelInfo,
    Sample,
    TokenLogprobs,
    Usage,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

SCORING_MODES = ("auto", "completions", "sglang", "none")
_CONTEXT_RE = re.compile(r"context length|maximum model length|max_model_len|too long", re.IGNORECASE)
_SERVER_MESSAGE_MAX_CHARS = 500
#: Server bodies longer than this are cut before redaction (only the first 500 characters are kept
#: afterwards, so a key piece cut off here can never reach a message).
_SERVER_BODY_SCAN_CHARS = 1 << 16
REDACTED = "[redacted]"
#: A key piece this long (or the whole key, if shorter) is recognised anywhere in a message.
_KEY_PIECE_CHARS = 8
_QUERY_SECRET_RE = re.compile(
    r"(?i)([?&;](?:key|api_key|api-key|apikey|token|access_token|auth|sig|signature|password|secret)=)[^&#\s\"'<>]+")
_USERINFO_RE = re.compile(r"(?i)(\b[a-z][a-z0-9+.\-]*://[^/\s:@]*:)[^@/\s]+(@)")
_AUTH_RE = re.compile(r"(?i)(\b(?:authorization|x-api-key|api-key)[\"']?\s*[:=]\s*[\"']?)(?:(?:bearer|basic|token)\s+)?"
                      r"[^\s\"',;}]+")
_BEARER_RE = re.compile(r"(?i)(\bbearer\s+)[^\s\"',;}]+")
_SK_RE = re.compile(r"\b(?:sk|rk|pk)-[A-Za-z0-9_\-]{8,}")


def redact(text: str, secrets: Sequence[str] = ()) -> str:
    """``text`` with every secret removed: each of ``secrets`` (and any 8-character piece of one, so
    a key cut short by a server is caught too), Authorization/Bearer values, ``sk-...`` keys,
    passwords in URLs and credential query parameters. Apply before truncating."""
    for secret in secrets:
        if not secret or len(secret) < 4:
            continue
        text = text.replace(secret, REDACTED)
        n = min(_KEY_PIECE_CHARS, len(secret))
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
    return _SK_RE.sub(REDACTED, text)


def _clip(text: str, limit: int = _SERVER_MESSAGE_MAX_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text) - limit} more characters)"


class BatchRemoteError(RemoteError):
    """Some requests of a batch failed for good; the others succeeded.

    ``errors``: input index -> the error of that request. ``results``: one entry per input, the
    result where the request succeeded and None where it failed.
    """

    def __init__(self, message: str, *, errors: dict[int, CompressbenchError], results: list[Any]):
        first = errors[min(errors)]
        super().__init__(
            message,
            status=getattr(first, "status", None),
            server_message=getattr(first, "server_message", None),
        )
        self.errors = errors
        self.results = results

    @classmethod
    def of(cls, what: str, n_total: int, errors: dict[int, CompressbenchError],
           results: list[Any]) -> "BatchRemoteError":
        """The error for a batch of ``n_total`` ``what`` requests of which ``errors`` failed."""
        idx = sorted(errors)
        shown = ", ".join(map(str, idx[:20])) + (" ..." if len(idx) > 20 else "")
        return cls(f"{len(idx)} of {n_total} {what} requests failed (indices {shown}); first error: {errors[idx[0]]}",
                   errors=errors, results=results)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter. Delays in seconds."""

    max_retries: int = 5
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    retry_after_max_s: float = 120.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise UsageError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.backoff_initial_s < 0 or self.backoff_max_s < 0 or self.retry_after_max_s < 0:
            raise UsageError("backoff_initial_s, backoff_max_s and retry_after_max_s must be >= 0")

    def delay_s(self, attempt: int, retry_after_s: float | None, rng: random.Random) -> float:
        """Wait before retry number ``attempt + 1``: ``b/2 + U(0, b/2)``, ``b = min(max, init * 2**attempt)``;
        at least ``min(retry_after_s, retry_after_max_s)`` when the server sent Retry-After."""
        base = min(self.backoff_max_s, self.backoff_initial_s * (2.0**attempt))
        delay = base / 2 + rng.uniform(0, base / 2)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.retry_after_max_s))
        return delay


@dataclass
class RequestStats:
    """Counters of one backend instance (cumulative; ``reset_stats()`` clears them)."""

    n_requests: int = 0  # logical requests (each may take several attempts)
    n_attempts: int = 0  # HTTP attempts sent
    n_retries: int = 0  # attempts that were retries
    n_failed: int = 0  # logical requests that failed for good
    retry_reasons: Counter = field(default_factory=Counter)  # "http_429", "timeout", "connection", ...
    retry_delays_s: list[float] = field(default_factory=list)
    n_breaker_trips: int = 0  # times an endpoint was taken out of service
    n_fast_failed: int = 0  # requests failed at once because every endpoint was out of service
    n_deadline: int = 0  # requests that ran out of request_deadline_s


@dataclass
class _Endpoint:
    root: str  # the real URL root (may hold credentials: never shown)
    shown: str  # the root as shown in messages, logs and info() (credentials redacted)
    consecutive_failures: int = 0  # endpoint faults in a row (5xx, timeouts, connection errors)
    consecutive_dead: int = 0  # timeouts and connection errors in a row (the circuit breaker)
    down_until: float = 0.0  # time.monotonic() before which the endpoint is out of service
    tripped: bool = False  # taken out since its last success: one more dead attempt takes it out again
    last_error: str = ""


class EndpointsDown(RemoteError):
    """Every endpoint of a backend is out of service (circuit breaker open): failed without trying."""


class _Retryable(Exception):
    """Internal: one attempt failed in a way worth retrying."""

    def __init__(self, reason: str, message: str, *, status: int | None = None,
                 retry_after_s: float | None = None, endpoint_fault: bool = True):
        super().__init__(message)
        self.reason = reason
        self.status = status
        self.retry_after_s = retry_after_s
        self.endpoint_fault = endpoint_fault


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: a number of seconds or an HTTP date; None if absent."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds):
        return None
    return max(0.0, seconds)


def _rendezvous_score(key: str, root: str, weight: float) -> float:
    """Weighted rendezvous hashing: ``-weight / ln(u)`` with ``u`` in (0, 1) from SHA-256 of
    (key, endpoint). The endpoint with the highest score gets the key, so each endpoint gets a
    share of the keys proportional to its weight (its concurrency limit), and removing an
    endpoint moves only its own keys. Equal weights reduce to plain rendezvous hashing."""
    h = int.from_bytes(hashlib.sha256(f"{key}\0{root}".encode()).digest()[:8], "big")
    return -weight / math.log((h + 0.5) / 2.0**64)
def _transport_cause(exc: BaseException) -> str:
    """``ConnectError: ... (Connection refused)``: the httpx error and the OS error beneath it, if any."""
    text = f"{type(exc).__name__}: {exc}"
    inner: BaseException | None = exc
    for _ in range(8):
        inner = inner.__cause__ or inner.__context__ if inner is not None else None
        if isinstance(inner, OSError) and inner.errno:
            why = os.strerror(inner.errno)
            return text if why in text else f"{text}: {why}"
    return text


def _root_url(url: str) -> str:
    if not isinstance(url, str) or not re.match(r"^https?://", url):
        raise UsageError(f"base URL {url!r} must start with http:// or https:// (e.g. http://127.0.0.1:8000/v1)")
    root = url.rstrip("/")
    if root.endswith("/v1"):
        root = root[: -len("/v1")]
    return root


def _server_message(resp: httpx.Response) -> str:
    """The error message a server put in its body (OpenAI: {"error": {"message": ...}}), uncut:
    the caller redacts it, then cuts it to length (in that order, so no key piece survives a cut)."""
    text = resp.content[:_SERVER_BODY_SCAN_CHARS].decode(resp.encoding or "utf-8", errors="replace")
    try:
        data = json.loads(text)
    except ValueError:
        return text
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            msg = err.get("message") or err.get("detail") or err.get("msg")
            if msg:
                return str(msg)
        elif isinstance(err, str):
            return err
        if "detail" in data:
            return str(data["detail"])
    return text


def _count(v: Any) -> int | None:
    """A token count from a server: a non-negative int, else unknown (None)."""
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


def _usage(data: dict[str, Any]) -> Usage:
    u = data.get("usage")
    if not isinstance(u, dict):
        return Usage(None, None)
    details = u.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return Usage(_count(u.get("prompt_tokens")), _count(u.get("completion_tokens")), _count(cached))


class MalformedResponse(BackendError):
    """A server answered 200 with JSON of the wrong shape for the route (not retried)."""


def _shape_error(model: str, path: str, what: str) -> MalformedResponse:
    return MalformedResponse(f"{model}: POST {path} answered 200 with JSON of the wrong shape ({what}); "
                             "is base_url an OpenAI-compatible server (vllm serve, SGLang, an OpenAI-style API)?")


def parse_echo_logprobs(choice: dict[str, Any], token_ids: Sequence[int], start: int) -> tuple[float, ...]:
    """Continuation log-probs from an ``echo=true, logprobs=k`` completion choice (nats).

    ``choice["logprobs"]["token_logprobs"][k]`` is ``log p(t_k | t_<k)`` for prompt position k
    (None at k = 0), followed by the generated tokens' entries.
    """
    lps = (choice.get("logprobs") or {}).get("token_logprobs")
    if not isinstance(lps, list) or len(lps) < len(token_ids):
        raise BackendError("echo response lacks log-probs for every prompt token")
    out = []
    for k in range(start, len(token_ids)):
        if lps[k] is None:
            raise BackendError(f"echo response has no log-prob at prompt position {k}")
        out.append(float(lps[k]))
    return tuple(out)


def parse_sglang_logprobs(data: Any, cont_ids: Sequence[int]) -> tuple[float, ...]:
    """Continuation log-probs from SGLang's ``/generate`` response (nats).

    ``meta_info.input_token_logprobs`` lists ``[logprob, token_id, text]`` for prompt positions
    ``logprob_start_len..``; the last ``len(cont_ids)`` entries are the continuation's, and their
    token ids must equal ``cont_ids``.
    """
    if isinstance(data, list):
        data = data[0] if data else {}
    entries = ((data or {}).get("meta_info") or {}).get("input_token_logprobs")
    n = len(cont_ids)
    if not isinstance(entries, list) or len(entries) < n:
        raise BackendError("SGLang response lacks meta_info.input_token_logprobs for the continuation")
    tail = entries[len(entries) - n:]
    out = []
    for k, (entry, tid) in enumerate(zip(tail, cont_ids)):
        lp, got_id = entry[0], entry[1] if len(entry) > 1 else tid
        if got_id is not None and int(got_id) != int(tid):
            raise BackendError(f"SGLang log-prob {k} is for token {got_id}, expected {tid}")
        if lp is None:
            raise BackendError(f"SGLang returned no log-prob for continuation token {k}")
        out.append(float(lp))
    return tuple(out)


def parse_prompt_logprobs(choice: dict[str, Any], token_ids: Sequence[int], start: int) -> tuple[float, ...]:
    """Continuation log-probs from vLLM's ``prompt_logprobs`` (nats); see vllm.prompt_logprobs_slice."""
    from compressbench.backends.vllm import prompt_logprobs_slice  # light module; vllm itself is lazy

    pl = choice.get("prompt_logprobs")
    if not isinstance(pl, list):
        raise BackendError("completion response has no prompt_logprobs")
    return prompt_logprobs_slice(pl, token_ids, start)


@dataclass
class _Run:
    """Per-batch state living in one event loop."""

    client: httpx.AsyncClient
    sem: dict[str, asyncio.Semaphore]


async def _within(aw: Awaitable[T], seconds: float) -> T:
    """``await aw`` with an overall time limit (``TimeoutError`` past it).

    ``asyncio.timeout`` where Python has it (3.11+), not ``asyncio.wait_for``: ``asyncio.run`` turns
    Ctrl-C into a cancellation of its task, and on Python 3.11 ``wait_for`` swallows a cancellation
    that lands just as the awaited response completes, so an interrupted sweep ran on to the end
    and exited 0 (seen once in CI). Python 3.10's ``asyncio.run`` raises KeyboardInterrupt directly
    instead, so ``wait_for`` is safe there.
    """
    timeout = getattr(asyncio, "timeout", None)
    if timeout is None:  # Python 3.10
        return await asyncio.wait_for(aw, seconds)
    async with timeout(seconds):
        return await aw


class OpenAIHTTPBackend(BaseBackend):
    """A model behind an OpenAI-compatible HTTP server (see the module docstring for the protocol).

    Args:
        model: the served model name (``--served-model-name`` for vllm serve).
        base_url: the server's URL, e.g. ``http://127.0.0.1:8000/v1``; or give ``endpoints``.
        endpoints: several URLs serving the same model (requests sharing a prefix stick to one).
        api_key_env: name of the environment variable holding the API key (read once, here; when
            unset, no Authorization header is sent, which is right for local servers).
        scoring: "auto" | "completions" | "sglang" | "none" (see the module docstring).
        max_concurrency: requests in flight per endpoint.
        endpoint_concurrency: ``{url: n}``, another in-flight limit for the endpoints named (the
            same URLs as in ``endpoints``/``base_url``); the others keep ``max_concurrency``.
        timeout_s: per-attempt timeout for reading the response (and writing, pool), seconds.
        connect_timeout_s: per-attempt timeout for connecting, seconds.
        request_deadline_s: overall limit per request, retries and backoff included (None: no limit).
        max_retries, backoff_initial_s, backoff_max_s, retry_after_max_s: see RetryPolicy.
        endpoint_max_failures, endpoint_cooldown_s: the circuit breaker (see the module docstring).
        transport: an ``httpx.AsyncBaseTransport`` to use instead of the network (tests); it is
            shared by every batch and not closed by the backend.
        jitter_seed: seed of the backoff jitter (None: from the OS).
        tokenize_path: the server's tokenizer route (``/tokenize``).
    """

    name = "openai"

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        endpoints: Sequence[str] | None = None,
        api_key_env: str | None = "OPENAI_API_KEY",
        scoring: str = "auto",
        max_concurrency: int = 16,
        endpoint_concurrency: Mapping[str, int] | None = None,
        timeout_s: float = 120.0,
        connect_timeout_s: float = 10.0,
        request_deadline_s: float | None = 300.0,
        max_retries: int = 5,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        retry_after_max_s: float = 120.0,
        endpoint_max_failures: int = 3,
        endpoint_cooldown_s: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
        jitter_seed: int | None = None,
        tokenize_path: str = "/tokenize",
        n_ctx: int | None = None,
    ) -> None:
        if not isinstance(model, str) or not model:
            raise UsageError("OpenAIHTTPBackend needs the served model name as its first argument")
        urls = list(endpoints or []) + ([base_url] if base_url else [])
        if not urls:
            raise UsageError("give base_url='http://host:port/v1' (or endpoints=[...]) for the openai backend")
        roots = list(dict.fromkeys(_root_url(u) for u in urls))
        if scoring not in SCORING_MODES:
            raise UsageError(f"scoring must be one of {', '.join(SCORING_MODES)}; got {scoring!r}")
        if max_concurrency < 1:
            raise UsageError(f"max_concurrency must be >= 1, got {max_concurrency}")
        limits = {r: max_concurrency for r in roots}
        for url, n in (endpoint_concurrency or {}).items():
            root = _root_url(str(url))
            if root not in limits:
                raise UsageError(f"endpoint_concurrency names {url!r}, which is not one of the endpoints "
                                 f"({', '.join(roots)}); use the same URLs as in endpoints")
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise UsageError(f"endpoint_concurrency[{url!r}] must be an integer >= 1, got {n!r}")
            limits[root] = n
        if not timeout_s > 0 or not connect_timeout_s > 0:
            raise UsageError(f"timeout_s and connect_timeout_s must be > 0, got {timeout_s} and {connect_timeout_s}")
        if request_deadline_s is not None and not request_deadline_s > 0:
            raise UsageError(f"request_deadline_s must be > 0 or None, got {request_deadline_s}")
        if endpoint_cooldown_s < 0:
            raise UsageError(f"endpoint_cooldown_s must be >= 0, got {endpoint_cooldown_s}")
        if endpoint_max_failures < 1:
            raise UsageError(f"endpoint_max_failures must be >= 1, got {endpoint_max_failures}")
        self.model = model
        self.name = f"openai:{model}"
        self._api_key = os.environ.get(api_key_env) if api_key_env else None
        self._endpoints = [_Endpoint(r, self._redact(r)) for r in roots]
        if api_key_env and not self._api_key:
            logger.debug("environment variable %s is not set; sending no Authorization header", api_key_env)
        self._scoring_request = scoring
        self._scoring_mode: str | None = None
        self._max_concurrency = max_concurrency
        self._concurrency = limits
        self._ssl: Any = None  # the TLS context shared by every batch's client (built on first use)
        self._timeout_s = float(timeout_s)
        self._connect_timeout_s = float(connect_timeout_s)
        self._timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
        self._deadline_s = None if request_deadline_s is None else float(request_deadline_s)
        self._retry = RetryPolicy(max_retries, backoff_initial_s, backoff_max_s, retry_after_max_s)
        self._endpoint_max_failures = endpoint_max_failures
        self._endpoint_cooldown_s = endpoint_cooldown_s
        self._transport = transport
        self._rng = random.Random(jitter_seed)
        self._tokenize_path = "/" + tokenize_path.lstrip("/")
        self._n_ctx = n_ctx
        self.stats = RequestStats()

    # -- public helpers ----------------------------------------------------------------------
    def reset_stats(self) -> None:
        self.stats = RequestStats()

    @property
    def endpoints(self) -> list[str]:
        """Server roots in configuration order (credentials in URLs shown as [redacted])."""
        return [e.shown for e in self._endpoints]

    def endpoints_in_service(self) -> list[str]:
        now = time.monotonic()
        return [e.shown for e in self._endpoints if e.down_until <= now]

    def concurrency(self) -> dict[str, int]:
        """The in-flight request limit of each endpoint root."""
        return dict(self._concurrency)

    def route(self, key: str) -> str:
        """The endpoint root that requests with routing ``key`` go to now (rendezvous hashing)."""
        return self._pick(key).shown

    # -- plumbing ----------------------------------------------------------------------------
    def _redact(self, text: str) -> str:
        """``text`` without the API key or any other secret (see :func:`redact`)."""
        return redact(text, [self._api_key] if self._api_key else [])

    @contextlib.contextmanager
    def _shape(self, path: str) -> Iterator[None]:
        """Turn a parser tripping over an unexpected JSON shape into a MalformedResponse."""
        try:
            yield
        except CompressbenchError:
            raise
        except (AttributeError, TypeError, KeyError, IndexError, ValueError) as exc:
            raise _shape_error(self.model, path, f"{type(exc).__name__}: {self._redact(str(exc))}") from None

    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json"}
        if self._api_key:
            h["Authorization"] = f"Bearer {self._api_key}"
        return h

    def _pick(self, key: str) -> _Endpoint:
        """The live endpoint for ``key``; with none in service, EndpointsDown at once."""
        now = time.monotonic()
        live = [e for e in self._endpoints if e.down_until <= now]
        if not live:
            last = max(self._endpoints, key=lambda e: e.down_until)
            wait = max(0.0, min(e.down_until for e in self._endpoints) - now)
            raise EndpointsDown(
                self._redact(
                    f"{self.model}: every endpoint is out of service after repeated connection failures or "
                    f"timeouts ({', '.join(self.endpoints)}; back in {wait:.0f} s); last error on {last.shown}: "
                    f"{last.last_error}. Check that the server is running and reachable at base_url"
                ),
                server_message=last.last_error or None,
            )
        return max(live, key=lambda e: _rendezvous_score(key, e.root, self._concurrency[e.root]))

    def _note_success(self, ep: _Endpoint) -> None:
        ep.consecutive_failures = ep.consecutive_dead = 0
        ep.tripped = False

    def _note_failure(self, ep: _Endpoint, exc: _Retryable) -> None:
        """Count an endpoint fault; take the endpoint out (circuit breaker) when due."""
        if not exc.endpoint_fault:
            return
        dead = exc.reason in ("timeout", "connection")
        ep.consecutive_failures += 1
        ep.consecutive_dead = ep.consecutive_dead + 1 if dead else 0
        ep.last_error = self._redact(str(exc))
        now = time.monotonic()
        if ep.down_until > now:
            return  # already out (another request of the batch took it out)
        others = [e for e in self._endpoints if e is not ep and e.down_until <= now]
        k = self._endpoint_max_failures
        if dead and ep.consecutive_dead >= k:
            why = f"{ep.consecutive_dead} connection failures or timeouts in a row"
        elif dead and ep.tripped:
            why = "failed again after its cool-down"
        elif ep.consecutive_failures >= k and others:
            why = f"{ep.consecutive_failures} failures in a row"
        else:
            return
        ep.down_until = now + self._endpoint_cooldown_s
        ep.consecutive_failures = ep.consecutive_dead = 0
        ep.tripped = True
        self.stats.n_breaker_trips += 1
        logger.warning(
            "endpoint %s: %s (last: %s); out of service for %.0f s%s", ep.shown, why, ep.last_error,
            self._endpoint_cooldown_s,
            f", its requests go to {[e.shown for e in others]}" if others else
            "; with no endpoint left, requests fail at once until then",
        )

    def _run(self, body: Callable[[_Run], Awaitable[T]]) -> T:
        """Run one batch coroutine on a fresh event loop (a worker thread if one is running here)."""

        if self._ssl is None:  # built once: loading the CA bundle costs ~0.1-0.4 s per client
            self._ssl = httpx.create_ssl_context()

        async def main() -> T:
            client = httpx.AsyncClient(
                transport=self._transport,
                verify=self._ssl,
                timeout=self._timeout,
                limits=httpx.Limits(max_connections=sum(self._concurrency.values()),
                                    max_keepalive_connections=sum(self._concurrency.values())),
            )
            run = _Run(client, {e.root: asyncio.Semaphore(self._concurrency[e.root]) for e in self._endpoints})
            try:
                return await body(run)
            finally:
                if self._transport is None:
                    await client.aclose()

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(main())
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, main()).result()

    async def _request(self, run: _Run, path: str, payload: dict[str, Any], key: str) -> Any:
        """POST ``payload`` to ``path`` on the endpoint for ``key``, with retries; the parsed JSON.

        Ends after ``max_retries`` retries or ``request_deadline_s`` from the first attempt, whichever
        comes first; fails at once (EndpointsDown) when every endpoint is out of service.
        """
        self.stats.n_requests += 1
        last: _Retryable | None = None
        deadline: float | None = None
        n_attempts = 0
        for attempt in range(self._retry.max_retries + 1):
            try:
                ep = self._pick(key)
                await run.sem[ep.root].acquire()
                while ep.down_until > time.monotonic():  # taken out while this request waited for a slot
                    run.sem[ep.root].release()
                    ep = self._pick(key)
                    await run.sem[ep.root].acquire()
            except EndpointsDown:
                self.stats.n_failed += 1
                if last is None:
                    self.stats.n_fast_failed += 1
                raise
            try:
                try:
                    now = time.monotonic()
                    if deadline is None and self._deadline_s is not None:
                        deadline = now + self._deadline_s
                    remaining = math.inf if deadline is None else deadline - now
                    if remaining <= 0:
                        break
                    self.stats.n_attempts += 1
                    n_attempts += 1
                    timeout = httpx.Timeout(min(self._timeout_s, remaining),
                                            connect=min(self._connect_timeout_s, remaining))
                    post = run.client.post(ep.root + path, json=payload, headers=self._headers(), timeout=timeout)
                    resp = await (post if deadline is None else _within(post, remaining))
                finally:
                    run.sem[ep.root].release()
                data = self._handle(resp, path)
            except _Retryable as exc:
                last = exc
            except (httpx.TimeoutException, asyncio.TimeoutError) as exc:
                last = _Retryable("timeout", f"no answer within {min(self._timeout_s, remaining):.3g} s "
                                             f"({type(exc).__name__}) from {ep.shown}")
            except httpx.TransportError as exc:
                last = _Retryable("connection", f"connection to {ep.shown} failed ({_transport_cause(exc)})")
            except CompressbenchError:
                self.stats.n_failed += 1
                raise
            else:
                self._note_success(ep)
                return data
            self._note_failure(ep, last)
            if attempt == self._retry.max_retries:
                break
            delay = self._retry.delay_s(attempt, last.retry_after_s, self._rng)
            if deadline is not None and time.monotonic() + delay >= deadline:
                break
            self.stats.n_retries += 1
            self.stats.retry_reasons[last.reason] += 1
            self.stats.retry_delays_s.append(delay)
            logger.info("%s on %s%s: %s; retry %d in %.3f s", last.reason, ep.shown, path,
                        self._redact(str(last)), attempt + 1, delay)
            await asyncio.sleep(delay)
        self.stats.n_failed += 1
        out_of_time = deadline is not None and n_attempts < self._retry.max_retries + 1
        if out_of_time:
            self.stats.n_deadline += 1
        why = (f"gave up after {n_attempts} attempt(s) at the request deadline of {self._deadline_s:g} s"
               if out_of_time else f"failed after {n_attempts} attempts")
        cause = str(last) if last is not None else "no attempt could start before the deadline"
        status = last.status if last is not None else None
        raise RemoteError(
            self._redact(
                f"{self.model}: POST {path} {why}; last error: {cause}" + (f" (HTTP {status})" if status else "")
                + ". Check the server's health and logs, or raise max_retries/timeout_s/request_deadline_s"
            ),
            status=status,
            server_message=self._redact(cause),
        )

    def _handle(self, resp: httpx.Response, path: str) -> Any:
        status = resp.status_code
        if 200 <= status < 300:
            try:
                return json.loads(resp.content)
            except ValueError:
                raise _Retryable("bad_json", f"unreadable JSON body ({len(resp.content)} bytes)",
                                 status=status) from None
        message = _clip(self._redact(_server_message(resp)))  # redact first, then cut
        if status == 429 or status >= 500:
            raise _Retryable(
                f"http_{status}", f"HTTP {status}: {message}", status=status,
                retry_after_s=parse_retry_after(resp.headers.get("retry-after")),
                endpoint_fault=status >= 500,
            )
        text = f"{self.model}: POST {path} returned HTTP {status}: {message}"
        if status in (400, 413) and _CONTEXT_RE.search(message):
            raise ContextTooLong(text + "; shorten the prompt or use a model with a longer context")
        hint = {401: "; set the API key environment variable (api_key_env)",
                403: "; the API key lacks access to this model",
                404: "; check base_url and the model name"}.get(status, "")
        raise RemoteError(text + hint, status=status, server_message=message)

    async def _gather(self, coros: list[Awaitable[T]], what: str) -> list[T]:
        """Run all, each to its own end; raise BatchRemoteError listing failed indices."""
        outcomes = await asyncio.gather(*coros, return_exceptions=True)
        errors: dict[int, CompressbenchError] = {}
        for i, o in enumerate(outcomes):
            if isinstance(o, CompressbenchError):
                errors[i] = o
            elif isinstance(o, BaseException):
                raise o
        if errors:
            raise BatchRemoteError.of(what, len(outcomes), errors,
                                      [None if i in errors else o for i, o in enumerate(outcomes)])
        return list(outcomes)  # type: ignore[arg-type]

    # -- generation --------------------------------------------------------------------------
    def _chat_payload(self, chat: Chat, params: GenerationParams) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": m["role"], "content": m["content"]} for m in chat],
            "n": params.n,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_new_tokens,
        }
        if params.seed is not None:
            payload["seed"] = params.seed
        if params.stop:
            payload["stop"] = list(params.stop)
        return payload

    async def _generate_one(self, run: _Run, chat: Chat, params: GenerationParams) -> Generation:
        payload = self._chat_payload(chat, params)
        path = "/v1/chat/completions"
        data = await self._request(run, path, payload, json.dumps(payload["messages"]))
        if not isinstance(data, dict):
            raise _shape_error(self.model, path, f"a JSON {type(data).__name__}, not an object")
        raw_choices = data.get("choices")
        if not isinstance(raw_choices, list) or not all(isinstance(ch, dict) for ch in raw_choices):
            raise _shape_error(self.model, path, "'choices' is not a list of objects")
        for k, ch in enumerate(raw_choices):
            msg = ch.get("message")
            if not isinstance(msg, dict) or not isinstance(msg.get("content"), (str, type(None))):
                raise _shape_error(self.model, path, f"choices[{k}].message is not an object with a string content")
            if not isinstance(ch.get("index", 0), int):
                raise _shape_error(self.model, path, f"choices[{k}].index is not an integer")
        choices = sorted(raw_choices, key=lambda ch: ch.get("index", 0))
        if len(choices) != params.n:
            raise RemoteError(f"{self.model}: asked for {params.n} samples, server returned {len(choices)}")
        usage = _usage(data)
        samples = tuple(
            Sample(
                text=ch["message"].get("content") or "",
                finish_reason=str(ch.get("finish_reason") or "unknown"),
                n_tokens=usage.n_completion_tokens if params.n == 1 else None,
            )
            for ch in choices
        )
        return Generation(samples=samples, usage=usage)

    def generate(self, chats: Sequence[Chat], params: GenerationParams) -> list[Generation]:
        """One Generation per chat via /v1/chat/completions, in input order (concurrent requests)."""
        chat_list = check_chats(chats)
        if not chat_list:
            return []
        return self._run(lambda run: self._gather([self._generate_one(run, c, params) for c in chat_list],
                                                  "generate"))

    # -- tokenisation ------------------------------------------------------------------------
    async def _tokenize(self, run: _Run, text: str, special: bool) -> list[int]:
        payload = {"model": self.model, "prompt": text, "add_special_tokens": special}
        data = await self._request(run, self._tokenize_path, payload, text)
        ids = data.get("tokens", data.get("input_ids")) if isinstance(data, dict) else None
        if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise _shape_error(self.model, self._tokenize_path, "no 'tokens' list of integers")
        limit = data.get("max_model_len")
        if isinstance(limit, int) and self._n_ctx is None:
            self._n_ctx = limit
        return [int(t) for t in ids]

    async def _tokenize_all(self, run: _Run, texts: list[str], special: bool) -> dict[str, list[int]]:
        uniq = list(dict.fromkeys(texts))
        ids = await self._gather([self._tokenize(run, t, special) for t in uniq], "tokenize")
        return dict(zip(uniq, ids))

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Continuation token counts (no special tokens) from the server's tokenizer."""
        t = check_texts(texts, "texts")
        if not t:
            return []
        ids = self._run(lambda run: self._tokenize_all(run, t, False))
        return [len(ids[x]) for x in t]

    # -- scoring -----------------------------------------------------------------------------
    async def _score_ids(self, run: _Run, mode: str, p_ids: list[int], c_ids: list[int], key: str) -> TokenLogprobs:
        if not c_ids:
            return TokenLogprobs((), ())
        ids = p_ids + c_ids
        start = len(p_ids)
        if mode == "sglang":
            payload = {"input_ids": ids, "sampling_params": {"max_new_tokens": 0, "temperature": 0.0},
                       "return_logprob": True, "logprob_start_len": start, "return_text_in_logprobs": False}
            data = await self._request(run, "/generate", payload, key)
            with self._shape("/generate"):
                lps = parse_sglang_logprobs(data, c_ids)
        else:
            payload = {"model": self.model, "prompt": ids, "max_tokens": 1, "temperature": 0.0}
            if mode == "completions-echo":
                payload.update(echo=True, logprobs=1)
            else:
                payload["prompt_logprobs"] = 0
            data = await self._request(run, "/v1/completions", payload, key)
            choices = (data.get("choices") or []) if isinstance(data, dict) else []
            if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
                raise _shape_error(self.model, "/v1/completions", "no 'choices' list of objects")
            parse = parse_echo_logprobs if mode == "completions-echo" else parse_prompt_logprobs
            with self._shape("/v1/completions"):
                lps = parse(choices[0], ids, start)
        return TokenLogprobs(tuple(c_ids), lps)

    def _check_lengths(self, pairs: list[tuple[list[int], list[int]]]) -> None:
        for i, (p, c) in enumerate(pairs):
            if not p and c:
                raise UsageError(
                    f"pair {i}: the prefix is empty and the tokenizer adds no BOS token, so the first "
                    "continuation token has no log-prob; give a non-empty prefix"
                )
            if self._n_ctx is not None and len(p) + len(c) + 1 > self._n_ctx:
                raise ContextTooLong(
                    f"pair {i}: {len(p)} prefix + {len(c)} continuation tokens (+1) exceed the server's "
                    f"max_model_len={self._n_ctx}; shorten the context or serve a longer context",
                    n_tokens=len(p) + len(c), max_tokens=self._n_ctx,
                )

    async def _score_texts(self, run: _Run, mode: str, prefixes: list[str], conts: list[str]) -> list[TokenLogprobs]:
        p_ids = await self._tokenize_all(run, prefixes, True)
        c_ids = await self._tokenize_all(run, conts, False)
        pairs = [(p_ids[p], c_ids[c]) for p, c in zip(prefixes, conts)]
        self._check_lengths(pairs)
        # Group by prefix: the first pair of each prefix goes alone (it fills the server's prefix
        # cache), then the rest of that prefix concurrently; prefixes proceed in parallel.
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(prefixes):
            groups.setdefault(p, []).append(i)
        results: list[Any] = [None] * len(prefixes)
        errors: dict[int, CompressbenchError] = {}

        async def one(i: int) -> None:
            try:
                results[i] = await self._score_ids(run, mode, pairs[i][0], pairs[i][1], prefixes[i])
            except CompressbenchError as exc:
                errors[i] = exc

        async def group(idx: list[int]) -> None:
            await one(idx[0])
            await asyncio.gather(*(one(i) for i in idx[1:]))

        await asyncio.gather(*(group(idx) for idx in groups.values()))
        if errors:
            raise BatchRemoteError.of("scoring", len(prefixes), errors, results)
        return results

    async def _probe(self, run: _Run) -> str:
        """Find a scoring path this server answers correctly; raise ScoringUnsupported if none."""
        if self._scoring_request == "none":
            raise ScoringUnsupported(
                f"{self.model} is configured with scoring='none' (generation only); "
                "choose another model as the scorer"
            )
        try:
            p = await self._tokenize(run, "The capital of France is", True)
            c = await self._tokenize(run, " Paris", False)
        except (RemoteError, BackendError) as exc:
            raise ScoringUnsupported(
                f"{self.model}: scoring needs the server's {self._tokenize_path} endpoint, which failed: {exc}. "
                "Use this model for generation only (scoring='none') or serve it with vllm serve / SGLang"
            ) from exc
        candidates = {
            "auto": ["completions", "completions-echo", "sglang"],
            "completions": ["completions", "completions-echo"],
            "sglang": ["sglang"],
        }[self._scoring_request]
        reasons = []
        for mode in candidates:
            try:
                tl = await self._score_ids(run, mode, p, c, "probe")
            except (RemoteError, BackendError) as exc:
                reasons.append(f"{mode}: {exc}")
                continue
            if tl.n_tokens == len(c) and all(math.isfinite(x) and x <= 1e-6 for x in tl.logprobs_nats):
                logger.info("%s scores through %s", self.model, mode)
                return mode
            reasons.append(f"{mode}: implausible log-probs {tl.logprobs_nats}")
        raise ScoringUnsupported(
            f"{self.model} cannot return prompt log-probs, so it cannot be the scorer "
            f"(tried {'; '.join(reasons)}). It can still be a compressor, predictor or judge"
        )

    def check_scoring(self) -> str:
        """Fail early: the scoring path this server supports, or ScoringUnsupported. Cached."""
        if self._scoring_mode is None:
            self._scoring_mode = self._run(self._probe)
        return self._scoring_mode

    def score(self, prefixes: Sequence[str], continuations: Sequence[str]) -> list[TokenLogprobs]:
        """``log p(continuations[i] tokens | prefixes[i])`` per token in nats, in input order."""
        p, c = check_pairs(prefixes, continuations)
        if not p:
            return []
        mode = self.check_scoring()
        return self._run(lambda run: self._score_texts(run, mode, p, c))

    def score_matrix(self, prefixes: Sequence[str], continuations: Sequence[str]) -> np.ndarray:
        """Entry [i, j] = total ``log p(continuations[j] | prefixes[i])`` in nats.

        Each prefix and each continuation is tokenised once; all pairs of a prefix go to one
        endpoint (its prefix cache), the first alone and the others concurrently.
        """
        p = check_texts(prefixes, "prefixes")
        c = check_texts(continuations, "continuations")
        out = np.empty((len(p), len(c)), dtype=np.float64)
        if not p or not c:
            return out
        mode = self.check_scoring()
        flat_p = [pp for pp in p for _ in c]
        flat_c = [cc for _ in p for cc in c]
        scored = self._run(lambda run: self._score_texts(run, mode, flat_p, flat_c))
        for k, tl in enumerate(scored):
            out[k // len(c), k % len(c)] = tl.total_nats
        return out

    def info(self) -> ModelInfo:
        """What the client knows: the model name, endpoints, and max_model_len once seen."""
        return ModelInfo(
            reference=f"openai:{self.model}",
            n_ctx=self._n_ctx,
            extra={"endpoints": self.endpoints, "scoring": self._scoring_mode or self._scoring_request},
        )
