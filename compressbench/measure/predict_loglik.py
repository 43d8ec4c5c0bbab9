r"""The likelihood predictor (``predictor_mode: loglik``): answer by scoring, not by generating.

For one example and one compression z, the predictor prompt (``prompts/predict_loglik.yaml``)
is rendered to end at the answer slot, and

- a **multiple-choice** question is answered by scoring every option o_k as a continuation of
  that prompt, all in **one** ``score_matrix([prompt], continuations)`` call (the prompt is the
  shared prefix). With ``ll_k`` = total log p(continuation_k | prompt) (nats), the answer is
  lm-evaluation-harness's:

      acc:       argmax_k ll_k
      acc_norm:  argmax_k ll_k / len(o_k)        (len in characters of the option text)

  (``np.argmax``: the first index wins a tie). Each option's total, its token count (the
  scorer's ``count_tokens``, the same tokenisation ``score_matrix`` uses) and its per-token
  log-prob ``ll_k / n_tokens_k`` are recorded.
- an **open** question with a reference answer is scored by the reference's log-prob after the
  prompt, in nats per token (higher is better; the distortion the report uses is its negation).

Prompt format (recorded as ``prompt_format``):

- ``chat``: for a backend with a chat template (``backend.has_chat_template`` and
  ``backend.chat_prefix``), the prompt's chat parts rendered by that template up to the
  start of the assistant's turn; the continuation is the option text itself, i.e. the
  **assistant's answer** (no delimiter: the assistant turn starts right there).
- ``completion``: otherwise (base models, or backends that cannot render a chat template
  client-side), the prompt's plain-text ``completion`` part ending in "Answer:"; the
  continuation is ``" " + option`` (lm-evaluation-harness's target delimiter).

Needs only ``score_matrix``, ``score`` and ``count_tokens`` from the backend (HF, vLLM and the
HTTP backend all have them).

Worked example: options ("red", "blue") with totals (-1.2, -0.9) nats and lengths (3, 4)
characters: acc picks "blue" (-0.9 > -1.2); acc_norm compares -0.4 with -0.225 and also
picks "blue".

**Usable information about the answer** (predictive V-information, Xu et al. 2020; its pointwise
form PVI, Ethayarajh et al. 2022). The predictor's option distribution is
``q(o_k | z, question) = softmax_k(ll_k)`` over the options' total log-probs (the ``acc`` scores),
and for one example with gold answer a* and its empty compression ∅ (the question alone)::

    pvi_bits = log2 q(a* | z, question) - log2 q(a* | ∅, question)        (bits, log base 2)

(:func:`pvi_bits`; several gold letters: q(a*) is their summed probability). It is 0 for z = ∅ by
construction, positive when z makes the gold answer more likely, and at most
``-log2 q(a* | ∅)`` (= log2 #options when the predictor without context is uniform). The mean over
examples is the usable information I_V(Z -> A) the predictor family V can extract about the answer.
For an open question scored by the likelihood of its reference r, the same difference of
reference log-probs: ``(log p(r | z) - log p(r | ∅)) / ln 2`` bits per answer.
:func:`confidence` is ``max_k q(o_k | z)``, a signal that needs no gold answer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import logsumexp

from compressbench.core.errors import BackendError, UsageError
from compressbench.core.prompts import Prompt, load_prompt
from compressbench.core.types import Example

#: The predictor prompt used when none is given.
DEFAULT_LOGLIK_PROMPT = "predict_loglik"
#: lm-evaluation-harness's default target delimiter (between the prompt and a continuation).
TARGET_DELIMITER = " "
PROMPT_FORMATS = ("auto", "chat", "completion")
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class OptionScore:
    """One scored option: ``logprob_nats`` = total log p(continuation | prompt), natural log."""

    option: str
    continuation: str
    logprob_nats: float
    n_tokens: int

    @property
    def logprob_per_token_nats(self) -> float:
        return self.logprob_nats / self.n_tokens if self.n_tokens else math.nan

    @property
    def n_chars(self) -> int:
        """Characters of the option text: lm-evaluation-harness's ``acc_norm`` length."""
        return len(self.option)


@dataclass(frozen=True)
class LoglikPrediction:
    """The likelihood predictor's answer for one (example, compression).

    Multiple choice: ``options`` scored, ``choice``/``choice_norm`` their argmax indices (acc /
    acc_norm), ``answer``/``answer_norm`` the option letters. Open question: ``options`` is
    empty, the answers are None, and ``reference_*`` hold the reference's log-prob.
    """

    prompt_format: str
    prompt_id: str
    options: tuple[OptionScore, ...] = ()
    choice: int | None = None
    choice_norm: int | None = None
    reference_logprob_nats: float | None = None
    reference_n_tokens: int | None = None

    @property
    def answer(self) -> str | None:
        return None if self.choice is None else _LETTERS[self.choice]

    @property
    def answer_norm(self) -> str | None:
        return None if self.choice_norm is None else _LETTERS[self.choice_norm]

    @property
    def reference_logprob_per_token_nats(self) -> float | None:
        if self.reference_logprob_nats is None or not self.reference_n_tokens:
            return None
        return self.reference_logprob_nats / self.reference_n_tokens

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for run records."""
        return {
            "prompt_format": self.prompt_format,
            "prompt_id": self.prompt_id,
            "answer": self.answer,
            "answer_norm": self.answer_norm,
            "options": [{"option": o.option, "logprob_nats": o.logprob_nats, "n_tokens": o.n_tokens,
                         "logprob_per_token_nats": o.logprob_per_token_nats} for o in self.options],
            "reference_logprob_nats": self.reference_logprob_nats,
            "reference_n_tokens": self.reference_n_tokens,
            "reference_logprob_per_token_nats": self.reference_logprob_per_token_nats,
        }


def _resolve_prompt(prompt: Prompt | str | None) -> Prompt:
    p = load_prompt(prompt or DEFAULT_LOGLIK_PROMPT) if not isinstance(prompt, Prompt) else prompt
    if p.user is None:
        raise UsageError(f"prompt {p.name!r} has no chat parts; the loglik predictor prompt needs 'user' "
                         "(and a 'completion' part for base models); see prompts/predict_loglik.yaml")
    return p


def resolve_prompt_format(backend: Any, prompt_format: str = "auto") -> str:
    """``chat`` when the backend renders a chat template (and ``prompt_format`` allows), else
    ``completion``. Asking for ``chat`` from a backend without a template is a UsageError."""
    if prompt_format not in PROMPT_FORMATS:
        raise UsageError(f"prompt_format must be one of {', '.join(PROMPT_FORMATS)}, got {prompt_format!r}")
    can_chat = bool(getattr(backend, "has_chat_template", False)) and callable(getattr(backend, "chat_prefix", None))
    if prompt_format == "chat" and not can_chat:
        raise UsageError(f"backend {getattr(backend, 'name', backend)!r} cannot render a chat template for "
                         "scoring; use prompt_format 'completion' (or 'auto')")
    if prompt_format == "auto":
        return "chat" if can_chat else "completion"
    return prompt_format


def check_backend_can_score(backend: Any, role: str = "predictor") -> None:
    """A clear error when a backend cannot score continuations (loglik mode needs it)."""
    missing = [m for m in ("score_matrix", "score", "count_tokens") if not callable(getattr(backend, m, None))]
    if missing:
        raise UsageError(f"{role} {getattr(backend, 'name', backend)!r} cannot score continuations (no "
                         f"{', '.join(missing)}); use predictor_mode: generate for it")


def loglik_prompt(backend: Any, example: Example, compression: str, *, prompt: Prompt | str | None = None,
                  prompt_format: str = "auto") -> tuple[str, str, str]:
    """(scoring prefix, target delimiter, format) for one example and compression."""
    p = _resolve_prompt(prompt)
    fmt = resolve_prompt_format(backend, prompt_format)
    values = {"compression": compression, "question": example.question}
    values = {k: v for k, v in values.items() if k in p.fields}
    if fmt == "chat":
        return backend.chat_prefix(p.render_chat(**values)), "", fmt
    return p.render_completion(**values), TARGET_DELIMITER, fmt


def predict_loglik(backend: Any, example: Example, compression: str, *, prompt: Prompt | str | None = None,
                   prompt_format: str = "auto") -> LoglikPrediction:
    """Answer one example from one compression by likelihood (see the module docstring).

    Multiple choice: one ``backend.score_matrix([prefix], continuations)`` call. Open question
    with a ``reference``: one ``backend.score`` call for the reference. An example with neither
    options nor a reference is a UsageError.
    """
    check_backend_can_score(backend)
    if not isinstance(example, Example):
        raise UsageError(f"example must be an Example, got {type(example).__name__}")
    if not isinstance(compression, str):
        raise UsageError(f"compression must be a string, got {type(compression).__name__}")
    p = _resolve_prompt(prompt)
    prefix, delim, fmt = loglik_prompt(backend, example, compression, prompt=p, prompt_format=prompt_format)
    name = getattr(backend, "name", type(backend).__name__)
    if example.options:
        conts = [delim + o for o in example.options]
        mat = np.asarray(backend.score_matrix([prefix], conts), dtype=np.float64)
        if mat.shape != (1, len(conts)):
            raise BackendError(f"{name}: score_matrix returned shape {mat.shape}, expected (1, {len(conts)})")
        counts = backend.count_tokens(conts)
        scored = tuple(OptionScore(o, c, float(ll), int(n))
                       for o, c, ll, n in zip(example.options, conts, mat[0], counts))
        lls = np.array([s.logprob_nats for s in scored])
        lens = np.array([float(s.n_chars) for s in scored])
        return LoglikPrediction(fmt, p.id, scored, int(np.argmax(lls)), int(np.argmax(lls / lens)))
    if example.reference is None or not example.reference.strip():
        raise UsageError(f"example {example.id!r} has neither options nor a reference answer to score")
    (tl,) = backend.score([prefix], [delim + example.reference])
    return LoglikPrediction(fmt, p.id, reference_logprob_nats=tl.total_nats, reference_n_tokens=tl.n_tokens)


def predict_loglik_batch(backend: Any, examples: Sequence[Example], compressions: Sequence[str], *,
                         prompt: Prompt | str | None = None, prompt_format: str = "auto") -> list[LoglikPrediction]:
    """:func:`predict_loglik` over pairs ``(examples[i], compressions[i])``, in order."""
    if len(examples) != len(compressions):
        raise UsageError(f"got {len(examples)} examples and {len(compressions)} compressions; pair them one to one")
    p = _resolve_prompt(prompt)
    return [predict_loglik(backend, e, z, prompt=p, prompt_format=prompt_format)
            for e, z in zip(examples, compressions)]


def option_probs(loglik: Mapping[str, Any]) -> np.ndarray:
    """The predictor's option distribution ``softmax(ll_k)`` from a recorded prediction
    (:meth:`LoglikPrediction.as_dict`: ``options[k].logprob_nats``); empty for an open question."""
    lls = np.array([float(o["logprob_nats"]) for o in loglik.get("options") or ()], dtype=np.float64)
    if lls.size == 0:
        return lls
    if not np.all(np.isfinite(lls)):
        raise UsageError(f"an option log-prob is not finite ({lls.tolist()}); cannot form the option distribution")
    return np.exp(lls - logsumexp(lls))


def confidence(loglik: Mapping[str, Any]) -> float | None:
    """``max_k q(o_k | z)``: the predictor's probability of its own answer (None: open question)."""
    q = option_probs(loglik)
    return float(q.max()) if q.size else None


def gold_surprisal_bits(loglik: Mapping[str, Any], gold: Sequence[str]) -> float | None:
    """``-log2 q(a* | z)``: the predictor's surprisal of the gold answer in bits (several gold
    letters: of their summed probability), or ``-log2 p(r | z)`` of an open question's reference.
    None when neither form applies (no option scores, no gold letter among the options, no reference)."""
    if loglik.get("options"):
        q = option_probs(loglik)
        idx = [_LETTERS.index(g) for g in gold if g in _LETTERS[: q.size]]
        return float(-np.log2(q[idx].sum())) if idx else None
    ref = loglik.get("reference_logprob_nats")
    return None if ref is None else -float(ref) / math.log(2)


def pvi_bits(loglik: Mapping[str, Any], empty: Mapping[str, Any], gold: Sequence[str]) -> float | None:
    """Pointwise usable information about the answer, in bits (see the module docstring):
    ``log2 q(a* | z) - log2 q(a* | ∅)`` for a choice question (``gold`` = the gold letters), or the
    reference's ``(log p(r | z) - log p(r | ∅)) / ln 2`` for an open one: the drop in
    :func:`gold_surprisal_bits` from the empty compression ∅ to z, so at most
    ``gold_surprisal_bits(empty)``. ``loglik`` and ``empty`` are recorded predictions
    (:meth:`LoglikPrediction.as_dict`) of the same example from z and from the empty compression.
    None when neither form applies."""
    n, n0 = len(loglik.get("options") or ()), len(empty.get("options") or ())
    if n != n0:
        raise UsageError(f"{n} options scored from the compression but {n0} from the empty one; "
                         "they must be the same example")
    s, s0 = gold_surprisal_bits(loglik, gold), gold_surprisal_bits(empty, gold)
    return None if s is None or s0 is None else s0 - s


def choice_scores(pred: LoglikPrediction, example: Example) -> tuple[float, float]:
    """(acc, acc_norm) of one prediction against the example's gold letter(s): 1.0 or 0.0 each."""
    if pred.choice is None or not example.options:
        raise UsageError(f"example {example.id!r}: acc/acc_norm need a multiple-choice prediction")
    gold = set(example.answers)
    return float(pred.answer in gold), float(pred.answer_norm in gold)


__all__ = [
    "DEFAULT_LOGLIK_PROMPT", "LoglikPrediction", "OptionScore", "PROMPT_FORMATS", "TARGET_DELIMITER",
    "check_backend_can_score", "choice_scores", "confidence", "gold_surprisal_bits", "loglik_prompt", "option_probs", "predict_loglik",
    "predict_loglik_batch", "pvi_bits", "resolve_prompt_format",
]
