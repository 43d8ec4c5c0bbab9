"""A minimal OpenAI-compatible HTTP server for tests, on 127.0.0.1 with a real socket.

Its "model" is a small, exactly computable byte-level language model (``ToyModel``), so tests can
compare what the client returns with values computed directly from the model, independently of
any HTTP or parsing code.

Routes (the shapes vLLM and SGLang use):
- ``GET /health``, ``GET /v1/models``
- ``POST /tokenize``: ``{"prompt", "add_special_tokens"}`` -> ``{"tokens", "count", "max_model_len"}``
- ``POST /v1/chat/completions``: deterministic replies; usage unless ``omit_usage``
- ``POST /v1/completions``: token-id or text prompts; ``prompt_logprobs`` (vLLM) and
  ``echo`` + ``logprobs`` (classic OpenAI) when enabled
- ``POST /generate``: SGLang's native route with ``input_ids``, ``return_logprob``,
  ``logprob_start_len`` -> ``meta_info.input_token_logprobs = [[logprob, id, None], ...]``

Switches turn capabilities off (to look like a chat-only API) or require an API key (and, like
some real APIs, echo the wrong key back in the 401 message); ``echo_key`` makes every reply end
with the request's key (a model repeating its prompt's secrets); ``bad_logprob`` replaces the last
prompt log-prob of scoring answers (all of them, or those whose prompt bytes hold
``bad_logprob_marker``) with that value (NaN, +-inf or a positive number, as a broken server might). Every request is logged in
``server.log`` as ``(path, body)``; ``server.max_in_flight`` is the most POSTs it answered at once (``max_route_in_flight[route]``
per route)
(``delay_s`` holds each one, to make overlap observable). The server stops itself after
``max_lifetime_s``. ``delay_routes`` limits ``delay_s`` to those routes.
"""

from __future__ import annotations

import json
import math
import threading
from collections import Counter
import time
from dataclasses import dataclass, field
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class ToyModel:
    """Byte-level LM: token ids are UTF-8 bytes 0..255, BOS = 256, vocabulary 257.

    logit(v | history) = ((7 * prev + 13 * v + 5 * pos) mod 23) / 4 + ((prev * v) mod 7) / 5, where
    prev is the last token of the history and pos its length; log p = logit - logsumexp(logits) (nats).
    """

    BOS = 256
    VOCAB = 257

    def tokenize(self, text: str, add_special_tokens: bool) -> list[int]:
        return ([self.BOS] if add_special_tokens else []) + list(text.encode("utf-8"))

    @staticmethod
    @lru_cache(maxsize=None)
    def _log_z(prev: int, pos_mod: int) -> float:
        logits = [ToyModel.logit(prev, pos_mod, v) for v in range(ToyModel.VOCAB)]
        m = max(logits)
        return m + math.log(sum(math.exp(x - m) for x in logits))

    @staticmethod
    def logit(prev: int, pos: int, v: int) -> float:
        return ((7 * prev + 13 * v + 5 * pos) % 23) / 4 + ((prev * v) % 7) / 5

    def logprob(self, history: list[int], token: int) -> float:
        prev, pos = history[-1], len(history)
        return self.logit(prev, pos, token) - self._log_z(prev, pos % 23)

    def prompt_logprobs(self, ids: list[int]) -> list[float | None]:
        # logprob(ids[:k], ids[k]) without copying each history (it reads only its last token and length)
        return [None] + [self.logit(ids[k - 1], k, ids[k]) - self._log_z(ids[k - 1], k % 23)
                         for k in range(1, len(ids))]

    def reply(self, messages: list[dict[str, str]], sample: int, seed: int | None, max_tokens: int) -> tuple[str, str]:
        """A deterministic reply: it names the sample index and echoes the last user message."""
        last = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
        text = f"[{sample}:{seed}] {last}"
        data = text.encode("utf-8")
        if len(data) > max_tokens:
            return data[:max_tokens].decode("utf-8", errors="ignore"), "length"
        return text, "stop"


@dataclass
class ToyConfig:
    model_name: str = "toy"
    prompt_logprobs: bool = True
    echo: bool = True
    sglang: bool = True
    tokenize: bool = True
    omit_usage: bool = False
    api_key: str | None = None  # when set, requests need "Authorization: Bearer <key>"
    max_model_len: int = 4096
    cached_prompt_tokens: int | None = None  # report this many prompt tokens as cached (prefix cache)
    max_lifetime_s: float = 600.0
    delay_s: float = 0.0  # each POST holds its request this long (to observe concurrency)
    delay_routes: tuple[str, ...] | None = None  # only these routes are delayed (None: every POST)
    echo_key: bool = False  # chat replies end with the request's API key
    bad_logprob: float | None = None  # the last prompt log-prob of scoring answers becomes this
    bad_logprob_marker: str | None = None  # ... only where the prompt's bytes hold this text
    extra: dict[str, Any] = field(default_factory=dict)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "ToyServer"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (keep test output clean)
        return

    def _send(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        self._send(status, {"error": {"message": message, "type": "invalid_request_error", "code": status}})

    def do_GET(self) -> None:  # noqa: N802
        cfg = self.server.config
        if self.path == "/health":
            self._send(200, {})
        elif self.path == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": cfg.model_name, "max_model_len": cfg.max_model_len}]})
        else:
            self._error(404, f"no route {self.path}")

    def do_POST(self) -> None:  # noqa: N802
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n)
        try:
            body = json.loads(raw)
        except ValueError:
            self._error(400, "body is not JSON")
            return
        with self.server.lock:
            self.server.log.append((self.path, body))
        cfg = self.server.config
        if cfg.api_key is not None and self.headers.get("Authorization") != f"Bearer {cfg.api_key}":
            given = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
            self._error(401, f"Incorrect API key provided: {given}. You can find your API key in your account.")
            return
        route = {
            "/tokenize": self._tokenize,
            "/v1/chat/completions": self._chat,
            "/v1/completions": self._completions,
            "/generate": self._generate,
        }.get(self.path)
        if route is None:
            self._error(404, f"no route {self.path}")
            return
        with self.server.lock:
            self.server.in_flight += 1
            self.server.max_in_flight = max(self.server.max_in_flight, self.server.in_flight)
            self.server.route_in_flight[self.path] += 1
            self.server.max_route_in_flight[self.path] = max(self.server.max_route_in_flight[self.path],
                                                             self.server.route_in_flight[self.path])
        try:
            if cfg.delay_s and (cfg.delay_routes is None or self.path in cfg.delay_routes):
                time.sleep(cfg.delay_s)
            route(body)
        finally:
            with self.server.lock:
                self.server.in_flight -= 1
                self.server.route_in_flight[self.path] -= 1

    def _spoil(self, ids: list[int], lps: list[float | None]) -> list[float | None]:
        """``lps`` with its last entry replaced by ``bad_logprob`` where the config asks for it."""
        cfg = self.server.config
        if cfg.bad_logprob is None or len(lps) < 2:
            return lps
        if cfg.bad_logprob_marker is not None and cfg.bad_logprob_marker.encode() not in bytes(t for t in ids if t < 256):
            return lps
        return lps[:-1] + [cfg.bad_logprob]

    def _tokenize(self, body: dict[str, Any]) -> None:
        cfg = self.server.config
        if not cfg.tokenize:
            self._error(404, "Not Found")
            return
        ids = self.server.model.tokenize(body["prompt"], bool(body.get("add_special_tokens", True)))
        self._send(200, {"tokens": ids, "count": len(ids), "max_model_len": cfg.max_model_len})

    def _chat(self, body: dict[str, Any]) -> None:
        model, cfg = self.server.model, self.server.config
        if body.get("model") != cfg.model_name:
            self._error(404, f"The model `{body.get('model')}` does not exist.")
            return
        n, max_tokens = int(body.get("n", 1)), int(body.get("max_tokens", 16))
        messages = body["messages"]
        choices, n_completion = [], 0
        key = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
        for i in range(n):
            text, finish = model.reply(messages, i, body.get("seed"), max_tokens)
            if cfg.echo_key:
                text += f" (my key is {key}; again: Bearer {key})"
            n_completion += len(text.encode("utf-8"))
            choices.append({"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": finish})
        n_prompt = sum(len(m["content"].encode("utf-8")) for m in messages)
        out: dict[str, Any] = {"id": "chatcmpl-toy", "object": "chat.completion", "model": cfg.model_name,
                               "choices": choices[::-1]}  # reversed on purpose: clients must sort by index
        if not cfg.omit_usage:
            out["usage"] = {"prompt_tokens": n_prompt, "completion_tokens": n_completion,
                            "total_tokens": n_prompt + n_completion}
            if cfg.cached_prompt_tokens is not None:
                out["usage"]["prompt_tokens_details"] = {"cached_tokens": min(cfg.cached_prompt_tokens, n_prompt)}
        self._send(200, out)

    def _completions(self, body: dict[str, Any]) -> None:
        model, cfg = self.server.model, self.server.config
        prompt = body["prompt"]
        ids = prompt if isinstance(prompt, list) else model.tokenize(prompt, True)
        if len(ids) + int(body.get("max_tokens", 16)) > cfg.max_model_len:
            self._error(400, f"This model's maximum context length is {cfg.max_model_len} tokens.")
            return
        choice: dict[str, Any] = {"index": 0, "text": "x", "finish_reason": "length"}
        if body.get("prompt_logprobs") is not None:
            if not cfg.prompt_logprobs:
                self._error(400, "Unrecognized request argument supplied: prompt_logprobs")
                return
            choice["prompt_logprobs"] = [
                None if lp is None else {str(t): {"logprob": lp, "rank": 1, "decoded_token": "?"}}
                for t, lp in zip(ids, self._spoil(ids, model.prompt_logprobs(ids)))
            ]
        if body.get("echo"):
            if not cfg.echo:
                self._error(400, "echo is not supported with logprobs")
                return
            choice["logprobs"] = {"tokens": [str(t) for t in ids] + ["x"],
                                  "token_logprobs": self._spoil(ids, model.prompt_logprobs(ids)) + [-1.0]}
        out = {"id": "cmpl-toy", "object": "text_completion", "model": cfg.model_name, "choices": [choice]}
        if not cfg.omit_usage:
            out["usage"] = {"prompt_tokens": len(ids), "completion_tokens": 1, "total_tokens": len(ids) + 1}
        self._send(200, out)

    def _generate(self, body: dict[str, Any]) -> None:
        model, cfg = self.server.model, self.server.config
        if not cfg.sglang:
            self._error(404, "Not Found")
            return
        ids = body["input_ids"]
        start = int(body.get("logprob_start_len", -1))
        meta: dict[str, Any] = {"prompt_tokens": len(ids), "completion_tokens": 0, "cached_tokens": 0}
        if body.get("return_logprob"):
            lps = self._spoil(ids, model.prompt_logprobs(ids))
            start = max(start, 0)
            meta["input_token_logprobs"] = [[lps[k], ids[k], None] for k in range(start, len(ids))]
            meta["output_token_logprobs"] = []
        self._send(200, {"text": "", "meta_info": meta})


class ToyServer(ThreadingHTTPServer):
    """``with ToyServer(ToyConfig()) as srv: srv.url`` serves on a free 127.0.0.1 port in a thread."""

    daemon_threads = True
    request_queue_size = 128  # the default backlog of 5 drops connections under concurrent tests

    def __init__(self, config: ToyConfig | None = None, port: int = 0):
        super().__init__(("127.0.0.1", port), _Handler)
        self.config = config or ToyConfig()
        self.model = ToyModel()
        self.log: list[tuple[str, dict[str, Any]]] = []
        self.in_flight = 0  # POSTs being answered now
        self.max_in_flight = 0  # the most POSTs answered at once so far
        self.route_in_flight: Counter = Counter()  # the same, per route
        self.max_route_in_flight: Counter = Counter()
        self.lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._timer = threading.Timer(self.config.max_lifetime_s, self.stop)
        self._timer.daemon = True

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "ToyServer":
        self._thread.start()
        self._timer.start()
        return self

    def stop(self) -> None:
        self._timer.cancel()
        if self._thread.is_alive():
            self.shutdown()
        self.server_close()

    def paths(self) -> list[str]:
        with self.lock:
            return [p for p, _ in self.log]

    def __enter__(self) -> "ToyServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
