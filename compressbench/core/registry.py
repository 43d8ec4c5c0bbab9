"""A small lazy registry: name -> entry, each entry naming its code as ``"module:attr"``.

Used wherever users extend compressbench (backend kinds, dataset kinds, answer metrics; see
docs/architecture.md): a new kind is one entry here plus one module, and the module is imported
only when the kind is first used, so ``import compressbench`` (and ``compressbench --help``) never
imports a backend, a dataset loader or their heavy dependencies::

    DATASETS = Registry("dataset kind", {"synthetic": "compressbench.data.synthetic:from_spec"})
    DATASETS.names()            # ("synthetic",)
    DATASETS.load("synthetic")  # imports compressbench.data.synthetic, returns from_spec
    DATASETS.suggest("synthtic")  # "synthetic"

An entry is either the ``"module:attr"`` string itself or a frozen descriptor with a ``target``
attribute holding it (and whatever else callers read: options, flags; :class:`PlotKind` is the
descriptor of a plot, shared by the sweep's and the research run's plot registries). The registry
is built once at import time; the module cache is Python's own. The one way to change it is
:meth:`Registry.added`, which registers an entry for the length of a ``with`` block only (tests,
or a plugin scoped to a block) and removes it on leaving, so nothing outlives the block::

    with DATASETS.added("mine", "my_package.loader:from_spec"):
        load_dataset({"kind": "mine"})   # config, CLI and loaders see "mine" here only
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from compressbench.core.errors import ConfigError

E = TypeVar("E")

__all__ = ["PlotKind", "Registry", "load_target", "unknown_name"]


def load_target(ref: str) -> Any:
    """The attribute named by ``"module:attr"``, importing the module on first use (Python caches it)."""
    module_name, attr = ref.split(":")
    return getattr(importlib.import_module(module_name), attr)


def unknown_name(what: str, name: object, known: Iterable[str]) -> ConfigError:
    """The error for a ``what`` named ``name`` that is not among ``known``: what was asked, a
    "did you mean" (difflib, cutoff 0.6) and the choices. A ConfigError (a UsageError: exit 2)."""
    known = tuple(known)
    close = difflib.get_close_matches(str(name), sorted(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown {what} {name!r}{hint}; known: {', '.join(known)}")


@dataclass(frozen=True)
class PlotKind:
    """One plot. ``target``: its function as ``"module:fn"`` (drawing a matplotlib Figure from
    what the run kind's plotter passes it; it raises the plotter's "skipped" error with the reason
    when the run cannot support it); ``needs``: what the run must have for it, in words (the CLI's
    help and the docs say it)."""

    target: str
    needs: str


class Registry(Generic[E]):
    """Read-only ``name -> entry`` in registration order. ``what`` names the kind of thing in
    messages ("backend kind", "dataset kind", "metric")."""

    def __init__(self, what: str, entries: Mapping[str, E]):
        self.what = what
        for name, entry in entries.items():
            self._check(name, entry)
        self._data: dict[str, E] = dict(entries)
        self._entries: Mapping[str, E] = MappingProxyType(self._data)

    def _check(self, name: str, entry: E) -> None:
        target = entry if isinstance(entry, str) else getattr(entry, "target", None)
        if not isinstance(target, str) or target.count(":") != 1:
            raise TypeError(f"{self.what} {name!r}: an entry must be 'module:attr' or have a 'target' of that "
                            f"form, got {entry!r}")

    @contextlib.contextmanager
    def added(self, name: str, entry: E) -> Iterator[Registry[E]]:
        """Register ``name`` -> ``entry`` for the length of a ``with`` block; it is removed on
        leaving the block, however it is left. A name already registered is refused (ValueError):
        a block adds a kind, it never replaces one."""
        if name in self._data:
            raise ValueError(f"{self.what} {name!r} is already registered")
        self._check(name, entry)
        self._data[name] = entry
        try:
            yield self
        finally:
            del self._data[name]

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._entries
        except TypeError:  # an unhashable name (a list from YAML) is simply not registered
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def suggest(self, name: object) -> str | None:
        """The registered name closest to ``name`` (difflib, cutoff 0.6), or None."""
        close = difflib.get_close_matches(str(name), sorted(self._entries), n=1)
        return close[0] if close else None

    def unknown(self, name: object) -> ConfigError:
        """The error for a name that is not registered: what was asked, a "did you mean", the choices."""
        return unknown_name(self.what, name, self._entries)

    def __getitem__(self, name: str) -> E:
        """The entry of ``name``; :meth:`unknown`'s ConfigError (a UsageError: exit 2) if none."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise self.unknown(name) from None

    def target(self, name: str) -> str:
        """The ``"module:attr"`` of ``name``."""
        entry = self[name]
        return entry if isinstance(entry, str) else entry.target  # type: ignore[attr-defined]

    def load(self, name: str) -> Any:
        """Import the module of ``name`` (on first use; Python caches it) and return its attribute."""
        return load_target(self.target(name))
