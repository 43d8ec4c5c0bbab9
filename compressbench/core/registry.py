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
attribute holding it (and whatever else callers read: options, flags). The registry is built once
at import time and never changes (no global mutable state); the module cache is Python's own.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from compressbench.core.errors import ConfigError

E = TypeVar("E")

__all__ = ["Registry"]


class Registry(Generic[E]):
    """Read-only ``name -> entry`` in registration order. ``what`` names the kind of thing in
    messages ("backend kind", "dataset kind", "metric")."""

    def __init__(self, what: str, entries: Mapping[str, E]):
        for name, entry in entries.items():
            target = entry if isinstance(entry, str) else getattr(entry, "target", None)
            if not isinstance(target, str) or target.count(":") != 1:
                raise TypeError(f"{what} {name!r}: an entry must be 'module:attr' or have a 'target' of that "
                                f"form, got {entry!r}")
        self.what = what
        self._entries: Mapping[str, E] = MappingProxyType(dict(entries))

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
        close = self.suggest(name)
        hint = f" (did you mean {close!r}?)" if close else ""
        return ConfigError(f"unknown {self.what} {name!r}{hint}; known: {', '.join(self._entries)}")

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
        module_name, attr = self.target(name).split(":")
        return getattr(importlib.import_module(module_name), attr)
