"""A click choice read from registries (:class:`compressbench.core.registry.Registry`) when it is
used, never listed by hand: ``--executor`` offers the executor kinds, ``plot --only`` the plots.

The registries are named as ``"module:attr"`` and imported on first use (a parse or a ``--help``
of the command), so ``compressbench --help`` imports none of them. A name in none of them is a
usage error (exit 2) with the registry's "did you mean".
"""

from __future__ import annotations

from typing import Any

import click

from compressbench.core.registry import Registry, load_target, unknown_name


class RegistryChoice(click.Choice):
    """One of the names registered in ``registries`` (each ``"module:attr"`` of a Registry, read
    at use, so a kind registered later is offered too); ``what`` names them in the error."""

    def __init__(self, *registries: str, what: str | None = None):
        self._registries = registries
        self._what = what
        super().__init__((), case_sensitive=True)

    def _loaded(self) -> list[Registry[Any]]:
        return [load_target(ref) for ref in self._registries]

    @property  # type: ignore[override]
    def choices(self) -> tuple[str, ...]:
        return tuple(n for reg in self._loaded() for n in reg.names())

    @choices.setter
    def choices(self, _value: Any) -> None:  # click.Choice.__init__ sets it; the registries hold it
        pass

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value in self.choices:
            return value
        regs = self._loaded()
        what = self._what or regs[0].what
        self.fail(str(unknown_name(what, value, self.choices)), param, ctx)


__all__ = ["RegistryChoice"]
