"""Serving at scale: many replicas of one model (data parallel) behind OpenAIHTTPBackend's
prefix-sticky routing with per-endpoint concurrency limits (the README's "Running on a cluster"
recipe), against several real local HTTP servers (tests/servers/toy_openai.py)."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from servers.toy_openai import ToyConfig, ToyModel, ToyServer

from compressbench.analysis.plan import make_plan
from compressbench.backends.openai_http import OpenAIHTTPBackend
from compressbench.engine.config import config_from_dict
from compressbench.core.errors import UsageError
from compressbench.engine.records import read_records
from compressbench.engine.sweep import run_sweep

FAST = {"backoff_initial_s": 0.001, "backoff_max_s": 0.002, "jitter_seed": 0, "timeout_s": 10}


def _expected_total(prefix: str, cont: str) -> float:
    """log p(cont | prefix) under the toy model, computed from the model directly (not over HTTP)."""
    m = ToyModel()
    ids = m.tokenize(prefix, True) + m.tokenize(cont, False)
    start = len(m.tokenize(prefix, True))
    return math.fsum(m.logprob(ids[:k], ids[k]) for k in range(start, len(ids)))


def test_replicas_keep_prefixes_sticky_spread_load_and_respect_each_limit():
    prefixes = [f"patient record {i}: " + "lorem ipsum " * (i % 3 + 1) for i in range(24)]
    conts = [" stable", " discharged today", " needs a follow-up", ""]
    servers = [ToyServer(ToyConfig(delay_s=0.01)).start() for _ in range(4)]
    try:
        limits = {servers[3].url: 1}
        b = OpenAIHTTPBackend("toy", endpoints=[s.url for s in servers], max_concurrency=3,
                              endpoint_concurrency=limits, **FAST)
        assert list(b.concurrency().values()) == [3, 3, 3, 1]
        m = b.score_matrix(prefixes, conts)
        expect = np.array([[_expected_total(p, c) for c in conts] for p in prefixes])
        np.testing.assert_allclose(m, expect, atol=1e-9)
        # Every scoring request of one prefix went to one replica (its prefix cache) ...
        owners: dict[str, set[int]] = {}
        for k, srv in enumerate(servers):
            for path, body in srv.log:
                if path == "/v1/completions" and isinstance(body["prompt"], list):
                    text = bytes(t for t in body["prompt"] if t < 256).decode()
                    for p in prefixes:
                        if text.startswith(p):
                            owners.setdefault(p, set()).add(k)
        assert set(owners) == set(prefixes)
        assert all(len(v) == 1 for v in owners.values())
        # ... the prefixes spread over all four replicas ...
        assert {k for v in owners.values() for k in v} == {0, 1, 2, 3}
        # ... and no replica ever had more requests in flight than its own limit.
        assert all(s.max_in_flight <= 3 for s in servers[:3])
        assert servers[3].max_in_flight == 1
        assert max(s.max_in_flight for s in servers[:3]) > 1  # the limit, not the client, was binding
    finally:
        for s in servers:
            s.stop()


def test_routing_is_weighted_by_concurrency_and_stable_when_a_replica_leaves():
    urls = [f"http://10.0.0.{i}:8000/v1" for i in range(1, 4)]
    keys = [f"prefix {i}" for i in range(6000)]
    weighted = OpenAIHTTPBackend("m", endpoints=urls[:2], max_concurrency=1, endpoint_concurrency={urls[0]: 3})
    share = Counter(weighted.route(k) for k in keys)
    assert abs(share["http://10.0.0.1:8000"] / len(keys) - 0.75) < 0.03  # weight 3 of 3 + 1
    three = OpenAIHTTPBackend("m", endpoints=urls)
    two = OpenAIHTTPBackend("m", endpoints=urls[:2])
    before = {k: three.route(k) for k in keys}
    counts = Counter(before.values())
    assert all(abs(c / len(keys) - 1 / 3) < 0.03 for c in counts.values())
    # Rendezvous hashing: dropping replica 3 moves only the keys it owned.
    assert all(two.route(k) == r for k, r in before.items() if r != "http://10.0.0.3:8000")


@pytest.mark.parametrize("bad, match", [({"http://elsewhere:1/v1": 2}, "not one of the endpoints"),
                                        ({"http://127.0.0.1:9/v1": 0}, "integer >= 1")])
def test_endpoint_concurrency_errors_are_usage_errors(bad, match):
    with pytest.raises(UsageError, match=match):
        OpenAIHTTPBackend("m", endpoints=["http://127.0.0.1:9/v1"], endpoint_concurrency=bad)


def _sweep_config(name: str, endpoints: list[str]) -> dict:
    opts = {"endpoints": endpoints, "max_concurrency": 2, "scoring": "completions", "max_retries": 2,
            "backoff_initial_s": 0.001, "backoff_max_s": 0.002, "jitter_seed": 0, "api_key_env": None}
    return {
        "name": name,
        "models": {"toy": {"backend": "openai", "model": "toy", "options": opts}},
        "compressors": ["toy", "identity", "truncate:40"], "predictors": ["toy"], "scorer": "toy",
        "datasets": [{"kind": "synthetic", "n_patients": 4, "n_questions_per_patient": 1, "seed": 3}],
        "prompts": ["query", "agnostic"], "samples": 2, "temperatures": [0.5, 1.0],
        "max_new_tokens": {"compressor": 200, "predictor": 24, "judge": 8}, "mi_n_boot": 20,
    }


def _comparable(run_dir: Path) -> list[dict]:
    recs = [{k: v for k, v in r.to_dict().items() if k not in ("wall_s", "cell_key")} for r in read_records(run_dir)]
    return sorted(recs, key=lambda r: (str(r["cell"]), r["example_id"]))


def _three_then_two(tmp_path: Path) -> dict:
    """One server, then three replicas, then the three-replica run resumed with one replica fewer."""
    with ToyServer() as one, ToyServer() as r1, ToyServer() as r2, ToyServer() as r3:
        single = run_sweep(config_from_dict(_sweep_config("single", [one.url])), tmp_path, progress=False)
        many = run_sweep(config_from_dict(_sweep_config("replicas", [r1.url, r2.url, r3.url])), tmp_path,
                         progress=False)
        many_records = _comparable(many.run_dir)
        served = [sum(1 for p in s.paths() if p != "/tokenize") for s in (r1, r2, r3)]
        before = [len(s.paths()) for s in (r1, r2)]
        again = run_sweep(config_from_dict(_sweep_config("replicas", [r1.url, r2.url])), tmp_path, progress=False)
        regenerated = [sum(1 for p in s.paths()[n:] if p in ("/v1/chat/completions", "/v1/completions"))
                       for s, n in zip((r1, r2), before)]
        one_requests = sum(1 for p in one.paths() if p != "/tokenize")
    return {"single": single, "many": many, "many_records": many_records, "served": served, "again": again,
            "regenerated": regenerated, "one_requests": one_requests,
            "after_resume": _comparable(many.run_dir)}


@pytest.mark.slow
def test_a_sweep_over_three_replicas_records_what_one_server_records(tmp_path: Path):
    r = _three_then_two(tmp_path)
    assert r["single"].n_records_written == r["many"].n_records_written == 4 * 3 * 2 * 2
    assert _comparable(r["single"].run_dir) == r["many_records"]
    assert all(n > 0 for n in r["served"])  # every replica did part of the work
    assert sum(r["served"]) == r["one_requests"]  # the same requests, spread
    # Replicas only schedule work: resumed with one replica fewer, nothing is regenerated.
    assert r["regenerated"] == [0, 0]
    # Each scoring prefix is prefilled once for the 3 compressors x 2 prompts x 2 temperatures = 12
    # groups, and every group's row carries 1/12 of it ([P, S1, S2, 12]); the plan charges the same.
    rows = {(str(x["cell"]), x["example_id"]): x["usage"]["scorer"]["shared_prefix_calls"] for x in r["many_records"]}
    assert len(rows) == 12 * 4 and all(len(c) == 1 and c[0][3:] == [12] for c in rows.values())
    plan = make_plan(config_from_dict(_sweep_config("replicas", ["http://127.0.0.1:9/v1"])),
                     assume={"synthetic": (4, 500)}, use_tokenizers=False)
    shares = [seg[4] for w in plan.works if w.stage == "score" for seg in w.segments]
    assert len(shares) == 12 * 4 and shares == pytest.approx([1 / 12] * 48)


@pytest.mark.slow
def test_a_resume_with_one_replica_fewer_rewrites_no_record(tmp_path: Path):
    # Two groups here have the same compressions (the toy compressor ignores temperature), so they
    # share one cache entry; a record's scorer usage must not depend on which of them wrote it.
    r = _three_then_two(tmp_path)
    assert r["again"].n_records_written == 0
    assert r["after_resume"] == r["many_records"]
