"""compressbench.agent.CompressionStep: compress, log with usage and cost, report per compressor."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
from collections.abc import Sequence

import numpy as np
import pytest

from compressbench.agent import CompressionLog, CompressionStep, context_id, report_log
from compressbench.core.errors import UsageError
from compressbench.core.types import Generation, ModelInfo, Sample, Usage

TAGS = ("zqa", "zqb", "zqc")


class ChannelScorer:
    """p(z | x) = 0.6 when the compression's first word is the tag the context holds, else 0.2;
    count_tokens counts words (as in tests/test_agent.py)."""

    name = "channel"

    @staticmethod
    def _tag(text: str) -> str:
        (found,) = [t for t in TAGS if t in text]
        return found

    def score_matrix(self, prefixes: Sequence[str], continuations: Sequence[str]) -> np.ndarray:
        return np.array([[math.log(0.6) if self._tag(p) == c.split()[0] else math.log(0.2) for c in continuations]
                         for p in prefixes])

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) for t in texts]


class WordBackend:
    """A generate-only backend double: the compression is the first ``keep`` words of the chat's
    text after "Text:"; usage counts words (prompt = all words of the chat, completion = kept words)."""

    name = "words"

    def __init__(self, keep: int = 3):
        self.keep = keep
        self.calls: list[int] = []

    def generate(self, chats, params):
        self.calls.append(len(chats))
        out = []
        for chat in chats:
            text = "\n".join(m["content"] for m in chat)
            body = text.split("Text:", 1)[1].split()
            z = " ".join(body[: self.keep])
            out.append(Generation(tuple(Sample(z, "stop", self.keep) for _ in range(params.n)),
                                  Usage(len(text.split()), self.keep * params.n)))
        return out

    def info(self):
        return ModelInfo(reference="words-1m", n_params=1_000_000, n_layers=4, d_model=64, n_heads=4, head_dim=16)


def ctx(tag: str, extra: str = "") -> str:
    return f"{tag} report of the quarter with numbers and names {extra}".strip()


def test_backend_step_logs_triples_with_usage_flops_and_dollars(tmp_path):
    log = CompressionLog(tmp_path / "log.jsonl")
    backend = WordBackend(keep=3)
    step = CompressionStep(backend, log=log, name="w3", paid_api=True, price="gpt-4o")
    z = step(ctx("zqa"), "what changed?")
    assert z == "zqa report of"
    rows = log.entries()
    assert len(rows) == 1 and rows[0]["compressor"] == "w3" and rows[0]["compression"] == z
    meta = rows[0]["metadata"]
    chat_words = sum(len(m["content"].split()) for m in step.prompt.render_chat(context=ctx("zqa"),
                                                                                 question="what changed?"))
    assert meta["usage"] == {"n_prompt_tokens": chat_words, "n_completion_tokens": 3, "n_calls": 1}
    # FLOPs by hand: N = 1e6, L = 4, d_attn = 64; position t costs 2N + 4 L t d_attn (cost.py), summed
    # over the P prompt positions and the G = 3 generated positions that follow.
    p, g = chat_words, 3
    expected = sum(2e6 + 4 * 4 * t * 64 for t in range(1, p + g + 1))
    assert meta["flops"] == pytest.approx(expected)
    assert meta["api_usd"] == pytest.approx((p * 2.50 + g * 10.00) / 1e6)  # GPT-4o list prices
    assert meta["sample"] == 0 and meta["n_samples"] == 1 and meta["latency_s"] >= 0


def test_batch_is_one_call_and_samples_become_m(tmp_path):
    log = CompressionLog(tmp_path / "log.jsonl")
    backend = WordBackend(keep=2)
    step = CompressionStep(backend, log=log, name="w2")
    res = step.batch([(ctx(t), "q") for t in TAGS], n=2)
    assert backend.calls == [3]  # one batched generate for three contexts
    assert [r.compressions for r in res] == [(f"{t} report",) * 2 for t in TAGS]
    assert [r.context_id for r in res] == [context_id(ctx(t), "q") for t in TAGS]
    sel = log.select()["w2"]
    assert sel.n_samples == 2 and sel.n_contexts == 3
    # request-level usage sits on the sample-0 line only, so sums count each request once
    metas = [r["metadata"] for r in log.entries()]
    assert [("usage" in m) for m in metas] == [True, False] * 3
    assert step.samples(ctx("zqa"), "q", 3) == ["zqa report"] * 3


def test_callable_compressor_runs_in_parallel_and_async(tmp_path):
    barrier = threading.Barrier(3, timeout=20)

    def first_word(context: str, query: str) -> str:
        barrier.wait()  # all three calls must be in flight at once, or this raises BrokenBarrierError
        return context.split()[0]

    log = CompressionLog(tmp_path / "log.jsonl")
    step = CompressionStep(first_word, log=log)
    res = step.batch([(ctx(t), "q") for t in TAGS])
    assert [r.text for r in res] == list(TAGS) and step.name == "first_word"
    assert res[0].usage == {"n_prompt_tokens": None, "n_completion_tokens": None, "n_calls": 1}  # unknown, not 0
    assert res[0].flops is None

    seq = CompressionStep(lambda c, q: c.split()[1], log=log, name="second")

    async def main():
        one = await seq.astep(ctx("zqb"), "q")
        many = await seq.abatch([(ctx("zqa"), "q"), (ctx("zqc"), "q")])
        return one, [r.text for r in many]

    assert asyncio.run(main()) == ("report", ["report", "report"])
    assert [r["compressor"] for r in log.entries()] == ["first_word"] * 3 + ["second"] * 3


def test_a_failing_log_never_breaks_the_agent(tmp_path, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    step = CompressionStep(lambda c, q: "summary", log=CompressionLog(blocker / "log.jsonl"), name="s")
    with caplog.at_level(logging.WARNING, logger="compressbench.agent.step"):
        assert step("context", "q") == "summary"
        assert step.batch([("a", "q"), ("b", "q")])[1].text == "summary"
    assert step.n_log_failures == 3
    assert "could not log a compression" in caplog.text and "the agent goes on" in caplog.text
    # metadata JSON cannot hold: also survived
    bad = CompressionStep(lambda c, q: "z", log=CompressionLog(tmp_path / "ok.jsonl"), name="s")
    bad.info = ModelInfo(reference="x")  # FLOPs unknown -> None, still fine
    assert bad("c", "q") == "z" and bad.n_log_failures == 0


def test_compressor_errors_propagate_and_bad_arguments_are_refused(tmp_path):
    def broken(c, q):
        raise RuntimeError("model down")

    with pytest.raises(RuntimeError, match="model down"):
        CompressionStep(broken)("c", "q")
    with pytest.raises(UsageError, match="backend .* or a callable"):
        CompressionStep(42)
    with pytest.raises(UsageError, match="list of \\(context, query\\) pairs"):
        CompressionStep(lambda c, q: c).batch(("c", "q"))
    with pytest.raises(UsageError, match="must be strings"):
        CompressionStep(lambda c, q: c).batch([("c", 3)])
    with pytest.raises(UsageError, match="returned int"):
        CompressionStep(lambda c, q: 3)("c", "q")
    with pytest.raises(UsageError, match="no price entry 'gpt-99'"):
        CompressionStep(WordBackend(), paid_api=True, price="gpt-99")
    with pytest.raises(UsageError, match="paid_api=True needs a price"):
        CompressionStep(WordBackend(), paid_api=True)
    with pytest.raises(UsageError, match="must use \\{context\\}"):
        CompressionStep(WordBackend(), prompt="predict")


def test_report_per_compressor_against_hand_values(tmp_path):
    log = CompressionLog(tmp_path / "log.jsonl")
    good = CompressionStep(WordBackend(keep=2), log=log, name="good")
    const = CompressionStep(lambda c, q: "zqa constant", log=log, name="const")
    items = [(ctx(t, f"#{k}"), "q") for k in range(2) for t in TAGS]
    good.batch(items)
    const.batch(items)
    reps = report_log(log, ChannelScorer(), predictor_price="gpt-4o", n_boot=0)
    assert set(reps) == {"good", "const"}
    # MI: exactly CompressionLog.estimate (6 contexts, 2 per tag: every term log(0.6 / 0.3333)).
    assert reps["good"].mi.bits == pytest.approx(math.log2(1.8), abs=1e-12)
    assert reps["const"].mi.bits == 0.0
    # tokens saved: context words minus compression words, summed over the six compressions
    ctx_words = sum(len(c.split()) for c, _ in items)
    assert reps["good"].predictor_tokens_saved == ctx_words - 6 * 2
    assert reps["const"].predictor_tokens_saved == ctx_words - 6 * 2
    assert reps["good"].predictor_usd_saved == pytest.approx((ctx_words - 12) * 2.50 / 1e6)
    assert reps["good"].compressor_completion_tokens == 12 and reps["good"].compressor_n_calls == 6
    assert reps["good"].compressor_flops is not None and reps["good"].compressor_api_usd is None  # local
    assert reps["const"].compressor_prompt_tokens is None and reps["const"].compressor_flops is None  # unknown
    assert reps["good"].mean_compression_tokens == 2.0
    line = reps["good"].summary()
    assert "bits" in line and "predictor tokens saved" in line and "gpt-4o" in line
    only = good.report(ChannelScorer(), n_boot=0)
    assert set(only) == {"good"} and only["good"].mi.bits == reps["good"].mi.bits
    with pytest.raises(UsageError, match="no log"):
        CompressionStep(lambda c, q: c).report(ChannelScorer())
    assert json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])["compressor"] == "good"
