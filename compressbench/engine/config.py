"""Sweep configuration: YAML -> frozen dataclasses, with ``--set a.b=value`` overrides.

A sweep config names models once and then gives them roles::

    name: demo                     # the run directory is runs/<name>/
    models:
      smol: {backend: hf, model: smollm2-135m, options: {}, paid_api: false}
    compressors: [smol, identity, empty, "truncate:64"]   # model names or baselines
    predictors: [smol]
    scorer: smol                   # the MI scorer: log p(z | x) for every (z, x) pair
    # scorers: [smol, gemma]       # or several: MI under each (proxy sensitivity; cells per scorer)
    mi_prompt: mi_score            # scoring prefix: mi_score (text + question) or mi_score_agnostic (text)
    loglik_prompt_format: completion  # loglik predictors: completion (plain text, lm-eval's default),
                                   # chat (the model's chat template) or auto (chat when it has one)
    judge: null                    # optional LLM judge for free-form answers
    datasets:
      - {kind: synthetic, seed: 0} # load_dataset specs; optional `name`
    prompts: [query, agnostic, {variant: k_sentences, k: 3}]
    samples: 2                     # M compressions per example
    temperatures: [0.7]            # compressor sampling temperatures
    seeds: [0]
    max_new_tokens: {compressor: 96, predictor: 48, judge: 32}
    predictor_temperature: 0.0
    on_context_overflow: truncate  # or: fail (the example fails and is recorded with the error)
    max_error_rate: 0.25           # abort the sweep when more than this fraction of examples failed
    batch_size: {compressor: 4, predictor: 8, scorer: 8, judge: 8}
    limit: null                    # first N examples of each dataset
    mi_n_boot: 1000                # bootstrap resamples of the MI interval (0: no interval)
    mi_negatives: auto             # contexts each compression is scored against: all (every other),
                                   # K (a seeded balanced design of K; ceiling log2(K+1)) or auto
                                   # (K = 15, doubled while the interval nears the ceiling, up to N-1)
    mi_identity_negatives: 7       # the identity baseline's own K (its compressions are whole
                                   # contexts), or skip (its MI is "not measured")
    mi_auto_margin_bits: 1.0       # auto grows K while the interval top is within this of log2(K+1)
                                   # (or while the estimate still rises by > 0.1 bit per doubling)
    mi_design_seed: 0              # seed of the design of negatives
    predictor_mode: generate       # how predictors answer: generate (free text, parsed) or loglik
                                   # (each option scored as a continuation); or per predictor,
                                   # e.g. {smol: loglik, big: generate}

Grid axes (compressors, predictors, datasets, prompts, temperatures, seeds) must not repeat a value.

Unknown keys raise :class:`ConfigError` with a difflib "did you mean" suggestion.
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from compressbench.backends import BACKENDS
from compressbench.backends import options as backend_options
from compressbench.backends.models import list_named_models
from compressbench.backends.options import validate_options
from compressbench.measure.baselines import BASELINE_NAMES, is_baseline, keep_count, truncate_tokens  # noqa: F401
from compressbench.core.errors import ConfigError, UsageError
from compressbench.core.yamlfile import load_yaml
from compressbench.engine.executors import DEFAULT_EXECUTOR, EXECUTORS
from compressbench.engine.ray_executor import ActorResources
from compressbench.measure.mi import parse_negatives

#: Prompt variant -> the compressor prompt file in prompts/.
PROMPT_FILES = {
    "query": "compress_query",
    "agnostic": "compress_agnostic",
    "k_sentences": "compress_k_sentences",
}
BACKEND_CHOICES = BACKENDS.names()
OVERFLOW_CHOICES = ("truncate", "fail")

_TOP_KEYS = (
    "name", "models", "compressors", "predictors", "scorer", "judge", "datasets", "prompts",
    "samples", "temperatures", "seeds", "max_new_tokens", "predictor_temperature",
    "on_context_overflow", "max_error_rate", "batch_size", "limit", "mi_n_boot", "predictor_mode", "scorers",
    "mi_prompt", "loglik_prompt_format", "executor",
    "mi_negatives", "mi_identity_negatives", "mi_auto_margin_bits", "mi_design_seed",
)
#: Scoring prompts for log p(z | x): with the example's question (the method's) or without it.
MI_PROMPTS = ("mi_score", "mi_score_agnostic")
#: How a predictor answers: ``generate`` (free text, parsed) or ``loglik`` (each option, or an open
#: question's reference, scored as a continuation: :mod:`compressbench.measure.predict_loglik`).
PREDICTOR_MODES = ("generate", "loglik")
#: Backend kinds that can score continuations (``score``/``score_matrix``): the MI scorer and loglik
#: predictors must be one of these.
SCORING_BACKENDS = frozenset(k for k in BACKENDS if BACKENDS[k].can_score)
_EXECUTOR_KEYS = ("kind", "address", "resources")
_MODEL_KEYS = ("backend", "model", "options", "paid_api", "info")
#: Fields a model's `info` mapping may set (ModelInfo fields; used by reports and plots for sizes/families).
_INFO_KEYS = ("n_params", "n_active_params", "n_layers", "d_model", "n_heads", "head_dim", "n_ctx", "family")
_MNT_ROLES = ("compressor", "predictor", "judge")
_BATCH_ROLES = ("compressor", "predictor", "scorer", "judge")
_PROMPT_KEYS = ("variant", "k")


#: Top-level config keys that only schedule work; a run can be resumed with other values.
RUNTIME_ONLY_KEYS = frozenset({"batch_size", "executor"})


def scheduling_only_options(backend_kind: str) -> frozenset[str]:
    """The options of backend ``backend_kind`` that only schedule work (batch budgets, threads,
    concurrency, retries, timeouts): left out of cache keys, result identities and the resume check.
    The one place the engine asks this question; the answer is what the backend declares in
    :mod:`compressbench.backends.options` (an unknown kind has none)."""
    if backend_kind not in backend_options.BACKEND_OPTIONS:
        return frozenset()
    return backend_options.scheduling_only_options(backend_kind)


def model_identity_options(backend_kind: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` without the scheduling-only ones: what changes a model's outputs."""
    drop = scheduling_only_options(backend_kind)
    return {k: v for k, v in options.items() if k not in drop}


def results_identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """A resolved config (plain data, as in ``config.yaml``) without its scheduling-only settings
    (:data:`RUNTIME_ONLY_KEYS`, each model's :func:`scheduling_only_options`): configs with equal
    identities ask for the same results, so
    a run folder may be resumed with either."""
    out = {k: v for k, v in config.items() if k not in RUNTIME_ONLY_KEYS}
    out.setdefault("predictor_mode", "generate")  # configs written before the key existed
    out["models"] = {
        name: {**m, "options": model_identity_options(str(m.get("backend")), m.get("options") or {})}
        for name, m in (config.get("models") or {}).items()
    }
    return out


def _did_you_mean(key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(key), [str(k) for k in known], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(map(str, known))}"


def _check_keys(d: Mapping[str, Any], known: Sequence[str], where: str) -> None:
    for key in d:
        if key not in known:
            raise ConfigError(f"unknown key {key!r} in {where}{_did_you_mean(key, known)}")


@dataclass(frozen=True)
class ModelSpec:
    """A named model: which backend loads it, its reference (name, path or served id), options."""

    name: str
    backend: str
    model: str
    options: Mapping[str, Any] = field(default_factory=dict)
    paid_api: bool = False
    #: ModelInfo overrides (n_params, family, ...) for reports and plots, e.g. for an API model whose
    #: size the backend cannot know. Empty: use what the backend reports.
    info: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = {"backend": self.backend, "model": self.model, "options": dict(self.options),
             "paid_api": self.paid_api}
        if self.info:
            d["info"] = dict(self.info)
        return d


@dataclass(frozen=True)
class PromptVariant:
    """A compressor prompt variant: ``query``, ``agnostic`` or ``k_sentences`` (with ``k``)."""

    variant: str
    k: int | None = None

    @property
    def label(self) -> str:
        """The name used in records and summaries: ``query``, ``agnostic``, ``k_sentences:3``."""
        return f"{self.variant}:{self.k}" if self.variant == "k_sentences" else self.variant

    @property
    def prompt_file(self) -> str:
        return PROMPT_FILES[self.variant]

    def to_yaml(self) -> Any:
        return {"variant": self.variant, "k": self.k} if self.k is not None else self.variant


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset: its display name and the spec handed to ``compressbench.data.load_dataset``."""

    name: str
    spec: Mapping[str, Any]


@dataclass(frozen=True)
class SweepConfig:
    """A fully resolved sweep. See the module docstring for the YAML form."""

    name: str
    models: Mapping[str, ModelSpec]
    compressors: tuple[str, ...]
    predictors: tuple[str, ...]
    scorer: str
    datasets: tuple[DatasetSpec, ...]
    prompts: tuple[PromptVariant, ...] = (PromptVariant("query"),)
    judge: str | None = None
    samples: int = 1
    temperatures: tuple[float, ...] = (0.7,)
    seeds: tuple[int, ...] = (0,)
    max_new_tokens: Mapping[str, int] = field(
        default_factory=lambda: {"compressor": 128, "predictor": 64, "judge": 32})
    predictor_temperature: float = 0.0
    on_context_overflow: str = "truncate"
    max_error_rate: float = 0.25
    batch_size: Mapping[str, int] = field(
        default_factory=lambda: {"compressor": 4, "predictor": 8, "scorer": 8, "judge": 8})
    limit: int | None = None
    mi_n_boot: int = 1000
    predictor_mode: str = "generate"
    #: predictor -> its mode, when they differ (else empty: every predictor uses ``predictor_mode``).
    predictor_modes: Mapping[str, str] = field(default_factory=dict)
    #: Every MI scorer (``scorer`` is the first); cells are per scorer.
    scorers: tuple[str, ...] = ()
    #: The scoring prompt of log p(z | x) (prompts/<mi_prompt>.yaml).
    mi_prompt: str = "mi_score"
    #: How loglik predictors are prompted: completion | chat | auto (compressbench.measure.predict_loglik).
    loglik_prompt_format: str = "completion"
    #: Negatives per compression in the MI estimate: "all", an integer K or "auto" (compressbench.measure.mi).
    mi_negatives: str | int = "auto"
    #: The identity baseline's own K, or "skip" (no scoring; its MI is "not measured").
    mi_identity_negatives: str | int = 7
    #: ``auto`` doubles K + 1 while the interval's upper end is within this many bits of log2(K + 1).
    mi_auto_margin_bits: float = 1.0
    #: Seed of the balanced design of negatives.
    mi_design_seed: int = 0

    def __post_init__(self) -> None:
        if not self.scorers:
            object.__setattr__(self, "scorers", (self.scorer,) if self.scorer else ())

    def mode_of(self, predictor: str) -> str:
        """The predictor mode of ``predictor`` (per predictor, else the sweep's)."""
        return self.predictor_modes.get(predictor, self.predictor_mode)
    #: ``{"kind": an executor kind (EXECUTORS), "address": str|None, "resources": {model: {num_cpus, num_gpus,
    #: memory_gb, replicas}}}``; scheduling only (a run resumes under another executor).
    executor: Mapping[str, Any] = field(
        default_factory=lambda: {"kind": DEFAULT_EXECUTOR, "address": None, "resources": {}})

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data (what ``config.yaml`` in the run directory holds)."""
        return {
            "name": self.name,
            "models": {n: m.to_dict() for n, m in self.models.items()},
            "compressors": list(self.compressors),
            "predictors": list(self.predictors),
            "scorer": self.scorer,
            **({"scorers": list(self.scorers)} if len(self.scorers) > 1 else {}),
            "judge": self.judge,
            "datasets": [dict(d.spec, name=d.name) for d in self.datasets],
            "prompts": [p.to_yaml() for p in self.prompts],
            "samples": self.samples,
            "temperatures": list(self.temperatures),
            "seeds": list(self.seeds),
            "max_new_tokens": dict(self.max_new_tokens),
            "predictor_temperature": self.predictor_temperature,
            "on_context_overflow": self.on_context_overflow,
            "max_error_rate": self.max_error_rate,
            "batch_size": dict(self.batch_size),
            "limit": self.limit,
            "mi_n_boot": self.mi_n_boot,
            "mi_negatives": self.mi_negatives,
            "mi_identity_negatives": self.mi_identity_negatives,
            "mi_auto_margin_bits": self.mi_auto_margin_bits,
            "mi_design_seed": self.mi_design_seed,
            "predictor_mode": dict(self.predictor_modes) if self.predictor_modes else self.predictor_mode,
            **({"mi_prompt": self.mi_prompt} if self.mi_prompt != "mi_score" else {}),
            **({"loglik_prompt_format": self.loglik_prompt_format} if self.loglik_prompt_format != "completion"
               else {}),
            "executor": {**self.executor, "resources": {k: dict(v) for k, v in
                                                        (self.executor.get("resources") or {}).items()}},
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def model_names_in_use(self) -> list[str]:
        """Model names used by some role (baselines excluded), in first-use order."""
        names = [*self.compressors, *self.predictors, *self.scorers]
        if self.judge:
            names.append(self.judge)
        out: list[str] = []
        for n in names:
            if n in self.models and n not in out:
                out.append(n)
        return out


# --------------------------------------------------------------------------- overrides


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b=value"`` -> (["a", "b"], yaml-parsed value). Raises ConfigError when malformed."""
    if "=" not in item:
        raise ConfigError(f"--set expects KEY=VALUE (e.g. --set samples=4), got {item!r}")
    key, _, raw = item.partition("=")
    path = [p for p in key.strip().split(".")]
    if not key.strip() or any(not p for p in path):
        raise ConfigError(f"--set key {key!r} is empty or has an empty part; write e.g. max_new_tokens.compressor=64")
    value = load_yaml(raw, f"--set {key}: value {raw!r}") if raw.strip() else None
    return path, value


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``--set`` overrides to the raw config mapping (returns a new mapping).

    A numeric path part indexes a list (``datasets.0.seed=3``). Unknown keys are caught by validation.
    """
    out = copy.deepcopy(raw)
    for item in overrides:
        path, value = parse_override(item)
        node: Any = out
        for depth, part in enumerate(path):
            last = depth == len(path) - 1
            where = ".".join(path[: depth + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"--set {'.'.join(path)}: {where!r} needs a list index below {len(node)}")
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    if node.get(part) is None:
                        node[part] = {}
                    node = node[part]
            else:
                raise ConfigError(f"--set {'.'.join(path)}: {'.'.join(path[:depth])!r} is not a mapping or list")
    return out


# --------------------------------------------------------------------------- parsing


def _as_list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (str, int, float, dict)):
        return [value]
    if isinstance(value, list):
        return value
    raise ConfigError(f"{where} must be a list, got {type(value).__name__}")


def _pos_int(value: Any, where: str, *, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where} must be a positive integer, got {value!r}")
    return value


def _role_ints(value: Any, roles: Sequence[str], defaults: Mapping[str, int], where: str) -> dict[str, int]:
    out = dict(defaults)
    if value is None:
        return out
    if isinstance(value, int) and not isinstance(value, bool):
        return {r: _pos_int(value, where) for r in roles}  # type: ignore[misc]
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping role -> integer ({', '.join(roles)}) or one integer")
    _check_keys(value, roles, where)
    for r, v in value.items():
        out[r] = _pos_int(v, f"{where}.{r}")  # type: ignore[assignment]
    return out


def _model_ref(name: Any, models: Mapping[str, ModelSpec], role: str, *, baselines: bool) -> str:
    if not isinstance(name, str):
        raise ConfigError(f"{role}: model names are strings, got {name!r}")
    if name in models:
        return name
    if baselines and is_baseline(name):
        return name
    if name.startswith("truncate"):
        raise ConfigError(f"{role}: {name!r} is not a valid baseline; write truncate:<tokens>, e.g. truncate:64")
    if baselines and name.startswith("keep"):
        raise ConfigError(f"{role}: {name!r} is not a valid baseline; write keep:<k>, e.g. keep:2")
    known = list(models) + (["identity", "empty", "truncate:<n>", "keep:<k>"] if baselines else [])
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"{role}: {name!r} is not a model defined under 'models' "
                      f"(known: {', '.join(known) or 'none'}){hint}")


def _check_model_reference(backend: str, ref: str, where: str) -> None:
    """A local model reference that is no built-in name, no existing path and no hub id
    (``org/name``) but is close to a built-in name is a typo: ConfigError with a "did you mean",
    before anything is loaded (the loader would otherwise go looking on the hub). Only for backend
    kinds that resolve built-in names (``BackendKind.named_models``)."""
    if not BACKENDS[backend].named_models:
        return
    names = [m.name for m in list_named_models()]
    if ref in names or "/" in ref or "\\" in ref or Path(ref).expanduser().exists():
        return
    close = difflib.get_close_matches(ref, names, n=1, cutoff=0.75)
    if close:
        raise ConfigError(f"{where}.model {ref!r} is not a built-in model ({', '.join(names)}), a local path or a "
                          f"hub id (org/name); did you mean {close[0]!r}?")


def _dataset_spec(entry: Any, i: int) -> DatasetSpec:
    if isinstance(entry, str):
        entry = {"path": entry} if ("/" in entry or "." in entry) else {"kind": entry}
    if not isinstance(entry, dict):
        raise ConfigError(f"datasets[{i}] must be a mapping (a load_dataset spec), got {entry!r}")
    spec = dict(entry)
    name = spec.pop("name", None)
    if name is None:
        if "path" in spec:
            name = Path(str(spec["path"])).stem
        else:
            name = str(spec.get("kind", f"dataset{i}"))
    return DatasetSpec(name=str(name), spec=spec)


def _prompt_variant(entry: Any, i: int) -> PromptVariant:
    if isinstance(entry, str):
        if entry.startswith("k_sentences:"):
            entry = {"variant": "k_sentences", "k": entry.split(":", 1)[1]}
        else:
            entry = {"variant": entry}
    if not isinstance(entry, dict):
        raise ConfigError(f"prompts[{i}] must be a variant name or {{variant, k}}, got {entry!r}")
    _check_keys(entry, _PROMPT_KEYS, f"prompts[{i}]")
    variant = entry.get("variant")
    if variant not in PROMPT_FILES:
        raise ConfigError(f"prompts[{i}]: unknown variant {variant!r}{_did_you_mean(str(variant), list(PROMPT_FILES))}")
    k = entry.get("k")
    if variant == "k_sentences":
        try:
            k = int(k)
        except (TypeError, ValueError):
            raise ConfigError(f"prompts[{i}]: k_sentences needs an integer k >= 1, got {k!r}") from None
        _pos_int(k, f"prompts[{i}].k")
    elif k is not None:
        raise ConfigError(f"prompts[{i}]: k only applies to the k_sentences variant")
    return PromptVariant(variant=variant, k=k)


def config_from_dict(raw: Any, *, default_name: str = "sweep") -> SweepConfig:
    """Validate a raw mapping (parsed YAML) into a :class:`SweepConfig`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a sweep config must be a YAML mapping at the top level, got {type(raw).__name__}")
    _check_keys(raw, _TOP_KEYS, "the sweep config")
    defaults = SweepConfig(name="x", models={}, compressors=(), predictors=(), scorer="", datasets=())

    name = raw.get("name") or default_name
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9._-]+", name) or name.startswith("."):
        raise ConfigError(f"name {name!r} must be letters, digits, '.', '_' or '-', not starting with '.' "
                          "(it names the run directory inside --runs-dir)")

    raw_models = raw.get("models") or {}
    if not isinstance(raw_models, dict):
        raise ConfigError("models must be a mapping name -> {backend, model, options, paid_api}")
    models: dict[str, ModelSpec] = {}
    for mname, m in raw_models.items():
        where = f"models.{mname}"
        if is_baseline(str(mname)):
            raise ConfigError(f"{where}: {mname!r} is a built-in baseline name; pick another model name")
        if not isinstance(m, dict):
            raise ConfigError(f"{where} must be a mapping with backend and model")
        _check_keys(m, _MODEL_KEYS, where)
        backend = m.get("backend")
        if backend not in BACKEND_CHOICES:
            raise ConfigError(f"{where}.backend must be one of {', '.join(BACKEND_CHOICES)}, got {backend!r}"
                              + (_did_you_mean(str(backend), BACKEND_CHOICES) if backend else ""))
        ref = m.get("model")
        if not isinstance(ref, str) or not ref:
            raise ConfigError(f"{where}.model must be a model reference (name, local path or served id)")
        options = m.get("options") or {}
        if not isinstance(options, dict):
            raise ConfigError(f"{where}.options must be a mapping of backend keyword options")
        validate_options(backend, options, where=f"{where}.options")
        _check_model_reference(backend, ref, where)
        paid = m.get("paid_api", False)
        if not isinstance(paid, bool):
            raise ConfigError(f"{where}.paid_api must be true or false")
        info = m.get("info") or {}
        if not isinstance(info, dict):
            raise ConfigError(f"{where}.info must be a mapping of model facts, e.g. {{n_params: 7.6e9, family: qwen2.5}}")
        _check_keys(info, _INFO_KEYS, f"{where}.info")
        models[str(mname)] = ModelSpec(str(mname), backend, ref, options, paid, info)

    compressors = tuple(_model_ref(n, models, "compressors", baselines=True)
                        for n in _as_list(raw.get("compressors"), "compressors"))
    predictors = tuple(_model_ref(n, models, "predictors", baselines=False)
                       for n in _as_list(raw.get("predictors"), "predictors"))
    if not compressors:
        raise ConfigError("compressors is empty; list model names or baselines (identity, empty, truncate:<n>, "
                          "keep:<k>)")
    if not predictors:
        raise ConfigError("predictors is empty; list at least one model name from 'models'")
    if len(set(compressors)) != len(compressors) or len(set(predictors)) != len(predictors):
        dup = sorted({n for n in [*compressors, *predictors] if [*compressors].count(n) > 1 or [*predictors].count(n) > 1})
        raise ConfigError(f"compressors and predictors must not list a name twice (repeated: {', '.join(dup)})")
    both = raw.get("scorer") is not None and raw.get("scorers") is not None
    if both and not (isinstance(raw["scorers"], list) and raw["scorers"][:1] == [raw["scorer"]]):
        # (a resolved config.yaml holds both, scorer being the first of scorers)
        raise ConfigError("give either scorer (one model) or scorers (a list), not both")
    raw_scorers = _as_list(raw.get("scorers"), "scorers") if raw.get("scorers") is not None else [raw.get("scorer")]
    if not raw_scorers or raw_scorers[0] is None:
        raise ConfigError("scorer is missing: name the model that scores log p(compression | context) for MI "
                          "(scorer: <model>, or scorers: [<model>, ...])")
    scorers = tuple(_model_ref(n, models, "scorers" if raw.get("scorers") is not None else "scorer", baselines=False)
                    for n in raw_scorers)
    if len(set(scorers)) != len(scorers):
        raise ConfigError(f"scorers lists a model twice: {', '.join(scorers)}")
    for n in scorers:
        if models[n].backend not in SCORING_BACKENDS:
            raise ConfigError(f"scorer {n!r}: backend {models[n].backend!r} cannot score continuations")
    scorer = scorers[0]
    judge = raw.get("judge")
    if judge is not None:
        judge = _model_ref(judge, models, "judge", baselines=False)

    datasets = tuple(_dataset_spec(e, i) for i, e in enumerate(_as_list(raw.get("datasets"), "datasets")))
    if not datasets:
        raise ConfigError("datasets is empty; add at least one, e.g. {kind: synthetic}")
    if len({d.name for d in datasets}) != len(datasets):
        raise ConfigError("two datasets share a name; give them distinct `name` keys")
    keeps = [c for c in compressors if keep_count(c) is not None]
    other = [d.name for d in datasets if d.spec.get("kind") != "known_info"]
    if keeps and other:
        raise ConfigError(f"{', '.join(keeps)} keep the known slot sentences of the known_info dataset kind; "
                          f"dataset(s) {', '.join(other)} are of another kind: drop keep:<k> or those datasets")

    prompts = tuple(_prompt_variant(e, i) for i, e in enumerate(_as_list(raw.get("prompts", ["query"]), "prompts")))
    if not prompts:
        raise ConfigError("prompts is empty; use e.g. [query]")
    if len({p.label for p in prompts}) != len(prompts):
        raise ConfigError("prompts lists the same variant twice")

    samples = _pos_int(raw.get("samples", defaults.samples), "samples")
    temps_raw = _as_list(raw.get("temperatures", list(defaults.temperatures)), "temperatures")
    temperatures: list[float] = []
    for t in temps_raw:
        if isinstance(t, bool) or not isinstance(t, (int, float)) or t < 0:
            raise ConfigError(f"temperatures must be numbers >= 0, got {t!r}")
        temperatures.append(float(t))
    seeds_raw = _as_list(raw.get("seeds", list(defaults.seeds)), "seeds")
    for s in seeds_raw:
        if isinstance(s, bool) or not isinstance(s, int):
            raise ConfigError(f"seeds must be integers, got {s!r}")
    if not temperatures or not seeds_raw:
        raise ConfigError("temperatures and seeds need at least one value each")
    for axis, values in (("temperatures", temperatures), ("seeds", seeds_raw)):
        dup = sorted({v for v in values if values.count(v) > 1})
        if dup:
            raise ConfigError(f"{axis} lists {', '.join(map(str, dup))} more than once; each grid value must be "
                              f"distinct (a repeated value would run and report the same cell twice)")
    mode, modes = _predictor_modes(raw.get("predictor_mode", defaults.predictor_mode), predictors, models)
    pt = raw.get("predictor_temperature", defaults.predictor_temperature)
    if isinstance(pt, bool) or not isinstance(pt, (int, float)) or pt < 0:
        raise ConfigError(f"predictor_temperature must be a number >= 0, got {pt!r}")

    overflow = raw.get("on_context_overflow", defaults.on_context_overflow)
    if overflow not in OVERFLOW_CHOICES:
        raise ConfigError(f"on_context_overflow must be 'truncate' or 'fail', got {overflow!r}")
    mer = raw.get("max_error_rate", defaults.max_error_rate)
    if isinstance(mer, bool) or not isinstance(mer, (int, float)) or not 0 <= mer <= 1:
        raise ConfigError(f"max_error_rate must be a fraction in [0, 1], got {mer!r}")

    return SweepConfig(
        name=name,
        models=models,
        compressors=compressors,
        predictors=predictors,
        scorer=scorer,
        judge=judge,
        datasets=datasets,
        prompts=prompts,
        samples=samples,  # type: ignore[arg-type]
        temperatures=tuple(temperatures),
        seeds=tuple(int(s) for s in seeds_raw),
        max_new_tokens=_role_ints(raw.get("max_new_tokens"), _MNT_ROLES, defaults.max_new_tokens, "max_new_tokens"),
        predictor_temperature=float(pt),
        on_context_overflow=overflow,
        max_error_rate=float(mer),
        batch_size=_role_ints(raw.get("batch_size"), _BATCH_ROLES, defaults.batch_size, "batch_size"),
        limit=_pos_int(raw.get("limit"), "limit", allow_none=True),
        mi_n_boot=_n_boot(raw.get("mi_n_boot", defaults.mi_n_boot)),
        predictor_mode=mode,
        predictor_modes=modes,
        scorers=scorers,
        mi_prompt=_choice(raw.get("mi_prompt", defaults.mi_prompt), MI_PROMPTS, "mi_prompt"),
        loglik_prompt_format=_choice(raw.get("loglik_prompt_format", defaults.loglik_prompt_format),
                                     ("completion", "chat", "auto"), "loglik_prompt_format"),
        executor=executor_spec(raw.get("executor"), models),
        **_mi_negatives_keys(raw, defaults),
    )


def _mi_negatives_keys(raw: Mapping[str, Any], defaults: SweepConfig) -> dict[str, Any]:
    """``mi_negatives``, ``mi_identity_negatives``, ``mi_auto_margin_bits``, ``mi_design_seed``."""
    try:
        neg = parse_negatives(raw.get("mi_negatives", defaults.mi_negatives), "mi_negatives")
        ident = raw.get("mi_identity_negatives", defaults.mi_identity_negatives)
        ident = "skip" if isinstance(ident, str) and ident.strip().lower() == "skip" else parse_negatives(
            ident, "mi_identity_negatives")
        if ident == "auto":
            raise UsageError("mi_identity_negatives must be an integer K (the identity's compressions are whole "
                             "contexts; a small K keeps their cost down), all, or skip; got 'auto'")
    except UsageError as exc:
        raise ConfigError(str(exc)) from None
    margin = raw.get("mi_auto_margin_bits", defaults.mi_auto_margin_bits)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin:
        raise ConfigError(f"mi_auto_margin_bits must be a number of bits >= 0 (e.g. 1.0), got {margin!r}")
    seed = raw.get("mi_design_seed", defaults.mi_design_seed)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"mi_design_seed must be an integer >= 0, got {seed!r}")
    return {"mi_negatives": neg, "mi_identity_negatives": ident, "mi_auto_margin_bits": float(margin),
            "mi_design_seed": seed}


def _choice(value: Any, choices: Sequence[str], key: str) -> str:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}, got {value!r}"
                          + (_did_you_mean(str(value), list(choices)) if isinstance(value, str) else ""))
    return str(value)


def _predictor_modes(value: Any, predictors: Sequence[str], models: Mapping[str, ModelSpec]
                     ) -> tuple[str, dict[str, str]]:
    """(sweep-wide mode, per-predictor modes when they differ) from ``predictor_mode``: one mode, or
    a mapping predictor -> mode (predictors not named use ``generate``). A loglik predictor must be
    a backend that can score."""
    if isinstance(value, dict):
        for name, m in value.items():
            if name not in predictors:
                raise ConfigError(f"predictor_mode names {name!r}, which is not a predictor "
                                  f"(predictors: {', '.join(predictors)}){_did_you_mean(str(name), list(predictors))}")
            if m not in PREDICTOR_MODES:
                raise ConfigError(f"predictor_mode.{name} must be one of {', '.join(PREDICTOR_MODES)}, got {m!r}")
        per = {p: str(value.get(p, "generate")) for p in predictors}
    elif value in PREDICTOR_MODES:
        per = {p: str(value) for p in predictors}
    else:
        raise ConfigError(f"predictor_mode must be one of {', '.join(PREDICTOR_MODES)} or a mapping predictor -> "
                          f"mode, got {value!r}")
    for p, m in per.items():
        if m == "loglik" and models[p].backend not in SCORING_BACKENDS:
            raise ConfigError(f"predictor {p!r} uses predictor_mode loglik, but its backend "
                              f"{models[p].backend!r} cannot score continuations; use predictor_mode: generate")
    uniform = len(set(per.values())) <= 1
    return (next(iter(per.values())) if uniform and per else "generate"), ({} if uniform else per)


def executor_spec(value: Any, models: Mapping[str, ModelSpec]) -> dict[str, Any]:
    """The ``executor`` key: an executor kind (:data:`compressbench.engine.executors.EXECUTORS`) or
    ``{kind, address, resources}`` (validated)."""
    if value is None:
        value = {"kind": DEFAULT_EXECUTOR}
    if isinstance(value, str):
        value = {"kind": value}
    kinds = EXECUTORS.names()
    if not isinstance(value, dict):
        raise ConfigError(f"executor must be {', '.join(map(repr, kinds))} or a mapping {{kind, address, resources}}, "
                          f"got {value!r}")
    _check_keys(value, _EXECUTOR_KEYS, "executor")
    kind = value.get("kind", DEFAULT_EXECUTOR)
    if kind not in EXECUTORS:
        raise ConfigError(f"executor.kind must be one of {', '.join(kinds)}, got {kind!r}"
                          + _did_you_mean(str(kind), kinds))
    address = value.get("address")
    if address is not None and not EXECUTORS[kind].address:
        joins = [k for k in kinds if EXECUTORS[k].address]
        raise ConfigError(f"executor.address names a cluster to join, but the {kind} executor runs in "
                          f"{EXECUTORS[kind].help}; remove it or use kind: {' or '.join(joins)}")
    if address is not None and not isinstance(address, str):
        raise ConfigError(f"executor.address must be a Ray cluster address (e.g. 'auto' or 'ray://head:10001'), "
                          f"got {address!r}")
    resources = value.get("resources") or {}
    if not isinstance(resources, dict):
        raise ConfigError("executor.resources must map model names to {num_cpus, num_gpus, memory_gb, replicas}")

    for name, r in resources.items():
        if name not in models:
            raise ConfigError(f"executor.resources names {name!r}, which is not a model under 'models'"
                              + _did_you_mean(str(name), list(models)))
        if not isinstance(r, dict):
            raise ConfigError(f"executor.resources.{name} must be a mapping, e.g. {{num_gpus: 1, replicas: 2}}")
        ActorResources.from_dict(r, f"executor.resources.{name}")
    return {"kind": kind, "address": address, "resources": {k: dict(v) for k, v in resources.items()}}


def _n_boot(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"mi_n_boot (bootstrap resamples of the MI interval) must be an integer >= 0, got {value!r}")
    return value


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file, turning I/O, encoding and syntax problems and keys given twice in one
    mapping into ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {p} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    return load_yaml(text, f"config file {p}")  # a key given twice is a ConfigError naming it and its line


def load_config(path: str | Path, overrides: Sequence[str] = (), *, limit: int | None = None) -> SweepConfig:
    """Read a sweep YAML file, apply ``--set`` overrides and ``--limit``, validate.

    The sweep name defaults to the file's stem.
    """
    raw = read_yaml(path)
    if raw is None:
        raise ConfigError(f"config file {path} is empty")
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a YAML mapping at the top level")
    raw = apply_overrides(raw, overrides)
    if limit is not None:
        raw["limit"] = limit
    return config_from_dict(raw, default_name=Path(path).stem)
