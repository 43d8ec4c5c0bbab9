"""Answer parsing and metrics against hand computations."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest

from compressbench.backends.base import BaseBackend, check_pairs
from compressbench.core.errors import UsageError
from compressbench.measure.metrics import (
    ParsedAnswer,
    Score,
    Verdict,
    default_metric,
    exact_match,
    extract_numbers,
    judge_chat,
    majority_vote,
    normalize_answer,
    numeric_match,
    options_block,
    parse_judge,
    parse_prediction,
    perplexity,
    predict_values,
    reference_nll_nats,
    score_choice,
    score_example,
    score_verdict,
    token_f1,
)
from compressbench.core.prompts import load_prompt
from compressbench.core.types import Example, ModelInfo, TokenLogprobs

MC = Example(id="mc", context="", question="Which drug?", answers=("B",),
             options=("apixaban", "metformin", "levothyroxine", "ceftriaxone", "furosemide"))
OPEN = Example(id="op", context="", question="Capex?", answers=("$1,577 million",))

# ----------------------------------------------------------------------------------- parsing

MESSY_MC = [
    ('{"explanation": "the notes say so", "answer": "B"}', "B", "the notes say so"),
    ('```json\n{"explanation": "x", "answer": "B",}\n```', "B", "x"),          # fence + trailing comma
    ("{'explanation': 'single quotes', 'answer': 'B'}", "B", "single quotes"),
    ('Sure! Here it is: {"explanation": "e", "answer": "B) metformin"} Hope it helps.', "B", "e"),
    ('{"answer": "metformin", "explanation": null}', "B", None),                # option text -> letter
    ('{"explanation": "He said \'hi\'", "answer": "(B)"}', "B", "He said 'hi'"),
    ('{"explanation": "unquoted", "answer": B}', "B", "unquoted"),
    ('{"explanation": "cut off", "answer": "B', "B", "cut off"),               # max_new_tokens hit
    ('{"Answer": "b", "Explanation": "keys in capitals"}', "B", "keys in capitals"),
    ("B", "B", None),
    ("B)", "B", None),
    ("(B)", "B", None),
    ("b", "B", None),
    ("**B**", "B", None),
    ("Answer: B", "B", None),
    ("The correct answer is B: metformin.", "B", None),
    ("B is correct because the notes mention it.", "B", None),
    ("The correct option is B.", "B", None),                                  # seen from SmolLM2-135M
    ("B. metformin\n\nExplanation:\nJSON:\n{\n  \"name\": \"Quentin", "B", None),  # ditto, cut off
    ("Option B", "B", None),
    ("B. metformin", "B", None),
    ("The patient was started on metformin.", "B", None),                     # one option text in prose
]


@pytest.mark.parametrize("text,letter,explanation", MESSY_MC)
def test_parse_multiple_choice(text, letter, explanation):
    assert parse_prediction(text, MC) == ParsedAnswer(letter, explanation, None)


@pytest.mark.parametrize("text,why", [
    ("", "empty output"),
    ("   \n", "empty output"),
    ('{"answer": "F"}', "no option letter A-E"),                                 # not among the options
    ("A patient with diabetes was admitted.", "no option letter A-E"),          # prose, not option A
    ("I do not know.", "no option letter A-E"),
    ("Either apixaban or metformin.", "no option letter A-E"),                  # two option texts
    ('{"explanation": "x", "answer": ""}', "JSON 'answer' field is empty"),
])
def test_parse_multiple_choice_failures(text, why):
    parsed = parse_prediction(text, MC)
    assert parsed.answer is None and why in parsed.error


@pytest.mark.parametrize("text,answer", [
    ('{"explanation": "from the cash flow page", "answer": "$1,577 million"}', "$1,577 million"),
    ('{"answer": 1577}', "1577"),
    ('{"answer": ["Lumo", "treebank"]}', "Lumo, treebank"),
    ("Answer: $1.58 billion", "$1.58 billion"),
    ("The answer is 1577 million dollars.", "1577 million dollars."),
    ("  1577  ", "1577"),
])
def test_parse_open(text, answer):
    assert parse_prediction(text, OPEN).answer == answer


def test_parse_never_raises_on_junk():
    for junk in ["{", "}{", "{{{{", '{"a": [1, 2', "'''", "\x00\x01", "{'answer': }", "answer:", "{" * 500]:
        parsed = parse_prediction(junk, MC)
        assert isinstance(parsed, ParsedAnswer) and (parsed.answer is None) == (parsed.error is not None)


# ----------------------------------------------------------------------------------- voting


def test_majority_vote():
    assert majority_vote(["A", "B", "B"]) == "B"
    assert majority_vote(["B", None, "A", "b", "A"]) == "B"     # tie 2-2: B appeared first
    assert majority_vote(["A", "B"]) == "A"                     # tie: first seen wins
    assert majority_vote(["B", "A"]) == "B"
    assert majority_vote([None, "Paris.", "paris", "Rome"]) == "Paris."  # normalised, first form kept
    assert majority_vote([None, None]) is None and majority_vote([]) is None


# ----------------------------------------------------------------------------------- metrics


def test_normalize_answer():
    assert normalize_answer("The  Lumo-Treebank!") == "lumotreebank"
    assert normalize_answer("an apple, a pear") == "apple pear"


def test_token_f1_worked_examples():
    # pred {cat, sat}, gold {cat, sat, down}: P = 2/2, R = 2/3, F1 = 2*1*(2/3)/(1+2/3) = 0.8
    assert token_f1("the cat sat", "a cat sat down") == pytest.approx(0.8)
    # multisets: [new, new, york] vs [new, york]: common = min(2, 1) + 1 = 2; P = 2/3, R = 1 -> 0.8
    assert token_f1("new new york", "new york") == pytest.approx(0.8)
    # P = 1/4, R = 1/2 -> F1 = 2 * (1/8) / (3/4) = 1/3
    assert token_f1("Lumo big old corpus", "Lumo treebank") == pytest.approx(1 / 3)
    assert token_f1("paris", "London") == 0.0
    assert token_f1("the", "a") == 1.0                 # both empty after normalisation
    assert token_f1("the", "London") == 0.0            # only one empty
    assert token_f1("Lumo", ["x y", "Lumo treebank"]) == pytest.approx(2 / 3)  # max over golds


def test_exact_match():
    assert exact_match("The Lumo treebank.", ["lumo treebank"]) == 1.0
    assert exact_match("Lumo", "Lumo treebank") == 0.0


def test_extract_numbers():
    assert extract_numbers("$1.2 billion and 12.5% and (1,234) and 3k") == [
        (1.2e9, False), (12.5, True), (-1234.0, False), (3000.0, False)]
    assert extract_numbers("from 2019-2020") == [(2019.0, False), (2020.0, False)]
    assert extract_numbers("-4.5 mn") == [(-4.5e6, False)]


def test_numeric_match_tolerance_edges():
    # |p - g| <= rel_tol * max(|p|, |g|): 101 vs 100 -> 1 <= 1.01 (match); 98.99 vs 100 -> 1.01 > 1.0
    assert numeric_match("101", "100", rel_tol=0.01) is True
    assert numeric_match("98.99", "100", rel_tol=0.01) is False
    assert numeric_match("100.5", "100", rel_tol=0.0, abs_tol=0.5) is True
    assert numeric_match("100.6", "100", rel_tol=0.0, abs_tol=0.5) is False
    assert numeric_match("1577", "1577.00", rel_tol=0.0) is True


def test_numeric_match_units_and_formats():
    assert numeric_match("$1.58 billion", "$1,577 million") is True      # 1.58e9 vs 1.577e9: 0.19%
    assert numeric_match("$1.6 billion", "$1,577 million") is False      # 1.4% off
    assert numeric_match("1,577", "$1577.00") is True
    assert numeric_match("0.125", "12.5%") is True                        # fraction vs percent
    assert numeric_match("12.5 percent", "0.125") is True
    assert numeric_match("(1,234)", "-1234") is True                       # accounting negative
    assert numeric_match("In FY2019 it was $4.2M", "Revenue was $4.2 million in 2019") is True  # years skipped
    assert numeric_match("In 2019", "$4.2 million") is False
    assert numeric_match("It was 2020", "2020") is True                   # a year gold is compared as such
    assert numeric_match("no numbers here", "12") is False
    assert numeric_match("12", "no number in gold") is None
    with pytest.raises(UsageError):
        numeric_match("1", "1", rel_tol=-1)


def test_score_choice_and_score_example():
    assert score_choice("B", MC) == 1.0 and score_choice("metformin", MC) == 1.0
    assert score_choice("C", MC) == 0.0
    with pytest.raises(UsageError, match="no options"):
        score_choice("B", OPEN)
    assert score_example(MC, "B", "choice") == Score(1.0, None, "choice")
    assert score_example(MC, "A", "choice") == Score(0.0, None, "choice")
    s = score_example(MC, None, "choice")
    assert math.isnan(s.value) and "no parseable answer" in s.error
    s = score_example(MC, "Z", "choice")
    assert math.isnan(s.value) and "names no option" in s.error
    s = score_example(OPEN, "1577", "choice")
    assert math.isnan(s.value) and "needs a multiple-choice" in s.error
    assert score_example(OPEN, "$1.58 billion", "numeric") == Score(1.0, None, "numeric")
    assert score_example(OPEN, "I don't know", "numeric") == Score(0.0, None, "numeric")
    assert score_example(OPEN, "1,577 million", "exact").value == 1.0     # "$" and "," are punctuation
    assert score_example(OPEN, "1577 dollars", "f1").value == pytest.approx(0.5)  # {1577, dollars} vs {1577, million}
    # MC examples also compare the gold option's text for exact/f1
    assert score_example(MC, "Metformin.", "exact").value == 1.0
    nonum = Example(id="n", context="", question="?", answers=("Lumo treebank",))
    s = score_example(nonum, "12", "numeric")
    assert math.isnan(s.value) and "no gold answer holds a number" in s.error
    for bad in ("judge", "ref_nll", "bleu"):
        with pytest.raises(UsageError):
            score_example(MC, "B", bad)


def test_default_metric():
    assert default_metric(MC) == "choice"
    assert default_metric(OPEN) == "numeric"
    assert default_metric(Example(id="q", context="", question="?", answers=("Lumo treebank",))) == "f1"
    assert default_metric(Example(id="r", context="", question="?", reference="ref")) == "ref_nll"


# ----------------------------------------------------------------------------------- judge


def test_judge_chat_and_parse():
    prompt = load_prompt("judge")
    chat = judge_chat(MC, "metformin", prompt)
    user = chat[-1]["content"]
    assert "Which drug?\nA. apixaban\nB. metformin" in user
    assert "Gold answer: B. metformin" in user and "Predicted answer: metformin" in user
    chat = judge_chat(OPEN, "$1.58 billion", prompt)
    assert "Gold answer: $1,577 million" in chat[-1]["content"]
    assert parse_judge('{"correct": true, "reason": "same amount"}') == Verdict(True, "same amount", None)
    assert parse_judge("```json\n{'correct': 'no', 'reason': 'different',}\n```") == Verdict(False, "different")
    assert parse_judge('Verdict: {"reason": "r", "correct": false}').correct is False
    assert parse_judge('"correct": true, "reason": "cut') == Verdict(True, "cut", None)
    assert parse_judge("Yes, the amounts agree.").correct is True
    assert parse_judge("Incorrect: wrong year.").correct is False
    for bad in ("", "Maybe.", '{"correct": "perhaps"}'):
        v = parse_judge(bad)
        assert v.correct is None and v.error
    assert score_verdict(Verdict(True)) == Score(1.0, None, "judge")
    assert score_verdict(Verdict(False, "r")) == Score(0.0, None, "judge")
    s = score_verdict(parse_judge("Maybe."))
    assert math.isnan(s.value) and "no verdict" in s.error


def test_predict_values_and_options_block():
    assert options_block(OPEN) == ""
    block = options_block(MC)
    assert block.splitlines()[:3] == ["Options:", "A. apixaban", "B. metformin"]
    v = predict_values(MC, "Started on metformin.")
    assert v == {"compression": "Started on metformin.", "question": "Which drug?", "options_block": block}


# ----------------------------------------------------------------------------------- reference NLL


class CopyBackend(BaseBackend):
    """A real (if tiny) character-level language model: each next character is drawn half from
    the prefix's character frequencies and half uniformly over 256 byte values,
    p(c | prefix) = 0.5 * count(c, prefix) / len(prefix) + 0.5 / 256. The reference is scored
    character by character after the prefix only (the prefix is not extended), which is all
    the test needs."""

    name = "copy"

    def score(self, prefixes: Sequence[str], continuations: Sequence[str]) -> list[TokenLogprobs]:
        p, c = check_pairs(prefixes, continuations)
        out = []
        for pre, cont in zip(p, c):
            lps = tuple(math.log(0.5 * pre.count(ch) / len(pre) + 0.5 / 256) for ch in cont)
            out.append(TokenLogprobs(tuple(ord(ch) for ch in cont), lps))
        return out

    def count_tokens(self, texts):
        return [len(t) for t in texts]

    def info(self):
        return ModelInfo(reference="copy")


def test_reference_nll_nats_by_hand():
    be = CopyBackend()
    total, n = reference_nll_nats(be, "aab", "ab")
    pa, pb = 0.5 * 2 / 3 + 0.5 / 256, 0.5 * 1 / 3 + 0.5 / 256
    assert n == 2 and total == pytest.approx(-(math.log(pa) + math.log(pb)))
    assert perplexity(total, n) == pytest.approx(1 / math.sqrt(pa * pb))
    # conditioning matters: a prefix that holds the reference makes it likelier
    assert reference_nll_nats(be, "xyz", "ab")[0] > total
    with pytest.raises(UsageError):
        reference_nll_nats(be, "aab", "  ")
    with pytest.raises(UsageError):
        perplexity(1.0, 0)


# ----------------------------------------------------------------------------------- found by mutation testing
#
# Each test below pins down behaviour that a mutant of compressbench/measure/metrics.py changed while every
# test above still passed (see TESTING.md): whole results (value, error text, metric) rather than
# one field, and the edges of each parsing rule.


def _same_score(got: Score, value: float, error: str | None, metric: str) -> None:
    assert (got.error, got.metric) == (error, metric)
    assert (math.isnan(got.value) and math.isnan(value)) or got.value == value


NO_GOLD = Example(id="ng", context="", question="?")
SMALL = Example(id="sm", context="", question="?", answers=("0.5",))
LONG = "Z" * 100


@pytest.mark.parametrize("example,voted,metric,kwargs,value,error", [
    (MC, None, "choice", {}, math.nan, "no parseable answer in any prediction sample"),
    (MC, "  ", "exact", {}, math.nan, "no parseable answer in any prediction sample"),
    (OPEN, "1577", "choice", {}, math.nan, "the 'choice' metric needs a multiple-choice example (it has no options)"),
    (MC, LONG, "choice", {}, math.nan, f"answer {'Z' * 80!r} names no option"),
    (MC, "B", "choice", {}, 1.0, None),
    (MC, "B", "exact", {}, 1.0, None),            # the gold letter itself, not only the option's text
    (MC, "metformin", "f1", {}, 1.0, None),
    (NO_GOLD, "x", "exact", {}, math.nan, "example has no gold answers"),
    (NO_GOLD, "x", "f1", {}, math.nan, "example has no gold answers"),
    (Example(id="t", context="", question="?", answers=("Lumo",)), "12", "numeric", {}, math.nan,
     "no gold answer holds a number"),
    (OPEN, "1,577 million", "exact", {}, 1.0, None),
    (OPEN, "1577 dollars", "f1", {}, 0.5, None),
    (OPEN, "$3 billion", "numeric", {}, 0.0, None),       # default rel_tol is 1%, not 100%
    (SMALL, "1.2", "numeric", {}, 0.0, None),              # default abs_tol is 0
    (OPEN, "$1.6 billion", "numeric", {"rel_tol": 0.02}, 1.0, None),  # 1.4% off: inside 2%
    (SMALL, "1.2", "numeric", {"abs_tol": 1.0}, 1.0, None),
])
def test_score_example_whole_results(example, voted, metric, kwargs, value, error):
    _same_score(score_example(example, voted, metric, **kwargs), value, error, metric)


def test_score_example_refusals_say_what_to_use():
    with pytest.raises(UsageError, match=r"^metric 'judge' needs a model: use judge_chat/parse_judge/score_verdict "
                                         r"for 'judge' and reference_nll_nats for 'ref_nll'$"):
        score_example(MC, "B", "judge")
    with pytest.raises(UsageError, match=r"^unknown metric 'bleu'; known: choice, exact, f1, numeric, judge, ref_nll$"):
        score_example(MC, "B", "bleu")


@pytest.mark.parametrize("text,expected", [
    ("", ParsedAnswer(None, None, "empty output")),
    (None, ParsedAnswer(None, None, "empty output")),
    ('{"explanation": "e", "answer": "$4 million"}', ParsedAnswer("$4 million", "e")),
    ('{"explanation": "x", "answer": ""}', ParsedAnswer(None, "x", "JSON 'answer' field is empty")),
    ('{"answer": []}', ParsedAnswer(None, None, "JSON 'answer' field is empty")),
    ('{"answer": true}', ParsedAnswer("yes", None)),
    ('{"answer": false}', ParsedAnswer("no", None)),
    ('{"answer": {"answer": "inner"}}', ParsedAnswer("inner", None)),
    ('{"answer": {"value": 3}}', ParsedAnswer('{"value": 3}', None)),
    ('"Answer": "Paris TX," and so on', ParsedAnswer("Paris TX", None)),     # loose field, key in capitals
    ('"answer": "Paris", "explanation": "the map"', ParsedAnswer("Paris", "the map")),
    ("ANSWER: 12 units", ParsedAnswer("12 units", None)),
    ("THE ANSWER IS 12 units", ParsedAnswer("12 units", None)),
    ("The answer is **Xi**", ParsedAnswer("Xi", None)),
    ("The answer is **", ParsedAnswer(None, None, "empty answer")),
])
def test_parse_open_whole_results(text, expected):
    assert parse_prediction(text, OPEN) == expected


@pytest.mark.parametrize("text,expected", [
    ('{"explanation": "e", "answer": "F"}',
     ParsedAnswer(None, "e", "no option letter A-E or option text found in 'F'")),
    ("I do not know.", ParsedAnswer(None, None, "no option letter A-E or option text found in 'I do not know.'")),
    ('{"answer": "' + LONG + '"}', ParsedAnswer(None, None, f"no option letter A-E or option text found in {'Z' * 80!r}")),
    ('{"answer": "BC"}', ParsedAnswer(None, None, "no option letter A-E or option text found in 'BC'")),  # not a letter
    ('{"answer": "(b)"}', ParsedAnswer("B", None)),               # a lower-case letter alone (3 characters)
    ('{"answer": "b. x"}', ParsedAnswer(None, None, "no option letter A-E or option text found in 'b. x'")),
    ('{"answer": "B. something"}', ParsedAnswer("B", None)),
    ('{"answer": "B) something else"}', ParsedAnswer("B", None)),
    ('{"answer": "B Because of the notes"}', ParsedAnswer("B", None)),
    ("I'd pick option B's dose", ParsedAnswer("B", None)),
])
def test_parse_multiple_choice_whole_results(text, expected):
    assert parse_prediction(text, MC) == expected


def test_exact_option_text_wins_over_contained_option_texts():
    ex = Example(id="h", context="", question="?", answers=("B",), options=("heart", "heart failure"))
    assert parse_prediction('{"answer": "heart failure"}', ex) == ParsedAnswer("B", None)
    assert score_choice("Heart failure.", ex) == 1.0


@pytest.mark.parametrize("text,objects", [
    ('a {"x": 1} b {"y": 2}', ['{"x": 1}', '{"y": 2}']),
    ('{"a": 1}{"b": 2}', ['{"a": 1}', '{"b": 2}']),                 # adjacent
    ('oops} {"answer": "B"}', ['{"answer": "B"}']),                 # a stray closing brace first
    ('{"a": "}"} tail', ['{"a": "}"}']),                             # a brace inside a string
    ('{"": 1} tail', ['{"": 1}']),                                   # an empty string
    ('{"a": "x\\"}y"} tail', ['{"a": "x\\"}y"}']),                   # an escaped quote
    ("{answer: X} tail", ["{answer: X}"]),
    ('{"a": {"b": 1}} tail', ['{"a": {"b": 1}}']),                   # nested
    ('{"answer": "B', ['{"answer": "B"}']),                          # cut off inside a string
    ("{'answer': 'B", ["{'answer': 'B'}"]),
    ('{"answer": 1', ['{"answer": 1}']),
    ('{"a": {"b": 1', ['{"a": {"b": 1}}']),
    ('{} {"a": 1}', ["{}", '{"a": 1}']),                           # an empty object, then the next
])
def test_balanced_objects(text, objects):
    from compressbench.measure.metrics import _balanced_objects

    assert _balanced_objects(text) == objects


@pytest.mark.parametrize("candidate,obj", [
    ('{"a": "x\ny"}', {"a": "x\ny"}),                       # a raw newline inside a string
    ('{"a": "x\\/y",}', {"a": "x/y"}),                      # JSON-only escape plus a trailing comma
    ("{'a': 1}", {"a": 1}),                                 # Python syntax
    ("{'a': true, 'b': false, 'c': null}", {"a": True, "b": False, "c": None}),
    ("{1, 2}", None),                                       # a Python set is not an object
    ("{nope}", None),
])
def test_load_object(candidate, obj):
    from compressbench.measure.metrics import _load_object, find_json_object

    assert _load_object(candidate) == obj
    if obj is None:
        assert find_json_object(candidate + ' {"answer": "B"}', "answer") == {"answer": "B"}


@pytest.mark.parametrize("text,expected", [
    (None, Verdict(None, None, "empty judge output")),
    ("  ", Verdict(None, None, "empty judge output")),
    ('{"correct": 1}', Verdict(True, None)),
    ('{"correct": 0}', Verdict(False, None)),
    ('{"correct": 2, "reason": "r"}', Verdict(None, "r", "judge 'correct' field is not a boolean: 2")),
    ('{"correct": 0.5}', Verdict(None, None, "judge 'correct' field is not a boolean: 0.5")),
    ('{"correct": "perhaps", "reason": "r"}', Verdict(None, "r", "judge 'correct' field is not a boolean: 'perhaps'")),
    ('{"correct": "Yes."}', Verdict(True, None)),
    ('''{"correct": "'no'!"}''', Verdict(False, None)),
    ('"correct": maybe, "reason": "x"', Verdict(None, "x", "judge 'correct' field is not a boolean: 'maybe'")),
    ('"Correct": false, "Reason": "cut', Verdict(False, "cut")),
    ("Yes, the amounts agree.", Verdict(True, "Yes, the amounts agree.")),
    ("No. " + "w" * 300, Verdict(False, ("No. " + "w" * 300)[:200])),
    ("Maybe. " + "w" * 100, Verdict(None, None, f"no verdict found in judge output {('Maybe. ' + 'w' * 100)[:80]!r}")),
])
def test_parse_judge_whole_results(text, expected):
    assert parse_judge(text) == expected


def test_score_verdict_unparseable_keeps_the_reason():
    _same_score(score_verdict(Verdict(None, None, "judge output cut")), math.nan, "judge output cut", "judge")
    _same_score(score_verdict(Verdict(None)), math.nan, "no judge verdict", "judge")


def test_gold_text_for_the_judge():
    prompt = load_prompt("judge")
    two = Example(id="2", context="", question="Q?", answers=("A", "C"), options=MC.options)
    assert "Gold answer: A. apixaban; C. levothyroxine" in judge_chat(two, "x", prompt)[-1]["content"]
    both = Example(id="o", context="", question="Q?", answers=("Paris", "paris, France"))
    assert "Gold answer: Paris | paris, France" in judge_chat(both, "x", prompt)[-1]["content"]
    ref = Example(id="r", context="", question="Q?", reference="The reference text.")
    assert "Gold answer: The reference text." in judge_chat(ref, "x", prompt)[-1]["content"]
    with pytest.raises(UsageError, match=r"^example 'ng' has neither answers nor a reference for the judge$"):
        judge_chat(NO_GOLD, "x", prompt)


@pytest.mark.parametrize("pred,gold,kwargs,expected", [
    ("1900", "1900.5", {}, False),          # 1900 is a year: skipped against a non-year gold
    ("2100", "2100.5", {}, False),
    ("2101", "2101.5", {}, True),           # 2101 is not a year
    ("1950.5", "1950.7", {}, True),         # not an integer: not a year
    ("1950%", "1950.5%", {}, True),         # a percentage is not a year
    ("4.2", "In 2019 it was 4.2", {}, True),  # the gold's number is its first non-year
    ("12.5", "0.125", {}, False),           # both plain numbers: no x100 rescaling
    ("0.125", "12.5%", {"rel_tol": 0.0}, True),
    ("12.5%", "0.125", {"rel_tol": 0.0}, True),
    ("1.5", "0.7", {}, False),              # default abs_tol is 0
])
def test_numeric_match_years_and_scales(pred, gold, kwargs, expected):
    assert numeric_match(pred, gold, **kwargs) is expected


def test_small_metric_edges():
    assert extract_numbers("(5 apples and 6)") == [(5.0, False), (6.0, False)]  # an unbalanced bracket is not negative
    assert exact_match("b", "bcd") == 0.0                     # one gold string, not its characters
    assert token_f1("x", []) == 0.0                           # no gold: 0
    assert default_metric(Example(id="e", context="", question="?")) == "f1"
    assert options_block(Example(id="o", context="", question="?", options=("x", "y"))) == (
        "Options:\nA. x\nB. y\nAnswer with the letter of one option.")
    assert perplexity(2.0, 1) == pytest.approx(math.e ** 2)
    with pytest.raises(UsageError, match=r"^perplexity needs n_tokens >= 1$"):
        perplexity(1.0, 0)
    with pytest.raises(UsageError, match=r"^numeric_match tolerances must be >= 0$"):
        numeric_match("1", "1", abs_tol=-1)


def test_reference_nll_edges():
    class NoTokens(CopyBackend):
        def score(self, prefixes, continuations):
            return [TokenLogprobs((), ()) for _ in prefixes]

    be = CopyBackend()
    total, n = reference_nll_nats(be, "aab", "a")  # one token
    assert n == 1 and total == pytest.approx(-math.log(0.5 * 2 / 3 + 0.5 / 256))
    with pytest.raises(UsageError, match=r"^reference_nll_nats needs a non-empty reference answer$"):
        reference_nll_nats(be, "aab", "")
    with pytest.raises(UsageError, match=r"^reference_nll_nats needs the prefix as a string$"):
        reference_nll_nats(be, None, "ab")
    ref = "r" * 60
    with pytest.raises(UsageError, match=rf"^reference {'r' * 40!r} has no tokens under this backend's tokenizer$"):
        reference_nll_nats(NoTokens(), "p", ref)
