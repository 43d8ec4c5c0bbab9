"""The whole pipeline on a tiny random Llama plus the baselines (fast): records, summary, MI checked
against an independent computation, baselines, FLOPs, model loading and a fully cached rerun."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.special import logsumexp

from compressbench.backends import load_backend
from compressbench.engine.config import config_from_dict
from compressbench.core.prompts import load_prompt
from compressbench.engine.records import RoleUsage, read_records
from compressbench.core.stats import accuracy_interval, wilson_interval
from compressbench.engine.sweep import SUMMARY_COLUMNS, run_sweep

ROWS = [
    {"id": "a", "context": "Ada lives in Paris and keeps three cats.", "question": "Where does Ada live?",
     "options": ["Paris", "Rome", "Oslo"], "answers": ["A"]},
    {"id": "b", "context": "Bob drives a red bus in Rome every day.", "question": "What does Bob drive?",
     "options": ["a taxi", "a bus", "a boat"], "answers": ["B"]},
    {"id": "c", "context": "Cy grows green tomatoes near Oslo.", "question": "What does Cy grow?",
     "options": ["apples", "roses", "tomatoes"], "answers": ["C"]},
    {"id": "d", "context": "Dee sings old songs at the harbour.", "question": "What does Dee do?",
     "options": ["sings", "paints", "swims"], "answers": ["A"]},
]


def write_rows(path: Path, rows=ROWS) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def tiny_config(model_dir: Path, data: Path, **over):
    raw = {
        "name": "tiny",
        "models": {"tiny": {"backend": "hf", "model": str(model_dir), "options": {"threads": 1}}},
        "compressors": ["tiny", "identity", "empty", "truncate:6"],
        "predictors": ["tiny"],
        "scorer": "tiny",
        "datasets": [{"kind": "jsonl", "path": str(data), "name": "local"}],
        "samples": 2,
        "temperatures": [0.8],
        "max_new_tokens": {"compressor": 10, "predictor": 6},
        "batch_size": {"compressor": 2, "predictor": 3},
        "max_error_rate": 1.0,
    }
    raw.update(over)
    return config_from_dict(raw)


class CountingFactory:
    """load_backend, counting how often each model is built."""

    def __init__(self):
        self.calls: list[str] = []

    def __call__(self, kind, model, **options):
        self.calls.append(model)
        return load_backend(kind, model, **options)


@pytest.fixture(scope="module")
def tiny_run(tiny_llama_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    data = write_rows(root / "data.jsonl")
    cfg = tiny_config(tiny_llama_dir, data)
    factory = CountingFactory()
    result = run_sweep(cfg, root / "runs", backend_factory=factory, progress=False)
    return cfg, result, factory, root


def _rows_by_compressor(result):
    return {r["compressor"]: r for r in result.rows}


def test_records_and_summary_follow_the_run_format(tiny_run):
    cfg, result, factory, _ = tiny_run
    run_dir = result.run_dir
    for name in ("config.yaml", "manifest.json", "records.jsonl", "summary.csv", "summary.json"):
        assert (run_dir / name).is_file(), name
    records = read_records(run_dir)
    assert len(records) == 4 * len(ROWS)  # 4 compressors x 1 predictor x 4 examples
    keys = [(r.cell_key, r.example_id) for r in records]
    assert len(set(keys)) == len(keys)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["bits_note"] == "bits are log base 2"
    assert [list(r) for r in summary["rows"]] == [list(SUMMARY_COLUMNS)] * 4
    assert (run_dir / "summary.csv").read_text().splitlines()[0] == ",".join(SUMMARY_COLUMNS)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["models"]["tiny"]["info"]["n_params"] > 0
    assert manifest["prompt_ids"]["query"] == load_prompt("compress_query").id
    for r in records:
        assert len(r.compressions) == cfg.samples
        assert r.cell.temperature == 0.8 and r.cell.seed == 0
        if r.error is None:
            assert len(r.predictions) == cfg.samples and len(r.answers) == cfg.samples
            # an unparseable answer counts as wrong (0.0), is flagged unscored and says why
            assert r.score is not None and 0.0 <= r.score <= 1.0
            assert r.unscored == (r.score_error is not None)
            if r.unscored:
                assert r.score == 0.0 and r.score_error.startswith("counted wrong")
    for row in result.rows:
        mine = [r for r in records if r.cell.compressor == row["compressor"]]
        ok = [r for r in mine if r.error is None]
        assert row["n"] == len(ROWS) and row["n_samples"] == 2 and row["n_errors"] == len(mine) - len(ok)
        assert row["n_unscored"] == sum(r.unscored for r in ok)
        # accuracy over every answered example, unparseable ones counted wrong
        if ok:
            assert row["accuracy"] == pytest.approx(sum(r.score for r in ok) / len(ok))


def test_each_model_is_loaded_once(tiny_run):
    _, result, factory, _ = tiny_run
    assert len(factory.calls) == 1
    assert result.model_loads == {"tiny": 1}


def test_baselines(tiny_run, tiny_llama):
    _, result, _, _ = tiny_run
    records = read_records(result.run_dir)
    contexts = {r["id"]: r["context"] for r in ROWS}
    rows = _rows_by_compressor(result)
    for r in records:
        comp, ctx = r.cell.compressor, contexts[r.example_id]
        if comp == "identity":
            assert r.compressions == (ctx, ctx)
        elif comp == "empty":
            assert r.compressions == ("", "") and r.compression_n_tokens == (0, 0)
        elif comp == "truncate:6":
            z = r.compressions[0]
            assert ctx.startswith(z) and tiny_llama.count_tokens([z])[0] <= 6
            # the longest such word prefix: one more word no longer fits
            nxt = ctx[: len(z) + 1 + len(ctx[len(z):].split()[0])] if z != ctx else ctx
            assert z == ctx or tiny_llama.count_tokens([nxt.strip()])[0] > 6
        if comp in ("identity", "empty", "truncate:6"):
            assert r.usage["compressor"] == RoleUsage(0, 0, 0)
            assert r.flops["compressor"] == 0.0
    # log p of the empty sequence is 0 under every context: MI exactly 0
    assert rows["empty"]["mi_bits_raw"] == 0.0 and rows["empty"]["bits_per_token"] is None
    assert rows["empty"]["ceiling_bits"] == pytest.approx(math.log2(len(ROWS)))


def test_identity_mi_matches_an_independent_computation(tiny_run, tiny_llama):
    """MI of the identity baseline from pairwise backend.score calls and the formula by hand."""
    _, result, _, _ = tiny_run
    prompt = load_prompt("mi_score")
    prefixes = [prompt.render_text(context=r["context"], question=r["question"]) for r in ROWS]
    n = len(ROWS)
    lp = np.empty((n, n))  # lp[i, l] = log p(x_i | prefix_l)
    for i in range(n):
        for l_ in range(n):
            lp[i, l_] = tiny_llama.score([prefixes[l_]], [ROWS[i]["context"]])[0].total_nats
    pointwise = np.array([lp[i, i] - logsumexp(lp[i]) + math.log(n) for i in range(n)]) / math.log(2)
    row = _rows_by_compressor(result)["identity"]
    assert row["mi_bits_raw"] == pytest.approx(pointwise.mean(), abs=1e-3)
    records = [r for r in read_records(result.run_dir) if r.cell.compressor == "identity"]
    for r in records:
        i = [x["id"] for x in ROWS].index(r.example_id)
        assert r.pointwise_mi_bits == pytest.approx([pointwise[i]] * 2, abs=1e-3)
    n_tok = [tiny_llama.count_tokens([x["context"]])[0] for x in ROWS]
    assert row["mean_compression_tokens"] == pytest.approx(np.mean(n_tok))
    assert row["bits_per_token"] == pytest.approx(max(0.0, pointwise.mean()) / np.mean(n_tok), abs=1e-4)


def test_tokens_and_flops(tiny_run, tiny_llama):
    """Record FLOPs by hand: per call of P prompt and G generated tokens, 2*N*(P+G) plus, per layer,
    Q K^T and A V at 2*t*d_attn for every position t (the tiny Llama: 2 layers, d_attn 64)."""
    _, result, _, _ = tiny_run
    n_params = tiny_llama.info().n_params
    layers, d_attn = 2, 64

    def by_hand(u):
        k = u.n_calls
        p, g = u.n_prompt_tokens / k, u.n_completion_tokens / k
        attn = sum(4 * layers * t * d_attn for t in range(1, int(p) + 1)) if p == int(p) else None
        if attn is None or g != int(g):  # uneven calls: the closed form on the average call
            return None
        attn += sum(4 * layers * t * d_attn for t in range(int(p) + 1, int(p + g) + 1))
        return k * (2.0 * n_params * (p + g) + attn)

    records = [r for r in read_records(result.run_dir) if r.cell.compressor == "tiny" and r.error is None]
    assert records
    checked = 0
    for r in records:
        for role in ("compressor", "predictor"):
            expected = by_hand(r.usage[role])
            if expected is not None:
                assert r.flops[role] == pytest.approx(expected, rel=1e-12)
                checked += 1
        assert r.usage["predictor"].n_calls == 2
    assert checked
    row = _rows_by_compressor(result)["tiny"]
    cell = [r for r in read_records(result.run_dir) if r.cell.compressor == "tiny"]
    # the summary sums its records; one record without usage (a failed example) makes the sum unknown
    usages = [r.usage.get("compressor") for r in cell]
    flops = [r.flops.get("compressor") for r in cell]
    assert all(u is not None for u, r in zip(usages, cell) if r.error is None)
    if any(u is None for u in usages):
        assert row["tokens_compressor_completion"] is None and row["flops_compressor"] is None
    else:
        assert row["tokens_compressor_completion"] == sum(u.n_completion_tokens for u in usages)
        assert row["flops_compressor"] == pytest.approx(sum(flops), rel=1e-12)


def test_rerun_is_fully_cached_and_identical(tiny_run):
    cfg, result, _, root = tiny_run
    factory = CountingFactory()
    again = run_sweep(cfg, root / "runs", backend_factory=factory, progress=False)
    assert factory.calls == [] and again.n_records_written == 0 and again.cache_misses == 0
    strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]  # noqa: E731
    assert strip(again.rows) == strip(result.rows)


def test_accuracy_intervals():
    # Wilson 95% for 8/10 (hand computation with z = 1.959964)
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4901624, abs=1e-6) and hi == pytest.approx(0.9433178, abs=1e-6)
    assert accuracy_interval([1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0])[0] == pytest.approx(
        wilson_interval(7, 10)[0])
    assert accuracy_interval([]) == (None, None)
    # Scores that are not all 0/1: the percentile bootstrap of the mean. With 20 scores of 0.25 and 20
    # of 0.75 a resample's mean is 0.75 - k / 80 with k ~ Binomial(40, 1/2) (the number of 0.25s
    # drawn), so the exact bootstrap quantiles are binomial quantiles; 2,000 seeded resamples land
    # within a quarter of one atom (0.0125) of them, and a 90% interval would be one atom narrower.
    from scipy.stats import binom

    scores = [0.25] * 20 + [0.75] * 20
    lo, hi = accuracy_interval(scores)
    k = np.arange(41)
    means, pk = 0.75 - k / 80, binom.pmf(k, 40, 0.5)
    order = np.argsort(means)
    cdf = np.cumsum(pk[order])
    exact = [means[order][np.searchsorted(cdf, a)] for a in (0.025, 0.975)]
    assert lo == pytest.approx(exact[0], abs=0.003) and hi == pytest.approx(exact[1], abs=0.003)
    assert (lo, hi) == accuracy_interval(scores)  # seeded: the same interval again


def test_cache_identity_ignores_scheduling_options(tiny_llama_dir, tmp_path):
    """Batch budgets and threads change how the work is scheduled, not the outputs: the model's cache
    identity (part of every cache key) is the same with or without them; dtype is not such an option."""
    from compressbench.engine.scheduler import LocalExecutor, ModelRegistry

    data = write_rows(tmp_path / "data.jsonl")

    def identity(options):
        cfg = tiny_config(tiny_llama_dir, data)
        cfg = config_from_dict({**cfg.to_dict(), "models": {"tiny": {"backend": "hf", "model": str(tiny_llama_dir),
                                                                      "options": options}}})
        return ModelRegistry(cfg, LocalExecutor(cfg.models, load_backend), {"tiny": {"revision": "r1"}}).identity("tiny")

    plain = identity({})
    assert identity({"threads": 1, "max_batch_tokens": 512, "prefix_batching": "off"}) == plain
    assert identity({"dtype": "bfloat16"}) != plain
