"""Model backends behind one seam (see base.py). Heavy modules are imported only when used.

Each backend kind is described once, in :data:`BACKENDS` (a :class:`BackendKind`): where its
class is, its options (declared in :mod:`compressbench.backends.options`), whether it can score
continuations, the GPUs one replica needs and where its API key comes from. Config validation,
the Ray executor and ``plan`` read these descriptors; none keeps its own list of kinds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from compressbench.backends.base import Backend, BaseBackend
from compressbench.backends.options import BACKEND_OPTIONS, Option, secret_hint, validate_options
from compressbench.core.errors import ConfigError
from compressbench.core.registry import Registry


@dataclass(frozen=True)
class BackendKind:
    """One backend kind.

    ``target``: its class as ``"module:Class"`` (imported on first use); ``can_score``: it scores
    continuations (``score``/``score_matrix``), so it may be the MI scorer or a loglik predictor;
    ``local_weights``: the model reference names weights on this machine (named model, folder or
    GGUF file), whose tokenizer ``plan`` may read; ``gpus``: the GPUs one replica needs, from its
    options (the Ray executor's default); ``passthrough``: an option whose mapping is passed on as
    more keyword arguments of the class (vLLM's ``engine_args``).
    """

    name: str
    target: str
    can_score: bool
    local_weights: bool
    gpus: Callable[[Mapping[str, Any]], float]
    passthrough: str | None = None

    @property
    def options(self) -> tuple[Option, ...]:
        """Its declared options (:data:`compressbench.backends.options.BACKEND_OPTIONS`)."""
        return BACKEND_OPTIONS[self.name]

    @property
    def secret_hint(self) -> str:
        """Where its API key goes instead of an option (said when a secret is refused)."""
        return secret_hint(self.name)


def _hf_gpus(options: Mapping[str, Any]) -> float:
    return 1.0 if str(options.get("device", "cpu")).startswith("cuda") else 0.0


def _vllm_gpus(options: Mapping[str, Any]) -> float:
    return float(options.get("tensor_parallel_size", 1))


def _no_gpus(options: Mapping[str, Any]) -> float:
    return 0.0  # an HTTP client: the server has the GPUs


#: backend kind -> its descriptor; a new kind is one entry here, its options in options.py and
#: its module (see docs/architecture.md).
BACKENDS: Registry[BackendKind] = Registry("backend kind", {
    "hf": BackendKind("hf", "compressbench.backends.hf:HFBackend", can_score=True, local_weights=True,
                      gpus=_hf_gpus),
    "openai": BackendKind("openai", "compressbench.backends.openai_http:OpenAIHTTPBackend", can_score=True,
                          local_weights=False, gpus=_no_gpus),
    "vllm": BackendKind("vllm", "compressbench.backends.vllm:VLLMBackend", can_score=True, local_weights=True,
                        gpus=_vllm_gpus, passthrough="engine_args"),
})
#: backend kind -> "module:Class" (read from :data:`BACKENDS`).
BACKEND_KINDS: dict[str, str] = {k: BACKENDS.target(k) for k in BACKENDS}


def load_backend(kind: str, model: str, **options: Any) -> Backend:
    """Build a backend of `kind` ("hf", "openai", "vllm") for `model` with keyword options.

    The options are checked against the backend's declarations (:mod:`compressbench.backends.options`)
    before anything is imported or loaded: an unknown or mistyped option raises ConfigError (a
    UsageError) with a "did you mean".
    """
    if kind not in BACKENDS:
        raise ConfigError(f"unknown backend kind {kind!r}; choose one of {', '.join(sorted(BACKENDS))}")
    desc = BACKENDS[kind]
    kwargs = validate_options(kind, options, where=f"{kind} backend options", from_config=False)
    extra = kwargs.pop(desc.passthrough, None) if desc.passthrough else None
    kwargs.update(extra or {})
    return BACKENDS.load(kind)(model, **kwargs)


__all__ = ["Backend", "BaseBackend", "BACKENDS", "BACKEND_KINDS", "BackendKind", "load_backend"]
