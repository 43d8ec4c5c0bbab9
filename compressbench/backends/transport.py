"""The HTTP transport of the OpenAI-compatible backend: the endpoint pool (routing and per-endpoint
concurrency), the circuit breaker, retries with backoff and jitter, time limits, and one event loop
per batch. :mod:`compressbench.backends.openai_http` builds the requests and reads the answers;
everything about getting a request answered lives here.

Routing: each request goes to the endpoint chosen by weighted rendezvous hashing of its routing key
(the prefix text for scoring, the chat for generation), so every request sharing a scoring prefix
hits the same server and its prefix cache; an endpoint allowed twice the requests in flight gets
about twice the keys. At most the endpoint's limit of requests are in flight on it (a slot is held
only while an attempt is on the wire, never during a backoff wait).

Retries: 429, any 5xx, timeouts, connection errors and unreadable (truncated) JSON bodies are
retried up to ``max_retries`` times with exponential backoff and jitter: attempt a (0-based)
waits ``b/2 + U(0, b/2)`` seconds with ``b = min(backoff_max_s, backoff_initial_s * 2**a)``, or the
server's ``Retry-After`` (seconds or an HTTP date, capped at ``retry_after_max_s``) when that is
longer. Other 4xx are not retried. A final failure is a RemoteError carrying the HTTP status and
the server's message.

Time limits: each attempt has ``connect_timeout_s`` to connect and ``timeout_s`` for the response;
each request, retries and every wait included (a Retry-After too), ends after
``request_deadline_s`` from its first attempt: a wait that would pass the deadline is not started,
the request fails at once naming the deadline.

Circuit breaker (per endpoint), on failures in time order: a failure counts towards an endpoint's
streak only when its attempt was sent after the streak's last counted failure was seen, so the
failures of requests that were in flight together count once (one incident, not "3 in a row"),
and any success resets the streak. After ``endpoint_max_failures`` (3) counted connection
failures or timeouts in a row, the endpoint is out of service for ``endpoint_cooldown_s`` (60 s);
after the cool-down one more such failure takes it out again at once. While another endpoint is
in service, ``endpoint_max_failures`` counted endpoint faults of any kind (5xx included) take an
endpoint out, and retries of its requests hash to the others. With every endpoint out, requests
fail at once (no retries, no waiting) with :class:`EndpointsDown` naming the endpoints and the last
cause. So retries get their chance first: a refused endpoint fails a batch after about three
backoff rounds (about 1-2 s with the defaults), a hung one after about three ``timeout_s``; a
flaky one (say 1 request in 3 reset, retries succeeding) is never taken out.

Secrets: every message produced here passes through
:func:`compressbench.backends.secrets.redact` (the key and any piece of it) before it is cut to
length.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
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
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from compressbench.backends.secrets import redact
from compressbench.core.errors import (
    BatchRemoteError,
    CompressbenchError,
    ContextTooLong,
    EndpointsDown,
    RemoteError,
    UsageError,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

_CONTEXT_RE = re.compile(r"context length|maximum model length|max_model_len|too long", re.IGNORECASE)
SERVER_MESSAGE_MAX_CHARS = 500
#: Server bodies longer than this are cut before redaction (only the first 500 characters are kept
#: afterwards, so a key piece cut off here can never reach a message).
_SERVER_BODY_SCAN_CHARS = 1 << 16


def clip(text: str, limit: int = SERVER_MESSAGE_MAX_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text) - limit} more characters)"


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
    max_in_flight: int = 0  # the most attempts on the wire at once (all endpoints)


@dataclass
class Endpoint:
    root: str  # the real URL root (may hold credentials: never shown)
    shown: str  # the root as shown in messages, logs and info() (credentials redacted)
    limit: int  # requests in flight at most
    failures: int = 0  # counted endpoint faults in a row (5xx, timeouts, connection errors)
    dead: int = 0  # counted timeouts and connection errors in a row (the circuit breaker)
    last_fault_at: float = -math.inf  # time.monotonic() when the streak's last counted fault was seen
    down_until: float = 0.0  # time.monotonic() before which the endpoint is out of service
    tripped: bool = False  # taken out since its last success: one more dead attempt takes it out again
    last_error: str = ""


class Retryable(Exception):
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


def rendezvous_score(key: str, root: str, weight: float) -> float:
    """Weighted rendezvous hashing: ``-weight / ln(u)`` with ``u`` in (0, 1) from SHA-256 of
    (key, endpoint). The endpoint with the highest score gets the key, so each endpoint gets a
    share of the keys proportional to its weight (its concurrency limit), and removing an
    endpoint moves only its own keys. Equal weights reduce to plain rendezvous hashing."""
    h = int.from_bytes(hashlib.sha256(f"{key}\0{root}".encode()).digest()[:8], "big")
    return -weight / math.log((h + 0.5) / 2.0**64)


def transport_cause(exc: BaseException) -> str:
    """``ConnectError: ... (Connection refused)``: the httpx error and the OS error beneath it, if any."""
    text = f"{type(exc).__name__}: {exc}"
    inner: BaseException | None = exc
    for _ in range(8):
        inner = inner.__cause__ or inner.__context__ if inner is not None else None
        if isinstance(inner, OSError) and inner.errno:
            why = os.strerror(inner.errno)
            return text if why in text else f"{text}: {why}"
    return text


def root_url(url: str) -> str:
    """The server root of ``url`` (without a trailing ``/v1``); UsageError unless http(s)."""
    if not isinstance(url, str) or not re.match(r"^https?://", url):
        raise UsageError(f"base URL {url!r} must start with http:// or https:// (e.g. http://127.0.0.1:8000/v1)")
    root = url.rstrip("/")
    if root.endswith("/v1"):
        root = root[: -len("/v1")]
    return root


def server_message(resp: httpx.Response) -> str:
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


async def within(aw: Awaitable[T], seconds: float) -> T:
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


class EndpointPool:
    """The endpoints of one backend: routing, in-service state and the circuit breaker."""

    def __init__(self, model: str, roots: Sequence[str], limits: Mapping[str, int], *, max_failures: int,
                 cooldown_s: float, secrets: Sequence[str] = ()):
        if cooldown_s < 0:
            raise UsageError(f"endpoint_cooldown_s must be >= 0, got {cooldown_s}")
        if max_failures < 1:
            raise UsageError(f"endpoint_max_failures must be >= 1, got {max_failures}")
        self.model = model
        self._secrets = tuple(secrets)
        self.endpoints = [Endpoint(r, self.redact(r), int(limits[r])) for r in roots]
        self.max_failures = max_failures
        self.cooldown_s = cooldown_s

    def redact(self, text: str) -> str:
        return redact(text, self._secrets)

    def shown(self) -> list[str]:
        return [e.shown for e in self.endpoints]

    def in_service(self) -> list[str]:
        now = time.monotonic()
        return [e.shown for e in self.endpoints if e.down_until <= now]

    def pick(self, key: str) -> Endpoint:
        """The live endpoint for ``key``; with none in service, EndpointsDown at once."""
        now = time.monotonic()
        live = [e for e in self.endpoints if e.down_until <= now]
        if not live:
            last = max(self.endpoints, key=lambda e: e.down_until)
            wait = max(0.0, min(e.down_until for e in self.endpoints) - now)
            raise EndpointsDown(
                self.redact(
                    f"{self.model}: every endpoint is out of service after repeated connection failures or "
                    f"timeouts ({', '.join(self.shown())}; back in {wait:.0f} s); last error on {last.shown}: "
                    f"{last.last_error}. Check that the server is running and reachable at base_url"
                ),
                server_message=last.last_error or None,
            )
        return max(live, key=lambda e: rendezvous_score(key, e.root, e.limit))

    def note_success(self, ep: Endpoint) -> None:
        ep.failures = ep.dead = 0
        ep.tripped = False

    def note_failure(self, ep: Endpoint, exc: Retryable, sent_at: float) -> bool:
        """Count an endpoint fault of an attempt sent at ``sent_at`` (``time.monotonic()``); take
        the endpoint out (circuit breaker) when due. True when this took it out."""
        if not exc.endpoint_fault:
            return False
        ep.last_error = self.redact(str(exc))
        if sent_at < ep.last_fault_at:
            return False  # in flight when the streak's last fault was seen: the same incident
        now = time.monotonic()
        ep.last_fault_at = now
        dead = exc.reason in ("timeout", "connection")
        ep.failures += 1
        ep.dead = ep.dead + 1 if dead else 0
        if ep.down_until > now:
            return False  # already out (another request took it out)
        others = [e for e in self.endpoints if e is not ep and e.down_until <= now]
        k = self.max_failures
        if dead and ep.dead >= k:
            why = f"{ep.dead} connection failures or timeouts in a row"
        elif dead and ep.tripped:
            why = "failed again after its cool-down"
        elif ep.failures >= k and others:
            why = f"{ep.failures} failures in a row"
        else:
            return False
        ep.down_until = now + self.cooldown_s
        ep.failures = ep.dead = 0
        ep.tripped = True
        logger.warning(
            "endpoint %s: %s (last: %s); out of service for %.0f s%s", ep.shown, why, ep.last_error,
            self.cooldown_s,
            f", its requests go to {[e.shown for e in others]}" if others else
            "; with no endpoint left, requests fail at once until then",
        )
        return True


@dataclass
class Batch:
    """Per-batch state living in one event loop."""

    client: httpx.AsyncClient
    sem: dict[str, asyncio.Semaphore]
    in_flight: int = 0


class HTTPTransport:
    """POSTs JSON to the pool's endpoints with retries, time limits and the breaker (see the module
    docstring). ``transport``: an ``httpx.AsyncBaseTransport`` instead of the network (tests)."""

    def __init__(self, pool: EndpointPool, retry: RetryPolicy, *, timeout_s: float, connect_timeout_s: float,
                 request_deadline_s: float | None, api_key: str | None = None,
                 transport: httpx.AsyncBaseTransport | None = None, jitter_seed: int | None = None):
        if not timeout_s > 0 or not connect_timeout_s > 0:
            raise UsageError(f"timeout_s and connect_timeout_s must be > 0, got {timeout_s} and {connect_timeout_s}")
        if request_deadline_s is not None and not request_deadline_s > 0:
            raise UsageError(f"request_deadline_s must be > 0 or None, got {request_deadline_s}")
        self.pool = pool
        self.model = pool.model
        self.retry = retry
        self.timeout_s = float(timeout_s)
        self.connect_timeout_s = float(connect_timeout_s)
        self.deadline_s = None if request_deadline_s is None else float(request_deadline_s)
        self._api_key = api_key
        self._transport = transport
        self._rng = random.Random(jitter_seed)
        self._ssl: Any = None  # the TLS context shared by every batch's client (built on first use)
        self.stats = RequestStats()

    def redact(self, text: str) -> str:
        return self.pool.redact(text)

    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json"}
        if self._api_key:
            h["Authorization"] = f"Bearer {self._api_key}"
        return h

    def run(self, body: Callable[[Batch], Awaitable[T]]) -> T:
        """Run one batch coroutine on a fresh event loop (a worker thread if one is running here)."""
        if self._ssl is None:  # built once: loading the CA bundle costs ~0.1-0.4 s per client
            self._ssl = httpx.create_ssl_context()
        total = sum(e.limit for e in self.pool.endpoints)

        async def main() -> T:
            client = httpx.AsyncClient(
                transport=self._transport,
                verify=self._ssl,
                timeout=httpx.Timeout(self.timeout_s, connect=self.connect_timeout_s),
                limits=httpx.Limits(max_connections=total, max_keepalive_connections=total),
            )
            batch = Batch(client, {e.root: asyncio.Semaphore(e.limit) for e in self.pool.endpoints})
            try:
                return await body(batch)
            finally:
                if self._transport is None:
                    await client.aclose()

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(main())
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, main()).result()

    async def gather(self, coros: list[Awaitable[T]], what: str) -> list[T]:
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

    async def request(self, batch: Batch, path: str, payload: dict[str, Any], key: str) -> tuple[Any, Endpoint]:
        """POST ``payload`` to ``path`` on the endpoint for ``key``, with retries: (parsed JSON, the
        endpoint that answered).

        Ends after ``max_retries`` retries or ``request_deadline_s`` from the first attempt, whichever
        comes first; fails at once (EndpointsDown) when every endpoint is out of service.
        """
        stats = self.stats
        stats.n_requests += 1
        last: Retryable | None = None
        deadline: float | None = None
        n_attempts = 0
        for attempt in range(self.retry.max_retries + 1):
            try:
                ep = self.pool.pick(key)
                await batch.sem[ep.root].acquire()
                while ep.down_until > time.monotonic():  # taken out while this request waited for a slot
                    batch.sem[ep.root].release()
                    ep = self.pool.pick(key)
                    await batch.sem[ep.root].acquire()
            except EndpointsDown:
                stats.n_failed += 1
                if last is None:
                    stats.n_fast_failed += 1
                raise
            sent_at = time.monotonic()
            try:
                try:
                    if deadline is None and self.deadline_s is not None:
                        deadline = sent_at + self.deadline_s
                    remaining = math.inf if deadline is None else deadline - sent_at
                    if remaining <= 0:
                        break
                    stats.n_attempts += 1
                    n_attempts += 1
                    batch.in_flight += 1
                    stats.max_in_flight = max(stats.max_in_flight, batch.in_flight)
                    timeout = httpx.Timeout(min(self.timeout_s, remaining),
                                            connect=min(self.connect_timeout_s, remaining))
                    post = batch.client.post(ep.root + path, json=payload, headers=self._headers(), timeout=timeout)
                    try:
                        resp = await (post if deadline is None else within(post, remaining))
                    finally:
                        batch.in_flight -= 1
                finally:
                    batch.sem[ep.root].release()
                data = self._handle(resp, path)
            except Retryable as exc:
                last = exc
            except (httpx.TimeoutException, asyncio.TimeoutError) as exc:
                last = Retryable("timeout", f"no answer within {min(self.timeout_s, remaining):.3g} s "
                                            f"({type(exc).__name__}) from {ep.shown}")
            except httpx.TransportError as exc:
                last = Retryable("connection", f"connection to {ep.shown} failed ({transport_cause(exc)})")
            except CompressbenchError:
                stats.n_failed += 1
                raise
            else:
                self.pool.note_success(ep)
                return data, ep
            if self.pool.note_failure(ep, last, sent_at):
                stats.n_breaker_trips += 1
            if attempt == self.retry.max_retries:
                break
            delay = self.retry.delay_s(attempt, last.retry_after_s, self._rng)
            if deadline is not None and time.monotonic() + delay >= deadline:
                break  # the wait (a Retry-After too) counts against the request's deadline
            stats.n_retries += 1
            stats.retry_reasons[last.reason] += 1
            stats.retry_delays_s.append(delay)
            logger.info("%s on %s%s: %s; retry %d in %.3f s", last.reason, ep.shown, path,
                        self.redact(str(last)), attempt + 1, delay)
            await asyncio.sleep(delay)
        stats.n_failed += 1
        out_of_time = deadline is not None and n_attempts < self.retry.max_retries + 1
        if out_of_time:
            stats.n_deadline += 1
        why = (f"gave up after {n_attempts} attempt(s) at the request deadline of {self.deadline_s:g} s"
               if out_of_time else f"failed after {n_attempts} attempts")
        cause = str(last) if last is not None else "no attempt could start before the deadline"
        if out_of_time and last is not None and last.retry_after_s is not None:
            cause += f" (the server asked to wait {last.retry_after_s:g} s, Retry-After)"
        status = last.status if last is not None else None
        raise RemoteError(
            self.redact(
                f"{self.model}: POST {path} {why}; last error: {cause}" + (f" (HTTP {status})" if status else "")
                + ". Check the server's health and logs, or raise max_retries/timeout_s/request_deadline_s"
            ),
            status=status,
            server_message=self.redact(cause),
        )

    def _handle(self, resp: httpx.Response, path: str) -> Any:
        status = resp.status_code
        if 200 <= status < 300:
            try:
                return json.loads(resp.content)
            except ValueError:
                raise Retryable("bad_json", f"unreadable JSON body ({len(resp.content)} bytes)",
                                status=status) from None
        message = clip(self.redact(server_message(resp)))  # redact first, then cut
        if status == 429 or status >= 500:
            raise Retryable(
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


__all__ = ["Batch", "Endpoint", "EndpointPool", "HTTPTransport", "RequestStats", "RetryPolicy", "clip",
           "parse_retry_after", "rendezvous_score", "root_url", "transport_cause", "within"]
