"""Model backends behind one seam (see base.py). Heavy modules are imported only when used.

Each backend kind is described once, in :data:`BACKENDS` (a :class:`BackendKind`): where its
class is, its options (declared in :mod:`compressbench.backends.options`), whether it can score
continuations, whether it resolves built-in model names, the GPUs one replica needs, whether it
schedules its own concurrency, what its scoring costs and where its API key comes from. Config
validation, the sweep, the Ray executor and ``plan`` read these descriptors; none keeps its own
list of kinds or asks which kind a model is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from compressbench.backends.base import Backend, BaseBackend
from compressbench.backends.options import (
    BACKEND_OPTIONS,
    Option,
    endpoint_in_flight,
    secret_hint,
    validate_options,
)
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
    more keyword arguments of the class (vLLM's ``engine_args``); ``named_models``: its model
    reference may be a built-in model name (:mod:`compressbench.backends.models`), so config
    validation says "did you mean" for a near miss; ``in_flight``: for a kind that schedules its own
    concurrency (an HTTP client), how many requests one backend with these options keeps in flight
    (:func:`max_in_flight`), None for a kind that runs its batches itself; ``scoring_rereads_prefix``:
    whether, with these options, its scoring reads each shared prefix again for every
    continuation scored after it (no prefix cache), so scoring costs more than ``plan``'s
    shared-prefix figure.
    """

    name: str
    target: str
    can_score: bool
    local_weights: bool
    gpus: Callable[[Mapping[str, Any]], float]
    passthrough: str | None = None
    named_models: bool = False
    in_flight: Callable[[Mapping[str, Any]], int] | None = None
    scoring_rereads_prefix: Callable[[Mapping[str, Any]], bool] = field(default=lambda _options: False)

    @property
    def schedules_own_concurrency(self) -> bool:
        """It keeps several requests in flight itself (the engine sends it enough per call)."""
        return self.in_flight is not None

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


def _http_scoring_rereads_prefix(options: Mapping[str, Any]) -> bool:
    # vLLM's prompt_logprobs path re-reads the prefix per (prefix, compression) pair; SGLang caches it
    return options.get("scoring", "auto") != "sglang"


#: backend kind -> its descriptor; a new kind is one entry here, its options in options.py and
#: its module (see docs/architecture.md).
BACKENDS: Registry[BackendKind] = Registry("backend kind", {
    "hf": BackendKind("hf", "compressbench.backends.hf:HFBackend", can_score=True, local_weights=True,
                      gpus=_hf_gpus, named_models=True),
    "openai": BackendKind("openai", "compressbench.backends.openai_http:OpenAIHTTPBackend", can_score=True,
                          local_weights=False, gpus=_no_gpus, in_flight=endpoint_in_flight,
                          scoring_rereads_prefix=_http_scoring_rereads_prefix),
    "vllm": BackendKind("vllm", "compressbench.backends.vllm:VLLMBackend", can_score=True, local_weights=True,
                        gpus=_vllm_gpus, passthrough="engine_args"),
})
#: backend kind -> "module:Class" (read from :data:`BACKENDS`).
BACKEND_KINDS: dict[str, str] = {k: BACKENDS.target(k) for k in BACKENDS}


def max_in_flight(kind: str, options: Mapping[str, Any]) -> int | None:
    """How many requests a backend of ``kind`` with these options keeps in flight at most, when it
    schedules its own concurrency (its descriptor's ``in_flight``; the ``openai`` kind:
    ``max_concurrency`` per endpoint, or its ``endpoint_concurrency``, summed over the endpoints);
    None for backends that run batches themselves (their batch size is a memory budget). The
    engine sends such a backend at least this many requests per call, so the configured
    concurrency is reached."""
    in_flight = BACKENDS[kind].in_flight
    return None if in_flight is None else in_flight(options)


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


__all__ = ["Backend", "BaseBackend", "BACKENDS", "BACKEND_KINDS", "BackendKind", "load_backend", "max_in_flight"]
