"""A loopback HTTP/1.1 proxy that injects faults, for retry tests with real sockets.

``FaultProxy(upstream_port, FaultPlan(rate=0.2, seed=0))`` listens on a free 127.0.0.1 port and
forwards each request to ``127.0.0.1:upstream_port``, except that a seeded share ``rate`` of
requests get one of these faults instead:

- ``"429"``: HTTP 429 with ``Retry-After: plan.retry_after`` (0) and an OpenAI-style error body;
- ``"500"``: HTTP 500 with an error body;
- ``"reset"``: the connection is reset (RST, SO_LINGER 0) without a response;
- ``"stall"``: no response for ``stall_s`` seconds (past the client's timeout), then close;
- ``"truncate"``: the upstream's response with its JSON body cut in half (Content-Length fixed
  up, so the HTTP message is complete but the JSON is not);
- ``"hang"``: the request is read and never answered (a hung server); the connection stays open
  until the client gives up;
- ``"wrong_shape"``: HTTP 200 with valid JSON of the wrong shape, one of ``plan.wrong_shape_bodies``
  (``[1,2,3]``, ``{"choices":[{"message":"oops"}]}``, ...);
- ``"echo_auth"``: HTTP ``plan.echo_status`` whose error message holds the request's
  ``Authorization`` value (the API key) after ``n`` filler characters, ``n`` taken in turn from
  ``plan.echo_offsets`` (servers that echo a key back, at offsets around any cut a client makes).

A refused endpoint (nothing listening) is :func:`refused_url`.

Decisions are deterministic whatever the arrival order: the k-th time the proxy sees a given
(request line, body) it hashes (seed, request line, body, k). Bodies containing ``poison`` always
get a 500; with ``only`` set, bodies without it never get a fault; with ``first_only`` set, only
the first time a (request line, body) is seen can it get a fault (every retry is answered); with ``route`` set, only
requests to that path can get one. Counters: ``injected`` (per kind), ``n_requests``, ``seen`` (per body). The proxy runs
its own event loop on a daemon thread and stops itself after ``max_lifetime_s``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import struct
import threading
from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class FaultPlan:
    rate: float = 0.2
    seed: int = 0
    kinds: tuple[str, ...] = ("429", "500", "reset", "stall", "truncate")
    stall_s: float = 1.0
    poison: bytes | None = b"POISON"
    wrong_shape_bodies: tuple[bytes, ...] = (
        b"[1,2,3]", b'{"choices":[{"message":"oops"}]}', b'{"choices":"none"}', b'"just a string"',
        b'{"tokens":"abc"}', b'{"choices":[{"prompt_logprobs":[null,{"x":1}]}]}', b"null",
    )
    only: bytes | None = None  # when set, only requests whose body contains it can get a fault
    route: str | None = None  # when set, only requests to this path can get a fault (poison included)
    first_only: bool = False  # when set, only a body's first attempt can get a fault
    retry_after: str = "0"  # the Retry-After header of injected 429s
    echo_status: int = 401
    echo_offsets: tuple[int, ...] = (0, 470, 490, 495, 499, 500, 505, 1000)


def _response(status: int, reason: str, body: bytes, extra: dict[str, str] | None = None) -> bytes:
    head = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in (extra or {}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


class FaultProxy:
    def __init__(self, upstream_port: int, plan: FaultPlan | None = None, max_lifetime_s: float = 300.0):
        self.upstream_port = upstream_port
        self.plan = plan or FaultPlan()
        self.max_lifetime_s = max_lifetime_s
        self.injected: Counter = Counter()
        self.seen: Counter = Counter()
        self.n_requests = 0
        self.n_echoed = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self.port = 0

    # -- lifecycle ---------------------------------------------------------------------------
    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._loop.call_later(self.max_lifetime_s, self._loop.stop)
        self._ready.set()
        self._loop.run_forever()
        self._server.close()
        tasks = asyncio.all_tasks(self._loop)
        for t in tasks:
            t.cancel()
        self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self._loop.close()

    def start(self) -> "FaultProxy":
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fault proxy did not start")
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def n_injected(self) -> int:
        return sum(self.injected.values())

    # -- decisions ---------------------------------------------------------------------------
    def _decide(self, request_line: str, body: bytes) -> str | None:
        with self._lock:
            self.n_requests += 1
            key = request_line.encode() + b"\0" + body
            k = self.seen[key]
            self.seen[key] += 1
            if self.plan.route is not None and f" {self.plan.route} " not in request_line:
                return None
            if self.plan.poison and self.plan.poison in body:
                self.injected["poison"] += 1
                return "poison"
            if self.plan.only is not None and self.plan.only not in body:
                return None
            if self.plan.first_only and k > 0:
                return None
            h = hashlib.sha256(f"{self.plan.seed}\0{k}\0".encode() + key).digest()
            if int.from_bytes(h[:8], "big") / 2**64 >= self.plan.rate:
                return None
            kind = self.plan.kinds[int.from_bytes(h[8:16], "big") % len(self.plan.kinds)]
            self.injected[kind] += 1
            return kind

    # -- I/O ---------------------------------------------------------------------------------
    async def _forward(self, request_line: str, headers: list[str], body: bytes) -> tuple[str, list[str], bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        try:
            kept = [h for h in headers if not h.lower().startswith(("connection:", "keep-alive:"))]
            writer.write(("\r\n".join([request_line, *kept, "Connection: close"]) + "\r\n\r\n").encode("latin-1") + body)
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
        head, _, resp_body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        return lines[0], lines[1:], resp_body

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
                request_line, headers = lines[0], lines[1:]
                length = next((int(h.split(":", 1)[1]) for h in headers if h.lower().startswith("content-length:")), 0)
                body = await reader.readexactly(length)
                fault = self._decide(request_line, body)
                if fault == "hang":
                    await reader.read()  # until the client closes the connection
                    return
                if fault == "wrong_shape":
                    bodies = self.plan.wrong_shape_bodies
                    pick = int.from_bytes(hashlib.sha256(request_line.encode() + body).digest()[:4], "big")
                    writer.write(_response(200, "OK", bodies[pick % len(bodies)]))
                    await writer.drain()
                    continue
                if fault == "echo_auth":
                    auth = next((h.split(":", 1)[1].strip() for h in headers if h.lower().startswith("authorization:")),
                                "")
                    with self._lock:
                        offset = self.plan.echo_offsets[self.n_echoed % len(self.plan.echo_offsets)]
                        self.n_echoed += 1
                    msg = "x" * offset + f" Incorrect API key provided: {auth.removeprefix('Bearer ')} (header {auth})"
                    err = json.dumps({"error": {"message": msg}}).encode()
                    writer.write(_response(self.plan.echo_status, "Error", err))
                    await writer.drain()
                    continue
                if fault == "reset":
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return
                if fault == "stall":
                    await asyncio.sleep(self.plan.stall_s)
                    writer.transport.abort()
                    return
                if fault == "429":
                    err = json.dumps({"error": {"message": "rate limit reached (injected)"}}).encode()
                    writer.write(_response(429, "Too Many Requests", err, {"Retry-After": self.plan.retry_after}))
                elif fault in ("500", "poison"):
                    err = json.dumps({"error": {"message": f"internal error (injected {fault})"}}).encode()
                    writer.write(_response(500, "Internal Server Error", err))
                else:
                    status_line, resp_headers, resp_body = await self._forward(request_line, headers, body)
                    if fault == "truncate":
                        resp_body = resp_body[: len(resp_body) // 2]
                    kept = [h for h in resp_headers
                            if not h.lower().startswith(("content-length:", "connection:", "keep-alive:"))]
                    out = [status_line, *kept, f"Content-Length: {len(resp_body)}"]
                    writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + resp_body)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return  # a client that went away, or the proxy stopping
        finally:
            if not writer.transport.is_closing():
                writer.close()


def refused_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connections are refused): a free port, closed again."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"
