"""Sweep paths no other test runs, end to end against the toy OpenAI-compatible server
(tests/servers/toy_openai.py: a real HTTP server whose byte-level model is exactly computable):

- the OpenAI backend as compressor, predictor and MI scorer, with the pointwise MI of every record
  checked against log-probabilities computed directly from the toy model;
- the reference-NLL stage (examples with a reference answer and no gold answers);
- the judge stage (a served judge model grading free-form answers);
- report and plots on a grid with two values on every axis (datasets, compressors, predictors,
  prompts, temperatures, seeds).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.special import logsumexp
from servers.toy_openai import ToyConfig, ToyModel, ToyServer

from compressbench.engine.config import config_from_dict
from compressbench.measure.metrics import predict_values
from compressbench.core.prompts import load_prompt
from compressbench.engine.records import CELL_AXES, read_records
from compressbench.engine.sweep import run_sweep

OPEN = [
    {"id": "o1", "context": "Ada lives in Paris.", "question": "Where does Ada live?", "answers": ["Paris"]},
    {"id": "o2", "context": "Bob is 41 years old.", "question": "How old is Bob?", "answers": ["41"]},
]
MC = [{"id": "m1", "context": "Cy grows tomatoes.", "question": "What does Cy grow?",
       "options": ["apples", "tomatoes"], "answers": ["B"]}]
REF = [{"id": "r1", "context": "Dee sings at the harbour.", "question": "Describe Dee.",
        "reference": "Dee is a singer."}]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _toy_models(url: str, *names: str, paid: bool = False) -> dict:
    return {n: {"backend": "openai", "model": "toy", "paid_api": paid, "options": {"base_url": url}} for n in names}


def _toy_nats(prefix: str, continuation: str) -> float:
    """log p(continuation | prefix) in nats straight from the toy model (BOS + UTF-8 bytes)."""
    model = ToyModel()
    p_ids = model.tokenize(prefix, add_special_tokens=True)
    c_ids = model.tokenize(continuation, add_special_tokens=False)
    lps = model.prompt_logprobs(p_ids + c_ids)
    return float(sum(lps[len(p_ids):]))


# ----------------------------------------------------------------------------- scorer, ref NLL, judge


@pytest.fixture(scope="module")
def served_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    data = _write(root / "d.jsonl", OPEN + MC + REF)
    with ToyServer(ToyConfig()) as srv:
        raw = {
            "name": "served", "models": _toy_models(srv.url, "toy", "judge"),
            "compressors": ["identity", "toy"], "predictors": ["toy"], "scorer": "toy", "judge": "judge",
            "datasets": [{"kind": "jsonl", "path": str(data), "name": "local"}],
            "samples": 2, "temperatures": [0.7], "mi_n_boot": 20, "max_error_rate": 1.0,
            "max_new_tokens": {"compressor": 24, "predictor": 12, "judge": 1500},
        }
        result = run_sweep(config_from_dict(raw), root / "runs", progress=False)
        log = list(srv.log)
    return result, log


def test_served_scorer_pointwise_mi_equals_the_toy_model(served_run):
    """Identity compressions scored over HTTP: pointwise MI of every record from the toy model's
    log-probabilities computed here, through the mixture formula written out."""
    result, _ = served_run
    rows = OPEN + MC + REF
    prompt = load_prompt("mi_score")
    prefixes = [prompt.render_text(context=r["context"], question=r["question"]) for r in rows]
    n = len(rows)
    lp = np.array([[_toy_nats(prefixes[l_], rows[i]["context"]) for l_ in range(n)] for i in range(n)])
    pointwise = (np.diag(lp) - logsumexp(lp, axis=1) + math.log(n)) / math.log(2)
    recs = [r for r in read_records(result.run_dir) if r.cell.compressor == "identity"]
    assert len(recs) == n
    for r in recs:
        i = [x["id"] for x in rows].index(r.example_id)
        assert r.pointwise_mi_bits == pytest.approx([pointwise[i]] * 2, abs=1e-6)
    row = next(x for x in result.rows if x["compressor"] == "identity")
    assert row["mi_bits_raw"] == pytest.approx(pointwise.mean(), abs=1e-6)
    assert row["ceiling_bits"] == pytest.approx(math.log2(n))


def test_reference_nll_stage(served_run):
    """A reference-only example: no accuracy, and ref_nll_nats = -log p(reference | predict prompt
    holding the first compression, then "Answer: ") from the toy model."""
    result, _ = served_run
    ex = REF[0]
    from compressbench.core.types import Example

    example = Example(id=ex["id"], context=ex["context"], question=ex["question"], reference=ex["reference"])
    recs = [r for r in read_records(result.run_dir) if r.example_id == "r1"]
    assert {r.cell.compressor for r in recs} == {"identity", "toy"}
    for r in recs:
        assert r.error is None and r.metric == "ref_nll" and r.score is None
        chat = load_prompt("predict").render_chat(**{**predict_values(example, r.compressions[0])})
        prefix = "\n".join(m["content"] for m in chat) + "\nAnswer: "
        assert r.ref_nll_nats == pytest.approx(-_toy_nats(prefix, ex["reference"]), rel=1e-9)
    by_comp = {x["compressor"]: x for x in result.rows}
    ident = next(r for r in recs if r.cell.compressor == "identity")
    assert by_comp["identity"]["mean_ref_nll_nats"] == pytest.approx(ident.ref_nll_nats, rel=1e-12)


def test_judge_stage_grades_free_form_answers(served_run):
    """The served judge sees each free-form example's question, gold and voted answer; its reply (the
    toy echoes the prompt, whose JSON example says "correct": true) is parsed into the score; the
    multiple-choice example is scored by its letter, without the judge."""
    result, log = served_run
    judge_prompt = load_prompt("judge")
    judged = [body for path, body in log
              if path == "/v1/chat/completions" and body["messages"][0]["content"] == judge_prompt.system]
    recs = read_records(result.run_dir)
    open_recs = [r for r in recs if r.example_id in ("o1", "o2")]
    assert len(open_recs) == 4  # 2 compressors x 2 open examples
    from compressbench.core.types import Example

    wants: list[str] = []
    for r in open_recs:
        ex = next(x for x in OPEN if x["id"] == r.example_id)
        example = Example(id=ex["id"], context=ex["context"], question=ex["question"], answers=tuple(ex["answers"]))
        want = judge_prompt.render_chat(question=example.question, gold=" | ".join(example.answers),
                                        prediction=r.voted_answer or "")
        assert any(body["messages"] == want for body in judged), r.example_id
        wants.append(json.dumps(want))
        assert r.metric == "judge" and r.score == 1.0 and not r.unscored
        u = r.usage["judge"]
        assert u.n_calls == 1
        assert u.n_prompt_tokens == sum(len(m["content"].encode("utf-8")) for m in want)  # the toy counts bytes
    # one request per distinct judge chat (an identical chat is answered from the run's cache)
    assert sorted(json.dumps(b["messages"]) for b in judged) == sorted(set(wants))
    mc = [r for r in recs if r.example_id == "m1"]
    assert all(r.metric == "choice" and r.usage["judge"].n_calls == 0 for r in mc)
    assert not any("What does Cy grow?" in body["messages"][-1]["content"] for body in judged)


# ----------------------------------------------------------------------------- a grid, its report and plots


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid")
    d1 = _write(root / "d1.jsonl", OPEN + MC)
    d2 = _write(root / "d2.jsonl", [dict(r, id=r["id"] + "b", context=r["context"] + " Also true.") for r in OPEN + MC])
    prices = root / "prices.yaml"
    prices.write_text(yaml.safe_dump({"models": {"toy": {
        "input_usd_per_mtok": 1.0, "output_usd_per_mtok": 3.0, "as_of": "2026-01-01", "source": "test"}}}))
    with ToyServer(ToyConfig()) as srv:
        raw = {
            "name": "grid", "models": _toy_models(srv.url, "toy", "toy2", paid=True),
            "compressors": ["toy", "identity"], "predictors": ["toy", "toy2"], "scorer": "toy",
            "datasets": [{"kind": "jsonl", "path": str(d1), "name": "one"},
                         {"kind": "jsonl", "path": str(d2), "name": "two"}],
            "prompts": ["query", "agnostic"], "temperatures": [0.5, 1.0], "seeds": [0, 1],
            "samples": 1, "mi_n_boot": 20, "max_error_rate": 1.0,
            "max_new_tokens": {"compressor": 16, "predictor": 8},
        }
        result = run_sweep(config_from_dict(raw), root / "runs", progress=False)
    return result, prices


def test_grid_report_has_every_cell_and_equals_the_records(grid):
    from compressbench.analysis.report import build_report

    result, prices = grid
    report = build_report(result.run_dir, prices=prices, n_boot=50)
    cells = report.cells
    assert len(cells) == 2 ** 6
    for axis in ("dataset", "compressor", "predictor", "prompt", "temperature", "seed"):
        assert cells[axis].nunique() == 2, axis
    records = read_records(result.run_dir)
    assert len(records) == 2 ** 6 * 3
    for _, row in cells.iterrows():
        key = tuple(row[a] for a in CELL_AXES)
        recs = [r for r in records if tuple(getattr(r.cell, a) for a in CELL_AXES) == key]
        assert len(recs) == 3 == row["n"]
        ok = [r for r in recs if r.error is None]
        assert row["accuracy"] == pytest.approx(sum(r.score for r in ok) / len(ok), abs=1e-12)
        # API dollars by hand: $1 / $3 per 1M prompt / completion tokens, compressor + predictor
        usd = sum((u.n_prompt_tokens * 1.0 + u.n_completion_tokens * 3.0) / 1e6
                  for r in recs for role in ("compressor", "predictor") if (u := r.usage.get(role)) is not None)
        assert row["usd_per_query"] == pytest.approx(usd / len(recs), rel=1e-12)


def test_grid_plots_show_the_report(grid, tmp_path):
    pytest.importorskip("matplotlib")
    from compressbench.analysis.plots import PLOT_NAMES, fig_cost_accuracy, plot_report
    from compressbench.analysis.report import build_report

    result, prices = grid
    report = build_report(result.run_dir, prices=prices, n_boot=50)
    res = plot_report(report, tmp_path / "plots", formats=("png",))
    assert set(res.written) | set(res.skipped) == set(PLOT_NAMES)
    assert not set(res.written) & set(res.skipped)
    assert all(why.strip() for why in res.skipped.values())
    assert "cost_accuracy" in res.written
    fig = fig_cost_accuracy(report)
    assert len(fig.axes) >= 2  # a panel per dataset
    cells = report.cells
    for ax, ds in zip(fig.axes, sorted(cells["dataset"].unique())):
        assert ds in ax.get_title()
        plotted = sorted((float(x), float(y)) for ln in ax.get_lines() if ln.get_label().startswith("predictor ")
                         for x, y in zip(ln.get_xdata(), ln.get_ydata()))
        mine = cells[(cells["dataset"] == ds) & ~cells["is_baseline"]]
        want = sorted(zip(mine["usd_per_query"].astype(float), mine["accuracy"].astype(float)))
        np.testing.assert_allclose(np.array(plotted), np.array(want), rtol=1e-12)
