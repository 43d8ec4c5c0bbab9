"""CompressionStep's cascade (issue 18.4): compress with the small arm, escalate when a run-time
signal (the compressor's own mean token log-prob, or the predictor's confidence) is below a
threshold, log which arm served each call and count it. Fake models with hand-computable
log-probs; once with the real SmolLM2 -> Gemma on the demo task (slow)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest

from compressbench.agent import CompressionLog, CompressionStep, predictor_confidence, report_log
from compressbench.agent.step import self_logprob
from compressbench.core.errors import UsageError
from compressbench.core.types import Generation, Sample, TokenLogprobs, Usage

TAGS = ("zqa", "zqb", "zqc", "zqd")
#: the fake compressor's per-token log-prob (nats) of its reply, by the tag in the prompt it replies to
SURE = {"zqa": -0.5, "zqb": -0.9, "zqc": -3.0, "zqd": -1.5}


def ctx(tag: str) -> str:
    return f"{tag} report of the quarter with numbers and names"


class ScoringWords:
    """A backend double that generates (the first ``keep`` words after "Text:") and scores: every
    token of a continuation gets the log-prob SURE[tag of the prefix] (one token per word);
    ``chat_prefix`` joins the chat's contents with "\\n" and appends "<assistant>"."""

    has_chat_template = True

    def __init__(self, name: str, keep: int):
        self.name, self.keep = name, keep
        self.generated: list[int] = []
        self.scored: list[tuple[str, str]] = []

    def generate(self, chats, params):
        self.generated.append(len(chats))
        out = []
        for chat in chats:
            text = "\n".join(m["content"] for m in chat)
            z = " ".join(text.split("Text:", 1)[1].split()[: self.keep])
            out.append(Generation(tuple(Sample(z, "stop", self.keep) for _ in range(params.n)),
                                  Usage(len(text.split()), self.keep * params.n)))
        return out

    def chat_prefix(self, chat) -> str:
        return "\n".join(m["content"] for m in chat) + "<assistant>"

    def score(self, prefixes: Sequence[str], continuations: Sequence[str]) -> list[TokenLogprobs]:
        self.scored += list(zip(prefixes, continuations))
        out = []
        for p, c in zip(prefixes, continuations):
            (tag,) = [t for t in TAGS if t in p]
            n = len(c.split())
            out.append(TokenLogprobs(tuple(range(n)), (SURE[tag],) * n))
        return out


def test_self_logprob_cascade_escalates_below_the_threshold_and_logs_the_serving_arm(tmp_path):
    log = CompressionLog(tmp_path / "log.jsonl")
    small, big = ScoringWords("small", keep=1), ScoringWords("big", keep=3)
    big_step = CompressionStep(big, name="big")
    step = CompressionStep(small, log=log, name="small", escalate_to=big_step, escalate_below=-1.0)
    assert big_step.log is log  # the next arm logs where the cascade logs
    res = step.batch([(ctx(t), "what changed?") for t in TAGS])
    # zqa (-0.5) and zqb (-0.9) clear -1.0: the small arm serves; zqc (-3.0) and zqd (-1.5) go to the big arm
    assert [r.arm for r in res] == ["small", "small", "big", "big"]
    assert [r.text for r in res] == ["zqa", "zqb", "zqc report of", "zqd report of"]
    assert [r.signal for r in res] == [-0.5, -0.9, None, None]  # the last arm serves without a test
    assert small.generated == [4] and big.generated == [2]  # only the escalated calls reached the big model
    # the signal is the small model's score of its own reply under its own chat prompt
    chats = [step.prompt.render_chat(context=ctx(t), question="what changed?") for t in TAGS]
    assert small.scored == [(small.chat_prefix(c), t) for c, t in zip(chats, TAGS)]
    assert big.scored == []  # the last arm is never tested
    assert step.cascade_counts == {"small": 2, "big": 2}
    rows = log.entries()
    assert [(r["compressor"], r["compression"]) for r in rows] == [("small", "zqa"), ("small", "zqb"),
                                                                   ("big", "zqc report of"), ("big", "zqd report of")]
    cas = [r["metadata"]["cascade"] for r in rows]
    assert [(c["arm"], c["arm_index"]) for c in cas] == [("small", 0), ("small", 0), ("big", 1), ("big", 1)]
    assert cas[3]["tried"][0] == {"arm": "small", "signal": -1.5}
    assert cas[0]["tried"] == [{"arm": "small", "signal": -0.5}] and cas[0]["discarded_usage"] == []
    assert cas[2]["tried"] == [{"arm": "small", "signal": -3.0}, {"arm": "big", "signal": None}]
    assert cas[0]["signal_kind"] == "self_logprob" and cas[0]["threshold"] == -1.0
    assert cas[2]["signal_kind"] is None and cas[2]["threshold"] is None  # the big arm's own (no test)
    words = len("\n".join(m["content"] for m in chats[2]).split())
    assert cas[2]["discarded_usage"] == [{"arm": "small", "n_prompt_tokens": words, "n_completion_tokens": 1,
                                          "n_calls": 1}]

    class Counter:  # counts words; MI is beside the point here
        def score_matrix(self, prefixes, continuations):
            return np.zeros((len(prefixes), len(continuations)))

        def count_tokens(self, texts):
            return [len(t.split()) for t in texts]

    reps = report_log(log, Counter())
    assert (reps["small"].n_served_in_cascade, reps["small"].n_escalated) == (2, 2)
    assert (reps["big"].n_served_in_cascade, reps["big"].n_escalated) == (2, 0)
    assert "cascade: served 2 calls, escalated 2" in reps["small"].summary()
    assert set(step.report(Counter())) == {"small", "big"}  # every arm in the step's report


def test_three_arms_samples_and_an_unknown_signal(tmp_path):
    log = CompressionLog(tmp_path / "log.jsonl")
    tiny, small, big = ScoringWords("tiny", 0), ScoringWords("small", 1), ScoringWords("big", 2)
    step = CompressionStep(tiny, log=log, name="tiny", escalate_below=-1.0,
                           escalate_to=CompressionStep(small, name="small", escalate_below=-1.0,
                                                       escalate_to=CompressionStep(big, name="big")))
    assert [a.name for a in step.arms()] == ["tiny", "small", "big"]
    res = step.batch([(ctx(t), "q") for t in TAGS[:3]], n=2)
    # tiny writes empty compressions: no token to score, an unknown (NaN) signal, which escalates;
    # small then serves zqa and zqb; zqc goes on to big
    assert [r.arm for r in res] == ["small", "small", "big"]
    assert [r.compressions for r in res] == [("zqa",) * 2, ("zqb",) * 2, ("zqc report",) * 2]
    assert tiny.scored == [] and (tiny.generated, small.generated, big.generated) == ([3], [3], [1])
    tried = [r["metadata"]["cascade"]["tried"] for r in log.entries() if r["metadata"]["sample"] == 0]
    assert all(math.isnan(t[0]["signal"]) for t in tried)
    assert [t[1] for t in tried] == [{"arm": "small", "signal": -0.5}, {"arm": "small", "signal": -0.9},
                                     {"arm": "small", "signal": -3.0}]
    assert len(log.entries()) == 6  # M = 2 lines per call, from the serving arm only
    assert step.cascade_counts == {"small": 2, "big": 1}


def test_self_logprob_averages_samples_and_per_token():
    b = ScoringWords("s", 2)
    from compressbench.core.prompts import load_prompt

    prompt = load_prompt("compress_query")
    got = self_logprob(b, prompt, [(ctx("zqa"), "q"), (ctx("zqc"), "q")], [["a b c", "a"], [""]])
    assert got[0] == pytest.approx(-0.5) and math.isnan(got[1])


class OptionPredictor:
    """A likelihood-predictor double: the total log-prob of option k is -(k + 1) when the
    compression holds "zqa", else 0 for every option; count_tokens counts words."""

    name = "opts"

    def score_matrix(self, prefixes, continuations):
        return np.array([[-(k + 1.0) if "zqa" in p else 0.0 for k in range(len(continuations))] for p in prefixes])

    def score(self, prefixes, continuations):  # pragma: no cover - only needed for open questions
        raise AssertionError("not used")

    def count_tokens(self, texts):
        return [len(t.split()) for t in texts]


def test_predictor_confidence_cascade(tmp_path):
    conf = predictor_confidence(OptionPredictor(), ["red", "green", "blue"])
    # softmax of (-1, -2, -3): the top probability is 1 / (1 + e^-1 + e^-2); flat logits give 1/3
    assert conf("", "q", "zqa is here") == pytest.approx(1 / (1 + math.exp(-1) + math.exp(-2)))
    assert conf("", "q", "nothing") == pytest.approx(1 / 3)
    log = CompressionLog(tmp_path / "log.jsonl")
    first = CompressionStep(lambda c, q: c.split()[0], log=log, name="first-word", signal=conf, escalate_below=0.5,
                            escalate_to=CompressionStep(lambda c, q: c, name="whole"))
    res = first.batch([(ctx("zqa"), "q"), (ctx("zqb"), "q")])
    assert [r.arm for r in res] == ["first-word", "whole"] and res[1].text == ctx("zqb")
    assert res[0].signal == pytest.approx(0.665, abs=1e-3)
    (meta0, meta1) = [r["metadata"]["cascade"] for r in log.entries()]
    assert meta0["signal_kind"] == "predictor_confidence" and meta1["tried"][0]["signal"] == pytest.approx(1 / 3)
    with pytest.raises(UsageError, match=">= 2 options"):
        predictor_confidence(OptionPredictor(), ["only"])("", "q", "z")


def test_cascade_usage_errors():
    big = CompressionStep(ScoringWords("big", 2), name="big")
    with pytest.raises(UsageError, match="both escalate_to"):
        CompressionStep(ScoringWords("s", 1), escalate_to=big)
    with pytest.raises(UsageError, match="both escalate_to"):
        CompressionStep(ScoringWords("s", 1), escalate_below=-1.0)
    with pytest.raises(UsageError, match="needs a compressor backend that can score"):
        CompressionStep(lambda c, q: c, escalate_to=big, escalate_below=-1.0)
    with pytest.raises(UsageError, match="distinct names"):
        CompressionStep(ScoringWords("big", 1), name="big", escalate_to=big, escalate_below=-1.0)
    with pytest.raises(UsageError, match="must be a CompressionStep"):
        CompressionStep(ScoringWords("s", 1), escalate_to=ScoringWords("b", 2), escalate_below=-1.0)
    with pytest.raises(UsageError, match="signal must be"):
        CompressionStep(ScoringWords("s", 1), escalate_to=big, escalate_below=-1.0, signal="confidence")


@pytest.mark.slow
def test_smollm2_escalates_to_gemma_on_the_demo_task(smollm2, gemma3, tmp_path):
    """The demo's task and models: SmolLM2-135M-Instruct compresses, Gemma-3-270M (a base model,
    prompted in plain text) takes the calls where SmolLM2's own mean token log-prob of its
    compression is below the median; the recorded signals are SmolLM2's score of its replies."""
    from compressbench.data.known_info import generate_known_info

    examples = generate_known_info(n_contexts=4, seed=0)
    pairs = [(e.context, e.question) for e in examples]
    alone = CompressionStep(smollm2, name="smol", max_new_tokens=32)
    plain = alone.batch(pairs)
    signals = self_logprob(smollm2, alone.prompt, pairs, [list(r.compressions) for r in plain])
    assert all(math.isfinite(s) and s < 0 for s in signals)
    threshold = float(np.median(signals))
    log = CompressionLog(tmp_path / "log.jsonl")
    step = CompressionStep(smollm2, name="smol", max_new_tokens=32, log=log, escalate_below=threshold,
                           escalate_to=CompressionStep(gemma3, name="gemma", max_new_tokens=32))
    res = step.batch(pairs)
    want = ["smol" if s >= threshold else "gemma" for s in signals]
    assert [r.arm for r in res] == want and "gemma" in want and "smol" in want
    for r, p, s in zip(res, plain, signals):
        if r.arm == "smol":  # greedy decoding: the same compression and the same signal as alone
            assert r.text == p.text and r.signal == pytest.approx(s, abs=1e-4)
        else:
            assert r.text and "\n" not in r.text  # Gemma's reply: its first line
    rows = log.entries()  # written arm by arm: the first arm's calls, then the escalated ones
    assert [r["compressor"] for r in rows] == sorted(want, key=lambda arm: arm != "smol")
    assert {r["context"]: r["compressor"] for r in rows} == {c: arm for (c, _), arm in zip(pairs, want)}
    esc = [r["metadata"]["cascade"] for r in rows if r["compressor"] == "gemma"]
    assert all(c["tried"][0]["arm"] == "smol" and c["tried"][0]["signal"] < threshold for c in esc)
    assert step.cascade_counts == {"smol": want.count("smol"), "gemma": want.count("gemma")}
