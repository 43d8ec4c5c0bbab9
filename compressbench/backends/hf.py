"""The transformers backend: generation and exact, shared-prefix log-probability scoring.

``HFBackend(model_ref, ...)`` loads

- a built-in name (``smollm2-135m``, ``gemma3-270m``; see ``compressbench.backends.models``),
- a local directory saved by ``save_pretrained``,
- a ``.gguf`` file (dequantised once, cached as safetensors under ``cache_root()``), or
- a hub id such as ``HuggingFaceTB/SmolLM2-135M-Instruct`` (online, or offline when it is
  already in the local Hugging Face cache; otherwise it fails at once with a clear error).

Scoring follows the tokenisation contract of ``compressbench.backends.base``: prefix ids =
``tokenizer(prefix)`` (with special tokens, e.g. BOS), continuation ids =
``tokenizer(continuation, add_special_tokens=False)``, tokenised once and appended. For a
continuation ``c_1..c_L`` after prefix ids ``x``::

    logprobs_nats[j] = log softmax(f(x, c_<j))[c_j]     (natural log)
    total_nats       = sum_j logprobs_nats[j]           (0.0 for an empty continuation)

``score`` runs one forward pass per (prefix, continuation) pair, left-padded and batched.
``score_matrix`` runs each prefix once, keeps its KV cache, and scores every continuation
against it in batches: ``c_1`` from the prefix's last logits, ``c_2..c_L`` from one cached
forward over ``c_1..c_{L-1}`` (right-padded, pads masked out of attention and sums, absolute
position ids ``len(x) + j`` so GPT-2 and rotary models both see the right positions). For
plain-attention families (Llama, GPT-2, Qwen2/3) the batch attends to the prefix's keys and
values through ``_shared_prefix_attention`` (one GEMM over all queries, no per-row copy of the
prefix); other families get a broadcast copy of the prefix KV cache per batch. Cost:
``sum_p len(x_p) + P * sum_c (L_c - 1)`` tokens instead of ``P * sum_c (len(x_p) + L_c)``.

Prefix batching (``prefix_batching``; by default on CUDA, where per-forward launch and Python
overhead dominates small forwards): prefixes are sorted by length and grouped; a group of G is
prefilled in one left-padded forward (position ids ``cumsum(mask) - 1``, last logits give
``c_1``), and each continuation forward holds rows for gs of the group's prefixes x bc
continuations (prefix-major, gs * bc within the budgets, chosen to minimise the number of
forwards); ``_shared_prefix_attention`` then runs one batched GEMM per prefix over its rows,
with the prefix's padding keys masked to -inf. Only plain-attention families group.

Memory is bounded per forward pass by ``max_batch_tokens`` (batch x (cached + new) tokens;
for a prefix group, G x longest prefix) and ``max_logit_elements`` (batch x kept positions x
vocabulary).

Works with transformers 5.17-5.24+: the name of the forward's cache argument
(``past_key_values`` before 5.24, ``cache`` from 5.24) is detected from the model's signature.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compressbench.backends.base import BaseBackend, check_pairs, check_prompts, check_subsets, check_texts
from compressbench.core.errors import BackendError, BackendUnavailable, ContextTooLong, UsageError
from compressbench.backends.models import convert_gguf, file_sha256, named_model, resolve_named_model
from compressbench.core.types import (
    Chat,
    Generation,
    GenerationParams,
    ModelInfo,
    Sample,
    TokenLogprobs,
    Usage,
)

log = logging.getLogger(__name__)

HF_INSTALL = "pip install torch==2.13.0 'compressbench[hf]'"
_DTYPES = ("float32", "bfloat16", "float16", "auto")
#: Above this many weight bytes a directory's revision hashes each file's size, head and tail only.
_FULL_HASH_MAX_BYTES = 2 << 30
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


def _import_torch_transformers() -> tuple[Any, Any]:
    try:
        # lazy: torch/transformers (the [hf] extra) load only with a model
        import torch
        import transformers
    except ImportError as e:
        raise BackendUnavailable(f"the hf backend needs torch and transformers ({e}); install: {HF_INSTALL}") from e
    return torch, transformers


#: Environment variable that sets torch's CPU threads for the hf backend: an integer >= 1, or
#: ``torch`` to keep torch's own default (one thread per core).
THREADS_ENV = "COMPRESSBENCH_TORCH_THREADS"


def choose_cpu_threads(requested: int | None, *, current: int, usable_cpus: int,
                       environ: Any = os.environ) -> tuple[int | None, str]:
    """How many torch CPU threads the hf backend uses: ``(n, why)``, ``n`` None = leave torch as it is.

    The one place compressbench chooses torch's CPU threads. In order:

    1. ``requested`` (the backend option ``threads``): that many.
    2. ``COMPRESSBENCH_TORCH_THREADS``: an integer >= 1, or ``torch`` for torch's own default.
    3. ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` set: leave torch alone (it already follows them).
    4. ``current`` (``torch.get_num_threads()``) is not torch's start-up default of one thread per
       CPU (``usable_cpus``): the program called ``torch.set_num_threads``; leave it.
    5. Otherwise half the CPUs this process may use, at least 1 (1 on a 2-core machine).

    Why 5: torch's OpenMP threads split every matrix product evenly and wait for each other, so
    when other processes share the cores, one preempted thread stalls the rest (they spin). On the
    2-core development machine shared with other jobs, ``compressbench demo --limit 4`` took 3.6x
    the wall time and 3.3x the CPU seconds with torch's default of 2 threads than with 1
    (bench/threads.py, BENCHMARKS.md "Torch CPU threads"). Half the cores is a judgement for larger
    machines (not measured): it keeps much of the parallel speed and leaves room for the rest.
    """
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
            raise UsageError(f"threads must be an integer >= 1, got {requested!r}")
        return requested, "the backend option threads"
    raw = str(environ.get(THREADS_ENV, "")).strip()
    if raw:
        if raw.lower() == "torch":
            return None, f"{THREADS_ENV}=torch (torch's default)"
        try:
            n = int(raw)
        except ValueError:
            n = 0
        if n < 1:
            raise UsageError(f"{THREADS_ENV} must be an integer >= 1 or 'torch', got {raw!r}")
        return n, THREADS_ENV
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if str(environ.get(var, "")).strip():
            return None, f"{var} is set"
    if current != usable_cpus:
        return None, "torch.set_num_threads was called by the program"
    return max(1, usable_cpus // 2), f"compressbench's CPU default: half of the {usable_cpus} usable CPUs"


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _set_cpu_threads(torch: Any, requested: int | None, device: Any) -> None:
    """Apply :func:`choose_cpu_threads` (process-wide ``torch.set_num_threads``); CUDA runs keep
    torch's threads unless ``threads`` is given."""
    if requested is None and device.type != "cpu":
        return
    current = torch.get_num_threads()
    n, why = choose_cpu_threads(requested, current=current, usable_cpus=_usable_cpus())
    if n is not None and n != current:
        torch.set_num_threads(n)
    log.info("torch CPU threads: %d (%s; set %s or the hf option threads to change)",
             torch.get_num_threads(), why, THREADS_ENV)


@contextlib.contextmanager
def _loading_bars(transformers: Any, *, shown: bool) -> Iterator[None]:
    """transformers' "Loading weights" progress bars during one load: hidden unless ``shown``
    (the CLI's ``-v``/``--log-level info`` or lower), and put back as they were afterwards."""
    tf_logging = transformers.utils.logging
    if shown or not tf_logging.is_progress_bar_enabled():
        yield
        return
    tf_logging.disable_progress_bar()
    try:
        yield
    finally:
        tf_logging.enable_progress_bar()


def _offline() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _dir_revision(path: Path) -> str:
    """sha256 over config.json and the weight files of a model directory (``sha256:<hex>``).

    Files are hashed in full up to 2 GiB of weights in total; above that, each weight file
    contributes its size and its first and last 16 MiB (``sha256-sampled:<hex>``).
    """
    files = sorted(p for p in path.iterdir() if p.is_file() and (p.name == "config.json" or p.suffix in _WEIGHT_SUFFIXES))
    total = sum(p.stat().st_size for p in files)
    sampled = total > _FULL_HASH_MAX_BYTES
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode() + b"\0")
        size = p.stat().st_size
        if sampled and p.name != "config.json":
            h.update(str(size).encode())
            with open(p, "rb") as f:
                h.update(f.read(16 << 20))
                f.seek(max(0, size - (16 << 20)))
                h.update(f.read())
        else:
            h.update(file_sha256(p).encode())
    return ("sha256-sampled:" if sampled else "sha256:") + h.hexdigest()


#: Name under which the shared-prefix attention is registered with transformers' AttentionInterface.
_SHARED_PREFIX_ATTN = "compressbench_shared_prefix"
#: Model families whose attention is plain softmax(q k^T * scaling) v (no sliding window, softcap or
#: sinks), for which the shared-prefix attention below is exact.
_SHARED_PREFIX_FAMILIES = frozenset({"llama", "gpt2", "qwen2", "qwen3"})


def _shared_prefix_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                             scaling: float | None = None, dropout: float = 0.0, **kwargs: Any) -> tuple[Any, None]:
    """Exact attention of continuation rows over their own prefix plus themselves.

    query (B, H, q, d); key/value (B, Hkv, q, d) of the continuation tokens only. The prefixes'
    keys/values (G, Hkv, Lp, d) come in ``kwargs["compressbench_prefix_kv"][layer_idx]``; the B
    rows are prefix-major, B = G * Bc: rows ``g*Bc .. g*Bc+Bc-1`` continue prefix g. An optional
    ``kwargs["compressbench_prefix_pad"]`` (G, Lp) bool marks padding keys of shorter prefixes
    (their values must be finite; the caller zeroes them). With s_pre = Q K_pre[g]^T * scaling
    (one batched GEMM over the G prefixes, no per-row copy of any prefix), padding keys set to
    -inf, and s_self = Q K^T * scaling with a causal mask, the output is

        softmax([s_pre, s_self]) [V_pre; V]  =  (exp(s_pre - m) V_pre + exp(s_self - m) V) / Z,

    m the row maximum and Z the row sum of both exponentials. Returns (B, q, H, d), like sdpa.
    """
    # lazy: torch/transformers (the [hf] extra) load only with a model
    import torch

    pk, pv = kwargs["compressbench_prefix_kv"][module.layer_idx]
    pad = kwargs.get("compressbench_prefix_pad")
    b, h, q, d = query.shape
    n_g, hkv, lp = pk.shape[0], key.shape[1], pk.shape[2]
    bc, g = b // n_g, h // hkv
    scale = scaling if scaling is not None else d ** -0.5
    qg = query.reshape(b, hkv, g * q, d)  # kv head i serves query heads i*g .. i*g+g-1
    # (G, Hkv, Bc*g*q, d) @ (G, Hkv, d, Lp): per (prefix, kv head), all its rows' queries in one GEMM.
    q_pre = qg.view(n_g, bc, hkv, g * q, d).transpose(1, 2).reshape(n_g, hkv, bc * g * q, d)
    s_pre_flat = torch.matmul(q_pre, pk.transpose(-1, -2))
    s_pre = s_pre_flat.view(n_g, hkv, bc, g * q, lp).transpose(1, 2).mul_(scale)  # (G, Bc, Hkv, g*q, Lp) view
    if pad is not None:
        s_pre.masked_fill_(pad[:, None, None, None, :], float("-inf"))
    s_self = torch.matmul(qg, key.transpose(-1, -2)).mul_(scale).view(n_g, bc, hkv, g * q, q)
    causal = torch.ones(q, q, dtype=torch.bool, device=query.device).tril_().repeat(g, 1)
    s_self.masked_fill_(~causal, float("-inf"))
    m = torch.maximum(s_pre.amax(-1, keepdim=True), s_self.amax(-1, keepdim=True))
    e_pre, e_self = s_pre.sub_(m).exp_(), s_self.sub_(m).exp_()
    z = e_pre.sum(-1, keepdim=True) + e_self.sum(-1, keepdim=True)
    out_pre = torch.matmul(s_pre_flat, pv)  # s_pre_flat now holds e_pre: (G, Hkv, Bc*g*q, d)
    out = out_pre.view(n_g, hkv, bc, g * q, d).transpose(1, 2) + torch.matmul(e_self, value.view(n_g, bc, hkv, q, d))
    out = out.div_(z).reshape(b, h, q, d)
    return out.transpose(1, 2).contiguous(), None


@dataclass(frozen=True)
class _Continuations:
    """The continuations of one ``score_matrix`` call, on the model's device.

    ``multi``: indices of continuations with >= 2 tokens, longest first; ``n_in[r]`` =
    L - 1 inputs of ``multi[r]``; ``ids``/``tgt``/``mask`` (len(multi), max n_in): inputs
    c_1..c_{L-1}, targets c_2..c_L and 1 at real positions (right padding); ``cols`` = multi as a
    tensor; ``nonempty``/``first_tok``: indices and first tokens of all non-empty continuations.
    """

    multi: list[int]
    n_in: list[int]
    nonempty: Any
    first_tok: Any
    ids: Any
    tgt: Any
    mask: Any
    cols: Any


class HFBackend(BaseBackend):
    """A transformers causal LM behind the backend seam (see the module docstring).

    Args:
        model_ref: built-in name, local directory, ``.gguf`` file, or hub id.
        dtype: "float32" (default; bf16 is ~5x slower on CPUs without AVX-512-BF16),
            "bfloat16", "float16" or "auto".
        device: a torch device string, e.g. "cpu", "cuda", "cuda:1".
        max_batch_tokens: upper bound on batch x (cached + new) tokens in one forward pass.
        max_logit_elements: upper bound on batch x kept positions x vocabulary in one pass.
        seed: default generation seed when ``GenerationParams.seed`` is None (None: unseeded).
        threads: torch CPU threads (process-wide ``torch.set_num_threads``); None: the choice of
            :func:`choose_cpu_threads` (``COMPRESSBENCH_TORCH_THREADS``, ``OMP_NUM_THREADS``, or
            half the usable CPUs on CPU).
        trust_remote_code: passed to transformers for hub/dir models that need it.
        prefix_batching: how many prefixes ``score_matrix`` processes per forward pass:
            "auto" (default: as many as the budgets allow on CUDA, where per-forward overhead
            dominates; one at a time on CPU, where grouping measured slower: see BENCHMARKS.md),
            "off" (one at a time), or an int N >= 1 (at most N). Grouping needs the shared-prefix attention
            (plain-attention families); other families always go one prefix at a time.
    """

    def __init__(
        self,
        model_ref: str | os.PathLike[str],
        *,
        dtype: str = "float32",
        device: str = "cpu",
        max_batch_tokens: int = 32768,
        max_logit_elements: int = 1 << 27,
        seed: int | None = 0,
        threads: int | None = None,
        trust_remote_code: bool = False,
        prefix_batching: str | int = "auto",
    ) -> None:
        if not isinstance(model_ref, (str, os.PathLike)) or not str(model_ref):
            raise UsageError(f"model_ref must be a non-empty string or path, got {model_ref!r}")
        if dtype not in _DTYPES:
            raise UsageError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
        if max_batch_tokens < 1 or max_logit_elements < 1:
            raise UsageError("max_batch_tokens and max_logit_elements must be >= 1")
        if not (prefix_batching in ("auto", "off")
                or (isinstance(prefix_batching, int) and not isinstance(prefix_batching, bool) and prefix_batching >= 1)):
            raise UsageError(f'prefix_batching must be "auto", "off" or an int >= 1, got {prefix_batching!r}')
        torch, transformers = _import_torch_transformers()
        self._torch = torch
        self.reference = str(model_ref)
        self.name = f"hf:{self.reference}"
        self.dtype_name = dtype
        self.max_batch_tokens = int(max_batch_tokens)
        self.max_logit_elements = int(max_logit_elements)
        self.seed = seed
        self.prefix_batching = prefix_batching
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise UsageError(f"invalid device {device!r}: {e}") from e
        _set_cpu_threads(torch, threads, self.device)

        load_from, self._revision, self._source = self._resolve(self.reference)
        torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
        local_only = self._source != "hub" or _offline()
        try:
            with _loading_bars(transformers, shown=log.isEnabledFor(logging.INFO)):
                self.tokenizer = transformers.AutoTokenizer.from_pretrained(
                    load_from, local_files_only=local_only, trust_remote_code=trust_remote_code
                )
                self.model = transformers.AutoModelForCausalLM.from_pretrained(
                    load_from, dtype=torch_dtype, local_files_only=local_only, trust_remote_code=trust_remote_code
                )
        except OSError as e:
            if self._source == "hub":
                why = (
                    "the hub is disabled (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE) and it is not in the local "
                    "Hugging Face cache"
                    if _offline()
                    else "it could not be downloaded"
                )
                raise BackendUnavailable(
                    f"model {self.reference!r} is not a built-in name, a local directory or a .gguf file, "
                    f"and as a hub id {why}: {e}"
                ) from e
            raise BackendError(f"could not load model from {load_from}: {e}") from e
        self.model.to(self.device)
        self.model.eval()
        self._load_dir = load_from
        if self._revision is None and self._source == "dir":
            # At load time: the directory may change or vanish later.
            self._revision = _dir_revision(Path(load_from))
        params = inspect.signature(self.model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._has_logits_to_keep = "logits_to_keep" in params
        config = self.model.config
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        self._config = text_config
        self.n_ctx: int | None = getattr(text_config, "max_position_embeddings", None)
        self._pad_id = self._choose_pad_id()
        self._eos_ids = self._collect_eos_ids()
        self._info: ModelInfo | None = None
        self._shared_prefix_attn = self._enable_shared_prefix_attention()
        log.info("loaded %s (%s, %s, %s)", self.reference, text_config.model_type, dtype, self.device)

    # ------------------------------------------------------------------ loading helpers
    @staticmethod
    def _resolve(ref: str) -> tuple[str, str | None, str]:
        """(what to pass to from_pretrained, revision if known now, source kind)."""
        if named_model(ref) is not None:
            gguf = resolve_named_model(ref)
            digest = file_sha256(gguf)
            return str(convert_gguf(gguf, sha256=digest)), f"gguf-sha256:{digest}", "gguf"
        path = Path(ref).expanduser()
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise UsageError(f"{path} is a directory but has no config.json; point at a saved model directory")
            return str(path), None, "dir"
        if path.is_file():
            if path.suffix.lower() != ".gguf":
                raise UsageError(f"{path} is a file but not a .gguf file; pass a model directory or a GGUF file")
            digest = file_sha256(path)
            return str(convert_gguf(path, sha256=digest)), f"gguf-sha256:{digest}", "gguf"
        if ref.endswith(".gguf") or ref.startswith((".", "/", "~")) or ref.count("/") > 1:
            raise UsageError(f"model path {ref!r} does not exist")
        return ref, None, "hub"

    def _choose_pad_id(self) -> int:
        tok = self.tokenizer
        for cand in (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id, 0):
            if cand is not None:
                return int(cand)
        return 0  # pragma: no cover

    def _collect_eos_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        for v in (self.tokenizer.eos_token_id, gen_eos, getattr(self._config, "eos_token_id", None)):
            if isinstance(v, int):
                ids.add(v)
            elif isinstance(v, (list, tuple)):
                ids.update(int(x) for x in v)
        return frozenset(ids)

    def _enable_shared_prefix_attention(self) -> bool:
        """Register the exact shared-prefix attention for plain-attention families (else False)."""
        cfg = self._config
        sliding = getattr(cfg, "use_sliding_window", None)  # Qwen: sliding_window is set but unused
        if sliding is None:
            sliding = bool(getattr(cfg, "sliding_window", None))
        if getattr(cfg, "model_type", None) not in _SHARED_PREFIX_FAMILIES or sliding \
                or getattr(cfg, "reorder_and_upcast_attn", False):
            return False
        try:
            # lazy: torch/transformers (the [hf] extra) load only with a model
            from transformers import AttentionInterface
        except ImportError:
            return False
        AttentionInterface.register(_SHARED_PREFIX_ATTN, _shared_prefix_attention)
        return True

    # ------------------------------------------------------------------ tokenisation
    def _encode(self, texts: Sequence[str], *, special: bool) -> list[list[int]]:
        if not texts:
            return []
        enc = self.tokenizer(list(texts), add_special_tokens=special)["input_ids"]
        return [list(map(int, ids)) for ids in enc]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Token counts of `texts` tokenised as continuations (no special tokens)."""
        return [len(ids) for ids in self._encode(check_texts(texts, "texts"), special=False)]

    def _check_fits(self, n_prefix: int, n_cont: int, p: int, c: int) -> None:
        if n_prefix == 0 and n_cont > 0:
            raise UsageError(
                f"prefixes[{p}] tokenises to no tokens and this tokenizer adds no BOS token, so the first "
                "continuation token has no context; give a non-empty prefix"
            )
        if self.n_ctx is not None and n_prefix + n_cont > self.n_ctx:
            raise ContextTooLong(
                f"prefix {p} ({n_prefix} tokens) + continuation {c} ({n_cont} tokens) = "
                f"{n_prefix + n_cont} tokens exceeds the model's context window of {self.n_ctx} tokens; "
                "shorten the text",
                n_tokens=n_prefix + n_cont,
                max_tokens=self.n_ctx,
            )

    # ------------------------------------------------------------------ forward helpers
    def _forward(self, input_ids: Any, attention_mask: Any, position_ids: Any, *, cache: Any = None,
                 keep: Any = None) -> Any:
        kwargs: dict[str, Any] = dict(input_ids=input_ids, attention_mask=attention_mask,
                                      position_ids=position_ids, use_cache=cache is not None)
        if cache is not None:
            kwargs[self._cache_kw] = cache
        if keep is not None and self._has_logits_to_keep:
            kwargs["logits_to_keep"] = keep
        return self.model(**kwargs)

    def _out_cache(self, out: Any) -> Any:
        c = getattr(out, self._cache_kw, None)
        if c is None:
            c = getattr(out, "past_key_values", None) or getattr(out, "cache", None)
        if c is None:
            raise BackendError(f"{self.reference}: the forward pass returned no KV cache")
        return c

    def _token_logprobs(self, logits: Any, targets: Any) -> Any:
        """log softmax(logits)[targets] without materialising the full log-softmax.

        logits: (..., V), targets: (...) int64 -> (...) float32 natural-log probabilities.
        """
        logits = logits.float()
        picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return picked - self._torch.logsumexp(logits, dim=-1)

    def _vocab(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    # ------------------------------------------------------------------ score (one pass per pair)
    def score(self, prefixes: Sequence[str], continuations: Sequence[str]) -> list[TokenLogprobs]:
        """Per-token log-probs (nats) of ``continuations[i]`` after ``prefixes[i]``, in input order.

        One forward pass over ``prefix_ids + continuation_ids`` per pair, left-padded and batched
        (position ids ``cumsum(mask) - 1``), keeping only the last ``max(L_c) + 1`` logits.
        """
        p_texts, c_texts = check_pairs(prefixes, continuations)
        p_ids = self._encode(p_texts, special=True)
        c_ids = self._encode(c_texts, special=False)
        results: list[TokenLogprobs | None] = [None] * len(p_ids)
        todo = []
        for i, (p, c) in enumerate(zip(p_ids, c_ids)):
            self._check_fits(len(p), len(c), i, i)
            if not c:
                results[i] = TokenLogprobs((), ())
            else:
                todo.append(i)
        torch = self._torch
        todo.sort(key=lambda i: len(p_ids[i]) + len(c_ids[i]), reverse=True)
        vocab = self._vocab()
        start = 0
        with torch.inference_mode():
            while start < len(todo):
                seq_len = len(p_ids[todo[start]]) + len(c_ids[todo[start]])
                batch = [todo[start]]
                keep = len(c_ids[todo[start]]) + 1
                for i in todo[start + 1:]:
                    k = max(keep, len(c_ids[i]) + 1)
                    b = len(batch) + 1
                    if b * seq_len > self.max_batch_tokens or b * k * vocab > self.max_logit_elements:
                        break
                    batch.append(i)
                    keep = k
                start += len(batch)
                keep = min(keep, seq_len)
                ids = torch.full((len(batch), seq_len), self._pad_id, dtype=torch.long)
                mask = torch.zeros((len(batch), seq_len), dtype=torch.long)
                for r, i in enumerate(batch):
                    row = p_ids[i] + c_ids[i]
                    ids[r, seq_len - len(row):] = torch.tensor(row)
                    mask[r, seq_len - len(row):] = 1
                pos = (mask.cumsum(-1) - 1).clamp(min=0)
                ids, mask, pos = ids.to(self.device), mask.to(self.device), pos.to(self.device)
                logits = self._forward(ids, mask, pos, keep=keep).logits[:, -keep:, :]
                lp = self._token_logprobs(logits[:, :-1, :], ids[:, seq_len - keep + 1:]).cpu().double()
                for r, i in enumerate(batch):
                    n = len(c_ids[i])
                    results[i] = TokenLogprobs(tuple(c_ids[i]), tuple(lp[r, keep - 1 - n:].tolist()))
        return [r for r in results if r is not None]

    # ------------------------------------------------------------------ score_matrix (shared prefix)
    def score_matrix(self, prefixes: Sequence[str], continuations: Sequence[str]) -> np.ndarray:
        """``out[p, c] = sum_j log p(c_j | x_p, c_<j)`` in nats, float64, shape (P, C).

        Each prefix runs once; each batch of continuations attends to its cached keys/values
        (shared-prefix attention, or a broadcast copy of the cache; the prefix cache itself is
        never modified; see the module docstring for the token count). With prefix batching
        (``prefix_batching``), a group of G prefixes (similar lengths, left-padded, position ids
        ``cumsum(mask) - 1``) is prefilled in one forward pass, and each continuation forward
        holds rows for several of the group's prefixes (pad keys masked out), so there are
        fewer, larger forward passes; the results are the same to float rounding.
        """
        p_texts = check_texts(prefixes, "prefixes")
        c_texts = check_texts(continuations, "continuations")
        out = np.zeros((len(p_texts), len(c_texts)), dtype=np.float64)
        if not p_texts or not c_texts:
            return out
        p_ids = self._encode(p_texts, special=True)
        c_ids = self._encode(c_texts, special=False)
        max_c = max(len(c) for c in c_ids)
        c_long = max(range(len(c_ids)), key=lambda c: len(c_ids[c]))
        for p, ids in enumerate(p_ids):
            self._check_fits(len(ids), max_c, p, c_long)
        torch = self._torch
        conts = self._make_conts(c_ids)
        if conts is None:
            return out
        vocab = self._vocab()
        with torch.inference_mode():
            for group in self._prefix_groups([len(x) for x in p_ids], vocab):
                out[group] = self._score_group([p_ids[p] for p in group], conts, len(c_ids), vocab)
        return out

    def _make_conts(self, c_ids: list[list[int]]) -> _Continuations | None:
        """The continuations (token ids, in output-column order) on the device; None if all empty."""
        torch = self._torch
        nonempty = [c for c in range(len(c_ids)) if c_ids[c]]
        if not nonempty:
            return None
        multi = sorted((c for c in nonempty if len(c_ids[c]) > 1), key=lambda c: len(c_ids[c]), reverse=True)
        # Everything the forwards need is put on the device once, so that the only
        # device-to-host copy is one per prefix group (no synchronisation per forward).
        first_tok = torch.tensor([c_ids[c][0] for c in nonempty], device=self.device)
        n_in_max = max((len(c_ids[c]) - 1 for c in multi), default=0)
        c_in = torch.full((len(multi), n_in_max), self._pad_id, dtype=torch.long)  # inputs c_1..c_{L-1}
        tgt = torch.full((len(multi), n_in_max), self._pad_id, dtype=torch.long)  # targets c_2..c_L
        for r, c in enumerate(multi):
            seq = c_ids[c]
            c_in[r, : len(seq) - 1] = torch.tensor(seq[:-1])
            tgt[r, : len(seq) - 1] = torch.tensor(seq[1:])
        cmask = torch.zeros((len(multi), n_in_max), dtype=torch.long)
        for r, c in enumerate(multi):
            cmask[r, : len(c_ids[c]) - 1] = 1
        return _Continuations(
            multi=multi, n_in=[len(c_ids[c]) - 1 for c in multi], nonempty=torch.tensor(nonempty, device=self.device),
            first_tok=first_tok, ids=c_in.to(self.device), tgt=tgt.to(self.device), mask=cmask.to(self.device),
            cols=torch.tensor(multi, dtype=torch.long, device=self.device),
        )

    def score_subsets(self, prefixes: Sequence[str], continuations: Sequence[str],
                      subsets: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """``out[p][r] = log p(continuations[subsets[p][r]] | prefixes[p])`` in nats (float64).

        Each continuation is tokenised once; each prefix runs once and only its own continuations
        are scored after it. With the shared-prefix attention (llama, qwen, gpt2 families) and
        ``prefix_batching`` not ``off``, several prefixes (similar lengths, left-padded) are
        prefilled in one forward and the next forward holds every one of their continuations
        (rows prefix-major, each prefix's own; short rows padded), so a small subset per prefix does
        not cost a forward pass of its own; memory-bounded by ``max_batch_tokens`` /
        ``max_logit_elements``. Otherwise (or for a prefix whose continuations do not fit one
        forward) prefixes that need the same continuations go through :meth:`score_matrix`'s
        schedule. The numbers equal ``score_matrix``'s entries to float rounding."""
        p_texts, c_texts, subs = check_subsets(prefixes, continuations, subsets)
        out = [np.zeros(len(idx), dtype=np.float64) for idx in subs]
        if not p_texts or not c_texts:
            return out
        p_ids = self._encode(p_texts, special=True)
        c_ids = self._encode(c_texts, special=False)
        vocab = self._vocab()
        todo = [p for p, idx in enumerate(subs) if idx.size]
        for p in todo:
            sub_ids = [c_ids[int(i)] for i in subs[p]]
            r_long = max(range(len(sub_ids)), key=lambda r: len(sub_ids[r]))
            self._check_fits(len(p_ids[p]), len(sub_ids[r_long]), p, int(subs[p][r_long]))
        rest = todo
        if self._shared_prefix_attn and self.prefix_batching != "off":
            rest = self._score_rows_batched(p_ids, c_ids, subs, todo, vocab, out)
        by_subset: dict[tuple[int, ...], list[int]] = {}
        for p in rest:
            by_subset.setdefault(tuple(int(i) for i in subs[p]), []).append(p)
        with self._torch.inference_mode():
            for key, ps in by_subset.items():
                conts = self._make_conts([c_ids[i] for i in key])
                if conts is None:
                    continue
                for group in self._prefix_groups([len(p_ids[p]) for p in ps], vocab):
                    rows = self._score_group([p_ids[ps[g]] for g in group], conts, len(key), vocab)
                    for g, row in zip(group, rows):
                        out[ps[g]] = np.asarray(row, dtype=np.float64)
        return out

    def _score_rows_batched(self, p_ids: list[list[int]], c_ids: list[list[int]], subs: list[np.ndarray],
                            todo: list[int], vocab: int, out: list[np.ndarray]) -> list[int]:
        """Score prefixes in groups, each prefix with its own continuations (``subs[p]``), two forwards
        per group: the left-padded prefill of the group's prefixes, then one forward of all their
        continuation rows through the shared-prefix attention. Fills ``out``; returns the prefixes
        it could not take (a continuation set too large for one forward; the shared-prefix cache
        layout missing)."""
        torch = self._torch
        limit = int(self.prefix_batching) if str(self.prefix_batching).isdigit() else 1 << 30
        order = sorted(todo, key=lambda p: len(p_ids[p]), reverse=True)
        left: list[int] = []
        groups: list[list[int]] = []
        cur: list[int] = []
        cur_rows = cur_in = 0
        for p in order:
            n_rows = int(subs[p].size)
            n_in = max((len(c_ids[int(i)]) - 1 for i in subs[p]), default=0)
            fits_alone = (len(p_ids[p]) + max(n_in, 1)) * n_rows <= self.max_batch_tokens and \
                max(n_in, 1) * n_rows * vocab <= self.max_logit_elements
            if not fits_alone:
                left.append(p)
                continue
            if cur:
                rows = max(cur_rows, n_rows) * (len(cur) + 1)
                width = max(cur_in, n_in, 1)
                l_max = len(p_ids[cur[0]])
                if (len(cur) < limit and rows * (l_max + width) <= self.max_batch_tokens
                        and rows * width * vocab <= self.max_logit_elements
                        and (len(cur) + 1) * l_max <= self.max_batch_tokens
                        and (len(cur) + 1) * vocab <= self.max_logit_elements):
                    cur.append(p)
                    cur_rows, cur_in = max(cur_rows, n_rows), max(cur_in, n_in)
                    continue
                groups.append(cur)
            cur, cur_rows, cur_in = [p], n_rows, n_in
        if cur:
            groups.append(cur)
        with torch.inference_mode():
            for group in groups:
                if not self._score_rows_group(group, p_ids, c_ids, subs, vocab, out):
                    left.extend(group)
        return left

    def _score_rows_group(self, group: list[int], p_ids: list[list[int]], c_ids: list[list[int]],
                          subs: list[np.ndarray], vocab: int, out: list[np.ndarray]) -> bool:
        torch = self._torch
        n_g = len(group)
        lens = [len(p_ids[p]) for p in group]
        l_max = max(lens)
        ids = torch.full((n_g, l_max), self._pad_id, dtype=torch.long)
        mask = torch.zeros((n_g, l_max), dtype=torch.long)
        for r, p in enumerate(group):
            ids[r, l_max - lens[r]:] = torch.tensor(p_ids[p])
            mask[r, l_max - lens[r]:] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        pre = self._forward(ids.to(self.device), mask.to(self.device), pos.to(self.device),
                            cache=self._new_cache(), keep=1)
        last = pre.logits[:, -1, :].float()
        last = last - torch.logsumexp(last, dim=-1, keepdim=True)  # (G, V) first-token log-probs
        cache = self._out_cache(pre)
        del pre
        layers = getattr(cache, "layers", None)
        if layers is None or not all(hasattr(ly, "keys") for ly in layers):
            return False
        pad = None if min(lens) == l_max else (mask == 0).to(self.device)
        if pad is None:
            prefix_kv = [(ly.keys, ly.values) for ly in layers]
        else:
            prefix_kv = [(ly.keys, ly.values.masked_fill(pad[:, None, :, None], 0.0)) for ly in layers]
        bc = max(int(subs[p].size) for p in group)
        n_in = max(max((len(c_ids[int(i)]) - 1 for i in subs[p]), default=0) for p in group)
        firsts = torch.zeros((n_g, bc), dtype=torch.float64)
        for g, p in enumerate(group):
            toks = [c_ids[int(i)][0] if c_ids[int(i)] else -1 for i in subs[p]]
            have = [r for r, t in enumerate(toks) if t >= 0]
            if have:
                firsts[g, have] = last[g, torch.tensor([toks[r] for r in have], device=self.device)].double().cpu()
        total = firsts
        if n_in > 0:
            c_in = torch.full((n_g * bc, n_in), self._pad_id, dtype=torch.long)
            tgt = torch.full((n_g * bc, n_in), self._pad_id, dtype=torch.long)
            cmask = torch.zeros((n_g * bc, n_in), dtype=torch.float64)
            for g, p in enumerate(group):
                for r, i in enumerate(subs[p]):
                    seq = c_ids[int(i)]
                    if len(seq) > 1:
                        row = g * bc + r
                        c_in[row, : len(seq) - 1] = torch.tensor(seq[:-1])
                        tgt[row, : len(seq) - 1] = torch.tensor(seq[1:])
                        cmask[row, : len(seq) - 1] = 1.0
            lens_t = torch.tensor(lens, device=self.device)
            steps = torch.arange(n_in, device=self.device)
            rpos = lens_t[:, None, None].expand(n_g, bc, 1).reshape(n_g * bc, 1) + steps
            logits = self._forward_shared_prefix(c_in.to(self.device), rpos, prefix_kv, pad)
            lp = self._token_logprobs(logits, tgt.to(self.device)).double().cpu()
            total = total + (lp * cmask).sum(-1).view(n_g, bc)
            del logits, lp
        for g, p in enumerate(group):
            out[p] = total[g, : int(subs[p].size)].numpy().astype(np.float64)
        return True

    def _prefix_group_limit(self) -> int:
        """Most prefixes per group allowed by ``prefix_batching`` (1 = one prefix at a time)."""
        if not self._shared_prefix_attn or self.prefix_batching == "off":
            return 1
        if self.prefix_batching == "auto":
            return 1 << 30 if self.device.type == "cuda" else 1
        return int(self.prefix_batching)

    def _prefix_groups(self, lengths: list[int], vocab: int) -> list[list[int]]:
        """Prefix indices in groups of similar length (longest first).

        A group of G prefixes, the longest of ``l_max`` tokens, satisfies G <= the group limit,
        G * l_max <= max_batch_tokens and G * vocab <= max_logit_elements (or G = 1).
        """
        limit = self._prefix_group_limit()
        order = sorted(range(len(lengths)), key=lambda p: lengths[p], reverse=True)
        groups: list[list[int]] = []
        for p in order:
            g = groups[-1] if groups else None
            if g is not None and len(g) < limit:
                n = len(g) + 1
                if n * lengths[g[0]] <= self.max_batch_tokens and n * vocab <= self.max_logit_elements:
                    g.append(p)
                    continue
            groups.append([p])
        return groups

    @staticmethod
    def _tile(n_prefixes: int, n_conts: int, rows: int) -> tuple[int, int]:
        """(prefixes per forward gs, continuations per forward bc), gs * bc <= rows.

        Minimises the number of forward passes ceil(G / gs) * ceil(C / bc) over the group's
        G prefixes and the C continuations left; ties go to fuller batches.
        """
        best = (1, min(n_conts, rows))
        best_key = (-(-n_prefixes // best[0]) * -(-n_conts // best[1]), -best[0] * best[1])
        for gs in range(2, min(n_prefixes, rows) + 1):
            bc = min(n_conts, rows // gs)
            key = (-(-n_prefixes // gs) * -(-n_conts // bc), -gs * bc)
            if key < best_key:
                best, best_key = (gs, bc), key
        return best

    def _score_group(self, prefixes: list[list[int]], conts: _Continuations, n_conts: int, vocab: int) -> np.ndarray:
        """Rows of the (P, C) matrix for one group of prefixes (token ids), shape (G, C), nats."""
        torch = self._torch
        n_g = len(prefixes)
        lens = [len(x) for x in prefixes]
        l_max = max(lens)
        ids = torch.full((n_g, l_max), self._pad_id, dtype=torch.long)
        mask = torch.zeros((n_g, l_max), dtype=torch.long)
        for r, x in enumerate(prefixes):
            ids[r, l_max - lens[r]:] = torch.tensor(x)
            mask[r, l_max - lens[r]:] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        ids, mask, pos = ids.to(self.device), mask.to(self.device), pos.to(self.device)
        acc = torch.zeros((n_g, n_conts), dtype=torch.float64, device=self.device)
        pre = self._forward(ids, mask, pos, cache=self._new_cache(), keep=1)
        last = pre.logits[:, -1, :].float()
        first = last[:, conts.first_tok] - torch.logsumexp(last, dim=-1, keepdim=True)  # (G, C_nonempty)
        acc[:, conts.nonempty] = first.double()
        base_cache = self._out_cache(pre)
        del pre, last, first
        prefix_kv = None
        pad = None if min(lens) == l_max else mask == 0  # (G, l_max) True at left padding
        layers = getattr(base_cache, "layers", None)
        if self._shared_prefix_attn and layers is not None and all(hasattr(ly, "keys") for ly in layers):
            if pad is None:
                prefix_kv = [(ly.keys, ly.values) for ly in layers]
            else:  # padding queries may have seen no key at all: zero their values (keys get -inf)
                prefix_kv = [(ly.keys, ly.values.masked_fill(pad[:, None, :, None], 0.0)) for ly in layers]
        elif n_g > 1:  # pragma: no cover - groups are only formed with the shared-prefix attention
            raise BackendError("internal: prefix groups need the shared-prefix attention")
        lens_t = torch.tensor(lens, device=self.device)
        start, n_multi = 0, len(conts.multi)
        while start < n_multi:
            n_in = conts.n_in[start]  # the longest left (sorted longest first)
            rows = max(1, min(self.max_batch_tokens // (l_max + n_in), self.max_logit_elements // (n_in * vocab)))
            gs, bc = self._tile(n_g, n_multi - start, rows)
            end = min(n_multi, start + bc)
            B = end - start
            c_in, tgt, cmask = (t[start:end, :n_in] for t in (conts.ids, conts.tgt, conts.mask))
            cols = conts.cols[start:end]
            start = end
            steps = torch.arange(n_in, device=self.device)
            for s in range(0, n_g, gs):
                e = min(n_g, s + gs)
                ng = e - s
                # Rows are prefix-major: prefix s with every continuation of the batch, then s + 1, ...
                pos = lens_t[s:e, None, None].expand(ng, B, 1).reshape(ng * B, 1) + steps
                if prefix_kv is not None:
                    sub_max, sub_min = max(lens[s:e]), min(lens[s:e])
                    off = l_max - sub_max  # left padding shared by the whole slice is dropped
                    kv = [(k[s:e, :, off:], v[s:e, :, off:]) for k, v in prefix_kv]
                    sub_pad = None if pad is None or sub_min == sub_max else pad[s:e, off:]
                    logits = self._forward_shared_prefix(c_in.repeat(ng, 1), pos, kv, sub_pad)
                else:
                    work = self._expand_cache(base_cache, B)
                    full = torch.cat([torch.ones((B, l_max), dtype=torch.long, device=self.device), cmask], dim=1)
                    logits = self._forward(c_in, full, pos, cache=work).logits
                lp = self._token_logprobs(logits, tgt.repeat(ng, 1))
                acc[s:e].index_add_(1, cols, (lp.double() * cmask.repeat(ng, 1)).sum(-1).view(ng, B))
                del logits, lp
        del base_cache, prefix_kv
        return acc.cpu().numpy()

    def _new_cache(self) -> Any:
        # lazy: torch/transformers (the [hf] extra) load only with a model
        from transformers import DynamicCache

        try:
            return DynamicCache(config=self.model.config)
        except TypeError:  # older signatures without config
            return DynamicCache()

    def _forward_shared_prefix(self, ids: Any, pos: Any, prefix_kv: list[tuple[Any, Any]], pad: Any = None) -> Any:
        """Logits of continuation rows attending to their prefixes (no cache copies).

        prefix_kv: per layer (keys, values) of shape (G, Hkv, Lp, d); rows are prefix-major
        (``len(ids) = G * Bc``); pad: None or (G, Lp) bool, True at padding keys.
        """
        cfg = self._config
        old = cfg._attn_implementation
        cfg._attn_implementation = _SHARED_PREFIX_ATTN
        extra = {} if pad is None else {"compressbench_prefix_pad": pad}
        try:
            out = self.model(input_ids=ids, position_ids=pos, use_cache=False, compressbench_prefix_kv=prefix_kv,
                             **extra)
        finally:
            cfg._attn_implementation = old
        return out.logits

    @staticmethod
    def _expand_cache(cache: Any, batch: int) -> Any:
        """A batch-`batch` cache over the batch-1 prefix cache, leaving the original untouched.

        Plain layers get broadcast views (``expand``, no copy): the model's own ``torch.cat`` of
        the new keys/values is then the only copy of the prefix per batch. Layers of another kind
        (e.g. sliding-window) are copied with ``batch_repeat_interleave``.
        """
        new = copy.copy(cache)
        layers = getattr(cache, "layers", None)
        if layers is not None and all(type(layer).__name__ == "DynamicLayer" for layer in layers):
            new.layers = []
            for layer in layers:
                clone = copy.copy(layer)
                clone.keys = layer.keys.expand(batch, *layer.keys.shape[1:])
                clone.values = layer.values.expand(batch, *layer.values.shape[1:])
                new.layers.append(clone)
            return new
        new = copy.deepcopy(cache)
        if batch > 1:
            new.batch_repeat_interleave(batch)
        return new

    # ------------------------------------------------------------------ chat template
    @property
    def has_chat_template(self) -> bool:
        """Whether the tokenizer has a chat template (instruct models do; base models such as
        Gemma-3-270M do not, and take plain-text completion prompts instead)."""
        return getattr(self.tokenizer, "chat_template", None) is not None

    def chat_prefix(self, chat: Chat) -> str:
        """The chat rendered by the model's chat template up to the start of the assistant's reply,
        as a scoring prefix: ``score([chat_prefix(chat)], [answer])`` scores ``answer`` as the
        assistant's reply.

        The template's text already holds any BOS token; when the tokenizer also adds one itself,
        the template's leading BOS text is dropped, so the prefix tokenises (with special tokens,
        per the tokenisation contract) to exactly ``apply_chat_template(chat, tokenize=True,
        add_generation_prompt=True)``.
        """
        if not self.has_chat_template:
            raise UsageError(f"model {self.reference!r} has no chat template; render a plain-text prompt "
                             "(Prompt.render_completion) instead")
        (chat,) = check_prompts([chat])
        text = self.tokenizer.apply_chat_template([dict(m) for m in chat], add_generation_prompt=True,
                                                  tokenize=False)
        bos = self.tokenizer.bos_token
        adds_bos = bool(self.tokenizer("")["input_ids"])
        if adds_bos and bos and text.startswith(bos):
            text = text[len(bos):]
        return text

    # ------------------------------------------------------------------ generate
    def generate(self, chats: Sequence[Chat | str], params: GenerationParams) -> list[Generation]:
        """One Generation (``params.n`` samples) per chat, in input order.

        Each item is a chat (rendered with the model's chat template; a model without one
        refuses it) or a plain string: a completion-style prompt, tokenised as it stands with
        the tokenizer's special tokens (e.g. BOS) and continued, which is how a base model is
        prompted (see ``Prompt.render_completion``).

        Greedy (temperature 0): chats batched (left-padded); the n samples are identical.
        Sampling: each chat is sampled on its own with ``torch.manual_seed(seed)`` inside a forked
        RNG, so a chat's samples depend only on (chat, params, seed), never on batch
        composition or position. Stop strings end a sample and are cut from its text.
        """
        chats = check_prompts(chats)
        if not isinstance(params, GenerationParams):
            raise UsageError(f"params must be a GenerationParams, got {type(params).__name__}")
        if not chats:
            return []
        if not self.has_chat_template and any(not isinstance(c, str) for c in chats):
            raise UsageError(f"model {self.reference!r} has no chat template (a base model); give plain-text "
                             "completion prompts (Prompt.render_completion) instead of chats")
        prompt_ids = [
            self._encode([c], special=True)[0] if isinstance(c, str) else self._encode(
                [self.tokenizer.apply_chat_template([dict(m) for m in c], add_generation_prompt=True,
                                                    tokenize=False)], special=False)[0]
            for c in chats
        ]
        for i, ids in enumerate(prompt_ids):
            if self.n_ctx is not None and len(ids) >= self.n_ctx:
                raise ContextTooLong(
                    f"chats[{i}] is {len(ids)} tokens after the chat template; the model's context window is "
                    f"{self.n_ctx} tokens; shorten it",
                    n_tokens=len(ids), max_tokens=self.n_ctx,
                )
        seed = params.seed if params.seed is not None else self.seed
        results: list[Generation | None] = [None] * len(chats)
        torch = self._torch
        with torch.inference_mode():
            if params.temperature == 0:
                order = sorted(range(len(chats)), key=lambda i: len(prompt_ids[i]), reverse=True)
                start = 0
                while start < len(order):
                    width = len(prompt_ids[order[start]]) + params.max_new_tokens
                    b = max(1, self.max_batch_tokens // width)
                    batch = order[start:start + b]
                    start += len(batch)
                    rows = self._generate_rows([prompt_ids[i] for i in batch], params, do_sample=False)
                    for i, row in zip(batch, rows):
                        results[i] = self._to_generation([row] * params.n, len(prompt_ids[i]), params)
            else:
                for i, ids in enumerate(prompt_ids):
                    devices = [self.device] if self.device.type == "cuda" else []
                    with torch.random.fork_rng(devices=devices):
                        if seed is not None:
                            torch.manual_seed(seed)
                        rows = self._generate_rows([ids] * params.n, params, do_sample=True)
                    results[i] = self._to_generation(rows, len(ids), params)
        return [g for g in results if g is not None]

    def _generate_rows(self, prompts: list[list[int]], params: GenerationParams, *, do_sample: bool) -> list[list[int]]:
        """Generated ids (prompt removed) for each left-padded prompt row."""
        # lazy: torch/transformers (the [hf] extra) load only with a model
        from transformers import GenerationConfig

        torch = self._torch
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for r, p in enumerate(prompts):
            ids[r, width - len(p):] = torch.tensor(p)
            mask[r, width - len(p):] = 1
        max_new = params.max_new_tokens
        if self.n_ctx is not None:
            max_new = max(1, min(max_new, self.n_ctx - width))
        cfg = dict(max_new_tokens=max_new, do_sample=do_sample, num_beams=1,
                   pad_token_id=self._pad_id, eos_token_id=sorted(self._eos_ids) or None)
        if do_sample:
            cfg.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
        if params.stop:
            cfg["stop_strings"] = list(params.stop)
        gen_config = GenerationConfig(**cfg)
        out = self.model.generate(
            input_ids=ids.to(self.device), attention_mask=mask.to(self.device), generation_config=gen_config,
            tokenizer=self.tokenizer if params.stop else None,
        )
        return [row[width:].tolist() for row in out.cpu()]

    def _to_generation(self, rows: list[list[int]], n_prompt: int, params: GenerationParams) -> Generation:
        samples = []
        for row in rows:
            end, finish, n_tok = len(row), "length", len(row)
            for k, t in enumerate(row):
                if t in self._eos_ids:
                    end, finish, n_tok = k, "stop", k + 1
                    break
                if t == self._pad_id:  # padding after a stop string ended this row
                    end, finish, n_tok = k, "stop", k
                    break
            text = self.tokenizer.decode(row[:end], skip_special_tokens=True)
            cut = min((text.find(s) for s in params.stop if s and s in text), default=-1)
            if cut >= 0:
                text, finish = text[:cut], "stop"
            samples.append(Sample(text=text, finish_reason=finish, n_tokens=n_tok))
        return Generation(
            samples=tuple(samples),
            usage=Usage(n_prompt_tokens=n_prompt, n_completion_tokens=sum(s.n_tokens or 0 for s in samples)),
        )

    # ------------------------------------------------------------------ info
    def info(self) -> ModelInfo:
        """Size and shape of the model; revision = content hash of its weights and config."""
        if self._info is None:
            cfg = self._config
            n_heads = getattr(cfg, "num_attention_heads", None)
            d_model = getattr(cfg, "hidden_size", None)
            head_dim = getattr(cfg, "head_dim", None) or (d_model // n_heads if d_model and n_heads else None)
            n_params = int(sum(p.numel() for p in self.model.parameters()))
            revision = self._revision or getattr(cfg, "_commit_hash", None)
            self._info = ModelInfo(
                reference=self.reference,
                n_params=n_params,
                n_active_params=n_params,
                n_layers=getattr(cfg, "num_hidden_layers", None),
                d_model=d_model,
                n_heads=n_heads,
                head_dim=head_dim,
                n_ctx=self.n_ctx,
                family=getattr(cfg, "model_type", None),
                revision=revision,
                extra={"backend": "hf", "dtype": self.dtype_name, "device": str(self.device),
                       "source": self._source, "load_dir": self._load_dir,
                       "chat_template": self.has_chat_template},
            )
        return self._info


__all__ = ["HFBackend", "HF_INSTALL"]
