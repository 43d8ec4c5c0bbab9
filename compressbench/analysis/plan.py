"""A plan before the run: tokens, FLOPs, GPU-hours, API dollars and a GPU schedule for a sweep.

``compressbench plan CONFIG [--gpus G] [--gpu-type NAME]`` reads the sweep config and its
datasets and counts the work of every stage and model the way the run's records will account it
(``usage`` per role). The requests are the stages' own (:mod:`compressbench.engine.stages`:
``compress_requests``, ``baseline_samples``, ``first_score_round``,
``predict_generate_requests``, ``predict_loglik_requests``, ``judge_requests``, the same functions
the sweep sends from); only a model compressor's texts are unknown before the run, so they stand
in at their expected length (``max_new_tokens.compressor * completion_fraction``, or a pilot
run's mean with ``--calibrate``), in scorer tokens:

- **compress** (each model compressor, per group = dataset x prompt x temperature x seed, per
  example): one call; prompt = the compressor chat (template + context + question), completion
  = M samples of ``max_new_tokens.compressor`` tokens each, times ``completion_fraction``.
- **score** (each scorer, per group and example ``i``): one call whose prompt is the scoring
  prefix of ``x_i`` plus the compressions scored after it in the group's first round (every
  compression with ``mi_negatives: all``, the (K + 1) per compression of a design of K negatives;
  ``auto`` at its start), each example's distinct compressions once (a baseline's M copies are
  one), as the sweep records it; a group with fewer than 2 examples, or ``skip``, scores nothing.
  Compression lengths: model compressors as above; baselines their own texts (``identity`` the
  context, ``empty`` 0, ``truncate:<n>`` min(n, context) with the first scorer's tokenizer).
- **predict** (each predictor, per group and example): M calls, one per compression; prompt =
  the predict chat (``generate``) or the scoring prefix and options (``loglik``) with that
  compression; completion = ``max_new_tokens.predictor * completion_fraction`` (``loglik``: 0).
- **judge** (if any, per cell and free-form example with a voted answer: ``generate`` predictors
  only, a ``loglik`` prediction of an open question has no answer to grade): one call with the
  judge chat holding a prediction of ``max_new_tokens.predictor`` tokens; completion
  ``max_new_tokens.judge * completion_fraction``.

Generation stops at the end-of-sequence token, so with ``completion_fraction = 1`` (default) the
completion counts and everything that depends on them are upper bounds. Reference-answer NLLs
(``ref_nll`` tasks) are not in the records' usage and not counted here. Cache hits (a rerun,
baselines repeated over temperatures or seeds) make the real work smaller than the plan.

Tokens: with each model's own tokenizer when it is cheap to load (``hf``/``vllm`` models from a
local directory, a converted built-in model or GGUF in the compressbench cache; chats through
the tokenizer's chat template, as the backends do), else ``ceil(chars / chars_per_token)``
(default :data:`DEFAULT_CHARS_PER_TOKEN`) plus :data:`compressbench.engine.model_work.CHAT_TEMPLATE_MARGIN`
tokens of chat markup per chat. The plan says which models were estimated.

FLOPs: :func:`compressbench.measure.cost.role_cost` on the counted usage (the same function the report
applies to the records), with each model's shape from its config.json or its ``info`` in the
sweep config; for the scorer, cost.py's ``prefill_flops`` of each prefix (once per sweep, each
scored group charged an equal share, as in the records) plus ``generation_flops`` of each
continuation after it (its real schedule: the records' one-call-per-row usage would be
charged as one prefill of prefix + all N*M compressions, whose attention term grows as N^2). GPU-hours: ``flops / (peak_flops * utilisation) / 3600`` for the GPU type
(``configs/gpus.yaml``; dense BF16 peaks) at the stated utilisation. API dollars: models marked
``paid_api``, priced from ``configs/prices.yaml`` (:class:`compressbench.measure.cost.PriceTable`).

Schedule over G GPUs (:func:`schedule_stage`), stage by stage (the sweep runs stages in order):
a model replica needs ``weights * (1 + kv_reserve)`` of memory (weights = parameters x bytes of
its dtype, bf16 unless its options say otherwise); models that need more than one GPU's usable
memory (``usable_fraction`` of it) get tensor parallelism over the next power of two of GPUs;
models that fit in a fraction of a GPU share GPUs (first-fit decreasing by memory) and
time-share their compute. GPUs left over go to data-parallel replicas of the unit that finishes
last; when the units need more GPUs than there are, they run in waves (longest first).
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from compressbench.backends import BACKENDS
from compressbench.backends.base import prompt_format
from compressbench.measure.baselines import is_baseline
from compressbench.measure.cost import (
    PriceTable,
    generation_flops,
    mi_cost_ratios,
    model_info_from_config,
    prefill_flops,
    role_cost,
)
from compressbench.engine.config import SweepConfig
from compressbench.core.errors import ConfigError, UsageError
from compressbench.core.types import Chat, Example, GenerationParams, ModelInfo
from compressbench.core.paths import PACKAGE_DIR
from compressbench.backends.models import gguf_cache_dir, named_model, resolve_named_model
from compressbench.core.prompts import chat_text
from compressbench.engine.model_work import CHAT_TEMPLATE_MARGIN, ChatSpec, truncate_contexts
from compressbench.engine.records import read_records
from compressbench.engine.stages import (
    Compressions,
    Prediction,
    Prompts,
    baseline_samples,
    compress_requests,
    first_score_round,
    gives_voted_answer,
    judge_requests,
    predict_generate_requests,
    predict_loglik_requests,
)
from compressbench.engine.sweep import expand_grid, load_examples
from compressbench.measure.mi import AUTO_CORRECTION_BITS, AUTO_START_K
from compressbench.measure.predict_loglik import loglik_prompt
from compressbench.measure.scoring import AUTO_ALL_FACTOR, score_prefixes
import difflib
import yaml as _yaml

log = logging.getLogger(__name__)

STAGES = ("compress", "score", "predict", "judge")
#: Characters per token when a model's tokenizer is not at hand (English prose, BPE tokenizers).
DEFAULT_CHARS_PER_TOKEN = 4.0
#: Model FLOPs utilisation assumed for GPU-hours (prefill and decode together; decode-heavy work
#: on small batches runs below it, long prefills above).
DEFAULT_UTILISATION = 0.35
#: Fraction of a GPU's memory a model server may use (vLLM's gpu_memory_utilization default).
DEFAULT_USABLE_FRACTION = 0.9
#: KV cache and activations reserved per replica, as a fraction of its weights.
DEFAULT_KV_RESERVE = 0.3
DEFAULT_GPU_TYPE = "H100-80GB"
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "auto": 2, "half": 2, "bf16": 2, "fp16": 2,
                "fp8": 1, "float8": 1, "int8": 1, "int4": 0.5}


# --------------------------------------------------------------------------- GPU types


@dataclass(frozen=True)
class GPUType:
    """A GPU model: memory (datasheet GB) and dense BF16 peak FLOP/s, with the source."""

    name: str
    memory_gb: float
    peak_flops: float
    source: str = ""


def default_gpu_table_path() -> Path:
    return PACKAGE_DIR / "configs" / "gpus.yaml"


def load_gpu_types(path: str | Path | None = None) -> dict[str, GPUType]:
    """GPU types by lower-cased name and alias, from ``configs/gpus.yaml`` or ``path``."""
    p = Path(path) if path is not None else default_gpu_table_path()
    if not p.is_file():
        raise ConfigError(f"GPU table {p} does not exist; see {default_gpu_table_path()} for the format")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"GPU table {p} is not valid YAML: {exc}") from None
    out: dict[str, GPUType] = {}
    for name, e in (data.get("gpus") or {}).items():
        try:
            g = GPUType(str(name), float(e["memory_gb"]), float(e["peak_flops"]), str(e.get("source", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{p}: GPU {name!r} needs numeric memory_gb and peak_flops ({exc!r})") from None
        if g.memory_gb <= 0 or g.peak_flops <= 0:
            raise ConfigError(f"{p}: GPU {name!r} needs memory_gb > 0 and peak_flops > 0")
        for key in [name, *(e.get("aliases") or [])]:
            out[str(key).lower()] = g
    if not out:
        raise ConfigError(f"GPU table {p} lists no GPUs under 'gpus'")
    return out


def gpu_type(name: str, table: Mapping[str, GPUType]) -> GPUType:
    g = table.get(name.lower())
    if g is None:
        names = sorted({t.name for t in table.values()})
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
        raise UsageError(f"unknown GPU type {name!r}{f'; did you mean {close[0]!r}?' if close else ''} "
                         f"(known: {', '.join(names)}; add yours to a --gpu-table file)")
    return g


# --------------------------------------------------------------------------- token counting


@dataclass
class TokenCounter:
    """Counts tokens for one model: with its tokenizer (``exact``) or by characters. Each distinct
    text is tokenised once (a sweep renders the same prompts for many groups)."""

    model: str
    how: str
    tokenizer: Any = None
    chars_per_token: float = DEFAULT_CHARS_PER_TOKEN
    _memo: dict[tuple[str, bool], int] = field(default_factory=dict, repr=False, compare=False)

    @property
    def exact(self) -> bool:
        return self.tokenizer is not None

    @property
    def has_chat_template(self) -> bool:
        """As ``Backend.has_chat_template`` for :func:`compressbench.backends.base.prompt_format`: a
        tokenizer without a chat template (a base model) gets plain-text prompts; a model whose
        tokenizer is not at hand is counted as a chat model."""
        return self.tokenizer is None or getattr(self.tokenizer, "chat_template", None) is not None

    def _count(self, texts: Sequence[str], special: bool) -> list[int]:
        if self.tokenizer is None:
            return [math.ceil(len(t) / self.chars_per_token) for t in texts]
        todo = list(dict.fromkeys(t for t in texts if (t, special) not in self._memo))
        if todo:
            ids = self.tokenizer(todo, add_special_tokens=special)["input_ids"]
            self._memo.update(((t, special), len(x)) for t, x in zip(todo, ids))
        return [self._memo[(t, special)] for t in texts]

    def text(self, texts: Sequence[str]) -> list[int]:
        """Tokens of plain texts, without special tokens (as ``Backend.count_tokens``)."""
        return self._count(list(texts), False)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """``Backend.count_tokens`` (for the baselines that count tokens, ``truncate:<n>``)."""
        return self.text(texts)

    def specs(self, specs: Sequence[ChatSpec], *, empty_slot: bool = False) -> list[int]:
        """Prompt tokens of a stage's chats as the model is sent them
        (:func:`compressbench.engine.model_work.generate_batch`): its chat template, or the
        plain-text (completion) form for a base model without one; ``empty_slot``: with the fitted
        slot (the compression, the prediction) empty, its text counted apart."""
        slot = "" if empty_slot else None
        if prompt_format(self) == "completion":
            return self._count([s.render_completion(slot) for s in specs], True)
        return self.chats([s.render(slot) for s in specs])

    def chats(self, chats: Sequence[Chat]) -> list[int]:
        """Prompt tokens of chats as a backend sends them (chat template + generation prompt)."""
        tok = self.tokenizer
        if tok is None or getattr(tok, "chat_template", None) is None:
            return [n + CHAT_TEMPLATE_MARGIN for n in self.text([chat_text(c) for c in chats])]
        return self.text([self.chat_prefix(c) for c in chats])

    def chat_prefix(self, chat: Chat) -> str:
        """The chat through its chat template up to the assistant's reply (``Backend.chat_prefix``)."""
        return self.tokenizer.apply_chat_template([dict(m) for m in chat], add_generation_prompt=True,
                                                  tokenize=False)


class _LoglikScorer:
    """A token counter as :func:`compressbench.measure.predict_loglik.loglik_prompt`'s backend: it
    can render a chat prefix only where the model's tokenizer (with a chat template) is at hand, so
    ``loglik_prompt_format: auto`` resolves as the run's backend would (a served model has no
    ``chat_prefix``: plain text)."""

    def __init__(self, counter: TokenCounter):
        self.name = counter.model
        self.has_chat_template = counter.exact and counter.has_chat_template
        self.chat_prefix = counter.chat_prefix


def _local_model_dir(backend: str, ref: str) -> Path | None:
    """The local directory holding the model's config and tokenizer, if one exists without work."""
    if backend not in BACKENDS or not BACKENDS[backend].local_weights:
        return None

    if named_model(ref) is not None:
        try:
            gguf = resolve_named_model(ref)
        except Exception as exc:  # noqa: BLE001 - any failure here only means "estimate instead"
            log.info("plan: %s not resolvable (%s); estimating its tokens", ref, exc)
            return None
        if named_model(ref).name == "gemma3-270m" and not gguf.is_file():
            return None
        d = gguf_cache_dir(gguf)
        return d if (d / "config.json").is_file() else None
    p = Path(ref).expanduser()
    if p.is_dir() and (p / "config.json").is_file():
        return p
    if p.is_file() and p.suffix.lower() == ".gguf":
        d = gguf_cache_dir(p)
        return d if (d / "config.json").is_file() else None
    return None


def make_counter(name: str, backend: str, ref: str, *, use_tokenizers: bool = True,
                 chars_per_token: float = DEFAULT_CHARS_PER_TOKEN) -> tuple[TokenCounter, dict[str, Any] | None]:
    """(token counter, config.json dict or None) for a model of the sweep config."""
    d = _local_model_dir(backend, ref)
    cfg = None
    if d is not None:
        try:
            cfg = json.loads((d / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            cfg = None
    est = TokenCounter(name, f"estimate, {chars_per_token:g} chars/token", None, chars_per_token)
    if d is None or not use_tokenizers:
        return est, cfg
    try:
        # lazy: torch/transformers (the [hf] extra) load only with a model
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    except (ImportError, OSError, ValueError) as exc:
        log.info("plan: no tokenizer for %s (%s); estimating", name, exc)
        return est, cfg
    return TokenCounter(name, f"its tokenizer ({ref})", tok, chars_per_token), cfg


# --------------------------------------------------------------------------- work items


@dataclass
class Work:
    """The work of one model in one stage: calls and tokens as the records will account them."""

    stage: str
    model: str
    n_calls: int = 0
    n_prompt_tokens: float = 0.0
    n_completion_tokens: float = 0.0
    prefill_flops: float | None = None
    generation_flops: float | None = None
    gpu_hours: float | None = None
    api_usd: float | None = None
    paid_api: bool = False
    tokens_exact: bool = False
    #: Scoring only: (rows, prefix tokens, continuations per row, mean continuation tokens, prefill)
    #: segments; each row is its share ``prefill`` of its prefix's prefill (once per prefix per sweep,
    #: split evenly among the dataset's scored groups, as the records split it:
    #: :func:`compressbench.engine.model_work.share_prefills`) followed by its continuations, each
    #: attending to the prefix.
    segments: list[tuple[float, float, float, float, float]] = field(default_factory=list)
    #: What part of the stage this line is: "" or "identity" (the identity baseline's scoring, shown
    #: on its own line: its continuations are whole contexts).
    part: str = ""
    #: Scoring only: the K each group is planned at (``auto`` at its start), by group label.
    negatives: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.model} [{self.part}]" if self.part else self.model

    @property
    def flops(self) -> float | None:
        if self.prefill_flops is None or self.generation_flops is None:
            return None
        return self.prefill_flops + self.generation_flops

    def add(self, n_calls: int, prompt: float, completion: float) -> None:
        self.n_calls += n_calls
        self.n_prompt_tokens += prompt
        self.n_completion_tokens += completion

    def usage(self) -> dict[str, Any]:
        return {"n_calls": self.n_calls, "n_prompt_tokens": self.n_prompt_tokens,
                "n_completion_tokens": self.n_completion_tokens}


@dataclass(frozen=True)
class Lengths:
    """Expected lengths from a finished (pilot) run: generated tokens per call (per sample for
    compressors) by (role, model), and compression tokens under the scorer by compressor model."""

    completion: Mapping[tuple[str, str], float]
    compression: Mapping[str, float]
    source: str = ""


def lengths_from_run(run_dir: str | Path) -> Lengths:
    """Mean generated tokens per call of every (role, model) and mean compression length (scorer
    tokens) of every model compressor in a run's records (each call counted once, although
    compressor and scorer usage repeat in the records of every predictor)."""
    recs = [r.to_dict() for r in read_records(run_dir)]
    if not recs:
        raise UsageError(f"{run_dir} has no records to calibrate from; run a small pilot sweep first")

    cfg = _yaml.safe_load((Path(run_dir) / "config.yaml").read_text(encoding="utf-8"))
    samples = int(cfg.get("samples") or 1)
    tot: dict[tuple[str, str], list[float]] = {}
    comp: dict[str, list[float]] = {}
    seen: set[tuple[Any, ...]] = set()
    for r in recs:
        c = r["cell"]
        names = {"compressor": c["compressor"], "predictor": c["predictor"], "judge": cfg.get("judge")}
        base = (c["dataset"], c["compressor"], c["prompt"], c["temperature"], c["seed"], r["example_id"])
        for role, name in names.items():
            u = (r.get("usage") or {}).get(role) or {}
            if not name or not u.get("n_calls") or u.get("n_completion_tokens") is None:
                continue
            key = (role, *base, None if role == "compressor" else c["predictor"])
            if key in seen:
                continue
            seen.add(key)
            per = samples if role == "compressor" else 1
            t = tot.setdefault((role, name), [0.0, 0.0])
            t[0] += u["n_completion_tokens"]
            t[1] += u["n_calls"] * per
        if (("comp", *base)) not in seen and r.get("compression_n_tokens") and not is_baseline(c["compressor"]):
            seen.add(("comp", *base))
            comp.setdefault(c["compressor"], []).extend(r["compression_n_tokens"])
    return Lengths({k: v[0] / v[1] for k, v in tot.items() if v[1]},
                   {k: sum(v) / len(v) for k, v in comp.items() if v}, str(run_dir))


def count_work(config: SweepConfig, examples: Mapping[str, Sequence[Example]],
               counters: Mapping[str, TokenCounter], *, completion_fraction: float = 1.0,
               scale: Mapping[str, float] | None = None, lengths: Lengths | None = None,
               by_dataset: dict[tuple[str, str, str, str], Work] | None = None
               ) -> dict[tuple[str, str], Work]:
    """Work per (stage, model) for the config over these examples (see the module docstring);
    the identity baseline's scoring is its own line, key ``("score", scorer, "identity")``.

    ``scale[dataset]`` multiplies that dataset's counts (plan N examples from a loaded sample);
    ``lengths`` (from a pilot run) replaces ``max_new_tokens * completion_fraction`` where known;
    ``by_dataset``, if given, receives the same work per ``(dataset, stage, model, part)``.
    """
    if not 0 < completion_fraction <= 1:
        raise UsageError(f"completion_fraction must be in (0, 1], got {completion_fraction}")
    cfg = config
    works: dict[Any, Work] = {}

    class _Both:
        """Adds to the work line and to its per-dataset twin."""

        def __init__(self, lines: list[Work]):
            self.lines = lines

        def add(self, n_calls: int, prompt: float, completion: float) -> None:
            for w in self.lines:
                w.add(n_calls, prompt, completion)

        def segment(self, seg: tuple[float, float, float, float, float]) -> None:
            for w in self.lines:
                w.segments.append(seg)

    def work(stage: str, model: str, part: str = "", dataset: str | None = None) -> _Both:
        key: Any = (stage, model) if not part else (stage, model, part)
        lines = []
        for store, k in ((works, key), (by_dataset, (dataset, stage, model, part))):
            if store is None or (store is by_dataset and dataset is None):
                continue
            if k not in store:
                store[k] = Work(stage, model, paid_api=cfg.models[model].paid_api,
                                tokens_exact=counters[model].exact, part=part)
            lines.append(store[k])
        return _Both(lines)

    # The requests come from the stages' own functions (compressbench.engine.stages: *_requests,
    # baseline_samples, first_score_round); only the compression texts of model compressors are
    # unknown before the run: stand-ins of the expected length (max_new_tokens x completion_fraction,
    # or a pilot run's lengths) in scorer tokens.
    prompts = Prompts.load(cfg)
    # Each scoring prefix is prefilled once per sweep and scorer, and that prefill is charged in equal
    # shares to the groups of its dataset that score after it (the records' rule,
    # model_work.share_prefills): every group of the dataset but a skipped identity baseline.
    sharers = Counter(g.dataset for g in expand_grid(cfg)
                      if not (g.compressor == "identity" and cfg.mi_identity_negatives == "skip"))
    known = lengths or Lengths({}, {})

    def gen_len(role: str, model: str, params: GenerationParams) -> float:
        v = known.completion.get((role, model))
        return v if v is not None else params.max_new_tokens * completion_fraction

    prefix_tokens = {(sc, d.name): counters[sc].text(score_prefixes(examples[d.name], prompts.score))
                     for sc in cfg.scorers for d in cfg.datasets}
    for g in expand_grid(cfg):
        exs = list(examples[g.dataset])
        k = (scale or {}).get(g.dataset, 1.0)
        n = len(exs)
        if is_baseline(g.compressor):  # the baseline's own texts (identity, empty, truncate:, keep:)
            samples = baseline_samples(cfg, g.compressor, exs,
                                       lambda cs, g=g: truncate_contexts(counters[cfg.scorer], g.compressor, cs))
            texts: list[str] | None = [row[0] for row in samples]
            comps = [Compressions(texts=row) for row in samples]
            z_model = 0.0
        else:
            specs, params = compress_requests(cfg, prompts, g, exs)
            l_comp = gen_len("compressor", g.compressor, params)
            z_model = known.compression.get(g.compressor, l_comp)
            n_prompt = counters[g.compressor].specs(specs)
            work("compress", g.compressor, dataset=g.dataset).add(round(n * k), k * sum(n_prompt),
                                                                  k * n * params.n * l_comp)
            texts = None  # unknown before the run: M distinct stand-ins of z_model tokens each
            comps = [Compressions(texts=[f"<sample {j}>" for j in range(params.n)]) for _ in exs]
        # scoring (each scorer): each example's row = its prefix + the compressions scored after it,
        # the (K + 1) per compression of the first round (every other context: K = N - 1; auto:
        # its start), each example's distinct compressions once (measure.scoring.ScoredWork).
        # Scaled to k*n examples.
        rnd = first_score_round(cfg, g, round(n * k))
        distinct = sum(len(set(c.texts or ())) for c in comps) / n
        for sc in cfg.scorers if rnd is not None else ():
            z = [float(c) for c in counters[sc].text(texts)] if texts is not None else [z_model] * n
            part = "identity" if g.compressor == "identity" else ""
            per_row = distinct * (rnd.n_negatives + 1)
            zbar = sum(z) / n
            sw = work("score", sc, part, g.dataset)
            sw.add(round(n * k), k * sum(prefix_tokens[(sc, g.dataset)]) + (k * n) * per_row * zbar, 0.0)
            for p_tok in prefix_tokens[(sc, g.dataset)]:
                sw.segment((k, float(p_tok), per_row, zbar, 1.0 / sharers[g.dataset]))
            for w in sw.lines:
                w.negatives[f"{g.dataset}/{g.compressor}/{g.prompt.label}/T{g.temperature:g}/s{g.seed}"] = (
                    f"K={rnd.n_negatives:g}" + (" (auto: its start; up to N-1)" if rnd.negatives == "auto"
                                                 and rnd.k is not None else "")
                    + (" (all)" if rnd.k is None else ""))
        for p in cfg.predictors:
            counter = counters[p]

            def slot_tokens(slots: Sequence[str]) -> list[float]:
                """A compression's tokens: a baseline's own; a model compressor's expected length
                (in scorer tokens, approximately the predictor's)."""
                return [float(c) for c in counter.text(slots)] if texts is not None else [z_model] * len(slots)

            mode = cfg.mode_of(p)
            if mode == "loglik":  # one call per compression: its prefix, then every option scored after it
                items = predict_loglik_requests(exs, comps).samples
                base = [_loglik_prompt_tokens(counter, ex, prompts.predict_loglik, cfg.loglik_prompt_format)
                        for ex, _ in items]
                slots = slot_tokens([t for _, t in items])
                n_calls, l_pred = len(items), 0.0
            else:
                specs, _where, params = predict_generate_requests(cfg, prompts, exs, comps)
                base = [float(b) for b in counter.specs(specs, empty_slot=True)]
                slots = slot_tokens([s.text for s in specs])
                n_calls, l_pred = len(specs), gen_len("predictor", p, params)
            work("predict", p).add(round(n_calls * k), k * sum(b + zz for b, zz in zip(base, slots)),
                                   k * n_calls * l_pred)
            if cfg.judge is not None and prompts.judge is not None:
                # every prediction gives a voted answer where its mode does (its answers parse)
                preds = [Prediction(voted="<answer>" if gives_voted_answer(mode, ex) else None) for ex in exs]
                todo, specs, params = judge_requests(cfg, prompts, exs, preds)
                if todo:
                    jbase = counters[cfg.judge].specs(specs, empty_slot=True)
                    work("judge", cfg.judge).add(round(len(todo) * k), k * (sum(jbase) + len(todo) * l_pred),
                                                 k * len(todo) * gen_len("judge", cfg.judge, params))
    return works


def _loglik_prompt_tokens(counter: TokenCounter, ex: Example, prompt: Any, prompt_format: str) -> float:
    """The loglik predictor's prompt tokens for ``ex`` with an empty compression: its scoring prefix
    (:func:`compressbench.measure.predict_loglik.loglik_prompt`, as the run renders it) and every
    option after it (the run's ``n_prompt_tokens``). A predictor that cannot render the chat
    prefix asked for (its predictions fail in the run) is counted in plain text."""
    scorer = _LoglikScorer(counter)
    try:
        prefix, delim, _ = loglik_prompt(scorer, ex, "", prompt=prompt, prompt_format=prompt_format)
    except UsageError:
        log.info("plan: %s cannot render a chat prefix here; its loglik prompts are counted in plain text",
                 counter.model)
        prefix, delim, _ = loglik_prompt(scorer, ex, "", prompt=prompt, prompt_format="completion")
    opts = sum(counter.text([delim + o for o in ex.options])) if ex.options else 0
    return float(counter.text([prefix])[0] + opts)


# --------------------------------------------------------------------------- schedule


@dataclass(frozen=True)
class Unit:
    """GPUs that run some models of a stage: one model with tensor parallelism ``tp`` (and
    ``replicas`` data-parallel copies), or several small models sharing one GPU."""

    models: tuple[str, ...]
    gpus_per_replica: int
    replicas: int
    work_gpu_hours: float  # at full use of the unit's GPUs
    memory_gb: float  # per replica
    start_h: float = 0.0

    @property
    def n_gpus(self) -> int:
        return self.gpus_per_replica * self.replicas

    @property
    def hours(self) -> float:
        return self.work_gpu_hours / self.n_gpus

    def label(self) -> str:
        if len(self.models) > 1:
            return " + ".join(self.models) + " (share 1 GPU)"
        tp = f"tp {self.gpus_per_replica}" if self.gpus_per_replica > 1 else "1 GPU"
        return f"{self.models[0]} ({tp}{f' x {self.replicas} replicas' if self.replicas > 1 else ''})"


@dataclass(frozen=True)
class StageSchedule:
    stage: str
    units: tuple[Unit, ...]
    hours: float
    notes: tuple[str, ...] = ()


def _tp(need_gb: float, usable_gb: float) -> int:
    tp = 1
    while need_gb > tp * usable_gb:
        tp *= 2
    return tp


def schedule_stage(stage: str, models: Mapping[str, tuple[float, float | None]], gpu: GPUType, n_gpus: int, *,
                   usable_fraction: float = DEFAULT_USABLE_FRACTION) -> StageSchedule:
    """Place one stage's models on ``n_gpus`` GPUs.

    ``models[name] = (gpu_hours, memory_gb per replica or None if unknown)``. Models of unknown
    memory are placed on one GPU each (and said so in the notes).
    """
    usable = gpu.memory_gb * usable_fraction
    notes: list[str] = []
    big: list[Unit] = []
    small: list[tuple[str, float, float]] = []
    for name, (hours, mem) in models.items():
        if mem is None:
            notes.append(f"{name}: size unknown, assumed to fit one GPU (set models.{name}.info.n_params)")
            mem = usable
        tp = _tp(mem, usable)
        if tp > n_gpus:
            notes.append(f"{name} needs {mem:.0f} GB per replica = tensor parallelism over {tp} x {gpu.name}, "
                         f"more than the {n_gpus} GPUs given; plan with --gpus {tp} or more (or quantise it)")
        if mem <= usable / 2:
            small.append((name, hours, mem))
        else:
            big.append(Unit((name,), tp, 1, hours, mem))
    # Small models get a GPU each while GPUs suffice; else they share (first-fit decreasing by memory).
    bins: list[list[tuple[str, float, float]]] = []
    if sum(u.gpus_per_replica for u in big) + len(small) <= n_gpus:
        bins = [[item] for item in small]
    else:
        for item in sorted(small, key=lambda t: -t[2]):
            for b in bins:
                if sum(x[2] for x in b) + item[2] <= usable:
                    b.append(item)
                    break
            else:
                bins.append([item])
    for b in bins:
        if len(b) == 1:
            big.append(Unit((b[0][0],), 1, 1, b[0][1], b[0][2]))
        else:
            big.append(Unit(tuple(x[0] for x in b), 1, 1, sum(x[1] for x in b), sum(x[2] for x in b)))
    units = sorted(big, key=lambda u: -u.hours)
    if not units:
        return StageSchedule(stage, (), 0.0, tuple(notes))
    need = sum(u.gpus_per_replica for u in units)
    if need <= n_gpus:
        free = n_gpus - need
        # Data-parallel replicas for the unit that finishes last (only single-model units replicate).
        while True:
            cand = [i for i, u in enumerate(units) if len(u.models) == 1 and u.gpus_per_replica <= free]
            if not cand:
                break
            i = max(cand, key=lambda j: units[j].hours)
            if units[i].hours <= 0:
                break
            units[i] = replace(units[i], replicas=units[i].replicas + 1)
            free -= units[i].gpus_per_replica
        return StageSchedule(stage, tuple(units), max(u.hours for u in units), tuple(notes))
    # Waves: list scheduling, longest first, each unit starts when enough GPUs are free.
    running: list[tuple[float, int]] = []  # (end time, gpus)
    now, free, placed = 0.0, n_gpus, []
    for u in units:
        width = min(u.gpus_per_replica, n_gpus)
        while free < width:
            running.sort()
            end, g = running.pop(0)
            now, free = max(now, end), free + g
        placed.append(replace(u, start_h=now, gpus_per_replica=width))
        running.append((now + u.work_gpu_hours / width, width))
        free -= width
    notes.append(f"the {stage} stage's models need {need} GPUs at once; they run in waves on {n_gpus}")
    return StageSchedule(stage, tuple(placed), max(p.start_h + p.hours for p in placed), tuple(notes))


# --------------------------------------------------------------------------- the plan


@dataclass
class Plan:
    config_name: str
    gpu: GPUType
    n_gpus: int
    utilisation: float
    completion_fraction: float
    works: list[Work]
    memory_gb: dict[str, float | None]
    token_counting: dict[str, str]
    schedule: list[StageSchedule]
    n_examples: dict[str, int]
    usd_per_gpu_hour: float | None = None
    notes: list[str] = field(default_factory=list)
    #: MI measurement FLOPs / compression FLOPs per dataset and in total (:func:`mi_cost_ratio`).
    mi_ratio: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total_flops(self) -> float | None:
        vals = [w.flops for w in self.works if not w.paid_api]
        return None if any(v is None for v in vals) else float(sum(vals))  # type: ignore[arg-type]

    @property
    def total_gpu_hours(self) -> float | None:
        vals = [w.gpu_hours for w in self.works if not w.paid_api]
        return None if any(v is None for v in vals) else float(sum(vals))  # type: ignore[arg-type]

    @property
    def total_api_usd(self) -> float | None:
        vals = [w.api_usd for w in self.works if w.paid_api]
        return None if any(v is None for v in vals) else float(sum(vals))  # type: ignore[arg-type]

    @property
    def wall_hours(self) -> float:
        return float(sum(s.hours for s in self.schedule))

    def tokens(self, stage: str, model: str) -> dict[str, float]:
        for w in self.works:
            if w.stage == stage and w.model == model:
                return {"n_calls": w.n_calls, "n_prompt_tokens": w.n_prompt_tokens,
                        "n_completion_tokens": w.n_completion_tokens}
        raise KeyError((stage, model))

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config_name, "gpu": asdict(self.gpu), "n_gpus": self.n_gpus,
            "utilisation": self.utilisation, "completion_fraction": self.completion_fraction,
            "n_examples": self.n_examples, "token_counting": self.token_counting,
            "works": [{**{k: v for k, v in asdict(w).items() if k != "segments"}, "flops": w.flops}
                      for w in self.works],
            "memory_gb": self.memory_gb,
            "schedule": [{"stage": s.stage, "hours": s.hours, "notes": list(s.notes),
                          "units": [{**asdict(u), "n_gpus": u.n_gpus, "hours": u.hours, "label": u.label()}
                                    for u in s.units]} for s in self.schedule],
            "total_flops": self.total_flops, "total_gpu_hours": self.total_gpu_hours,
            "total_api_usd": self.total_api_usd, "wall_hours": self.wall_hours,
            "usd_per_gpu_hour": self.usd_per_gpu_hour,
            "gpu_usd": (None if self.usd_per_gpu_hour is None or self.total_gpu_hours is None
                        else self.total_gpu_hours * self.usd_per_gpu_hour),
            "notes": self.notes,
            "mi_ratio": self.mi_ratio,
        }


def _segment_flops(w: Work, info: ModelInfo) -> None:
    """The scorer's FLOPs from its segments: its usage is one "call" per row (prefix + its
    compressions), which role_cost would charge as one long prefill; its real schedule is a prefill
    of each prefix (once per sweep), then every continuation after it (cost.py's two functions)."""
    if not w.segments:
        return
    pre = [prefill_flops(info, p) for _, p, _, _, _ in w.segments]
    gen = [generation_flops(info, p, zbar) for _, p, _, zbar, _ in w.segments]
    if any(x is None for x in pre + gen):
        w.prefill_flops = w.generation_flops = None
        return
    w.prefill_flops = float(sum(r * paid * x for (r, _, _, _, paid), x in zip(w.segments, pre)))
    w.generation_flops = float(sum(r * c * x for (r, _, c, _, _), x in zip(w.segments, gen)))


def mi_cost_ratio(per_dataset: Mapping[tuple[str, str, str, str], Work]) -> list[dict[str, Any]]:
    """Per dataset and in total: ``mi_flops`` (scoring all but the identity baseline, prefills
    included), ``identity_flops`` (the identity's scoring, on its own), ``compress_flops`` (the
    model compressors) and ``ratio = mi_flops / compress_flops`` (None when unknown or no model
    compressor)."""
    rows: dict[str, dict[str, Any]] = {}
    for (dataset, stage, _model, part), w in per_dataset.items():
        r = rows.setdefault(dataset, {"dataset": dataset, "mi_flops": 0.0, "identity_flops": 0.0,
                                      "compress_flops": 0.0})
        field_ = {"score": "identity_flops" if part == "identity" else "mi_flops",
                  "compress": "compress_flops"}.get(stage)
        if field_ is None:
            continue
        f = w.flops
        r[field_] = None if f is None or r[field_] is None else r[field_] + f
    out = mi_cost_ratios(list(rows.values()))
    return out


def _info_for(config: SweepConfig, name: str, hf_config: Mapping[str, Any] | None) -> ModelInfo:
    spec = config.models[name]
    info = ModelInfo(reference=spec.model)
    if hf_config is not None:
        try:
            info = model_info_from_config(hf_config, spec.model)
        except ConfigError as exc:
            log.info("plan: %s: %s", name, exc)
    over = dict(spec.info)
    if over:
        if "n_params" in over and "n_active_params" not in over:
            over["n_active_params"] = over["n_params"]
        info = replace(info, **{k: (int(float(v)) if k not in ("family",) else v) for k, v in over.items()})
    return info


def _dtype_bytes(options: Mapping[str, Any]) -> float:
    dt = str(options.get("dtype", "bfloat16")).lower()
    return _DTYPE_BYTES.get(dt, 2)


def make_plan(config: SweepConfig, *, n_gpus: int = 1, gpu: str = DEFAULT_GPU_TYPE,
              utilisation: float = DEFAULT_UTILISATION, completion_fraction: float = 1.0,
              use_tokenizers: bool = True, chars_per_token: float = DEFAULT_CHARS_PER_TOKEN,
              examples: Mapping[str, Sequence[Example]] | None = None,
              examples_per_dataset: int | None = None, prices_path: str | Path | None = None,
              gpu_table: str | Path | None = None, usd_per_gpu_hour: float | None = None,
              kv_reserve: float = DEFAULT_KV_RESERVE, usable_fraction: float = DEFAULT_USABLE_FRACTION,
              counters: Mapping[str, TokenCounter] | None = None, calibrate: str | Path | None = None,
              assume: Mapping[str, tuple[int, int]] | None = None) -> Plan:
    """The plan of a sweep (see the module docstring). ``examples`` replaces loading the datasets;
    ``assume[name] = (n_examples, context_tokens)`` plans stand-in examples for a dataset not at
    hand (:func:`standin_examples`); ``examples_per_dataset`` scales each dataset's counts to that
    many examples; ``calibrate``
    (a finished pilot run's directory) supplies expected generation and compression lengths."""
    if n_gpus < 1:
        raise UsageError(f"--gpus must be >= 1, got {n_gpus}")
    if not 0 < utilisation <= 1:
        raise UsageError(f"utilisation must be in (0, 1], got {utilisation}")
    if chars_per_token <= 0:
        raise UsageError(f"chars_per_token must be > 0, got {chars_per_token}")
    g = gpu_type(gpu, load_gpu_types(gpu_table))
    prices = PriceTable.load(prices_path)
    given = dict(examples or {})
    names = {d.name for d in config.datasets}
    for name, (n_ex, n_tok) in (assume or {}).items():
        if name not in names:
            raise UsageError(f"--assume names dataset {name!r}, which the config does not have "
                             f"(datasets: {', '.join(sorted(names))})")
        given[name] = standin_examples(name, n_ex, n_tok, chars_per_token)

    exs = load_examples(config, given or None)
    scale = ({d: examples_per_dataset / len(v) for d, v in exs.items()} if examples_per_dataset else None)
    made = dict(counters or {})
    hf_configs: dict[str, Any] = {}
    for name in config.model_names_in_use():
        spec = config.models[name]
        counter, hf_cfg = make_counter(name, spec.backend, spec.model, use_tokenizers=use_tokenizers,
                                       chars_per_token=chars_per_token)
        made.setdefault(name, counter)
        hf_configs[name] = hf_cfg
    lengths = lengths_from_run(calibrate) if calibrate is not None else None
    per_dataset: dict[tuple[str, str, str, str], Work] = {}
    works = count_work(config, exs, made, completion_fraction=completion_fraction, scale=scale, lengths=lengths,
                       by_dataset=per_dataset)
    notes: list[str] = []
    if lengths is not None:
        notes.append(f"generated and compression lengths from the records of {lengths.source} where known")
    memory: dict[str, float | None] = {}
    infos = {name: _info_for(config, name, hf_configs[name]) for name in config.model_names_in_use()}
    for name, info in infos.items():
        spec = config.models[name]
        n = info.n_params
        memory[name] = (None if spec.paid_api or n is None
                        else n * _dtype_bytes(spec.options) * (1 + kv_reserve) / 1e9)
        if n is None and not spec.paid_api:
            notes.append(f"{name}: size unknown: no FLOPs or GPU-hours; set models.{name}.info "
                         "(n_params, n_layers, n_heads, head_dim) in the sweep config")
    for w in works.values():
        spec = config.models[w.model]
        price = prices.lookup(spec.model) if spec.paid_api else None
        if spec.paid_api and price is None:
            notes.append(f"{w.model}: no price for {spec.model!r} in {prices.path}; $ unknown")
        rc = role_cost(w.stage, w.usage(), infos[w.model], paid_api=spec.paid_api, price=price)
        w.prefill_flops, w.generation_flops, w.api_usd = rc.prefill_flops, rc.generation_flops, rc.api_usd
        _segment_flops(w, infos[w.model])
        if not spec.paid_api and w.flops is not None:
            w.gpu_hours = w.flops / (g.peak_flops * utilisation) / 3600.0
    for w in per_dataset.values():
        rc = role_cost(w.stage, w.usage(), infos[w.model], paid_api=config.models[w.model].paid_api)
        w.prefill_flops, w.generation_flops = rc.prefill_flops, rc.generation_flops
        _segment_flops(w, infos[w.model])
    mi_ratio = mi_cost_ratio(per_dataset)
    sc = config.models[config.scorer]
    if BACKENDS[sc.backend].scoring_rereads_prefix(sc.options):
        notes.append(f"scorer {config.scorer} is served over HTTP: vLLM's prompt_logprobs path re-reads the prefix "
                     "for every (prefix, compression) pair (no prefix cache), so its scoring costs up to "
                     "(prefix + compression) / compression times the shared-prefix figure above; SGLang "
                     "(scoring: sglang) keeps the prefix cached")
    sched = []
    for stage in STAGES:
        models: dict[str, tuple[float, float | None]] = {}
        for w in works.values():  # a model's lines of one stage (the identity's scoring) add up
            if w.stage == stage and not w.paid_api:
                models[w.model] = ((models[w.model][0] if w.model in models else 0.0) + (w.gpu_hours or 0.0),
                                   memory[w.model])
        if models:
            sched.append(schedule_stage(stage, models, g, n_gpus, usable_fraction=usable_fraction))
    order = {s: i for i, s in enumerate(STAGES)}
    model_order = {n: i for i, n in enumerate(config.model_names_in_use())}
    ordered = sorted(works.values(), key=lambda w: (order[w.stage], model_order[w.model], w.part))
    n_examples = {d: (examples_per_dataset or len(v)) for d, v in exs.items()}
    for name, (n_ex, n_tok) in (assume or {}).items():
        notes.append(f"{name}: {n_ex} stand-in examples of {n_tok} context tokens (--assume), not the data")

    if config.mi_negatives == "auto":
        notes.append(f"mi_negatives: auto is planned at its start, K = {AUTO_START_K} negatives per compression "
                     "(ceiling log2 16 = 4 bits); a group whose bound reaches within "
                     f"{config.mi_auto_margin_bits:g} bit(s) of the ceiling (saturated) or whose bias correction "
                     f"exceeds {AUTO_CORRECTION_BITS:g} bit grows K (up to N - 1), which multiplies its continuation "
                     f"cost by up to N / 16; where compressions repeat, auto scores every context at once if that "
                     f"costs at most {AUTO_ALL_FACTOR:g}x the start design")
    return Plan(config.name, g, n_gpus, utilisation, completion_fraction, ordered, memory,
                {n: made[n].how for n in config.model_names_in_use()}, sched, n_examples,
                usd_per_gpu_hour, notes, mi_ratio)


def standin_examples(dataset: str, n_examples: int, context_tokens: int,
                     chars_per_token: float = DEFAULT_CHARS_PER_TOKEN) -> list[Example]:
    """``n_examples`` stand-in examples of ``context_tokens`` tokens each (as ``chars_per_token``
    characters per token) with a 20-token free-form question, for planning a study whose data is
    not at hand (``--assume NAME=N:TOKENS``)."""
    words = "the patient record lists the dose date and the physician of every visit in order "
    n_chars = int(context_tokens * chars_per_token)
    context = (words * (n_chars // len(words) + 1))[:n_chars]
    question = ("Which dose was given at the second visit, and who was the physician on duty? "
                * 2)[: int(20 * chars_per_token)]
    return [Example(id=f"{dataset}-{i}", dataset=dataset, context=context, question=question, answers=("x",))
            for i in range(n_examples)]


def parse_assume(items: Sequence[str]) -> dict[str, tuple[int, int]]:
    """``["NAME=N:TOKENS", ...]`` -> ``{name: (n_examples, context_tokens)}``."""
    out: dict[str, tuple[int, int]] = {}
    for item in items:
        name, _, rest = item.partition("=")
        n, _, toks = rest.partition(":")
        if not name or not n.isdigit() or not toks.isdigit() or int(n) < 1 or int(toks) < 1:
            raise UsageError(f"--assume expects DATASET=N_EXAMPLES:CONTEXT_TOKENS (e.g. longhealth=400:9000), "
                             f"got {item!r}")
        out[name] = (int(n), int(toks))
    return out


# --------------------------------------------------------------------------- printing


def _si(x: float | None, unit: str = "") -> str:
    if x is None:
        return "–"
    for div, p in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{p}{unit}"
    return f"{x:.3g}{unit}"


def _hours(h: float | None) -> str:
    if h is None:
        return "–"
    if h * 3600 < 1:
        return f"{h * 3.6e6:.3g} ms"
    return f"{h * 3600:.1f} s" if h < 1 / 60 else (f"{h * 60:.1f} min" if h < 1 else f"{h:.2f} h")


def format_plan(plan: Plan) -> str:
    """The plan as text: per stage and model, then the schedule and totals."""
    lines = [f"Plan for sweep {plan.config_name!r}: {', '.join(f'{d} {n} examples' for d, n in plan.n_examples.items())}",
             (f"GPU: {plan.n_gpus} x {plan.gpu.name} ({plan.gpu.memory_gb:g} GB, {plan.gpu.peak_flops / 1e12:.0f} "
              f"TFLOP/s dense BF16 peak) at {plan.utilisation:.0%} utilisation"),
             (f"Completions counted at {plan.completion_fraction:.0%} of max_new_tokens"
              + (" (upper bounds)" if plan.completion_fraction == 1 else "")),
             "Tokens: " + "; ".join(f"{how}: {', '.join(m for m, h in plan.token_counting.items() if h == how)}"
                                    for how in dict.fromkeys(plan.token_counting.values())), ""]
    header = f"{'stage':<9} {'model':<18} {'calls':>8} {'prompt tok':>11} {'compl tok':>10} {'FLOPs':>9} " \
             f"{'GPU-hours':>10} {'API $':>9}"
    lines += [header, "-" * len(header)]
    for w in plan.works:
        lines.append(f"{w.stage:<9} {w.label:<18} {w.n_calls:>8} {_si(w.n_prompt_tokens):>11} "
                     f"{_si(w.n_completion_tokens):>10} {_si(w.flops):>9} "
                     f"{('API' if w.paid_api else (f'{w.gpu_hours:.3g}' if w.gpu_hours is not None else '–')):>10} "
                     f"{(f'{w.api_usd:.2f}' if w.api_usd is not None else ('–' if w.paid_api else '')):>9}")
    lines.append("")
    paid = {w.model for w in plan.works if w.paid_api}
    lines.append("Memory per replica (weights x (1 + KV reserve)): " + ", ".join(
        f"{m} {'API' if m in paid else (f'{v:.1f} GB' if v is not None else 'unknown')}"
        for m, v in plan.memory_gb.items()))
    lines.append(f"Schedule on {plan.n_gpus} x {plan.gpu.name} (stages run in order):")
    for s in plan.schedule:
        parts = []
        gpu0 = 0
        for u in s.units:
            gpus = f"GPU {gpu0}" if u.n_gpus == 1 else f"GPUs {gpu0}-{gpu0 + u.n_gpus - 1}"
            if u.start_h:
                gpus += f" from {_hours(u.start_h)}"
            else:
                gpu0 += u.n_gpus
            parts.append(f"{gpus}: {u.label()}, {_hours(u.hours)}")
        lines.append(f"  {s.stage:<9} {_hours(s.hours):>9}")
        lines += [f"      {p}" for p in parts]
        lines += [f"      note: {n}" for n in s.notes]
    lines.append("")
    lines.append(f"Total: {_si(plan.total_flops, 'FLOP')} on GPUs = {_hours(plan.total_gpu_hours)} GPU-time"
                 + (f" (${plan.total_gpu_hours * plan.usd_per_gpu_hour:,.2f} at ${plan.usd_per_gpu_hour:g}/GPU-hour)"
                    if plan.usd_per_gpu_hour is not None and plan.total_gpu_hours is not None else "")
                 + f"; wall time about {_hours(plan.wall_hours)} on {plan.n_gpus} GPU(s)"
                 + (f"; API ${plan.total_api_usd:,.2f}" if plan.total_api_usd is not None
                    and any(w.paid_api for w in plan.works) else ""))
    if plan.mi_ratio:
        lines.append("")
        lines.append("MI measurement / compression FLOPs (scoring of every compressor but identity, prefills "
                     "included, / compressions of the model compressors):")
        for r in plan.mi_ratio:
            ratio = "–" if r["ratio"] is None else f"{r['ratio']:.2f}x"
            ident = ("" if not r["identity_flops"] else f"; identity scoring {_si(r['identity_flops'], 'FLOP')}"
                     + ("" if r["identity_ratio"] is None else f" ({r['identity_ratio']:.2f}x the compressions)"))
            lines.append(f"  {r['dataset']:<14} {ratio:>8}  ({_si(r['mi_flops'], 'FLOP')} / "
                         f"{_si(r['compress_flops'], 'FLOP')}){ident}")
    lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(line.rstrip() for line in lines)

