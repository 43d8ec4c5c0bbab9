"""The sweep's stages, one contract each (driver side; model work goes through
:class:`compressbench.engine.caching.CachedModel`):

- :func:`compress` (group, examples) -> one :class:`Compressions` per example (M samples);
  baselines are filled by :func:`baseline_compressions`;
- :func:`score` (group, examples, compressions) -> the group's ``MIEstimate`` (or None), filling
  each example's compression token counts, pointwise MI and scorer usage;
- a predict stage per ``predictor_mode`` (:data:`PREDICT_STAGES`; today ``generate``:
  :func:`predict_generate`) (group, predictor, examples, compressions) -> one :class:`Prediction`
  per example;
- :func:`judge` (group, predictor, examples, predictions): grades free-form answers in place;
- :func:`make_record` (cell, example, compressions, prediction) -> a :class:`RunRecord`.

Every stage takes a :class:`StageContext` (config, prompts, models) explicitly. What a stage
asks its model for comes from a pure function of the config, prompts, group and examples
(:func:`compress_requests`, :func:`baseline_samples`, :func:`first_score_round`,
:func:`predict_generate_requests`, :func:`predict_loglik_requests`, :func:`judge_requests`):
the stage sends those requests and ``compressbench plan`` counts the same ones.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from compressbench.measure.baselines import baseline_compression, is_baseline, needs_example, needs_tokenizer
from compressbench.engine.caching import CachedModel
from compressbench.engine.config import PromptVariant, SweepConfig
from compressbench.core.errors import BackendError
from compressbench.engine.model_work import ChatSpec, GenOutcome, ScoreJob, err_text, single_error
from compressbench.core.prompts import Prompt, chat_text, load_prompt
from compressbench.engine.records import NO_CALLS, ROLES, CellId, RoleUsage, RunRecord, example_hash
from compressbench.core.types import Example, GenerationParams
from compressbench.data.known_info import is_known_info, retained_bits
from compressbench.measure import metrics
from compressbench.measure.cost import role_cost
from compressbench.measure.metrics import default_metric, predict_values
from compressbench.measure.mi import (
    STOP_ALL,
    STOP_BELOW_CEILING,
    STOP_CHEAP,
    auto_next_k,
    auto_schedule,
    estimate_mi,
    estimate_mi_negatives,
    negatives_design,
)
from compressbench.measure.predict_loglik import confidence, pvi_bits
from compressbench.measure.scoring import auto_scores_all, score_prefixes

log = logging.getLogger(__name__)

#: Seed of the MI bootstrap (seeded: reruns give identical intervals).
MI_SEED = 0


@dataclass(frozen=True)
class Group:
    """(dataset, compressor, prompt variant, temperature, seed): one set of compressions + one tensor."""

    dataset: str
    compressor: str
    prompt: PromptVariant
    temperature: float
    seed: int

    def cell(self, predictor: str, scorer: str, predictor_mode: str) -> CellId:
        return CellId(self.dataset, self.compressor, predictor, self.prompt.label, self.temperature, self.seed,
                      scorer, predictor_mode)


@dataclass(frozen=True)
class Prompts:
    """The prompts a sweep renders: compressor prompts by variant label, predict, MI scoring, judge."""

    compress: Mapping[str, Prompt]
    predict: Prompt
    score: Prompt
    judge: Prompt | None
    predict_loglik: Prompt | None = None

    @classmethod
    def load(cls, config: SweepConfig) -> Prompts:
        loglik = any(config.mode_of(p) == "loglik" for p in config.predictors)
        return cls({p.label: load_prompt(p.prompt_file) for p in config.prompts}, load_prompt("predict"),
                   load_prompt(config.mi_prompt), load_prompt("judge") if config.judge else None,
                   load_prompt("predict_loglik") if loglik else None)

    def ids(self) -> dict[str, str]:
        out = {label: p.id for label, p in self.compress.items()}
        out.update(predict=self.predict.id, mi_score=self.score.id)  # mi_score: the scoring prompt in use
        if self.predict_loglik is not None:
            out["predict_loglik"] = self.predict_loglik.id
        if self.judge is not None:
            out["judge"] = self.judge.id
        return out


@dataclass
class StageContext:
    config: SweepConfig
    prompts: Prompts
    models: Callable[[str], CachedModel]


@dataclass
class Compressions:
    """The M compressions of one example in one group, and what scoring learnt about them."""

    texts: list[str] | None = None
    usage: RoleUsage | None = None
    error: str | None = None
    truncated: dict[str, int] = field(default_factory=dict)
    n_tokens: list[int] | None = None
    pointwise_bits: list[float] | None = None
    scorer_usage: RoleUsage | None = None
    wall_s: float = 0.0
    prompt_format: str | None = None  # how the compressor model was prompted (chat | completion)
    mi_estimate: dict[str, Any] | None = None  # the group's estimate and its K (RunRecord.mi_estimate)


@dataclass
class Prediction:
    """One example's predictions in one cell (and the judge's verdict, if any)."""

    texts: list[str] = field(default_factory=list)
    usage: RoleUsage | None = None
    error: str | None = None
    truncated: int | None = None
    ref_nll_nats: float | None = None
    answers: list[str | None] = field(default_factory=list)
    parse_errors: list[str | None] = field(default_factory=list)
    voted: str | None = None
    judge_text: str | None = None
    judge_usage: RoleUsage | None = None
    wall_s: float = 0.0
    prompt_format: str | None = None  # how the predictor was prompted (chat | completion)
    loglik: list[dict[str, Any]] | None = None  # predictor_mode loglik: each sample's scored options
    answers_norm: list[str | None] = field(default_factory=list)
    voted_norm: str | None = None
    #: predictor_mode loglik: the predictor's scoring of the example's empty compression (the
    #: reference point of usable bits about the answer); not part of the cell's cost
    loglik_empty: dict[str, Any] | None = None


def _usage(o: GenOutcome) -> RoleUsage:
    return RoleUsage(o.n_prompt_tokens, o.n_completion_tokens, 1, o.n_cached_prompt_tokens)


# --------------------------------------------------------------------------- compress


# Each stage's requests come from a pure function of (config, prompts, group, examples, ...):
# the stage sends them and ``compressbench plan`` counts the same ones (one rule for both).


def compress_requests(cfg: SweepConfig, prompts: Prompts, g: Group,
                      exs: Sequence[Example]) -> tuple[list[ChatSpec], GenerationParams]:
    """The compressor chats of a model compressor's group (one per example, its context in the
    fitted slot) and their sampling (``n = M`` samples, the group's temperature and seed)."""
    prompt = prompts.compress[g.prompt.label]
    values = {} if g.prompt.k is None else {"k": str(g.prompt.k)}
    specs = [ChatSpec(prompt, {**values, "question": e.question}, "context", e.context) for e in exs]
    params = GenerationParams(max_new_tokens=cfg.max_new_tokens["compressor"], temperature=g.temperature,
                              n=cfg.samples, seed=g.seed)
    return specs, params


def compress(ctx: StageContext, g: Group, exs: Sequence[Example]) -> list[Compressions]:
    """M samples per example from compressor model ``g.compressor`` (``GenerationParams(n=M,
    temperature, seed)``), the context fitted to its window."""
    cfg = ctx.config
    specs, params = compress_requests(cfg, ctx.prompts, g, exs)
    outcomes = ctx.models(g.compressor).generate(specs, params, cfg.batch_size["compressor"],
                                                 f"compress {g.dataset}/{g.compressor}/{g.prompt.label}")
    out = []
    for o in outcomes:
        c = Compressions(wall_s=o.wall_s)
        if o.error is not None:
            c.error = f"compressor: {o.error}"
        else:
            c.texts, c.usage = list(o.texts), _usage(o)
            c.prompt_format = o.prompt_format
            if o.truncated is not None:
                c.truncated["compressor"] = o.truncated
        out.append(c)
    return out


def baseline_samples(cfg: SweepConfig, name: str, exs: Sequence[Example],
                     truncate: Callable[[Sequence[str]], Sequence[str]]) -> list[list[str]]:
    """Baseline ``name``'s M samples of each example: M copies of its one compression (no model
    call). ``truncate(contexts)`` gives ``truncate:<n>`` of the contexts, counted with the first
    scorer's tokenizer; ``keep:<k>`` reads the known_info example's slots."""
    if needs_tokenizer(name):
        texts = list(truncate([e.context for e in exs]))
    elif needs_example(name):
        texts = [baseline_compression(name, e.context, example=e) for e in exs]
    else:
        texts = [baseline_compression(name, e.context) for e in exs]
    return [[t] * cfg.samples for t in texts]


def baseline_compressions(ctx: StageContext, g: Group, exs: Sequence[Example]) -> list[Compressions]:
    """A baseline's compression of each example (``truncate:<n>`` counts the scorer's tokens), M copies."""
    cfg = ctx.config
    try:
        samples = baseline_samples(cfg, g.compressor, exs,
                                   lambda contexts: ctx.models(cfg.scorer).baseline(g.compressor, contexts))
    except BackendError as exc:  # the scorer's tokenizer failed (a dead endpoint): every example fails
        return [Compressions(error=f"compressor: {err_text(single_error(exc))}") for _ in exs]
    return [Compressions(texts=t, usage=NO_CALLS) for t in samples]


# --------------------------------------------------------------------------- score


def score(ctx: StageContext, g: Group, exs: Sequence[Example], comps: list[Compressions],
          scorer: str | None = None) -> Any:
    """One group's estimate: :func:`score_groups` with one group."""
    return score_groups(ctx, [g], exs, {g: comps}, scorer)[g]


@dataclass
class _Scoring:
    """One group's scoring in progress: the examples still in (``ok``), the K schedule, the entries
    scored so far and the scorer usage spent per example."""

    ok: list[int]
    negatives: str | int
    schedule: list[int | None]
    step: int = 0
    known: np.ndarray | None = None
    usage: dict[int, RoleUsage] = field(default_factory=dict)
    cheap: bool = False  # auto scores every context at once (as cheap as its start design)
    path: list[int] = field(default_factory=list)  # K of each round scored so far (N - 1: every context)


def _negatives_of(cfg: SweepConfig, g: Group) -> str | int:
    """The group's ``mi_negatives`` (the identity baseline has its own: ``mi_identity_negatives``)."""
    return cfg.mi_identity_negatives if g.compressor == "identity" else cfg.mi_negatives


def _schedule(neg: str | int, n: int, cheap: bool = False) -> list[int | None]:
    """K per round (None: every context): all -> [None]; K -> [K] (N - 1 or more: [None]); auto ->
    15, 31, ... up to N - 1 (that last round is every context), or [None] where every context is as
    cheap as the start design (``cheap``, :func:`compressbench.measure.scoring.auto_scores_all`)."""
    if neg == "all" or (neg == "auto" and cheap):
        return [None]
    if isinstance(neg, int):
        return [None] if neg >= n - 1 else [neg]
    return [None if k >= n - 1 else k for k in auto_schedule(n)]


@dataclass(frozen=True)
class ScoreRound:
    """A group's first scoring round: its ``mi_negatives`` and ``k`` negatives per compression
    (None: every other context), over ``n_contexts`` scorable examples."""

    negatives: str | int
    k: int | None
    n_contexts: int

    @property
    def n_negatives(self) -> int:
        """Contexts each compression is scored under besides its own (K, or N - 1 for every context)."""
        return self.n_contexts - 1 if self.k is None else self.k


def first_score_round(cfg: SweepConfig, g: Group, n_ok: int) -> ScoreRound | None:
    """The first round :func:`score_groups` scores group ``g`` in with ``n_ok`` scorable examples,
    or None when it scores nothing (``skip``, or fewer than 2 contexts: MI undefined). ``auto``'s
    later rounds depend on the scores (:func:`compressbench.measure.mi.auto_next_k`). Built from
    the same rules score_groups applies (:func:`_negatives_of`, :func:`_schedule`)."""
    neg = _negatives_of(cfg, g)
    if neg == "skip" or n_ok < 2:
        return None
    return ScoreRound(neg, _schedule(neg, n_ok)[0], n_ok)


def _logp_one(model: Any, ctx: StageContext, job: Any, neg: Any) -> Any:
    """One group's tensor on its own call, or the BackendError that failed it."""
    try:
        return model.logp_tensors([job], ctx.prompts.score, ctx.config.samples, [neg])[0]
    except BackendError as exc:
        return exc


def score_groups(ctx: StageContext, groups: Sequence[Group], exs: Sequence[Example],
                 comps_of: Mapping[Group, list[Compressions]], scorer: str | None = None) -> dict[Group, Any]:
    """The groups' estimates (MIEstimate or None) from ``scorer`` (default: the config's first), for
    groups of one dataset: each round scores every group still going in **one** model call, so each
    scoring prefix is prefilled once for all of them (:func:`compressbench.engine.model_work.build_tensors`).

    ``mi_negatives`` (``mi_identity_negatives`` for the identity baseline): ``all`` is
    :func:`compressbench.measure.mi.estimate_mi` on the full tensor, exactly as before; K scores each
    compression under its own context and K others of a seeded balanced design
    (:func:`compressbench.measure.mi.estimate_mi_negatives`: the bias-corrected estimate, or the
    bound, ceiling log2(K + 1), flagged "saturated: a lower bound" where its interval's upper end
    is within ``mi_auto_margin_bits`` of the ceiling); ``auto`` starts at K = 15 and, per group,
    grows K while saturated (straight to the K whose ceiling clears the estimate by the margin) or
    while the correction exceeds :data:`compressbench.measure.mi.AUTO_CORRECTION_BITS`
    (:func:`compressbench.measure.mi.auto_next_k`), up to N - 1 (every context), re-scoring nothing;
    ``skip`` (identity only) scores nothing and records MI as not measured. Fills each example's
    compression token counts, pointwise MI bits, scorer usage (summed over rounds) and the estimate."""
    cfg = ctx.config
    model = ctx.models(scorer or cfg.scorer)
    out: dict[Group, Any] = {}
    going: dict[Group, _Scoring] = {}
    for g in groups:
        comps = comps_of[g]
        ok = [i for i, c in enumerate(comps) if c.error is None and c.texts is not None]
        neg = _negatives_of(cfg, g)
        if neg == "skip":
            for i in ok:
                comps[i].scorer_usage = NO_CALLS
                comps[i].mi_estimate = {"measured": False,
                                        "why": "mi_identity_negatives: skip (the identity baseline is not scored)"}
            out[g] = None
            continue
        if len(ok) < 2:
            _mi_undefined(g, len(ok), len(exs))
            for i in ok:
                comps[i].scorer_usage = NO_CALLS
            out[g] = None
            continue
        cheap = neg == "auto" and auto_scores_all(score_prefixes([exs[i] for i in ok], ctx.prompts.score),
                                                  [list(comps[i].texts or ()) for i in ok], cfg.mi_design_seed)
        going[g] = _Scoring(ok, neg, _schedule(neg, len(ok), cheap), cheap=cheap)
    while going:
        active = list(going)
        jobs, negs = [], []
        for g in active:
            st, comps = going[g], comps_of[g]
            n, k = len(st.ok), st.schedule[st.step]
            design = None if k is None else negatives_design(n, k, cfg.mi_design_seed)
            jobs.append(ScoreJob([exs[i] for i in st.ok], [list(comps[i].texts or ()) for i in st.ok], design,
                                 st.known))
            negs.append(None if k is None else {"k": k, "seed": cfg.mi_design_seed})
        results: list[Any]
        try:
            results = list(model.logp_tensors(jobs, ctx.prompts.score, cfg.samples, negs))
        except BackendError as exc:  # the scorer failed for good (after its own retries)
            # one group's failure must not fail the others that shared its call: score them one by one
            results = [exc] if len(jobs) == 1 else [_logp_one(model, ctx, job, neg) for job, neg in zip(jobs, negs)]
        for g, res in zip(active, results):
            st, comps = going[g], comps_of[g]
            if isinstance(res, BackendError):  # this group's examples fail
                for i in st.ok:
                    comps[i].error = f"scorer: {err_text(single_error(res))}"
                out[g] = None
                del going[g]
                continue
            k = st.schedule[st.step]
            for pos, i in enumerate(st.ok):
                if res.usage[pos] is not None:
                    u = RoleUsage.from_dict(res.usage[pos])
                    st.usage[i] = u if i not in st.usage else st.usage[i] + u  # type: ignore[operator]
            keep = [pos for pos in range(len(st.ok)) if res.errors[pos] is None]
            if k is not None and len(keep) < len(st.ok) and len(keep) >= 2:
                # a design over examples that do not all fit: plan it again on those that do
                for pos, i in enumerate(st.ok):
                    if res.errors[pos] is not None:
                        comps[i].n_tokens = res.n_tokens[pos]
                        comps[i].error = f"scorer: {res.errors[pos]}"
                st.ok = [st.ok[pos] for pos in keep]
                st.schedule, st.step, st.known, st.cheap = _schedule(st.negatives, len(st.ok)), 0, None, False
                st.path = []
                continue
            for pos, i in enumerate(st.ok):
                comps[i].n_tokens = res.n_tokens[pos]
                if res.errors[pos] is not None:
                    comps[i].error = f"scorer: {res.errors[pos]}"
                    continue
                if res.truncated[pos] is not None:
                    comps[i].truncated["scorer"] = res.truncated[pos]
                comps[i].scorer_usage = st.usage.get(i, NO_CALLS)
            if res.logp is None or len(keep) < 2:
                _mi_undefined(g, len(keep), len(exs))
                out[g] = None
                del going[g]
                continue
            sub = res.logp[np.ix_(keep, range(cfg.samples), keep)]
            n_tok = np.array([res.n_tokens[p] for p in keep], dtype=float)
            # All-empty compressions (the empty baseline): bits per token is undefined.
            tok = n_tok if n_tok.any() else None
            last = st.step == len(st.schedule) - 1
            st.path.append(len(keep) - 1 if k is None else int(k))
            if st.negatives == "all":
                est = estimate_mi(sub, n_tokens=tok, n_boot=cfg.mi_n_boot, seed=MI_SEED)
            else:
                mode = "auto" if st.negatives == "auto" else "fixed"
                est = estimate_mi_negatives(sub, k=k, design_seed=cfg.mi_design_seed, n_tokens=tok,
                                            n_boot=cfg.mi_n_boot, seed=MI_SEED, negatives=mode,
                                            margin_bits=cfg.mi_auto_margin_bits,
                                            k_stop=None if mode != "auto" else (
                                                STOP_CHEAP if st.cheap else STOP_ALL if last else STOP_BELOW_CEILING))
                nxt = None if mode != "auto" or last else auto_next_k(est, margin_bits=cfg.mi_auto_margin_bits)
                if nxt is not None:  # saturated or a large correction: on to the K it needs
                    st.step = next(at for at, kk in enumerate(st.schedule) if kk is None or kk >= nxt)
                    st.known = res.logp
                    continue
            record = {**_estimate_record(est), "k_path": list(st.path)}
            for row, pos in enumerate(keep):
                comps[st.ok[pos]].pointwise_bits = [float(v) for v in est.pointwise_bits[row]]
                comps[st.ok[pos]].mi_estimate = record
            out[g] = est
            del going[g]
    return out


def _estimate_record(est: Any) -> dict[str, Any]:
    """What every record of a group carries about its estimate (RunRecord.mi_estimate)."""
    return {"bits": est.bits, "ci_low_bits": est.ci_low_bits, "ci_high_bits": est.ci_high_bits,
            "ceiling_bits": est.ceiling_bits, "negatives": est.negatives, "n_negatives": est.n_negatives,
            "design_seed": est.design_seed, "k_stop": est.k_stop, "n_contexts": est.n_contexts,
            "kind": est.kind, "saturated": est.saturated, "bound_bits": est.bound_bits,
            "bound_ci_low_bits": est.bound_ci_low_bits, "bound_ci_high_bits": est.bound_ci_high_bits,
            "correction_bits": est.correction_bits}


def _mi_undefined(g: Group, n_ok: int, n_all: int) -> None:
    if n_ok == 0 and n_all >= 2:
        return  # every example failed before scoring; their errors say why
    log.warning("%s/%s/%s: MI is undefined with %d usable context(s) of %d (it needs N >= 2); no MI estimate "
                "and no scorer cost for this group%s", g.dataset, g.compressor, g.prompt.label, n_ok, n_all,
                "; use a dataset (or --limit) with at least 2 examples" if n_all < 2 else "")


# --------------------------------------------------------------------------- predict


def _predict_spec(prompt: Prompt, ex: Example, compression: str) -> ChatSpec:
    return ChatSpec(prompt, predict_values(ex, ""), "compression", compression)


def _samples(exs: Sequence[Example], comps: Sequence[Compressions]) -> tuple[list[tuple[Example, str]], list[int]]:
    """(example, compression) of every sample of every example whose compression succeeded, and
    the example index of each: what a predict stage answers from."""
    items, where = [], []
    for i, (ex, c) in enumerate(zip(exs, comps)):
        if c.error is None and c.texts is not None:
            for text in c.texts:
                items.append((ex, text))
                where.append(i)
    return items, where


def predict_generate_requests(cfg: SweepConfig, prompts: Prompts, exs: Sequence[Example],
                              comps: Sequence[Compressions]) -> tuple[list[ChatSpec], list[int], GenerationParams]:
    """``predictor_mode: generate``: one predict chat per compression sample (the compression in the
    fitted slot), the example index of each, and their sampling (one greedy-by-default answer)."""
    items, where = _samples(exs, comps)
    params = GenerationParams(max_new_tokens=cfg.max_new_tokens["predictor"], temperature=cfg.predictor_temperature,
                              n=1, seed=0)
    return [_predict_spec(prompts.predict, ex, text) for ex, text in items], where, params


@dataclass(frozen=True)
class LoglikRequests:
    """``predictor_mode: loglik``'s scoring requests for one group: ``items`` every (example,
    compression) to score, the samples first (``where[k]``: the example of sample ``k``), then the
    empty compression of each example that has no empty sample; ``empty[i]``: the item holding
    example ``i``'s empty-compression scoring (the reference point of usable bits, not part of the
    cell's cost)."""

    items: list[tuple[Example, str]]
    where: list[int]
    empty: dict[int, int]

    @property
    def samples(self) -> list[tuple[Example, str]]:
        """The items that are the cell's predictions (its usage)."""
        return self.items[:len(self.where)]


def predict_loglik_requests(exs: Sequence[Example], comps: Sequence[Compressions]) -> LoglikRequests:
    """The loglik predictor's items for a group (see :class:`LoglikRequests`). The empty compression
    of each example goes through the same call and cache: one entry per (predictor, example),
    whatever the group or whether ``empty`` is a configured compressor; a sample that already is
    "" is reused, not rescored."""
    items, where = _samples(exs, comps)
    empty_at = {i: k for k, (i, (_, text)) in enumerate(zip(where, items)) if text == ""}
    empty_where = sorted({i for i in where if i not in empty_at})
    empty_from = {i: len(items) + k for k, i in enumerate(empty_where)}
    return LoglikRequests(items + [(exs[i], "") for i in empty_where], where, {**empty_at, **empty_from})


def gives_voted_answer(mode: str, ex: Example) -> bool:
    """Whether a successful prediction in ``mode`` ends in a voted answer for ``ex`` (what the judge
    grades): ``generate`` always (when its answers parse), ``loglik`` for multiple choice only (an
    open question gets its reference answer's NLL instead)."""
    return mode != "loglik" or bool(ex.options)


def predict_generate(ctx: StageContext, g: Group, predictor: str, exs: Sequence[Example],
                     comps: Sequence[Compressions]) -> list[Prediction]:
    """``predictor_mode: generate``: the predictor answers from each compression (greedy by default);
    answers are parsed and majority-voted; ref_nll tasks get the reference answer's NLL."""
    cfg = ctx.config
    model = ctx.models(predictor)
    specs, where, params = predict_generate_requests(cfg, ctx.prompts, exs, comps)
    preds = [Prediction() for _ in exs]
    outcomes = model.generate(specs, params, cfg.batch_size["predictor"],
                              f"predict {g.dataset}/{g.compressor}->{predictor}/{g.prompt.label}")
    for i, o in zip(where, outcomes):
        p = preds[i]
        if o.error is not None:
            p.error = p.error or f"predictor: {o.error}"
            continue
        p.texts.append(o.texts[0])
        p.prompt_format = o.prompt_format
        p.usage = _usage(o) if p.usage is None else p.usage + _usage(o)
        p.wall_s += o.wall_s
        if o.truncated is not None:
            p.truncated = o.truncated if p.truncated is None else min(p.truncated, o.truncated)
    for ex, c, p in zip(exs, comps, preds):
        if p.error is None and p.texts:
            parsed = [metrics.parse_prediction(t, ex) for t in p.texts]
            p.answers = [a.answer for a in parsed]
            p.parse_errors = [a.error for a in parsed]
            p.voted = metrics.majority_vote(p.answers)
        if metrics.default_metric(ex) == "ref_nll" and c.texts and c.error is None and p.error is None:
            # the reference's NLL after the predict prompt holding the first compression
            prefix = chat_text(_predict_spec(ctx.prompts.predict, ex, c.texts[0]).render()) + "\nAnswer: "
            hit = model.reference_nll(prefix, ex.reference or "")
            if "error" in hit:
                p.error = f"predictor (reference NLL): {hit['error']}"
            else:
                p.ref_nll_nats = hit["nats"]
    return preds


def predict_loglik(ctx: StageContext, g: Group, predictor: str, exs: Sequence[Example],
                   comps: Sequence[Compressions]) -> list[Prediction]:
    """``predictor_mode: loglik`` (:mod:`compressbench.measure.predict_loglik`): for each compression sample,
    every option is scored as a continuation of the predictor prompt (one ``score_matrix`` call per
    example and sample) and the argmax is the answer (``acc``; ``acc_norm`` by log-prob per
    character); answers are majority-voted over the samples like generated ones. An open question
    with a reference is scored by the reference's log-prob after the prompt (``ref_nll_nats`` =
    minus its total, from the first compression like the generate mode)."""
    model = ctx.models(predictor)
    # the empty compression of each example too: usable bits about the answer are measured against it
    req = predict_loglik_requests(exs, comps)
    where = req.where
    outcomes = model.loglik(req.items, ctx.prompts.predict_loglik, ctx.config.loglik_prompt_format,
                            f"predict (loglik) {g.dataset}/{g.compressor}->{predictor}/{g.prompt.label}")
    preds = [Prediction() for _ in exs]
    for i, k in req.empty.items():
        o = outcomes[k]
        if "error" in o:  # no reference point: usable bits unknown for this example (its answer stands)
            log.warning("%s/%s->%s: the empty-compression pass failed for example %s (%s); its usable bits "
                        "are unknown", g.dataset, g.compressor, predictor, exs[i].id, o["error"])
        else:
            preds[i].loglik_empty = {k2: v for k2, v in o.items() if k2 not in ("shared_prefix", "wall_s")}
    for i, o in zip(where, outcomes):
        p = preds[i]
        if "error" in o:
            p.error = p.error or f"predictor: {o['error']}"
            continue
        p.loglik = (p.loglik or []) + [o]
        p.prompt_format = o["prompt_format"]
        p.texts.append(o["answer"] or "")
        p.answers.append(o["answer"])
        p.answers_norm.append(o["answer_norm"])
        p.parse_errors.append(None)
        n_prompt = int(o.get("n_prompt_tokens") or 0)
        shared = o.get("shared_prefix")  # absent in cache entries written before it was recorded
        u = RoleUsage(n_prompt, 0, 1, None, (tuple(int(x) for x in shared),) if shared else ())
        p.usage = u if p.usage is None else p.usage + u
        p.wall_s += float(o.get("wall_s") or 0.0)
    for ex, p in zip(exs, preds):
        if p.error is not None or not p.loglik:
            continue
        if gives_voted_answer("loglik", ex):
            p.voted = metrics.majority_vote(p.answers)
            p.voted_norm = metrics.majority_vote(p.answers_norm)
        elif p.loglik[0].get("reference_logprob_nats") is not None:
            p.ref_nll_nats = -float(p.loglik[0]["reference_logprob_nats"])
    return preds


#: predictor_mode -> its predict stage (same contract; another mode slots in here).
PREDICT_STAGES: dict[str, Callable[..., list[Prediction]]] = {"generate": predict_generate, "loglik": predict_loglik}


# --------------------------------------------------------------------------- judge


def judge_requests(cfg: SweepConfig, prompts: Prompts, exs: Sequence[Example],
                   preds: Sequence[Prediction]) -> tuple[list[int], list[ChatSpec], GenerationParams]:
    """The judge's chats: one per free-form (not multiple-choice) example with a gold answer and a
    voted prediction (the prediction in the fitted slot), the example index of each, and their
    (greedy) sampling. Needs a judge prompt (``prompts.judge``)."""
    assert prompts.judge is not None, "judge_requests needs the judge prompt (a config with a judge)"
    todo = [i for i, (e, p) in enumerate(zip(exs, preds))
            if p.error is None and p.voted is not None and not e.options and e.answers]
    specs = [ChatSpec(prompts.judge, metrics.judge_values(exs[i]), "prediction", preds[i].voted or "")
             for i in todo]
    params = GenerationParams(max_new_tokens=cfg.max_new_tokens["judge"], temperature=0.0, n=1, seed=0)
    return todo, specs, params


def judge(ctx: StageContext, g: Group, predictor: str, exs: Sequence[Example], preds: list[Prediction]) -> None:
    """The judge grades the voted answer of every free-form (not multiple-choice) example."""
    cfg = ctx.config
    if not cfg.judge or ctx.prompts.judge is None:
        return
    todo, specs, params = judge_requests(cfg, ctx.prompts, exs, preds)
    outcomes = ctx.models(cfg.judge).generate(specs, params, cfg.batch_size["judge"],
                                              f"judge {g.dataset}/{g.compressor}->{predictor}/{g.prompt.label}")
    for i, o in zip(todo, outcomes):
        p = preds[i]
        if o.error is not None:
            p.error = f"judge: {o.error}"
            continue
        p.judge_text, p.judge_usage = o.texts[0], _usage(o)
        p.wall_s += o.wall_s


# --------------------------------------------------------------------------- record


def _score(ex: Example, pred: Prediction) -> tuple[float | None, str | None, bool, str]:
    """(score, score_error, unscored, metric). An answer that cannot be parsed or scored counts as
    wrong (0.0, unscored) as in lm-evaluation-harness; ref_nll tasks have no accuracy (None)."""
    metric = metrics.default_metric(ex)
    if pred.judge_text is not None:
        res = metrics.score_verdict(metrics.parse_judge(pred.judge_text))
    elif metric == "ref_nll":
        return None, "ref_nll task: no accuracy; see ref_nll_nats", False, metric
    else:
        res = metrics.score_example(ex, pred.voted, metric)
    value = None if math.isnan(res.value) else float(res.value)
    if value is not None:
        return value, None, False, res.metric
    why = res.error or "no score"
    first = next((e for e in pred.parse_errors if e), None)
    if first:
        why = f"{why} (first parse error: {first})"
    return 0.0, f"counted wrong: {why}", True, res.metric


def make_record(cell: CellId, cell_key: str, ex: Example, comp: Compressions, pred: Prediction,
                role_models: Mapping[str, str | None], cost_info: Callable[[str | None], Any]) -> RunRecord:
    """The record of one example in one cell; FLOPs per role from :func:`compressbench.measure.cost.role_cost`."""
    error = comp.error or pred.error
    score_, score_error, unscored, metric = (None, None, False, "") if error else _score(ex, pred)
    if error:
        metric = default_metric(ex)
    judge_usage = pred.judge_usage
    if judge_usage is None and role_models.get("judge") and error is None:
        judge_usage = NO_CALLS  # a judge that had nothing to grade here (multiple choice)
    usage: dict[str, RoleUsage | None] = {"compressor": comp.usage, "predictor": pred.usage,
                                          "scorer": comp.scorer_usage, "judge": judge_usage}
    flops: dict[str, float | None] = {}
    for role in ROLES:
        name = role_models.get(role)
        if name is None or (role == "compressor" and is_baseline(name)):
            flops[role] = 0.0  # role not played (baseline compressor, no judge): known zero
            continue
        u = usage[role]
        flops[role] = None if u is None else role_cost(role, u.as_dict(), cost_info(name)).flops
    truncated = dict(comp.truncated)
    if pred.truncated is not None:
        truncated["predictor"] = pred.truncated
    retained = None
    if comp.texts:
        if is_known_info(ex):
            retained = tuple(retained_bits(ex, t) for t in comp.texts)
    score_norm = None
    if error is None and pred.loglik is not None and ex.options:
        score_norm = 1.0 if pred.voted_norm is not None and pred.voted_norm in ex.answers else 0.0
    formats = {role: f for role, f in (("compressor", comp.prompt_format), ("predictor", pred.prompt_format)) if f}
    pvi, conf = _usable(ex, pred) if error is None else (None, None)
    return RunRecord(
        cell=cell, cell_key=cell_key, example_id=ex.id, example_hash=example_hash(ex),
        compressions=tuple(comp.texts or ()),
        compression_n_tokens=None if comp.n_tokens is None else tuple(int(n) for n in comp.n_tokens),
        pointwise_mi_bits=None if comp.pointwise_bits is None else tuple(comp.pointwise_bits),
        predictions=tuple(pred.texts), answers=tuple(pred.answers) if error is None else (),
        voted_answer=pred.voted if error is None else None, gold=tuple(ex.answers),
        score=score_, score_error=score_error, unscored=unscored, metric=metric,
        ref_nll_nats=pred.ref_nll_nats, error=error, context_truncated=truncated or None,
        usage=usage, flops=flops, wall_s=comp.wall_s + pred.wall_s,
        retained_bits=retained, score_norm=score_norm,
        loglik=None if pred.loglik is None else tuple(pred.loglik), prompt_formats=formats or None,
        pvi_bits=pvi, confidence=conf, loglik_empty=pred.loglik_empty if error is None else None,
        mi_estimate=comp.mi_estimate,
    )


def _usable(ex: Example, pred: Prediction) -> tuple[float | None, float | None]:
    """(usable bits about the answer, confidence) of a loglik prediction: the means over the samples
    of :func:`compressbench.measure.predict_loglik.pvi_bits` (against the empty compression) and of
    :func:`compressbench.measure.predict_loglik.confidence`; None where they do not apply. An open
    question's PVI uses the first sample, like its ``ref_nll_nats``."""
    if not pred.loglik:
        return None, None
    confs = [c for c in (confidence(o) for o in pred.loglik) if c is not None]
    conf = float(np.mean(confs)) if confs else None
    if pred.loglik_empty is None:
        return None, conf
    samples = pred.loglik if ex.options else pred.loglik[:1]
    pvis = [v for v in (pvi_bits(o, pred.loglik_empty, ex.answers) for o in samples) if v is not None]
    return (float(np.mean(pvis)) if pvis else None), conf
