"""Backend option declarations (compressbench/backends/options.py): they match what each backend
accepts, config validation uses them (unknown/mistyped -> usage error with did-you-mean, before any
model loads), and cache keys/resume leave out exactly the scheduling-only ones."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from compressbench.backends import load_backend
from compressbench.backends.options import BACKEND_OPTIONS, scheduling_only_options, validate_options
from compressbench.engine.config import config_from_dict, load_config, model_identity_options, results_identity
from compressbench.core.errors import ConfigError, UsageError

CONFIGS = Path(__file__).resolve().parent.parent / "compressbench" / "configs"


def _keyword_params(cls) -> dict[str, object]:
    sig = inspect.signature(cls.__init__)
    return {n: p.default for n, p in sig.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


@pytest.mark.parametrize(("kind", "path"), [("hf", "compressbench.backends.hf:HFBackend"),
                                            ("openai", "compressbench.backends.openai_http:OpenAIHTTPBackend")])
def test_declarations_match_the_backend_signatures(kind, path):
    import importlib

    mod, name = path.split(":")
    params = _keyword_params(getattr(importlib.import_module(mod), name))
    declared = {o.name: o.default for o in BACKEND_OPTIONS[kind]}
    assert declared == params


def test_vllm_declares_its_own_arguments():
    from compressbench.backends.vllm import VLLMBackend

    declared = {o.name: o.default for o in BACKEND_OPTIONS["vllm"]}
    for name, default in _keyword_params(VLLMBackend).items():
        assert declared[name] == default


def test_every_default_passes_its_own_check():
    for kind, opts in BACKEND_OPTIONS.items():
        for o in opts:
            if not o.python_only:
                o.check(o.default, f"{kind}.{o.name}")


@pytest.mark.parametrize(("kind", "options", "message"), [
    ("hf", {"dtyp": "float32"}, "did you mean 'dtype'?"),
    ("hf", {"dtype": "fp32"}, "must be 'float32' | 'bfloat16' | 'float16' | 'auto'"),
    ("hf", {"max_batch_tokens": "8k"}, "max_batch_tokens must be an integer >= 1, got '8k'"),
    ("hf", {"threads": True}, "threads must be an integer or null"),
    ("hf", {"prefix_batching": 0}, "prefix_batching"),
    ("openai", {"max_concurency": 4}, "did you mean 'max_concurrency'?"),
    ("openai", {"timeout_s": "fast"}, "timeout_s must be a number"),
    ("openai", {"endpoints": "http://a/v1"}, "endpoints must be a list"),
    ("openai", {"scoring": "sglan"}, "did you mean 'sglang'?"),
    ("openai", {"transport": None}, "only be passed from Python"),
    ("vllm", {"tensor_paralel_size": 2}, "did you mean 'tensor_parallel_size'?"),
    ("vllm", {"gpu_memory_utilization": "90%"}, "gpu_memory_utilization must be a number"),
])
def test_bad_options_are_config_errors(kind, options, message):
    with pytest.raises(ConfigError, match=message.replace("|", r"\|").replace("?", r"\?")):
        validate_options(kind, options, where=f"models.x.options")


def test_options_are_checked_in_the_config_before_anything_loads():
    raw = {"models": {"m": {"backend": "hf", "model": "/no/such/model", "options": {"dtyp": "float32"}}},
           "compressors": ["identity"], "predictors": ["m"], "scorer": "m", "datasets": [{"kind": "synthetic"}]}
    with pytest.raises(ConfigError, match="unknown option 'dtyp' in models.m.options for backend 'hf'"):
        config_from_dict(raw)
    raw["models"]["m"]["options"] = {"dtype": "float32", "threads": 2}
    assert config_from_dict(raw).models["m"].options == {"dtype": "float32", "threads": 2}


def test_load_backend_checks_python_callers_too():
    with pytest.raises(UsageError, match="did you mean 'max_concurrency'"):
        load_backend("openai", "m", base_url="http://127.0.0.1:1/v1", max_concurency=3)
    b = load_backend("openai", "m", base_url="http://127.0.0.1:1/v1", max_concurrency=3, transport=None)
    assert b.name == "openai:m"


def test_scheduling_only_comes_from_the_declarations():
    # where the replicas of a served model run does not change its outputs (resume with other replicas)
    assert {"timeout_s", "max_retries", "max_concurrency", "request_deadline_s", "base_url", "endpoints",
            "endpoint_concurrency"} <= scheduling_only_options("openai")
    assert {"scoring", "tokenize_path", "n_ctx"}.isdisjoint(scheduling_only_options("openai"))
    assert scheduling_only_options("hf") == {"max_batch_tokens", "max_logit_elements", "threads", "prefix_batching"}
    assert model_identity_options("hf", {"dtype": "float32", "threads": 4}) == {"dtype": "float32"}
    assert model_identity_options("openai", {"base_url": "u", "request_deadline_s": 9, "scoring": "sglang"}) == {
        "scoring": "sglang"}


def test_resume_identity_ignores_exactly_the_scheduling_only_options():
    base = load_config(CONFIGS / "example_sweep.yaml").to_dict()
    served = next(n for n, m in base["models"].items() if m["backend"] == "openai")

    def with_opts(**opts):
        d = {**base, "models": {**base["models"], served: {**base["models"][served],
                                                            "options": {**base["models"][served]["options"], **opts}}}}
        return results_identity(d)

    assert with_opts(timeout_s=5.0, max_retries=0, max_concurrency=1) == results_identity(base)
    assert with_opts(scoring="sglang") != results_identity(base)
    assert with_opts(tokenize_path="/tok") != results_identity(base)
