"""Faults a rerun must heal (issue 23), end to end: the CLI in real subprocesses against the toy
OpenAI-compatible server (tests/servers/toy_openai.py), behind the fault proxy where a case needs
faults, writing real run directories. Each case checks the exit code, a message naming the cause,
exact results where the fault heals (the current records and summary equal those of a clean run
against the healthy server, wall times aside) and no API key in any file.

No model is loaded; nothing here asserts a wall-clock time (concurrency is counted in requests).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from servers.fault_proxy import FaultPlan, FaultProxy, refused_url
from servers.toy_openai import ToyConfig, ToyServer

from compressbench.backends import load_backend
from compressbench.backends.openai_http import OpenAIHTTPBackend
from compressbench.core.errors import BatchRemoteError, MalformedResponse
from compressbench.core.types import GenerationParams
from compressbench.engine.records import current_records, read_records

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-live-9TqX3vB7nM2kL5pR8wZ4cY6dF1gH0jQ"


def rows(tag: str = "", n: int = 6) -> list[dict]:
    return [{"id": f"r{i}", "context": f"Person {i} lives in city number {i}{tag}.",
             "question": f"Where does person {i} live?", "options": ["yes", "no"], "answers": ["A"]}
            for i in range(n)]


def write_config(tmp_path: Path, url: str, *, name: str = "heal", options: dict | None = None,
                 datasets: dict[str, list[dict]] | None = None, **over) -> Path:
    specs = []
    for dname, drows in (datasets or {"local": rows()}).items():
        path = tmp_path / f"{dname}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in drows), encoding="utf-8")
        specs.append({"kind": "jsonl", "path": str(path), "name": dname})
    raw = {
        "name": name,
        "models": {"toy": {"backend": "openai", "model": "toy",
                           "options": {"base_url": url, "backoff_initial_s": 0.02, "backoff_max_s": 0.1,
                                       "jitter_seed": 0, **(options or {})}}},
        "compressors": ["toy", "identity"], "predictors": ["toy"], "scorer": "toy",
        "datasets": specs, "samples": 2, "max_new_tokens": {"compressor": 48, "predictor": 8},
        "max_error_rate": 0.1, "batch_size": {"compressor": 2, "predictor": 2, "scorer": 2, "judge": 2},
    }
    raw.update(over)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m compressbench ARGS`` in a fresh process (this checkout first on the path)."""
    full = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                **(env or {}))
    return subprocess.run([sys.executable, "-m", "compressbench", *args], capture_output=True, text=True,
                          env=full, timeout=240, check=False)


def sweep(cfg: Path, runs: Path, *set_: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return cli("sweep", str(cfg), "--runs-dir", str(runs), *(a for s in set_ for a in ("--set", s)), env=env)


def outcome(run_dir: Path) -> tuple[dict, list[dict]]:
    """The current records by (cell key, example) and the summary rows, wall times left out."""
    recs = {}
    for r in current_records(read_records(run_dir)):
        d = r.to_dict()
        d.pop("wall_s")
        recs[(r.cell_key, r.example_id)] = d
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))["rows"]
    for row in summary:
        row.pop("wall_s")
    return recs, summary


def clean_run(tmp_path: Path, **kw) -> tuple[dict, list[dict]]:
    """The same sweep against a healthy server, in its own folder."""
    with ToyServer() as srv:
        base = tmp_path / "clean"
        base.mkdir()
        res = sweep(write_config(base, srv.url, **kw), base / "runs")
        assert res.returncode == 0, res.stderr
    return outcome(base / "runs" / kw.get("name", "heal"))


# --------------------------------------------------------------------------- 1. a rerun repairs failed cells


def test_dead_endpoint_then_rerun_after_it_is_back_gives_the_clean_run(tmp_path):
    url = refused_url()
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    cfg = write_config(tmp_path, url)
    runs = tmp_path / "runs"
    res = sweep(cfg, runs)
    assert res.returncode == 1, res.stderr
    assert "sweep aborted" in res.stderr and "Connection refused" in res.stderr, res.stderr
    assert any(r.error for r in read_records(runs / "heal"))  # the failures are on disk, with their cause
    with ToyServer(port=port):  # the cause fixed: the server is up at the same address
        res = sweep(cfg, runs)
    assert res.returncode == 0, res.stderr
    healed = outcome(runs / "heal")
    assert all(r["error"] is None for r in healed[0].values())
    assert all(row["n_errors"] == 0 for row in healed[1])
    assert healed == clean_run(tmp_path)


def test_one_failing_example_healed_by_a_rerun_rewrites_its_group(tmp_path):
    # one example's requests always fail (HTTP 500); the others succeed, so the group's MI and every
    # pointwise term are computed over 5 contexts; after the fix they must be those over 6
    poisoned = rows()
    poisoned[3]["context"] = "Person 3 lives in POISON city."
    with ToyServer() as srv, FaultProxy(srv.port, FaultPlan(rate=0.0)) as proxy:
        cfg = write_config(tmp_path, proxy.url, datasets={"local": poisoned}, options={"max_retries": 1},
                           max_error_rate=1.0)
        runs = tmp_path / "runs"
        res = sweep(cfg, runs)
        assert res.returncode == 0, res.stderr
        first = outcome(runs / "heal")
        # the toy compressor failed on example 3; the identity group's scorer failed on its prefix
        assert {row["compressor"]: row["n_errors"] for row in first[1]} == {"toy": 1, "identity": 6}
        assert all("HTTP 500" in r["error"] for r in first[0].values() if r["error"])
        proxy.plan = FaultPlan(rate=0.0, poison=None)  # fixed
        res = sweep(cfg, runs)
        assert res.returncode == 0, res.stderr
    healed = outcome(runs / "heal")
    assert healed == clean_run(tmp_path, datasets={"local": poisoned}, max_error_rate=1.0)
    # the successes of the first run were rewritten too: their pointwise MI saw 5 contexts, not 6
    changed = [k for k, r in first[0].items() if r["error"] is None and r != healed[0][k]]
    assert changed and all(healed[0][k]["pointwise_mi_bits"] != first[0][k]["pointwise_mi_bits"] for k in changed)
    # a rerun of the healed run changes nothing and writes nothing
    n_lines = len((runs / "heal" / "records.jsonl").read_text().splitlines())
    with ToyServer() as srv:
        res = sweep(cfg, runs, f"models.toy.options.base_url={srv.url}")
    assert res.returncode == 0, res.stderr
    assert outcome(runs / "heal") == healed
    assert len((runs / "heal" / "records.jsonl").read_text().splitlines()) == n_lines


# --------------------------------------------------------------------------- 2. a flaky endpoint survives


def test_one_in_three_first_attempts_reset_the_sweep_completes_exactly(tmp_path):
    with ToyServer() as srv, FaultProxy(srv.port, FaultPlan(rate=1 / 3, kinds=("reset",), first_only=True,
                                                            seed=1)) as proxy:
        # the breaker's defaults (3 failures, 60 s cool-down) and max_retries 5, as a new user has them
        cfg = write_config(tmp_path, proxy.url, max_error_rate=0.0)
        res = sweep(cfg, tmp_path / "runs")
        n_reset = proxy.injected["reset"]
    assert res.returncode == 0, res.stderr
    assert n_reset >= 20, n_reset  # the proxy did reset about a third of the first attempts
    assert outcome(tmp_path / "runs" / "heal") == clean_run(tmp_path, max_error_rate=0.0)


def test_breaker_ignores_concurrent_failures_but_opens_on_failures_in_time_order():
    chats = [[{"role": "user", "content": f"q {i}"}] for i in range(64)]
    with ToyServer() as srv, FaultProxy(srv.port, FaultPlan(rate=1 / 3, kinds=("reset",), first_only=True,
                                                            seed=2)) as proxy:
        b = OpenAIHTTPBackend("toy", base_url=proxy.url, jitter_seed=0, backoff_initial_s=0.01)
        gens = b.generate(chats, GenerationParams(seed=1))
        assert [g.text for g in gens] == [f"[0:1] q {i}" for i in range(64)]
        assert proxy.injected["reset"] >= 10 and b.stats.n_breaker_trips == 0
        assert b.stats.n_retries == proxy.injected["reset"]
    # every attempt reset: 16 in flight count once, then the retries twice more -> out, after
    # exactly 3 rounds (at most 3 x 16 attempts), not after the first 3 concurrent failures
    with ToyServer() as srv, FaultProxy(srv.port, FaultPlan(rate=1.0, kinds=("reset",))) as proxy:
        b = OpenAIHTTPBackend("toy", base_url=proxy.url, jitter_seed=0, backoff_initial_s=0.01)
        with pytest.raises(BatchRemoteError):
            b.generate(chats, GenerationParams())
        assert b.stats.n_breaker_trips == 1 and 16 < proxy.n_requests <= 3 * 16


# --------------------------------------------------------------------------- 3. bad log-probs


@pytest.mark.parametrize("bad", [math.inf, 3.5])
def test_bad_logprobs_fail_their_requests_naming_model_endpoint_and_position(tmp_path, bad):
    datasets = {"good": rows(), "bad": rows(" (second set)")}
    datasets["bad"][2]["context"] = "Person 2 lives MARKED in city number 2."  # the server spoils its scoring
    with ToyServer(ToyConfig(bad_logprob=bad, bad_logprob_marker="MARKED")) as srv:
        cfg = write_config(tmp_path, srv.url, datasets=datasets, max_error_rate=0.6)
        res = sweep(cfg, tmp_path / "runs")
    assert res.returncode == 0, res.stderr  # not a usage error (2), not an abort: under max_error_rate
    recs = current_records(read_records(tmp_path / "runs" / "heal"))
    bad_recs = [r for r in recs if r.cell.dataset == "bad"]
    assert bad_recs and all(r.error for r in bad_recs)
    err = bad_recs[0].error
    assert "MalformedResponse" in err and "toy" in err and srv.url.removesuffix("/v1") in err, err
    assert ("+inf" if bad == math.inf else "3.5 nats, above 0") in err and "position" in err, err
    # the other dataset is exactly as in a clean run
    good, _ = outcome(tmp_path / "runs" / "heal")
    clean, _ = clean_run(tmp_path, datasets={"good": rows()}, max_error_rate=0.6)
    good = {k: v for k, v in good.items() if v["cell"]["dataset"] == "good"}
    assert good == clean


@pytest.mark.parametrize("bad", [math.nan, -math.inf, 0.5])
@pytest.mark.parametrize("caps", [dict(), dict(prompt_logprobs=False), dict(prompt_logprobs=False, echo=False)])
def test_each_scoring_route_checks_its_logprobs(bad, caps):
    with ToyServer(ToyConfig(bad_logprob=bad, bad_logprob_marker="MARK", **caps)) as srv:
        b = OpenAIHTTPBackend("toy", base_url=srv.url, jitter_seed=0)
        with pytest.raises(BatchRemoteError) as info:
            b.score(["plain prefix", "a MARK prefix"], [" x", " y"])
    assert sorted(info.value.errors) == [1] and info.value.results[0] is not None
    e = info.value.errors[1]
    assert isinstance(e, MalformedResponse) and "toy" in str(e) and srv.url.removesuffix("/v1") in str(e)
    # " y" is 2 byte tokens after the 13 of BOS + "a MARK prefix"; the server spoilt the last one
    assert "continuation token 1 (prompt position 15)" in str(e) or "position 15 is NaN" in str(e), str(e)


# --------------------------------------------------------------------------- 4. keys never reach a file


def _pieces(key: str, n: int = 8) -> list[str]:
    return [key[i:i + n] for i in range(len(key) - n + 1)]


def _files_with_key(root: Path) -> list[str]:
    out = []
    for p in sorted(root.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            if any(piece.encode() in data for piece in _pieces(KEY)):
                out.append(str(p))
    return out


def test_a_key_echoed_in_generated_text_is_never_stored(tmp_path, monkeypatch):
    with ToyServer(ToyConfig(api_key=KEY, echo_key=True)) as srv:
        cfg = write_config(tmp_path, srv.url, options={"api_key_env": "TOY_KEY"}, max_error_rate=0.0)
        res = sweep(cfg, tmp_path / "runs", env={"TOY_KEY": KEY})
        assert res.returncode == 0, res.stderr
        # the agent API: a CompressionStep logging what the remote model returned
        from compressbench.agent import CompressionLog, CompressionStep

        monkeypatch.setenv("TOY_KEY", KEY)
        log_path = tmp_path / "agent" / "log.jsonl"
        with CompressionLog(log_path) as log:
            step = CompressionStep(load_backend("openai", "toy", base_url=srv.url, api_key_env="TOY_KEY"), log=log)
            out = step("A long document about city 7.", "Which city?")
    assert "[redacted]" in out and KEY not in out
    run_dir = tmp_path / "runs" / "heal"
    # the model did echo the key (the test is not vacuous): its replies hold the redaction mark
    texts = [t for r in read_records(run_dir) for t in (*r.compressions, *r.predictions)]
    assert texts and all("[redacted]" in t for t in texts if t.startswith("["))
    assert any(p.suffix == ".json" for p in (run_dir / "cache").rglob("*"))
    assert _files_with_key(tmp_path) == []  # records, cache, summary, manifest, config, the agent log
    assert not any(piece in res.stdout + res.stderr for piece in _pieces(KEY))


# --------------------------------------------------------------------------- 5. concurrency, Retry-After


def test_configured_concurrency_is_reached_against_a_slow_server(tmp_path):
    with ToyServer(ToyConfig(delay_s=1.0, delay_routes=("/v1/chat/completions",))) as srv:
        cfg = write_config(tmp_path, srv.url, options={"max_concurrency": 8}, datasets={"local": rows(n=8)},
                           compressors=["toy"], max_error_rate=0.0)
        res = sweep(cfg, tmp_path / "runs")
        assert res.returncode == 0, res.stderr
        # batch_size is 2, but a served model gets at least its in-flight limit per call
        chat = srv.max_route_in_flight["/v1/chat/completions"]
        assert chat >= math.ceil(0.8 * 8), chat


def test_fitting_a_batch_to_the_window_counts_its_tokens_in_one_call():
    # a served model answers each count_tokens call with requests: fitting 8 chats one by one sent
    # 16 sequential calls (one request in flight at a time); now one call carries them all
    from compressbench.core.prompts import load_prompt
    from compressbench.engine.model_work import ChatSpec, generate_batch

    class Counting:
        def __init__(self, backend):
            self.backend, self.calls = backend, []

        def count_tokens(self, texts):
            self.calls.append(list(texts))
            return self.backend.count_tokens(texts)

        def __getattr__(self, name):
            return getattr(self.backend, name)

    prompt = load_prompt("predict")
    specs = [ChatSpec(prompt, {"question": f"Where does person {i} live?", "options_block": ""}, "compression",
                      f"Person {i} lives in city {i}. " * (1 + i)) for i in range(8)]
    with ToyServer(ToyConfig(max_model_len=4096)) as srv:
        b = Counting(OpenAIHTTPBackend("toy", base_url=srv.url, max_concurrency=8))
        out = generate_batch(b, specs, GenerationParams(max_new_tokens=64), "truncate", "toy")
        assert len(b.calls) == 1 and len(b.calls[0]) == 16, b.calls
        ref = generate_batch(OpenAIHTTPBackend("toy", base_url=srv.url), specs, GenerationParams(max_new_tokens=64),
                             "truncate", "toy")
    assert [o.texts for o in out] == [o.texts for o in ref] and all(o.error is None for o in out)
    assert all(o.texts and "Person" in o.texts[0] for o in out)


def test_retry_after_is_capped_and_counted_against_the_deadline():
    chats = [[{"role": "user", "content": f"q {i}"}] for i in range(4)]
    with ToyServer() as srv, FaultProxy(srv.port, FaultPlan(rate=1.0, kinds=("429",), first_only=True,
                                                            retry_after="3600")) as proxy:
        # capped: the server asks for an hour, the client waits retry_after_max_s and succeeds
        b = OpenAIHTTPBackend("toy", base_url=proxy.url, retry_after_max_s=0.05, backoff_initial_s=0.001,
                              backoff_max_s=0.002, jitter_seed=0)
        assert [g.text for g in b.generate(chats, GenerationParams())] == [f"[0:0] q {i}" for i in range(4)]
        assert b.stats.retry_delays_s == [0.05] * 4 and b.stats.retry_reasons["http_429"] == 4
        # counted against the deadline: a wait past request_deadline_s is not started at all
        proxy.plan = FaultPlan(rate=1.0, kinds=("429",), retry_after="3600")
        b = OpenAIHTTPBackend("toy", base_url=proxy.url, request_deadline_s=5, jitter_seed=0)
        with pytest.raises(BatchRemoteError) as info:
            b.generate(chats, GenerationParams())
    assert b.stats.n_attempts == 4 and b.stats.n_retries == 0 and b.stats.n_deadline == 4
    msg = str(info.value.errors[0])
    assert "request deadline of 5 s" in msg and "Retry-After" in msg and "3600" in msg, msg


# --------------------------------------------------------------------------- 6. config mistakes, report


def test_yaml_key_given_twice_is_a_usage_error_naming_key_and_line(tmp_path):
    cfg = write_config(tmp_path, "http://127.0.0.1:1/v1")
    text = cfg.read_text()
    cfg.write_text(text.replace("samples: 2\n", "samples: 2\nsamples: 4\n"))
    line = cfg.read_text().splitlines().index("samples: 4") + 1
    res = sweep(cfg, tmp_path / "runs")
    assert res.returncode == 2, res.stderr
    assert f"line {line}: key 'samples' is given twice" in res.stderr, res.stderr
    # a model defined twice under models
    raw = yaml.safe_load(text)
    model = yaml.safe_dump({"toy": raw["models"]["toy"]})
    body = yaml.safe_dump({k: v for k, v in raw.items() if k != "models"})
    cfg.write_text("models:\n" + "".join("  " + ln + "\n" for ln in (model + model).splitlines()) + body)
    res = sweep(cfg, tmp_path / "runs")
    assert res.returncode == 2 and "key 'toy' is given twice" in res.stderr, res.stderr
    assert not (tmp_path / "runs").exists()
    # the research config too
    research = tmp_path / "research.yaml"
    research.write_text("limit: 2\nlimit: 3\n")
    res = cli("research", str(research), "--runs-dir", str(tmp_path / "runs"))
    assert res.returncode == 2 and "line 2: key 'limit' is given twice" in res.stderr, res.stderr


def test_model_name_typo_exits_2_with_did_you_mean(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows()))
    cfg = tmp_path / "typo.yaml"
    cfg.write_text(yaml.safe_dump({"models": {"m": {"backend": "hf", "model": "smollm2-135n"}},
                                   "compressors": ["identity"], "predictors": ["m"], "scorer": "m",
                                   "datasets": [{"kind": "jsonl", "path": str(data)}]}))
    res = sweep(cfg, tmp_path / "runs")
    assert res.returncode == 2, res.stderr
    assert "'smollm2-135n' is not a built-in model" in res.stderr and "did you mean 'smollm2-135m'?" in res.stderr
    assert not (tmp_path / "runs").exists()


def test_report_without_summary_shows_the_summarys_mi_interval(tmp_path):
    with ToyServer() as srv:
        cfg = write_config(tmp_path, srv.url, max_error_rate=0.0)
        assert sweep(cfg, tmp_path / "runs").returncode == 0
    run_dir = tmp_path / "runs" / "heal"
    cols = ("mi_bits", "mi_bits_raw", "mi_ci_low_bits", "mi_ci_high_bits", "bits_per_token")
    summary = {(r["compressor"], r["predictor"]): {c: r[c] for c in cols}
               for r in json.loads((run_dir / "summary.json").read_text())["rows"]}

    def reported() -> dict:
        res = cli("report", str(run_dir), "--format", "json")
        assert res.returncode == 0, res.stderr
        cells = json.loads(res.stdout)["cells"]
        return {(c["compressor"], c["predictor"]): {k: c[k] for k in cols} for c in cells}

    assert reported() == summary
    (run_dir / "summary.json").unlink()
    (run_dir / "summary.csv").unlink()
    assert reported() == summary  # from mi_estimates.json: exactly the sweep's estimate
    (run_dir / "mi_estimates.json").unlink()  # a run from before the file: pointwise means, clipped at 0
    assert all(v["mi_ci_low_bits"] is None or v["mi_ci_low_bits"] >= 0 for v in reported().values())
