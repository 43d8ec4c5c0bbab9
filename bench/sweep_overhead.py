"""Sweep overhead: 2,000 records through the full sweep engine with a zero-cost backend.

The backend below answers generate/score/count_tokens instantly (fixed texts, log-probs from a
hash), so the time measured is compressbench's own: grid expansion, prompt rendering, cache keys
and writes, MI estimation, answer parsing, record appends (fsync'ed per cell) and the summary.

    .venv/bin/python bench/sweep_overhead.py [--records 2000] [--out DIR]

Prints ms per record for a cold run (everything computed and cached) and a warm rerun (all cache
hits, nothing to append). Bar: < 2 ms per record (cold).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from compressbench.backends.base import BaseBackend
from compressbench.engine.config import config_from_dict
from compressbench.engine.sweep import run_sweep
from compressbench.core.types import Example, Generation, GenerationParams, ModelInfo, Sample, TokenLogprobs, Usage


class ZeroCostBackend(BaseBackend):
    """Instant, deterministic answers: a compression echoing the first words, JSON answer "A"."""

    name = "zero"

    def __init__(self, model: str, **_: object):
        self.model = model

    def generate(self, chats, params: GenerationParams) -> list[Generation]:
        out = []
        for chat in chats:
            text = chat[-1]["content"]
            reply = '{"explanation": "x", "answer": "A"}' if "Reply with JSON" in text else text[-60:]
            out.append(Generation(samples=tuple(Sample(reply, "stop", 8) for _ in range(params.n)),
                                  usage=Usage(len(text) // 4, 8 * params.n)))
        return out

    def score(self, prefixes, continuations) -> list[TokenLogprobs]:
        return [TokenLogprobs((1,), (-float(int(hashlib.md5((p + c).encode()).hexdigest()[:6], 16) % 97) / 10,))
                for p, c in zip(prefixes, continuations)]

    def score_matrix(self, prefixes, continuations) -> np.ndarray:
        p = np.array([hash(x) % 97 for x in prefixes], dtype=float)[:, None]
        c = np.array([hash(x) % 89 for x in continuations], dtype=float)[None, :]
        return -((p + c) % 50) / 10.0 - 0.1

    def count_tokens(self, texts) -> list[int]:
        return [len(t) // 4 for t in texts]

    def info(self) -> ModelInfo:
        return ModelInfo(reference=self.model, n_params=1_000_000, n_active_params=1_000_000, n_ctx=None,
                         revision="zero")


def examples(n: int) -> list[Example]:
    return [Example(id=f"x{i}", context=f"Record {i}: the patient takes drug {i % 17} for {i % 5} days.",
                    question=f"What does patient {i} take?", options=("drug", "tea", "rest"), answers=("A",),
                    dataset="bench") for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=2000)
    ap.add_argument("--mi-n-boot", type=int, default=0,
                    help="MI bootstrap resamples (0: measure the engine alone; 1000 is the sweep default)")
    ap.add_argument("--out", type=Path, default=None, help="runs folder (default: a temporary one)")
    args = ap.parse_args()
    # 4 compressors x 1 predictor x n examples, in groups of 50 examples (one MI tensor each)
    n_boot = args.mi_n_boot
    n_groups_ex = 50
    n_cells = 4
    n_datasets = max(1, args.records // (n_cells * n_groups_ex))
    data = {f"d{k}": examples(n_groups_ex) for k in range(n_datasets)}
    cfg = config_from_dict({
        "name": "overhead",
        "models": {"z": {"backend": "hf", "model": "zero"}},
        "compressors": ["z", "identity", "empty", "truncate:8"],
        "predictors": ["z"], "scorer": "z",
        "datasets": [{"kind": "synthetic", "name": k} for k in data],
        "samples": 2, "temperatures": [0.7], "mi_n_boot": n_boot,
    })
    root = args.out or Path(tempfile.mkdtemp(prefix="cb-bench-"))
    factory = lambda kind, model, **o: ZeroCostBackend(model, **o)  # noqa: E731
    try:
        t0 = time.perf_counter()
        cold = run_sweep(cfg, root, backend_factory=factory, progress=False, examples=data)
        t_cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        warm = run_sweep(cfg, root, backend_factory=factory, progress=False, examples=data)
        t_warm = time.perf_counter() - t0
    finally:
        if args.out is None:
            shutil.rmtree(root, ignore_errors=True)
    n = cold.n_records_written
    print(f"records: {n} ({n_datasets} datasets x {n_cells} cells x {n_groups_ex} examples, M=2, "
          f"MI bootstrap {n_boot} resamples)")
    print(f"cold run: {t_cold:.2f} s = {1000 * t_cold / n:.3f} ms/record (bar < 2 ms)")
    print(f"warm rerun (all cached, {warm.n_records_written} new records): {t_warm:.2f} s = "
          f"{1000 * t_warm / n:.3f} ms/record")


if __name__ == "__main__":
    main()
