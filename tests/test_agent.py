"""compressbench.agent.log: the append-only compression log and MI estimates from it."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import threading
from collections.abc import Sequence

import numpy as np
import pytest

from compressbench.agent import CompressionLog, context_id, estimate_online
from compressbench.core.errors import DataError, UsageError
from compressbench.measure.scoring import score_mi
from compressbench.core.types import Example

# --------------------------------------------------------------------------- a hand-computable scorer

TAGS = ("zqa", "zqb", "zqc")


class ChannelScorer:
    """A fake scorer with a known channel over three tags.

    The scoring prefix holds the context; the context's tag is the one of TAGS it contains.
    A compression's tag is its first word. p(z | x) = 0.6 when the tags match, else 0.2 (a proper
    distribution over the three tags). ``count_tokens`` counts words.
    """

    name = "channel"

    def __init__(self) -> None:
        self.calls = 0

    @staticmethod
    def _tag(text: str) -> str:
        found = [t for t in TAGS if t in text]
        assert len(found) == 1, text
        return found[0]

    def score_matrix(self, prefixes: Sequence[str], continuations: Sequence[str]) -> np.ndarray:
        self.calls += 1
        return np.array([[math.log(0.6) if self._tag(p) == c.split()[0] else math.log(0.2)
                          for c in continuations] for p in prefixes])

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) for t in texts]


def ctx(tag: str) -> str:
    return f"Report {tag}: the numbers of the quarter."


Q = "What changed?"


# --------------------------------------------------------------------------- recording


def test_record_round_trip_and_line_format(tmp_path):
    path = tmp_path / "sub" / "log.jsonl"
    with CompressionLog(path) as log:
        assert log.entries() == []
        cid = log.record("ctx one", "q?", "z1", compressor="c1", example_id="ex-1", metadata={"step": 3})
        log.record("ctx two ü", "q?", "z2")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2
    rows = [json.loads(x) for x in lines]
    assert rows == log.entries()
    assert rows[0]["id"] == cid
    assert {k: rows[0][k] for k in ("v", "compressor", "example_id", "context", "query", "compression",
                                   "metadata")} == {
        "v": 1, "compressor": "c1", "example_id": "ex-1", "context": "ctx one", "query": "q?",
        "compression": "z1", "metadata": {"step": 3}}
    assert rows[1]["compressor"] == "default" and rows[1]["example_id"] is None
    assert rows[1]["context"] == "ctx two ü"
    assert isinstance(rows[0]["time_unix_s"], float)
    # A closed log reopens for appending.
    log.record("ctx three", "q?", "z3")
    log.close()
    assert [r["compression"] for r in CompressionLog(path).entries()] == ["z1", "z2", "z3"]


def test_ids_group_repeated_contexts(tmp_path):
    import hashlib

    log = CompressionLog(tmp_path / "log.jsonl")
    a1 = log.record("alpha", "q", "s1")
    b = log.record("beta", "q", "s1")
    a2 = log.record("alpha", "q", "s2", compressor="other")
    a_other_q = log.record("alpha", "another q", "s3")
    log.close()
    assert a1 == a2 != b
    assert a_other_q != a1  # the query is part of the scoring prefix, so part of the id
    # Independent expectation: SHA-256 of the JSON list [context, query], first 16 hex digits.
    assert a1 == hashlib.sha256(b'["alpha","q"]').hexdigest()[:16] == context_id("alpha", "q")
    # context_id must not confuse the boundary between context and query.
    assert context_id("ab", "c") != context_id("a", "bc")


def test_torn_last_line_is_tolerated_and_appends_continue(tmp_path):
    path = tmp_path / "log.jsonl"
    log = CompressionLog(path)
    for k in range(3):
        log.record(f"ctx {k}", "q", f"z{k}")
    log.close()
    good = path.read_bytes()
    # Simulate a crash mid-write: half of a fourth line, no newline.
    half = (json.dumps({"v": 1, "id": "x", "compressor": "default", "context": "c"})[:25]).encode()
    path.write_bytes(good + half)

    log2 = CompressionLog(path)
    assert [r["compression"] for r in log2.entries()] == ["z0", "z1", "z2"]
    log2.record("ctx 3", "q", "z3")
    log2.close()
    data = path.read_bytes()
    assert data.startswith(good) and half not in data
    assert [json.loads(x)["compression"] for x in data.decode().splitlines()] == ["z0", "z1", "z2", "z3"]
    assert [r["compression"] for r in CompressionLog(path).entries()] == ["z0", "z1", "z2", "z3"]


def test_concurrent_records_lose_and_duplicate_nothing(tmp_path):
    path = tmp_path / "log.jsonl"
    log = CompressionLog(path)
    n_threads, per_thread = 8, 40
    barrier = threading.Barrier(n_threads)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            barrier.wait()
            for k in range(per_thread):
                log.record(f"context of thread {t} " + "x" * 500, "q", f"{t}:{k}", metadata={"t": t, "k": k})
        except BaseException as exc:  # noqa: BLE001 - surfaced in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    log.close()
    assert errors == []
    raw = path.read_text(encoding="utf-8").splitlines()
    assert len(raw) == n_threads * per_thread
    got = sorted(json.loads(x)["compression"] for x in raw)  # every line is whole JSON
    assert got == sorted(f"{t}:{k}" for t in range(n_threads) for k in range(per_thread))
    # Each thread's own lines keep its order.
    for t in range(n_threads):
        mine = [r["metadata"]["k"] for r in log.entries() if r["metadata"]["t"] == t]
        assert mine == list(range(per_thread))


def test_recording_imports_nothing_heavy(tmp_path):
    code = (
        "import sys\n"
        "from compressbench.agent import CompressionLog\n"
        f"CompressionLog({str(tmp_path / 'l.jsonl')!r}).record('c', 'q', 'z')\n"
        "heavy = [m for m in ('torch', 'transformers', 'scipy', 'matplotlib', 'pandas') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize("kwargs, pattern", [
    ({"context": 1, "query": "q", "compression": "z"}, "context must be a string"),
    ({"context": "c", "query": None, "compression": "z"}, "query must be a string"),
    ({"context": "c", "query": "q", "compression": ["z"]}, "compression must be a string"),
    ({"context": "c", "query": "q", "compression": "z", "compressor": " "}, "compressor must be a non-empty"),
    ({"context": "c", "query": "q", "compression": "z", "example_id": 3}, "example_id must be a string"),
    ({"context": "c", "query": "q", "compression": "z", "metadata": [1]}, "metadata must be a mapping"),
    ({"context": "c", "query": "q", "compression": "z", "metadata": {"x": object()}}, "JSON-serialisable"),
])
def test_bad_records_are_refused_and_nothing_is_written(tmp_path, kwargs, pattern):
    path = tmp_path / "log.jsonl"
    log = CompressionLog(path)
    with pytest.raises(UsageError, match=pattern):
        log.record(**kwargs)
    log.record("c", "q", "z")  # the log still works
    log.close()
    assert len(path.read_text().splitlines()) == 1


def test_a_folder_path_and_a_foreign_file_are_refused(tmp_path):
    with pytest.raises(UsageError, match="is a folder"):
        CompressionLog(tmp_path)
    other = tmp_path / "records.jsonl"
    other.write_text('{"cell_key": "a", "example_id": "b"}\n')
    with pytest.raises(DataError, match="not a compression-log line"):
        CompressionLog(other).entries()


# --------------------------------------------------------------------------- estimating


def _hand_bits(terms_nats: list[float]) -> float:
    return sum(terms_nats) / len(terms_nats) / math.log(2)


def test_estimate_with_the_channel_scorer_matches_a_hand_computation(tmp_path):
    log = CompressionLog(tmp_path / "log.jsonl")
    # M = 2 per context; one compression of "zqb" carries the wrong tag.
    plan = {"zqa": ["zqa short", "zqa a b c"], "zqb": ["zqb x", "zqc y"], "zqc": ["zqc", "zqc p q"]}
    for tag, zs in plan.items():
        for z in zs:
            log.record(ctx(tag), Q, z)
    scorer = ChannelScorer()
    est = log.estimate(scorer, n_boot=0)["default"]
    # Matching term: log 0.6 - log((0.6 + 0.2 + 0.2) / 3) = log 1.8; the mismatch: log 0.2 - log(1/3) = log 0.6.
    expected = _hand_bits([math.log(1.8)] * 5 + [math.log(0.6)])
    assert est.bits == pytest.approx(expected, abs=1e-12)
    assert (est.n_contexts, est.n_samples) == (3, 2)
    assert est.ceiling_bits == pytest.approx(math.log2(3))
    np.testing.assert_allclose(est.pointwise_bits, [[math.log2(1.8)] * 2, [math.log2(1.8), math.log2(0.6)],
                                                    [math.log2(1.8)] * 2], atol=1e-12)
    assert est.mean_tokens == pytest.approx((2 + 4 + 2 + 2 + 1 + 3) / 6)
    assert scorer.calls == 1  # one score_matrix call for the whole tensor


def test_estimate_online_with_the_channel_scorer(tmp_path):
    est = estimate_online(ChannelScorer(), [ctx("zqa"), ctx("zqb")], [Q, Q], [["zqa"], ["zqa"]], n_boot=0)
    # Two contexts, the channel restricted to them: p(zqa | a) = 0.6, p(zqa | b) = 0.2.
    expected = _hand_bits([math.log(0.6) - math.log(0.4), math.log(0.2) - math.log(0.4)])
    assert est.bits_raw == pytest.approx(expected, abs=1e-12)
    assert est.bits == pytest.approx(max(expected, 0.0))


def test_unequal_samples_use_the_most_common_m(tmp_path, caplog):
    log = CompressionLog(tmp_path / "log.jsonl")
    counts = {"zqa": 2, "zqb": 3, "zqc": 1}
    extra = {"zqa": 2, "zqb": 2}  # a fourth and fifth context with M = 2 (tags reused, new text)
    for tag, m in counts.items():
        for j in range(m):
            log.record(ctx(tag), Q, f"{tag} sample {j}", compressor="s")
    for k, (tag, m) in enumerate(extra.items()):
        for j in range(m):
            log.record(ctx(tag) + f" Part {k}.", Q, f"{tag} extra {j}", compressor="s")
    sel = log.select()["s"]
    # Ms: zqa 2, zqb 3, zqc 1, extra 2, 2 -> M = 2; zqb keeps its first 2, zqc is dropped.
    assert sel.n_samples == 2 and sel.n_contexts == 4 and sel.n_contexts_logged == 5
    assert sel.trimmed_ids == (context_id(ctx("zqb"), Q),)
    assert sel.dropped_ids == (context_id(ctx("zqc"), Q),)
    assert [ex.context for ex in sel.examples] == [ctx("zqa"), ctx("zqb"), ctx("zqa") + " Part 0.",
                                                   ctx("zqb") + " Part 1."]
    assert sel.compressions[1] == ("zqb sample 0", "zqb sample 1")
    with caplog.at_level(logging.WARNING, logger="compressbench.agent.log"):
        est = log.estimate(ChannelScorer(), n_boot=50, seed=3)["s"]
    assert "1 with more samples kept their first 2" in caplog.text
    assert "1 with fewer than 2 samples dropped" in caplog.text
    exs = [Example(id=str(i), context=c, question=Q)
           for i, c in enumerate([ctx("zqa"), ctx("zqb"), ctx("zqa") + " Part 0.", ctx("zqb") + " Part 1."])]
    comps = [["zqa sample 0", "zqa sample 1"], ["zqb sample 0", "zqb sample 1"],
             ["zqa extra 0", "zqa extra 1"], ["zqb extra 0", "zqb extra 1"]]
    ref = score_mi(ChannelScorer(), exs, comps, n_boot=50, seed=3)
    assert est.bits == ref.bits and est.ci_low_bits == ref.ci_low_bits and est.ci_high_bits == ref.ci_high_bits
    np.testing.assert_array_equal(est.pointwise_bits, ref.pointwise_bits)
    # Hand value: 4 contexts, tags a, b, a, b. Under the 4-context mixture each compression's
    # marginal is (0.6 + 0.2 + 0.6 + 0.2) / 4 = 0.4, so every term is log(0.6 / 0.4).
    assert est.bits_raw == pytest.approx(math.log2(1.5), abs=1e-12)


def test_tie_in_m_goes_to_the_larger_m(tmp_path):
    log = CompressionLog(tmp_path / "log.jsonl")
    for tag, m in {"zqa": 1, "zqb": 2, "zqc": 2}.items():
        for j in range(m):
            log.record(ctx(tag), Q, f"{tag} {j}")
    log.record(ctx("zqa") + " again", Q, "zqa 0")
    sel = log.select()["default"]  # M = 1 twice, M = 2 twice -> M = 2
    assert sel.n_samples == 2 and sel.n_contexts == 2 and len(sel.dropped_ids) == 2


def test_several_compressors_and_max_contexts(tmp_path):
    log = CompressionLog(tmp_path / "log.jsonl")
    for k in range(6):
        tag = TAGS[k % 3]
        log.record(ctx(tag) + f" #{k}", Q, f"{tag} good", compressor="good")
        log.record(ctx(tag) + f" #{k}", Q, "zqa constant", compressor="constant")
    res = log.estimate(ChannelScorer(), n_boot=0)
    assert set(res) == {"good", "constant"}
    # The same z for every context: its term is log(p(zqa | x_i) / (1/3)); two "zqa" contexts give
    # log 1.8, the four others log 0.6. Negative on average, so clipped to 0.
    assert res["constant"].bits_raw == pytest.approx((2 * math.log2(1.8) + 4 * math.log2(0.6)) / 6, abs=1e-12)
    assert res["constant"].bits == 0.0
    # 6 contexts, 2 of each tag: each matching term is log(0.6 / ((2*0.6 + 4*0.2) / 6)) = log 1.8.
    assert res["good"].bits == pytest.approx(math.log2(1.8), abs=1e-12)

    sels = log.select(compressor="good", max_contexts=4, seed=7)
    again = log.select(compressor="good", max_contexts=4, seed=7)
    assert sels == again  # deterministic for a seed
    sel = sels["good"]
    assert sel.n_contexts == 4 and len(sel.unselected_ids) == 2
    all_ids = [context_id(ctx(TAGS[k % 3]) + f" #{k}", Q) for k in range(6)]
    kept = [ex.id for ex in sel.examples]
    assert kept == [i for i in all_ids if i in kept]  # file order kept
    assert set(kept) | set(sel.unselected_ids) == set(all_ids)
    only = log.estimate(ChannelScorer(), compressor=["good"], max_contexts=4, seed=7, n_boot=0)
    assert set(only) == {"good"} and only["good"].n_contexts == 4


def test_estimate_errors(tmp_path, caplog):
    log = CompressionLog(tmp_path / "log.jsonl")
    with pytest.raises(UsageError, match="no compressions recorded yet"):
        log.estimate(ChannelScorer())
    log.record(ctx("zqa"), Q, "zqa", compressor="lonely")
    with pytest.raises(UsageError, match="only 1 context"):
        log.estimate(ChannelScorer(), compressor="lonely")
    with pytest.raises(UsageError, match="no compressor has at least 2 contexts"):
        log.estimate(ChannelScorer())
    log.record(ctx("zqa"), Q, "zqa", compressor="ok")
    log.record(ctx("zqb"), Q, "zqb", compressor="ok")
    with caplog.at_level(logging.WARNING, logger="compressbench.agent.log"):
        res = log.estimate(ChannelScorer(), n_boot=0)  # "lonely" is skipped, "ok" estimated
    assert set(res) == {"ok"} and "skipping compressor 'lonely'" in caplog.text
    with pytest.raises(UsageError, match="no entries for compressor"):
        log.estimate(ChannelScorer(), compressor="missing")
    with pytest.raises(UsageError, match="min_contexts must be"):
        log.estimate(ChannelScorer(), min_contexts=1)
    with pytest.raises(UsageError, match="max_contexts must be"):
        log.estimate(ChannelScorer(), min_contexts=3, max_contexts=2)
    with pytest.raises(UsageError, match="only 2 context"):
        log.estimate(ChannelScorer(), compressor="ok", min_contexts=3)
    with pytest.raises(UsageError, match="n_tokens"):  # score_mi's own check passes through
        log.estimate(ChannelScorer(), compressor="ok", n_tokens=[[1], [1]])


@pytest.mark.parametrize("contexts, queries, compressions, pattern", [
    ("ab", ["q", "q"], [["z"], ["z"]], "contexts must be a list"),
    (["a", "b"], ["q"], [["z"], ["z"]], "one query per context"),
    (["a", 2], ["q", "q"], [["z"], ["z"]], r"contexts\[1\] must be a string"),
    (["a", "b"], ["q", "q"], [["z"], ["z", "y"]], "rectangular"),
    (["a"], ["q"], [["z"]], "at least 2"),
])
def test_estimate_online_errors(contexts, queries, compressions, pattern):
    with pytest.raises(UsageError, match=pattern):
        estimate_online(ChannelScorer(), contexts, queries, compressions)


# --------------------------------------------------------------------------- a real (tiny random) model


@pytest.mark.slow
def test_estimate_with_a_real_model_matches_pairwise_scores_by_hand(tmp_path, tiny_llama):
    """The log's estimate against an independent computation: every (context, compression) pair
    scored with its own ``score()`` call (no shared-prefix matrix, no scoring module) and the
    mixture formula written out here."""
    from scipy.special import logsumexp

    from compressbench.core.prompts import load_prompt

    items = [("def add(a, b): return a + b", "What does add return?", ["a + b", "the sum"]),
             ("import os\nprint(os.getcwd())", "What is printed?", ["the cwd", "a path"]),
             ("class Stack:\n    pass", "What class is defined?", ["Stack", "class Stack"])]
    log = CompressionLog(tmp_path / "log.jsonl")
    for c, q, zs in items:
        for z in zs:
            log.record(c, q, z, compressor="tiny")
    est = log.estimate(tiny_llama, n_boot=100, seed=5)["tiny"]
    assert est.n_contexts == 3 and est.n_samples == 2

    prompt = load_prompt("mi_score")
    prefixes = [prompt.render_text(context=c, question=q) for c, q, _ in items]
    n, m = 3, 2
    lp = np.empty((n, m, n))
    for i, (_, _, zs) in enumerate(items):
        for j, z in enumerate(zs):
            for l_ in range(n):
                lp[i, j, l_] = tiny_llama.score([prefixes[l_]], [z])[0].total_nats
    pointwise = (lp[np.arange(n), :, np.arange(n)] - logsumexp(lp, axis=2) + math.log(n)) / math.log(2)
    order = [[c for c, _, _ in items].index(ex.context) for ex in log.select()["tiny"].examples]
    np.testing.assert_allclose(est.pointwise_bits, pointwise[order], rtol=0, atol=1e-4)
    assert est.bits_raw == pytest.approx(pointwise.mean(), abs=1e-4)
    assert est.bits == max(0.0, est.bits_raw)
    n_tok = np.array([[len(tiny_llama.tokenizer(z, add_special_tokens=False)["input_ids"]) for z in zs]
                      for _, _, zs in items])
    assert est.mean_tokens == pytest.approx(n_tok.mean())
    online = estimate_online(tiny_llama, [c for c, _, _ in items], [q for _, q, _ in items],
                             [zs for _, _, zs in items], n_boot=100, seed=5)
    assert online.bits_raw == pytest.approx(pointwise.mean(), abs=1e-4)
