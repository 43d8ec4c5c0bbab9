r"""A compression step to drop into any agent: compress, log the triple with its cost, report later.

:class:`CompressionStep` wraps a compressor (any backend with ``generate``, or any callable
``fn(context, query) -> str``) and a prompt. Each call compresses, appends the
``(context, query, compression)`` triple to a :class:`~compressbench.agent.log.CompressionLog` with
its usage (tokens, FLOPs, API dollars where the compressor is a priced API) and latency, and
returns the compression::

    from compressbench import load_backend
    from compressbench.agent import CompressionLog, CompressionStep

    step = CompressionStep(load_backend("hf", "smollm2-135m"), log=CompressionLog("agent/log.jsonl"))
    summary = step(document, question)                      # sync
    summary = await step.astep(document, question)          # async (runs in a worker thread)
    results = step.batch([(doc, question) for doc in docs]) # one batched call (parallel for callables)
    samples = step.samples(document, question, n=4)         # M = 4 samples of one context
    for name, row in step.report(scorer, predictor_price="gpt-4o").items():
        print(row.summary())

A **cascade** (``escalate_to=`` the next arm, another CompressionStep, and ``escalate_below=`` a
threshold) compresses with this (small) compressor first and hands a call on to the next arm when a
run-time signal is below the threshold; the next arm may escalate in turn. The signal is either

- ``"self_logprob"`` (default): the compressor's own mean token log-prob (nats per token) of what
  it wrote, under the prompt it wrote it from. Backends' ``generate`` reports no log-probs, so it
  is one ``score(prefix, compression)`` call per sample after generating (the prompt's chat prefix
  for a model with a chat template, its plain-text form otherwise), averaged over the samples;
  the compressor must be a backend that can ``score``;
- a callable ``signal(context, query, compression) -> float``, e.g.
  :func:`predictor_confidence` (the likelihood predictor's highest option probability when a
  predictor and the question's options are given).

An unknown signal (NaN: e.g. an empty compression) escalates. Only the arm that serves a call logs
its compression (arm by arm: the first arm's lines, then the escalated calls'); its line's ``metadata["cascade"]`` says which arm served (``arm``, ``arm_index``),
each arm tried with its signal, the threshold and signal kind, and the usage of the discarded
attempts. ``step.cascade_counts`` counts the calls each arm served, and :func:`report_log` counts
them per compressor (``CompressorReport.n_served_in_cascade`` / ``n_escalated``).

Logging never breaks the agent: if a log line cannot be written (full disk, a folder in the
way, metadata JSON cannot hold), the step logs a warning, counts it in ``n_log_failures`` and
returns the compression all the same. A failing *compressor* is the agent's business: its
exception propagates unchanged.

Each log line's ``metadata`` holds ``sample`` (0..n-1), ``n_samples``, ``latency_s`` (of the
request that produced it), ``model`` and, on the ``sample == 0`` line of each request only (so that
sums over lines count each request once), ``usage`` ({n_prompt_tokens, n_completion_tokens,
n_calls}; None entries = unknown), ``flops`` and ``api_usd`` (None when unknown or not priced).

:func:`report_log` (also ``step.report``) gives per compressor: the MI estimate (bits, log base
2, with its bootstrap CI, against the scorer you choose), bits per token, the predictor tokens
saved (context tokens minus compression tokens under the scorer's tokenizer, summed over the
logged compressions) and what they would cost at a named price entry, and the cost per role
(compressor tokens, FLOPs, API dollars; the scorer's own cost is a measurement cost, not counted).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from compressbench.core.errors import UsageError
from compressbench.core.prompts import Prompt, load_prompt
from compressbench.core.types import Chat, Example, GenerationParams, ModelInfo
from compressbench.measure.cost import Price, PriceTable, role_cost
from compressbench.backends.base import prompt_format

if TYPE_CHECKING:  # pragma: no cover
    from compressbench.agent.log import CompressionLog
    from compressbench.measure.mi import MIEstimate

_logger = logging.getLogger(__name__)

#: The prompt used when none is given (``prompts/compress_query.yaml``: {context}, {question}).
DEFAULT_COMPRESS_PROMPT = "compress_query"


@dataclass(frozen=True)
class StepResult:
    """One compressed (context, query): its M compressions and what producing them cost.

    ``usage``: {n_prompt_tokens, n_completion_tokens, n_calls} of the request (None values =
    unknown, e.g. a plain callable); ``flops`` and ``api_usd`` None when unknown or not priced.
    ``context_id`` is the log's id of (context, query), or None when nothing was logged.
    """

    context: str
    query: str
    compressions: tuple[str, ...]
    usage: Mapping[str, Any]
    latency_s: float
    flops: float | None = None
    api_usd: float | None = None
    context_id: str | None = None
    #: In a cascade: the arm that served this call and its signal (None outside a cascade, or for
    #: the last arm, which serves without a test).
    arm: str | None = None
    signal: float | None = None

    @property
    def text(self) -> str:
        """The first compression."""
        return self.compressions[0]


def _resolve_prompt(prompt: Prompt | str) -> Prompt:
    p = prompt if isinstance(prompt, Prompt) else load_prompt(prompt)
    if p.user is None:
        raise UsageError(f"prompt {p.name!r} is not a chat prompt; a compression prompt needs a 'user' part "
                         "with {context} (and optionally {question}) placeholders")
    extra = set(p.fields) - {"context", "question"}
    if "context" not in p.fields or extra:
        raise UsageError(f"prompt {p.name!r} must use {{context}} (and may use {{question}}) and nothing else; "
                         f"it uses {sorted(p.fields)}")
    return p


def _render(prompt: Prompt, fmt: str, context: str, query: str) -> Chat | str:
    """The compression prompt for one call: a chat, or its plain-text form for a model without a
    chat template (as the sweep does, :func:`compressbench.engine.model_work.generate_batch`)."""
    values = {k: v for k, v in (("context", context), ("question", query)) if k in prompt.fields}
    return prompt.render_chat(**values) if fmt == "chat" else prompt.render_completion(**values)


def self_logprob(backend: Any, prompt: Prompt | None, pairs: Sequence[tuple[str, str]],
                 compressions: Sequence[Sequence[str]]) -> list[float]:
    """The compressor's own mean token log-prob (nats per token) of each call's compressions under
    the prompt it wrote them from, averaged over the call's samples: one ``backend.score`` call
    (``generate`` reports no log-probs). The prefix is the prompt's chat prefix (``chat_prefix``)
    for a model with a chat template, else its plain-text form followed by a space (the reply was
    its first line, stripped); NaN for an empty compression (no token to score)."""
    assert prompt is not None
    fmt = prompt_format(backend)
    prefixes, conts, owner = [], [], []
    for i, ((c, q), texts) in enumerate(zip(pairs, compressions)):
        rendered = _render(prompt, fmt, c, q)
        if fmt == "chat":
            chat_prefix = getattr(backend, "chat_prefix", None)
            if not callable(chat_prefix):
                raise UsageError(f"signal 'self_logprob': backend {getattr(backend, 'name', backend)!r} has no "
                                 "chat_prefix to score its reply under its own chat prompt")
            prefix, delim = chat_prefix(rendered), ""
        else:
            prefix, delim = str(rendered), " "
        for z in texts:
            if z:
                prefixes.append(prefix)
                conts.append(delim + z)
                owner.append(i)
    per_call: list[list[float]] = [[] for _ in pairs]
    if prefixes:
        for i, tl in zip(owner, backend.score(prefixes, conts)):
            per_call[i].append(tl.total_nats / tl.n_tokens if tl.n_tokens else math.nan)
    return [float(np.mean(v)) if v and len(v) == len(texts) else math.nan
            for v, texts in zip(per_call, compressions)]


def predictor_confidence(predictor: Any, options: Sequence[str] | Callable[[str], Sequence[str]], *,
                         prompt: Prompt | str | None = None, prompt_format: str = "auto") -> Callable[[str, str, str], float]:
    """A cascade signal: the likelihood predictor's confidence in its answer from the compression,
    the highest option probability (softmax over the options' total log-probs,
    :func:`compressbench.measure.predict_loglik.predict_loglik`), in [1 / #options, 1].
    ``options``: the question's options, or a function of the query giving them."""
    # lazy: the loglik predictor imports scipy; recording and compressing stay light
    from compressbench.measure.predict_loglik import check_backend_can_score, predict_loglik

    check_backend_can_score(predictor)

    def predictor_confidence(context: str, query: str, compression: str) -> float:
        opts = tuple(options(query) if callable(options) else options)
        if len(opts) < 2:
            raise UsageError(f"predictor_confidence needs >= 2 options for {query!r}, got {len(opts)}")
        ex = Example(id="cascade", context=context, question=query, options=opts)
        pred = predict_loglik(predictor, ex, compression, prompt=prompt, prompt_format=prompt_format)
        lls = np.array([o.logprob_nats for o in pred.options], dtype=float)
        probs = np.exp(lls - lls.max())
        return float(probs.max() / probs.sum())

    return predictor_confidence


class CompressionStep:
    """Compress (context, query) pairs with a backend or a callable, logging every triple.

    Args:
        compressor: a backend (anything with ``generate(chats, params)``, e.g. ``load_backend(...)``)
            or a callable ``fn(context, query) -> str``.
        prompt: the compression prompt for a backend (a Prompt, a name in ``prompts/`` or a YAML
            path; default ``compress_query``). Ignored for callables.
        log: where triples go (None: nothing is logged).
        name: the compressor's name in the log (default: the backend's name or the callable's).
        max_new_tokens, temperature, seed: generation settings for a backend.
        paid_api: the compressor is a priced API; ``price`` (a :class:`~compressbench.measure.cost.Price`
            or a model name looked up in ``prices``, default the packaged ``configs/prices.yaml``)
            turns its tokens into dollars.
        info: the model's size and shape for FLOPs (default: ``compressor.info()`` when it has one).
        max_workers: threads for :meth:`batch` with a callable compressor.
        escalate_to: the next arm of a cascade (a CompressionStep); calls whose ``signal`` is below
            ``escalate_below`` go to it (see the module docstring). It (and every arm after it)
            logs to this step's log when it has none of its own.
        escalate_below: the threshold (nats per token for ``self_logprob``; the callable's units
            otherwise). Required with ``escalate_to``.
        signal: ``"self_logprob"`` or a callable ``(context, query, compression) -> float``.
    """

    def __init__(
        self,
        compressor: Any,
        prompt: Prompt | str = DEFAULT_COMPRESS_PROMPT,
        *,
        log: CompressionLog | None = None,
        name: str | None = None,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        seed: int | None = 0,
        paid_api: bool = False,
        price: Price | str | None = None,
        prices: PriceTable | None = None,
        info: ModelInfo | None = None,
        max_workers: int = 8,
        escalate_to: CompressionStep | None = None,
        escalate_below: float | None = None,
        signal: str | Callable[[str, str, str], float] = "self_logprob",
    ) -> None:
        self.is_backend = callable(getattr(compressor, "generate", None))
        if not self.is_backend and not callable(compressor):
            raise UsageError(f"compressor must be a backend (with generate) or a callable (context, query) -> str, "
                             f"got {type(compressor).__name__}")
        if max_workers < 1:
            raise UsageError(f"max_workers must be >= 1, got {max_workers}")
        self.compressor = compressor
        self.prompt = _resolve_prompt(prompt) if self.is_backend else None
        self.log = log
        default_name = (getattr(compressor, "name", None) if self.is_backend
                        else getattr(compressor, "__name__", type(compressor).__name__))
        self.name = name or str(default_name or "compressor")
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.seed = seed
        self.paid_api = paid_api
        self.max_workers = max_workers
        self.n_log_failures = 0
        if isinstance(price, str):
            table = prices or PriceTable.load()
            found = table.lookup(price)
            if found is None:
                raise UsageError(f"no price entry {price!r} in {table.path}; known: {', '.join(sorted(table.prices))}")
            price = found
        if paid_api and price is None:
            raise UsageError("paid_api=True needs a price (a Price or a model name in configs/prices.yaml)")
        self.price = price
        if info is None and self.is_backend and callable(getattr(compressor, "info", None)):
            try:
                info = compressor.info()
            except Exception as exc:  # noqa: BLE001 - a size we cannot read only costs us the FLOPs
                _logger.warning("compressor %s: info() failed (%s); FLOPs will be unknown", self.name, exc)
                info = None
        self.info = info
        if (escalate_to is None) != (escalate_below is None):
            raise UsageError("a cascade needs both escalate_to (the next CompressionStep) and escalate_below "
                             "(the signal threshold)")
        if escalate_to is not None:
            if not isinstance(escalate_to, CompressionStep):
                raise UsageError(f"escalate_to must be a CompressionStep, got {type(escalate_to).__name__}")
            if not isinstance(escalate_below, (int, float)) or math.isnan(float(escalate_below)):
                raise UsageError(f"escalate_below must be a number, got {escalate_below!r}")
            if signal == "self_logprob" and not (self.is_backend and callable(getattr(compressor, "score", None))):
                raise UsageError(f"signal 'self_logprob' needs a compressor backend that can score (generate "
                                 f"reports no log-probs; compressbench scores the compression under the "
                                 f"compressor's own prompt); {self.name!r} cannot: pass signal=a callable, "
                                 "e.g. predictor_confidence(predictor, options)")
            if not (signal == "self_logprob" or callable(signal)):
                raise UsageError(f"signal must be 'self_logprob' or a callable (context, query, compression) -> "
                                 f"float, got {signal!r}")
            for arm in escalate_to.arms():
                if arm.log is None:
                    arm.log = log
            names = [a.name for a in escalate_to.arms()]
            if self.name in names:
                raise UsageError(f"cascade arms need distinct names; {self.name!r} appears twice")
        self.escalate_to = escalate_to
        self.escalate_below = None if escalate_below is None else float(escalate_below)
        self.signal = signal
        #: calls each arm of the cascade served, by arm name (this step and the ones it escalates to)
        self.cascade_counts: Counter[str] = Counter()

    def arms(self) -> list[CompressionStep]:
        """This step and the arms it escalates to, in order."""
        out: list[CompressionStep] = [self]
        while out[-1].escalate_to is not None:
            out.append(out[-1].escalate_to)  # type: ignore[arg-type]
        return out

    # ------------------------------------------------------------------ compressing

    def __call__(self, context: str, query: str) -> str:
        return self.step(context, query)

    def step(self, context: str, query: str) -> str:
        """Compress one context for a query; returns the compression (logged as one triple)."""
        return self.batch([(context, query)])[0].text

    def samples(self, context: str, query: str, n: int) -> list[str]:
        """M = ``n`` compressions of one context (sampled when ``temperature > 0``), all logged."""
        return list(self.batch([(context, query)], n=n)[0].compressions)

    async def astep(self, context: str, query: str) -> str:
        """:meth:`step` in a worker thread (the event loop stays free)."""
        return await asyncio.to_thread(self.step, context, query)

    async def abatch(self, items: Sequence[tuple[str, str]], n: int = 1) -> list[StepResult]:
        """:meth:`batch` in a worker thread."""
        return await asyncio.to_thread(self.batch, items, n)

    def batch(self, items: Sequence[tuple[str, str]], n: int = 1) -> list[StepResult]:
        """Compress many (context, query) pairs: one batched ``generate`` call for a backend, a
        thread pool for a callable. Returns one :class:`StepResult` per item, in order."""
        pairs = self._check_items(items)
        if not isinstance(n, int) or n < 1:
            raise UsageError(f"n (samples per context) must be an integer >= 1, got {n!r}")
        if not pairs:
            return []
        if self.escalate_to is None:
            return [self._finish(c, q, texts, usage, latency)
                    for (c, q), (texts, usage, latency) in zip(pairs, self._run(pairs, n))]
        results = self._cascade(pairs, n, [])
        for r in results:
            self.cascade_counts[str(r.arm)] += 1
        return results

    def _run(self, pairs: list[tuple[str, str]], n: int) -> list[tuple[list[str], dict, float]]:
        return self._run_backend(pairs, n) if self.is_backend else self._run_callable(pairs, n)

    def _cascade(self, pairs: list[tuple[str, str]], n: int, tried: list[dict[str, Any]]) -> list[StepResult]:
        """Serve ``pairs`` with this arm, escalating the calls whose signal is below the threshold;
        ``tried`` holds, per call, the arms before this one (name, signal, usage)."""
        raw = self._run(pairs, n)
        last = self.escalate_to is None
        signals = [None] * len(pairs) if last else self._signals(pairs, raw)
        out: list[StepResult | None] = [None] * len(pairs)
        up: list[int] = []
        for i, ((c, q), (texts, usage, latency), sig) in enumerate(zip(pairs, raw, signals)):
            if last or (sig is not None and not math.isnan(sig) and sig >= self.escalate_below):  # type: ignore[operator]
                chain = [*tried[i]["chain"], {"arm": self.name, "signal": sig}] if tried else [
                    {"arm": self.name, "signal": sig}]
                meta = {"cascade": {"arm": self.name, "arm_index": len(chain) - 1, "tried": chain,
                                    "signal_kind": self._signal_kind(), "threshold": self.escalate_below,
                                    "discarded_usage": tried[i]["usage"] if tried else []}}
                res = self._finish(c, q, texts, usage, latency, extra_meta=meta)
                out[i] = dataclasses.replace(res, arm=self.name, signal=sig)
            else:
                up.append(i)
        if up:
            nxt = self.escalate_to
            assert nxt is not None
            passed = [{"chain": [*(tried[i]["chain"] if tried else []), {"arm": self.name, "signal": signals[i]}],
                       "usage": [*(tried[i]["usage"] if tried else []), {"arm": self.name, **raw[i][1]}]} for i in up]
            for i, res in zip(up, nxt._cascade([pairs[i] for i in up], n, passed)):
                out[i] = res
        return out  # type: ignore[return-value]

    def _signal_kind(self) -> str | None:
        """The signal this arm is tested on (None for the last arm, which serves without a test)."""
        if self.escalate_to is None:
            return None
        return "self_logprob" if self.signal == "self_logprob" else getattr(self.signal, "__name__", "callable")

    def _signals(self, pairs: list[tuple[str, str]], raw: list[tuple[list[str], dict, float]]) -> list[float]:
        """The run-time signal of each call (see the module docstring)."""
        if self.signal != "self_logprob":
            fn = self.signal
            assert callable(fn)
            return [float(np.mean([fn(c, q, z) for z in texts])) if texts else math.nan
                    for (c, q), (texts, _, _) in zip(pairs, raw)]
        return self_logprob(self.compressor, self.prompt, pairs, [texts for texts, _, _ in raw])

    @staticmethod
    def _check_items(items: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        if isinstance(items, str) or (isinstance(items, tuple) and items and isinstance(items[0], str)):
            raise UsageError("batch() takes a list of (context, query) pairs; wrap a single pair in a list")
        out = []
        for k, item in enumerate(items):
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise UsageError(f"items[{k}] must be a (context, query) pair, got {type(item).__name__}")
            c, q = item
            if not isinstance(c, str) or not isinstance(q, str):
                raise UsageError(f"items[{k}]: context and query must be strings, got "
                                 f"{type(c).__name__} and {type(q).__name__}")
            out.append((c, q))
        return out

    def _run_backend(self, pairs: list[tuple[str, str]], n: int) -> list[tuple[list[str], dict, float]]:
        assert self.prompt is not None
        fmt = prompt_format(self.compressor)
        chats = [_render(self.prompt, fmt, c, q) for c, q in pairs]
        params = GenerationParams(max_new_tokens=self.max_new_tokens, temperature=self.temperature, n=n,
                                  seed=self.seed, stop=("\n",) if fmt == "completion" else ())
        t0 = time.perf_counter()
        gens = self.compressor.generate(chats, params)
        latency = (time.perf_counter() - t0) / max(1, len(pairs))  # a batch's wall time, shared evenly
        if len(gens) != len(pairs):
            raise UsageError(f"compressor {self.name!r} returned {len(gens)} generations for {len(pairs)} chats")
        return [([s.text.strip() if fmt == "completion" else s.text for s in g.samples],
                 {"n_prompt_tokens": g.usage.n_prompt_tokens, "n_completion_tokens": g.usage.n_completion_tokens,
                  "n_calls": 1}, latency) for g in gens]

    def _run_callable(self, pairs: list[tuple[str, str]], n: int) -> list[tuple[list[str], dict, float]]:
        def one(pair: tuple[str, str]) -> tuple[list[str], dict, float]:
            texts = []
            t0 = time.perf_counter()
            for _ in range(n):
                z = self.compressor(*pair)
                if not isinstance(z, str):
                    raise UsageError(f"compressor {self.name!r} returned {type(z).__name__}, expected a string")
                texts.append(z)
            return texts, {"n_prompt_tokens": None, "n_completion_tokens": None, "n_calls": n}, \
                time.perf_counter() - t0

        if len(pairs) == 1 or self.max_workers == 1:
            return [one(p) for p in pairs]
        with ThreadPoolExecutor(max_workers=min(self.max_workers, len(pairs))) as pool:
            return list(pool.map(one, pairs))

    def _finish(self, context: str, query: str, texts: list[str], usage: dict, latency: float,
                extra_meta: Mapping[str, Any] | None = None) -> StepResult:
        flops = api_usd = None
        if self.info is not None or self.paid_api:
            rc = role_cost("compressor", usage, self.info, paid_api=self.paid_api, price=self.price)
            flops, api_usd = rc.flops, rc.api_usd
        cid = None
        if self.log is not None:
            model = getattr(self.info, "reference", None) or self.name
            for j, z in enumerate(texts):
                meta: dict[str, Any] = {"sample": j, "n_samples": len(texts), "latency_s": latency, "model": model}
                if j == 0:
                    meta.update(usage=usage, flops=flops, api_usd=api_usd, **(extra_meta or {}))
                try:
                    cid = self.log.record(context, query, z, compressor=self.name, metadata=meta)
                except Exception as exc:  # noqa: BLE001 - logging must never break the agent
                    self.n_log_failures += 1
                    _logger.warning("compression step %s: could not log a compression (%s: %s); the agent goes on",
                                self.name, type(exc).__name__, exc)
        return StepResult(context, query, tuple(texts), usage, latency, flops, api_usd, cid)

    def report(self, scorer: Any, **kwargs: Any) -> dict[str, CompressorReport]:
        """:func:`report_log` on this step's log (only this step's compressor)."""
        if self.log is None:
            raise UsageError("this CompressionStep has no log; build it with log=CompressionLog(path)")
        kwargs.setdefault("compressor", [a.name for a in self.arms()] if self.escalate_to else self.name)
        return report_log(self.log, scorer, **kwargs)


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class CompressorReport:
    """What one compressor did, from a log (see :func:`report_log`). None = unknown."""

    compressor: str
    mi: MIEstimate
    n_compressions: int
    n_contexts_logged: int
    mean_context_tokens: float
    mean_compression_tokens: float
    predictor_tokens_saved: int
    predictor_price: str | None
    predictor_usd_saved: float | None
    compressor_n_calls: int
    compressor_prompt_tokens: int | None
    compressor_completion_tokens: int | None
    compressor_flops: float | None
    compressor_api_usd: float | None
    mean_latency_s: float | None
    #: In a cascade: calls this arm served, and calls it passed on to the next arm (signal below
    #: the threshold), from the log lines' ``metadata["cascade"]``; 0 outside a cascade.
    n_served_in_cascade: int = 0
    n_escalated: int = 0

    def summary(self) -> str:
        """One line for a terminal."""
        e = self.mi
        ci = (f" [{e.ci_low_bits:.2f}, {e.ci_high_bits:.2f}]" if e.ci_low_bits is not None else "")
        bpt = f", {e.bits_per_token:.4f} bits/token" if e.bits_per_token is not None else ""
        saved = f"{self.predictor_tokens_saved} predictor tokens saved"
        if self.predictor_usd_saved is not None:
            saved += f" (${self.predictor_usd_saved:.6f} at {self.predictor_price} input prices)"
        flops = f", {self.compressor_flops / 1e9:.2f} GFLOPs" if self.compressor_flops is not None else ""
        usd = f", ${self.compressor_api_usd:.6f} API" if self.compressor_api_usd is not None else ""
        cascade = (f"; cascade: served {self.n_served_in_cascade} calls, escalated {self.n_escalated}"
                   if self.n_served_in_cascade or self.n_escalated else "")
        return (f"{self.compressor}: MI {e.bits:.2f} bits{ci} of ceiling {e.ceiling_bits:.2f} "
                f"(N={e.n_contexts}, M={e.n_samples}){bpt}; {saved}; compressor {self.compressor_n_calls} calls"
                f"{flops}{usd}{cascade}")


def _sum_known(values: list[Any]) -> float | None:
    """Sum, or None when any value is unknown (None) or there are none."""
    if not values or any(v is None or (isinstance(v, float) and math.isnan(v)) for v in values):
        return None
    return float(sum(values))


def report_log(
    log_: CompressionLog,
    scorer: Any,
    *,
    compressor: str | Sequence[str] | None = None,
    predictor_price: Price | str | None = None,
    prices: PriceTable | None = None,
    **estimate_kwargs: Any,
) -> dict[str, CompressorReport]:
    """Per compressor in the log: MI (``log.estimate``), rate, tokens saved for the predictor, cost.

    ``scorer`` scores MI and counts tokens (its tokenizer defines "tokens saved").
    ``predictor_price`` (a Price or a model name in ``prices``, default the packaged
    ``configs/prices.yaml``) prices the saved predictor input tokens. ``estimate_kwargs`` go to
    :meth:`CompressionLog.estimate` (min_contexts, max_contexts, seed, prompt, n_boot, ...).
    """
    if isinstance(predictor_price, str):
        table = prices or PriceTable.load()
        found = table.lookup(predictor_price)
        if found is None:
            raise UsageError(f"no price entry {predictor_price!r} in {table.path}; known: "
                             f"{', '.join(sorted(table.prices))}")
        predictor_price = found
    estimates = log_.estimate(scorer, compressor=compressor, **estimate_kwargs)
    rows = log_.entries()
    served: Counter[str] = Counter()
    escalated: Counter[str] = Counter()
    for r in rows:
        cas = (r.get("metadata") or {}).get("cascade")
        if isinstance(cas, Mapping) and (r.get("metadata") or {}).get("sample", 0) == 0:
            served[str(cas.get("arm"))] += 1
            for arm in list(cas.get("tried") or [])[:-1]:
                escalated[str(arm.get("arm"))] += 1
    out: dict[str, CompressorReport] = {}
    for name, est in estimates.items():
        mine = [r for r in rows if r["compressor"] == name]
        ctx_tokens = scorer.count_tokens([r["context"] for r in mine])
        comp_tokens = scorer.count_tokens([r["compression"] for r in mine])
        saved = int(sum(c - z for c, z in zip(ctx_tokens, comp_tokens)))
        firsts = [r.get("metadata") or {} for r in mine]
        firsts = [m for m in firsts if m.get("sample", 0) == 0]
        usages = [m.get("usage") or {} for m in firsts]
        lat = [m.get("latency_s") for m in firsts if m.get("latency_s") is not None]
        p_tok = _sum_known([u.get("n_prompt_tokens") for u in usages])
        c_tok = _sum_known([u.get("n_completion_tokens") for u in usages])
        out[name] = CompressorReport(
            compressor=name, mi=est, n_compressions=len(mine),
            n_contexts_logged=len({r["id"] for r in mine}),
            mean_context_tokens=float(sum(ctx_tokens) / len(mine)),
            mean_compression_tokens=float(sum(comp_tokens) / len(mine)),
            predictor_tokens_saved=saved,
            predictor_price=None if predictor_price is None else predictor_price.model,
            predictor_usd_saved=(None if predictor_price is None
                                 else saved * predictor_price.input_usd_per_mtok / 1e6),
            compressor_n_calls=int(sum(u.get("n_calls") or 1 for u in usages)),
            compressor_prompt_tokens=None if p_tok is None else int(p_tok),
            compressor_completion_tokens=None if c_tok is None else int(c_tok),
            compressor_flops=_sum_known([m.get("flops") for m in firsts]),
            compressor_api_usd=_sum_known([m.get("api_usd") for m in firsts]),
            mean_latency_s=float(sum(lat) / len(lat)) if lat else None,
            n_served_in_cascade=served[name], n_escalated=escalated[name],
        )
    return out


def format_log_report(reports: Mapping[str, CompressorReport]) -> str:
    """The reports as lines of text (MI in bits, log base 2)."""
    lines = [r.summary() for r in reports.values()]
    lines.append("MI in bits (log base 2), 95% bootstrap CI over contexts; tokens counted by the scorer's tokenizer.")
    return "\n".join(lines)


__all__ = ["DEFAULT_COMPRESS_PROMPT", "CompressionStep", "CompressorReport", "StepResult", "format_log_report",
           "predictor_confidence", "report_log", "self_logprob"]
