"""Fault injection with real sockets on 127.0.0.1: the toy OpenAI-compatible server behind a
seeded proxy that answers ~20% of requests with 429 (Retry-After), 500, connection resets,
stalls past the client's timeout, or truncated JSON.

Checks: batches complete with exactly the results the server gives without faults; the backend
retried exactly once per injected fault (counted independently by the proxy) and never more than
its bound; requests that keep failing are reported per index; an endpoint that stops answering
is taken out and its work goes to the other one. pytest-timeout guards against hangs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from servers.fault_proxy import FaultPlan, FaultProxy
from servers.toy_openai import ToyModel, ToyServer

from compressbench.backends.openai_http import BatchRemoteError, OpenAIHTTPBackend
from compressbench.types import GenerationParams

pytestmark = pytest.mark.timeout(120)

MODEL = ToyModel()
CLIENT = dict(timeout_s=0.5, backoff_initial_s=0.001, backoff_max_s=0.01, jitter_seed=0, max_concurrency=8)


def total_nats(prefix: str, cont: str) -> float:
    ids = [ToyModel.BOS] + list(prefix.encode()) + list(cont.encode())
    return math.fsum(MODEL.logprob(ids[:k], ids[k]) for k in range(1 + len(prefix.encode()), len(ids)))


def test_batches_complete_correctly_through_faults():
    prefixes = [f"Context {i}: the patient record number {i} says " + "x" * i for i in range(6)]
    conts = [" fever", " no fever", " cough and fever", " fine", " unknown"]
    chats = [[{"role": "user", "content": f"question {i}"}] for i in range(24)]
    with ToyServer() as srv, FaultProxy(srv.port, FaultPlan(rate=0.2, seed=3, stall_s=1.5)) as proxy:
        b = OpenAIHTTPBackend("toy", base_url=proxy.url, max_retries=8, **CLIENT)
        m = b.score_matrix(prefixes, conts)
        gens = b.generate(chats, GenerationParams(max_new_tokens=64, seed=5))
    expect = np.array([[total_nats(p, c) for c in conts] for p in prefixes])
    np.testing.assert_allclose(m, expect, rtol=0, atol=1e-9)
    assert [g.text for g in gens] == [f"[0:5] question {i}" for i in range(24)]
    # every kind of fault happened, at roughly the planned rate
    assert set(proxy.injected) == {"429", "500", "reset", "stall", "truncate"}, proxy.injected
    assert 0.1 <= proxy.n_injected / proxy.n_requests <= 0.35
    # one retry per injected fault, no more; each reason seen by the client matches the proxy
    assert b.stats.n_retries == proxy.n_injected
    assert b.stats.n_attempts == proxy.n_requests
    r = b.stats.retry_reasons
    assert r["http_429"] == proxy.injected["429"] and r["http_500"] == proxy.injected["500"]
    assert r["timeout"] == proxy.injected["stall"] and r["bad_json"] == proxy.injected["truncate"]
    assert r["connection"] == proxy.injected["reset"]
    assert max(proxy.seen.values()) <= 9 and b.stats.n_failed == 0


def test_errors_that_remain_are_reported_per_request():
    chats = [[{"role": "user", "content": ("POISON " if i % 5 == 2 else "") + f"q{i}"}] for i in range(12)]
    with ToyServer() as srv, FaultProxy(srv.port, FaultPlan(rate=0.2, seed=11, stall_s=1.5)) as proxy:
        b = OpenAIHTTPBackend("toy", base_url=proxy.url, max_retries=3, **CLIENT)
        with pytest.raises(BatchRemoteError) as info:
            b.generate(chats, GenerationParams(max_new_tokens=64))
    err = info.value
    assert sorted(err.errors) == [2, 7]
    assert all(e.status == 500 and "injected poison" in e.server_message for e in err.errors.values())
    assert [g.text if g else None for g in err.results] == [
        None if i in (2, 7) else f"[0:0] q{i}" for i in range(12)]
    # each poisoned request was tried exactly max_retries + 1 times, then given up
    assert proxy.injected["poison"] == 2 * 4
    assert b.stats.n_failed == 2


def test_endpoint_that_stops_answering_is_taken_out():
    prefixes = [f"doc {i} " for i in range(10)]
    conts = ["a", "bc"]
    with ToyServer() as srv, \
            FaultProxy(srv.port, FaultPlan(rate=1.0, kinds=("stall",), stall_s=1.5, seed=0)) as dead, \
            FaultProxy(srv.port, FaultPlan(rate=0.0)) as live:
        b = OpenAIHTTPBackend("toy", endpoints=[dead.url, live.url], max_retries=4,
                              endpoint_max_failures=2, endpoint_cooldown_s=600, **CLIENT)
        m = b.score_matrix(prefixes, conts)
    expect = np.array([[total_nats(p, c) for c in conts] for p in prefixes])
    np.testing.assert_allclose(m, expect, rtol=0, atol=1e-9)
    assert b.endpoints_in_service() == [b.endpoints[1]]
    # the dead endpoint got at most a few attempts before it was taken out (in-flight ones included)
    assert 2 <= dead.n_requests <= 2 + CLIENT["max_concurrency"]
    assert b.stats.n_failed == 0
