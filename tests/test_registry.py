"""The lazy registries (compressbench/core/registry.py) and the three built on it: backend kinds
(BACKENDS, one descriptor each, read by config validation, the Ray executor and plan), dataset kinds
(DATASETS) and answer metrics (ANSWER_METRICS). Each is tied to docs/architecture.md."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from compressbench.analysis.plan import _local_model_dir
from compressbench.backends import BACKENDS, load_backend
from compressbench.backends.base import BaseBackend
from compressbench.backends.options import BACKEND_OPTIONS, validate_options
from compressbench.core.errors import ConfigError, DataError, UsageError
from compressbench.core.registry import Registry
from compressbench.core.types import Example
from compressbench.data import DATASETS, load_dataset
from compressbench.engine.config import config_from_dict
from compressbench.engine.ray_executor import default_resources
from compressbench.measure import metrics

ROOT = Path(__file__).resolve().parent.parent
ARCHITECTURE = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- the registry itself


def test_registry_names_lookup_and_did_you_mean():
    reg = Registry("codec", {"json-dumps": "json:dumps", "json-loads": "json:loads", "zip": "zlib:compress"})
    assert reg.names() == ("json-dumps", "json-loads", "zip") and len(reg) == 3 and list(reg) == list(reg.names())
    assert "zip" in reg and "gzip" not in reg and ["zip"] not in reg
    assert reg.load("json-dumps") is json.dumps and reg.target("zip") == "zlib:compress"
    assert reg.suggest("json-dump") == "json-dumps" and reg.suggest("xml") is None
    with pytest.raises(ConfigError) as err:
        reg["jsn-loads"]
    assert str(err.value) == "unknown codec 'jsn-loads' (did you mean 'json-loads'?); known: json-dumps, json-loads, zip"
    assert isinstance(err.value, UsageError)  # the CLI exits 2
    with pytest.raises(ConfigError, match=r"^unknown codec 'xml'; known: json-dumps"):
        reg.load("xml")


def test_registry_entries_are_descriptors_or_targets_and_read_only():
    with pytest.raises(TypeError, match="'module:attr'"):
        Registry("codec", {"bad": "json.dumps"})
    entries = {"a": "json:dumps"}
    reg = Registry("codec", entries)
    entries["b"] = "json:loads"  # the registry keeps its own copy
    assert reg.names() == ("a",)
    with pytest.raises(TypeError):
        reg._entries["c"] = "json:loads"  # type: ignore[index]


def test_importing_compressbench_imports_no_backend_dataset_loader_or_heavy_library():
    code = """if True:
        import json, sys
        import compressbench
        lazy = ("compressbench.data.", "compressbench.backends.hf", "compressbench.backends.vllm",
                "compressbench.backends.openai_http", "torch", "transformers", "datasets")
        before = sorted(m for m in sys.modules if m.startswith(lazy))
        from compressbench.data import load_dataset
        n = len(load_dataset({"kind": "synthetic", "n_patients": 2, "n_questions_per_patient": 1}))
        print(json.dumps([before, n, sorted(m for m in sys.modules if m.startswith(lazy))]))
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT)}).stdout
    assert json.loads(out) == [[], 2, ["compressbench.data.synthetic"]]


# --------------------------------------------------------------------------- tied to the docs


def _documented(label: str) -> set[str]:
    """The backticked names in the row of docs/architecture.md's registry table that starts with ``label``."""
    row = next(line for line in ARCHITECTURE.splitlines() if line.startswith(f"| {label} |"))
    return set(re.findall(r"`([^`]+)`", row.split("|")[3]))


@pytest.mark.parametrize("label, registry", [("backend kinds", BACKENDS), ("dataset kinds", DATASETS),
                                             ("answer metrics", metrics.ANSWER_METRICS)])
def test_every_registered_name_is_documented_and_every_documented_one_registered(label, registry):
    assert _documented(label) == set(registry.names())


@pytest.mark.parametrize("registry", [BACKENDS, DATASETS, metrics.ANSWER_METRICS], ids=lambda r: r.what)
def test_every_entry_loads(registry):
    for name in registry:
        assert callable(registry.load(name)), name


# --------------------------------------------------------------------------- backend descriptors


def test_backend_descriptors_match_their_classes_and_options():
    assert set(BACKEND_OPTIONS) == set(BACKENDS.names())
    for name in BACKENDS:
        desc, cls = BACKENDS[name], BACKENDS.load(name)
        assert issubclass(cls, BaseBackend) and desc.name == name
        assert desc.can_score == callable(getattr(cls, "score", None)), name  # score_matrix builds on score
        assert desc.options is BACKEND_OPTIONS[name]
        assert desc.passthrough is None or desc.passthrough in {o.name for o in desc.options}


def test_load_backend_refuses_an_unknown_kind_as_before():
    with pytest.raises(ConfigError) as err:
        load_backend("hff", "m")
    assert str(err.value) == "unknown backend kind 'hff'; choose one of hf, openai, vllm"


def test_secret_hints_come_from_the_api_key_env_option():
    assert BACKENDS["openai"].secret_hint == ("set options.api_key_env to the name of an environment variable "
                                              "holding it (default OPENAI_API_KEY) and export the key there")
    assert BACKENDS["hf"].secret_hint == BACKENDS["vllm"].secret_hint == "this backend takes no API key; remove it"
    with pytest.raises(ConfigError) as err:
        validate_options("openai", {"api_key": "x"}, where="models.m.options")
    assert str(err.value).endswith("API keys are read from the environment only: " + BACKENDS["openai"].secret_hint)


def _config(backend: str, **options) -> dict:
    return {"models": {"m": {"backend": backend, "model": "x", "options": options}}, "compressors": ["m"],
            "predictors": ["m"], "scorer": "m", "datasets": [{"kind": "synthetic"}], "predictor_mode": "loglik"}


def test_config_reads_the_backend_kinds_and_what_can_score():
    for kind in BACKENDS:  # every kind can score today: each may be the scorer and a loglik predictor
        assert config_from_dict(_config(kind)).models["m"].backend == kind
    with pytest.raises(ConfigError) as err:
        config_from_dict(_config("hff"))
    assert str(err.value) == "models.m.backend must be one of hf, openai, vllm, got 'hff'; did you mean 'hf'?"


@pytest.mark.parametrize("backend, options, gpus", [
    ("vllm", {}, 1.0), ("vllm", {"tensor_parallel_size": 4}, 4.0),
    ("hf", {}, 0.0), ("hf", {"device": "cuda:1"}, 1.0), ("hf", {"device": "cpu"}, 0.0),
    ("openai", {"base_url": "http://127.0.0.1:8000/v1"}, 0.0),
])
def test_the_ray_executor_gives_each_kind_its_gpus(backend, options, gpus):
    r = default_resources(backend, options)
    assert (r.num_cpus, r.num_gpus, r.replicas, r.memory_gb) == (1.0, gpus, 1, None)


def test_plan_reads_tokenizers_only_of_kinds_with_local_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert _local_model_dir("hf", str(tmp_path)) == tmp_path
    assert _local_model_dir("vllm", str(tmp_path)) == tmp_path
    assert _local_model_dir("openai", str(tmp_path)) is None  # a served model: its name, not a folder here
    assert _local_model_dir("hff", str(tmp_path)) is None


# --------------------------------------------------------------------------- datasets and metrics


def test_dataset_descriptors_drive_the_spec_checks():
    context_only = [k for k in DATASETS if DATASETS[k].questions]
    assert context_only == ["fineweb", "wildchat"]
    with pytest.raises(DataError, match=r"^'questions' applies to context-only datasets \(fineweb, wildchat\), "
                                        r"not synthetic$"):
        load_dataset({"kind": "synthetic", "questions": "q.jsonl"})
    with pytest.raises(DataError, match="the known_info dataset is generated: drop 'path'/'hub_id'"):
        load_dataset({"kind": "known_info", "path": "x"})
    with pytest.raises(DataError, match=r"^qasper dataset spec needs 'path' \(a local file or folder\) or 'hub_id'"):
        load_dataset({"kind": "qasper"})
    with pytest.raises(DataError, match="longhealth datasets are read from local files only"):
        load_dataset({"kind": "longhealth", "hub_id": "x/y"})
    with pytest.raises(DataError, match=r"^dataset kind \['synthetic'\] is unknown .*; known kinds: jsonl, parquet,"):
        load_dataset({"kind": ["synthetic"]})  # a YAML list where a name belongs
    with pytest.raises(DataError, match=r"unknown key 'n_slots' in synthetic dataset spec"):
        load_dataset({"kind": "synthetic", "n_slots": 3})  # a known_info key, not synthetic's


def test_a_kind_option_reaches_its_loader():
    exs = load_dataset({"kind": "known_info", "n_contexts": 3, "n_slots": 2, "n_values": 4, "seed": 1})
    assert len(exs) == 3 and len({e.context for e in exs}) == 3
    # K = 2 slots of V = 4 values: K log2 V = 4 bits known per context
    assert all(len(e.metadata["slots"]) == 2 and e.metadata["info_bits"] == 4.0 for e in exs)


def test_score_example_dispatches_through_the_metric_registry():
    assert metrics.METRICS == ("choice", "exact", "f1", "numeric", "judge", "ref_nll")
    ex = Example(id="q", context="", question="?", answers=("the Lumo treebank",))
    # f1 by hand: pred {lumo, corpus} vs gold {lumo, treebank} ("the" dropped): P = R = 1/2 -> F1 = 0.5
    assert metrics.score_example(ex, "Lumo corpus", "f1") == metrics.Score(0.5, None, "f1")
    assert metrics.score_example(ex, "lumo treebank", "exact") == metrics.Score(1.0, None, "exact")
    with pytest.raises(UsageError, match=r"^unknown metric 'bleu'; known: choice, exact, f1, numeric, judge, ref_nll$"):
        metrics.score_example(ex, "x", "bleu")
