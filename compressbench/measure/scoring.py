r"""The model-facing half of the MI estimate: the (N, M, N) log-probability tensor.

Given N examples (context x_l with its query q_l), M compressions z_ij per example and any
scorer backend (the seam in :mod:`compressbench.backends.base`; the scorer is a role of its
own, independent of which model compressed), build::

    logp[i, j, l] = log p(z_ij | prefix(x_l, q_l))        nats, float64, shape (N, M, N)

where ``prefix(x_l, q_l)`` is the scoring prompt (``prompts/mi_score.yaml`` by default: an
instruction to summarise the text with respect to the question, the text x_l, its own question
q_l) and the compression is the scored continuation (tokenised once on its own, per the
tokenisation contract). With every context (``mi_negatives: all``) all of it is one
``scorer.score_matrix`` call: N prefixes (one per distinct prefix) against the distinct
compressions, so a shared-prefix backend pays N context prefills plus N x (N M) short
continuations. With a design of K negatives only ``logp[i, :, design[i]]`` is scored
(``scorer.score_subsets``: each prefix, once, then only the continuations it needs; N prefills
plus N M (K + 1) continuations); the other entries are NaN. :func:`build_logp_tensors` scores
several groups that share the prompt and the examples with one prefill per distinct prefix.
:func:`score_mi` then calls :func:`compressbench.measure.mi.estimate_mi` (all) or
:func:`compressbench.measure.mi.estimate_mi_negatives` (K, auto).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from compressbench.backends.base import score_subsets_by_matrix
from compressbench.core.errors import BackendError, UsageError
from compressbench.measure.mi import (
    AUTO_CORRECTION_BITS,
    AUTO_MARGIN_BITS,
    DESIGN_SEED,
    STOP_ALL,
    STOP_BELOW_CEILING,
    STOP_CHEAP,
    MIEstimate,
    auto_next_k,
    auto_schedule,
    estimate_mi,
    estimate_mi_negatives,
    negatives_design,
    parse_negatives,
)
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


#: ``auto`` scores every context in one round where the distinct (prefix, compression) pairs of the
#: full tensor are at most this many times those of its start design (:func:`auto_scores_all`).
AUTO_ALL_FACTOR = 2.0


def distinct_pairs(prefixes: Sequence[str], compressions: Sequence[Sequence[str]],
                   design: np.ndarray | None = None) -> int:
    """The distinct (prefix, compression text) pairs :func:`build_logp_tensors` scores for one tensor:
    every distinct prefix against every distinct text (``design`` None), or per distinct prefix the
    distinct texts of the rows whose design holds it."""
    if design is None:
        return len(set(prefixes)) * len({z for row in compressions for z in row})
    need: dict[str, set[str]] = {}
    for i, cols in enumerate(np.asarray(design)):
        for l_ in cols:
            need.setdefault(prefixes[int(l_)], set()).update(compressions[i])
    return sum(len(v) for v in need.values())


def auto_scores_all(prefixes: Sequence[str], compressions: Sequence[Sequence[str]],
                    design_seed: int | None = DESIGN_SEED, factor: float = AUTO_ALL_FACTOR) -> bool:
    """``auto``'s shortcut: True where scoring every context costs at most ``factor`` times the pairs
    of the start design (:func:`distinct_pairs`): compressions that repeat across contexts (a
    baseline keeping few values, a task with few distinct contexts) make the full matrix nearly as
    cheap as K = 15, and a second round would pay every prefill again. Then ``auto`` is the all
    estimator (``k_stop`` :data:`compressbench.measure.mi.STOP_CHEAP`)."""
    n = len(prefixes)
    k = auto_schedule(n)[0]
    if k >= n - 1:
        return True
    full = distinct_pairs(prefixes, compressions)
    return full <= factor * distinct_pairs(prefixes, compressions, negatives_design(n, k, design_seed))


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
    design: np.ndarray | None = None,
    known: np.ndarray | None = None,
) -> LogpTensor:
    """Score every compression under every example's scoring prefix with one ``score_matrix`` call.

    Args:
        scorer: any backend implementing ``score_matrix`` and ``count_tokens``.
        examples: N >= 2 examples (context, question).
        compressions: ``compressions[i]`` is the list of M strings sampled for ``examples[i]``
            (rectangular: the same M for every example).
        prompt: the scoring prompt (default ``mi_score``).
        design: optional (N, K + 1) design of negatives (:func:`compressbench.measure.mi.negatives_design`):
            only ``logp[i, :, design[i]]`` is scored (``score_subsets``); the other entries are NaN.
        known: optional (N, M, N) tensor of entries already scored (NaN: not); they are kept, not
            re-scored (``auto`` growing K).

    Returns a :class:`LogpTensor` with ``logp_nats[i, j, l] = log p(compressions[i][j] |
    prefix(examples[l]))`` (nats). Identical prefixes and identical compressions are scored once
    and copied (e.g. M greedy samples that coincide).

    Raises UsageError for fewer than 2 examples or ragged/malformed compressions; BackendError
    if the scorer returns a matrix of the wrong shape or non-numbers.
    """
    return build_logp_tensors(scorer, [TensorJob(examples, _rows(compressions), design, known)],
                              prompt=prompt)[0]


def _rows(compressions: Sequence[Sequence[str]]) -> Sequence[Sequence[str]]:
    if isinstance(compressions, str):
        raise UsageError("compressions must be a list (one per example) of lists of M strings")
    return compressions


@dataclass(frozen=True)
class TensorJob:
    """One group's scoring work: its examples, their compressions (N x M), optionally a design of
    negatives (N, K + 1) and the entries already known (N, M, N; NaN: not scored)."""

    examples: Sequence[Example]
    compressions: Sequence[Sequence[str]]
    design: np.ndarray | None = None
    known: np.ndarray | None = None


@dataclass(frozen=True)
class ScoredWork:
    """What one job costs in one :func:`build_logp_tensors` call, per scoring prefix l:
    ``continuation_tokens[l]`` the scorer token counts of the continuations scored after prefix l
    for this job: each example's distinct compressions (M identical copies, e.g. a baseline's, are
    charged once; texts that recur across examples or jobs are computed once but charged to each,
    as the plan counts them). Who is charged the prefill of a prefix several jobs share is the
    engine's rule (:func:`compressbench.engine.model_work.share_prefills`)."""

    continuation_tokens: list[list[int]]


def build_logp_tensors(scorer: Any, jobs: Sequence[TensorJob], *, prompt: Prompt | str | None = None,
                       work: list[ScoredWork] | None = None) -> list[LogpTensor]:
    """Score several groups' tensors with **one prefill per distinct scoring prefix**.

    Groups that share the scorer, the scoring prompt and the example set have the same prefixes:
    each distinct prefix is run once and the continuations of every group that needs it are scored
    after it (``score_subsets``; one ``score_matrix`` call when every prefix needs every distinct
    continuation). Each job gets the tensor :func:`build_logp_tensor` would give it alone (to float
    rounding of the batching). ``work``, if given, is filled with one :class:`ScoredWork` per job.
    """
    p = _resolve_prompt(prompt)
    prepared = []
    for job in jobs:
        exs = _check_examples(job.examples)
        n = len(exs)
        if n < 2:
            raise UsageError(f"MI needs at least 2 examples (contexts); got {n}")
        rows = _check_compressions(job.compressions, n)
        m = len(rows[0])
        need = np.ones((n, n), dtype=bool)  # need[i, l]: row i is scored under prefix l
        if job.design is not None:
            d = np.asarray(job.design, dtype=np.int64)
            if d.ndim != 2 or d.shape[0] != n or (d[:, 0] != np.arange(n)).any():
                raise UsageError(f"design must be (N, K + 1) = ({n}, K + 1) with column 0 the context itself")
            need = np.zeros((n, n), dtype=bool)
            need[np.repeat(np.arange(n), d.shape[1]), d.ravel()] = True
        todo = np.repeat(need[:, None, :], m, axis=1)  # (N, M, N)
        if job.known is not None:
            known = np.asarray(job.known, dtype=np.float64)
            if known.shape != (n, m, n):
                raise UsageError(f"known must have shape (N, M, N) = ({n}, {m}, {n}); got {known.shape}")
            todo &= np.isnan(known)
        prepared.append((exs, rows, m, score_prefixes(exs, p), [z for row in rows for z in row], todo))

    p_index: dict[str, int] = {}
    c_index: dict[str, int] = {}
    for _, _, _, prefixes, flat, _ in prepared:
        for x in prefixes:
            p_index.setdefault(x, len(p_index))
        for z in flat:
            c_index.setdefault(z, len(c_index))
    # A (prefix, compression) pair already known in some job's tensor (an earlier round of auto,
    # under another row with the same text) is copied, not scored again.
    reuse: dict[tuple[int, int], float] = {}
    for k, (exs, rows, m, prefixes, flat, todo) in enumerate(prepared):
        if jobs[k].known is None:
            continue
        known = np.asarray(jobs[k].known, dtype=np.float64)
        for i, j, l_ in np.argwhere(~np.isnan(known)):
            reuse.setdefault((p_index[prefixes[l_]], c_index[flat[i * m + j]]), float(known[i, j, l_]))
    copied: list[list[tuple[int, int, int, float]]] = [[] for _ in prepared]
    if reuse:
        for k, (exs, rows, m, prefixes, flat, todo) in enumerate(prepared):
            for i, j, l_ in np.argwhere(todo):
                hit = reuse.get((p_index[prefixes[l_]], c_index[flat[i * m + j]]))
                if hit is not None:
                    copied[k].append((int(i), int(j), int(l_), hit))
                    todo[i, j, l_] = False
    uniq_p, uniq_c = list(p_index), list(c_index)
    wanted: list[dict[int, None]] = [{} for _ in uniq_p]  # per distinct prefix, its continuations (ordered)
    for k, (exs, rows, m, prefixes, flat, todo) in enumerate(prepared):
        for i, j, l_ in np.argwhere(todo):
            pp, cc = p_index[prefixes[l_]], c_index[flat[i * m + j]]
            wanted[pp].setdefault(cc, None)
    if len(prepared) == 1:
        log.debug("scoring %d prefixes x %d continuations (%d examples x %d samples)%s", len(uniq_p), len(uniq_c),
                  len(prepared[0][0]), prepared[0][2],
                  "" if jobs[0].design is None and jobs[0].known is None
                  else f": {sum(len(w) for w in wanted)} pairs of the design")
    else:
        log.debug("scoring %d groups after one prefill per prefix: %d distinct prefixes, %d distinct "
                  "continuations, %d pairs", len(prepared), len(uniq_p), len(uniq_c), sum(len(w) for w in wanted))
    name = getattr(scorer, "name", scorer)
    values: dict[tuple[int, int], float] = {}
    if all(len(w) == len(uniq_c) for w in wanted) and uniq_c:  # every prefix needs everything: the matrix
        mat = np.asarray(scorer.score_matrix(uniq_p, uniq_c), dtype=np.float64)
        if mat.shape != (len(uniq_p), len(uniq_c)):
            raise BackendError(f"scorer {name!r}: score_matrix returned shape {mat.shape}, expected "
                               f"({len(uniq_p)}, {len(uniq_c)}) (prefixes x continuations)")
        full_mat: np.ndarray | None = mat
    else:
        full_mat = None
        active = [pp for pp, w in enumerate(wanted) if w]
        subsets = [list(wanted[pp]) for pp in active]
        fn = getattr(scorer, "score_subsets", None)
        args = ([uniq_p[pp] for pp in active], uniq_c, subsets)
        got = [] if not active else fn(*args) if callable(fn) else score_subsets_by_matrix(scorer, *args)
        if len(got) != len(active):
            raise BackendError(f"scorer {name!r}: score_subsets returned {len(got)} rows for {len(active)} prefixes")
        for pp, sub, row in zip(active, subsets, got):
            row = np.asarray(row, dtype=np.float64).reshape(-1)
            if row.shape != (len(sub),):
                raise BackendError(f"scorer {name!r}: score_subsets returned {row.shape[0]} scores for "
                                   f"{len(sub)} continuations")
            values.update(zip(((pp, cc) for cc in sub), row.tolist()))

    counts = scorer.count_tokens(uniq_c)
    if len(counts) != len(uniq_c):
        raise BackendError(f"scorer {name!r}: count_tokens returned {len(counts)} counts for {len(uniq_c)} texts")
    counts_arr = np.asarray(counts, dtype=np.int64)
    out = []
    for k, (exs, rows, m, prefixes, flat, todo) in enumerate(prepared):
        n = len(exs)
        p_pos = np.array([p_index[x] for x in prefixes], dtype=np.int64)
        c_pos = np.array([c_index[z] for z in flat], dtype=np.int64)
        job = jobs[k]
        if full_mat is not None and job.design is None and job.known is None:
            # full[l, i*M + j] = log p(z_ij | prefix_l); logp[i, j, l] = full[l, i*M + j].
            logp = np.ascontiguousarray(full_mat[np.ix_(p_pos, c_pos)].T.reshape(n, m, n))
        else:
            logp = (np.full((n, m, n), np.nan) if job.known is None
                    else np.array(job.known, dtype=np.float64, copy=True))
            for i, j, l_ in np.argwhere(todo):
                pp, cc = int(p_pos[l_]), int(c_pos[i * m + j])
                logp[i, j, l_] = full_mat[pp, cc] if full_mat is not None else values[(pp, cc)]
            for i, j, l_, value in copied[k]:
                logp[i, j, l_] = value
        if work is not None:
            conts: list[list[int]] = [[] for _ in range(n)]
            seen: set[tuple[int, int, int]] = set()
            for i, j, l_ in np.argwhere(todo):  # each example's distinct compressions under each prefix
                cc = int(c_pos[i * m + j])
                if (int(l_), int(i), cc) not in seen:
                    seen.add((int(l_), int(i), cc))
                    conts[l_].append(int(counts_arr[cc]))
            work.append(ScoredWork(conts))
        out.append(LogpTensor(logp_nats=logp, n_tokens=counts_arr[c_pos].reshape(n, m), prompt_id=p.id,
                              scorer=str(getattr(scorer, "name", type(scorer).__name__))))
    return out


def score_mi(
    scorer: Any,
    examples: Sequence[Example],
    compressions: Sequence[Sequence[str]],
    *,
    prompt: Prompt | str | None = None,
    mi_negatives: str | int = "all",
    design_seed: int | None = DESIGN_SEED,
    auto_margin_bits: float = AUTO_MARGIN_BITS,
    auto_correction_bits: float = AUTO_CORRECTION_BITS,
    **estimate_kwargs: Any,
) -> MIEstimate:
    """Build the tensor with ``scorer`` and estimate I(X; Z) in bits.

    ``mi_negatives``: ``"all"`` (every compression under every context: the mixture estimator,
    exactly :func:`compressbench.measure.mi.estimate_mi`), an integer K (each compression under its
    own context and K others from a seeded balanced design, ``design_seed``; N prefills plus
    N*M*(K + 1) continuations; the bias-corrected estimate, or the bound flagged "saturated: a lower
    bound" where its interval is within ``auto_margin_bits`` of log2(K + 1):
    :func:`compressbench.measure.mi.estimate_mi_negatives`) or ``"auto"`` (start at K = 15 and grow
    K while saturated or while the correction exceeds ``auto_correction_bits``:
    :func:`compressbench.measure.mi.auto_next_k`, up to N - 1; every context at once where that is
    nearly as cheap, :func:`auto_scores_all`; the estimate says where it stopped and why,
    ``k_stop``). Entries scored in a round are not scored again.

    ``estimate_kwargs`` go to :func:`compressbench.measure.mi.estimate_mi` (clip, ci, n_boot, seed,
    marginal); ``n_tokens`` comes from the scorer's tokenizer and cannot be passed.
    """
    if "n_tokens" in estimate_kwargs:
        raise UsageError("score_mi counts compression tokens with the scorer; do not pass n_tokens "
                         "(call estimate_mi on build_logp_tensor(...) to use your own counts)")
    neg = parse_negatives(mi_negatives)
    n = len(_check_examples(examples))
    if neg == "all" or (isinstance(neg, int) and neg >= n - 1):
        t = build_logp_tensor(scorer, examples, compressions, prompt=prompt)
        n_tok = t.n_tokens if t.n_tokens.any() else None  # all-empty compressions: no rate
        return estimate_mi(t.logp_nats, n_tokens=n_tok, **estimate_kwargs)
    if estimate_kwargs.get("marginal", "mixture") != "mixture":
        raise UsageError("sampled negatives (mi_negatives K or auto) use the mixture marginal; "
                         "use mi_negatives='all' for the leave-one-out marginal")
    kw = {k: v for k, v in estimate_kwargs.items() if k != "marginal"}
    k: int | None = neg if isinstance(neg, int) else auto_schedule(n)[0]
    if neg == "auto" and auto_scores_all(score_prefixes(examples, prompt), _rows(compressions), design_seed):
        t = build_logp_tensor(scorer, examples, compressions, prompt=prompt)
        n_tok = t.n_tokens if t.n_tokens.any() else None
        return estimate_mi_negatives(t.logp_nats, k=None, design_seed=design_seed, n_tokens=n_tok,
                                     negatives="auto", k_stop=STOP_CHEAP, **kw)
    known = None
    while True:
        assert k is not None
        design = negatives_design(n, min(k, n - 1), design_seed)
        t = build_logp_tensor(scorer, examples, compressions, prompt=prompt, design=design, known=known)
        known = t.logp_nats
        n_tok = t.n_tokens if t.n_tokens.any() else None
        est = estimate_mi_negatives(known, k=k, design_seed=design_seed, n_tokens=n_tok, margin_bits=auto_margin_bits,
                                    negatives="fixed" if neg != "auto" else "auto", **kw)
        if neg != "auto":
            return est
        nxt = auto_next_k(est, margin_bits=auto_margin_bits, correction_bits=auto_correction_bits)
        if nxt is None:
            return dataclasses.replace(est, k_stop=STOP_ALL if k >= n - 1 else STOP_BELOW_CEILING)
        k = nxt


__all__ = ["AUTO_ALL_FACTOR", "DEFAULT_SCORING_PROMPT", "auto_scores_all", "distinct_pairs", "LogpTensor", "ScoredWork", "TensorJob", "build_logp_tensor", "build_logp_tensors",
           "score_mi", "score_prefixes"]
