"""Small run directories in the format of docs/run_format.md, with known ground truth, for the
report and plot tests (tests/test_report.py, tests/test_plots.py).

The synthetic sweep: one dataset of N = 8 examples (log2 N = 3 bits ceiling), M = 2 compressions
per example, six sized compressors in two families plus the ``identity`` and ``empty`` baselines,
two predictors (a local 8B model and the paid API model ``gpt-4o``), a local scorer. Each
compressor has a known MI (bits) and compression length L, so its rate is R = MI / L; accuracy is
exactly ``1 - (C * exp(-b * R) + D0)`` with known (C, b, D0) per predictor (per-example scores are
the target plus a zero-mean +-0.05 pattern, so their mean is the target).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


N_EXAMPLES = 8
M_SAMPLES = 2
CONTEXT_TOKENS = 1000
QUESTION_TOKENS = 50
ANSWER_TOKENS = 5

#: compressor -> (n_params, family, MI bits, compression tokens L)
COMPRESSORS: dict[str, tuple[float, str, float, int]] = {
    "qwen-0.5b": (5e8, "qwen2.5", 1.0, 80),
    "qwen-1.5b": (1.5e9, "qwen2.5", 1.6, 60),
    "qwen-3b": (3e9, "qwen2.5", 2.1, 45),
    "qwen-7b": (7e9, "qwen2.5", 2.6, 30),
    "llama-1b": (1.2e9, "llama3.2", 1.3, 70),
    "llama-3b": (3.2e9, "llama3.2", 1.9, 50),
}
#: predictor -> (C, b, D0) of its true distortion curve
PREDICTOR_RD: dict[str, tuple[float, float, float]] = {
    "llama-8b": (0.6, 20.0, 0.15),
    "gpt-4o": (0.5, 25.0, 0.10),
}
BASELINES: dict[str, tuple[float, int]] = {  # baseline -> (accuracy, compression tokens)
    "identity": (0.92, CONTEXT_TOKENS),
    "empty": (0.20, 0),
}

# shapes for FLOPs (Llama-like, d_attn = n_heads * head_dim)
SHAPES: dict[str, dict[str, Any]] = {
    "qwen-0.5b": dict(n_layers=24, d_model=896, n_heads=14, head_dim=64),
    "qwen-1.5b": dict(n_layers=28, d_model=1536, n_heads=12, head_dim=128),
    "qwen-3b": dict(n_layers=36, d_model=2048, n_heads=16, head_dim=128),
    "qwen-7b": dict(n_layers=28, d_model=3584, n_heads=28, head_dim=128),
    "llama-1b": dict(n_layers=16, d_model=2048, n_heads=32, head_dim=64),
    "llama-3b": dict(n_layers=28, d_model=3072, n_heads=24, head_dim=128),
    "llama-8b": dict(n_layers=32, d_model=4096, n_heads=32, head_dim=128),
    "scorer-7b": dict(n_layers=28, d_model=3584, n_heads=28, head_dim=128),
}


def true_accuracy(compressor: str, predictor: str) -> float:
    if compressor in BASELINES:
        return BASELINES[compressor][0]
    _, _, mi, length = COMPRESSORS[compressor]
    c, b, d0 = PREDICTOR_RD[predictor]
    return 1.0 - (c * math.exp(-b * mi / length) + d0)


def compression_tokens(compressor: str) -> int:
    return BASELINES[compressor][1] if compressor in BASELINES else COMPRESSORS[compressor][3]


def model_entry(name: str) -> dict[str, Any]:
    if name == "gpt-4o":
        return {"backend": "openai", "model": "gpt-4o", "options": {}, "paid_api": True,
                "info": {"reference": "gpt-4o", "n_params": None, "family": "gpt-4o"}}
    if name in COMPRESSORS:
        n_params, family = COMPRESSORS[name][:2]
    else:
        n_params, family = (8e9, "llama3.1") if name == "llama-8b" else (7.6e9, "qwen2.5")
    info = {"reference": f"/models/{name}", "n_params": int(n_params), "n_active_params": None,
            "n_ctx": 32768, "family": family, "revision": "abc123", **SHAPES[name]}
    return {"backend": "hf", "model": f"/models/{name}", "options": {}, "paid_api": False, "info": info}


def usage_for(compressor: str, predictor: str) -> dict[str, Any]:
    """Per-example usage: M compressor calls, M predictor calls, N scorer prefills."""
    length = compression_tokens(compressor)
    usage: dict[str, Any] = {
        "predictor": {"n_prompt_tokens": (length + QUESTION_TOKENS) * M_SAMPLES,
                      "n_completion_tokens": ANSWER_TOKENS * M_SAMPLES, "n_calls": M_SAMPLES},
        "scorer": {"n_prompt_tokens": CONTEXT_TOKENS + M_SAMPLES * length, "n_completion_tokens": 0,
                   "n_calls": 1},
    }
    if compressor not in BASELINES:
        usage["compressor"] = {"n_prompt_tokens": (CONTEXT_TOKENS + QUESTION_TOKENS) * M_SAMPLES,
                               "n_completion_tokens": length * M_SAMPLES, "n_calls": M_SAMPLES}
    return usage


def write_run(root: Path, *, compressors: list[str] | None = None, predictors: list[str] | None = None,
              with_summary: bool = True, with_ref_nll: bool = True) -> Path:
    """Write a complete run directory under ``root`` and return it, through the real writers:
    :class:`compressbench.engine.config.SweepConfig`, :class:`compressbench.engine.records.RunRecord` /
    :func:`compressbench.engine.records.write_records`, :func:`compressbench.engine.summary.summary_row` and
    :meth:`compressbench.engine.store.RunStore.write_summary`."""
    from types import SimpleNamespace

    from compressbench.engine.config import config_from_dict
    from compressbench.engine.records import CellId, RoleUsage, RunRecord, write_records
    from compressbench.engine.store import RunStore, atomic_write_text
    from compressbench.engine.summary import SUMMARY_COLUMNS, summary_row
    from compressbench.core.types import Example
    from compressbench.engine.records import example_hash

    compressors = compressors or [*BASELINES, *COMPRESSORS]
    predictors = predictors or list(PREDICTOR_RD)
    run = root / "synthetic-run"
    run.mkdir(parents=True, exist_ok=True)
    names = [c for c in compressors if c not in BASELINES] + predictors + ["scorer-7b"]
    config = config_from_dict({
        "name": "synthetic-run",
        "models": {n: {k: v for k, v in model_entry(n).items() if k != "info"} for n in names},
        "compressors": compressors, "predictors": predictors, "scorer": "scorer-7b", "judge": None,
        "datasets": [{"kind": "synthetic", "name": "synthetic"}], "prompts": ["query"], "samples": M_SAMPLES,
        "temperatures": [0.7], "seeds": [0],
    })
    store = RunStore(run)
    store.prepare(config.to_yaml())
    manifest = {"compressbench_version": "0.1.0", "git_sha": None, "created_utc": "2025-08-20T00:00:00Z",
                "seeds": [0], "prompt_ids": {"query": "compress_query@000000000000"},
                "models": {n: model_entry(n) for n in names}}
    atomic_write_text(run / "manifest.json", json.dumps(manifest))
    examples = [Example(id=f"ex{i}", context=f"context {i}", question="q", answers=("a",)) for i in range(N_EXAMPLES)]
    records, rows = [], []
    for comp in compressors:
        mi = 3.0 if comp == "identity" else 0.0 if comp == "empty" else COMPRESSORS[comp][2]
        length = compression_tokens(comp)
        for pred in predictors:
            acc = true_accuracy(comp, pred)
            cell = CellId("synthetic", comp, pred, "query", 0.7, 0, "scorer-7b", "generate")
            key = cell.key("fixture")
            recs = []
            for i, ex in enumerate(examples):
                score = acc + (0.05 if i % 2 == 0 else -0.05)
                usage = {role: RoleUsage(u["n_prompt_tokens"], u["n_completion_tokens"], u["n_calls"])
                         for role, u in usage_for(comp, pred).items()}
                usage.setdefault("compressor", RoleUsage(0, 0, 0))
                usage["judge"] = None
                recs.append(RunRecord(
                    cell=cell, cell_key=key, example_id=ex.id, example_hash=example_hash(ex),
                    compressions=("z",) * M_SAMPLES, compression_n_tokens=(length,) * M_SAMPLES,
                    pointwise_mi_bits=(mi + 0.1, mi - 0.1), predictions=("a",) * M_SAMPLES,
                    answers=("a",) * M_SAMPLES, voted_answer="a", gold=("a",), score=score, score_error=None,
                    unscored=False, metric="f1", ref_nll_nats=(8.0 - 2.0 * mi) if with_ref_nll else None,
                    error=None, context_truncated=None, usage=usage, flops={}, wall_s=0.1))
            records += recs
            est = SimpleNamespace(bits=mi, bits_raw=mi, ci_low_bits=max(mi - 0.2, 0), ci_high_bits=min(mi + 0.2, 3.0),
                                  ceiling_bits=math.log2(N_EXAMPLES), bits_per_token=mi / length if length else None,
                                  bits_per_token_ci_low=None, bits_per_token_ci_high=None)
            rows.append(summary_row(cell, key, "compress_query@000000000000", M_SAMPLES, recs, est))
    write_records(run, records)
    if with_summary:
        store.write_summary(rows, SUMMARY_COLUMNS)
    return run
