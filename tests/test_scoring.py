"""The model-facing half of the MI estimate (compressbench.measure.scoring).

Fast tests use scorers written here whose log-probabilities are a known function of
(prefix, continuation), so the (i, j, l) index order is checked entry by entry. Then real
models: the tiny random Llama (shared-prefix path vs per-pair path) and, marked slow, the real
SmolLM2-135M-Instruct as scorer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
import pytest

from compressbench.backends.base import BaseBackend, check_pairs
from compressbench.core.errors import BackendError, UsageError
from compressbench.measure.mi import estimate_mi
from compressbench.core.prompts import load_prompt
from compressbench.measure.scoring import build_logp_tensor, score_mi, score_prefixes
from compressbench.core.types import Example, TokenLogprobs


def known_nats(prefix: str, continuation: str) -> float:
    """log p(continuation | prefix) of the fake scorer: reads the context number l from
    "ctx<l>" in the prefix and (i, j) from "z<i>_<j>" in the continuation."""
    (l,) = re.findall(r"ctx(\d+)\b", prefix)
    i, j = re.fullmatch(r"z(\d+)_(\d+)(?: .*)?", continuation).groups()
    return -(100 * int(l) + 10 * int(i) + int(j) + 1) / 1000


class FakeMatrixScorer:
    """Implements score_matrix directly and records every call."""

    name = "fake-matrix"

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], list[str]]] = []

    def score_matrix(self, prefixes: Sequence[str], continuations: Sequence[str]) -> np.ndarray:
        self.calls.append((list(prefixes), list(continuations)))
        return np.array([[known_nats(p, c) for c in continuations] for p in prefixes])

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) for t in texts]


class FakePairScorer(BaseBackend):
    """Implements only score(); BaseBackend's generic score_matrix builds the cross product."""

    name = "fake-pairs"

    def score(self, prefixes: Sequence[str], continuations: Sequence[str]) -> list[TokenLogprobs]:
        p, c = check_pairs(prefixes, continuations)
        return [TokenLogprobs(token_ids=(1, 2), logprobs_nats=(known_nats(a, b) / 2, known_nats(a, b) / 2))
                for a, b in zip(p, c)]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [2] * len(texts)


def examples(n: int) -> list[Example]:
    return [Example(id=f"e{l}", context=f"ctx{l} some text", question=f"question {l}?") for l in range(n)]


def compressions(n: int, m: int) -> list[list[str]]:
    return [[f"z{i}_{j}" + " word" * (i + j) for j in range(m)] for i in range(n)]


# ----------------------------------------------------------------------------- index order


@pytest.mark.parametrize(("n", "m"), [(2, 1), (3, 4), (5, 2)])
def test_tensor_index_order_entry_by_entry(n, m):
    scorer = FakeMatrixScorer()
    t = build_logp_tensor(scorer, examples(n), compressions(n, m))
    assert t.logp_nats.shape == (n, m, n) and t.logp_nats.dtype == np.float64
    for i in range(n):
        for j in range(m):
            for l in range(n):
                assert t.logp_nats[i, j, l] == -(100 * l + 10 * i + j + 1) / 1000, (i, j, l)
                # n_tokens[i, j] = words of z_ij = 1 + (i + j)
            assert t.n_tokens[i, j] == 1 + i + j
    assert len(scorer.calls) == 1  # one score_matrix call for the whole tensor
    prefixes, conts = scorer.calls[0]
    assert len(prefixes) == n and len(conts) == n * m
    assert np.asarray(t).shape == (n, m, n)  # usable as an array (the sweep relies on it)
    assert t.prompt_id == load_prompt("mi_score").id and t.scorer == "fake-matrix"


def test_generic_score_matrix_path_gives_the_same_tensor():
    n, m = 4, 3
    a = build_logp_tensor(FakePairScorer(), examples(n), compressions(n, m))
    b = build_logp_tensor(FakeMatrixScorer(), examples(n), compressions(n, m))
    np.testing.assert_allclose(a.logp_nats, b.logp_nats, rtol=0, atol=1e-15)
    assert (a.n_tokens == 2).all()


def test_duplicate_compressions_and_prefixes_are_scored_once():
    exs = examples(3)
    exs.append(Example(id="dup", context=exs[0].context, question=exs[0].question))  # same prefix as 0
    comps = [["z0_0", "z0_0"], ["z1_0", "z1_1"], ["z1_0", "z2_1"], ["z3_0", "z3_1"]]
    scorer = FakeMatrixScorer()
    t = build_logp_tensor(scorer, exs, comps)
    prefixes, conts = scorer.calls[0]
    assert len(prefixes) == 3 and len(conts) == 6
    want = score_prefixes(exs)
    for i in range(4):
        for j in range(2):
            for l in range(4):
                assert t.logp_nats[i, j, l] == known_nats(want[l], comps[i][j])


def test_score_mi_with_an_identity_scorer_is_log2_n():
    class Identity(FakeMatrixScorer):
        def score_matrix(self, prefixes, continuations):
            out = np.full((len(prefixes), len(continuations)), -np.inf)
            for a, p in enumerate(prefixes):
                (l,) = re.findall(r"ctx(\d+)\b", p)
                for b, c in enumerate(continuations):
                    if c.startswith(f"z{l}_"):
                        out[a, b] = math.log(0.3)
            return out

    est = score_mi(Identity(), examples(6), compressions(6, 2), n_boot=100)
    assert est.bits == pytest.approx(math.log2(6), abs=1e-12)
    assert est.mean_tokens == pytest.approx(np.mean([[1 + i + j for j in range(2)] for i in range(6)]))
    assert est.bits_per_token == pytest.approx(math.log2(6) / est.mean_tokens, rel=1e-12)


def test_score_mi_passes_options_through():
    n, m = 3, 2
    est = score_mi(FakeMatrixScorer(), examples(n), compressions(n, m), clip=False, n_boot=0,
                   marginal="leave_one_out")
    # By hand from the fake scorer's log-probs: leave-one-out term = log p_own - log(mean of the
    # other two contexts' p), in bits.
    terms = []
    for i in range(n):
        for j in range(m):
            p = [math.exp(-(100 * l + 10 * i + j + 1) / 1000) for l in range(n)]
            others = [p[l] for l in range(n) if l != i]
            terms.append(math.log2(p[i] / (sum(others) / (n - 1))))
    assert est.bits_raw == pytest.approx(sum(terms) / len(terms), abs=1e-12)
    assert est.bits == est.bits_raw < 0  # clip=False keeps the negative value
    assert est.marginal == "leave_one_out" and not est.clipped
    assert est.ci_low_bits is None and est.n_boot == 0
    words = [[1 + i + j for j in range(m)] for i in range(n)]  # the fake scorer counts words
    assert est.mean_tokens == pytest.approx(np.mean(words))
    with_ci = score_mi(FakeMatrixScorer(), examples(n), compressions(n, m), n_boot=40, seed=3, ci=0.8)
    assert (with_ci.n_boot, with_ci.seed, with_ci.ci) == (40, 3, 0.8) and with_ci.ci_low_bits is not None


def test_all_empty_compressions_have_no_rate():
    class NoTokens(FakeMatrixScorer):
        def count_tokens(self, texts):
            return [0] * len(texts)

    est = score_mi(NoTokens(), examples(3), compressions(3, 1), n_boot=0)
    assert est.mean_tokens is None and est.bits_per_token is None
    assert est.bits_raw == pytest.approx(estimate_mi(np.array(
        [[[known_nats(f"ctx{l}", f"z{i}_0") for l in range(3)]] for i in range(3)]), n_boot=0).bits_raw, abs=1e-15)


# ----------------------------------------------------------------------------- prefixes


def test_score_prefixes_hold_each_context_with_its_own_question():
    exs = examples(3)
    prefixes = score_prefixes(exs)
    for l, (ex, p) in enumerate(zip(exs, prefixes)):
        assert p.startswith("Summarize the following text")
        assert p.index(ex.context) < p.index(ex.question)
        for other in exs:
            if other is not ex:
                assert other.context not in p and other.question not in p


def test_custom_prompt_from_a_file(tmp_path):
    path = tmp_path / "myscore.yaml"
    path.write_text("text: 'C={context} Q={question} Z='\n", encoding="utf-8")
    assert score_prefixes(examples(2), str(path)) == ["C=ctx0 some text Q=question 0? Z=",
                                                      "C=ctx1 some text Q=question 1? Z="]
    t = build_logp_tensor(FakeMatrixScorer(), examples(2), compressions(2, 1), prompt=str(path))
    assert t.prompt_id.startswith("myscore@")


def test_chat_prompt_is_refused(tmp_path):
    path = tmp_path / "chatty.yaml"
    path.write_text("user: 'Summarise {context}'\n", encoding="utf-8")
    with pytest.raises(UsageError, match="chat prompt.*'text' part"):
        score_prefixes(examples(2), str(path))


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("exs", "comps", "pattern"),
    [
        (examples(1), [["a"]], "at least 2 examples"),
        (examples(3), [["a"], ["b"]], "2 rows but there are 3 examples"),
        (examples(2), [["a", "b"], ["c"]], r"rectangular.*compressions\[0\] has 2, compressions\[1\] has 1"),
        (examples(2), [[], []], r"compressions\[0\] is empty"),
        (examples(2), ["ab", "cd"], r"compressions\[0\] must be a list of M strings"),
        (examples(2), [["a"], [3]], r"compressions\[1\]\[0\] must be a string"),
        (examples(2), "abc", "must be a list"),
        ([examples(2)[0], "not an example"], [["a"], ["b"]], r"examples\[1\] must be an Example"),
    ],
)
def test_bad_inputs(exs, comps, pattern):
    with pytest.raises(UsageError, match=pattern):
        build_logp_tensor(FakeMatrixScorer(), exs, comps)


def test_wrong_matrix_shape_from_the_scorer():
    class Broken(FakeMatrixScorer):
        def score_matrix(self, prefixes, continuations):
            return np.zeros((len(continuations), len(prefixes)))

    with pytest.raises(BackendError, match=r"score_matrix returned shape \(6, 3\), expected \(3, 6\)"):
        build_logp_tensor(Broken(), examples(3), compressions(3, 2))


def test_score_mi_refuses_n_tokens():
    with pytest.raises(UsageError, match="do not pass n_tokens"):
        score_mi(FakeMatrixScorer(), examples(2), compressions(2, 1), n_tokens=[[1], [1]])


# ----------------------------------------------------------------------------- real models


def _per_pair_tensor(scorer, exs: list[Example], comps: list[list[str]]) -> np.ndarray:
    """logp[i, j, l] from one score() call per (prefix_l, z_ij) pair list (no shared prefix)."""
    prefixes = score_prefixes(exs)
    n, m = len(exs), len(comps[0])
    flat_p = [prefixes[l] for i in range(n) for j in range(m) for l in range(n)]
    flat_c = [comps[i][j] for i in range(n) for j in range(m) for l in range(n)]
    return np.array([t.total_nats for t in scorer.score(flat_p, flat_c)]).reshape(n, m, n)


def test_tiny_llama_shared_prefix_tensor_equals_per_pair(tiny_llama):
    exs = [Example(id=str(k), context=c, question=q) for k, (c, q) in enumerate([
        ("def add(a, b): return a + b", "What does add return?"),
        ("import os\nprint(os.getcwd())", "What is printed?"),
        ("class Stack:\n    pass", "What class is defined?"),
    ])]
    comps = [["adds two numbers", "a + b"], ["the current directory", "a path"], ["a class", "Stack"]]
    t = build_logp_tensor(tiny_llama, exs, comps)
    np.testing.assert_allclose(t.logp_nats, _per_pair_tensor(tiny_llama, exs, comps), rtol=0, atol=1e-4)
    assert t.n_tokens.tolist() == np.array(tiny_llama.count_tokens([z for r in comps for z in r])).reshape(3, 2).tolist()


SMOL_CONTEXTS = [
    ("The Eiffel Tower in Paris was finished in 1889 for the World's Fair.", "When was the tower finished?"),
    ("Photosynthesis lets green plants turn sunlight, water and carbon dioxide into sugar.",
     "What does photosynthesis make?"),
    ("The patient was given 20 mg of atorvastatin daily for high cholesterol.", "What drug was prescribed?"),
    ("Bitcoin's price fell by twelve percent on Tuesday after the exchange outage.", "How much did the price fall?"),
    ("Marie Curie won Nobel prizes in both physics and chemistry.", "Which prizes did she win?"),
]


@pytest.fixture(scope="module")
def smol_examples() -> list[Example]:
    return [Example(id=str(k), context=c, question=q) for k, (c, q) in enumerate(SMOL_CONTEXTS)]


@pytest.mark.slow
def test_smollm2_copies_reach_the_ceiling_and_a_fixed_sentence_carries_nothing(smollm2, smol_examples):
    # One tensor, two kinds of "compression" per context: j = 0 the context itself, j = 1 one
    # fixed sentence shared by every context.
    fixed = "This text is about something."
    t = build_logp_tensor(smollm2, smol_examples, [[ex.context, fixed] for ex in smol_examples])
    n = len(smol_examples)

    copies = estimate_mi(t.logp_nats[:, :1, :], n_tokens=t.n_tokens[:, :1], n_boot=200)
    assert copies.ceiling_bits == pytest.approx(math.log2(n))
    assert 0.95 * copies.ceiling_bits < copies.bits <= copies.ceiling_bits + 1e-12
    assert copies.at_ceiling

    same = estimate_mi(t.logp_nats[:, 1:, :], n_boot=200)
    # Every row is the same vector a_l = log p(fixed | x_l), so the raw estimate is the Jensen gap
    # mean_l a_l - log mean_l exp(a_l) <= 0 (the scorer's sensitivity to the context), clipped to 0.
    a = t.logp_nats[0, 1, :]
    np.testing.assert_allclose(t.logp_nats[:, 1, :], np.tile(a, (n, 1)), rtol=0, atol=1e-12)
    gap_nats = a.mean() - (a.max() + math.log(np.mean(np.exp(a - a.max()))))
    assert same.bits_raw == pytest.approx(gap_nats / math.log(2), abs=1e-12)
    assert same.bits_raw <= 0
    assert same.bits == 0.0 and same.ci_low_bits == 0.0


@pytest.mark.slow
def test_smollm2_shared_prefix_tensor_equals_per_pair(smollm2, smol_examples):
    exs = smol_examples[:4]
    comps = [["Built in 1889.", "A tower in Paris."], ["Plants make sugar.", "Sunlight to sugar."],
             ["Atorvastatin 20 mg.", "A statin."], ["It fell 12%.", "An outage."]]
    t = build_logp_tensor(smollm2, exs, comps)
    per_pair = _per_pair_tensor(smollm2, exs, comps)
    np.testing.assert_allclose(t.logp_nats, per_pair, rtol=0, atol=1e-4)
    # And the scorer is informative: each summary is likeliest under its own context.
    own = t.logp_nats[np.arange(4), :, np.arange(4)]
    assert (own >= t.logp_nats.max(axis=2) - 1e-9).mean() >= 0.75


# ----------------------------------------------------------------------------- found by mutation testing
#
# Each test below pins down behaviour that a mutant of compressbench/measure/scoring.py changed while every
# test above still passed (see TESTING.md).


def test_custom_prompt_reaches_the_scorer():
    from compressbench.core.prompts import Prompt

    custom = Prompt(name="custom", id="custom@0", text="C={context} Q={question} Z=")
    scorer = FakeMatrixScorer()
    build_logp_tensor(scorer, examples(2), compressions(2, 1), prompt=custom)
    assert scorer.calls[0][0] == ["C=ctx0 some text Q=question 0? Z=", "C=ctx1 some text Q=question 1? Z="]
    scorer = FakeMatrixScorer()
    score_mi(scorer, examples(2), compressions(2, 1), prompt=custom, n_boot=0)
    assert scorer.calls[0][0][0] == "C=ctx0 some text Q=question 0? Z="


def test_tensor_dtypes_names_and_array_protocol():
    class Float32Scorer:  # no `name`: the class name is recorded
        def score_matrix(self, prefixes, continuations):
            return FakeMatrixScorer().score_matrix(prefixes, continuations).astype(np.float32)

        def count_tokens(self, texts):
            return [np.float64(len(t.split())) for t in texts]

    t = build_logp_tensor(Float32Scorer(), examples(3), compressions(3, 2))
    assert t.logp_nats.dtype == np.float64 and t.n_tokens.dtype == np.int64
    assert t.scorer == "Float32Scorer"
    assert np.asarray(t) is t.logp_nats  # no copy unless asked
    assert np.asarray(t, dtype=np.float32).dtype == np.float32
    copied = np.array(t, copy=True)
    assert copied is not t.logp_nats and not np.shares_memory(copied, t.logp_nats)
    np.testing.assert_array_equal(copied, t.logp_nats)


def test_debug_log_names_the_work(caplog):
    with caplog.at_level("DEBUG", logger="compressbench.measure.scoring"):
        build_logp_tensor(FakeMatrixScorer(), examples(3), compressions(3, 2))
    assert "scoring 3 prefixes x 6 continuations (3 examples x 2 samples)" in caplog.messages


def test_backend_errors_name_the_scorer():
    class Short(FakeMatrixScorer):
        def count_tokens(self, texts):
            return [1]

    class Wide:
        def score_matrix(self, prefixes, continuations):
            return np.zeros((len(prefixes), len(continuations) + 1))

        def count_tokens(self, texts):
            return [1] * len(texts)

    with pytest.raises(BackendError, match=r"^scorer 'fake-matrix': count_tokens returned 1 counts for 6 texts$"):
        build_logp_tensor(Short(), examples(3), compressions(3, 2))
    with pytest.raises(BackendError, match=r"^scorer <[\w.<>]+Wide object at 0x[0-9a-f]+>: score_matrix returned "
                                           r"shape \(2, 3\), expected \(2, 2\) \(prefixes x continuations\)$"):
        build_logp_tensor(Wide(), examples(2), compressions(2, 1))

    # the other two cases: a named scorer's shape error, a nameless scorer's count error
    class NamedWide(Wide):
        name = "wide-one"

    class NamelessShort(Wide):
        def score_matrix(self, prefixes, continuations):
            return np.zeros((len(prefixes), len(continuations)))

        def count_tokens(self, texts):
            return []

    with pytest.raises(BackendError, match=r"^scorer 'wide-one': score_matrix returned shape \(2, 3\)"):
        build_logp_tensor(NamedWide(), examples(2), compressions(2, 1))
    with pytest.raises(BackendError, match=r"^scorer <[\w.<>]+NamelessShort object at 0x[0-9a-f]+>: count_tokens "
                                           r"returned 0 counts for 2 texts$"):
        build_logp_tensor(NamelessShort(), examples(2), compressions(2, 1))


@pytest.mark.parametrize(("call", "message"), [
    (lambda: build_logp_tensor(FakeMatrixScorer(), "ab", [["a"]]), r"^examples must be a list of Example objects$"),
    (lambda: build_logp_tensor(FakeMatrixScorer(), [examples(1)[0], 3], [["a"], ["b"]]),
     r"^examples\[1\] must be an Example \(context, question\), got int$"),
    (lambda: build_logp_tensor(FakeMatrixScorer(), examples(2), "ab"),
     r"^compressions must be a list \(one per example\) of lists of M strings$"),
    (lambda: build_logp_tensor(FakeMatrixScorer(), examples(3), [["a"], ["b"]]),
     r"^compressions has 2 rows but there are 3 examples; give one list of M compressions per example, "
     r"in the same order$"),
    (lambda: build_logp_tensor(FakeMatrixScorer(), examples(2), [["a"], 7]),
     r"^compressions\[1\] must be a list of M strings \(the compressions of examples\[1\]\), got int$"),
    (lambda: build_logp_tensor(FakeMatrixScorer(), examples(2), [[], []]),
     r"^compressions\[0\] is empty; give at least one compression per example$"),
    (lambda: build_logp_tensor(FakeMatrixScorer(), examples(2), [["a"], [3]]),
     r"^compressions\[1\]\[0\] must be a string, got int$"),
    (lambda: score_prefixes(examples(2), 42), r"^prompt must be a Prompt, a prompt name or a path to a YAML file; got int$"),
    (lambda: score_mi(FakeMatrixScorer(), examples(2), compressions(2, 1), n_tokens=[[1], [1]]),
     r"^score_mi counts compression tokens with the scorer; do not pass n_tokens \(call estimate_mi on "
     r"build_logp_tensor\(\.\.\.\) to use your own counts\)$"),
])
def test_error_messages_in_full(call, message):
    with pytest.raises(UsageError, match=message):
        call()


def test_chat_prompt_message_in_full(tmp_path):
    path = tmp_path / "chatty.yaml"
    path.write_text("user: 'Summarise {context}'\n", encoding="utf-8")
    with pytest.raises(UsageError, match=r"^prompt 'chatty' is a chat prompt; the scoring prompt needs a 'text' part "
                                         r"with \{context\} and \{question\} placeholders \(see prompts/mi_score\.yaml\)$"):
        score_prefixes(examples(2), str(path))
