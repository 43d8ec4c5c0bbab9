r"""The model-facing half of the MI estimate: the (N, M, N) log-probability tensor.

Given N examples (context x_l with its query q_l), M compressions z_ij per example and any
scorer backend (the seam in :mod:`compressbench.backends.base`; the scorer is a role of its
own, independent of which model compressed), build::

    logp[i, j, l] = log p(z_ij | prefix(x_l, q_l))        nats, float64, shape (N, M, N)

where ``prefix(x_l, q_l)`` is the scoring prompt (``prompts/mi_score.yaml`` by default: an
instruction to summarise the text with respect to the question, the text x_l, its own question
q_l) and the compression is the scored continuation (tokenised once on its own, per the
tokenisation contract). All of it is one ``scorer.score_matrix`` call: N prefixes (one per
distinct prefix) against the distinct compressions, so a shared-prefix backend pays N context
prefills plus N x (N M) short continuations. :func:`score_mi` then calls
:func:`compressbench.measure.mi.estimate_mi`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from compressbench.core.errors import BackendError, UsageError
from compressbench.measure.mi import MIEstimate, estimate_mi
from compressbench.core.prompts import Prompt, load_prompt
from compressbench.core.types import Example

log = logging.getLogger(__name__)

#: The scoring prompt used when none is given.
DEFAULT_SCORING_PROMPT = "mi_score"


def _resolve_prompt(prompt: Prompt | str | None) -> Prompt:
    if prompt is None:
        prompt = DEFAULT_SCORING_PROMPT
    if isinstance(prompt, Prompt):
        p = prompt
    elif isinstance(prompt, str):
        p = load_prompt(prompt)
    else:
        raise UsageError(f"prompt must be a Prompt, a prompt name or a path to a YAML file; got {type(prompt).__name__}")
    if p.text is None:
        raise UsageError(
            f"prompt {p.name!r} is a chat prompt; the scoring prompt needs a 'text' part with "
            "{context} and {question} placeholders (see prompts/mi_score.yaml)"
        )
    return p


def score_prefixes(examples: Sequence[Example], prompt: Prompt | str | None = None) -> list[str]:
    """The scoring prefix of each example: the prompt's text with its context and own question.

    ``prompt`` is a :class:`~compressbench.core.prompts.Prompt`, a prompt name in ``prompts/`` or a
    YAML path; default ``mi_score``. Its placeholders may be ``context`` and ``question``.
    """
    p = _resolve_prompt(prompt)
    exs = _check_examples(examples)
    return [p.render_text(context=ex.context, question=ex.question) for ex in exs]


@dataclass(frozen=True)
class LogpTensor:
    """The scored tensor and what produced it.

    logp_nats: (N, M, N) float64, ``logp_nats[i, j, l] = log p(z_ij | prefix(x_l))`` in nats.
    n_tokens: (N, M) int64, tokens of each compression under the scorer's tokenizer.
    prompt_id: the scoring prompt's content-hash id.
    scorer: the scorer backend's name.

    ``np.asarray(tensor)`` gives ``logp_nats``.
    """

    logp_nats: np.ndarray
    n_tokens: np.ndarray
    prompt_id: str
    scorer: str

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        arr = self.logp_nats if dtype is None else self.logp_nats.astype(dtype)
        return arr.copy() if copy else arr

    @property
    def n_contexts(self) -> int:
        return int(self.logp_nats.shape[0])

    @property
    def n_samples(self) -> int:
        return int(self.logp_nats.shape[1])


def _check_examples(examples: Sequence[Example]) -> list[Example]:
    if isinstance(examples, (str, Example)):
        raise UsageError("examples must be a list of Example objects")
    exs = list(examples)
    for k, ex in enumerate(exs):
        if not isinstance(ex, Example):
            raise UsageError(f"examples[{k}] must be an Example (context, question), got {type(ex).__name__}")
    return exs


def _check_compressions(compressions: Sequence[Sequence[str]], n: int) -> list[list[str]]:
    if isinstance(compressions, str):
        raise UsageError("compressions must be a list (one per example) of lists of M strings")
    rows = list(compressions)
    if len(rows) != n:
        raise UsageError(f"compressions has {len(rows)} rows but there are {n} examples; give one list "
                         "of M compressions per example, in the same order")
    out: list[list[str]] = []
    m = None
    for i, row in enumerate(rows):
        if isinstance(row, str) or not isinstance(row, Sequence):
            raise UsageError(f"compressions[{i}] must be a list of M strings (the compressions of "
                             f"examples[{i}]), got {type(row).__name__}")
        row = list(row)
        if m is None:
            m = len(row)
            if m == 0:
                raise UsageError("compressions[0] is empty; give at least one compression per example")
        elif len(row) != m:
            raise UsageError(f"compressions must be rectangular (M per example): compressions[0] has {m}, "
                             f"compressions[{i}] has {len(row)}")
        for j, z in enumerate(row):
            if not isinstance(z, str):
                raise UsageError(f"compressions[{i}][{j}] must be a string, got {type(z).__name__}")
        out.append(row)
    return out


def build_logp_tensor(
    scorer: Any,
    examples: Sequence[Example],
    compressions: Sequence[Sequence[str]],
    *,
    prompt: Prompt | str | None = None,
) -> LogpTensor:
    """Score every compression under every example's scoring prefix with one ``score_matrix`` call.

    Args:
        scorer: any backend implementing ``score_matrix`` and ``count_tokens``.
        examples: N >= 2 examples (context, question).
        compressions: ``compressions[i]`` is the list of M strings sampled for ``examples[i]``
            (rectangular: the same M for every example).
        prompt: the scoring prompt (default ``mi_score``).

    Returns a :class:`LogpTensor` with ``logp_nats[i, j, l] = log p(compressions[i][j] |
    prefix(examples[l]))`` (nats). Identical prefixes and identical compressions are scored once
    and copied (e.g. M greedy samples that coincide).

    Raises UsageError for fewer than 2 examples or ragged/malformed compressions; BackendError
    if the scorer returns a matrix of the wrong shape or non-numbers.
    """
    p = _resolve_prompt(prompt)
    exs = _check_examples(examples)
    n = len(exs)
    if n < 2:
        raise UsageError(f"MI needs at least 2 examples (contexts); got {n}")
    rows = _check_compressions(compressions, n)
    m = len(rows[0])
    prefixes = score_prefixes(exs, p)
    flat = [z for row in rows for z in row]  # position i * M + j holds z_ij

    p_index = {x: k for k, x in enumerate(dict.fromkeys(prefixes))}
    c_index = {z: k for k, z in enumerate(dict.fromkeys(flat))}
    uniq_p, uniq_c = list(p_index), list(c_index)
    p_pos = np.array([p_index[x] for x in prefixes], dtype=np.int64)
    c_pos = np.array([c_index[z] for z in flat], dtype=np.int64)
    log.debug("scoring %d prefixes x %d continuations (%d examples x %d samples)",
              len(uniq_p), len(uniq_c), n, m)

    mat = np.asarray(scorer.score_matrix(uniq_p, uniq_c), dtype=np.float64)
    if mat.shape != (len(uniq_p), len(uniq_c)):
        raise BackendError(f"scorer {getattr(scorer, 'name', scorer)!r}: score_matrix returned shape "
                           f"{mat.shape}, expected ({len(uniq_p)}, {len(uniq_c)}) (prefixes x continuations)")
    # full[l, i*M + j] = log p(z_ij | prefix_l); logp[i, j, l] = full[l, i*M + j].
    full = mat[np.ix_(p_pos, c_pos)]
    logp = np.ascontiguousarray(full.T.reshape(n, m, n))

    counts = scorer.count_tokens(uniq_c)
    if len(counts) != len(uniq_c):
        raise BackendError(f"scorer {getattr(scorer, 'name', scorer)!r}: count_tokens returned "
                           f"{len(counts)} counts for {len(uniq_c)} texts")
    n_tokens = np.asarray(counts, dtype=np.int64)[c_pos].reshape(n, m)
    return LogpTensor(logp_nats=logp, n_tokens=n_tokens, prompt_id=p.id,
                      scorer=str(getattr(scorer, "name", type(scorer).__name__)))


def score_mi(
    scorer: Any,
    examples: Sequence[Example],
    compressions: Sequence[Sequence[str]],
    *,
    prompt: Prompt | str | None = None,
    **estimate_kwargs: Any,
) -> MIEstimate:
    """Build the tensor with ``scorer`` and estimate I(X; Z) in bits.

    ``estimate_kwargs`` go to :func:`compressbench.measure.mi.estimate_mi` (clip, ci, n_boot, seed,
    marginal); ``n_tokens`` comes from the scorer's tokenizer and cannot be passed.
    """
    if "n_tokens" in estimate_kwargs:
        raise UsageError("score_mi counts compression tokens with the scorer; do not pass n_tokens "
                         "(call estimate_mi on build_logp_tensor(...) to use your own counts)")
    t = build_logp_tensor(scorer, examples, compressions, prompt=prompt)
    n_tok = t.n_tokens if t.n_tokens.any() else None  # all-empty compressions: no rate
    return estimate_mi(t.logp_nats, n_tokens=n_tok, **estimate_kwargs)


__all__ = ["DEFAULT_SCORING_PROMPT", "LogpTensor", "build_logp_tensor", "score_mi", "score_prefixes"]
