"""OpenAIHTTPBackend against a real local HTTP server (tests/servers/toy_openai.py, real sockets on
127.0.0.1) and against httpx's MockTransport for exact status/header sequences.

Expected log-probs come from the toy server's model evaluated directly in the test (and, for one
value, from the formula by hand), never from the client code under test.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math

import httpx
import numpy as np
import pytest
from servers.toy_openai import ToyConfig, ToyModel, ToyServer

from compressbench.backends import load_backend
from compressbench.backends.openai_http import OpenAIHTTPBackend
from compressbench.backends.transport import RetryPolicy, parse_retry_after
from compressbench.core.errors import BatchRemoteError, ContextTooLong, RemoteError, ScoringUnsupported, UsageError
from compressbench.core.types import GenerationParams, Usage

pytestmark = pytest.mark.timeout(120)

MODEL = ToyModel()
FAST = dict(backoff_initial_s=0.001, backoff_max_s=0.01, jitter_seed=0)


def expected_logprobs(prefix: str, cont: str) -> list[float]:
    """Direct evaluation: prefix bytes after BOS, continuation bytes appended (no BOS)."""
    ids = [ToyModel.BOS] + list(prefix.encode()) + list(cont.encode())
    start = 1 + len(prefix.encode())
    return [MODEL.logprob(ids[:k], ids[k]) for k in range(start, len(ids))]


@pytest.fixture()
def server():
    with ToyServer() as srv:
        yield srv


def test_toy_model_logprob_by_hand():
    # log p('c'=99 | [BOS, 'a', 'b']): prev = 98, pos = 3.
    logits = np.array([((7 * 98 + 13 * v + 5 * 3) % 23) / 4 + ((98 * v) % 7) / 5 for v in range(257)])
    by_hand = logits[99] - (logits.max() + math.log(np.exp(logits - logits.max()).sum()))
    assert expected_logprobs("ab", "c")[0] == pytest.approx(by_hand, abs=1e-12)


@pytest.mark.parametrize(
    ("caps", "mode"),
    [
        (dict(), "completions"),
        (dict(prompt_logprobs=False), "completions-echo"),
        (dict(prompt_logprobs=False, echo=False), "sglang"),
    ],
)
def test_score_each_path_matches_model(caps, mode):
    prefixes = ["The text: ab", "The text: ab", "Zürich ", "q"]
    conts = [" summary", "x", "ünï", " "]
    with ToyServer(ToyConfig(**caps)) as srv:
        b = OpenAIHTTPBackend("toy", base_url=srv.url)
        assert b.check_scoring() == mode
        got = b.score(prefixes, conts)
    for tl, p, c in zip(got, prefixes, conts):
        assert tl.token_ids == tuple(c.encode())
        np.testing.assert_allclose(tl.logprobs_nats, expected_logprobs(p, c), rtol=0, atol=1e-12)


def test_tokenisation_contract_on_the_wire(server):
    b = OpenAIHTTPBackend("toy", base_url=server.url)
    b.score(["ab"], ["cd"])
    tok = [body for path, body in server.log if path == "/tokenize" and body["prompt"] in ("ab", "cd")]
    assert {(t["prompt"], t["add_special_tokens"]) for t in tok} == {("ab", True), ("cd", False)}
    sent = [body["prompt"] for path, body in server.log if path == "/v1/completions"][-1]
    assert sent == [ToyModel.BOS, 97, 98, 99, 100]


def test_score_matrix_equals_pairs_and_tokenises_once(server):
    prefixes = [f"context {i}: " + "abc" * i for i in range(4)]
    conts = ["z1", "summary two", "ok"]
    b = OpenAIHTTPBackend("toy", base_url=server.url, max_concurrency=4)
    b.check_scoring()
    n_before = len(server.log)
    m = b.score_matrix(prefixes, conts)
    new = server.log[n_before:]
    assert sum(1 for p, _ in new if p == "/tokenize") == len(prefixes) + len(conts)
    assert sum(1 for p, _ in new if p == "/v1/completions") == len(prefixes) * len(conts)
    expect = np.array([[math.fsum(expected_logprobs(p, c)) for c in conts] for p in prefixes])
    np.testing.assert_allclose(m, expect, rtol=0, atol=1e-9)
    flat = b.score([p for p in prefixes for _ in conts], [c for _ in prefixes for c in conts])
    np.testing.assert_allclose(m.ravel(), [t.total_nats for t in flat], rtol=0, atol=0)


def test_empty_continuation_and_empty_batches(server):
    b = OpenAIHTTPBackend("toy", base_url=server.url)
    assert b.score([], []) == []
    assert b.score_matrix(["a"], []).shape == (1, 0)
    tl = b.score(["abc"], [""])[0]
    assert tl.token_ids == () and tl.total_nats == 0.0


def test_generate_order_samples_usage():
    chats = [[{"role": "system", "content": "be brief"}, {"role": "user", "content": f"question {i}"}]
             for i in range(7)]
    with ToyServer() as srv:
        b = OpenAIHTTPBackend("toy", base_url=srv.url, max_concurrency=3)
        gens = b.generate(chats, GenerationParams(n=3, seed=11, max_new_tokens=64))
        sent = [body for p, body in srv.log if p == "/v1/chat/completions"]
    assert [g.samples[0].text for g in gens] == [f"[0:11] question {i}" for i in range(7)]
    assert [s.text for s in gens[2].samples] == ["[0:11] question 2", "[1:11] question 2", "[2:11] question 2"]
    assert gens[0].usage == Usage(len("be brief") + len("question 0"), 3 * len("[0:11] question 0"))
    assert all(b_["n"] == 3 and b_["seed"] == 11 and b_["max_tokens"] == 64 for b_ in sent)
    # max_new_tokens truncation reports finish_reason "length"
    with ToyServer() as srv:
        g = OpenAIHTTPBackend("toy", base_url=srv.url).generate(chats[:1], GenerationParams(max_new_tokens=4))[0]
    assert g.samples[0].text == "[0:0" and g.samples[0].finish_reason == "length"
    assert g.samples[0].n_tokens == 4


def test_missing_usage_is_unknown_not_zero():
    with ToyServer(ToyConfig(omit_usage=True)) as srv:
        g = OpenAIHTTPBackend("toy", base_url=srv.url).generate(
            [[{"role": "user", "content": "hi"}]], GenerationParams())[0]
    assert g.usage == Usage(None, None)
    assert g.samples[0].n_tokens is None


def test_chat_only_server_is_rejected_as_scorer_early_but_generates():
    cfg = ToyConfig(tokenize=False, prompt_logprobs=False, echo=False, sglang=False)
    with ToyServer(cfg) as srv:
        b = OpenAIHTTPBackend("toy", base_url=srv.url)
        with pytest.raises(ScoringUnsupported, match="tokenize"):
            b.score_matrix(["a", "b"], ["c"])
        assert "/v1/completions" not in srv.paths()
        assert b.generate([[{"role": "user", "content": "hi"}]], GenerationParams())[0].text == "[0:0] hi"


def test_server_without_prompt_logprobs_is_rejected_as_scorer():
    with ToyServer(ToyConfig(prompt_logprobs=False, echo=False, sglang=False)) as srv:
        b = OpenAIHTTPBackend("toy", base_url=srv.url)
        with pytest.raises(ScoringUnsupported, match="cannot return prompt log-probs"):
            b.check_scoring()
        with pytest.raises(ScoringUnsupported):
            b.score(["a"], ["b"])


def test_scoring_none_fails_without_any_request(server):
    b = OpenAIHTTPBackend("toy", base_url=server.url, scoring="none")
    with pytest.raises(ScoringUnsupported, match="generation only"):
        b.score(["a"], ["b"])
    assert server.log == []


def test_context_too_long_before_scoring_requests():
    with ToyServer(ToyConfig(max_model_len=40)) as srv:
        b = OpenAIHTTPBackend("toy", base_url=srv.url)
        with pytest.raises(ContextTooLong, match="max_model_len=40"):
            b.score(["x" * 30], ["y" * 20])
        assert sum(1 for p in srv.paths() if p == "/v1/completions") == 1  # the capability probe only


def test_routing_sticks_to_prefix_and_fails_over():
    prefixes = [f"document number {i}" for i in range(16)]
    conts = ["a", "bb", "ccc"]
    with ToyServer() as s1, ToyServer() as s2:
        b = OpenAIHTTPBackend("toy", endpoints=[s1.url, s2.url], endpoint_max_failures=1,
                              endpoint_cooldown_s=600, max_retries=4, **FAST)
        b.score_matrix(prefixes, conts)
        pair_text = {p + c: p for p in prefixes for c in conts}
        owner: dict[str, set[int]] = {}
        for k, srv in enumerate((s1, s2)):
            for path, body in srv.log:
                text = bytes(body["prompt"][1:]).decode() if path == "/v1/completions" else None
                if text in pair_text:
                    owner.setdefault(pair_text[text], set()).add(k)
        assert len(owner) == len(prefixes)
        assert all(len(v) == 1 for v in owner.values())  # every prefix went to one endpoint only
        assert {k for v in owner.values() for k in v} == {0, 1}  # and both endpoints got work
        for p in prefixes:
            assert b.route(p) in b.endpoints
        s2.stop()
        m = b.score_matrix(prefixes, conts)
    expect = np.array([[math.fsum(expected_logprobs(p, c)) for c in conts] for p in prefixes])
    np.testing.assert_allclose(m, expect, atol=1e-9)
    assert b.endpoints_in_service() == [b.endpoints[0]]
    assert b.stats.retry_reasons["connection"] >= 1
    assert b.stats.n_failed == 0


def test_load_backend_builds_it(server):
    b = load_backend("openai", "toy", base_url=server.url, scoring="sglang")
    assert isinstance(b, OpenAIHTTPBackend)
    np.testing.assert_allclose(b.score(["ab"], ["c"])[0].logprobs_nats, expected_logprobs("ab", "c"))


def test_works_inside_a_running_event_loop(server):
    b = OpenAIHTTPBackend("toy", base_url=server.url)

    async def agent_step():
        return b.score(["ab"], ["cd"])

    got = asyncio.run(agent_step())
    np.testing.assert_allclose(got[0].logprobs_nats, expected_logprobs("ab", "cd"))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(), "base_url"),
        (dict(base_url="127.0.0.1:8000"), "http://"),
        (dict(base_url="http://x", scoring="maybe"), "scoring"),
        (dict(base_url="http://x", max_concurrency=0), "max_concurrency"),
        (dict(base_url="http://x", max_retries=-1), "max_retries"),
    ],
)
def test_bad_configuration_is_a_usage_error(kwargs, match):
    with pytest.raises(UsageError, match=match):
        OpenAIHTTPBackend("toy", **kwargs)


def test_bad_inputs_are_usage_errors(server):
    b = OpenAIHTTPBackend("toy", base_url=server.url)
    with pytest.raises(UsageError, match="2 prefixes and 1 continuations"):
        b.score(["a", "b"], ["c"])
    with pytest.raises(UsageError):
        b.generate("hello", GenerationParams())  # type: ignore[arg-type]


# ---- exact retry behaviour with an injected transport ---------------------------------------

class Script:
    """An httpx MockTransport handler answering from a list of (status, headers, body) in order."""

    def __init__(self, replies):
        self.replies = list(replies)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        status, headers, body = self.replies.pop(0)
        if isinstance(body, Exception):
            raise body
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.Response(status, headers=headers, content=content)


CHAT_OK = {"choices": [{"index": 0, "message": {"content": "fine"}, "finish_reason": "stop"}],
           "usage": {"prompt_tokens": 3, "completion_tokens": 1}}
ONE_CHAT = [[{"role": "user", "content": "hi"}]]


def _backend(script: Script, **kw) -> OpenAIHTTPBackend:
    return OpenAIHTTPBackend("m", base_url="http://api.test/v1", transport=httpx.MockTransport(script),
                             **{**FAST, **kw})


def test_retry_after_is_honoured():
    script = Script([(429, {"Retry-After": "1"}, {"error": {"message": "slow down"}}), (200, {}, CHAT_OK)])
    b = _backend(script)
    assert b.generate(ONE_CHAT, GenerationParams())[0].text == "fine"
    assert b.stats.n_retries == 1 and b.stats.retry_reasons["http_429"] == 1
    assert b.stats.retry_delays_s[0] >= 1.0  # Retry-After beats the 1 ms backoff


def test_5xx_timeouts_and_bad_json_are_retried_then_succeed():
    req = httpx.Request("POST", "http://api.test/v1/chat/completions")
    script = Script([
        (500, {}, {"error": {"message": "boom"}}),
        (503, {}, b"overloaded"),
        (200, {}, httpx.ReadTimeout("slow", request=req)),
        (200, {}, httpx.ConnectError("refused", request=req)),
        (200, {}, b'{"choices": [{"ind'),
        (200, {}, CHAT_OK),
    ])
    b = _backend(script, max_retries=5)
    assert b.generate(ONE_CHAT, GenerationParams())[0].text == "fine"
    assert b.stats.n_retries == 5 and len(script.requests) == 6
    assert b.stats.retry_reasons == {"http_500": 1, "http_503": 1, "timeout": 1, "connection": 1, "bad_json": 1}


def test_retries_are_bounded_and_final_error_has_status_and_message():
    script = Script([(503, {}, {"error": {"message": "engine overloaded"}})] * 3)
    b = _backend(script, max_retries=2)
    with pytest.raises(RemoteError) as info:
        b.generate(ONE_CHAT, GenerationParams())
    assert len(script.requests) == 3
    assert info.value.status == 503 and "engine overloaded" in info.value.server_message
    assert "3 attempts" in str(info.value)


def test_other_4xx_are_not_retried():
    script = Script([(400, {}, {"error": {"message": "temperature must be <= 2"}})])
    b = _backend(script)
    with pytest.raises(RemoteError) as info:
        b.generate(ONE_CHAT, GenerationParams())
    assert len(script.requests) == 1 and info.value.status == 400
    assert "temperature must be <= 2" in str(info.value)


def test_backoff_is_exponential_with_bounded_jitter():
    import random

    pol = RetryPolicy(max_retries=5, backoff_initial_s=1.0, backoff_max_s=8.0)
    rng = random.Random(0)
    for attempt, base in enumerate([1.0, 2.0, 4.0, 8.0, 8.0]):
        d = pol.delay_s(attempt, None, rng)
        assert base / 2 <= d <= base
    assert pol.delay_s(0, 50.0, rng) == 50.0
    assert RetryPolicy(retry_after_max_s=5.0).delay_s(0, 500.0, rng) == 5.0


def test_parse_retry_after_forms():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == pytest.approx(10.0)


def test_api_key_never_appears_in_errors_or_logs(monkeypatch, caplog):
    key = "sk-test-SECRET-0123456789abcdef"
    monkeypatch.setenv("TOY_KEY", key)
    caplog.set_level(logging.DEBUG)
    with ToyServer(ToyConfig(api_key="sk-other-key-right")) as srv:
        b = OpenAIHTTPBackend("toy", base_url=srv.url, api_key_env="TOY_KEY", **FAST)
        with pytest.raises(RemoteError) as info:
            b.generate(ONE_CHAT, GenerationParams())
        with pytest.raises(ScoringUnsupported) as info2:
            b.score(["a"], ["b"])
    err = info.value
    assert err.status == 401 and "Incorrect API key provided" in err.server_message
    texts = [str(err), repr(err), err.server_message, str(info2.value), repr(info2.value),
             str(info2.value.__cause__)] + [r.getMessage() for r in caplog.records]
    assert texts and not any(key in t for t in texts)
    assert any("[redacted]" in t for t in texts)  # the server did echo it; we removed it


def test_api_key_is_sent_when_set(monkeypatch):
    monkeypatch.setenv("TOY_KEY", "sk-right")
    with ToyServer(ToyConfig(api_key="sk-right")) as srv:
        b = OpenAIHTTPBackend("toy", base_url=srv.url, api_key_env="TOY_KEY")
        assert b.generate(ONE_CHAT, GenerationParams())[0].text == "[0:0] hi"


def test_per_request_errors_in_a_batch_are_reported_by_index():
    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        text = body["messages"][-1]["content"]
        if "POISON" in text:
            return httpx.Response(500, json={"error": {"message": f"cannot serve {text}"}})
        return httpx.Response(200, json={"choices": [{"index": 0, "message": {"content": text.upper()},
                                                      "finish_reason": "stop"}]})

    chats = [[{"role": "user", "content": ("POISON " if i in (1, 4) else "") + f"q{i}"}] for i in range(6)]
    b = OpenAIHTTPBackend("m", base_url="http://api.test", transport=httpx.MockTransport(handler),
                          max_retries=2, **FAST)
    with pytest.raises(BatchRemoteError) as info:
        b.generate(chats, GenerationParams())
    err = info.value
    assert sorted(err.errors) == [1, 4] and "indices 1, 4" in str(err)
    assert err.errors[1].status == 500 and "cannot serve POISON q1" in err.errors[1].server_message
    assert [r.text if r else None for r in err.results] == ["Q0", None, "Q2", "Q3", None, "Q5"]
    assert b.stats.n_failed == 2 and b.stats.n_retries == 4
