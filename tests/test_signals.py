"""Per-example signals judged by AUROC: the Mann-Whitney implementation against scikit-learn's
roc_auc_score and a hand count (ties included), its bootstrap CI, and the per-cell table from records."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from compressbench.analysis.signals import auroc, auroc_ci, record_signals, signal_table
from compressbench.engine.records import read_records


def test_auroc_by_hand_count_with_ties():
    # positives 3, 1, 2; negatives 1, 0: pairs (pos > neg) = 2 + 1 + 2 = 5 (3>1, 3>0, 1>0, 2>1, 2>0),
    # ties = 1 (1 == 1): AUROC = (5 + 0.5) / 6
    assert auroc([3, 1, 2, 1, 0], [True, True, True, False, False]) == pytest.approx(5.5 / 6)
    assert auroc([1, 1, 1], [True, False, True]) == 0.5  # all tied: no signal
    assert auroc([0, 1], [True, False]) == 0.0  # higher goes with wrong
    assert math.isnan(auroc([1, 2], [True, True]))  # one class


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_equals_sklearn_on_tied_scores(seed):
    rng = np.random.default_rng(seed)
    y = rng.random(200) < 0.4
    s = rng.integers(0, 6, 200) + y * rng.integers(0, 3, 200)  # integer scores: many ties
    assert auroc(s, y) == pytest.approx(roc_auc_score(y, s))
    res = auroc_ci(s, y, n_boot=500, seed=seed)
    assert res.auroc == pytest.approx(roc_auc_score(y, s))
    assert res.ci_low <= res.auroc <= res.ci_high and res.ci_low > 0.5  # the signal is real here
    assert (res.n_pos, res.n_neg) == (int(y.sum()), int((~y).sum()))
    # each bootstrap resample's AUROC is sklearn's on that resample
    idx = np.random.default_rng(seed).integers(0, 200, size=(500, 200))
    boots = [roc_auc_score(y[i], s[i]) for i in idx]
    assert res.ci_low == pytest.approx(np.quantile(boots, 0.025))
    assert res.ci_high == pytest.approx(np.quantile(boots, 0.975))


def test_auroc_ci_needs_both_classes_and_drops_unknown_scores():
    res = auroc_ci([0.1, 0.2, np.nan], [True, True, False])
    assert math.isnan(res.auroc) and res.note == "one class only (2 correct, 0 wrong)"  # the NaN score dropped


def test_signal_table_from_records_matches_sklearn(tmp_path):
    from decide_fixtures import RIGHT, write_loglik_run

    run = write_loglik_run(tmp_path)
    recs = read_records(run)
    table = signal_table(recs, n_boot=200)
    assert set(table["signal"]) == {"pointwise_mi_bits", "confidence", "compression_tokens", "pvi_bits"}
    assert table[table["signal"] == "pvi_bits"]["oracle"].all() and not table[table["signal"] == "confidence"]["oracle"].any()
    for _, row in table.iterrows():
        mine = [r for r in recs if r.cell.compressor == row["compressor"] and r.cell.predictor == row["predictor"]]
        y = np.array([r.score == 1.0 for r in mine])
        s = np.array([record_signals(r)[row["signal"]] for r in mine])
        assert row["n_correct"] == len(RIGHT[row["compressor"]])
        assert row["auroc"] == pytest.approx(roc_auc_score(y, s))
    # the cheap compressor's confidence separates right from wrong (the fixture's design); elsewhere 0.5
    conf = table[table["signal"] == "confidence"].set_index(["compressor", "predictor"])["auroc"]
    assert conf[("qwen-0.5b", "llama-8b")] == 1.0 and conf[("qwen-3b", "llama-8b")] == 0.5
