"""The engine's guarantees, end to end on real files and real subprocesses: results never go stale
(an edited dataset row is recomputed and the old record never reported), one writer per run dir
(an OS lock), a failed first attempt can be rerun with a fixed config, report cells = sweep cells
over a grid with two values on every axis, one FLOPs figure in records, summary and report, and
context fitting plus cached-token accounting for a served (HTTP) model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from compressbench.engine.config import config_from_dict
from compressbench.core.errors import ConfigError, DataError
from compressbench.core.errors import RecordVersionError
from compressbench.engine.records import CELL_AXES, current_records, example_hash, read_records
from compressbench.engine.sweep import run_sweep
from compressbench.core.types import Example

ROWS = [
    {"id": "a", "context": "Ada lives in Paris and keeps three cats.", "question": "Where does Ada live?",
     "options": ["Paris", "Rome", "Oslo"], "answers": ["A"]},
    {"id": "b", "context": "Bob drives a red bus in Rome every day.", "question": "What does Bob drive?",
     "options": ["a taxi", "a bus", "a boat"], "answers": ["B"]},
    {"id": "c", "context": "Cy grows green tomatoes near Oslo.", "question": "What does Cy grow?",
     "options": ["apples", "roses", "tomatoes"], "answers": ["C"]},
]


def _write_rows(path: Path, rows=ROWS) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _raw(model_dir, data: Path, **over):
    raw = {
        "name": "eng",
        "models": {"tiny": {"backend": "hf", "model": str(model_dir), "options": {"threads": 1}}},
        "compressors": ["identity", "empty"], "predictors": ["tiny"], "scorer": "tiny",
        "datasets": [{"kind": "jsonl", "path": str(data), "name": "local"}],
        "samples": 2, "temperatures": [0.8], "max_new_tokens": {"compressor": 8, "predictor": 6},
        "max_error_rate": 1.0, "mi_n_boot": 50,
    }
    raw.update(over)
    return raw


def _write_config(path: Path, raw) -> Path:
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def _env():
    return dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                TOKENIZERS_PARALLELISM="false")


def _sweep_cmd(cfg: Path, runs: Path) -> list[str]:
    return [sys.executable, "-m", "compressbench", "--log-level", "info", "sweep", str(cfg), "--runs-dir", str(runs)]


def _run(cmd, timeout=600):
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)


# --------------------------------------------------------------------------- stale results


def test_edited_dataset_row_is_recomputed_and_never_reported(tmp_path, tiny_llama_dir):
    from compressbench.analysis.report import build_report

    data = _write_rows(tmp_path / "d.jsonl")
    cfg = _write_config(tmp_path / "c.yaml", _raw(tiny_llama_dir, data))
    runs = tmp_path / "runs"
    first = _run(_sweep_cmd(cfg, runs))
    assert first.returncode == 0, first.stderr[-2000:]
    assert "6 records written (0 recomputed" in first.stderr
    run_dir = runs / "eng"
    # edit one row: new context and a new gold answer
    edited = [dict(ROWS[0]), ROWS[1], ROWS[2]]
    edited[0].update(context="Ada lives in Oslo and keeps two dogs.", answers=["C"])
    _write_rows(data, edited)
    second = _run(_sweep_cmd(cfg, runs))
    assert second.returncode == 0, second.stderr[-2000:]
    # the dataset's content is part of every cell's identity (its MI tensor changes): all 6 recomputed
    assert "6 records written (6 recomputed" in second.stderr and "6 recomputed" in second.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["records"] == {"written": 6, "recomputed": 6}
    new_hash = example_hash(Example(id="a", context=edited[0]["context"], question=ROWS[0]["question"],
                                    answers=("C",), options=tuple(ROWS[0]["options"])))
    all_recs = read_records(run_dir)
    assert len(all_recs) == 12  # append-only: the stale records stay on disk ...
    current = current_records(all_recs)
    report = build_report(run_dir, n_boot=100)
    # ... but neither the summary nor the report counts them
    assert len(report.cells) == 2 and list(report.cells["n"]) == [3.0, 3.0]
    for rec in [r for r in all_recs if r.cell_key in {row["cell_key"] for row in summary["rows"]}]:
        if rec.example_id == "a":
            assert rec.gold == ("C",) and rec.example_hash == new_hash
            assert rec.compressions[0] in (edited[0]["context"], "")
    stale = [r for r in all_recs if r.example_id == "a" and r.gold == ("A",)]
    assert len(stale) == 2 and not ({r.cell_key for r in stale} & {row["cell_key"] for row in summary["rows"]})
    assert {r.cell_key for r in current} >= {row["cell_key"] for row in summary["rows"]}
    ident = report.cells[report.cells["compressor"] == "identity"].iloc[0]
    fresh = [r for r in all_recs if r.cell_key == next(row["cell_key"] for row in summary["rows"]
                                                        if row["compressor"] == "identity")]
    assert ident["accuracy"] == pytest.approx(sum(r.score for r in fresh) / 3)
    # a third run has nothing to do
    third = _run(_sweep_cmd(cfg, runs))
    assert third.returncode == 0 and "0 records written (0 recomputed" in third.stderr


# --------------------------------------------------------------------------- one writer


def test_two_concurrent_sweeps_one_runs_the_other_exits_2(tmp_path, tiny_llama_dir):
    data = _write_rows(tmp_path / "d.jsonl")
    raw = _raw(tiny_llama_dir, data, compressors=["tiny", "identity"], samples=2,
               max_new_tokens={"compressor": 24, "predictor": 8}, batch_size={"compressor": 1, "predictor": 1})
    cfg = _write_config(tmp_path / "c.yaml", raw)
    runs = tmp_path / "runs"
    lock = runs / "eng" / ".lock"
    first = subprocess.Popen(_sweep_cmd(cfg, runs), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (lock.exists() and lock.read_text().strip()):
        assert first.poll() is None, first.communicate()[1][-2000:]
        time.sleep(0.02)
    second = _run(_sweep_cmd(cfg, runs))
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    assert second.returncode == 2, second.stderr[-2000:]
    assert "in use by another sweep" in second.stderr and f"pid {first.pid}" in second.stderr
    records = read_records(runs / "eng")
    keys = [(r.cell_key, r.example_id) for r in records]
    assert len(keys) == len(set(keys)) == 2 * len(ROWS)
    # the lock died with its holder: the next run proceeds (and has nothing left to do)
    again = _run(_sweep_cmd(cfg, runs))
    assert again.returncode == 0 and "0 records written" in again.stderr
    assert len(read_records(runs / "eng")) == 2 * len(ROWS)


def test_lock_is_released_when_its_holder_is_killed(tmp_path):
    from compressbench.core.errors import RunDirBusy
    from compressbench.engine.store import RunStore

    root = tmp_path / "run"
    code = ("import sys, time; from compressbench.engine.store import RunStore; "
            f"l = RunStore({str(root)!r}).lock(); l.acquire(); print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], env=_env(), stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RunDirBusy, match=f"pid {holder.pid}"):
        RunStore(root).lock().acquire()
    holder.kill()
    holder.wait(timeout=30)
    with RunStore(root).lock():
        assert f"pid {os.getpid()}" in (root / ".lock").read_text()


def test_failed_first_attempt_can_be_rerun_with_a_fixed_config(tmp_path, tiny_llama_dir):
    data = _write_rows(tmp_path / "d.jsonl")
    raw = _raw(tiny_llama_dir, data, compressors=["tiny", "identity"])
    raw["models"]["tiny"]["model"] = str(tmp_path / "no-such-model")  # a typo in the model reference
    bad = _run(_sweep_cmd(_write_config(tmp_path / "bad.yaml", {**raw, "name": "eng"}), tmp_path / "runs"))
    assert bad.returncode == 2 and "does not exist" in bad.stderr
    assert (tmp_path / "runs" / "eng" / "config.yaml").exists() and not read_records(tmp_path / "runs" / "eng")
    fixed = _raw(tiny_llama_dir, data, compressors=["tiny", "identity"])
    good = _run(_sweep_cmd(_write_config(tmp_path / "good.yaml", fixed), tmp_path / "runs"))
    assert good.returncode == 0, good.stderr[-2000:]
    assert len(read_records(tmp_path / "runs" / "eng")) == 2 * len(ROWS)
    assert str(tiny_llama_dir) in (tmp_path / "runs" / "eng" / "config.yaml").read_text()
    # once records exist, another config is refused (exit 2) and the records are untouched
    other = _run(_sweep_cmd(_write_config(tmp_path / "other.yaml", {**fixed, "samples": 3}), tmp_path / "runs"))
    assert other.returncode == 2 and "different config" in other.stderr
    assert len(read_records(tmp_path / "runs" / "eng")) == 2 * len(ROWS)


# --------------------------------------------------------------------------- report = sweep


@pytest.fixture(scope="module")
def grid_run(tiny_llama_dir, tmp_path_factory):
    """2 temperatures x 2 seeds x 2 predictors x 2 compressors (a model and a baseline)."""
    root = tmp_path_factory.mktemp("grid")
    data = _write_rows(root / "d.jsonl")
    raw = _raw(tiny_llama_dir, data, name="grid", compressors=["tiny", "identity"], predictors=["tiny", "tiny2"],
               temperatures=[0.5, 1.0], seeds=[0, 1])
    raw["models"]["tiny2"] = {"backend": "hf", "model": str(tiny_llama_dir), "options": {"dtype": "float32"}}
    result = run_sweep(config_from_dict(raw), root / "runs", progress=False)
    return result


def test_grid_report_cells_equal_hand_aggregation_of_records(grid_run):
    from compressbench.analysis.report import CELL_KEYS, build_report

    assert CELL_KEYS == CELL_AXES
    records = read_records(grid_run.run_dir)
    assert len(records) == 2 * 2 * 2 * 2 * len(ROWS)
    report = build_report(grid_run.run_dir, n_boot=100)
    cells = report.cells
    for comp in ("tiny", "identity"):
        mine = cells[cells["compressor"] == comp]
        assert len(mine) == 8
        assert len({(r.temperature, r.seed, r.predictor) for r in mine.itertuples()}) == 8
    assert len(grid_run.rows) == 16 and len({tuple(r[a] for a in CELL_AXES) for r in grid_run.rows}) == 16
    summary = {tuple(r[a] for a in CELL_AXES): r for r in grid_run.rows}
    for _, row in cells.iterrows():
        key = tuple(row[a] for a in CELL_AXES)
        recs = [r for r in records if tuple(getattr(r.cell, a) for a in CELL_AXES) == key]
        assert len(recs) == len(ROWS) == row["n"]
        ok = [r for r in recs if r.error is None]
        assert row["accuracy"] == pytest.approx(sum(r.score for r in ok) / len(ok))
        assert row["n_unscored"] == sum(r.unscored for r in ok)
        # one FLOPs figure: records, summary and report agree for every role
        srow = summary[key]
        for role in ("compressor", "predictor", "scorer"):
            total = sum(r.flops[role] for r in recs)
            assert srow[f"flops_{role}"] == pytest.approx(total, rel=1e-12)
            assert row[f"gflops_{role}"] * 1e9 * len(recs) == pytest.approx(total, rel=1e-9)
    # the scorer's row of each record: one prefix, then every distinct compression of its group scored
    # after it; the continuation token sums equal the group's recorded compression token counts
    scored = [r for r in records if r.error is None and r.usage["scorer"] is not None and r.usage["scorer"].n_calls]
    assert len(scored) == len([r for r in records if r.error is None])
    shares: dict[tuple[str, str, str], dict[tuple, list[int]]] = {}
    for r in scored:
        (prefix, s1, s2, *paid), = r.usage["scorer"].shared_prefix_calls
        group = [g for g in records if g.cell_key == r.cell_key and g.error is None]
        # each example's distinct compressions once (a baseline's M identical copies are scored once)
        distinct = [n for g in group for n in {z: n for z, n in zip(g.compressions, g.compression_n_tokens)}.values()]
        assert s1 == sum(distinct)
        assert s2 == sum(n * n for n in distinct)
        assert r.usage["scorer"].n_prompt_tokens == prefix + s1
        c = r.cell  # a group's row repeats, the same, in the record of each predictor
        by_group = shares.setdefault((c.dataset, c.scorer, r.example_id), {})
        assert by_group.setdefault((c.compressor, c.prompt, c.temperature, c.seed), paid) == paid
    # one prefill per scoring prefix per sweep, charged in equal shares to the groups scored after it:
    # each group's row says [P, S1, S2, n] with n the number of groups (every group of the dataset here)
    groups = {(r.cell.compressor, r.cell.prompt, r.cell.temperature, r.cell.seed) for r in scored}
    assert len(groups) == 2 * 2 * 2  # compressors x temperatures x seeds
    assert shares and all(list(by_group.values()) == [[8]] * 8 for by_group in shares.values())
    assert len(shares) == len({(r.cell.dataset, r.cell.scorer, r.example_id) for r in scored})
    # model compressions differ between the two sampling temperatures (they are distinct cells)
    tiny = [r for r in records if r.cell.compressor == "tiny" and r.cell.seed == 0 and r.cell.predictor == "tiny"]
    by_t = {t: [r.compressions for r in tiny if r.cell.temperature == t] for t in (0.5, 1.0)}
    assert by_t[0.5] != by_t[1.0]


def test_duplicate_grid_values_are_rejected(tmp_path):
    base = _raw("m", tmp_path / "d.jsonl")
    for over, word in (({"seeds": [0, 0]}, "seeds"), ({"temperatures": [0.7, 0.7]}, "temperatures"),
                       ({"compressors": ["identity", "identity"]}, "identity")):
        with pytest.raises(ConfigError, match=word):
            config_from_dict({**base, **over})
    cfg = _write_config(tmp_path / "c.yaml", base)
    res = _run([sys.executable, "-m", "compressbench", "sweep", str(cfg), "--runs-dir", str(tmp_path / "r"),
                "--set", "seeds=[0,0]"], timeout=120)
    assert res.returncode == 2 and "seeds lists 0 more than once" in res.stderr


def test_records_of_another_version_fail_clearly(tmp_path):
    (tmp_path / "records.jsonl").write_text(json.dumps({"cell": {}, "cell_key": "x", "example_id": "1"}) + "\n")
    with pytest.raises(RecordVersionError, match="written by record format version 1"):
        read_records(tmp_path)
    (tmp_path / "records.jsonl").write_text(json.dumps({"version": 2, "cell": {"dataset": "d"}}) + "\n")
    with pytest.raises(DataError, match="malformed|cell"):
        read_records(tmp_path)


# --------------------------------------------------------------------------- served models


def test_http_backend_overflow_fitting_and_cached_tokens(tmp_path):
    """The toy OpenAI server reports max_model_len only from /tokenize: the compressor's long
    context is still cut to the window, and cached prompt tokens reach usage, summary and dollars."""
    from servers.toy_openai import ToyConfig, ToyServer

    from compressbench.analysis.report import build_report

    long_ctx = " ".join(f"word{i} fact{i}." for i in range(120))  # ~1500 bytes = tokens of the toy model
    rows = [dict(ROWS[0], context=long_ctx), ROWS[1], ROWS[2]]
    data = _write_rows(tmp_path / "d.jsonl", rows)
    prices = tmp_path / "prices.yaml"
    prices.write_text(yaml.safe_dump({"models": {"toy": {
        "input_usd_per_mtok": 1.0, "cached_input_usd_per_mtok": 0.25, "output_usd_per_mtok": 2.0,
        "as_of": "2026-01-01", "source": "test"}}}))
    with ToyServer(ToyConfig(max_model_len=600, cached_prompt_tokens=40)) as srv:
        raw = _raw("toy", data, compressors=["toy"], predictors=["toy"], scorer="toy", samples=1,
                   max_new_tokens={"compressor": 30, "predictor": 10}, on_context_overflow="truncate")
        raw["models"] = {"toy": {"backend": "openai", "model": "toy", "paid_api": True,
                                 "options": {"base_url": srv.url}}}
        result = run_sweep(config_from_dict(raw), tmp_path / "runs", progress=False)
        sent = [body["messages"][-1]["content"] for path, body in srv.log if path == "/v1/chat/completions"]
    recs = {(r.example_id): r for r in read_records(result.run_dir)}
    kept = recs["a"].context_truncated["compressor"]
    assert 0 < kept < 600 - 30
    assert not any(long_ctx in s for s in sent)  # the full context was never sent
    assert any(long_ctx[:200] in s for s in sent)
    assert recs["b"].context_truncated is None or "compressor" not in recs["b"].context_truncated
    comp_usage = recs["b"].usage["compressor"]
    assert comp_usage.n_cached_prompt_tokens == 40
    row = next(r for r in result.rows)
    assert row["tokens_compressor_cached"] == 3 * 40
    report = build_report(result.run_dir, prices=prices, n_boot=100)
    cell = report.cells.iloc[0]
    # dollars by hand: (P - C) * 1 + C * 0.25 + G * 2 per 1M tokens, summed over examples, per query
    by_hand = sum(((r.usage["compressor"].n_prompt_tokens - 40) * 1.0 + 40 * 0.25
                   + r.usage["compressor"].n_completion_tokens * 2.0) / 1e6 for r in recs.values()) / 3
    assert cell["usd_compressor"] == pytest.approx(by_hand, rel=1e-12)
