"""What each backend kind accepts as options: name, type, default, doc, and whether the option only
schedules work (batch budgets, threads, concurrency, timeouts, retries) or changes what the model
outputs.

Read by three places, so each rule lives here once:

- config validation (:func:`validate_options`): an unknown option is a usage error with a "did you
  mean", a mistyped one names the expected type; both before any model is loaded;
- cache keys and resume checks (:func:`scheduling_only_options`, read by the engine through
  :func:`compressbench.engine.config.scheduling_only_options`): scheduling-only options are left out, so
  changing them neither invalidates the cache nor blocks resuming a run;
- :func:`compressbench.backends.load_backend`, which validates Python callers' options the same way.

Secrets never go in options: an option that looks like an API key (``api_key``, ``token``, a
``Bearer`` value, a URL with a password or a ``key=`` query) is refused with a message naming the
environment variable to use instead (``api_key_env``). Config files and run folders are meant to
be shared; keys live in the environment only.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from compressbench.backends.secrets import SECRET_QUERY_PARAMS, looks_like_key, url_credential
from compressbench.core.errors import ConfigError

_NONE = type(None)


@dataclass(frozen=True)
class Option:
    """One backend option.

    ``types``: accepted Python types of the value (``int`` also satisfies ``float``; ``bool`` never
    satisfies ``int``). ``choices``: allowed string values, if any. ``minimum``: a lower bound for
    numbers. ``scheduling_only``: changes how work is scheduled, never what is computed (left out
    of cache keys). ``python_only``: cannot come from a config file (e.g. an httpx transport).
    """

    name: str
    types: tuple[type, ...]
    default: Any
    doc: str
    scheduling_only: bool = False
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    python_only: bool = False

    def type_text(self) -> str:
        names = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
                 list: "a list", dict: "a mapping", _NONE: "null", object: "a Python object"}
        parts = [names.get(t, t.__name__) for t in self.types]
        if self.choices:
            parts = [" | ".join(repr(c) for c in self.choices)] + [p for p, t in zip(parts, self.types)
                                                                    if t is not str]
        return " or ".join(parts)

    def check(self, value: Any, where: str) -> None:
        """Raise ConfigError if ``value`` is not acceptable for this option."""
        ok = False
        for t in self.types:
            if t is object:
                ok = True
            elif t is _NONE:
                ok = ok or value is None
            elif t is bool:
                ok = ok or isinstance(value, bool)
            elif t is int:
                ok = ok or (isinstance(value, int) and not isinstance(value, bool))
            elif t is float:
                ok = ok or (isinstance(value, (int, float)) and not isinstance(value, bool))
            elif t is list:
                ok = ok or (isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value))
            else:
                ok = ok or isinstance(value, t)
        if ok and self.choices and isinstance(value, str) and value not in self.choices:
            close = difflib.get_close_matches(value, self.choices, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{where} must be {self.type_text()}, got {value!r}{hint}")
        if ok and self.minimum is not None and isinstance(value, (int, float)) and not isinstance(value, bool) \
                and value < self.minimum:
            ok = False
        if not ok:
            bound = f" >= {self.minimum:g}" if self.minimum is not None else ""
            raise ConfigError(f"{where} must be {self.type_text()}{bound}, got {value!r} "
                              f"({type(value).__name__}): {self.doc}")


def _o(name: str, types: Any, default: Any, doc: str, **kw: Any) -> Option:
    return Option(name, types if isinstance(types, tuple) else (types,), default, doc, **kw)


_S = dict(scheduling_only=True)

#: backend kind -> its options, in the order of the backend's signature.
BACKEND_OPTIONS: dict[str, tuple[Option, ...]] = {
    "hf": (
        _o("dtype", str, "float32", "weights and compute dtype",
           choices=("float32", "bfloat16", "float16", "auto")),
        _o("device", str, "cpu", "torch device, e.g. cpu, cuda, cuda:1"),
        _o("max_batch_tokens", int, 32768, "tokens per forward pass (memory budget)", minimum=1, **_S),
        _o("max_logit_elements", int, 1 << 27, "logit elements per forward pass (memory budget)", minimum=1, **_S),
        _o("seed", (int, _NONE), 0, "sampling seed base"),
        _o("threads", (int, _NONE), None, "torch CPU threads (null: COMPRESSBENCH_TORCH_THREADS, else half the CPUs)", minimum=1, **_S),
        _o("trust_remote_code", bool, False, "run model code shipped with a hub model"),
        _o("prefix_batching", (str, int), "auto",
           'group several prefixes per forward in score_matrix: "auto", "off" or a group size',
           choices=("auto", "off"), minimum=1, **_S),
    ),
    "openai": (
        # where the replicas of a served model are does not change its outputs: resume with others
        _o("base_url", (str, _NONE), None, "the server URL, e.g. http://127.0.0.1:8000/v1", **_S),
        _o("endpoints", (list, _NONE), None, "several URLs serving the same model", **_S),
        _o("endpoint_concurrency", (dict, _NONE), None,
           "{url: n}: another in-flight limit for the endpoints named", **_S),
        _o("api_key_env", (str, _NONE), "OPENAI_API_KEY",
           "name of the environment variable holding the API key (never the key itself)", **_S),
        _o("scoring", str, "auto", "how prompt log-probs are requested",
           choices=("auto", "completions", "sglang", "none")),
        _o("max_concurrency", int, 16, "requests in flight per endpoint", minimum=1, **_S),
        _o("timeout_s", float, 120.0, "per-attempt read/write timeout, seconds", minimum=0, **_S),
        _o("connect_timeout_s", float, 10.0, "per-attempt connect timeout, seconds", minimum=0, **_S),
        _o("request_deadline_s", (float, _NONE), 300.0,
           "overall limit per request including retries and backoff, seconds (null: none)", minimum=0, **_S),
        _o("max_retries", int, 5, "retries of 429/5xx/timeouts/connection errors", minimum=0, **_S),
        _o("backoff_initial_s", float, 0.5, "first backoff delay, seconds", minimum=0, **_S),
        _o("backoff_max_s", float, 30.0, "longest backoff delay, seconds", minimum=0, **_S),
        _o("retry_after_max_s", float, 120.0, "longest Retry-After honoured, seconds", minimum=0, **_S),
        _o("endpoint_max_failures", int, 3,
           "consecutive connection failures/timeouts that take an endpoint out (circuit breaker)", minimum=1, **_S),
        _o("endpoint_cooldown_s", float, 60.0, "how long an endpoint stays out, seconds", minimum=0, **_S),
        _o("transport", object, None, "an httpx transport (tests)", python_only=True, **_S),
        _o("jitter_seed", (int, _NONE), None, "seed of the backoff jitter", **_S),
        _o("tokenize_path", str, "/tokenize", "the server's tokenizer route"),
        _o("n_ctx", (int, _NONE), None, "context window when the server does not report it", minimum=1),
    ),
    "vllm": (
        _o("tensor_parallel_size", int, 1, "GPUs per model replica", minimum=1),
        _o("data_parallel_size", int, 1, "model replicas", minimum=1, **_S),
        _o("dtype", str, "auto", "weights and compute dtype (vllm.LLM dtype)"),
        _o("max_model_len", (int, _NONE), None, "context window (vllm.LLM max_model_len)", minimum=1),
        _o("gpu_memory_utilization", float, 0.9, "share of GPU memory vLLM may use", minimum=0, **_S),
        _o("enforce_eager", bool, False, "disable CUDA graphs", **_S),
        _o("seed", (int, _NONE), 0, "engine seed"),
        _o("trust_remote_code", bool, False, "run model code shipped with a hub model"),
        _o("quantization", (str, _NONE), None, "vLLM quantization method"),
        _o("revision", (str, _NONE), None, "model revision"),
        _o("tokenizer", (str, _NONE), None, "tokenizer path or id"),
        _o("kv_cache_dtype", str, "auto", "KV cache dtype"),
        _o("enable_prefix_caching", (bool, _NONE), None, "automatic prefix caching", **_S),
        _o("enable_chunked_prefill", (bool, _NONE), None, "chunked prefill", **_S),
        _o("max_num_seqs", (int, _NONE), None, "sequences per engine step", minimum=1, **_S),
        _o("max_num_batched_tokens", (int, _NONE), None, "tokens per engine step", minimum=1, **_S),
        _o("swap_space", float, 4, "CPU swap space per GPU, GiB", minimum=0, **_S),
        _o("download_dir", (str, _NONE), None, "where weights are downloaded", **_S),
        _o("engine_args", (dict, _NONE), None,
           "other vllm.LLM keyword arguments, passed through unchecked (they are part of cache keys)"),
    ),
}

#: Option names that would hold a secret; refused in config files and in load_backend.
_SECRET_NAMES = re.compile(r"(?i)^(api[_-]?key|key|token|access[_-]?token|secret|password|passwd|"
                           r"authorization|auth|bearer|headers|default_headers)$")


def options_of(kind: str) -> tuple[Option, ...]:
    try:
        return BACKEND_OPTIONS[kind]
    except KeyError:
        raise ConfigError(f"unknown backend kind {kind!r}; choose one of {', '.join(sorted(BACKEND_OPTIONS))}") \
            from None


def scheduling_only_options(kind: str) -> frozenset[str]:
    """Names of ``kind``'s options that only schedule work (never part of a cache key)."""
    return frozenset(o.name for o in options_of(kind) if o.scheduling_only)


def endpoint_in_flight(options: Mapping[str, Any]) -> int:
    """How many requests an HTTP client with these (``openai``-kind) options keeps in flight at
    most: ``max_concurrency`` per endpoint, or its ``endpoint_concurrency``, summed over the
    endpoints (the ``openai`` descriptor's ``in_flight``, :data:`compressbench.backends.BACKENDS`)."""
    urls = list(options.get("endpoints") or []) + ([options["base_url"]] if options.get("base_url") else [])
    roots = list(dict.fromkeys(str(u).rstrip("/").removesuffix("/v1") for u in urls)) or [""]
    per = {r: int(options.get("max_concurrency") or 16) for r in roots}
    for url, n in (options.get("endpoint_concurrency") or {}).items():
        root = str(url).rstrip("/").removesuffix("/v1")
        if root in per and isinstance(n, int):
            per[root] = n
    return sum(per.values())


def _secret_message(where: str, what: str, kind: str) -> str:
    return (f"{where}: {what} would put a secret in the config, and config files, config.yaml and "
            f"manifest.json are written in clear. API keys are read from the environment only: {secret_hint(kind)}")


def secret_hint(kind: str) -> str:
    """Where a backend of ``kind`` reads its API key: the variable its ``api_key_env`` option names,
    if it declares that option; else it takes none."""
    env = next((o for o in options_of(kind) if o.name == "api_key_env"), None)
    if env is None:
        return "this backend takes no API key; remove it"
    return (f"set options.api_key_env to the name of an environment variable holding it (default {env.default}) "
            "and export the key there")


def validate_options(kind: str, options: Mapping[str, Any], *, where: str = "options",
                     from_config: bool = True) -> dict[str, Any]:
    """Check ``options`` for a backend of ``kind``; return them as a dict.

    Raises ConfigError (a UsageError: exit 2) for an unknown option (with a "did you mean"), a
    value of the wrong type, a Python-only option in a config file, or anything that looks like a
    secret (see the module docstring).
    """
    if not isinstance(options, Mapping):
        raise ConfigError(f"{where} must be a mapping of backend keyword options, got {type(options).__name__}")
    declared = {o.name: o for o in options_of(kind)}
    for name, value in options.items():
        key = f"{where}.{name}"
        if isinstance(name, str) and _SECRET_NAMES.match(name):
            raise ConfigError(_secret_message(key, f"option {name!r}", kind))
        opt = declared.get(name)
        if opt is None:
            close = difflib.get_close_matches(str(name), list(declared), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}?" if close else f"known options: {', '.join(declared)}"
            raise ConfigError(f"unknown option {name!r} in {where} for backend {kind!r}; {hint}")
        if opt.python_only and from_config:
            raise ConfigError(f"{key} can only be passed from Python (load_backend), not from a config file")
        for text in _strings(value):  # before the type check, whose message would echo the value
            cred = url_credential(text) if re.match(r"(?i)^https?://", text) else None
            if cred:
                raise ConfigError(_secret_message(key, f"a URL with {cred}", kind))
            if looks_like_key(text):
                raise ConfigError(_secret_message(key, "a value that looks like an API key", kind))
        opt.check(value, key)
    return dict(options)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, Mapping):
        return [s for v in value.values() for s in _strings(v)]
    return []


__all__ = ["BACKEND_OPTIONS", "SECRET_QUERY_PARAMS", "Option", "endpoint_in_flight", "options_of",
           "scheduling_only_options", "url_credential", "validate_options"]
