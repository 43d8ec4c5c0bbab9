"""Answer parsing and answer metrics: choice letter, exact match, token F1, numeric, judge, ref NLL.

Pipeline for one example (the sweep calls these in order):

1. :func:`parse_prediction` turns each raw predictor output into a :class:`ParsedAnswer`
   (tolerant: JSON anywhere in the text, code fences, single quotes, trailing commas; for
   multiple choice also a bare letter "B", "B)", "(B)", "Answer: B", or an option's text).
2. :func:`majority_vote` picks one answer from the M parsed answers.
3. :func:`score_example` scores the voted answer with a metric, giving a :class:`Score`:
   ``choice`` (letter match), ``exact`` (exact match after SQuAD normalisation), ``f1``
   (SQuAD token F1), ``numeric`` (:func:`numeric_match` with tolerance). A voted answer of
   None (no sample could be parsed) scores NaN with an explanation, never 0 and never a crash.
   The ``judge`` metric needs a model: build the chat with :func:`judge_chat`, generate, then
   :func:`parse_judge` and :func:`score_verdict`. The ``ref_nll`` metric is not an accuracy:
   :func:`reference_nll_nats` gives (total NLL in nats, n_tokens) of a reference answer, and
   perplexity = exp(total_nats / n_tokens) (:func:`perplexity`).

Scores are in [0, 1] (1 = correct); NaN means "could not be scored" and carries the reason.
"""

from __future__ import annotations

import ast
import json
import math
import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from compressbench.core.errors import UsageError
from compressbench.core.registry import Registry
from compressbench.core.types import Example

__all__ = [
    "ANSWER_METRICS", "METRICS", "MODEL_METRICS", "ParsedAnswer", "Score", "Verdict", "default_metric", "exact_match", "extract_numbers",
    "judge_chat", "majority_vote", "normalize_answer", "numeric_match", "options_block", "parse_judge",
    "parse_prediction", "perplexity", "predict_values", "reference_nll_nats", "score_choice",
    "score_example", "score_verdict", "token_f1",
]

LETTERS = string.ascii_uppercase
_PUNCT = frozenset(string.punctuation)


@dataclass(frozen=True)
class ParsedAnswer:
    """A predictor output parsed: the answer (a letter for multiple choice), or why not (error)."""

    answer: str | None
    explanation: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Score:
    """One example's score: value in [0, 1], or NaN with ``error`` saying why it is unscorable."""

    value: float
    error: str | None
    metric: str


@dataclass(frozen=True)
class Verdict:
    """An LLM judge's verdict: correct True/False, or None with ``error`` when unparseable."""

    correct: bool | None
    reason: str | None = None
    error: str | None = None


# --------------------------------------------------------------------------------------------
# Finding JSON objects in messy model output


_FENCE = re.compile(r"```[a-zA-Z0-9_-]*\s*\n?(.*?)```", re.DOTALL)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")


def _balanced_objects(text: str) -> list[str]:
    """Every top-level ``{...}`` span in text, braces matched outside string literals.

    An object left open at the end (output cut off) is returned closed with ``}``.
    """
    out: list[str] = []
    i = 0
    while True:
        start = text.find("{", i)
        if start < 0:
            return out
        depth, quote, esc = 0, None, False
        for j in range(start, len(text)):
            ch = text[j]
            if quote:
                if esc:
                    esc = False
                elif ch == "\\":
                    esc = True
                elif ch == quote:
                    quote = None
            elif ch in "\"'":
                quote = ch
            elif ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    out.append(text[start:j + 1])
                    i = j + 1
                    break
        else:
            out.append(text[start:] + ("\"" if quote == "\"" else "'" if quote else "") + "}" * max(depth, 1))
            return out


def _load_object(candidate: str) -> dict[str, Any] | None:
    """Parse one object candidate: strict JSON, then without trailing commas, then Python syntax."""
    attempts = (candidate, _TRAILING_COMMA.sub(r"\1", candidate))
    for s in attempts:
        try:
            obj = json.loads(s, strict=False)
        except json.JSONDecodeError:
            continue
        return obj if isinstance(obj, dict) else None
    py = re.sub(r"\btrue\b", "True", re.sub(r"\bfalse\b", "False", re.sub(r"\bnull\b", "None", candidate)))
    try:
        obj = ast.literal_eval(py)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def find_json_object(text: str, key: str) -> dict[str, Any] | None:
    """The first JSON-like object in ``text`` that has ``key`` (case-insensitive), keys lower-cased."""
    blocks = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    for block in blocks:
        for cand in _balanced_objects(block):
            obj = _load_object(cand)
            if obj is not None:
                low = {str(k).strip().lower(): v for k, v in obj.items()}
                if key in low:
                    return low
    return None


def _loose_field(text: str, key: str) -> str | None:
    """``"key": "value"`` found by pattern when no object parses (e.g. output cut off mid-JSON)."""
    m = re.search(rf"(?<![A-Za-z])[\"']?{key}[\"']?\s*:\s*"
                  rf"(?:\"((?:[^\"\\]|\\.)*)\"?|'([^']*)'?|([^,}}\n]+(?:,\d{{3}})*[^,}}\n]*))", text, re.I)
    if not m:
        return None
    value = next(g for g in m.groups() if g is not None).strip().rstrip(",").strip()
    return value or None


# --------------------------------------------------------------------------------------------
# Multiple-choice letters


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation and articles (a, an, the), squeeze spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _letter_from(text: str, options: Sequence[str], *, free_text: bool) -> str | None:
    """The option letter an answer names, or None.

    Accepted: a bare letter ("B", "b" only when it is the whole answer), "B)", "(B)", "B.",
    "B: text", "Option B", "answer is B", "the correct option is B", "B is correct", "**B**"; or an option's text (exact after
    normalisation, or the only option text contained in the answer). With ``free_text`` (a
    whole model reply rather than a JSON field), only an explicit "answer ... B" phrase, a
    reply that starts with the letter, or a single contained option text count.
    """
    letters = LETTERS[: len(options)]
    s = text.strip().strip("*_`\"' ").strip()
    if not s:
        return None
    if len(s) == 1 and s.upper() in letters and not free_text:
        return s.upper()
    m = (re.search(r"\b(?i:answer|option|choice)\b[^A-Za-z0-9]{0,3}(?i:is|:)?\s*(?i:option\s*)?[:\-]?\s*[\(\[*]*([A-Z])\b(?![\w'])",
                   s)
         or re.search(r"(?:^|[^\w'])[\(\[*]*([A-Z])[\)\]*]*\s+is\s+(?:the\s+)?(?i:correct|right|best)\b", s))
    if m and m.group(1) in letters:
        return m.group(1)
    m = re.match(r"^[\(\[*]*(?:option\s+)?([A-Za-z])(?:[\)\].:\-]|\s*$|\s+[-–:]?\s*\S)", s, re.I)
    if m and m.group(1).upper() in letters and (m.group(1).isupper() or len(s) <= 3):
        letter = m.group(1).upper()
        rest = s[m.end(1):].strip().lstrip(")].:-–* ").strip()
        # "A patient ..." is prose, not option A: accept when the rest is empty or looks like the option.
        if not rest or not re.match(r"^[a-z]", rest) or normalize_answer(rest) == normalize_answer(
                options[letters.index(letter)]) or s[m.end(1):m.end(1) + 1] in ")].:":
            return letter
    m = re.search(r"\b(?i:option)\s*[\(\[]?([A-Z])\b", s)
    if m and m.group(1).upper() in letters:
        return m.group(1).upper()
    norm = normalize_answer(s)
    exact = [letters[i] for i, o in enumerate(options) if normalize_answer(o) == norm]
    if len(exact) == 1:
        return exact[0]
    contained = [letters[i] for i, o in enumerate(options)
                 if normalize_answer(o) and re.search(rf"\b{re.escape(normalize_answer(o))}\b", norm)]
    if len(contained) == 1:
        return contained[0]
    return None


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        items = [t for t in (_as_text(v) for v in value) if t]
        return ", ".join(items) if items else None
    if isinstance(value, dict):
        return _as_text(value.get("answer")) or json.dumps(value)
    return str(value).strip() or None


def parse_prediction(text: str | None, example: Example) -> ParsedAnswer:
    """Parse a predictor's raw output into an answer (tolerant; never raises on messy text).

    Order: a JSON object with an ``answer`` field anywhere (code fences, single quotes,
    trailing commas and output cut off mid-object tolerated); else a loose ``"answer": ...``
    pattern; else, for multiple choice, a letter or option text in the whole reply, and for
    open questions the text after "Answer:" or the whole reply. For multiple choice the answer
    is returned as its letter; a letter outside the options is an error.
    """
    if text is None or not text.strip():
        return ParsedAnswer(None, None, "empty output")
    obj = find_json_object(text, "answer")
    explanation = None
    raw: str | None = None
    if obj is not None:
        raw = _as_text(obj.get("answer"))
        explanation = _as_text(obj.get("explanation")) if obj.get("explanation") is not None else None
        if raw is None:
            return ParsedAnswer(None, explanation, "JSON 'answer' field is empty")
    else:
        raw = _loose_field(text, "answer")
        if raw is not None:
            explanation = _loose_field(text, "explanation")
    if example.options:
        letters = LETTERS[: len(example.options)]
        if raw is not None:
            letter = _letter_from(raw, example.options, free_text=False)
            if letter:
                return ParsedAnswer(letter, explanation)
        letter = _letter_from(text, example.options, free_text=True)
        if letter and raw is None:
            return ParsedAnswer(letter, explanation)
        shown = (raw if raw is not None else text.strip())[:80]
        return ParsedAnswer(None, explanation,
                            f"no option letter {letters[0]}-{letters[-1]} or option text found in {shown!r}")
    if raw is not None:
        return ParsedAnswer(raw, explanation)
    m = re.search(r"\banswer\s*(?:is|:)\s*(.+)", text, re.I)
    answer = (m.group(1) if m else text).strip().strip("*`\"' ").strip()
    return ParsedAnswer(answer or None, None, None if answer else "empty answer")


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """The most frequent answer, ignoring None; None if there is no answer at all.

    Answers are compared after :func:`normalize_answer` ("Paris." and "paris" agree) and the
    first-seen original form is returned. Ties go to the answer whose first occurrence comes
    earliest in ``answers`` (sample order), so the vote is deterministic.
    """
    counts: Counter[str] = Counter()
    first: dict[str, tuple[int, str]] = {}
    for i, a in enumerate(answers):
        if a is None:
            continue
        key = normalize_answer(a) or a.strip()
        counts[key] += 1
        first.setdefault(key, (i, a))
    if not counts:
        return None
    best = max(counts, key=lambda k: (counts[k], -first[k][0]))
    return first[best][1]


# --------------------------------------------------------------------------------------------
# Metrics


def score_choice(pred: str, example: Example) -> float:
    """1.0 if ``pred`` names a gold option of a multiple-choice example, else 0.0.

    ``pred`` may be a letter or an option's text. Raises UsageError if the example has no options.
    """
    if not example.options:
        raise UsageError(f"example {example.id!r} has no options: the 'choice' metric needs multiple choice")
    letter = _letter_from(pred, example.options, free_text=False)
    return 1.0 if letter is not None and letter in example.answers else 0.0


def exact_match(pred: str, golds: Sequence[str] | str) -> float:
    """1.0 if ``normalize_answer(pred)`` equals that of any gold answer, else 0.0."""
    golds = [golds] if isinstance(golds, str) else list(golds)
    p = normalize_answer(pred)
    return 1.0 if any(p == normalize_answer(g) for g in golds) else 0.0


def _f1(pred: str, gold: str) -> float:
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    if not p or not g:
        return float(p == g)
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def token_f1(pred: str, golds: Sequence[str] | str) -> float:
    """SQuAD token F1, the maximum over gold answers.

    With tokens after :func:`normalize_answer`, common = size of the multiset intersection,
    precision = common / len(pred), recall = common / len(gold), F1 = 2PR / (P + R);
    F1 = 1.0 if both are empty, 0.0 if only one is.
    """
    golds = [golds] if isinstance(golds, str) else list(golds)
    return max((_f1(pred, g) for g in golds), default=0.0)


_SCALES = {"thousand": 1e3, "k": 1e3, "million": 1e6, "mn": 1e6, "mm": 1e6, "m": 1e6, "billion": 1e9,
           "bn": 1e9, "b": 1e9, "trillion": 1e12, "tn": 1e12}
_NUMBER = re.compile(
    r"(?:(?<![\w.])(?P<neg>[-−–])\s*)?(?P<open>\()?\s*(?P<cur>[$€£])?\s*(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
    r"\s*(?P<close>\))?\s*(?P<unit>%|percent\b|thousand\b|million\b|billion\b|trillion\b|mn\b|mm\b|bn\b|tn\b"
    r"|[kmb]\b)?",
    re.I,
)


def extract_numbers(text: str) -> list[tuple[float, bool]]:
    """Numbers in text as (value, is_percent), with $/€/£, thousands commas, "(1,234)" as
    negative, and scale words (thousand, million/mn/m, billion/bn/b, trillion) applied:
    "$1.2 billion" -> 1.2e9, "12.5%" -> (12.5, True)."""
    out = []
    for m in _NUMBER.finditer(text):
        value = float(m.group("num").replace(",", ""))
        unit = (m.group("unit") or "").lower()
        if unit in _SCALES:
            value *= _SCALES[unit]
        if m.group("neg") or (m.group("open") and m.group("close")):
            value = -value
        out.append((value, unit in ("%", "percent")))
    return out


def _is_year(v: float, pct: bool) -> bool:
    return not pct and v.is_integer() and 1900 <= v <= 2100


def numeric_match(pred: str, gold: str, rel_tol: float = 0.01, abs_tol: float = 0.0) -> bool | None:
    """Whether the prediction states the gold answer's number, within tolerance.

    The gold number is the first number in ``gold`` that is not a year (1900-2100 integer), or
    its first number if all are years; the prediction matches if any of its numbers p (years
    skipped likewise, unless the gold is a year) satisfies
    ``|p - g| <= max(rel_tol * max(|p|, |g|), abs_tol)`` (``math.isclose``). When exactly one side
    is a percentage, p * 100 and p / 100 are tried too ("0.125" matches "12.5%").
    Returns None when the gold has no number (not numerically scorable), False when the
    prediction has none.
    """
    if rel_tol < 0 or abs_tol < 0:
        raise UsageError("numeric_match tolerances must be >= 0")
    gold_nums = extract_numbers(gold)
    if not gold_nums:
        return None
    non_years = [n for n in gold_nums if not _is_year(*n)]
    g, g_pct = (non_years or gold_nums)[0]
    gold_is_year = not non_years
    for p, p_pct in extract_numbers(pred):
        if _is_year(p, p_pct) and not gold_is_year:
            continue
        candidates = [p] if p_pct == g_pct else [p, p * 100, p / 100]
        if any(math.isclose(c, g, rel_tol=rel_tol, abs_tol=abs_tol) for c in candidates):
            return True
    return False


def default_metric(example: Example) -> str:
    """The metric an example calls for when a config names none: ``choice`` for multiple choice,
    ``numeric`` when every gold answer holds a number, ``f1`` otherwise, ``ref_nll`` when there are
    no gold answers but a reference."""
    if example.options:
        return "choice"
    if not example.answers:
        return "ref_nll" if example.reference is not None else "f1"
    if all(extract_numbers(a) for a in example.answers):
        return "numeric"
    return "f1"


def gold_texts(example: Example) -> list[str]:
    """The gold answers; for multiple choice also the texts of the gold options (letters -> texts)."""
    golds = list(example.answers)
    if example.options:
        golds += [example.options[LETTERS.index(a)] for a in example.answers if a in LETTERS[: len(example.options)]]
    return golds


def _no_golds(metric: str) -> Score:
    return Score(math.nan, "example has no gold answers", metric)


def metric_choice(example: Example, answer: str, *, rel_tol: float = 0.01, abs_tol: float = 0.0) -> Score:
    """``choice``: 1 if the answer (a letter or an option's text) names a gold option, else 0."""
    if not example.options:
        return Score(math.nan, "the 'choice' metric needs a multiple-choice example (it has no options)", "choice")
    letter = _letter_from(answer, example.options, free_text=False)
    if letter is None:
        return Score(math.nan, f"answer {answer[:80]!r} names no option", "choice")
    return Score(1.0 if letter in example.answers else 0.0, None, "choice")


def metric_exact(example: Example, answer: str, *, rel_tol: float = 0.01, abs_tol: float = 0.0) -> Score:
    """``exact``: :func:`exact_match` against :func:`gold_texts`."""
    golds = gold_texts(example)
    return Score(exact_match(answer, golds), None, "exact") if golds else _no_golds("exact")


def metric_f1(example: Example, answer: str, *, rel_tol: float = 0.01, abs_tol: float = 0.0) -> Score:
    """``f1``: :func:`token_f1` against :func:`gold_texts`."""
    golds = gold_texts(example)
    return Score(token_f1(answer, golds), None, "f1") if golds else _no_golds("f1")


def metric_numeric(example: Example, answer: str, *, rel_tol: float = 0.01, abs_tol: float = 0.0) -> Score:
    """``numeric``: 1 if :func:`numeric_match` holds for any of :func:`gold_texts`; NaN if none has a number."""
    golds = gold_texts(example)
    if not golds:
        return _no_golds("numeric")
    results = [numeric_match(answer, g, rel_tol=rel_tol, abs_tol=abs_tol) for g in golds]
    if all(r is None for r in results):
        return Score(math.nan, "no gold answer holds a number", "numeric")
    return Score(1.0 if any(r for r in results) else 0.0, None, "numeric")


#: Answer metrics: name -> ``fn(example, answer, *, rel_tol, abs_tol) -> Score`` for a non-empty
#: answer (:func:`score_example` handles a missing one). A new metric is one entry here and its
#: function (in this module or its own module under measure/: see docs/architecture.md).
ANSWER_METRICS: Registry[str] = Registry("metric", {
    "choice": "compressbench.measure.metrics:metric_choice",
    "exact": "compressbench.measure.metrics:metric_exact",
    "f1": "compressbench.measure.metrics:metric_f1",
    "numeric": "compressbench.measure.metrics:metric_numeric",
})
#: Metrics that need a model, scored by the engine's stages (judge: a judge model's verdict;
#: ref_nll: the reference answer's NLL under the predictor), not by :func:`score_example`.
MODEL_METRICS = ("judge", "ref_nll")
#: Metric names as they appear in records (``metric`` field).
METRICS = ANSWER_METRICS.names() + MODEL_METRICS


def score_example(example: Example, voted_answer: str | None, metric: str, *, rel_tol: float = 0.01,
                  abs_tol: float = 0.0) -> Score:
    """Score the voted answer of one example with ``metric`` (one of :data:`ANSWER_METRICS`:
    choice | exact | f1 | numeric).

    NaN (with the reason in ``error``) when there is no answer to score or the gold cannot be
    compared; never a silent 0. ``judge`` and ``ref_nll`` need a model: see :func:`judge_chat` /
    :func:`score_verdict` and :func:`reference_nll_nats` (UsageError here).
    """
    if metric in MODEL_METRICS:
        raise UsageError(f"metric {metric!r} needs a model: use judge_chat/parse_judge/score_verdict for "
                         "'judge' and reference_nll_nats for 'ref_nll'")
    if metric not in ANSWER_METRICS:
        raise UsageError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    if voted_answer is None or not voted_answer.strip():
        return Score(math.nan, "no parseable answer in any prediction sample", metric)
    return ANSWER_METRICS.load(metric)(example, voted_answer, rel_tol=rel_tol, abs_tol=abs_tol)


# --------------------------------------------------------------------------------------------
# Prompt values, judge, reference perplexity


def options_block(example: Example) -> str:
    """The options lines for the predict prompt ("A. ...", one per line), or "" for open questions."""
    if not example.options:
        return ""
    lines = [f"{LETTERS[i]}. {o}" for i, o in enumerate(example.options)]
    return "Options:\n" + "\n".join(lines) + "\nAnswer with the letter of one option."


def predict_values(example: Example, compression: str) -> dict[str, str]:
    """The placeholder values of ``prompts/predict.yaml`` for one example and one compression."""
    return {"compression": compression, "question": example.question, "options_block": options_block(example)}


def _gold_text(example: Example) -> str:
    if example.options:
        return "; ".join(f"{a}. {example.options[LETTERS.index(a)]}" for a in example.answers)
    if example.answers:
        return " | ".join(example.answers)
    if example.reference is not None:
        return example.reference
    raise UsageError(f"example {example.id!r} has neither answers nor a reference for the judge")


def judge_values(example: Example) -> dict[str, str]:
    """The judge prompt's fixed placeholder values: {question} (with the options, if any) and {gold}."""
    question = example.question
    if example.options:
        question += "\n" + "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(example.options))
    return {"question": question, "gold": _gold_text(example)}


def judge_chat(example: Example, prediction: str, prompt: Any) -> list[dict[str, str]]:
    """The judge chat for one prediction: ``prompt`` (a Prompt, e.g. ``load_prompt("judge")``)
    rendered with {question} (with the options, if any), {gold} and {prediction}."""
    return prompt.render_chat(**judge_values(example), prediction=prediction)


_TRUE = {"true", "yes", "correct", "1", "right"}
_FALSE = {"false", "no", "incorrect", "0", "wrong"}


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        v = value.strip().strip(".!\"'").lower()
        if v in _TRUE:
            return True
        if v in _FALSE:
            return False
    return None


def parse_judge(text: str | None) -> Verdict:
    """Parse a judge reply: JSON ``{"correct": true/false, "reason": ...}`` anywhere in the text
    (tolerant like :func:`parse_prediction`; "yes"/"no"/"correct"/"incorrect" strings accepted),
    else a reply that starts with yes/no/correct/incorrect/true/false. Otherwise an error."""
    if text is None or not text.strip():
        return Verdict(None, None, "empty judge output")
    obj = find_json_object(text, "correct")
    if obj is not None:
        verdict = _as_bool(obj.get("correct"))
        reason = _as_text(obj.get("reason"))
        if verdict is None:
            return Verdict(None, reason, f"judge 'correct' field is not a boolean: {obj.get('correct')!r}")
        return Verdict(verdict, reason)
    loose = _loose_field(text, "correct")
    if loose is not None:  # a "correct": ... field that no object parse could read (e.g. cut off)
        verdict = _as_bool(loose)
        if verdict is None:  # not the reply's first word "correct" (below): the field says something else
            return Verdict(None, _loose_field(text, "reason"), f"judge 'correct' field is not a boolean: {loose!r}")
        return Verdict(verdict, _loose_field(text, "reason"))
    m = re.match(r"^\W*(incorrect|correct|yes|no|true|false)\b", text.strip(), re.I)
    if m:
        return Verdict(_as_bool(m.group(1)), text.strip()[:200])
    return Verdict(None, None, f"no verdict found in judge output {text.strip()[:80]!r}")


def score_verdict(verdict: Verdict) -> Score:
    """A judge verdict as a Score: 1.0 correct, 0.0 incorrect, NaN with the reason if unparseable."""
    if verdict.correct is None:
        return Score(math.nan, verdict.error or "no judge verdict", "judge")
    return Score(1.0 if verdict.correct else 0.0, None, "judge")


def reference_nll_nats(backend: Any, prefix: str, reference: str) -> tuple[float, int]:
    """Negative log-likelihood of ``reference`` after ``prefix`` under ``backend``.

    Returns ``(total_nats, n_tokens)`` with total_nats = -sum_t log p(ref_t | prefix, ref_<t)
    (natural log, from ``backend.score``; the reference tokenised on its own, per the backend
    contract). Perplexity = exp(total_nats / n_tokens), see :func:`perplexity`.
    """
    if not isinstance(reference, str) or not reference.strip():
        raise UsageError("reference_nll_nats needs a non-empty reference answer")
    if not isinstance(prefix, str):
        raise UsageError("reference_nll_nats needs the prefix as a string")
    (tl,) = backend.score([prefix], [reference])
    if tl.n_tokens == 0:
        raise UsageError(f"reference {reference[:40]!r} has no tokens under this backend's tokenizer")
    return -tl.total_nats, tl.n_tokens


def perplexity(total_nats: float, n_tokens: int) -> float:
    """exp(total_nats / n_tokens): the per-token perplexity of a reference answer."""
    if n_tokens <= 0:
        raise UsageError("perplexity needs n_tokens >= 1")
    return math.exp(total_nats / n_tokens)
