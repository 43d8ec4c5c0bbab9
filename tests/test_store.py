"""Run store: append-only records with torn-line repair, atomic summaries, content-addressed cache."""

from __future__ import annotations

import json

import numpy as np
import pytest

from compressbench.core.errors import ConfigError, DataError
from compressbench.core.tables import format_summary_table
from compressbench.engine.store import (
    Cache,
    RunStore,
    cache_key,
    read_jsonl,
    read_summary,
    repair_records,
)


def test_torn_last_line_is_cut_and_complete_lines_kept(tmp_path):
    store = RunStore(tmp_path / "run")
    store.root.mkdir()
    with store.writer() as w:
        assert w.append([{"cell_key": "c", "example_id": "1"}, {"cell_key": "c", "example_id": "2"}]) == 2
    good = store.records_path.read_bytes()
    with store.records_path.open("ab") as fh:
        fh.write(b'{"cell_key": "c", "example_id": "3", "compre')  # killed mid-write
    assert [r["example_id"] for r in read_jsonl(store.records_path)] == ["1", "2"]
    store.repair()
    assert store.records_path.read_bytes() == good
    # a complete-looking but invalid last line (newline written, JSON cut) is cut too
    with store.records_path.open("ab") as fh:
        fh.write(b'{"cell_key": \n')
    assert repair_records(store.records_path) == len(b'{"cell_key": \n')
    assert repair_records(store.records_path) == 0
    with store.writer() as w:
        w.append([{"cell_key": "c", "example_id": "3"}])
    assert [r["example_id"] for r in read_jsonl(store.records_path)] == ["1", "2", "3"]


def test_cache_roundtrip_and_keys(tmp_path):
    cache = Cache(tmp_path)
    k1 = cache_key({"model": "a", "params": {"seed": 0, "n": 2}})
    assert k1 == cache_key({"params": {"n": 2, "seed": 0}, "model": "a"})  # key order does not matter
    assert k1 != cache_key({"model": "a", "params": {"seed": 1, "n": 2}})
    assert cache.get_json(k1) is None and cache.misses == 1
    cache.put_json(k1, {"texts": ["x"]})
    assert cache.get_json(k1) == {"texts": ["x"]} and cache.hits == 1
    arr = np.arange(12, dtype=float).reshape(2, 3, 2)
    cache.put_array(k1, arr)
    np.testing.assert_array_equal(cache.get_array(k1), arr)
    assert not list(tmp_path.rglob("*.tmp"))


def test_summary_files_and_table(tmp_path):
    store = RunStore(tmp_path / "run")
    store.prepare("name: x\n")
    rows = [{"dataset": "d", "compressor": "identity", "predictor": "p", "prompt": "query", "n": 3,
             "n_errors": 0, "accuracy": 2 / 3, "accuracy_ci_low": 0.2, "accuracy_ci_high": 0.94,
             "mi_bits": 1.5, "mi_ci_low_bits": float("nan"), "ceiling_bits": 1.585}]
    cols = ["dataset", "compressor", "predictor", "prompt", "n", "n_errors", "accuracy", "accuracy_ci_low",
            "accuracy_ci_high", "mi_bits", "mi_ci_low_bits", "ceiling_bits"]
    store.write_summary(rows, cols)
    data = read_summary(store.root)
    assert data["bits_note"] == "bits are log base 2"
    assert data["rows"][0]["mi_ci_low_bits"] is None  # NaN -> null in JSON
    assert (store.root / "summary.csv").read_text().splitlines()[1].startswith("d,identity,p,query,3,0,0.666")
    table = format_summary_table(data["rows"])
    assert "identity" in table and "0.667 [0.200, 0.940]" in table and "1.50" in table and "unscored" in table


def test_run_dir_refuses_another_config(tmp_path):
    store = RunStore(tmp_path / "run")
    store.prepare("name: x\nsamples: 1\n")
    store.prepare("name: x\nsamples: 1\n")
    # an attempt that wrote no record yet (e.g. it failed loading a model) takes a corrected config
    store.prepare("name: x\nsamples: 3\n")
    assert (store.root / "config.yaml").read_text() == "name: x\nsamples: 3\n"
    with store.writer() as w:
        w.append([{"cell_key": "c", "example_id": "1"}])
    with pytest.raises(ConfigError, match="different config"):
        store.prepare("name: x\nsamples: 2\n")
    assert (store.root / "config.yaml").read_text() == "name: x\nsamples: 3\n"


def test_read_summary_errors(tmp_path):
    with pytest.raises(ConfigError, match="not a run directory"):
        read_summary(tmp_path / "missing")
    with pytest.raises(ConfigError, match="no summary.json"):
        read_summary(tmp_path)
    (tmp_path / "summary.json").write_text(json.dumps({"x": 1}))
    with pytest.raises(DataError, match=r"summary.json lacks a 'rows' list; is it a compressbench summary\?"):
        read_summary(tmp_path)
    (tmp_path / "summary.json").write_text(json.dumps({"rows": {"a": 1}}))  # rows not a list
    with pytest.raises(DataError, match="lacks a 'rows' list"):
        read_summary(tmp_path)
    (tmp_path / "summary.json").write_text('{"rows": [')  # cut off mid-write
    with pytest.raises(DataError, match="is not valid JSON"):
        read_summary(tmp_path)
