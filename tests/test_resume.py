"""Resume: SIGKILL a real `compressbench sweep` subprocess mid-sweep, rerun the same command, and
compare with an uninterrupted run: same summary, no duplicate records, cached work not redone."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from compressbench.engine.records import read_records

ROWS = [{"id": f"e{i}", "context": f"Patient {name} takes {drug} daily for {cond}.",
         "question": f"What does {name} take?", "options": [drug, "aspirin", "insulin"], "answers": ["A"]}
        for i, (name, drug, cond) in enumerate([
            ("Ann", "metformin", "diabetes"), ("Ben", "warfarin", "a clot"), ("Cat", "statins", "cholesterol"),
            ("Dan", "ibuprofen", "pain"), ("Eve", "levothyroxine", "thyroid"), ("Fay", "lisinopril", "pressure"),
            ("Gus", "albuterol", "asthma"), ("Hal", "omeprazole", "reflux"),
        ])]


def _config(tmp: Path, model_dir: Path) -> Path:
    data = tmp / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    cfg = {
        "name": "resume",
        "models": {"tiny": {"backend": "hf", "model": str(model_dir), "options": {"threads": 1}}},
        "compressors": ["tiny", "identity", "truncate:5"],
        "predictors": ["tiny"],
        "scorer": "tiny",
        "datasets": [{"kind": "jsonl", "path": str(data), "name": "local"}],
        "samples": 3,
        "temperatures": [0.9],
        "max_new_tokens": {"compressor": 24, "predictor": 8},
        "batch_size": {"compressor": 1, "predictor": 1},
        "max_error_rate": 1.0,
    }
    p = tmp / "sweep.yaml"
    p.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return p


def _cmd(cfg: Path, runs: Path) -> list[str]:
    return [sys.executable, "-m", "compressbench", "--log-level", "info", "sweep", str(cfg), "--runs-dir", str(runs)]


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    # make a test-only shim (e.g. PYTHONPATH) visible to the child as it is to us
    return env


def _cache_files(run_dir: Path) -> dict[Path, int]:
    return {p: p.stat().st_ino for p in (run_dir / "cache").rglob("*") if p.is_file()}


def _strip(rows):
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]


@pytest.mark.slow
def test_kill_9_then_resume_matches_an_uninterrupted_run(tmp_path, tiny_llama_dir):
    cfg = _config(tmp_path, tiny_llama_dir)
    # 1. the uninterrupted reference run
    ref = subprocess.run(_cmd(cfg, tmp_path / "ref"), env=_env(), capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr
    ref_summary = json.loads((tmp_path / "ref" / "resume" / "summary.json").read_text())

    # 2. the same sweep, killed with SIGKILL once some (not all) work is cached
    runs = tmp_path / "runs"
    run_dir = runs / "resume"
    proc = subprocess.Popen(_cmd(cfg, runs), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if (run_dir / "cache").exists() and len(_cache_files(run_dir)) >= 6:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the sweep finished before it could be killed"
    assert not (run_dir / "summary.json").exists()
    before = _cache_files(run_dir)
    assert before
    # a torn record line, as a kill during a write leaves it
    with (run_dir / "records.jsonl").open("ab") as fh:
        fh.write(b'{"version": 2, "cell": {"dataset": "local", "compr')

    # 3. rerun the same command: it continues
    res = subprocess.run(_cmd(cfg, runs), env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert _strip(summary["rows"]) == _strip(ref_summary["rows"])
    records = read_records(run_dir)
    keys = [(r.cell_key, r.example_id) for r in records]
    assert len(keys) == len(set(keys)) == 3 * len(ROWS)
    ref_records = {(r.cell_key, r.example_id): r for r in read_records(tmp_path / "ref" / "resume")}
    for r in records:
        ref_r = ref_records[(r.cell_key, r.example_id)]
        assert dataclasses.replace(r, wall_s=0.0) == dataclasses.replace(ref_r, wall_s=0.0)
    # cached work was not redone: every cache file from before the kill is the same file (same inode)
    after = _cache_files(run_dir)
    assert all(after.get(p) == ino for p, ino in before.items())
    assert "cache:" in res.stderr and "hits" in res.stderr

    # 4. a third run does nothing: no model load, no new record
    third = subprocess.run(_cmd(cfg, runs), env=_env(), capture_output=True, text=True, timeout=600)
    assert third.returncode == 0
    assert "loading model" not in third.stderr and "0 records written" in third.stderr
    assert len(read_records(run_dir)) == 3 * len(ROWS)
