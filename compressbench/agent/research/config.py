"""The research run config: YAML -> :class:`ResearchConfig` (unknown keys fail with a "did you mean").

Keys (the built-in ``configs/research.yaml`` uses most of them)::

    name: research                       # run directory name
    models:                              # named models, as in sweep configs
      smollm2: {backend: hf, model: smollm2-135m, options: {}}
    predictor: smollm2                   # answers (and, with planner: model, plans and decides)
    predictor_price: gpt-4o              # bill the predictor's tokens at this entry of the price table
    prices: null                         # a price YAML (default: the packaged configs/prices.yaml)
    predictor_mode: loglik               # loglik: after each round the predictor scores the question's
                                         #   options after its notes (the sweep's likelihood predictor,
                                         #   compressbench.measure.predict_loglik); the best is its answer.
                                         # generate: it replies "ANSWER: ..." or "SEARCH: ..." (free form)
    loglik_prompt_format: completion     # loglik: completion (plain text, the sweep's default) | chat | auto
    planner: entities                    # entities: round r+1 searches the names and companies found in
                                         #   round r's notes (any predictor); model: the predictor's
                                         #   planned and SEARCH queries (needs predictor_mode: generate)
    compressors: [smollm2, "truncate:40", oracle, empty]
                                         # model names, or the baselines truncate:<tokens> (the scorer's
                                         # tokenizer), empty (no notes) and oracle (each gold document's
                                         # evidence sentence, nothing from other documents)
    uncompressed: true                   # also run the arm where the predictor reads raw documents
    scorer: smollm2                      # scores log p(compression | document, question) for MI
    benchmark: {kind: generated, seed: 0, n_companies: 12, n_questions: 20, n_options: 4}
                                         # or {kind: folder, path: docs/, questions: questions.jsonl}
    limit: null                          # use the first N questions
    rounds: 2                            # R, rounds of search per question
    docs_per_query: 3
    max_queries: 2                       # follow-up queries per round
    plan: true                           # planner model: round 1 adds the predictor's planned queries
    samples: 1                           # compressions per document (M in the MI estimate)
    temperature: 0.0                     # compressor sampling temperature (> 0 when samples > 1)
    max_new_tokens: {compressor: 64, predictor: 64}
    compress_prompt: research_compress   # prompt name in prompts/ or a YAML path
    batch_size: 4                        # questions moved through the rounds together
    mi_n_boot: 1000                      # bootstrap resamples for the MI intervals
    mi_max_contexts: null                # MI per round over at most this many documents (a seeded
                                         # sample; null: all); its ceiling is log2 of the number used
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from compressbench.backends import BACKENDS
from compressbench.core.errors import ConfigError
from compressbench.core.paths import PACKAGE_DIR
from compressbench.core.yamlfile import load_yaml
from compressbench.engine.config import ModelSpec, apply_overrides
from compressbench.engine.records import UNCOMPRESSED
from compressbench.measure.baselines import truncate_tokens
from compressbench.measure.predict_loglik import PROMPT_FORMATS

_TOP = ("name", "models", "predictor", "predictor_price", "prices", "predictor_mode", "planner", "compressors",
        "uncompressed", "scorer", "benchmark", "limit", "rounds", "docs_per_query", "max_queries", "plan", "samples",
        "temperature", "max_new_tokens", "compress_prompt", "batch_size", "mi_n_boot", "mi_max_contexts",
        "loglik_prompt_format")
PREDICTOR_MODES = ("loglik", "generate")
PLANNERS = ("entities", "model")
#: Research baselines besides truncate:<n>: no notes at all, and the gold documents' evidence sentences.
EMPTY, ORACLE = "empty", "oracle"
_MODEL = ("backend", "model", "options", "paid_api", "info")
_BENCH = {"generated": ("kind", "seed", "n_companies", "n_questions", "n_options"),
          "folder": ("kind", "path", "questions")}


def default_config_path() -> Path:
    """The packaged default research config."""
    return PACKAGE_DIR / "configs" / "research.yaml"


def _check_keys(d: Mapping[str, Any], known: Sequence[str], where: str) -> None:
    for k in d:
        if k not in known:
            close = difflib.get_close_matches(str(k), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown key {k!r} in {where}{hint}; known keys: {', '.join(known)}")


def _pos_int(v: Any, where: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ConfigError(f"{where} must be an integer >= 1, got {v!r}")
    return v


@dataclass(frozen=True)
class ResearchConfig:
    name: str
    models: Mapping[str, Mapping[str, Any]]
    predictor: str
    compressors: tuple[str, ...]
    scorer: str | None
    benchmark: Mapping[str, Any]
    predictor_price: str | None = None
    prices: str | None = None
    uncompressed: bool = True
    limit: int | None = None
    rounds: int = 2
    docs_per_query: int = 3
    max_queries: int = 2
    plan: bool = True
    samples: int = 1
    temperature: float = 0.0
    max_new_tokens: Mapping[str, int] = field(default_factory=lambda: {"compressor": 64, "predictor": 64})
    compress_prompt: str = "research_compress"
    batch_size: int = 4
    mi_n_boot: int = 1000
    predictor_mode: str = "loglik"
    planner: str = "entities"
    mi_max_contexts: int | None = None
    loglik_prompt_format: str = "completion"

    @property
    def arms(self) -> tuple[str, ...]:
        """The compressors, then ``uncompressed`` when enabled."""
        return self.compressors + ((UNCOMPRESSED,) if self.uncompressed else ())

    @property
    def model_compressors(self) -> tuple[str, ...]:
        """The compressors that are models (not a baseline)."""
        return tuple(c for c in self.compressors if not is_research_baseline(c))

    def model_specs(self) -> dict[str, Any]:
        """The models as the engine's :class:`compressbench.engine.config.ModelSpec` (for the
        executor and the model registry)."""
        return {n: ModelSpec(n, str(m["backend"]), str(m["model"]), dict(m.get("options") or {}),
                             bool(m.get("paid_api", False)), dict(m.get("info") or {}))
                for n, m in self.models.items()}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["compressors"] = list(self.compressors)
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


def is_truncate(name: str) -> int | None:
    """The token budget of a ``truncate:<n>`` compressor, else None (the baselines' one rule)."""
    return truncate_tokens(name)


def check_modes(predictor_mode: Any, planner: Any) -> None:
    """ConfigError unless ``predictor_mode`` and ``planner`` are known and go together (the agent's
    settings and the config both ask this function)."""
    if predictor_mode not in PREDICTOR_MODES:
        raise ConfigError(f"predictor_mode must be one of {', '.join(PREDICTOR_MODES)}, got {predictor_mode!r}")
    if planner not in PLANNERS:
        raise ConfigError(f"planner must be one of {', '.join(PLANNERS)}, got {planner!r}")
    if planner == "model" and predictor_mode != "generate":
        raise ConfigError("planner: model needs predictor_mode: generate (a likelihood predictor writes no "
                          "queries); use planner: entities, or predictor_mode: generate")


def is_research_baseline(name: str) -> bool:
    """``truncate:<n>``, ``empty`` or ``oracle``: a compressor arm that is not a model."""
    return name in (EMPTY, ORACLE) or is_truncate(name) is not None


def config_from_dict(raw: Any) -> ResearchConfig:
    """Validate a parsed YAML mapping."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a research config must be a YAML mapping, got {type(raw).__name__}")
    _check_keys(raw, _TOP, "the research config")
    name = raw.get("name") or "research"
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise ConfigError(f"name {name!r} must be letters, digits, '.', '_' or '-' (it names the run directory)")
    models = raw.get("models") or {}
    if not isinstance(models, dict) or not models:
        raise ConfigError("models must be a non-empty mapping name -> {backend, model, options, paid_api}")
    for mname, m in models.items():
        if not isinstance(m, dict):
            raise ConfigError(f"models.{mname} must be a mapping with backend and model")
        _check_keys(m, _MODEL, f"models.{mname}")
        if not isinstance(m.get("backend"), str) or not isinstance(m.get("model"), str):
            raise ConfigError(f"models.{mname} needs 'backend' ({', '.join(BACKENDS.names())}) and 'model'")

    def model_name(v: Any, where: str) -> str:
        if v not in models:
            close = difflib.get_close_matches(str(v), list(models), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where} {v!r} is not a model in 'models'{hint}; known: {', '.join(models)}")
        return str(v)

    predictor = model_name(raw.get("predictor"), "predictor")
    comps_raw = raw.get("compressors") or []
    if isinstance(comps_raw, str):
        comps_raw = [comps_raw]
    compressors = []
    for c in comps_raw:
        c = str(c)
        compressors.append(c if is_research_baseline(c) else model_name(c, "compressors:"))
    if len(set(compressors)) != len(compressors):
        raise ConfigError("compressors must not list a name twice")
    uncompressed = raw.get("uncompressed", True)
    if not isinstance(uncompressed, bool):
        raise ConfigError("uncompressed must be true or false")
    if not compressors and not uncompressed:
        raise ConfigError("nothing to run: list compressors, or set uncompressed: true")
    scorer = raw.get("scorer")
    scorer = None if scorer is None else model_name(scorer, "scorer")
    if scorer is None and any(is_truncate(c) is not None for c in compressors):
        raise ConfigError("truncate:<n> counts tokens with the scorer's tokenizer; name a scorer")
    bench = raw.get("benchmark") or {"kind": "generated"}
    if not isinstance(bench, dict) or bench.get("kind") not in _BENCH:
        raise ConfigError(f"benchmark must be a mapping with kind one of {', '.join(_BENCH)}, got {bench!r}")
    _check_keys(bench, _BENCH[bench["kind"]], "benchmark")
    if bench["kind"] == "folder" and not (bench.get("path") and bench.get("questions")):
        raise ConfigError("benchmark kind folder needs 'path' (a folder of documents) and 'questions' (a JSONL file)")
    limit = raw.get("limit")
    if limit is not None:
        _pos_int(limit, "limit")
    mnt = {"compressor": 64, "predictor": 64}
    mnt_raw = raw.get("max_new_tokens") or {}
    if not isinstance(mnt_raw, dict):
        raise ConfigError("max_new_tokens must be a mapping {compressor: N, predictor: N}")
    _check_keys(mnt_raw, tuple(mnt), "max_new_tokens")
    for k, v in mnt_raw.items():
        mnt[k] = _pos_int(v, f"max_new_tokens.{k}")
    temperature = raw.get("temperature", 0.0)
    if not isinstance(temperature, (int, float)) or temperature < 0:
        raise ConfigError(f"temperature must be a number >= 0, got {temperature!r}")
    samples = _pos_int(raw.get("samples", 1), "samples")
    if samples > 1 and temperature == 0:
        raise ConfigError("samples > 1 needs temperature > 0 (greedy samples would all be the same)")
    plan = raw.get("plan", True)
    if not isinstance(plan, bool):
        raise ConfigError("plan must be true or false")
    mode = raw.get("predictor_mode", "loglik")
    planner = raw.get("planner", "entities")
    check_modes(mode, planner)
    mi_max = raw.get("mi_max_contexts")
    if mi_max is not None:
        _pos_int(mi_max, "mi_max_contexts")
        if mi_max < 2:
            raise ConfigError("mi_max_contexts must be at least 2 (MI needs 2 contexts), or null for all")

    fmt = raw.get("loglik_prompt_format", "completion")
    if fmt not in PROMPT_FORMATS:
        raise ConfigError(f"loglik_prompt_format must be one of {', '.join(PROMPT_FORMATS)}, got {fmt!r}")
    price = raw.get("predictor_price")
    if price is not None and not isinstance(price, str):
        raise ConfigError("predictor_price must be the name of an entry in the price table, e.g. gpt-4o")
    return ResearchConfig(
        name=name, models=models, predictor=predictor, compressors=tuple(compressors), scorer=scorer,
        benchmark=bench, predictor_price=price, prices=raw.get("prices"), uncompressed=uncompressed,
        limit=limit, rounds=_pos_int(raw.get("rounds", 2), "rounds"),
        docs_per_query=_pos_int(raw.get("docs_per_query", 3), "docs_per_query"),
        max_queries=_pos_int(raw.get("max_queries", 2), "max_queries"), plan=plan, samples=samples,
        temperature=float(temperature), max_new_tokens=mnt,
        compress_prompt=str(raw.get("compress_prompt") or "research_compress"),
        batch_size=_pos_int(raw.get("batch_size", 4), "batch_size"),
        mi_n_boot=int(raw.get("mi_n_boot", 1000)), predictor_mode=mode, planner=planner, mi_max_contexts=mi_max,
        loglik_prompt_format=fmt)


def load_research_config(path: str | Path | None = None, overrides: Sequence[str] = (), *,
                         limit: int | None = None) -> ResearchConfig:
    """Read a research YAML (default: the packaged one), apply ``--set key=value`` overrides and ``limit``."""
    p = Path(path) if path is not None else default_config_path()
    if not p.is_file():
        raise ConfigError(f"research config {p} does not exist")
    raw = load_yaml(p.read_text(encoding="utf-8"), str(p))  # a key given twice is a ConfigError
    if not isinstance(raw, dict):
        raise ConfigError(f"{p} must hold a YAML mapping")
    raw = apply_overrides(raw, overrides)
    base = p.parent
    bench = raw.get("benchmark")
    if isinstance(bench, dict) and bench.get("kind") == "folder":  # relative paths are relative to the config
        for key in ("path", "questions"):
            if isinstance(bench.get(key), str) and not Path(bench[key]).is_absolute():
                bench[key] = str((base / bench[key]).resolve())
    cfg = config_from_dict(raw)
    if limit is not None:
        cfg = replace(cfg, limit=limit)
    return cfg


__all__ = ["EMPTY", "ORACLE", "PLANNERS", "PREDICTOR_MODES", "ResearchConfig", "check_modes", "config_from_dict",
           "default_config_path", "is_research_baseline", "is_truncate", "load_research_config"]
