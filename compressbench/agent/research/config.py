"""The research run config: YAML -> :class:`ResearchConfig` (unknown keys fail with a "did you mean").

Keys (the built-in ``configs/research.yaml`` uses them all)::

    name: research                       # run directory name
    models:                              # named models, as in sweep configs
      smollm2: {backend: hf, model: smollm2-135m, options: {}}
    predictor: smollm2                   # plans, decides, answers
    predictor_price: gpt-4o              # bill the predictor's tokens at this entry of the price table
    prices: null                         # a price YAML (default: the packaged configs/prices.yaml)
    compressors: [smollm2, "truncate:40"]  # model names or the baseline truncate:<tokens>
    uncompressed: true                   # also run the arm where the predictor reads raw documents
    scorer: smollm2                      # scores log p(compression | document, question) for MI
    benchmark: {kind: generated, seed: 0, n_companies: 12, n_questions: 20}
                                         # or {kind: folder, path: docs/, questions: questions.jsonl}
    limit: null                          # use the first N questions
    rounds: 2                            # R, rounds of search per question
    docs_per_query: 3
    max_queries: 2                       # follow-up queries per round
    plan: true                           # round 1 adds the predictor's planned queries to the question
    samples: 1                           # compressions per document (M in the MI estimate)
    temperature: 0.0                     # compressor sampling temperature (> 0 when samples > 1)
    max_new_tokens: {compressor: 64, predictor: 64}
    compress_prompt: research_compress   # prompt name in prompts/ or a YAML path
    batch_size: 4                        # questions moved through the rounds together
    mi_n_boot: 1000                      # bootstrap resamples for the MI intervals
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from compressbench.core.errors import ConfigError
from compressbench.core.paths import PACKAGE_DIR
from compressbench.core.yamlfile import load_yaml

_TOP = ("name", "models", "predictor", "predictor_price", "prices", "compressors", "uncompressed", "scorer",
        "benchmark", "limit", "rounds", "docs_per_query", "max_queries", "plan", "samples", "temperature",
        "max_new_tokens", "compress_prompt", "batch_size", "mi_n_boot")
_MODEL = ("backend", "model", "options", "paid_api", "info")
_BENCH = {"generated": ("kind", "seed", "n_companies", "n_questions"),
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

    @property
    def arms(self) -> tuple[str, ...]:
        """The compressors, then ``uncompressed`` when enabled."""
        from compressbench.agent.research.records import UNCOMPRESSED

        return self.compressors + ((UNCOMPRESSED,) if self.uncompressed else ())

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["compressors"] = list(self.compressors)
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


def is_truncate(name: str) -> int | None:
    """The token budget of a ``truncate:<n>`` compressor, else None (the baselines' one rule)."""
    from compressbench.measure.baselines import truncate_tokens

    return truncate_tokens(name)


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
            raise ConfigError(f"models.{mname} needs 'backend' (hf, openai, vllm) and 'model'")

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
        compressors.append(c if is_truncate(c) is not None else model_name(c, "compressors:"))
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
        mi_n_boot=int(raw.get("mi_n_boot", 1000)))


def load_research_config(path: str | Path | None = None, overrides: Sequence[str] = (), *,
                         limit: int | None = None) -> ResearchConfig:
    """Read a research YAML (default: the packaged one), apply ``--set key=value`` overrides and ``limit``."""
    from compressbench.engine.config import apply_overrides

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


__all__ = ["ResearchConfig", "config_from_dict", "default_config_path", "is_truncate", "load_research_config"]
