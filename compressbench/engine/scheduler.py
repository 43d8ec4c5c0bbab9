"""Model lifecycle: where a model's work runs (the :class:`Executor` seam), what the driver knows
about each model (:class:`ModelRegistry`), and when a model may be released (:class:`Scheduler`).

The executor seam: every piece of stage work for one model is a call
``executor.run(model_name, fn, *inputs)`` where ``fn(backend, *inputs)`` is a plain function from
:mod:`compressbench.engine.model_work` and the inputs/outputs are picklable data. :class:`LocalExecutor`
loads backends in this process (lazily, each at most once per sweep); another executor may hold
each model in a worker (e.g. a Ray actor) and run ``fn`` there. The driver alone reads and writes
the run directory (cache, records, summary, manifest).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from compressbench.measure.baselines import is_baseline, needs_tokenizer
from compressbench.engine.config import ModelSpec, SweepConfig, model_identity_options
from compressbench.core.types import ModelInfo
from compressbench.backends import load_backend
from compressbench.core.errors import UsageError
from compressbench.engine.executors import DEFAULT_EXECUTOR, EXECUTORS
from compressbench.measure.cost import model_info_from_dict

log = logging.getLogger(__name__)

R = TypeVar("R")
BackendFactory = Callable[..., Any]
#: Stage order; a model is released after the last stage that uses it.
STAGES: tuple[str, ...] = ("compressor", "scorer", "predictor", "judge")


class Executor(Protocol):
    """Runs stage work next to a model. ``loads`` counts model loads per name."""

    loads: Counter[str]

    def run(self, model: str, fn: Callable[..., R], *args: Any) -> R:
        """``fn(backend_of(model), *args)``; loads the model on first use."""

    def info(self, model: str) -> ModelInfo:
        """The model's current :class:`ModelInfo` (loads it on first use)."""

    def loaded(self, model: str) -> bool:
        """Whether the model is loaded now."""

    def release(self, model: str) -> None:
        """Free the model (a later ``run`` loads it again)."""

    def close(self) -> None:
        """Release every model."""


class LocalExecutor:
    """Backends in this process, built by ``factory(kind, model, **options)`` (default
    :func:`compressbench.backends.load_backend`) from the config's model specs."""

    def __init__(self, specs: Mapping[str, ModelSpec], factory: BackendFactory | None = None):
        self._specs = dict(specs)
        self._factory = factory
        self._backends: dict[str, Any] = {}
        self.loads: Counter[str] = Counter()

    def _backend(self, name: str) -> Any:
        if name not in self._backends:
            spec = self._specs[name]
            factory = self._factory or load_backend
            log.info("loading model %s (%s backend, %s)", name, spec.backend, spec.model)
            self._backends[name] = factory(spec.backend, spec.model, **dict(spec.options))
            self.loads[name] += 1
        return self._backends[name]

    def run(self, model: str, fn: Callable[..., R], *args: Any) -> R:
        return fn(self._backend(model), *args)

    def info(self, model: str) -> ModelInfo:
        return self._backend(model).info()

    def loaded(self, model: str) -> bool:
        return model in self._backends

    def release(self, model: str) -> None:
        if self._backends.pop(model, None) is not None:
            log.info("released model %s", model)

    def close(self) -> None:
        for name in list(self._backends):
            self.release(name)


def local_executor(config: SweepConfig, factory: BackendFactory | None = None) -> LocalExecutor:
    """The ``local`` executor kind's builder (:data:`compressbench.engine.executors.EXECUTORS`)."""
    return LocalExecutor(config.models, factory)


def build_executor(config: SweepConfig, factory: BackendFactory | None = None) -> Executor:
    """The executor the config's ``executor`` key asks for, built by its kind's entry in
    :data:`compressbench.engine.executors.EXECUTORS` (``local``: :class:`LocalExecutor`; ``ray``:
    :class:`compressbench.engine.ray_executor.RayExecutor`, needs the ``ray`` extra)."""
    kind = str((config.executor or {}).get("kind", DEFAULT_EXECUTOR))
    desc = EXECUTORS[kind]  # an unknown kind: ConfigError with a "did you mean"
    if factory is not None and not desc.in_process:
        raise UsageError(f"a custom backend_factory builds models in this process; it cannot be used with the "
                         f"{kind} executor (its workers load models with compressbench.backends.load_backend)")
    return EXECUTORS.load(kind)(config, factory)


class ModelRegistry:
    """The driver's view of each named model: its info (read from the executor when needed,
    reused from an earlier run's manifest so a fully cached resume loads nothing), its identity for
    cache keys, and its shape for FLOPs (with the config's ``info`` overrides)."""

    def __init__(self, config: SweepConfig, executor: Executor, known_infos: Mapping[str, Any],
                 on_change: Callable[[], None] | None = None):
        self._config = config
        self._executor = executor
        self._infos: dict[str, dict[str, Any]] = {k: dict(v) for k, v in known_infos.items() if v}
        self._on_change = on_change
        self._cost_infos: dict[str, ModelInfo | None] = {}

    def refresh(self, name: str) -> dict[str, Any]:
        """Read the model's info from the executor now (loads the model if needed)."""
        info = dataclasses.asdict(self._executor.info(name))
        old = self._infos.get(name)
        if old is not None and old.get("revision") != info.get("revision"):
            log.warning("model %s changed since this run started (revision %s -> %s); cached results of "
                        "the old revision are not reused", name, old.get("revision"), info.get("revision"))
        if old != info:
            self._infos[name] = info
            self._cost_infos.pop(name, None)
            if self._on_change is not None:
                self._on_change()
        return info

    def refresh_if_loaded(self, name: str) -> None:
        """Pick up what a loaded model learnt while working (e.g. a served model's window)."""
        if self._executor.loaded(name):
            self.refresh(name)

    def info(self, name: str) -> dict[str, Any]:
        return self._infos[name] if name in self._infos else self.refresh(name)

    def infos(self) -> dict[str, dict[str, Any]]:
        return dict(self._infos)

    def identity(self, name: str) -> dict[str, Any]:
        """What identifies a model's outputs: backend, reference, options that change outputs
        (:func:`compressbench.engine.config.model_identity_options`), revision."""
        spec = self._config.models[name]
        return {"backend": spec.backend, "model": spec.model,
                "options": model_identity_options(spec.backend, spec.options),
                "revision": self.info(name).get("revision")}

    def cost_info(self, name: str | None) -> ModelInfo | None:
        """Shape and size for FLOPs: the backend's info with the config's ``info`` overrides applied
        (the report reads the same two sources)."""
        if name is None or name not in self._config.models:
            return None
        if name not in self._cost_infos:
            spec = self._config.models[name]
            self._cost_infos[name] = model_info_from_dict({**self.info(name), **dict(spec.info)}, reference=spec.model)
        return self._cost_infos[name]


class Scheduler:
    """Which models each stage uses; releases a model after the last stage that needs it.

    A sweep's stages are :data:`STAGES`, read from its config; another driver (the research run)
    passes its own stage order and ``uses`` (stage -> model names) instead of a config."""

    def __init__(self, config: SweepConfig | None, executor: Executor, *,
                 uses: Mapping[str, set[str]] | None = None, stages: tuple[str, ...] = STAGES):
        if uses is None:
            if config is None:
                raise ValueError("Scheduler needs a sweep config or the models each stage uses")
            cfg = config
            truncating = any(is_baseline(c) and needs_tokenizer(c) for c in cfg.compressors)
            uses = {
                "compressor": ({c for c in cfg.compressors if not is_baseline(c)}
                               | ({cfg.scorer} if truncating else set())),
                "scorer": set(cfg.scorers),
                "predictor": set(cfg.predictors),
                "judge": {cfg.judge} if cfg.judge else set(),
            }
        self._uses: dict[str, set[str]] = {s: set(uses.get(s, ())) for s in stages}
        self._stages = stages
        self._executor = executor

    def compressor_models(self, config: SweepConfig) -> list[str]:
        return [c for c in config.compressors if not is_baseline(c)]

    def done(self, model: str | None, stage: str) -> None:
        """``stage`` has finished with ``model``: release it unless a later stage uses it."""
        if model is None:
            return
        later = self._stages[self._stages.index(stage) + 1:]
        if not any(model in self._uses[s] for s in later):
            self._executor.release(model)
