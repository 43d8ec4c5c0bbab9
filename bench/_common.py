"""Helpers shared by the benchmark scripts: random models with an exact word-level tokenizer,
timing, and peak-memory sampling. Benchmarks report ratios against a baseline in the same run."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def build_random_llama(out: Path, *, vocab: int, hidden: int, layers: int, heads: int, intermediate: int,
                       n_ctx: int, seed: int = 0, kv_heads: int | None = None, dtype: str = "float32") -> Path:
    """Save a random Llama and a word-level tokenizer ("w0".."w{vocab-1}", one token per word).

    With this tokenizer a text of k space-separated words is exactly k tokens, with no BOS, so
    benchmark token counts are exact. ``kv_heads`` < ``heads`` gives grouped-query attention;
    ``dtype`` is the dtype the weights are saved in (bfloat16 halves the file of a 1B model).
    """
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = {f"w{i}": i for i in range(vocab - 1)}
    words["<unk>"] = vocab - 1
    tok = Tokenizer(models.WordLevel(vocab=words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<unk>", eos_token="<unk>")
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads or heads,
                         max_position_embeddings=n_ctx, tie_word_embeddings=True,
                         eos_token_id=vocab - 1, pad_token_id=vocab - 1, bos_token_id=None)
    model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return out


def random_texts(n: int, n_words: int, vocab: int, rng: Any) -> list[str]:
    """`n` texts of exactly `n_words` random words from the word-level vocabulary."""
    return [" ".join(f"w{int(t)}" for t in rng.integers(0, vocab - 1, size=n_words)) for _ in range(n)]


class PeakRSS:
    """Peak resident memory (bytes) of this process while the block runs, sampled every 5 ms
    from /proc/self/statm, minus the resident memory at entry. On CUDA, use torch's counters."""

    def __init__(self) -> None:
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._rss() - self._base)
            time.sleep(0.005)

    def __enter__(self) -> PeakRSS:
        self._base = self._rss()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._rss() - self._base)


def timed(fn: Callable[[], Any], device: str) -> tuple[Any, float, int, float]:
    """(result, wall seconds, peak extra memory bytes, process CPU seconds) of one call.

    CUDA is synchronised. CPU seconds (all threads) are less sensitive than wall time to other
    processes competing for the cores, so benchmarks on a shared machine report both."""
    import torch

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    with PeakRSS() as mem:
        t0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        if cuda:
            torch.cuda.synchronize()
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    peak = torch.cuda.max_memory_allocated() - base if cuda else mem.peak_bytes
    return result, seconds, peak, cpu_seconds


def load_average() -> str:
    """The 1/5/15-minute load averages, to judge how busy the shared machine was."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())
