"""Model backends behind one seam (see base.py). Heavy modules are imported only when used."""

from __future__ import annotations

import importlib
from typing import Any

from compressbench.backends.base import Backend, BaseBackend
from compressbench.core.errors import ConfigError

#: backend kind -> "module:Class"; imported lazily so `import compressbench` stays light.
BACKEND_KINDS: dict[str, str] = {
    "hf": "compressbench.backends.hf:HFBackend",
    "openai": "compressbench.backends.openai_http:OpenAIHTTPBackend",
    "vllm": "compressbench.backends.vllm:VLLMBackend",
}


def load_backend(kind: str, model: str, **options: Any) -> Backend:
    """Build a backend of `kind` ("hf", "openai", "vllm") for `model` with keyword options.

    The options are checked against the backend's declarations (:mod:`compressbench.backends.options`)
    before anything is imported or loaded: an unknown or mistyped option raises ConfigError (a
    UsageError) with a "did you mean".
    """
    try:
        target = BACKEND_KINDS[kind]
    except KeyError:
        raise ConfigError(
            f"unknown backend kind {kind!r}; choose one of {', '.join(sorted(BACKEND_KINDS))}"
        ) from None
    from compressbench.backends.options import validate_options

    kwargs = validate_options(kind, options, where=f"{kind} backend options", from_config=False)
    extra = kwargs.pop("engine_args", None) if kind == "vllm" else None
    kwargs.update(extra or {})
    module_name, cls_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(model, **kwargs)


__all__ = ["Backend", "BaseBackend", "BACKEND_KINDS", "load_backend"]
