"""A model seen through the run's cache (as lm-evaluation-harness's ``CachingLM``): one key scheme,
lookups and writes in the driver, misses sent to the model's executor.

Key scheme (:meth:`CachedModel.key`): SHA-256 of the canonical JSON of
``{"v": cache version, "kind": ..., "model": identity, **material}`` where ``identity`` is the
model's backend, reference, output-changing options and revision
(:meth:`compressbench.engine.scheduler.ModelRegistry.identity`) and ``material`` is everything else that
changes the entry:

- ``generation``: the full rendered chat (prompt id and the example's content), the sampling params
  (temperature, top_p, seed, n = M, max_new_tokens) and the overflow policy; never the batch size;
- ``logp``: the scoring prompt id, each example's context and question hash, every compression's
  hash, the overflow policy (an ``.npy`` tensor plus a JSON of per-example facts);
- ``ref_nll``: the prefix and reference hashes;
- ``loglik``: the predictor prompt id and format, the example's question, options and reference hashes and the
  compression's hash (the likelihood predictor's scored options);
- ``baseline``: the baseline name and the context hash (``truncate:<n>`` with this tokenizer).

A cached generation holds all M samples (sample j at index j). Deterministic failures (a context
overflow) are cached; transient ones are retried on the next run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from compressbench.engine import model_work
from compressbench.core.errors import BackendError
from compressbench.engine.model_work import ChatSpec, GenOutcome, TensorOutcome
from compressbench.core.progress import Progress
from compressbench.core.prompts import Prompt
from compressbench.engine.scheduler import Executor, ModelRegistry
from compressbench.engine.store import Cache, cache_key, text_hash
from compressbench.core.types import Example, GenerationParams


class CachedModel:
    """One named model behind the cache. Methods take and return plain data."""

    def __init__(self, name: str, registry: ModelRegistry, executor: Executor, cache: Cache, *,
                 overflow: str, progress: bool = False, min_batch: int | None = None):
        self.name = name
        #: A backend that schedules its own concurrency (a served model) gets at least this many
        #: requests per call, so its configured concurrency is reached whatever the batch size
        #: (a memory budget for local models).
        self._min_batch = int(min_batch or 1)
        self._registry = registry
        self._executor = executor
        self._cache = cache
        self._overflow = overflow
        self._progress = progress

    def key(self, kind: str, *, identity: Any = None, **material: Any) -> str:
        """The one cache key scheme (see the module docstring); ``identity`` may be passed in when
        many keys are made at once."""
        ident = identity if identity is not None else self._registry.identity(self.name)
        return cache_key({"kind": kind, "model": ident, **material})

    def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return self._executor.run(self.name, fn, *args)
        finally:
            self._registry.refresh_if_loaded(self.name)

    # ------------------------------------------------------------------ generation

    def generate(self, specs: Sequence[ChatSpec], params: GenerationParams, batch_size: int,
                 desc: str = "") -> list[GenOutcome]:
        """One outcome per chat, through the cache; misses are generated ``batch_size`` at a time
        (at least ``min_batch``)."""
        pdict = dataclasses.asdict(params)
        ident = self._registry.identity(self.name)
        keys = [self.key("generation", identity=ident, chat=s.render(), params=pdict, overflow=self._overflow)
                for s in specs]
        out: list[GenOutcome | None] = []
        for k in keys:
            hit = self._cache.get_json(k)
            out.append(None if hit is None else GenOutcome.from_json(hit))
        misses = [i for i, o in enumerate(out) if o is None]
        if misses:
            bar = Progress(desc or f"generate {self.name}", len(misses), enabled=self._progress)
            try:
                step = max(batch_size, self._min_batch)
                for start in range(0, len(misses), step):
                    idx = misses[start:start + step]
                    results = self._run(model_work.generate_batch, [specs[i] for i in idx], params,
                                        self._overflow, self.name)
                    for i, res in zip(idx, results):
                        out[i] = res
                        if res.error is None or res.deterministic:
                            self._cache.put_json(keys[i], res.to_json())
                    bar.update(len(idx))
            finally:
                bar.close()
        return out  # type: ignore[return-value]

    # ------------------------------------------------------------------ scoring

    def _logp_key(self, exs: Sequence[Example], texts: Sequence[Sequence[str]], prompt: Prompt,
                  negatives: Any = None) -> str:
        extra = {} if negatives is None else {"negatives": negatives}  # every context: the original key
        return self.key("logp", prompt=prompt.id, contexts=[text_hash(e.context) for e in exs],
                        questions=[text_hash(e.question) for e in exs],
                        compressions=[[text_hash(t) for t in row] for row in texts], overflow=self._overflow,
                        **extra)

    def logp_tensor(self, exs: Sequence[Example], texts: Sequence[Sequence[str]], prompt: Prompt,
                    samples: int) -> TensorOutcome:
        """The (N, M, N) log-prob tensor of a group, through the cache."""
        return self.logp_tensors([model_work.ScoreJob(list(exs), [list(r) for r in texts])], prompt, samples,
                                 [None])[0]

    def logp_tensors(self, jobs: Sequence[model_work.ScoreJob], prompt: Prompt, samples: int,
                     negatives: Sequence[Any]) -> list[TensorOutcome]:
        """Several groups' tensors through the cache (key: the group's examples and compressions,
        the prompt, the overflow policy and ``negatives[k]``, the design ``{"k", "seed"}`` or None
        for every context); the misses are scored together in one model call
        (:func:`compressbench.engine.model_work.build_tensors`: one prefill per distinct prefix).

        ``jobs`` are one scoring round: the prefill of each distinct prefix is charged in equal
        shares to the rows of ``jobs`` that use it (:func:`compressbench.engine.model_work.share_prefills`),
        the cached ones included, so a group's usage is the same whether its tensor was computed
        now, with other groups, or read from the cache. The cache keeps each group's own usage,
        before that share (an entry is a function of its key)."""
        keys = [self._logp_key(j.exs, j.texts, prompt, neg) for j, neg in zip(jobs, negatives)]
        out: list[TensorOutcome | None] = []
        for key in keys:
            meta = self._cache.get_json(key)
            hit = None
            # an entry written before the prefixes were recorded cannot be shared fairly: score it again
            if meta is not None and "prefixes" in meta:
                logp = self._cache.get_array(key) if meta.get("has_tensor") else None
                if logp is not None or not meta.get("has_tensor"):
                    hit = TensorOutcome(meta["n_tokens"], meta["errors"], meta["truncated"], meta["usage"], logp,
                                        meta["prefixes"])
            out.append(hit)
        misses = [k for k, o in enumerate(out) if o is None]
        if misses:
            res: list[TensorOutcome] = self._run(model_work.build_tensors, [jobs[k] for k in misses], prompt,
                                                 samples, self._overflow, self.name)
            for k, r in zip(misses, res):
                if r.logp is not None:
                    self._cache.put_array(keys[k], np.asarray(r.logp))
                self._cache.put_json(keys[k], r.meta())
                out[k] = r
        return model_work.share_prefills(out)  # type: ignore[arg-type]

    def loglik(self, items: Sequence[tuple[Example, str]], prompt: Prompt, prompt_format: str = "completion",
               desc: str = "") -> list[dict[str, Any]]:
        """The likelihood predictor on each (example, compression), through the cache (key: the
        predictor prompt id and format, the example's question, options and reference, the
        compression)."""
        ident = self._registry.identity(self.name)
        keys = [self.key("loglik", identity=ident, prompt=prompt.id, format=prompt_format,
                         question=text_hash(ex.question),
                         options=[text_hash(o) for o in ex.options], reference=text_hash(ex.reference or ""),
                         compression=text_hash(z)) for ex, z in items]
        out: list[dict[str, Any] | None] = [self._cache.get_json(k) for k in keys]
        misses = [i for i, o in enumerate(out) if o is None]
        if misses:
            bar = Progress(desc or f"predict (loglik) {self.name}", len(misses), enabled=self._progress)
            try:
                step = max(16, self._min_batch)
                for start in range(0, len(misses), step):
                    idx = misses[start:start + step]
                    results = self._run(model_work.loglik_batch, [items[i] for i in idx], prompt, prompt_format)
                    for i, res in zip(idx, results):
                        out[i] = res
                        if "error" not in res or res.get("deterministic"):
                            self._cache.put_json(keys[i], res)
                    bar.update(len(idx))
            finally:
                bar.close()
        return out  # type: ignore[return-value]

    def reference_nll(self, prefix: str, reference: str) -> dict[str, Any]:
        """``{"nats", "n_tokens"}`` of a reference answer after ``prefix``, or ``{"error"}``."""
        key = self.key("ref_nll", prefix=text_hash(prefix), reference=text_hash(reference))
        hit = self._cache.get_json(key)
        if hit is not None:
            return hit
        try:
            nats, n_tok = self._run(model_work.reference_nll, prefix, reference)
        except BackendError as exc:
            return {"error": model_work.err_text(exc)}
        hit = {"nats": nats, "n_tokens": n_tok}
        self._cache.put_json(key, hit)
        return hit

    def baseline(self, name: str, contexts: Sequence[str]) -> list[str]:
        """A tokenizer-counting baseline (``truncate:<n>``) of each context, through the cache."""
        ident = self._registry.identity(self.name)
        keys = [self.key("baseline", identity=ident, name=name, context=text_hash(c)) for c in contexts]
        out: list[str | None] = []
        for k in keys:
            hit = self._cache.get_json(k)
            out.append(None if hit is None else hit["text"])
        misses = [i for i, t in enumerate(out) if t is None]
        if misses:
            texts = self._run(model_work.truncate_contexts, name, [contexts[i] for i in misses])
            for i, t in zip(misses, texts):
                out[i] = t
                self._cache.put_json(keys[i], {"text": t})
        return out  # type: ignore[return-value]
