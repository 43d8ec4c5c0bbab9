"""A small likelihood-predictor run directory with known per-example signals, for the tests of
usable bits, signal AUROCs, the router, Findings and plots (tests/test_signals.py, tests/test_route.py).

One dataset of N = 20 examples, two predictors, compressors ``qwen-0.5b`` (cheap), ``qwen-3b``,
``identity``, ``empty`` and ``keep:1`` (an oracle, never a router arm). Example i is answered
correctly by a compressor when ``i`` is in its ``RIGHT`` set; the predictor's confidence is 0.9 on
right answers and 0.6 on wrong ones for ``qwen-0.5b`` (a perfect per-example signal there), and
uninformative (0.7) elsewhere. Costs come from each record's usage through the report's cost rule.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from run_fixtures import model_entry

N = 20
PREDICTORS = ("llama-8b", "qwen-7b")
COMPRESSORS = ("qwen-0.5b", "qwen-3b", "identity", "empty", "keep:1")
#: compressor -> examples answered correctly
RIGHT: dict[str, set[int]] = {
    "qwen-0.5b": set(range(0, 10)),
    "qwen-3b": set(range(0, 14)),
    "identity": set(range(0, 18)),
    "empty": {0, 5, 10, 15},
    "keep:1": set(range(0, 12)),
}
#: compressor -> (compression tokens, usable bits on right / wrong answers, pointwise MI bits)
SHAPE: dict[str, tuple[int, float, float, float]] = {
    "qwen-0.5b": (40, 0.6, -0.2, 1.0),
    "qwen-3b": (30, 0.7, -0.1, 1.5),
    "identity": (400, 0.9, 0.0, 4.0),
    "empty": (0, 0.0, 0.0, 0.0),
    "keep:1": (10, 0.5, 0.0, 1.0),
}


def confidence(comp: str, i: int) -> float:
    if comp == "qwen-0.5b":
        return 0.9 if i in RIGHT[comp] else 0.6
    return 0.7


def write_loglik_run(root: Path, *, compressors: tuple[str, ...] = COMPRESSORS) -> Path:
    from compressbench.core.types import Example
    from compressbench.engine.config import config_from_dict
    from compressbench.engine.records import CellId, RoleUsage, RunRecord, example_hash, write_records
    from compressbench.engine.store import RunStore, atomic_write_text

    run = root / "loglik-run"
    run.mkdir(parents=True, exist_ok=True)
    models = [c for c in compressors if c.startswith("qwen")] + [*PREDICTORS, "scorer-7b"]
    config = config_from_dict({
        "name": "loglik-run",
        "models": {n: {k: v for k, v in model_entry(n).items() if k != "info"}
                   for n in models},
        "compressors": list(compressors), "predictors": list(PREDICTORS), "scorer": "scorer-7b",
        "predictor_mode": "loglik", "datasets": [{"kind": "known_info", "name": "synthetic"}],
        "prompts": ["query"], "samples": 1, "temperatures": [0.0], "seeds": [0]})
    RunStore(run).prepare(config.to_yaml())
    manifest = {"compressbench_version": "0.1.0", "models": {n: model_entry(n) for n in models}}
    atomic_write_text(run / "manifest.json", json.dumps(manifest))
    records = []
    for comp in compressors:
        length, pvi_right, pvi_wrong, mi = SHAPE[comp]
        for pred in PREDICTORS:
            cell = CellId("synthetic", comp, pred, "query", 0.0, 0, "scorer-7b", "loglik")
            for i in range(N):
                ex = Example(id=f"ex{i:02d}", context=f"context {i}", question="q?", options=("x", "y"),
                             answers=("A",))
                right = i in RIGHT[comp]
                usage: dict[str, Any] = {
                    "compressor": (RoleUsage(400, length, 1) if comp.startswith("qwen") else RoleUsage(0, 0, 0)),
                    "predictor": RoleUsage(length + 20, 0, 1),
                    "scorer": RoleUsage(400 + N * length, 0, 1), "judge": None}
                records.append(RunRecord(
                    cell=cell, cell_key=cell.key("fixture"), example_id=ex.id, example_hash=example_hash(ex),
                    compressions=("z",), compression_n_tokens=(length + (i % 3),),
                    pointwise_mi_bits=(mi + (0.3 if right else -0.3),), predictions=("A" if right else "B",),
                    answers=("A" if right else "B",), voted_answer="A" if right else "B", gold=("A",),
                    score=1.0 if right else 0.0, score_error=None, unscored=False, metric="choice",
                    ref_nll_nats=None, error=None, context_truncated=None, usage=usage, flops={}, wall_s=0.0,
                    loglik=({"options": [{"option": "x", "logprob_nats": math.log(0.5)},
                                         {"option": "y", "logprob_nats": math.log(0.5)}]},),
                    pvi_bits=pvi_right if right else pvi_wrong, confidence=confidence(comp, i)))
    write_records(run, records)
    return run
