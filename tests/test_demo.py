"""The default offline demo on the real models (slow; one shared run, tests/conftest.py
``demo_run``): the issue's "Done when" conditions, checked on the Findings computed from its records
and on what `compressbench demo` printed."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from compressbench.analysis.findings import run_findings
from compressbench.engine.records import current_records, read_records

pytestmark = pytest.mark.slow

LADDER = ("keep:1", "keep:2", "keep:3")


@pytest.fixture(scope="module")
def demo_findings(demo_run):
    _, run_dir = demo_run
    return {f.predictor: f for f in run_findings(run_dir, n_boot=1000)}


def _rows(run_dir):
    return json.loads((run_dir / "summary.json").read_text())["rows"]


def test_demo_prints_findings_with_two_real_compressor_sizes(demo_run, demo_findings):
    res, run_dir = demo_run
    out = res.stdout
    assert str(run_dir) in out and "Findings (computed from this run" in out
    assert "Spearman rho(MI, accuracy) over the 6 non-empty cells" in out
    assert "Rate-distortion fit" in out and "Pareto front" in out and "oracle ladder keep:1, keep:2, keep:3" in out
    f = demo_findings["smol"]
    assert [c for c, _ in f.model_sizes] == ["smol", "gemma"]  # two real sizes, smallest first
    (_, p_smol), (_, p_gemma) = f.model_sizes
    assert 134e6 < p_smol < 135e6 and 267e6 < p_gemma < 269e6
    assert "smol (135M)" in out and "gemma (268M)" in out
    # the Findings printed are the ones computed from the records now (not canned text)
    assert f"{f.identity_minus_empty:+.2f} accuracy over no context" in out


def test_identity_beats_empty_and_empty_is_at_chance(demo_findings):
    for pred, f in demo_findings.items():
        assert f.chance == 0.5
        assert f.identity_minus_empty >= 0.4, (pred, f.identity_minus_empty)
        assert abs(f.empty_minus_chance) <= 0.15, (pred, f.empty_minus_chance)


def test_mi_and_accuracy_rise_along_the_keep_ladder_below_the_ceiling(demo_run, demo_findings):
    _, run_dir = demo_run
    for pred, f in demo_findings.items():
        assert f.ladder == LADDER
        assert f.ladder_mi_rises and f.ladder_accuracy_rises, pred
        by = f.by_name()
        assert f.ceiling_bits == pytest.approx(5.0)  # N = 32
        for k, name in enumerate(LADDER, 1):
            assert by[name].retained_bits == k  # k slots of 1 bit kept verbatim
            assert by[name].mi_bits < f.ceiling_bits - 1  # off the log2 N ceiling
        for name in ("smol", "gemma"):
            assert by[name].mi_bits < f.ceiling_bits and by[name].mi_ci_bits[1] < f.ceiling_bits
    # retained bits per cell is the mean over examples of the records' per-sample values
    recs = current_records(read_records(run_dir))
    for row in _rows(run_dir):
        mine = [r for r in recs if r.cell_key == row["cell_key"]]
        assert row["retained_bits"] == pytest.approx(np.mean([np.mean(r.retained_bits) for r in mine]))


def test_spearman_between_mi_and_accuracy_is_reported_with_its_ci(demo_run, demo_findings):
    from scipy import stats

    _, run_dir = demo_run
    rows = _rows(run_dir)
    for pred, f in demo_findings.items():
        cells = [r for r in rows if r["predictor"] == pred and r["compressor"] != "empty"]
        assert f.spearman_n == len(cells) == 6 and not f.spearman_note
        rho = stats.spearmanr([r["mi_bits"] for r in cells], [r["accuracy"] for r in cells]).statistic
        assert f.spearman_rho == pytest.approx(rho)
        lo, hi = f.spearman_ci
        assert math.isfinite(lo) and math.isfinite(hi) and lo <= hi


def test_records_say_how_each_model_was_prompted(demo_run):
    _, run_dir = demo_run
    recs = current_records(read_records(run_dir))
    assert len(recs) == 7 * 2 * 32  # compressors x predictors x contexts
    for r in recs:
        assert r.error is None and r.cell.predictor_mode == "loglik"
        assert r.prompt_formats["predictor"] == "completion"  # loglik_prompt_format: completion (lm-eval's default)
        if r.cell.compressor in ("smol", "gemma"):
            assert r.prompt_formats["compressor"] == {"smol": "chat", "gemma": "completion"}[r.cell.compressor]
            assert all(r.compressions)


def test_demo_prints_usable_bits_signals_and_the_router(demo_run, demo_findings):
    """Issue 18: usable bits about the answer per compressor (0 for empty, highest for identity),
    Spearman rho(usable bits, accuracy) over the non-empty cells with a CI above 0, per-signal
    AUROCs and the router's held-out line beside the best fixed compressor."""
    res, run_dir = demo_run
    out = res.stdout
    assert "usable bits (answer)" in out and "Spearman rho(usable bits, accuracy) over the 6 non-empty cells" in out
    assert "Per-example signals: AUROC" in out and "Router on predictor confidence" in out
    for pred, f in demo_findings.items():
        by = f.by_name()
        assert by["empty"].usable_bits == 0.0
        assert max(by, key=lambda c: by[c].usable_bits) == "identity", pred
        assert f.usable_rho_n == 6 and f.usable_rho_ci[0] > 0, (pred, f.usable_rho, f.usable_rho_ci)
        assert {c for c in by if by[c].aurocs} >= {"smol", "gemma"}
        assert {h["signal"] for h in f.router} == {"confidence", "pointwise_mi_bits"}
        assert {h["budget_compressor"] for h in f.router} == {"gemma"}  # the most accurate model compressor
    # the empty compression was scored once per predictor and example: the same scores in every cell
    recs = current_records(read_records(run_dir))
    empty = {}
    for r in recs:
        assert r.pvi_bits is not None and r.loglik_empty is not None
        key = (r.cell.predictor, r.example_id)
        assert empty.setdefault(key, r.loglik_empty["options"]) == r.loglik_empty["options"]
