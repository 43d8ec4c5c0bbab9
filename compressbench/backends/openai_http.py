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

Transport (:mod:`compressbench.backends.transport`): routing by rendezvous hashing of each
request's key (the prefix text for scoring, the chat for generation) over the ``endpoints``,
weighted by their concurrency limits; retries of 429/5xx/timeouts/connection errors/truncated JSON
with backoff and jitter (Retry-After honoured up to ``retry_after_max_s`` and counted against
``request_deadline_s``); per-attempt ``timeout_s``/``connect_timeout_s``; the per-endpoint circuit
breaker on failures in time order. Other 4xx are not retried. A final failure is a RemoteError
carrying the HTTP status and the server's message.

Answers are checked: a 200 response whose JSON has the wrong shape (a list, a message that is not
an object, ...) or whose log-probs are NaN, infinite or above 0 fails that request (not retried)
with a :class:`MalformedResponse` naming the model, the endpoint, and what was wrong where (the
token position for a log-prob).

Secrets: the API key is read from the environment (``api_key_env``) and sent only in the
``Authorization`` header. Every message this backend produces (errors, logs, ``info()``) and every
text the model returns (each generated sample) is passed through
:func:`compressbench.backends.secrets.redact` *before* it is cut to length, stored or cached: the
key itself and any 8-character piece of it, ``Authorization``/``Bearer`` values, ``sk-...`` keys,
passwords in URLs and credential query parameters become ``[redacted]``.

Per-request errors in a batch: every request of a batch runs to its own end (one failure does not
cancel the others). If any request failed for good, the batch call raises ``BatchRemoteError``
(a RemoteError) whose ``errors`` maps each failed input index to its error and whose ``results``
holds the results of the requests that succeeded (None at failed indices).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from compressbench.backends.base import BaseBackend, check_chats, check_pairs, check_texts
from compressbench.backends.transport import (
    Batch,
    EndpointPool,
    HTTPTransport,
    RequestStats,
    RetryPolicy,
    root_url,
)
from compressbench.core.errors import (
    BackendError,
    BatchRemoteError,
    CompressbenchError,
    ContextTooLong,
    MalformedResponse,
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
from compressbench.backends.vllm import prompt_logprobs_slice

logger = logging.getLogger(__name__)

T = TypeVar("T")

SCORING_MODES = ("auto", "completions", "sglang", "none")
#: Log-probs up to this far above 0 are taken as rounding (as the scoring probe always did); larger
#: ones, NaN and infinities fail their request as a MalformedResponse.
LOGPROB_TOLERANCE_NATS = 1e-6


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


def _shape_error(model: str, path: str, what: str, shown: str) -> MalformedResponse:
    return MalformedResponse(f"{model}: POST {path} on {shown} answered 200 with JSON of the wrong shape ({what}); "
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
    pl = choice.get("prompt_logprobs")
    if not isinstance(pl, list):
        raise BackendError("completion response has no prompt_logprobs")
    return prompt_logprobs_slice(pl, token_ids, start)


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
        roots = list(dict.fromkeys(root_url(u) for u in urls))
        if scoring not in SCORING_MODES:
            raise UsageError(f"scoring must be one of {', '.join(SCORING_MODES)}; got {scoring!r}")
        if max_concurrency < 1:
            raise UsageError(f"max_concurrency must be >= 1, got {max_concurrency}")
        limits = {r: max_concurrency for r in roots}
        for url, n in (endpoint_concurrency or {}).items():
            root = root_url(str(url))
            if root not in limits:
                raise UsageError(f"endpoint_concurrency names {url!r}, which is not one of the endpoints "
                                 f"({', '.join(roots)}); use the same URLs as in endpoints")
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise UsageError(f"endpoint_concurrency[{url!r}] must be an integer >= 1, got {n!r}")
            limits[root] = n
        self.model = model
        self.name = f"openai:{model}"
        self._api_key = os.environ.get(api_key_env) if api_key_env else None
        if api_key_env and not self._api_key:
            logger.debug("environment variable %s is not set; sending no Authorization header", api_key_env)
        pool = EndpointPool(model, roots, limits, max_failures=endpoint_max_failures, cooldown_s=endpoint_cooldown_s,
                            secrets=[self._api_key] if self._api_key else [])
        self._http = HTTPTransport(pool, RetryPolicy(max_retries, backoff_initial_s, backoff_max_s, retry_after_max_s),
                                   timeout_s=timeout_s, connect_timeout_s=connect_timeout_s,
                                   request_deadline_s=request_deadline_s, api_key=self._api_key,
                                   transport=transport, jitter_seed=jitter_seed)
        self._pool = pool
        self._scoring_request = scoring
        self._scoring_mode: str | None = None
        self._tokenize_path = "/" + tokenize_path.lstrip("/")
        self._n_ctx = n_ctx

    # -- public helpers ----------------------------------------------------------------------
    @property
    def stats(self) -> RequestStats:
        """Request counters (see :class:`compressbench.backends.transport.RequestStats`)."""
        return self._http.stats

    def reset_stats(self) -> None:
        self._http.stats = RequestStats()

    @property
    def max_in_flight(self) -> int:
        """Requests this backend keeps in flight at most (the endpoints' limits summed)."""
        return sum(e.limit for e in self._pool.endpoints)

    @property
    def endpoints(self) -> list[str]:
        """Server roots in configuration order (credentials in URLs shown as [redacted])."""
        return self._pool.shown()

    def endpoints_in_service(self) -> list[str]:
        return self._pool.in_service()

    def concurrency(self) -> dict[str, int]:
        """The in-flight request limit of each endpoint root."""
        return {e.root: e.limit for e in self._pool.endpoints}

    def route(self, key: str) -> str:
        """The endpoint root that requests with routing ``key`` go to now (rendezvous hashing)."""
        return self._pool.pick(key).shown

    # -- plumbing ----------------------------------------------------------------------------
    def _redact(self, text: str) -> str:
        """``text`` without the API key or any other secret (:func:`compressbench.backends.secrets.redact`)."""
        return self._pool.redact(text)

    @contextlib.contextmanager
    def _shape(self, path: str, shown: str) -> Iterator[None]:
        """Turn a parser tripping over an unexpected JSON shape into a MalformedResponse."""
        try:
            yield
        except MalformedResponse:
            raise
        except BackendError as exc:  # a parser's own complaint (a missing log-prob, a wrong token id)
            raise _shape_error(self.model, path, self._redact(str(exc)), shown) from None
        except CompressbenchError:
            raise
        except (AttributeError, TypeError, KeyError, IndexError, ValueError) as exc:
            raise _shape_error(self.model, path, f"{type(exc).__name__}: {self._redact(str(exc))}", shown) from None

    def _run(self, body: Callable[[Batch], Awaitable[T]]) -> T:
        return self._http.run(body)

    async def _request(self, run: Batch, path: str, payload: dict[str, Any], key: str) -> tuple[Any, str]:
        """The parsed JSON answer and the endpoint (as shown) that gave it."""
        data, ep = await self._http.request(run, path, payload, key)
        return data, ep.shown

    def _check_logprobs(self, lps: Sequence[float], path: str, shown: str, start: int) -> tuple[float, ...]:
        """``lps`` if every value is a log-probability (finite, at most 0 up to rounding); else a
        MalformedResponse naming the model, the endpoint and the position."""
        for k, lp in enumerate(lps):
            if not math.isfinite(lp) or lp > LOGPROB_TOLERANCE_NATS:
                what = "NaN" if math.isnan(lp) else ("+inf" if lp == math.inf else "-inf" if lp == -math.inf
                                                     else f"{lp:g} nats, above 0")
                raise MalformedResponse(
                    f"{self.model}: POST {path} on {shown} answered log-prob {what} for continuation token {k} "
                    f"(prompt position {start + k}); a log-probability is finite and <= 0. The server's "
                    "scoring is broken for this request; check the served model (dtype, quantisation) or "
                    "its version")
        return tuple(lps)

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

    async def _generate_one(self, run: Batch, chat: Chat, params: GenerationParams) -> Generation:
        payload = self._chat_payload(chat, params)
        path = "/v1/chat/completions"
        data, shown = await self._request(run, path, payload, json.dumps(payload["messages"]))
        if not isinstance(data, dict):
            raise _shape_error(self.model, path, f"a JSON {type(data).__name__}, not an object", shown)
        raw_choices = data.get("choices")
        if not isinstance(raw_choices, list) or not all(isinstance(ch, dict) for ch in raw_choices):
            raise _shape_error(self.model, path, "'choices' is not a list of objects", shown)
        for k, ch in enumerate(raw_choices):
            msg = ch.get("message")
            if not isinstance(msg, dict) or not isinstance(msg.get("content"), (str, type(None))):
                raise _shape_error(self.model, path, f"choices[{k}].message is not an object with a string content",
                                   shown)
            if not isinstance(ch.get("index", 0), int):
                raise _shape_error(self.model, path, f"choices[{k}].index is not an integer", shown)
        choices = sorted(raw_choices, key=lambda ch: ch.get("index", 0))
        if len(choices) != params.n:
            raise RemoteError(f"{self.model}: asked for {params.n} samples, server returned {len(choices)}")
        usage = _usage(data)
        samples = tuple(
            Sample(
                text=self._redact(ch["message"].get("content") or ""),  # a key echoed back is never stored
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
        return self._run(lambda run: self._http.gather([self._generate_one(run, c, params) for c in chat_list],
                                                  "generate"))

    # -- tokenisation ------------------------------------------------------------------------
    async def _tokenize(self, run: Batch, text: str, special: bool) -> list[int]:
        payload = {"model": self.model, "prompt": text, "add_special_tokens": special}
        data, shown = await self._request(run, self._tokenize_path, payload, text)
        ids = data.get("tokens", data.get("input_ids")) if isinstance(data, dict) else None
        if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise _shape_error(self.model, self._tokenize_path, "no 'tokens' list of integers", shown)
        limit = data.get("max_model_len")
        if isinstance(limit, int) and self._n_ctx is None:
            self._n_ctx = limit
        return [int(t) for t in ids]

    async def _tokenize_all(self, run: Batch, texts: list[str], special: bool) -> dict[str, list[int]]:
        uniq = list(dict.fromkeys(texts))
        ids = await self._http.gather([self._tokenize(run, t, special) for t in uniq], "tokenize")
        return dict(zip(uniq, ids))

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Continuation token counts (no special tokens) from the server's tokenizer."""
        t = check_texts(texts, "texts")
        if not t:
            return []
        ids = self._run(lambda run: self._tokenize_all(run, t, False))
        return [len(ids[x]) for x in t]

    # -- scoring -----------------------------------------------------------------------------
    async def _score_ids(self, run: Batch, mode: str, p_ids: list[int], c_ids: list[int], key: str) -> TokenLogprobs:
        if not c_ids:
            return TokenLogprobs((), ())
        ids = p_ids + c_ids
        start = len(p_ids)
        if mode == "sglang":
            payload = {"input_ids": ids, "sampling_params": {"max_new_tokens": 0, "temperature": 0.0},
                       "return_logprob": True, "logprob_start_len": start, "return_text_in_logprobs": False}
            data, shown = await self._request(run, "/generate", payload, key)
            with self._shape("/generate", shown):
                lps = parse_sglang_logprobs(data, c_ids)
            lps = self._check_logprobs(lps, "/generate", shown, start)
        else:
            payload = {"model": self.model, "prompt": ids, "max_tokens": 1, "temperature": 0.0}
            if mode == "completions-echo":
                payload.update(echo=True, logprobs=1)
            else:
                payload["prompt_logprobs"] = 0
            data, shown = await self._request(run, "/v1/completions", payload, key)
            choices = (data.get("choices") or []) if isinstance(data, dict) else []
            if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
                raise _shape_error(self.model, "/v1/completions", "no 'choices' list of objects", shown)
            parse = parse_echo_logprobs if mode == "completions-echo" else parse_prompt_logprobs
            with self._shape("/v1/completions", shown):
                lps = parse(choices[0], ids, start)
            lps = self._check_logprobs(lps, "/v1/completions", shown, start)
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

    async def _score_texts(self, run: Batch, mode: str, prefixes: list[str], conts: list[str]) -> list[TokenLogprobs]:
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

    async def _probe(self, run: Batch) -> str:
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
            if tl.n_tokens == len(c):
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


__all__ = ["LOGPROB_TOLERANCE_NATS", "OpenAIHTTPBackend", "SCORING_MODES", "parse_echo_logprobs",
           "parse_prompt_logprobs", "parse_sglang_logprobs"]
