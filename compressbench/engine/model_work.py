"""Work that runs next to a model: plain functions ``fn(backend, *inputs) -> outputs``.

An :class:`compressbench.engine.scheduler.Executor` calls them with the backend it holds (in this process,
or in a worker such as a Ray actor), so every input and output here is plain, picklable data
(dataclasses, lists, numpy arrays): no closures over the run directory, no cache access. The driver
looks results up in the cache first and sends only the misses here (:mod:`compressbench.engine.caching`).

Context windows are read when needed: each function counts tokens first and then asks
``backend.info().n_ctx``, so a served model whose window is learnt from its first ``/tokenize``
(the OpenAI-compatible HTTP backend, vLLM) is fitted like a local one.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from compressbench.backends.base import prompt_format
from compressbench.measure.baselines import baseline_compression, truncate_to_tokens
from compressbench.core.errors import BackendError, BatchRemoteError, ContextTooLong, EndpointsDown, UsageError
from compressbench.core.prompts import Prompt, chat_text
from compressbench.core.types import Chat, Example, GenerationParams
from compressbench.measure.metrics import reference_nll_nats
from compressbench.measure.predict_loglik import loglik_prompt, predict_loglik
from compressbench.measure.scoring import ScoredWork, TensorJob, build_logp_tensors
from compressbench.engine.store import text_hash

#: Tokens reserved for chat-template markup that `count_tokens` on plain text does not see.
CHAT_TEMPLATE_MARGIN = 24


def err_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class ChatSpec:
    """A chat prompt with one variable slot: ``prompt`` rendered with ``values`` and ``slot = text``.

    The slot is the part fitted to the model's window (the context for a compressor, the
    compression for a predictor, the prediction for a judge)."""

    prompt: Prompt
    values: Mapping[str, str]
    slot: str
    text: str

    def render(self, text: str | None = None) -> Chat:
        vals = {**self.values, self.slot: self.text if text is None else text}
        return self.prompt.render_chat(**{k: v for k, v in vals.items() if k in self.prompt.fields})

    def render_completion(self, text: str | None = None) -> str:
        """The plain-text form (``Prompt.render_completion``) for a model without a chat template."""
        vals = {**self.values, self.slot: self.text if text is None else text}
        return self.prompt.render_completion(**{k: v for k, v in vals.items() if k in self.prompt.fields})


@dataclass(frozen=True)
class GenOutcome:
    """One chat's generation: M sample texts and usage, or an error (``deterministic``: it would
    fail the same way again, e.g. a context overflow, so it is cached)."""

    texts: tuple[str, ...] = ()
    finish_reasons: tuple[str, ...] = ()
    n_prompt_tokens: int | None = None
    n_completion_tokens: int | None = None
    n_cached_prompt_tokens: int | None = None
    truncated: int | None = None
    error: str | None = None
    deterministic: bool = False
    wall_s: float = 0.0
    prompt_format: str | None = None  # chat | completion (a model without a chat template)

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> GenOutcome:
        return cls(**{**d, "texts": tuple(d.get("texts") or ()),
                      "finish_reasons": tuple(d.get("finish_reasons") or ())})


def fit_text(backend: Any, spec: ChatSpec, reserve: int, overflow: str, model: str) -> tuple[str, int | None]:
    """Fit the slot text into the model's window: ``(text, kept tokens if truncated)``.

    Raises ContextTooLong when ``overflow == "fail"`` (or nothing fits)."""
    n_ctx = backend.info().n_ctx
    overhead = None
    if n_ctx is None:  # a served model learns its window from its first tokenisation: count, then ask again
        overhead = backend.count_tokens([chat_text(spec.render(""))])[0] + CHAT_TEMPLATE_MARGIN
        n_ctx = backend.info().n_ctx
        if n_ctx is None:
            return spec.text, None
    if overhead is None:
        overhead = backend.count_tokens([chat_text(spec.render(""))])[0] + CHAT_TEMPLATE_MARGIN
    n_text = backend.count_tokens([spec.text])[0] if spec.text else 0
    budget = n_ctx - reserve - overhead
    if n_text <= budget:
        return spec.text, None
    what = {"context": "context", "compression": "compression"}.get(spec.slot, spec.slot)
    if overflow == "fail" or budget <= 0:
        raise ContextTooLong(
            f"the {what} has {n_text} tokens but model {model!r} (window {n_ctx} tokens) leaves room for "
            f"{max(budget, 0)} after the prompt and {reserve} reserved tokens; set on_context_overflow: "
            f"truncate, lower max_new_tokens, or use a model with a longer window",
            n_tokens=n_text, max_tokens=max(budget, 0))
    kept = truncate_to_tokens(spec.text, budget, backend.count_tokens)
    return kept, backend.count_tokens([kept])[0] if kept else 0


class _Counted:
    """``backend`` with its ``count_tokens`` answered from counts fetched in one batched call
    (:meth:`prefetch`); texts not fetched are counted by the backend itself. For a served model each
    count is a request, so fitting a batch's chats one by one would send them one at a time."""

    def __init__(self, backend: Any):
        self._backend = backend
        self._counts: dict[str, int] = {}

    def prefetch(self, texts: Sequence[str]) -> None:
        todo = list(dict.fromkeys(t for t in texts if t not in self._counts))
        if not todo:
            return
        try:
            counts = self._backend.count_tokens(todo)
        except BackendError:
            return  # counted one by one below, where each failure is that chat's own
        self._counts.update(zip(todo, (int(n) for n in counts)))

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        texts = list(texts)
        if all(t in self._counts for t in texts):
            return [self._counts[t] for t in texts]
        return list(self._backend.count_tokens(texts))

    def info(self) -> Any:
        return self._backend.info()


def _generate_isolated(backend: Any, chats: list[Chat], params: GenerationParams) -> list[Any]:
    """Generate ``chats`` as one batch; one Generation or BackendError per chat, in order.

    A failed batch is never re-sent whole. A backend that reports per-request outcomes
    (``BatchRemoteError``: ``errors`` and ``results``) is taken at its word: its successes are kept
    and its failures (already retried by the backend) are final. Any other failure of a batch of
    several is isolated by sending the chats one by one, except that once the backend says every
    endpoint is out of service (``EndpointsDown``), the remaining chats fail with that cause at once.
    """
    try:
        return list(backend.generate(chats, params))
    except BatchRemoteError as exc:
        if len(exc.results) == len(chats):
            return [exc.errors.get(i, r) for i, r in enumerate(exc.results)]
        failure: BackendError = exc
    except BackendError as exc:
        failure = exc
    if len(chats) == 1 or isinstance(failure, EndpointsDown):
        return [failure] * len(chats)
    out: list[Any] = []
    for chat in chats:
        if out and isinstance(out[-1], EndpointsDown):
            out.append(out[-1])
            continue
        try:
            out.append(backend.generate([chat], params)[0])
        except BatchRemoteError as exc1:
            out.append(exc1.errors.get(0, exc1))
        except BackendError as exc1:
            out.append(exc1)
    return out


def generate_batch(backend: Any, specs: Sequence[ChatSpec], params: GenerationParams, overflow: str,
                   model: str) -> list[GenOutcome]:
    """Fit each chat to the window, then generate them as one batch (failures are kept per chat,
    see :func:`_generate_isolated`; a chat whose fitting fails, e.g. the tokenizer endpoint
    answering nonsense, fails alone). One outcome per spec, in order.

    A model without a chat template (``prompt_format`` ``completion``) gets the prompt's plain-text
    form (``Prompt.render_completion``) and its reply is its first line (generation stops at a
    newline; surrounding whitespace stripped)."""
    out: list[GenOutcome | None] = [None] * len(specs)
    ready: list[tuple[int, Chat | str, int | None]] = []
    fmt = prompt_format(backend)
    counted = _Counted(backend)  # every chat's counts in one call, not two calls per chat
    counted.prefetch([chat_text(s.render("")) for s in specs] + [s.text for s in specs if s.text])
    for i, spec in enumerate(specs):
        try:
            kept, n_kept = fit_text(counted, spec, params.max_new_tokens, overflow, model)
        except ContextTooLong as exc:
            out[i] = GenOutcome(error=err_text(exc), deterministic=True)
            continue
        except BackendError as exc:
            out[i] = GenOutcome(error=err_text(single_error(exc)))
            continue
        ready.append((i, spec.render(kept) if fmt == "chat" else spec.render_completion(kept), n_kept))
    if fmt == "completion":  # a base model's reply is its first line (it would ramble on otherwise)
        params = dataclasses.replace(params, stop=(*params.stop, "\n"))
    if ready:
        t0 = time.perf_counter()
        results = _generate_isolated(backend, [c for _, c, _ in ready], params)
        dt = (time.perf_counter() - t0) / len(ready)
        for (i, _, n_kept), g in zip(ready, results):
            if isinstance(g, BaseException):
                out[i] = GenOutcome(error=err_text(g), deterministic=isinstance(g, ContextTooLong), wall_s=dt)
            else:
                out[i] = GenOutcome(texts=tuple(s.text.strip() if fmt == "completion" else s.text for s in g.samples),
                                    finish_reasons=tuple(s.finish_reason for s in g.samples),
                                    n_prompt_tokens=g.usage.n_prompt_tokens,
                                    n_completion_tokens=g.usage.n_completion_tokens,
                                    n_cached_prompt_tokens=g.usage.n_cached_prompt_tokens,
                                    truncated=n_kept, wall_s=dt, prompt_format=fmt)
    return out  # type: ignore[return-value]


def single_error(exc: BackendError) -> BackendError:
    """The error of a one-request batch itself (not the "1 of 1 requests failed" wrapper)."""
    errors = getattr(exc, "errors", None)
    return errors[0] if isinstance(errors, dict) and len(errors) == 1 and 0 in errors else exc


def truncate_contexts(backend: Any, name: str, contexts: Sequence[str]) -> list[str]:
    """The ``truncate:<n>`` baseline of each context, counted with this model's tokenizer."""
    return [baseline_compression(name, c, backend.count_tokens) for c in contexts]


def count_tokens(backend: Any, texts: Sequence[str]) -> list[int]:
    return list(backend.count_tokens(list(texts)))


@dataclass(frozen=True)
class TensorOutcome:
    """The scorer's (N, M, N) log-prob tensor (nats) for one group, and per-example facts:
    compression token counts, errors (examples that did not fit), kept context tokens, usage, and
    ``prefixes[l]``: the hash of the scoring prefix example ``l``'s continuations were scored after
    (None: nothing was scored after it), which says which rows of a scoring round shared a prefill
    (:func:`share_prefills`). As :func:`build_tensors` returns it (and the cache keeps it), the usage
    does not depend on the other groups of the call; :func:`share_prefills` adds their share."""

    n_tokens: list[list[int]]
    errors: list[str | None]
    truncated: list[int | None]
    usage: list[dict[str, Any] | None]
    logp: np.ndarray | None
    prefixes: list[str | None] | None = None

    def meta(self) -> dict[str, Any]:
        return {"n_tokens": self.n_tokens, "errors": self.errors, "truncated": self.truncated, "usage": self.usage,
                "prefixes": self.prefixes, "has_tensor": self.logp is not None}


def share_prefills(outcomes: Sequence[TensorOutcome]) -> list[TensorOutcome]:
    """The one rule for charging a prefill that several rows shared: ``outcomes`` are every group
    of one scoring round (hits and misses of the cache alike), and each distinct scoring prefix
    prefilled in that round is charged in equal shares to the rows (group, example) that scored
    continuations after it. Example ``l``'s call becomes ``[P, S1, S2, n]`` with ``n`` the number of
    rows sharing its prefix's prefill (``[P, S1, S2]`` when it had it alone; ``[P, S1, S2, 0]`` when
    nothing was scored after it, so no prefill is charged); :func:`compressbench.measure.cost.role_cost`
    charges ``prefill_flops(P) / n``.

    So a row's usage depends only on its own work and on which rows share its prefix in the round,
    never on which of them the model computed now and which came from the cache, and the shares
    of one prefill add up to that one prefill. Tokens are not split: each row's ``n_prompt_tokens``
    counts its whole prefix (what it reads, and what ``plan`` counts)."""
    uses = Counter(p for o in outcomes for p in (o.prefixes or ()) if p is not None)
    out = []
    for o in outcomes:
        if o.prefixes is None:
            out.append(o)
            continue
        usage: list[dict[str, Any] | None] = []
        for u, p in zip(o.usage, o.prefixes):
            if u is None or not u.get("shared_prefix_calls"):
                usage.append(u)
                continue
            (call,) = u["shared_prefix_calls"]
            n = 0 if p is None else uses[p]
            usage.append({**u, "shared_prefix_calls": [list(call[:3]) + ([] if n == 1 else [n])]})
        out.append(dataclasses.replace(o, usage=usage))
    return out


@dataclass(frozen=True)
class ScoreJob:
    """One group's scoring request: examples, their M compressions, and (sampled negatives) the
    design (N, K + 1) and the entries already scored (N, M, N; NaN: not)."""

    exs: list[Example]
    texts: list[list[str]]
    design: np.ndarray | None = None
    known: np.ndarray | None = None


def build_tensor(backend: Any, exs: Sequence[Example], texts: Sequence[Sequence[str]], prompt: Prompt,
                 samples: int, overflow: str, scorer: str) -> TensorOutcome:
    """One group's tensor: :func:`build_tensors` with one job."""
    return build_tensors(backend, [ScoreJob(list(exs), [list(r) for r in texts])], prompt, samples, overflow,
                         scorer)[0]


def _fit_job(backend: Any, exs: Sequence[Example], texts: Sequence[Sequence[str]], prompt: Prompt,
             overflow: str, scorer: str) -> tuple[list[list[int]], list[str | None], list[int | None], list[Example]]:
    """Fit one group's scoring prefixes into the scorer's window: (n_tokens, errors, truncated, fitted).

    Every compression is scored after every prefix it needs, so prefix_l + max_i z_i must fit the
    window. Examples that cannot fit are failed (``errors[i]``) or, with overflow ``truncate``,
    their context is cut."""
    flat = [t for row in texts for t in row]
    counts = iter(backend.count_tokens(flat) if flat else [])  # one call for every compression
    n_tokens = [[next(counts) for _ in row] for row in texts]
    errors: list[str | None] = [None] * len(exs)
    truncated: list[int | None] = [None] * len(exs)
    fitted = list(exs)
    ctx = backend.count_tokens([e.context for e in exs])
    ov = [n + CHAT_TEMPLATE_MARGIN for n in backend.count_tokens(
        [prompt.render_text(context="", question=e.question) for e in exs])]
    n_ctx = backend.info().n_ctx  # after counting: a served scorer has learnt its window by now
    if n_ctx is not None:
        z = [max(r, default=0) for r in n_tokens]
        alive = list(range(len(exs)))
        fail = overflow == "fail"

        def fits(ids: list[int]) -> bool:
            max_z = max((z[i] for i in ids), default=0)
            return all((ctx[l_] if fail else 1) + ov[l_] + max_z <= n_ctx for l_ in ids)

        while alive and not fits(alive):
            # fail: drop the example that needs the most room; truncate: the longest compression
            culprit = max(alive, key=(lambda i: ctx[i] + ov[i] + z[i]) if fail else (lambda i: z[i]))
            alive.remove(culprit)
            errors[culprit] = err_text(ContextTooLong(
                f"scoring needs {ctx[culprit] + ov[culprit]} prefix tokens (context + MI prompt) and "
                f"{z[culprit]} compression tokens, which does not fit with the other examples into the "
                f"scorer {scorer!r} (window {n_ctx} tokens); use a scorer with a longer window"
                + ("" if not fail else " or set on_context_overflow: truncate")))
        max_z = max((z[i] for i in alive), default=0)
        for i in alive:
            budget = n_ctx - ov[i] - max_z
            if ctx[i] > budget:
                kept = truncate_to_tokens(exs[i].context, budget, backend.count_tokens)
                truncated[i] = backend.count_tokens([kept])[0] if kept else 0
                fitted[i] = dataclasses.replace(exs[i], context=kept)
    return n_tokens, errors, truncated, fitted


def build_tensors(backend: Any, jobs: Sequence[ScoreJob], prompt: Prompt, samples: int, overflow: str,
                  scorer: str) -> list[TensorOutcome]:
    """``logp[i, j, l] = log p(texts[i][j] | scoring prefix of exs[l])`` (nats) for each job, via
    :func:`compressbench.measure.scoring.build_logp_tensors`: the jobs (groups sharing this scorer,
    prompt and examples) are scored together, **one prefill per distinct scoring prefix**, each
    prefix followed by every continuation any job needs after it (all of them, or a design's).

    Per job: examples that cannot fit are failed (``errors[i]``, a row of NaN) or their context is
    cut (:func:`_fit_job`); fewer than 2 scorable examples give no tensor. A job with a design whose
    examples do not all fit is not scored (its caller re-plans the design on the examples that fit).

    Usage of example ``l`` in a job: one call, ``shared_prefix_calls`` ``[P, S1, S2]``: its
    prefix (P tokens) and the continuations scored after it for this job (S1 tokens, S2 their
    squares), whichever jobs were in this call; ``prefixes[l]`` names the prefix, so that
    :func:`share_prefills` can split each prefill among the rows of the round that share it."""
    fits = [_fit_job(backend, j.exs, j.texts, prompt, overflow, scorer) for j in jobs]
    results: list[TensorOutcome | None] = [None] * len(jobs)
    todo: list[int] = []
    goods: dict[int, list[int]] = {}
    for k, (job, (n_tokens, errors, truncated, fitted)) in enumerate(zip(jobs, fits)):
        good = [i for i in range(len(job.exs)) if errors[i] is None]
        if len(good) < 2 or (job.design is not None and len(good) < len(job.exs)):
            no_calls = {"n_prompt_tokens": 0, "n_completion_tokens": 0, "n_calls": 0}
            results[k] = TensorOutcome(n_tokens, errors, truncated,
                                       [no_calls if e is None else None for e in errors], None, [None] * len(errors))
            continue
        goods[k] = good
        todo.append(k)
    work: list[ScoredWork] = []
    def known(k: int) -> np.ndarray | None:
        kn = jobs[k].known
        return None if kn is None else np.asarray(kn)[np.ix_(goods[k], range(samples), goods[k])]

    tensors = build_logp_tensors(backend, [TensorJob(
        [fits[k][3][i] for i in goods[k]], [list(jobs[k].texts[i]) for i in goods[k]], jobs[k].design, known(k))
        for k in todo], prompt=prompt, work=work) if todo else []
    for k, t, w in zip(todo, tensors, work):
        job = jobs[k]
        n_tokens, errors, truncated, fitted = fits[k]
        good = goods[k]
        n = len(job.exs)
        logp = np.full((n, samples, n), np.nan)
        logp[np.ix_(good, range(samples), good)] = np.asarray(t.logp_nats, dtype=np.float64)
        prefix_texts = [prompt.render_text(context=fitted[i].context, question=fitted[i].question) for i in good]
        prefix_tokens = backend.count_tokens(prefix_texts)
        usage: list[dict[str, Any] | None] = [None] * n
        prefixes: list[str | None] = [None] * n
        for pos, i in enumerate(good):
            lens = w.continuation_tokens[pos]
            s1, s2 = int(sum(lens)), int(sum(x * x for x in lens))
            usage[i] = {"n_prompt_tokens": int(prefix_tokens[pos]) + s1, "n_completion_tokens": 0, "n_calls": 1,
                        "shared_prefix_calls": [[int(prefix_tokens[pos]), s1, s2]]}
            if lens:  # something was scored after this prefix: it was prefilled (an empty text counts)
                prefixes[i] = text_hash(prefix_texts[pos])
        results[k] = TensorOutcome(n_tokens, errors, truncated, usage, logp, prefixes)
    return results  # type: ignore[return-value]


def loglik_batch(backend: Any, items: Sequence[tuple[Example, str]], prompt: Prompt,
                 prompt_format: str = "completion") -> list[dict[str, Any]]:
    """The likelihood predictor (:func:`compressbench.measure.predict_loglik.predict_loglik`) on each
    (example, compression): ``LoglikPrediction.as_dict()`` plus ``n_prompt_tokens`` and ``wall_s``,
    or ``{"error", "deterministic"}``."""
    out: list[dict[str, Any]] = []
    for ex, z in items:
        t0 = time.perf_counter()
        try:
            pred = predict_loglik(backend, ex, z, prompt=prompt, prompt_format=prompt_format)
            prefix, _, _ = loglik_prompt(backend, ex, z, prompt=prompt, prompt_format=prompt_format)
        except ContextTooLong as exc:
            out.append({"error": err_text(exc), "deterministic": True})
            continue
        except (BackendError, UsageError) as exc:
            out.append({"error": err_text(exc), "deterministic": isinstance(exc, UsageError)})
            continue
        n_prefix = backend.count_tokens([prefix])[0]
        lens = [int(o.n_tokens) for o in pred.options]
        out.append({**pred.as_dict(), "n_prompt_tokens": int(n_prefix + sum(lens)),
                    # one prefix, every option scored after it (cost.shared_prefix_flops)
                    "shared_prefix": [int(n_prefix), sum(lens), sum(n * n for n in lens)],
                    "wall_s": time.perf_counter() - t0})
    return out


def reference_nll(backend: Any, prefix: str, reference: str) -> tuple[float, int]:
    """``(total nats, n tokens)`` of a reference answer after ``prefix`` (metrics.reference_nll_nats)."""
    nats, n_tok = reference_nll_nats(backend, prefix, reference)
    return float(nats), int(n_tok)
