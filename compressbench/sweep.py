"""The sweep engine: grid expansion, model-grouped scheduling, cache lookups, records, summary.

A *group* is (dataset, compressor, prompt, temperature, seed): it owns the M compressions per
example and one (N, M, N) log-prob tensor (shared by every predictor). A *cell* is a group plus a
predictor; it owns one record per example and one summary row.

Stages run model by model, so each in-process model is loaded at most once per sweep and only on
a cache miss (a fully cached resume loads nothing):

1. compress: every model compressor writes M samples per example (``GenerationParams(n=M,
   temperature, seed)``); the built-in baselines are computed in stage 2 (truncate:<n> counts
   tokens with the scorer's tokenizer).
2. score: the scorer builds ``logp[i, j, l] = log p(z_ij | x_l)`` (nats) via
   :func:`compressbench.scoring.build_logp_tensor`; :func:`compressbench.mi.estimate_mi` gives the
   MI (bits) with its bootstrap CI and the per-compression (pointwise) terms.
3. predict: every predictor answers from each compression (greedy by default); the answers are
   parsed, majority-voted and scored (:mod:`compressbench.metrics`), optionally with a reference
   answer's NLL under the predictor.
4. judge (optional): the judge model grades free-form answers.
5. records: one line per (cell, example) appended to ``records.jsonl``; then the summary.

Cache keys (:func:`compressbench.store.cache_key`) cover the model identity (backend, reference,
options incl. dtype, revision from ``info()``), the full rendered chat (so the prompt id and the
example's content), the sampling params (temperature, top_p, seed, n = M, max_new_tokens) and the
overflow policy; never the batch size. A cached generation holds all M samples (sample j at
index j). Samples must not depend on batch composition (the backends' contract: the hf backend
seeds each chat on its own); greedy decoding in padded batches can differ in the last float bits
between batch compositions, so set ``batch_size.compressor: 1`` when bit-exact reruns matter.

Context overflow (``on_context_overflow``): before a cache miss is generated, the variable text of
the prompt (the context for compressors, the compression for predictors, the context in the
scoring prefix) is measured with the model's ``count_tokens``; if prompt + text + max_new_tokens
exceeds the model's window (``info().n_ctx``), ``truncate`` cuts the text at a word boundary to fit
and records the kept token count in ``context_truncated[role]``; ``fail`` fails the example (a
record with ``error``). Failed examples count towards ``max_error_rate``; past it the sweep
writes what it has and raises :class:`SweepAborted`.

Cost: ``flops[role] = 2 * n_params * (n_prompt_tokens + n_completion_tokens)`` (the basic
estimate; ``compressbench.cost`` refines it). Scorer usage per example ``i`` is its row of the
shared-prefix schedule: one prefill of prefix ``x_i`` plus every compression of the group scored
after it (``n_prompt_tokens = tokens(prefix_i) + sum_{l,j} tokens(z_lj)``, ``n_completion_tokens = 0``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from compressbench.baselines import baseline_compression, truncate_to_tokens
from compressbench.config import RUNTIME_ONLY_OPTIONS, PromptVariant, SweepConfig, is_baseline
from compressbench.errors import BackendError, CompressbenchError, ContextTooLong, DataError
from compressbench.prompts import Prompt, chat_text, load_prompt
from compressbench.store import RunStore, cache_key, text_hash
from compressbench.types import Chat, Example, GenerationParams, ModelInfo

log = logging.getLogger(__name__)

ROLES = ("compressor", "predictor", "scorer", "judge")
#: Tokens reserved for chat-template markup that `count_tokens` on plain text does not see.
CHAT_TEMPLATE_MARGIN = 24
#: Seed of the MI bootstrap (seeded: reruns give identical intervals).
MI_SEED = 0

SUMMARY_COLUMNS = (
    "dataset", "compressor", "predictor", "prompt", "prompt_id", "temperature", "seed",
    "n", "n_samples", "n_errors", "n_unscored",
    "accuracy", "accuracy_ci_low", "accuracy_ci_high",
    "mi_bits", "mi_bits_raw", "mi_ci_low_bits", "mi_ci_high_bits", "ceiling_bits", "bits_per_token",
    "bits_per_token_ci_low", "bits_per_token_ci_high", "mean_compression_tokens", "mean_ref_nll_nats",
    *(f"tokens_{r}_{k}" for r in ROLES for k in ("prompt", "completion")),
    *(f"flops_{r}" for r in ROLES),
    "wall_s",
)

BackendFactory = Callable[..., Any]


class SweepAborted(CompressbenchError):
    """More examples failed than ``max_error_rate`` allows; records so far are on disk."""


# --------------------------------------------------------------------------- grid


@dataclass(frozen=True)
class Group:
    """(dataset, compressor, prompt variant, temperature, seed): one set of compressions + one tensor."""

    dataset: str
    compressor: str
    prompt: PromptVariant
    temperature: float
    seed: int


@dataclass(frozen=True)
class Cell:
    group: Group
    predictor: str

    def as_dict(self) -> dict[str, Any]:
        g = self.group
        return {"dataset": g.dataset, "compressor": g.compressor, "predictor": self.predictor,
                "prompt": g.prompt.label, "temperature": g.temperature, "seed": g.seed}

    def key(self, salt: str) -> str:
        """Readable cell key plus a hash of everything else that changes its records."""
        g = self.group
        return (f"{g.dataset}/{g.compressor}/{self.predictor}/{g.prompt.label}/T{g.temperature:g}/s{g.seed}"
                f"#{salt}")


def expand_grid(config: SweepConfig) -> list[Group]:
    """Every group, in a deterministic order (dataset, prompt, temperature, seed, compressor)."""
    return [Group(d.name, c, p, t, s)
            for d in config.datasets for p in config.prompts for t in config.temperatures
            for s in config.seeds for c in config.compressors]


# --------------------------------------------------------------------------- model pool


class ModelPool:
    """Loads each named model at most once per sweep (lazily), hands out infos and cache identities.

    Infos known from a previous run's manifest are reused, so a fully cached resume loads nothing.
    """

    def __init__(self, config: SweepConfig, factory: BackendFactory, known_infos: Mapping[str, Any],
                 on_load: Callable[[str, ModelInfo], None] | None = None):
        self._config = config
        self._factory = factory
        self._backends: dict[str, Any] = {}
        self._infos: dict[str, dict[str, Any]] = {k: dict(v) for k, v in known_infos.items() if v}
        self._on_load = on_load
        self.loads: Counter[str] = Counter()

    def get(self, name: str) -> Any:
        if name not in self._backends:
            spec = self._config.models[name]
            log.info("loading model %s (%s backend, %s)", name, spec.backend, spec.model)
            backend = self._factory(spec.backend, spec.model, **dict(spec.options))
            self.loads[name] += 1
            self._backends[name] = backend
            info = dataclasses.asdict(backend.info())
            old = self._infos.get(name)
            if old is not None and old.get("revision") != info.get("revision"):
                log.warning("model %s changed since this run started (revision %s -> %s); cached results of "
                            "the old revision are not reused", name, old.get("revision"), info.get("revision"))
            self._infos[name] = info
            if self._on_load is not None:
                self._on_load(name, backend.info())
        return self._backends[name]

    def info(self, name: str) -> dict[str, Any]:
        if name not in self._infos:
            self.get(name)
        return self._infos[name]

    def infos(self) -> dict[str, dict[str, Any]]:
        return dict(self._infos)

    def identity(self, name: str) -> dict[str, Any]:
        """What identifies a model's outputs in cache keys (reference, backend, options, revision).

        Options that only change how the work is scheduled (:data:`compressbench.config.RUNTIME_ONLY_OPTIONS`: batch
        budgets, threads, concurrency, retries, timeouts) are left out, so changing them reuses the cache.
        """
        spec = self._config.models[name]
        options = {k: v for k, v in spec.options.items() if k not in RUNTIME_ONLY_OPTIONS}
        return {"backend": spec.backend, "model": spec.model, "options": options,
                "revision": self.info(name).get("revision")}

    def n_params(self, name: str) -> int | None:
        info = self.info(name)
        return info.get("n_active_params") or info.get("n_params")

    def release(self, name: str) -> None:
        """Drop a model that no later stage needs (frees its memory)."""
        if self._backends.pop(name, None) is not None:
            log.info("released model %s", name)


# --------------------------------------------------------------------------- per-example state


@dataclass
class _Comp:
    """The compressions of one example in one group."""

    texts: list[str] | None = None
    usage: dict[str, Any] | None = None
    error: str | None = None
    truncated: dict[str, int] = field(default_factory=dict)
    n_tokens: list[int] | None = None
    pointwise_bits: list[float] | None = None
    scorer_usage: dict[str, Any] | None = None
    wall_s: float = 0.0


@dataclass
class _Pred:
    """One example's predictions in one cell."""

    texts: list[str] = field(default_factory=list)
    usage: dict[str, Any] | None = None
    error: str | None = None
    truncated: int | None = None
    ref_nll_nats: float | None = None
    answers: list[str | None] = field(default_factory=list)
    parse_errors: list[str | None] = field(default_factory=list)
    voted: str | None = None
    judge_text: str | None = None
    judge_usage: dict[str, Any] | None = None
    wall_s: float = 0.0


def _usage_dict(n_prompt: int | None, n_completion: int | None, n_calls: int) -> dict[str, Any]:
    return {"n_prompt_tokens": n_prompt, "n_completion_tokens": n_completion, "n_calls": n_calls}


def _add_usage(a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, Any] | None:
    if a is None:
        return None if b is None else dict(b)
    if b is None:
        return dict(a)
    out = {}
    for k in ("n_prompt_tokens", "n_completion_tokens", "n_calls"):
        x, y = a.get(k), b.get(k)
        out[k] = None if x is None or y is None else x + y
    return out


def _err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="item", disable=(None if enabled else True), leave=False,
                dynamic_ncols=True)


# --------------------------------------------------------------------------- the sweep


@dataclass
class SweepResult:
    run_dir: Path
    rows: list[dict[str, Any]]
    n_records_written: int
    model_loads: dict[str, int]
    cache_hits: int
    cache_misses: int


class Sweep:
    """One sweep over a config into a run directory (resumable). Use :func:`run_sweep`."""

    def __init__(self, config: SweepConfig, runs_dir: str | Path, *, backend_factory: BackendFactory | None = None,
                 progress: bool = True, examples: Mapping[str, Sequence[Example]] | None = None):
        from compressbench.backends import load_backend

        self.config = config
        self.store = RunStore(Path(runs_dir) / config.name)
        self.factory = backend_factory or load_backend
        self.progress = progress
        self._examples_given = examples
        self.prompts: dict[str, Prompt] = {p.label: load_prompt(p.prompt_file) for p in config.prompts}
        self.predict_prompt = load_prompt("predict")
        self.score_prompt = load_prompt("mi_score")
        self.judge_prompt_id: str | None = None
        if config.judge:
            self.judge_prompt_id = load_prompt("judge").id

    # ------------------------------------------------------------------ setup

    def _load_examples(self) -> dict[str, list[Example]]:
        out: dict[str, list[Example]] = {}
        for d in self.config.datasets:
            if self._examples_given is not None:
                exs = list(self._examples_given[d.name])
            else:
                from compressbench.data import load_dataset

                exs = list(load_dataset({**d.spec, "name": d.name}))
            if self.config.limit is not None:
                exs = exs[: self.config.limit]
            if not exs:
                raise DataError(f"dataset {d.name!r} has no examples; check its spec {dict(d.spec)} and --limit")
            ids = [e.id for e in exs]
            dup = [k for k, v in Counter(ids).items() if v > 1]
            if dup:
                raise DataError(f"dataset {d.name!r} has duplicate example ids {dup[:5]}; ids must be unique")
            out[d.name] = exs
        return out

    def _manifest(self, pool: ModelPool, created: str | None) -> dict[str, Any]:
        from compressbench import __version__

        prompt_ids = {label: p.id for label, p in self.prompts.items()}
        prompt_ids["predict"] = self.predict_prompt.id
        prompt_ids["mi_score"] = self.score_prompt.id
        if self.judge_prompt_id:
            prompt_ids["judge"] = self.judge_prompt_id
        infos = pool.infos()
        return {
            "compressbench_version": __version__,
            "git_sha": _git_sha(),
            "created_utc": created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seeds": list(self.config.seeds),
            "prompt_ids": prompt_ids,
            "models": {n: {**m.to_dict(), "info": infos.get(n)} for n, m in self.config.models.items()},
        }

    # ------------------------------------------------------------------ generation with cache

    def _fit(self, backend: Any, n_ctx: int | None, render: Callable[[str], str], text: str,
             reserve: int, what: str, model: str) -> tuple[str, int | None]:
        """Fit `text` into the window: (text, kept tokens if truncated). Raises ContextTooLong in fail mode."""
        if n_ctx is None:
            return text, None
        overhead = backend.count_tokens([render("")])[0] + CHAT_TEMPLATE_MARGIN
        budget = n_ctx - reserve - overhead
        n_text = backend.count_tokens([text])[0] if text else 0
        if n_text <= budget:
            return text, None
        if self.config.on_context_overflow == "fail" or budget <= 0:
            raise ContextTooLong(
                f"the {what} has {n_text} tokens but model {model!r} (window {n_ctx} tokens) leaves room for "
                f"{max(budget, 0)} after the prompt and {reserve} reserved tokens; set on_context_overflow: "
                f"truncate, lower max_new_tokens, or use a model with a longer window",
                n_tokens=n_text, max_tokens=max(budget, 0))
        kept = truncate_to_tokens(text, budget, backend.count_tokens)
        return kept, backend.count_tokens([kept])[0] if kept else 0

    def _generate(self, pool: ModelPool, model: str, role: str, items: list[tuple[Callable[[str], Chat], str]],
                  params: GenerationParams, desc: str) -> list[dict[str, Any]]:
        """Generate for each (render, variable text) item, through the cache.

        Returns one entry per item: ``{"texts", "usage", "truncated"}`` or ``{"error"}``.
        """
        ident = pool.identity(model)
        pdict = dataclasses.asdict(params)
        keys = [cache_key({"kind": "generation", "model": ident, "chat": render(text), "params": pdict,
                           "overflow": self.config.on_context_overflow}) for render, text in items]
        out: list[dict[str, Any] | None] = [self.store.cache.get_json(k) for k in keys]
        # Deterministic failures (overflow) are cached; transient ones are retried.
        misses = [i for i, e in enumerate(out) if e is None]
        if not misses:
            return out  # type: ignore[return-value]
        backend = pool.get(model)
        n_ctx = pool.info(model).get("n_ctx")
        bs = self.config.batch_size[role]
        bar = _progress(len(misses), desc, self.progress)
        try:
            # Fit texts (token counting) then generate in batches.
            ready: list[tuple[int, Chat, int | None]] = []
            for i in misses:
                render, text = items[i]
                try:
                    kept, n_kept = self._fit(backend, n_ctx, lambda t, r=render: chat_text(r(t)), text,
                                             params.max_new_tokens, "context" if role == "compressor" else
                                             "compression", model)
                except ContextTooLong as exc:
                    out[i] = {"error": _err(exc), "deterministic": True}
                    self.store.cache.put_json(keys[i], out[i])
                    bar.update(1)
                    continue
                ready.append((i, render(kept), n_kept))
            for start in range(0, len(ready), bs):
                batch = ready[start:start + bs]
                t0 = time.perf_counter()
                try:
                    gens = backend.generate([c for _, c, _ in batch], params)
                    results: list[Any] = list(gens)
                except BackendError as exc:
                    if len(batch) == 1:
                        results = [exc]
                    else:  # isolate the failing chat(s)
                        results = []
                        for _, chat, _ in batch:
                            try:
                                results.append(backend.generate([chat], params)[0])
                            except BackendError as exc1:
                                results.append(exc1)
                dt = (time.perf_counter() - t0) / len(batch)
                for (i, _, n_kept), g in zip(batch, results):
                    if isinstance(g, BaseException):
                        det = isinstance(g, ContextTooLong)
                        out[i] = {"error": _err(g), "deterministic": det, "wall_s": dt}
                        if det:
                            self.store.cache.put_json(keys[i], out[i])
                    else:
                        out[i] = {
                            "texts": [s.text for s in g.samples],
                            "finish_reasons": [s.finish_reason for s in g.samples],
                            "usage": _usage_dict(g.usage.n_prompt_tokens, g.usage.n_completion_tokens, 1),
                            "truncated": n_kept,
                            "wall_s": dt,
                        }
                        self.store.cache.put_json(keys[i], out[i])
                bar.update(len(batch))
        finally:
            bar.close()
        return out  # type: ignore[return-value]

    # ------------------------------------------------------------------ stages

    def _compress_chat(self, group: Group, ex: Example) -> Callable[[str], Chat]:
        prompt = self.prompts[group.prompt.label]
        values = {"question": ex.question}
        if group.prompt.k is not None:
            values["k"] = str(group.prompt.k)

        def render(context: str) -> Chat:
            return prompt.render_chat(**_only(prompt, {**values, "context": context}))

        return render

    def _stage_compress(self, pool: ModelPool, groups: list[Group], examples: dict[str, list[Example]],
                        state: dict[Group, list[_Comp]]) -> None:
        cfg = self.config
        for model in [c for c in cfg.compressors if not is_baseline(c)]:
            mine = [g for g in groups if g.compressor == model]
            for g in mine:
                exs = examples[g.dataset]
                params = GenerationParams(max_new_tokens=cfg.max_new_tokens["compressor"], temperature=g.temperature,
                                          n=cfg.samples, seed=g.seed)
                t0 = time.perf_counter()
                entries = self._generate(pool, model, "compressor",
                                         [(self._compress_chat(g, e), e.context) for e in exs], params,
                                         f"compress {g.dataset}/{model}/{g.prompt.label}")
                for comp, entry in zip(state[g], entries):
                    if "error" in entry:
                        comp.error = f"compressor: {entry['error']}"
                        continue
                    comp.texts = list(entry["texts"])
                    comp.usage = entry["usage"]
                    if entry.get("truncated") is not None:
                        comp.truncated["compressor"] = entry["truncated"]
                log.debug("compressed %s in %.2fs", g, time.perf_counter() - t0)
                for comp, entry in zip(state[g], entries):
                    comp.wall_s += float(entry.get("wall_s", 0.0) or 0.0)
            self._release_if_done(pool, model, "compressor")

    def _baselines(self, pool: ModelPool, g: Group, exs: list[Example], comps: list[_Comp]) -> None:
        """Fill baseline compressions (truncate:<n> uses the scorer's tokenizer, through the cache)."""
        cfg = self.config
        for ex, comp in zip(exs, comps):
            if g.compressor in ("identity", "empty"):
                text = baseline_compression(g.compressor, ex.context)
            else:
                key = cache_key({"kind": "baseline", "name": g.compressor, "scorer": pool.identity(cfg.scorer),
                                 "context": text_hash(ex.context)})
                hit = self.store.cache.get_json(key)
                if hit is None:
                    scorer = pool.get(cfg.scorer)
                    text = baseline_compression(g.compressor, ex.context, scorer.count_tokens)
                    self.store.cache.put_json(key, {"text": text})
                else:
                    text = hit["text"]
            comp.texts = [text] * cfg.samples
            comp.usage = _usage_dict(0, 0, 0)

    def _stage_score(self, pool: ModelPool, groups: list[Group], examples: dict[str, list[Example]],
                     state: dict[Group, list[_Comp]]) -> dict[Group, Any]:
        """Build (or fetch) every group's log-prob tensor; return the MI estimates."""
        from compressbench.mi import estimate_mi

        cfg = self.config
        estimates: dict[Group, Any] = {}
        bar = _progress(len(groups), "score (MI)", self.progress)
        try:
            for g in groups:
                exs, comps = examples[g.dataset], state[g]
                if is_baseline(g.compressor):
                    self._baselines(pool, g, exs, comps)
                ok = [i for i, c in enumerate(comps) if c.error is None and c.texts is not None]
                if not ok:
                    estimates[g] = None
                    bar.update(1)
                    continue
                t0 = time.perf_counter()
                entry, logp = self._tensor(pool, g, [exs[i] for i in ok], [comps[i].texts for i in ok])
                dt = time.perf_counter() - t0
                keep = []
                for pos, i in enumerate(ok):
                    comps[i].n_tokens = entry["n_tokens"][pos]
                    comps[i].wall_s += dt / len(ok)
                    err = entry["errors"][pos]
                    if err is not None:
                        comps[i].error = f"scorer: {err}"
                        continue
                    if entry["truncated"][pos] is not None:
                        comps[i].truncated["scorer"] = entry["truncated"][pos]
                    comps[i].scorer_usage = entry["usage"][pos]
                    keep.append(pos)
                est = None
                if logp is not None and len(keep) >= 2:
                    sub = logp[np.ix_(keep, range(cfg.samples), keep)]
                    n_tok = np.array([entry["n_tokens"][p] for p in keep], dtype=float)
                    # All-empty compressions (the empty baseline): bits per token is undefined.
                    est = estimate_mi(sub, n_tokens=n_tok if n_tok.any() else None, n_boot=cfg.mi_n_boot,
                                      seed=MI_SEED)
                    for row, pos in enumerate(keep):
                        comps[ok[pos]].pointwise_bits = [float(v) for v in est.pointwise_bits[row]]
                elif logp is not None:
                    log.warning("group %s has fewer than 2 scored examples; no MI estimate", g)
                estimates[g] = est
                bar.update(1)
        finally:
            bar.close()
        self._release_if_done(pool, cfg.scorer, "scorer")
        return estimates

    def _tensor(self, pool: ModelPool, g: Group, exs: list[Example], texts: list[list[str]]
                ) -> tuple[dict[str, Any], np.ndarray | None]:
        """The (N, M, N) tensor for these examples and compressions, through the cache.

        Examples whose scoring prefix does not fit the scorer's window are truncated or failed
        (``errors[i]``) per ``on_context_overflow``; failed ones get a row of NaN.
        """
        cfg = self.config
        key = cache_key({"kind": "logp", "scorer": pool.identity(cfg.scorer), "prompt": self.score_prompt.id,
                         "contexts": [text_hash(e.context) for e in exs],
                         "questions": [text_hash(e.question) for e in exs],
                         "compressions": [[text_hash(t) for t in row] for row in texts],
                         "overflow": cfg.on_context_overflow})
        meta = self.store.cache.get_json(key)
        if meta is not None:
            logp = self.store.cache.get_array(key) if meta.get("has_tensor") else None
            if logp is not None or not meta.get("has_tensor"):
                return meta, logp
        scorer = pool.get(cfg.scorer)
        n_ctx = pool.info(cfg.scorer).get("n_ctx")
        n_tokens = [scorer.count_tokens(row) for row in texts]
        errors: list[str | None] = [None] * len(exs)
        truncated: list[int | None] = [None] * len(exs)
        fitted = list(exs)
        if n_ctx is not None:
            # Every compression is scored after every prefix: need prefix_l + max_i z_i <= window.
            z = [max(r, default=0) for r in n_tokens]
            ctx = scorer.count_tokens([e.context for e in exs])
            ov = [n + CHAT_TEMPLATE_MARGIN for n in scorer.count_tokens(
                [self.score_prompt.render_text(context="", question=e.question) for e in exs])]
            alive = list(range(len(exs)))
            fail = cfg.on_context_overflow == "fail"

            def fits(ids: list[int]) -> bool:
                max_z = max((z[i] for i in ids), default=0)
                return all((ctx[l_] if fail else 1) + ov[l_] + max_z <= n_ctx for l_ in ids)

            while alive and not fits(alive):
                # fail: drop the example that needs the most room; truncate: the longest compression
                culprit = max(alive, key=(lambda i: ctx[i] + ov[i] + z[i]) if fail else (lambda i: z[i]))
                alive.remove(culprit)
                errors[culprit] = _err(ContextTooLong(
                    f"scoring needs {ctx[culprit] + ov[culprit]} prefix tokens (context + MI prompt) and "
                    f"{z[culprit]} compression tokens, which does not fit with the other examples into the "
                    f"scorer {cfg.scorer!r} (window {n_ctx} tokens); use a scorer with a longer window"
                    + ("" if not fail else " or set on_context_overflow: truncate")))
            max_z = max((z[i] for i in alive), default=0)
            for i in alive:
                e = exs[i]
                budget = n_ctx - ov[i] - max_z
                if ctx[i] > budget:
                    kept = truncate_to_tokens(e.context, budget, scorer.count_tokens)
                    truncated[i] = scorer.count_tokens([kept])[0] if kept else 0
                    fitted[i] = dataclasses.replace(e, context=kept)
        good = [i for i in range(len(exs)) if errors[i] is None]
        logp = np.full((len(exs), cfg.samples, len(exs)), np.nan)
        if len(good) < 2:  # MI needs at least 2 contexts
            good = []
        if good:
            sub = _build_logp(scorer, [fitted[i] for i in good], [texts[i] for i in good], self.score_prompt)
            logp[np.ix_(good, range(cfg.samples), good)] = sub
        prefix_tokens = scorer.count_tokens([self.score_prompt.render_text(context=e.context, question=e.question)
                                             for e in fitted])
        cont_total = int(sum(sum(n_tokens[i]) for i in good))
        usage = [_usage_dict(prefix_tokens[i] + cont_total, 0, 1) if errors[i] is None else None
                 for i in range(len(exs))]
        meta = {"n_tokens": n_tokens, "errors": errors, "truncated": truncated, "usage": usage,
                "has_tensor": bool(good)}
        if good:
            self.store.cache.put_array(key, logp)
        self.store.cache.put_json(key, meta)
        return meta, (logp if good else None)

    def _predict_chat(self, ex: Example) -> Callable[[str], Chat]:
        from compressbench.metrics import predict_values

        prompt = self.predict_prompt

        def render(compression: str) -> Chat:
            return prompt.render_chat(**_only(prompt, predict_values(ex, compression)))

        return render

    def _stage_predict(self, pool: ModelPool, groups: list[Group], examples: dict[str, list[Example]],
                       state: dict[Group, list[_Comp]]) -> dict[tuple[Group, str], list[_Pred]]:
        cfg = self.config
        preds: dict[tuple[Group, str], list[_Pred]] = {}
        params = GenerationParams(max_new_tokens=cfg.max_new_tokens["predictor"],
                                  temperature=cfg.predictor_temperature, n=1, seed=0)
        for model in cfg.predictors:
            for g in groups:
                exs, comps = examples[g.dataset], state[g]
                cell_preds = [_Pred() for _ in exs]
                items, where = [], []
                for i, (ex, comp) in enumerate(zip(exs, comps)):
                    if comp.error is not None or comp.texts is None:
                        continue
                    for text in comp.texts:
                        items.append((self._predict_chat(ex), text))
                        where.append(i)
                entries = self._generate(pool, model, "predictor", items, params,
                                         f"predict {g.dataset}/{g.compressor}->{model}/{g.prompt.label}")
                for i, entry in zip(where, entries):
                    p = cell_preds[i]
                    if "error" in entry:
                        p.error = p.error or f"predictor: {entry['error']}"
                        continue
                    p.texts.append(entry["texts"][0])
                    p.usage = _add_usage(p.usage, entry["usage"]) if p.texts[:-1] else dict(entry["usage"])
                    p.wall_s += float(entry.get("wall_s", 0.0) or 0.0)
                    if entry.get("truncated") is not None:
                        p.truncated = entry["truncated"] if p.truncated is None else min(p.truncated,
                                                                                         entry["truncated"])
                from compressbench import metrics

                for ex, p in zip(exs, cell_preds):
                    if p.error is None and p.texts:
                        parsed = [metrics.parse_prediction(t, ex) for t in p.texts]
                        p.answers = [a.answer for a in parsed]
                        p.parse_errors = [a.error for a in parsed]
                        p.voted = metrics.majority_vote(p.answers)
                self._ref_nll(pool, model, exs, comps, cell_preds)
                preds[(g, model)] = cell_preds
            self._release_if_done(pool, model, "predictor")
        return preds

    def _ref_nll(self, pool: ModelPool, model: str, exs: list[Example], comps: list[_Comp],
                 preds: list[_Pred]) -> None:
        """For ``ref_nll`` examples (a reference answer, no gold answers): the reference's NLL in nats
        under the predictor, after the predict prompt holding the example's first compression
        (plain text of the chat, then "\nAnswer: ")."""
        from compressbench import metrics

        todo = [i for i, (e, c) in enumerate(zip(exs, comps))
                if metrics.default_metric(e) == "ref_nll" and c.texts and c.error is None]
        for i in todo:
            ex, comp = exs[i], comps[i]
            prefix = chat_text(self._predict_chat(ex)(comp.texts[0])) + "\nAnswer: "
            key = cache_key({"kind": "ref_nll", "model": pool.identity(model), "prefix": text_hash(prefix),
                             "reference": text_hash(ex.reference or "")})
            hit = self.store.cache.get_json(key)
            if hit is None:
                try:
                    nats, n_tok = metrics.reference_nll_nats(pool.get(model), prefix, ex.reference or "")
                except BackendError as exc:
                    preds[i].error = preds[i].error or f"predictor (reference NLL): {_err(exc)}"
                    continue
                hit = {"nats": float(nats), "n_tokens": int(n_tok)}
                self.store.cache.put_json(key, hit)
            preds[i].ref_nll_nats = hit["nats"]

    def _stage_judge(self, pool: ModelPool, groups: list[Group], examples: dict[str, list[Example]],
                     preds: dict[tuple[Group, str], list[_Pred]]) -> None:
        """The judge grades the voted answer of every free-form (not multiple-choice) example."""
        cfg = self.config
        if not cfg.judge:
            return
        from compressbench import metrics

        prompt = load_prompt("judge")
        params = GenerationParams(max_new_tokens=cfg.max_new_tokens["judge"], temperature=0.0, n=1, seed=0)
        for (g, model), cell_preds in preds.items():
            exs = examples[g.dataset]
            todo = [i for i, (e, p) in enumerate(zip(exs, cell_preds))
                    if p.error is None and p.voted is not None and not e.options and e.answers]
            items = [((lambda t, e=exs[i]: metrics.judge_chat(e, t, prompt)), cell_preds[i].voted or "")
                     for i in todo]
            entries = self._generate(pool, cfg.judge, "judge", items, params,
                                     f"judge {g.dataset}/{g.compressor}->{model}/{g.prompt.label}")
            for i, entry in zip(todo, entries):
                p = cell_preds[i]
                if "error" in entry:
                    p.error = f"judge: {entry['error']}"
                    continue
                p.judge_text = entry["texts"][0]
                p.judge_usage = entry["usage"]
                p.wall_s += float(entry.get("wall_s", 0.0) or 0.0)
        self._release_if_done(pool, cfg.judge, "judge")

    def _release_if_done(self, pool: ModelPool, model: str, stage: str) -> None:
        """Release `model` when no later stage uses it (stage order: compressor, scorer, predictor, judge)."""
        cfg = self.config
        order = ["compressor", "scorer", "predictor", "judge"]
        later = order[order.index(stage) + 1:]
        uses = {"compressor": set(cfg.compressors) | ({cfg.scorer} if any(
            is_baseline(c) and c.startswith("truncate") for c in cfg.compressors) else set()),
            "scorer": {cfg.scorer}, "predictor": set(cfg.predictors),
            "judge": {cfg.judge} if cfg.judge else set()}
        if not any(model in uses[s] for s in later):
            pool.release(model)

    # ------------------------------------------------------------------ records

    def _record(self, cell: Cell, cell_key: str, ex: Example, comp: _Comp, pred: _Pred,
                pool: ModelPool) -> dict[str, Any]:
        from compressbench import metrics

        error = comp.error or pred.error
        usage: dict[str, Any] = {
            "compressor": comp.usage,
            "predictor": pred.usage,
            "scorer": comp.scorer_usage,
            "judge": pred.judge_usage,
        }
        score: float | None = None
        score_error: str | None = None
        metric = metrics.default_metric(ex)
        if error is None:
            if pred.judge_text is not None:
                res = metrics.score_verdict(metrics.parse_judge(pred.judge_text))
            elif metric == "ref_nll":
                res = None
                score_error = "ref_nll task: no accuracy; see ref_nll_nats"
            else:
                res = metrics.score_example(ex, pred.voted, metric)
            if res is not None:
                metric = res.metric
                score = None if math.isnan(res.value) else float(res.value)
                score_error = res.error
                if score is not None and pred.voted is not None and res.error is None:
                    score_error = None
            if score is None and score_error and any(pred.parse_errors):
                first = next(e for e in pred.parse_errors if e)
                score_error = f"{score_error} (first parse error: {first})"
        truncated = dict(comp.truncated)
        if pred.truncated is not None:
            truncated["predictor"] = pred.truncated
        flops: dict[str, float | None] = {}
        for role, u in usage.items():
            name = {"compressor": cell.group.compressor, "predictor": cell.predictor,
                    "scorer": self.config.scorer, "judge": self.config.judge}[role]
            flops[role] = _basic_flops(u, pool.n_params(name) if name and name in self.config.models and u
                                       and u.get("n_calls") else None)
        return {
            "cell": cell.as_dict(),
            "cell_key": cell_key,
            "example_id": ex.id,
            "compressions": comp.texts or [],
            "compression_n_tokens": comp.n_tokens,
            "pointwise_mi_bits": comp.pointwise_bits,
            "predictions": pred.texts,
            "answers": list(pred.answers) if error is None else [],
            "voted_answer": pred.voted if error is None else None,
            "gold": list(ex.answers),
            "score": score,
            "score_error": score_error,
            "metric": metric,
            "ref_nll_nats": pred.ref_nll_nats,
            "error": error,
            "context_truncated": truncated or None,
            "usage": usage,
            "flops": flops,
            "wall_s": comp.wall_s + pred.wall_s,
        }

    # ------------------------------------------------------------------ main

    def run(self) -> SweepResult:
        cfg = self.config
        examples = self._load_examples()
        self.store.prepare(cfg.to_yaml())
        manifest_path = self.store.root / "manifest.json"
        old_manifest: dict[str, Any] = {}
        if manifest_path.exists():
            import json

            old_manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        known = {n: (m or {}).get("info") for n, m in old_manifest.get("models", {}).items()}
        created = old_manifest.get("created_utc")

        def on_load(name: str, info: ModelInfo) -> None:
            self.store.write_manifest(self._manifest(pool, created))

        pool = ModelPool(cfg, self.factory, known, on_load)
        self.store.write_manifest(self._manifest(pool, created))
        done = self.store.done_keys()

        groups = expand_grid(cfg)
        state = {g: [_Comp() for _ in examples[g.dataset]] for g in groups}
        salt = text_hash(str(sorted({
            "prompts": {k: p.id for k, p in self.prompts.items()}, "predict": self.predict_prompt.id,
            "score": self.score_prompt.id, "samples": cfg.samples, "mnt": dict(cfg.max_new_tokens),
            "pt": cfg.predictor_temperature, "overflow": cfg.on_context_overflow, "n_boot": cfg.mi_n_boot,
        }.items())))[:10]

        self._stage_compress(pool, groups, examples, state)
        self._check_error_rate(groups, examples, state, None, pool, done, salt)
        estimates = self._stage_score(pool, groups, examples, state)
        self._check_error_rate(groups, examples, state, None, pool, done, salt)
        preds = self._stage_predict(pool, groups, examples, state)
        self._stage_judge(pool, groups, examples, preds)
        n_written = self._write_records(groups, examples, state, preds, pool, done, salt)
        rows = self._summarise(groups, examples, estimates, salt)
        self.store.write_summary(rows, SUMMARY_COLUMNS)
        self.store.write_manifest(self._manifest(pool, created))
        n_fail, n_all = self._failures(groups, examples, state, preds)
        if n_all and n_fail / n_all > cfg.max_error_rate:
            raise SweepAborted(self._abort_message(n_fail, n_all))
        log.info("sweep %s: %d records written; cache: %d hits, %d misses; model loads: %s", cfg.name, n_written,
                 self.store.cache.hits, self.store.cache.misses, dict(pool.loads) or "none")
        return SweepResult(self.store.root, rows, n_written, dict(pool.loads), self.store.cache.hits,
                           self.store.cache.misses)

    def _failures(self, groups: list[Group], examples: dict[str, list[Example]], state: dict[Group, list[_Comp]],
                  preds: dict[tuple[Group, str], list[_Pred]] | None) -> tuple[int, int]:
        n_fail = n_all = 0
        for g in groups:
            for i, comp in enumerate(state[g]):
                for model in self.config.predictors:
                    n_all += 1
                    p = preds.get((g, model)) if preds else None
                    if comp.error is not None or (p is not None and p[i].error is not None):
                        n_fail += 1
        return n_fail, n_all

    def _abort_message(self, n_fail: int, n_all: int) -> str:
        return (f"sweep aborted: {n_fail} of {n_all} examples failed ({n_fail / n_all:.0%} > max_error_rate "
                f"{self.config.max_error_rate:.0%}); the errors are in {self.store.records_path} (field 'error'). "
                f"Fix the cause, or raise max_error_rate (--set max_error_rate=...)")

    def _check_error_rate(self, groups: list[Group], examples: dict[str, list[Example]],
                          state: dict[Group, list[_Comp]], preds: Any, pool: ModelPool,
                          done: set[tuple[str, str]], salt: str) -> None:
        n_fail, n_all = self._failures(groups, examples, state, preds)
        if n_all and n_fail / n_all > self.config.max_error_rate:
            # Record the failed examples so the user can see why, then stop.
            failed_preds = {(g, m): [_Pred() for _ in examples[g.dataset]] for g in groups
                            for m in self.config.predictors}
            self._write_records(groups, examples, state, failed_preds, pool, done, salt, only_failed=True)
            raise SweepAborted(self._abort_message(n_fail, n_all))

    def _write_records(self, groups: list[Group], examples: dict[str, list[Example]],
                       state: dict[Group, list[_Comp]], preds: dict[tuple[Group, str], list[_Pred]],
                       pool: ModelPool, done: set[tuple[str, str]], salt: str, *, only_failed: bool = False) -> int:
        n = 0
        with self.store.writer() as w:
            for g in groups:
                for model in self.config.predictors:
                    cell = Cell(g, model)
                    ck = cell.key(salt)
                    batch = []
                    for i, ex in enumerate(examples[g.dataset]):
                        if (ck, ex.id) in done:
                            continue
                        comp, pred = state[g][i], preds[(g, model)][i]
                        if only_failed and comp.error is None and pred.error is None:
                            continue
                        batch.append(self._record(cell, ck, ex, comp, pred, pool))
                        done.add((ck, ex.id))
                    n += w.append(batch)
        return n

    def _summarise(self, groups: list[Group], examples: dict[str, list[Example]], estimates: dict[Group, Any],
                   salt: str) -> list[dict[str, Any]]:
        from compressbench.store import read_records

        by_cell: dict[str, dict[str, dict[str, Any]]] = {}
        for r in read_records(self.store.root):
            by_cell.setdefault(r["cell_key"], {})[r["example_id"]] = r
        rows = []
        for g in groups:
            for model in self.config.predictors:
                cell = Cell(g, model)
                recs_by_id = by_cell.get(cell.key(salt), {})
                recs = [recs_by_id[e.id] for e in examples[g.dataset] if e.id in recs_by_id]
                rows.append(summary_row(cell, self.prompts[g.prompt.label].id, self.config.samples, recs,
                                        estimates.get(g)))
        return rows


# --------------------------------------------------------------------------- helpers


def _only(prompt: Prompt, values: Mapping[str, str]) -> dict[str, str]:
    """The values a prompt's placeholders use (extra values are dropped)."""
    return {k: v for k, v in values.items() if k in prompt.fields}


def _build_logp(scorer: Any, exs: list[Example], texts: list[list[str]], prompt: Prompt) -> np.ndarray:
    """logp[i, j, l] = log p(texts[i][j] | scoring prefix of exs[l]) in nats, via compressbench.scoring."""
    from compressbench.scoring import build_logp_tensor

    return np.asarray(build_logp_tensor(scorer, exs, texts, prompt=prompt).logp_nats, dtype=np.float64)


def _basic_flops(usage: Mapping[str, Any] | None, n_params: int | None) -> float | None:
    """2 * n_params * (prompt + completion tokens); 0 for no calls; None when unknown."""
    if usage is None:
        return None
    if usage.get("n_calls") == 0:
        return 0.0
    p, c = usage.get("n_prompt_tokens"), usage.get("n_completion_tokens")
    if n_params is None or p is None or c is None:
        return None
    return 2.0 * n_params * (p + c)


def wilson_interval(k: float, n: int, level: float = 0.95) -> tuple[float | None, float | None]:
    """Wilson score interval for k successes in n trials::

        center = (p + z^2/(2n)) / (1 + z^2/n),  half = z / (1 + z^2/n) * sqrt(p(1-p)/n + z^2/(4n^2))
    """
    if n <= 0:
        return None, None
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.5 + level / 2)
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def accuracy_interval(scores: Sequence[float], level: float = 0.95) -> tuple[float | None, float | None]:
    """95% CI of a mean score in [0, 1]: Wilson for 0/1 scores, else a seeded percentile bootstrap."""
    n = len(scores)
    if n == 0:
        return None, None
    arr = np.asarray(scores, dtype=float)
    if np.all((arr == 0) | (arr == 1)):
        return wilson_interval(float(arr.sum()), n, level)
    rng = np.random.default_rng(0)
    means = arr[rng.integers(0, n, size=(2000, n))].mean(axis=1)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def summary_row(cell: Cell, prompt_id: str, n_samples: int, recs: Sequence[Mapping[str, Any]],
                est: Any) -> dict[str, Any]:
    """One summary row (docs/run_format.md) from a cell's records and its group's MIEstimate."""
    scored = [float(r["score"]) for r in recs if r.get("error") is None and r.get("score") is not None
              and not (isinstance(r["score"], float) and math.isnan(r["score"]))]
    n_err = sum(1 for r in recs if r.get("error") is not None)
    lo, hi = accuracy_interval(scored)
    nlls = [r["ref_nll_nats"] for r in recs if r.get("ref_nll_nats") is not None]
    toks = [t for r in recs if r.get("error") is None and r.get("compression_n_tokens") for t in
            r["compression_n_tokens"]]
    row: dict[str, Any] = {
        **{k: v for k, v in cell.as_dict().items()},
        "prompt_id": prompt_id,
        "n": len(recs), "n_samples": n_samples, "n_errors": n_err,
        "n_unscored": len(recs) - n_err - len(scored),
        "accuracy": float(np.mean(scored)) if scored else None,
        "accuracy_ci_low": lo, "accuracy_ci_high": hi,
        "mi_bits": est.bits if est else None, "mi_bits_raw": est.bits_raw if est else None,
        "mi_ci_low_bits": est.ci_low_bits if est else None, "mi_ci_high_bits": est.ci_high_bits if est else None,
        "ceiling_bits": est.ceiling_bits if est else None,
        "bits_per_token": est.bits_per_token if est else None,
        "bits_per_token_ci_low": est.bits_per_token_ci_low if est else None,
        "bits_per_token_ci_high": est.bits_per_token_ci_high if est else None,
        "mean_compression_tokens": float(np.mean(toks)) if toks else None,
        "mean_ref_nll_nats": float(np.mean(nlls)) if nlls else None,
        "wall_s": float(sum(r.get("wall_s") or 0.0 for r in recs)),
    }
    for role in ROLES:
        for kind in ("prompt", "completion"):
            vals = [((r.get("usage") or {}).get(role) or {}).get(f"n_{kind}_tokens") for r in recs]
            row[f"tokens_{role}_{kind}"] = None if not recs or any(v is None for v in vals) else int(sum(vals))
        fl = [(r.get("flops") or {}).get(role) for r in recs]
        row[f"flops_{role}"] = None if not recs or any(v is None for v in fl) else float(sum(fl))
    return row


def run_sweep(config: SweepConfig, runs_dir: str | Path = "runs", *, backend_factory: BackendFactory | None = None,
              progress: bool = True, examples: Mapping[str, Sequence[Example]] | None = None) -> SweepResult:
    """Run (or resume) a sweep into ``<runs_dir>/<config.name>/``; returns the summary rows.

    `backend_factory(kind, model, **options)` builds backends (default
    :func:`compressbench.backends.load_backend`); `examples` replaces ``load_dataset`` per dataset
    name (for library use with in-memory data).
    """
    return Sweep(config, runs_dir, backend_factory=backend_factory, progress=progress, examples=examples).run()
