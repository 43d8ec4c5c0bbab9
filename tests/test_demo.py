"""The demo on the real SmolLM2-135M-Instruct (slow): `compressbench demo --limit 3` end to end."""

from __future__ import annotations

import json
import math

import pytest

from compressbench.records import read_records


@pytest.mark.slow
def test_demo_with_limit_on_smollm2(demo_run):
    res, run_dir = demo_run  # `compressbench demo --limit 3` in a subprocess (tests/conftest.py)
    assert str(run_dir) in res.stdout
    for name in ("smol", "identity", "empty", "truncate:48"):
        assert name in res.stdout
    rows = {r["compressor"]: r for r in json.loads((run_dir / "summary.json").read_text())["rows"]}
    assert set(rows) == {"smol", "identity", "empty", "truncate:48"}
    for r in rows.values():
        assert r["n"] == 3 and r["n_samples"] == 2 and r["predictor"] == "smol"
        assert r["ceiling_bits"] == pytest.approx(math.log2(3))
    # the empty compression carries nothing; the full context identifies its example
    assert rows["empty"]["mi_bits_raw"] == 0.0
    assert rows["identity"]["mi_bits"] > 0.9 * math.log2(3)
    assert rows["identity"]["mi_bits"] > rows["truncate:48"]["mi_bits"] - 1e-9 or rows["truncate:48"]["n_errors"]
    assert rows["smol"]["tokens_compressor_completion"] > 0 and rows["smol"]["flops_compressor"] > 0
    records = read_records(run_dir)
    assert len(records) == 4 * 3
    smol = [r for r in records if r.cell.compressor == "smol" and r.error is None]
    assert smol and all(len(r.compressions) == 2 and all(r.compressions) for r in smol)
    # the scorer counted every truncate:48 compression as at most 48 tokens
    assert all(max(r.compression_n_tokens) <= 48 for r in records if r.cell.compressor == "truncate:48")
