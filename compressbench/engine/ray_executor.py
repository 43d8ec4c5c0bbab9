"""The Ray executor: each model's stage work runs in Ray actors that hold the model, on whatever
GPUs and nodes the Ray cluster has; the driver alone reads and writes the run directory.

``RayExecutor`` implements :class:`compressbench.engine.scheduler.Executor`. For each named model it
starts ``replicas`` actors (lazily, on the model's first work), each declaring its resources
(:class:`ActorResources`: CPUs, GPUs, memory; for vLLM the tensor-parallel size as its GPU count)
and loading the model once with :func:`compressbench.backends.load_backend`. ``run(model, fn,
*args)`` sends ``fn`` (a plain function from :mod:`compressbench.engine.model_work`) and its picklable
inputs to a free actor of that model and returns the outputs; several driver threads may call it
at once, so different models and replicas of one model work at the same time
(:attr:`RayExecutor.parallelism` tells the sweep how many). ``release`` kills a model's actors
(their GPUs return to the cluster); ``close`` kills all of them and disconnects from Ray if this
executor connected.

Nothing here writes files: outputs come back to the driver, which caches them and appends the
records (one writer), so resume and the record contract are the same as with the local executor.
A killed driver takes its actors with it (Ray ends the actors a driver owns when it exits).

The ``ray`` executor kind (:data:`compressbench.engine.executors.EXECUTORS`) is built by
:func:`from_config`. Ray is an optional extra (``pip install "compressbench[ray]"``); without it, building a
RayExecutor raises :class:`compressbench.core.errors.BackendUnavailable` naming the extra.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from compressbench.backends import BACKENDS, load_backend
from compressbench.core.errors import BackendUnavailable, ConfigError

log = logging.getLogger(__name__)

R = TypeVar("R")

_RESOURCE_KEYS = ("num_cpus", "num_gpus", "memory_gb", "replicas")


def import_ray() -> Any:
    """The ``ray`` module, or BackendUnavailable saying which extra installs it."""
    try:
        # lazy: ray (the [ray] extra) loads only for the Ray executor
        import ray
    except ImportError as exc:
        raise BackendUnavailable(
            f"the ray executor needs Ray ({exc}); install it with: pip install \"compressbench[ray]\" "
            "(or run without --executor ray)"
        ) from None
    return ray


@dataclass(frozen=True)
class ActorResources:
    """What one actor (one replica of a model) asks the Ray cluster for."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory_gb: float | None = None
    replicas: int = 1

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> ActorResources:
        for k in d:
            if k not in _RESOURCE_KEYS:
                raise ConfigError(f"{where}: unknown key {k!r}; known: {', '.join(_RESOURCE_KEYS)}")
        try:
            r = cls(num_cpus=float(d.get("num_cpus", 1.0)), num_gpus=float(d.get("num_gpus", 0.0)),
                    memory_gb=None if d.get("memory_gb") is None else float(d["memory_gb"]),
                    replicas=int(d.get("replicas", 1)))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: resources must be numbers ({exc})") from None
        if r.num_cpus < 0 or r.num_gpus < 0 or r.replicas < 1 or (r.memory_gb is not None and r.memory_gb <= 0):
            raise ConfigError(f"{where}: need num_cpus >= 0, num_gpus >= 0, memory_gb > 0 and replicas >= 1")
        return r

    def options(self) -> dict[str, Any]:
        out: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.memory_gb is not None:
            out["memory"] = int(self.memory_gb * 1e9)
        return out


def default_resources(backend: str, options: Mapping[str, Any]) -> ActorResources:
    """One replica; one CPU; the GPUs the backend kind's descriptor says one replica needs
    (:data:`compressbench.backends.BACKENDS`: vLLM its ``tensor_parallel_size`` (default 1),
    transformers 1 when its ``device`` is CUDA, an HTTP client none: the server has them)."""
    return ActorResources(num_cpus=1.0, num_gpus=BACKENDS[backend].gpus(options))


class ModelActor:
    """Holds one loaded backend and runs work next to it (wrapped with ``ray.remote`` at run time)."""

    def __init__(self, kind: str, model: str, options: Mapping[str, Any]):
        self.backend = load_backend(kind, model, **dict(options))

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(self.backend, *args)

    def info(self) -> Any:
        return self.backend.info()


class _Pool:
    """A model's actors and a queue of the idle ones."""

    def __init__(self, actors: list[Any]):
        self.actors = actors
        self.idle: queue.Queue[Any] = queue.Queue()
        for a in actors:
            self.idle.put(a)


class RayExecutor:
    """See the module docstring. ``specs`` are the config's model specs; ``resources[name]``
    overrides :func:`default_resources`; ``address`` is a Ray cluster address (None: the cluster
    this process is already connected to, else a new local one); ``init_kwargs`` go to ``ray.init``."""

    def __init__(self, specs: Mapping[str, Any], *, address: str | None = None,
                 resources: Mapping[str, ActorResources] | None = None,
                 init_kwargs: Mapping[str, Any] | None = None):
        ray = import_ray()
        self._ray = ray
        self._specs = dict(specs)
        self._resources = {n: (resources or {}).get(n) or default_resources(s.backend, s.options)
                           for n, s in self._specs.items()}
        self._connected_here = False
        if not ray.is_initialized():
            kw = {"include_dashboard": False, "log_to_driver": False, **dict(init_kwargs or {})}
            ray.init(address=address, **kw)
            self._connected_here = True
        elif address is not None:
            log.info("Ray is already initialised in this process; using that cluster, not %s", address)
        self._actor_cls = ray.remote(ModelActor)
        self._pools: dict[str, _Pool] = {}
        self._lock = threading.Lock()
        self.loads: Counter[str] = Counter()

    @property
    def parallelism(self) -> int:
        """How many pieces of work may run at once (every replica of every model)."""
        return max(1, sum(r.replicas for r in self._resources.values()))

    def _pool(self, name: str) -> _Pool:
        with self._lock:
            pool = self._pools.get(name)
            if pool is None:
                spec, res = self._specs[name], self._resources[name]
                log.info("starting %d Ray actor(s) for model %s (%s backend, %s; %s)", res.replicas, name,
                         spec.backend, spec.model, res.options())
                actors = [self._actor_cls.options(**res.options()).remote(spec.backend, spec.model, dict(spec.options))
                          for _ in range(res.replicas)]
                pool = self._pools[name] = _Pool(actors)
                self.loads[name] += res.replicas
            return pool

    def run(self, model: str, fn: Callable[..., R], *args: Any) -> R:
        pool = self._pool(model)
        actor = pool.idle.get()
        try:
            return self._ray.get(actor.run.remote(fn, *args))
        finally:
            pool.idle.put(actor)

    def info(self, model: str) -> Any:
        pool = self._pool(model)
        actor = pool.idle.get()
        try:
            return self._ray.get(actor.info.remote())
        finally:
            pool.idle.put(actor)

    def loaded(self, model: str) -> bool:
        return model in self._pools

    def release(self, model: str) -> None:
        with self._lock:
            pool = self._pools.pop(model, None)
        if pool is not None:
            for a in pool.actors:
                self._ray.kill(a)
            log.info("released model %s (%d Ray actor(s))", model, len(pool.actors))

    def close(self) -> None:
        for name in list(self._pools):
            self.release(name)
        if self._connected_here:
            self._ray.shutdown()
            self._connected_here = False


def from_config(config: Any, factory: Any = None) -> RayExecutor:
    """The ``ray`` executor kind's builder (:data:`compressbench.engine.executors.EXECUTORS`): a
    :class:`RayExecutor` for the config's models, its ``executor.address`` and per-model
    ``executor.resources``. ``factory`` is always None here (actors build models with
    :func:`compressbench.backends.load_backend`; the registry's ``in_process=False`` refuses one)."""
    spec = dict(config.executor or {})
    resources = {n: ActorResources.from_dict(r, f"executor.resources.{n}")
                 for n, r in (spec.get("resources") or {}).items()}
    return RayExecutor(config.models, address=spec.get("address"), resources=resources)
