"""Reading YAML that people write: a key given twice in one mapping is an error, not "the last one
wins" (PyYAML's default, which silently drops the first value).

:func:`load_yaml` parses like ``yaml.safe_load`` (merge keys ``<<`` included) and raises
:class:`compressbench.core.errors.ConfigError` (a usage error: exit 2) naming the key and both lines
for a duplicate, and the line and column for a syntax error.
"""

from __future__ import annotations

from typing import Any

import yaml

from compressbench.core.errors import ConfigError


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key repeated within one mapping."""

    source = "YAML"

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: PyYAML's own error follows
                continue
            if first is not None:
                raise ConfigError(f"{self.source}, line {line}: key {key!r} is given twice in the same mapping "
                                  f"(first on line {first}); YAML would keep only the last value, so remove or "
                                  "rename one")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, source: str = "YAML") -> Any:
    """Parse ``text`` (from ``source``, named in messages) like ``yaml.safe_load``; ConfigError for
    a duplicate key or invalid YAML."""
    loader_cls = type("_Loader", (_UniqueKeyLoader,), {"source": source})
    loader = loader_cls(text)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML: {exc}") from None
    finally:
        loader.dispose()


__all__ = ["load_yaml"]
