"""Usable information about the answer (PVI against the empty compression): the formula by hand
from option log-probs, and the sweep's empty-compression pass (scored once per predictor and
example, also when `empty` is not a configured compressor), into records and summary."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from compressbench.backends import load_backend
from compressbench.core.errors import UsageError
from compressbench.core.prompts import load_prompt
from compressbench.core.stats import bootstrap_mean_ci
from compressbench.core.types import Example
from compressbench.engine.config import config_from_dict
from compressbench.engine.records import read_records
from compressbench.engine.sweep import run_sweep
from compressbench.measure.predict_loglik import confidence, gold_surprisal_bits, loglik_prompt, option_probs, predict_loglik, pvi_bits


def _pred(*lls: float) -> dict:
    return {"options": [{"option": f"o{k}", "logprob_nats": v} for k, v in enumerate(lls)]}


def test_pvi_by_hand_from_option_log_probs():
    z, empty = _pred(-1.0, -2.0, -0.5), _pred(-1.5, -1.5, -1.5)
    # q(B | z) = e^-2 / (e^-1 + e^-2 + e^-0.5); q(B | empty) = 1/3 (uniform)
    q_b = math.exp(-2.0) / (math.exp(-1.0) + math.exp(-2.0) + math.exp(-0.5))
    assert pvi_bits(z, empty, ["B"]) == pytest.approx(math.log2(q_b) - math.log2(1 / 3))
    q_c = math.exp(-0.5) / (math.exp(-1.0) + math.exp(-2.0) + math.exp(-0.5))
    assert pvi_bits(z, empty, ["C"]) == pytest.approx(math.log2(q_c / (1 / 3)))
    assert pvi_bits(z, empty, ["C"]) > 0 > pvi_bits(z, empty, ["B"])
    # two gold letters: the probability of answering either
    assert pvi_bits(z, empty, ["A", "C"]) == pytest.approx(math.log2(1 - q_b) - math.log2(2 / 3))
    # the compression that is the empty one carries 0 bits; the bound -log2 q(a*|empty) = log2 3 here
    assert pvi_bits(empty, empty, ["A"]) == 0.0
    sure = _pred(0.0, -60.0, -60.0)
    assert pvi_bits(sure, empty, ["A"]) == pytest.approx(math.log2(3), abs=1e-12)
    assert gold_surprisal_bits(empty, ["A"]) == pytest.approx(math.log2(3))
    assert confidence(z) == pytest.approx(q_c)
    assert option_probs(z).sum() == pytest.approx(1.0)


def test_pvi_of_an_open_question_is_the_reference_log_prob_gain_in_bits():
    z = {"options": [], "reference_logprob_nats": -2.0}
    empty = {"options": [], "reference_logprob_nats": -5.0}
    assert pvi_bits(z, empty, []) == pytest.approx(3.0 / math.log(2))
    assert confidence(z) is None
    assert pvi_bits({"options": []}, empty, []) is None


def test_pvi_refuses_mismatched_options():
    with pytest.raises(UsageError, match="same example"):
        pvi_bits(_pred(-1.0, -2.0), _pred(-1.0, -2.0, -3.0), ["A"])


ROWS = [
    {"id": "a", "context": "Ada lives in Paris and keeps three cats.", "question": "Where does Ada live?",
     "options": ["Paris", "Rome", "Oslo"], "answers": ["A"]},
    {"id": "b", "context": "Bob drives a red bus in Rome every day.", "question": "What does Bob drive?",
     "options": ["a taxi", "a bus", "a boat"], "answers": ["B"]},
    {"id": "c", "context": "Cy grows green tomatoes near Oslo.", "question": "What does Cy grow?",
     "options": ["apples", "roses", "tomatoes"], "answers": ["C"]},
]


class CountingFactory:
    """load_backend whose backends record the prefix of every score_matrix call."""

    def __init__(self):
        self.prefixes: list[str] = []
        self.backend = None

    def __call__(self, kind, model, **options):
        backend = load_backend(kind, model, **options)
        inner = backend.score_matrix

        def score_matrix(prefixes, continuations):
            self.prefixes.extend(prefixes)
            return inner(prefixes, continuations)

        backend.score_matrix = score_matrix
        self.backend = backend
        return backend


def _config(model_dir: Path, data: Path, name: str, compressors: list[str]):
    return config_from_dict({
        "name": name, "models": {"tiny": {"backend": "hf", "model": str(model_dir), "options": {"threads": 1}}},
        "compressors": compressors, "predictors": ["tiny"], "scorer": "tiny", "predictor_mode": "loglik",
        "loglik_prompt_format": "completion",
        "datasets": [{"kind": "jsonl", "path": str(data), "name": "local"}], "samples": 2,
        "temperatures": [0.8], "max_new_tokens": {"compressor": 8, "predictor": 4},
        "batch_size": {"compressor": 2, "predictor": 3}, "max_error_rate": 1.0})


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("usable") / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    return path


def _examples() -> list[Example]:
    return [Example(id=r["id"], context=r["context"], question=r["question"], options=tuple(r["options"]),
                    answers=tuple(r["answers"])) for r in ROWS]


@pytest.mark.parametrize("compressors", [["tiny", "identity", "truncate:4"], ["tiny", "identity", "empty"]],
                         ids=["empty-not-configured", "empty-configured"])
def test_the_empty_compression_is_scored_once_per_example_and_gives_pvi(tiny_llama_dir, data, tmp_path, compressors):
    factory = CountingFactory()
    result = run_sweep(_config(tiny_llama_dir, data, "usable", compressors), tmp_path / "runs",
                       backend_factory=factory, progress=False)
    backend = factory.backend
    p = load_prompt("predict_loglik")
    exs = _examples()
    empty_prefix = {loglik_prompt(backend, ex, "", prompt=p, prompt_format="completion")[0] for ex in exs}
    # one empty-compression scoring per example for the whole sweep (three groups, one predictor)
    assert sorted(x for x in factory.prefixes if x in empty_prefix) == sorted(empty_prefix)
    expected_empty = {ex.id: predict_loglik(backend, ex, "", prompt=p, prompt_format="completion") for ex in exs}
    recs = read_records(result.run_dir)
    assert {r.cell.compressor for r in recs} == set(compressors)
    for r in recs:
        assert r.error is None
        want = [o.logprob_nats for o in expected_empty[r.example_id].options]
        assert [o["logprob_nats"] for o in r.loglik_empty["options"]] == pytest.approx(want, abs=1e-5)
        # PVI by hand from the records' option log-probs: mean over the 2 samples
        q0 = np.exp(want) / np.exp(want).sum()
        gold = "ABC".index(r.gold[0])
        per_sample = []
        for s in r.loglik:
            ll = np.array([o["logprob_nats"] for o in s["options"]])
            q = np.exp(ll - ll.max()) / np.exp(ll - ll.max()).sum()
            per_sample.append(math.log2(q[gold]) - math.log2(q0[gold]))
        assert r.pvi_bits == pytest.approx(np.mean(per_sample), abs=1e-6)
        if r.cell.compressor == "empty":
            assert r.pvi_bits == 0.0
        assert 0 < r.confidence <= 1
    surprisal = {}  # -log2 q(gold | empty) per example, by hand from the independent empty scoring
    for ex in exs:
        ll = np.array([o.logprob_nats for o in expected_empty[ex.id].options])
        surprisal[ex.id] = -math.log2(np.exp(ll)[ex.options.index(ex.options["ABC".index(ex.answers[0])])]
                                      / np.exp(ll).sum())
    for row in result.rows:
        mine = [r.pvi_bits for r in recs if r.cell_key == row["cell_key"]]
        mean, lo, hi = bootstrap_mean_ci(mine)
        assert row["usable_bits"] == pytest.approx(mean)
        assert row["usable_bound_bits"] == pytest.approx(math.log2(3))
        assert row["usable_ceiling_bits"] == pytest.approx(np.mean(list(surprisal.values())), abs=1e-5)
        assert all(r.pvi_bits <= surprisal[r.example_id] + 1e-9 for r in recs if r.cell_key == row["cell_key"])
        if row["compressor"] == "empty":
            assert row["usable_bits"] == 0.0
        else:
            assert row["usable_bits_ci_low"] == pytest.approx(lo) and row["usable_bits_ci_high"] == pytest.approx(hi)
    # the empty pass is measurement, not the cell's cost: predictor calls = one per compression sample
    for r in recs:
        assert r.usage["predictor"].n_calls == 2
