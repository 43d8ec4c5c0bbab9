"""Executor kinds: where a sweep's model work runs, one :class:`ExecutorKind` per kind in
:data:`EXECUTORS`.

Config validation (``executor.kind``, ``executor.address``), the scheduler's
:func:`compressbench.engine.scheduler.build_executor` and the CLI's ``--executor`` choice read
this registry; none keeps its own list of kinds. A new executor is one entry here and one module
``engine/<name>_executor.py`` holding a class with the
:class:`compressbench.engine.scheduler.Executor` interface and a ``from_config(config,
backend_factory)`` that builds it (see docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from compressbench.core.registry import Registry

__all__ = ["DEFAULT_EXECUTOR", "EXECUTORS", "ExecutorKind"]


@dataclass(frozen=True)
class ExecutorKind:
    """One executor kind.

    ``target``: its builder as ``"module:fn"``, called (on first use) as ``fn(config,
    backend_factory)`` with the validated :class:`compressbench.engine.config.SweepConfig` and
    returning the executor; ``in_process``: models are built in this process, so a custom
    ``backend_factory`` may build them (else its workers build them with
    :func:`compressbench.backends.load_backend` and a custom factory is refused); ``address``: it
    may join a running cluster named by ``executor.address`` (else the key is refused);
    ``help``: where the work runs, in words (the CLI's help).
    """

    target: str
    in_process: bool
    address: bool
    help: str


#: executor kind -> its descriptor; a new kind is one entry here and its module.
EXECUTORS: Registry[ExecutorKind] = Registry("executor kind", {
    "local": ExecutorKind("compressbench.engine.scheduler:local_executor", in_process=True, address=False,
                          help="this process"),
    "ray": ExecutorKind("compressbench.engine.ray_executor:from_config", in_process=False, address=True,
                        help="Ray actors (needs the ray extra)"),
})
#: The kind a config without an ``executor`` key runs under.
DEFAULT_EXECUTOR = "local"
