"""The CLI against hostile endpoints and natural mistakes (issue 12), end to end with real sockets:
the toy OpenAI-compatible server (tests/servers/toy_openai.py) as compressor, predictor and scorer,
behind the fault proxy where a case needs faults. No model is loaded anywhere in this file.

Bounds on time are stated and measured here with small timeouts; they are upper bounds many times
the expected figure, never speed claims.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from servers.fault_proxy import FaultPlan, FaultProxy, refused_url
from servers.toy_openai import ToyConfig, ToyServer

from compressbench.cli.main import cli
from compressbench.engine.records import read_records

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[1]
ROWS = [{"id": f"r{i}", "context": f"Person {i} lives in city number {i}.", "question": f"Where does person {i} live?",
         "options": ["yes", "no"], "answers": ["A"]} for i in range(6)]


def write_config(tmp_path: Path, url: str, *, name: str = "hostile", options: dict | None = None,
                 rows: list | None = None, **over) -> Path:
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in (rows or ROWS)), encoding="utf-8")
    raw = {
        "name": name,
        "models": {"toy": {"backend": "openai", "model": "toy", "options": {"base_url": url, **(options or {})}}},
        "compressors": ["toy", "identity"], "predictors": ["toy"], "scorer": "toy",
        "datasets": [{"kind": "jsonl", "path": str(data), "name": "local"}],
        "samples": 2, "max_new_tokens": {"compressor": 32, "predictor": 8}, "max_error_rate": 1.0,
        "batch_size": {"compressor": 2, "predictor": 2, "scorer": 2, "judge": 2},
    }
    raw.update(over)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def cli_run(*args: str):
    return CliRunner().invoke(cli, list(args), prog_name="compressbench")


def subprocess_env(**extra: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), **extra)


def run_files(run_dir: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def toy():
    with ToyServer() as srv:
        yield srv


# --------------------------------------------------------------------------- bad options, secrets


def test_unknown_backend_option_is_a_usage_error_before_any_model_loads(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(ROWS[0]) + "\n")
    raw = {"name": "typo", "models": {"m": {"backend": "hf", "model": str(tmp_path / "no-such-model"),
                                            "options": {"dtyp": "float32"}}},
           "compressors": ["identity"], "predictors": ["m"], "scorer": "m",
           "datasets": [{"kind": "jsonl", "path": str(data)}]}
    cfg = tmp_path / "typo.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    res = cli_run("sweep", str(cfg), "--runs-dir", str(tmp_path / "runs"))
    assert res.exit_code == 2, res.output
    assert "unknown option 'dtyp'" in res.output and "did you mean 'dtype'?" in res.output
    assert "does not exist" not in res.output  # the model path was never looked at
    assert "Usage: compressbench sweep" in res.output  # the subcommand's usage, not the group's
    assert not (tmp_path / "runs").exists()
    # a mistyped value, through --set: the type is named
    res = cli_run("sweep", str(cfg), "--runs-dir", str(tmp_path / "runs"), "--set", "models.m.options={threads: two}")
    assert res.exit_code == 2 and "models.m.options.threads must be an integer" in res.output
    res = cli_run("sweep", str(cfg), "--set", "models.m.options={prefix_batching: of}")
    assert res.exit_code == 2 and "did you mean 'off'?" in res.output


KEY = "sk-live-7QmZ4xY2pL9vR3tK8wN5bC1dF6gH0jS"


@pytest.mark.parametrize("options", [{"api_key": KEY}, {"base_url": f"http://127.0.0.1:1/v1?key={KEY}"},
                                     {"api_key_env": KEY}, {"token": KEY}])
def test_keys_in_config_files_are_refused_and_never_written(tmp_path, options):
    cfg = write_config(tmp_path, "http://127.0.0.1:1/v1", options=options)
    res = cli_run("sweep", str(cfg), "--runs-dir", str(tmp_path / "runs"))
    assert res.exit_code == 2, res.output
    assert "api_key_env" in res.output and "environment" in res.output
    assert KEY not in res.output
    assert not (tmp_path / "runs").exists()  # no config.yaml, no manifest.json


def test_name_that_escapes_the_runs_dir_is_refused(tmp_path, toy):
    cfg = write_config(tmp_path, toy.url)
    for bad in ("..", ".", ".hidden", "../up", "a/b"):
        res = cli_run("sweep", str(cfg), "--runs-dir", str(tmp_path / "runs"), "--set", f"name={bad}")
        assert res.exit_code == 2 and "name" in res.output, (bad, res.output)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "config.yaml").exists()


def test_config_errors_show_the_subcommand_usage(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("models: {a: [1, 2\n")
    res = cli_run("sweep", str(p))
    assert res.exit_code == 2
    assert "Usage: compressbench sweep [OPTIONS] CONFIG" in res.output
    assert "Try 'compressbench sweep --help'" in res.output


# --------------------------------------------------------------------------- unwritable paths


def test_unwritable_runs_dir_and_report_out_are_clean_errors(tmp_path, toy):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cfg = write_config(tmp_path, toy.url)
    res = cli_run("sweep", str(cfg), "--runs-dir", str(blocker / "runs"))
    assert res.exit_code == 2, res.output
    assert "cannot access" in res.output and "a-file" in res.output and "Traceback" not in res.output
    res = cli_run("sweep", str(cfg), "--runs-dir", str(tmp_path / "runs"))
    assert res.exit_code == 0, res.output
    run_dir = tmp_path / "runs" / "hostile"
    res = cli_run("report", str(run_dir), "--format", "markdown", "--out", str(blocker / "report.md"))
    assert res.exit_code == 2 and "cannot access" in res.output and "Usage: compressbench report" in res.output
    res = cli_run("report", str(run_dir), "--format", "csv", "--out", "/proc/no-such-dir/report.csv")
    assert res.exit_code == 2 and "/proc/no-such-dir" in res.output


# --------------------------------------------------------------------------- hostile endpoints


def test_sweep_against_a_refused_endpoint_ends_fast_naming_the_cause(tmp_path):
    # default client settings; the documented bound is 2 minutes, measured far below it
    cfg = write_config(tmp_path, refused_url(), options={"jitter_seed": 0}, max_error_rate=0.25)
    t0 = time.monotonic()
    res = cli_run("sweep", str(cfg), "--runs-dir", str(tmp_path / "runs"))
    elapsed = time.monotonic() - t0
    assert res.exit_code == 1, res.output
    # the abort names the most common error with an example of it: the cause, not just a count
    # (after the compress stage: the model compressor's 6 examples failed, the identity baseline's did not)
    assert "sweep aborted: 6 of 12 examples failed" in res.output
    assert "Most common error (6 of 6 failures)" in res.output and "Connection refused" in res.output
    assert elapsed < 120, elapsed
    recs = read_records(tmp_path / "runs" / "hostile")  # the failed examples are recorded with their cause
    assert len(recs) == 6 and all("Connection refused" in r.error for r in recs)


def test_sweep_against_a_hung_endpoint_is_bounded(tmp_path, toy):
    timeout = 0.5
    with FaultProxy(toy.port, FaultPlan(rate=1.0, kinds=("hang",))) as proxy:
        cfg = write_config(tmp_path, proxy.url, options={"timeout_s": timeout, "request_deadline_s": 2.0,
                                                         "backoff_initial_s": 0.01, "jitter_seed": 0},
                           max_error_rate=0.25)
        t0 = time.monotonic()
        res = cli_run("sweep", str(cfg), "--runs-dir", str(tmp_path / "runs"))
        elapsed = time.monotonic() - t0
        n_sent = proxy.n_requests
    assert res.exit_code == 1, res.output
    assert "Most common error" in res.output and "no answer within 0.5 s" in res.output
    # the breaker takes the endpoint out after 3 timeouts in time order (the requests in flight
    # together count once): at most 3 waves of max_concurrency (16) requests ever hang
    assert n_sent <= 3 * 16, n_sent
    assert elapsed < 60, elapsed


def test_wrong_shape_answers_fail_their_requests_not_the_sweep(tmp_path, toy):
    # every request about examples r2 and r4 (their context holds the marker) gets 200 with JSON of
    # the wrong shape; the other examples are served normally
    rows = [dict(r, context=r["context"] + (" WRONGSHAPE" if r["id"] in ("r2", "r4") else "")) for r in ROWS]
    plan = FaultPlan(rate=1.0, kinds=("wrong_shape",), only=b"WRONGSHAPE",
                     wrong_shape_bodies=(b'{"choices":[{"message":"oops"}]}', b"[1,2,3]"))
    with FaultProxy(toy.port, plan) as proxy:
        cfg = write_config(tmp_path, proxy.url, rows=rows, compressors=["toy"])
        res = cli_run("sweep", str(cfg), "--runs-dir", str(tmp_path / "runs"))
        assert proxy.injected["wrong_shape"] > 0
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output and "AttributeError" not in res.output
    recs = {r.example_id: r for r in read_records(tmp_path / "runs" / "hostile")}
    assert sorted(recs) == [r["id"] for r in ROWS]
    assert {k for k, r in recs.items() if r.error} == {"r2", "r4"}
    assert all("wrong shape" in recs[k].error for k in ("r2", "r4")), recs["r2"].error


# --------------------------------------------------------------------------- secrets


def _pieces(key: str, n: int = 8) -> list[str]:
    return [key[i:i + n] for i in range(len(key) - n + 1)]


def _leaks(blobs: dict[str, bytes | str], key: str = KEY) -> list[str]:
    out = []
    for name, blob in blobs.items():
        text = blob.decode("utf-8", "replace") if isinstance(blob, bytes) else blob
        if any(p in text for p in _pieces(key)):
            out.append(name)
    return out


@pytest.mark.parametrize("status", [401, 500])
def test_planted_key_never_reaches_any_file_or_log_line(tmp_path, toy, status):
    plan = FaultPlan(rate=0.5, seed=1, kinds=("echo_auth",), echo_status=status)
    with FaultProxy(toy.port, plan) as proxy:
        cfg = write_config(tmp_path, proxy.url, options={"api_key_env": "HOSTILE_TEST_KEY", "max_retries": 1,
                                                         "backoff_initial_s": 0.001, "endpoint_max_failures": 1000})
        res = subprocess.run([sys.executable, "-m", "compressbench", "--log-level", "debug", "sweep", str(cfg),
                              "--runs-dir", str(tmp_path / "runs")], env=subprocess_env(HOSTILE_TEST_KEY=KEY),
                             capture_output=True, text=True, timeout=240)
        assert proxy.n_echoed > 0  # the server did echo the key back, at several offsets
    run_dir = tmp_path / "runs" / "hostile"
    files = run_files(run_dir)
    assert run_dir / "config.yaml" in files and run_dir / "manifest.json" in files
    blobs: dict[str, bytes | str] = {str(p): b for p, b in files.items()}
    blobs["stdout"], blobs["stderr"] = res.stdout, res.stderr
    assert _leaks(blobs) == []
    assert "[redacted]" in res.stderr + "".join(b.decode("utf-8", "replace") for b in files.values())


def test_planted_key_never_in_a_traceback_or_log_record(tmp_path, toy, monkeypatch, caplog):
    import logging

    from compressbench.engine.config import load_config
    from compressbench.engine.sweep import run_sweep

    monkeypatch.setenv("HOSTILE_TEST_KEY", KEY)
    caplog.set_level(logging.DEBUG)
    with FaultProxy(toy.port, FaultPlan(rate=1.0, kinds=("echo_auth",), echo_status=401)) as proxy:
        cfg = write_config(tmp_path, proxy.url, options={"api_key_env": "HOSTILE_TEST_KEY", "max_retries": 0},
                           max_error_rate=0.0)
        with pytest.raises(Exception) as info:
            run_sweep(load_config(cfg), tmp_path / "runs", progress=False)
    tb = "".join(traceback.format_exception(info.value))
    blobs = {"traceback": tb, "logs": "\n".join(r.getMessage() for r in caplog.records)}
    blobs.update({str(p): b for p, b in run_files(tmp_path / "runs").items()})
    assert _leaks(blobs) == [], _leaks(blobs)
    assert "401" in tb


# --------------------------------------------------------------------------- SIGINT


def test_a_cancellation_landing_as_the_response_arrives_is_not_swallowed():
    """Ctrl-C reaches a running request as a cancellation of asyncio.run's task. The request's overall
    deadline must not swallow one that lands just as the response completes (asyncio.wait_for does on
    Python 3.11: the sweep then ran on and exited 0; seen once in CI)."""
    import asyncio

    from compressbench.backends.transport import within as _within

    async def race():
        fut = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(_within(fut, 10.0))
        await asyncio.sleep(0)  # the task now waits on the response
        fut.set_result("response")  # the response arrives ...
        task.cancel()  # ... and Ctrl-C lands before the task resumes
        try:
            return await task
        except asyncio.CancelledError:
            return "cancelled"

    assert asyncio.run(race()) == "cancelled"

    async def slow():
        await asyncio.sleep(5)

    async def late():
        try:
            await _within(slow(), 0.05)
        except (TimeoutError, asyncio.TimeoutError):  # the same class from Python 3.11
            return "timed out"

    assert asyncio.run(late()) == "timed out"


def test_sigint_exits_130_and_the_run_resumes(tmp_path):
    with ToyServer(ToyConfig(delay_s=0.3)) as slow:
        cfg = write_config(tmp_path, slow.url, options={"max_concurrency": 1},
                           batch_size={"compressor": 1, "predictor": 1, "scorer": 2, "judge": 1})
        # SIGINT at its default in the child, as in a terminal: a test run started in the background
        # (a shell without job control, nohup ... &) passes SIGINT on as ignored, and a process that
        # starts with SIGINT ignored rightly never sees Ctrl-C
        proc = subprocess.Popen([sys.executable, "-m", "compressbench", "sweep", str(cfg), "--runs-dir",
                                 str(tmp_path / "runs")], env=subprocess_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 120
        while sum(p == "/v1/chat/completions" for p in slow.paths()) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        n_chats_first = sum(p == "/v1/chat/completions" for p in slow.paths())
    assert proc.returncode == 130, (out, err)
    assert "Interrupted" in err and "rerun the same command" in err and "Traceback" not in err
    run_dir = tmp_path / "runs" / "hostile"
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["name"] == "hostile"
    json.loads((run_dir / "manifest.json").read_text())
    records = run_dir / "records.jsonl"
    if records.exists():
        read_records(run_dir)  # every line complete
    # rerun (the server is back, without the delay): it finishes without asking again for what
    # was done before the interrupt
    with ToyServer(port=slow.port) as fast:
        res = cli_run("sweep", str(cfg), "--runs-dir", str(tmp_path / "runs"))
        n_chats_second = sum(p == "/v1/chat/completions" for p in fast.paths())
    assert res.exit_code == 0, res.output
    recs = read_records(run_dir)
    assert len(recs) == len(ROWS) * 2 and all(r.error is None for r in recs)
    # the same sweep from scratch asks for more chats than the resumed one did
    with ToyServer() as fresh:
        (tmp_path / "fresh").mkdir()
        cfg2 = write_config(tmp_path / "fresh", fresh.url, options={"max_concurrency": 1},
                            batch_size={"compressor": 1, "predictor": 1, "scorer": 2, "judge": 1})
        assert cli_run("sweep", str(cfg2), "--runs-dir", str(tmp_path / "fresh" / "runs")).exit_code == 0
        n_clean = sum(p == "/v1/chat/completions" for p in fresh.paths())
    # every chat answered before the interrupt was cached (the one in flight at SIGINT may be lost)
    assert n_chats_first >= 3 and n_chats_second <= n_clean - (n_chats_first - 1), (
        n_chats_first, n_chats_second, n_clean)


# --------------------------------------------------------------------------- sweep behaviour


def test_a_failed_batch_is_not_retried_item_by_item(tmp_path, toy):
    # one example's chats always get a 500: the backend retries that request max_retries times, and
    # the sweep keeps the batch's other results instead of re-sending every chat on its own
    rows = [dict(r, context=r["context"] + (" POISON" if r["id"] == "r1" else "")) for r in ROWS]
    with FaultProxy(toy.port, FaultPlan(rate=0.0, route="/v1/chat/completions")) as proxy:
        cfg = write_config(tmp_path, proxy.url, rows=rows, compressors=["toy"],
                           options={"max_retries": 2, "backoff_initial_s": 0.001, "endpoint_max_failures": 100},
                           batch_size={"compressor": 3, "predictor": 3, "scorer": 3, "judge": 1})
        res = cli_run("sweep", str(cfg), "--runs-dir", str(tmp_path / "runs"))
        n_poisoned = proxy.injected["poison"]
        chats = [k for k in proxy.seen if k.startswith(b"POST /v1/chat/completions")]
        sent_per_chat = sorted(proxy.seen[k] for k in chats)
    assert res.exit_code == 0, res.output
    assert n_poisoned == 3  # 1 + max_retries for the one poisoned chat, not again for a per-item retry
    assert set(sent_per_chat) == {1, 3}  # every other chat was sent exactly once
    recs = {r.example_id: r for r in read_records(tmp_path / "runs" / "hostile")}
    assert {k for k, r in recs.items() if r.error} == {"r1"} and "injected poison" in recs["r1"].error


def test_fewer_than_two_contexts_warns_and_costs_no_scorer(tmp_path, toy):
    n_before = sum(p == "/v1/completions" for p in toy.paths())
    cfg = write_config(tmp_path, toy.url, rows=ROWS[:1])
    res = subprocess.run([sys.executable, "-m", "compressbench", "sweep", str(cfg), "--runs-dir",
                          str(tmp_path / "runs")], env=subprocess_env(), capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr
    assert "MI is undefined with 1 usable context(s) of 1 (it needs N >= 2)" in res.stderr
    assert "no scorer cost" in res.stderr
    assert sum(p == "/v1/completions" for p in toy.paths()) == n_before  # the scorer was never asked
    recs = read_records(tmp_path / "runs" / "hostile")
    assert recs and all(r.usage["scorer"].n_calls == 0 and r.flops["scorer"] == 0 for r in recs)
    rows = json.loads((tmp_path / "runs" / "hostile" / "summary.json").read_text())["rows"]
    assert all(r["mi_bits"] is None and not r["flops_scorer"] for r in rows)


def test_progress_lines_when_stderr_is_not_a_terminal(tmp_path, toy):
    cfg = write_config(tmp_path, toy.url)
    res = subprocess.run([sys.executable, "-m", "compressbench", "sweep", str(cfg), "--runs-dir",
                          str(tmp_path / "runs")], env=subprocess_env(), capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr
    lines = [x for x in res.stderr.splitlines() if "compressbench.core.progress" in x]
    assert "compress local/toy/query: 0/6 items" in lines[0]
    assert any(x.endswith("compress local/toy/query: 6/6 items done in " + x.rsplit(" ", 1)[-1]) for x in lines)
    assert any("score (MI) toy: 2/2 groups done in" in x for x in lines)
    assert any("predict" in x and "done in" in x for x in lines)
    assert "\r" not in res.stderr  # no progress bar redraws in a log


def test_report_csv_counts_are_integers(tmp_path, toy):
    cfg = write_config(tmp_path, toy.url)
    assert cli_run("sweep", str(cfg), "--runs-dir", str(tmp_path / "runs")).exit_code == 0
    res = cli_run("report", str(tmp_path / "runs" / "hostile"), "--format", "csv")
    assert res.exit_code == 0, res.output
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(res.output)))
    assert len(rows) == 2
    for row in rows:
        for col in ("n", "n_samples", "n_errors", "n_unscored", "seed", "tokens_predictor_prompt"):
            assert row[col].isdigit(), (col, row[col])
        assert row["n"] == "6" and row["n_samples"] == "2"
