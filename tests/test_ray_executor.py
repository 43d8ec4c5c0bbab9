"""The Ray executor on a local CPU Ray cluster started here (one start for the module): records
identical to the local executor's, a killed driver resumed without losing or duplicating work,
config and missing-extra errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from compressbench.cli.main import cli
from compressbench.engine.config import config_from_dict
from compressbench.core.errors import BackendUnavailable, ConfigError
from compressbench.engine.records import read_records
from compressbench.engine.scheduler import build_executor
from compressbench.engine.sweep import run_sweep

ROWS = [
    {"id": f"r{i}", "context": f"Crate {i} holds {n} {what} and leaves on day {d}.",
     "question": f"What does crate {i} hold?", "options": [f"{n} {what}", f"{n + 1} lamps", "nothing"],
     "answers": ["A"]}
    for i, (n, what, d) in enumerate([(3, "bolts", 2), (7, "cables", 5), (2, "drills", 9)])
]


def _raw(name: str, llama: Path, gpt2: Path, data: Path) -> dict:
    return {
        "name": name,
        "models": {"tl": {"backend": "hf", "model": str(llama), "options": {"threads": 1}},
                   "tg": {"backend": "hf", "model": str(gpt2), "options": {"threads": 1}}},
        "compressors": ["tl", "tg", "identity"], "predictors": ["tl", "tg"], "scorer": "tl",
        "datasets": [{"kind": "jsonl", "path": str(data), "name": "crates"}],
        "prompts": ["query", "agnostic"], "samples": 2, "temperatures": [0.7, 1.0],
        "max_new_tokens": {"compressor": 10, "predictor": 8, "judge": 8}, "mi_n_boot": 50,
        "batch_size": {"compressor": 2, "predictor": 4, "scorer": 4, "judge": 4},
    }


def _one_model(raw: dict) -> dict:
    """The same sweep without the second model: its cells are a subset of the full sweep's, with the
    same cell keys (a cell key covers only the cell's own models)."""
    return {**raw, "models": {"tl": raw["models"]["tl"]}, "compressors": ["tl", "identity"], "predictors": ["tl"]}


def _comparable(run_dir: Path, *, only_tl: bool = False) -> list[dict]:
    out = []
    for r in read_records(run_dir):
        if only_tl and (r.cell.compressor == "tg" or r.cell.predictor == "tg"):
            continue
        d = r.to_dict()
        d.pop("wall_s", None)
        out.append(d)
    return sorted(out, key=lambda d: (d["cell_key"], d["example_id"]))


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster with 2 CPUs for this module; yields its address."""
    ray = pytest.importorskip("ray", reason="the ray extra is part of the dev set-up (scripts/setup.sh)")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_llama_dir, tiny_gpt2_dir):
    tmp = tmp_path_factory.mktemp("ray")
    data = tmp / "crates.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    local = run_sweep(config_from_dict(_raw("local", tiny_llama_dir, tiny_gpt2_dir, data)), tmp / "runs",
                      progress=False)
    return tmp, data, local


@pytest.mark.slow
def test_ray_records_equal_local_records(ray_cluster, setup, tiny_llama_dir, tiny_gpt2_dir):
    tmp, data, local = setup
    raw = {**_raw("ray", tiny_llama_dir, tiny_gpt2_dir, data), "executor": {"kind": "ray"}}
    cfg = config_from_dict(raw)
    executor = build_executor(cfg)
    assert executor.parallelism == 2  # one actor per model: the two compressors work at the same time
    res = run_sweep(cfg, tmp / "runs", executor=executor, progress=False)
    assert res.n_records_written == local.n_records_written == 3 * 3 * 2 * 2 * 2  # examples x comp x pred x ...
    assert res.model_loads == {"tl": 1, "tg": 1}
    assert _comparable(res.run_dir) == _comparable(local.run_dir)
    # the driver alone wrote the run directory: the same files as a local run, and no others
    names = lambda d: sorted(p.name for p in d.iterdir() if p.name != "cache")
    assert names(res.run_dir) == names(local.run_dir)


@pytest.mark.slow
def test_killed_driver_resumes_without_losing_or_duplicating(ray_cluster, setup, tiny_llama_dir, tiny_gpt2_dir):
    tmp, data, local = setup
    cfg_path = tmp / "kill.yaml"
    raw = _one_model(_raw("kill", tiny_llama_dir, tiny_gpt2_dir, data))  # one actor per driver: less CI time
    cfg_path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    runs = tmp / "runs"
    run_dir = runs / "kill"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.Popen([sys.executable, "-m", "compressbench", "sweep", str(cfg_path), "--runs-dir", str(runs),
                             "--executor", "ray", "--ray-address", ray_cluster],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    cached: list[Path] = []
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            cached = [p for p in (run_dir / "cache").rglob("*.json")] if (run_dir / "cache").is_dir() else []
            if cached:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the driver ended before any work was cached: {proc.stderr.read()[-2000:]!r}"
        os.killpg(proc.pid, signal.SIGKILL)  # the driver, mid-run (its Ray actors die with it)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    n_cached = len(list((run_dir / "cache").rglob("*.json")))
    assert n_cached >= 1
    # The expectation: the same one-model sweep, uninterrupted, on the local executor. Its cells are
    # the full sweep's tl cells (same keys), but its records differ there in the scorer's share of
    # each shared prefill (1/8 of it: 8 scored groups per dataset here, against 12 in the full sweep).
    uninterrupted = run_sweep(config_from_dict(raw), tmp / "local-one", progress=False)
    expected = _comparable(uninterrupted.run_dir)
    assert len(expected) == 3 * 2 * 2 * 2  # examples x compressors x prompts x temperatures
    assert [(d["cell_key"], d["example_id"]) for d in expected] == [
        (d["cell_key"], d["example_id"]) for d in _comparable(local.run_dir, only_tl=True)]
    assert not (run_dir / "records.jsonl").exists() or len(read_records(run_dir)) < len(expected)
    # Resume, again on Ray: the work cached before the kill is reused, the rest is done once.
    cfg = config_from_dict({**raw, "executor": "ray"})
    res = run_sweep(cfg, runs, progress=False)
    assert res.cache_hits >= 1
    recs = read_records(run_dir)
    keys = [(r.cell_key, r.example_id) for r in recs]
    assert len(keys) == len(set(keys)) == len(expected)  # nothing lost, nothing twice
    assert _comparable(run_dir) == expected  # and the same records as the local executor's


def test_executor_config_errors(tiny_llama_dir, tiny_gpt2_dir, tmp_path):
    raw = _raw("x", tiny_llama_dir, tiny_gpt2_dir, tmp_path / "d.jsonl")
    with pytest.raises(ConfigError, match="did you mean 'ray'"):
        config_from_dict({**raw, "executor": "rey"})
    with pytest.raises(ConfigError, match="executor.resources names 'tll'.*did you mean 'tl'"):
        config_from_dict({**raw, "executor": {"kind": "ray", "resources": {"tll": {"num_gpus": 1}}}})
    with pytest.raises(ConfigError, match="replicas >= 1"):
        config_from_dict({**raw, "executor": {"kind": "ray", "resources": {"tl": {"replicas": 0}}}})
    cfg = config_from_dict({**raw, "executor": {"kind": "ray", "address": "auto",
                                                "resources": {"tl": {"num_gpus": 1, "replicas": 2}}}})
    assert cfg.executor["resources"]["tl"] == {"num_gpus": 1, "replicas": 2}
    assert "executor" in yaml.safe_load(cfg.to_yaml())


def test_without_ray_the_error_names_the_extra(monkeypatch, tiny_llama_dir, tiny_gpt2_dir, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    raw = _raw("noray", tiny_llama_dir, tiny_gpt2_dir, data)
    with pytest.raises(BackendUnavailable, match=r'pip install "compressbench\[ray\]"'):
        build_executor(config_from_dict({**raw, "executor": "ray"}))
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    res = CliRunner().invoke(cli, ["sweep", str(cfg_path), "--runs-dir", str(tmp_path / "runs"), "--executor", "ray"])
    assert res.exit_code == 1 and "compressbench[ray]" in res.output
    assert not (tmp_path / "runs" / "noray" / "records.jsonl").exists()
