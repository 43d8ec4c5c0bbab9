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

from compressbench.backends.openai_http import OpenAIHTTPBackend
from compressbench.core.errors import BatchRemoteError
from compressbench.core.types import GenerationParams

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
        # (the circuit breaker is kept out of this test: 3 resets/stalls in a row do happen at this rate;
        # the breaker has its own tests below)
        b = OpenAIHTTPBackend("toy", base_url=proxy.url, max_retries=8, endpoint_max_failures=1000, **CLIENT)
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
        b = OpenAIHTTPBackend("toy", base_url=proxy.url, max_retries=3, endpoint_max_failures=1000, **CLIENT)
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
    # the dead endpoint got at most 2 waves of attempts (failures in flight together count once)
    assert 2 <= dead.n_requests <= 2 * CLIENT["max_concurrency"]
    assert b.stats.n_failed == 0


# ---- hostile endpoints: refused, hung, wrong-shape, keys echoed back (issue 12) -----------------

import logging  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402

from servers.fault_proxy import refused_url  # noqa: E402
from servers.toy_openai import ToyConfig  # noqa: E402

from compressbench.backends.secrets import redact  # noqa: E402
from compressbench.core.errors import EndpointsDown, MalformedResponse  # noqa: E402
from compressbench.core.errors import BackendError, RemoteError  # noqa: E402

CHATS = [[{"role": "user", "content": f"question {i}"}] for i in range(32)]


def test_refused_endpoint_fails_the_whole_batch_at_once_with_the_cause():
    # Default settings (timeouts, retries, breaker), as a new user would have them.
    b = OpenAIHTTPBackend("toy", base_url=refused_url(), jitter_seed=0)
    t0 = time.monotonic()
    with pytest.raises(BatchRemoteError) as info:
        b.generate(CHATS, GenerationParams())
    elapsed = time.monotonic() - t0
    err = info.value
    assert sorted(err.errors) == list(range(32)) and err.results == [None] * 32
    # every failure names the cause: the connection was refused
    assert all("ConnectError" in str(e) for e in err.errors.values()), str(err)
    assert any(isinstance(e, EndpointsDown) for e in err.errors.values())
    # the breaker stopped the storm after 3 failures in time order: the 16 requests in flight
    # together count once, so retries had their chance (at most 3 waves of 16 attempts), and the
    # backoff schedule alone (6 attempts, 0.25 + 0.5 + 1 + 2 + 4 s at least) never ran
    assert 16 < b.stats.n_attempts <= 16 * 3 and b.stats.n_breaker_trips == 1
    assert b.stats.n_retries <= 16 * 3
    assert elapsed < 60, elapsed  # documented bound: a refused endpoint fails a batch within seconds


def test_hung_endpoint_fails_within_about_three_timeouts():
    timeout = 0.3
    with ToyServer() as srv, FaultProxy(srv.port, FaultPlan(rate=1.0, kinds=("hang",))) as proxy:
        b = OpenAIHTTPBackend("toy", base_url=proxy.url, timeout_s=timeout, max_concurrency=4,
                              backoff_initial_s=0.001, backoff_max_s=0.01, jitter_seed=0)
        t0 = time.monotonic()
        with pytest.raises(BatchRemoteError) as info:
            b.generate(CHATS[:12], GenerationParams())
        elapsed = time.monotonic() - t0
    assert len(info.value.errors) == 12
    assert all("out of service" in str(e) or "no answer within" in str(e) for e in info.value.errors.values())
    # the 4 requests in flight time out together (one failure in time order), their retries
    # again, and again: 3 waves of 4 attempts took the endpoint out; nothing else was sent
    assert proxy.n_requests == 12 and b.stats.n_attempts == 12 and b.stats.n_breaker_trips == 1
    # bound: three timeouts (+ scheduling slack on a loaded machine), not 12 x 6 timeouts
    assert elapsed < timeout * 12 * 6 / 4, elapsed


def test_request_deadline_bounds_retries_against_a_hung_server():
    with ToyServer() as srv, FaultProxy(srv.port, FaultPlan(rate=1.0, kinds=("hang",))) as proxy:
        b = OpenAIHTTPBackend("toy", base_url=proxy.url, timeout_s=0.25, request_deadline_s=1.0, max_retries=1000,
                              endpoint_max_failures=1000, backoff_initial_s=0.001, backoff_max_s=0.01,
                              jitter_seed=0)
        t0 = time.monotonic()
        with pytest.raises(BatchRemoteError) as info:
            b.generate(CHATS[:1], GenerationParams())
        elapsed = time.monotonic() - t0
    err = info.value.errors[0]
    assert "request deadline of 1 s" in str(err) and "no answer within" in str(err)
    assert b.stats.n_deadline == 1
    # 1 s / 0.25 s per attempt: about 4 attempts (a 5th may start with the time that is left)
    assert 3 <= proxy.n_requests <= 5 and proxy.n_requests == b.stats.n_attempts
    assert elapsed < 1.0 + 5, elapsed


def test_endpoint_comes_back_after_the_cooldown():
    with ToyServer() as srv, FaultProxy(srv.port, FaultPlan(rate=1.0, kinds=("reset",))) as proxy:
        b = OpenAIHTTPBackend("toy", base_url=proxy.url, endpoint_cooldown_s=0.5, **CLIENT)
        with pytest.raises(BatchRemoteError):
            b.generate(CHATS[:4], GenerationParams())
        assert b.endpoints_in_service() == [] and b.stats.n_breaker_trips == 1
        n_before = proxy.n_requests
        proxy.plan = FaultPlan(rate=0.0)  # the server is healthy again ...
        with pytest.raises(BatchRemoteError) as info:  # ... but the endpoint is out: fails at once, nothing sent
            b.generate(CHATS[:4], GenerationParams())
        assert proxy.n_requests == n_before
        assert all(isinstance(e, EndpointsDown) for e in info.value.errors.values())
        assert "connection to" in str(info.value.errors[0]) and "failed" in str(info.value.errors[0])
        # half-open: after the cool-down one more failure takes it out again at once
        proxy.plan = FaultPlan(rate=1.0, kinds=("reset",))
        time.sleep(0.6)
        n_before = proxy.n_requests
        with pytest.raises(BatchRemoteError):
            b.generate(CHATS[:1], GenerationParams())
        assert proxy.n_requests == n_before + 1 and b.stats.n_breaker_trips == 2
        # healthy again: after the next cool-down it is tried and serves
        proxy.plan = FaultPlan(rate=0.0)
        time.sleep(0.6)
        assert [g.text for g in b.generate(CHATS[:3], GenerationParams())] == [
            f"[0:0] question {i}" for i in range(3)]
        assert b.endpoints_in_service() == b.endpoints


@pytest.mark.parametrize("body", FaultPlan().wrong_shape_bodies)
def test_wrong_shape_json_is_one_failed_request(body):
    with ToyServer() as srv, FaultProxy(srv.port, FaultPlan(rate=1.0, kinds=("wrong_shape",),
                                                            wrong_shape_bodies=(body,))) as proxy:
        b = OpenAIHTTPBackend("toy", base_url=proxy.url, **CLIENT)
        with pytest.raises(BatchRemoteError) as info:
            b.generate(CHATS[:3], GenerationParams())
        assert all(isinstance(e, MalformedResponse) and "wrong shape" in str(e) for e in info.value.errors.values())
        with pytest.raises(BatchRemoteError) as info:
            b.count_tokens(["abc"])
        assert isinstance(info.value.errors[0], MalformedResponse)
    assert b.stats.n_retries == 0  # a deterministic answer: not retried


def test_wrong_shape_json_among_good_answers():
    # a share of the answers is malformed: exactly those requests fail, the rest are right
    with ToyServer() as srv, FaultProxy(srv.port, FaultPlan(rate=0.3, seed=2, kinds=("wrong_shape",))) as proxy:
        b = OpenAIHTTPBackend("toy", base_url=proxy.url, **CLIENT)
        with pytest.raises(BatchRemoteError) as info:
            b.generate(CHATS, GenerationParams())
    err = info.value
    assert 0 < len(err.errors) == proxy.injected["wrong_shape"] < 32
    assert [g.text if g else None for g in err.results] == [
        None if i in err.errors else f"[0:0] question {i}" for i in range(32)]


def test_scoring_with_wrong_shape_answers_fails_per_pair():
    prefixes = [f"doc {i} " for i in range(4)]
    with ToyServer() as srv, FaultProxy(srv.port, FaultPlan(rate=0.0)) as proxy:
        b = OpenAIHTTPBackend("toy", base_url=proxy.url, **CLIENT)
        b.check_scoring()  # the probe sees a good server
        proxy.plan = FaultPlan(rate=1.0, kinds=("wrong_shape",), route="/v1/completions",
                               wrong_shape_bodies=(b'{"choices":[{"prompt_logprobs":[null,{"x":1}]}]}',
                                                   b'{"choices":[7]}'))
        with pytest.raises(BatchRemoteError) as info:
            b.score_matrix(prefixes, ["a"])
    errs = info.value.errors
    assert sorted(errs) == [0, 1, 2, 3]  # typed errors per pair, never an AttributeError/TypeError
    assert all(type(e) in (MalformedResponse, BackendError) for e in errs.values()), errs
    assert any(isinstance(e, MalformedResponse) for e in errs.values())
    assert all("wrong shape" in str(e) or "prompt log-probs" in str(e) for e in errs.values())


KEY = "sk-live-7QmZ4xY2pL9vR3tK8wN5bC1dF6gH0jS"


def _pieces(key: str, n: int = 8) -> list[str]:
    return [key[i:i + n] for i in range(len(key) - n + 1)]


def _leaks(texts, key: str = KEY) -> list[str]:
    return [t for t in texts if any(p in t for p in _pieces(key))]


def test_redact_before_cut_and_every_key_form():
    # a key straddling the 500-character cut of a server message: cut first would keep 28 characters
    msg = "x" * 472 + KEY + " more"
    assert KEY[:28] in msg[:500]
    assert _leaks([redact(msg, [KEY])]) == []
    assert _leaks([redact("key was " + KEY[:20], [KEY])]) == []  # a server that cut the key itself
    assert redact("Authorization: Bearer abcdefghijklmnop", []) == "Authorization: [redacted]"
    assert redact('{"authorization": "Basic dXNlcjpwYXNzd29yZA=="}', []) == '{"authorization": "[redacted]"}'
    assert redact("GET https://api.test/v1/x?key=AIzaSyA-12345&model=m", []) == \
        "GET https://api.test/v1/x?key=[redacted]&model=m"
    assert redact("http://user:hunter2pass@host:8000/v1", []) == "http://user:[redacted]@host:8000/v1"
    assert redact("token sk-proj-abcdefghijklmnopqrstu used", []) == "token [redacted] used"
    assert redact("nothing secret here: 12345678", [KEY]) == "nothing secret here: 12345678"


@pytest.mark.parametrize("status", [401, 500])
def test_keys_echoed_at_any_offset_never_leave_the_backend(monkeypatch, caplog, status):
    monkeypatch.setenv("HOSTILE_KEY", KEY)
    caplog.set_level(logging.DEBUG)
    plan = FaultPlan(rate=1.0, kinds=("echo_auth",), echo_status=status)
    with ToyServer() as srv, FaultProxy(srv.port, plan) as proxy:
        b = OpenAIHTTPBackend("toy", base_url=proxy.url, api_key_env="HOSTILE_KEY", max_retries=1,
                              endpoint_max_failures=1000, **{k: v for k, v in CLIENT.items() if k != "max_retries"})
        with pytest.raises(BatchRemoteError) as info:
            b.generate(CHATS[:len(plan.echo_offsets)], GenerationParams())
    assert proxy.n_echoed >= len(plan.echo_offsets)  # the key was echoed at every offset
    errs = list(info.value.errors.values())
    texts = [str(info.value), repr(info.value)] + [t for e in errs for t in (str(e), repr(e), e.server_message or "")]
    texts += [r.getMessage() for r in caplog.records]
    assert _leaks(texts) == [], _leaks(texts)[:1]
    assert any("[redacted]" in t for t in texts)


def test_key_in_url_is_never_shown(caplog):
    caplog.set_level(logging.DEBUG)
    secret = "hunter2-URL-password"
    url = refused_url().replace("http://", f"http://user:{secret}@")
    b = OpenAIHTTPBackend("toy", base_url=url, **CLIENT)
    with pytest.raises(BatchRemoteError) as info:
        b.generate(CHATS[:4], GenerationParams())
    texts = [str(info.value)] + [str(e) for e in info.value.errors.values()] + [r.getMessage() for r in caplog.records]
    texts += [str(b.info().extra), *b.endpoints]
    assert not any(secret in t for t in texts)
    assert re.search(r"user:\[redacted\]@127\.0\.0\.1", str(info.value.errors[0]))


def test_remote_error_type_is_kept():
    b = OpenAIHTTPBackend("toy", base_url=refused_url(), **CLIENT)
    with pytest.raises(BatchRemoteError) as info:
        b.generate(CHATS[:1], GenerationParams())
    assert isinstance(info.value.errors[0], RemoteError)
