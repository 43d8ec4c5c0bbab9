"""HFBackend on tiny random Llama and GPT-2 models, checked against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from compressbench.core.errors import BackendUnavailable, ContextTooLong, UsageError
from compressbench.core.types import GenerationParams

MODELS = ["tiny_llama", "tiny_gpt2"]

PREFIXES = [
    "def f(x):",
    "import os\nimport sys\n\n\nclass Parser:\n    \"\"\"Parse things.\"\"\"\n\n    def __init__(self, text):\n",
    "x",
    "for i in range(10):\n    if i % 2:\n        print(i)\n",
    "# A longer comment about heaps, bisection and strings, written to make this prefix long.\n" * 3,
]
CONTINUATIONS = [
    " return x + 1",
    "\n",
    "        self.text = text\n        self.pos = 0\n",
    "",
    ")",
    " while True: pass  # spin",
]


def _reference_logprobs(backend, prefix: str, continuation: str) -> tuple[list[int], list[float]]:
    """Independent computation: one plain forward over prefix ids + continuation ids."""
    import torch

    tok, model = backend.tokenizer, backend.model
    p_ids = tok(prefix)["input_ids"]
    c_ids = tok(continuation, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([list(p_ids) + list(c_ids)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    n_p = len(p_ids)
    return list(c_ids), [float(logp[n_p + j - 1, t]) for j, t in enumerate(c_ids)]


@pytest.mark.parametrize("which", MODELS)
def test_score_matches_plain_forward(which, request):
    backend = request.getfixturevalue(which)
    pairs = [(p, c) for p in PREFIXES[:4] for c in CONTINUATIONS]
    got = backend.score([p for p, _ in pairs], [c for _, c in pairs])
    assert len(got) == len(pairs)
    for (p, c), tl in zip(pairs, got):
        ids, ref = _reference_logprobs(backend, p, c)
        assert list(tl.token_ids) == ids
        assert tl.n_tokens == len(ids)
        np.testing.assert_allclose(tl.logprobs_nats, ref, atol=1e-5, rtol=0)
        assert tl.total_nats == pytest.approx(math.fsum(ref), abs=1e-4)
        assert all(lp <= 0 for lp in tl.logprobs_nats)


@pytest.mark.parametrize("which", MODELS)
@pytest.mark.parametrize("max_batch_tokens", [32768, 90])
@pytest.mark.parametrize("shared_attention", [True, False])
def test_score_matrix_matches_per_pair_score(which, max_batch_tokens, shared_attention, request):
    from compressbench.backends.hf import HFBackend

    base = request.getfixturevalue(which)
    # A small token budget forces many continuation batches per prefix.
    backend = HFBackend(base.reference, max_batch_tokens=max_batch_tokens)
    assert backend._shared_prefix_attn  # Llama and GPT-2 get the shared-prefix attention ...
    backend._shared_prefix_attn = shared_attention  # ... and the generic KV-cache-copy path is tested too
    lengths_p = backend.count_tokens(PREFIXES)
    lengths_c = backend.count_tokens(CONTINUATIONS)
    assert len(set(lengths_p)) == len(PREFIXES) and len(set(lengths_c)) >= 4 and 1 in lengths_c
    matrix = backend.score_matrix(PREFIXES, CONTINUATIONS)
    assert matrix.shape == (len(PREFIXES), len(CONTINUATIONS)) and matrix.dtype == np.float64
    flat = base.score([p for p in PREFIXES for _ in CONTINUATIONS], [c for _ in PREFIXES for c in CONTINUATIONS])
    expected = np.array([t.total_nats for t in flat]).reshape(matrix.shape)
    np.testing.assert_allclose(matrix, expected, atol=1e-4, rtol=0)
    assert np.all(matrix[:, CONTINUATIONS.index("")] == 0.0)
    # The generic fallback (a loop over score) agrees as well.
    from compressbench.backends.base import BaseBackend

    np.testing.assert_allclose(BaseBackend.score_matrix(backend, PREFIXES, CONTINUATIONS), matrix, atol=1e-4)


@pytest.mark.parametrize("which", MODELS)
def test_batch_equals_one_at_a_time(which, request):
    backend = request.getfixturevalue(which)
    ps = [PREFIXES[i % len(PREFIXES)] for i in range(7)]
    cs = [CONTINUATIONS[(3 * i + 1) % len(CONTINUATIONS)] for i in range(7)]
    batched = backend.score(ps, cs)
    for p, c, tl in zip(ps, cs, batched):
        (single,) = backend.score([p], [c])
        assert single.token_ids == tl.token_ids
        np.testing.assert_allclose(single.logprobs_nats, tl.logprobs_nats, atol=1e-5, rtol=0)
    full = backend.score_matrix(PREFIXES, CONTINUATIONS)
    for i, p in enumerate(PREFIXES):
        np.testing.assert_allclose(backend.score_matrix([p], CONTINUATIONS)[0], full[i], atol=1e-5)
    for j, c in enumerate(CONTINUATIONS):
        np.testing.assert_allclose(backend.score_matrix(PREFIXES, [c])[:, 0], full[:, j], atol=1e-5)


@pytest.mark.parametrize("which", MODELS)
def test_tokenisation_contract(which, request):
    """Continuation ids are its own tokenisation, appended; never the joint string's ids."""
    backend = request.getfixturevalue(which)
    tok = backend.tokenizer
    prefix, cont = "def compute_val", "ue(self):\n    return self.value"
    joint = tok(prefix + cont)["input_ids"]
    appended = tok(prefix)["input_ids"] + tok(cont, add_special_tokens=False)["input_ids"]
    assert joint != appended, "precondition: these strings must tokenise differently when joined"
    c_ids = tok(cont, add_special_tokens=False)["input_ids"]
    (tl,) = backend.score([prefix], [cont])
    assert list(tl.token_ids) == c_ids
    _, ref = _reference_logprobs(backend, prefix, cont)
    np.testing.assert_allclose(tl.logprobs_nats, ref, atol=1e-5)
    # Every entry of a column scores the same token sequence, whatever the prefix.
    scored = backend.score(PREFIXES + [prefix], [cont] * (len(PREFIXES) + 1))
    assert {t.token_ids for t in scored} == {tuple(c_ids)}
    assert backend.count_tokens([cont]) == [len(c_ids)]
    matrix = backend.score_matrix(PREFIXES + [prefix], [cont])
    np.testing.assert_allclose(matrix[:, 0], [t.total_nats for t in scored], atol=1e-4)
    # The prefix keeps the tokenizer's special tokens: the Llama tokenizer adds BOS, GPT-2's adds none.
    first = tok(prefix)["input_ids"][0]
    assert (first == tok.bos_token_id) == (which == "tiny_llama")


@pytest.mark.parametrize("which", MODELS)
def test_edge_cases(which, request):
    backend = request.getfixturevalue(which)
    (empty,) = backend.score(["def f():"], [""])
    assert empty.n_tokens == 0 and empty.total_nats == 0.0 and empty.token_ids == ()
    assert backend.score([], []) == []
    assert backend.score_matrix([], ["a"]).shape == (0, 1)
    assert backend.score_matrix(["a"], []).shape == (1, 0)
    assert np.all(backend.score_matrix(["a", "b"], ["", ""]) == 0.0)
    assert backend.count_tokens([]) == [] and backend.count_tokens([""]) == [0]
    assert backend.generate([], GenerationParams()) == []
    with pytest.raises(UsageError, match=r"prefixes\[1\] must be a string"):
        backend.score(["a", 3], ["b", "c"])
    with pytest.raises(UsageError, match=r"continuations\[0\] must be a string"):
        backend.score_matrix(["a"], [None])
    with pytest.raises(UsageError, match="single string"):
        backend.score_matrix("abc", ["d"])
    with pytest.raises(UsageError, match="2 prefixes and 1 continuations"):
        backend.score(["a", "b"], ["c"])


@pytest.mark.parametrize("which", MODELS)
def test_context_too_long_names_lengths(which, request):
    backend = request.getfixturevalue(which)
    n_ctx = backend.info().n_ctx
    long_text = " alpha beta" * 200
    n_long = backend.count_tokens([long_text])[0]
    assert n_long > n_ctx
    n_prefix = len(backend.tokenizer("def f():")["input_ids"])
    for call in (lambda: backend.score(["def f():"], [long_text]),
                 lambda: backend.score_matrix(["def f():"], ["x", long_text])):
        with pytest.raises(ContextTooLong) as err:
            call()
        msg = str(err.value)
        assert f"({n_prefix} tokens)" in msg and f"({n_long} tokens)" in msg and f"{n_ctx} tokens" in msg
        assert err.value.n_tokens == n_prefix + n_long and err.value.max_tokens == n_ctx
    with pytest.raises(ContextTooLong):
        backend.score_matrix([long_text], ["x"])
    with pytest.raises(ContextTooLong, match="context window"):
        backend.generate([[{"role": "user", "content": long_text}]], GenerationParams(max_new_tokens=2))


def test_empty_prefix_without_bos_is_a_usage_error(tiny_gpt2, tiny_llama):
    with pytest.raises(UsageError, match="no BOS"):
        tiny_gpt2.score([""], ["abc"])
    with pytest.raises(UsageError, match="no BOS"):
        tiny_gpt2.score_matrix([""], ["abc"])
    (tl,) = tiny_llama.score([""], ["abc"])  # BOS is the context
    _, ref = _reference_logprobs(tiny_llama, "", "abc")
    np.testing.assert_allclose(tl.logprobs_nats, ref, atol=1e-5)
    np.testing.assert_allclose(tiny_llama.score_matrix([""], ["abc"])[0, 0], math.fsum(ref), atol=1e-4)


CHATS = [
    [{"role": "user", "content": "Write a function."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "import os"}],
    [{"role": "user", "content": "x"}],
]


@pytest.mark.parametrize("which", MODELS)
def test_sampling_is_seeded_reproducible_and_order_preserving(which, request):
    backend = request.getfixturevalue(which)
    params = GenerationParams(max_new_tokens=12, temperature=1.0, top_p=0.95, n=3, seed=7)
    first = backend.generate(CHATS, params)
    again = backend.generate(CHATS, params)
    assert [g.samples for g in first] == [g.samples for g in again]
    reversed_ = backend.generate(CHATS[::-1], params)
    assert [g.samples for g in reversed_[::-1]] == [g.samples for g in first]
    assert all(len(g.samples) == 3 for g in first)
    # Different seeds give different samples (12 tokens from a ~1000-token vocabulary).
    other = backend.generate(CHATS, GenerationParams(max_new_tokens=12, temperature=1.0, n=3, seed=8))
    assert [g.samples for g in other] != [g.samples for g in first]
    for chat, g in zip(CHATS, first):
        prompt = backend.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        assert prompt.endswith("<|assistant|>")
        assert g.usage.n_prompt_tokens == len(backend.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        assert g.usage.n_completion_tokens == sum(s.n_tokens for s in g.samples)
        for s in g.samples:
            assert 1 <= s.n_tokens <= 12
            assert (s.finish_reason == "length") == (s.n_tokens == 12)


@pytest.mark.parametrize("which", MODELS)
def test_greedy_batched_equals_single(which, request):
    backend = request.getfixturevalue(which)
    params = GenerationParams(max_new_tokens=10, temperature=0.0, n=2)
    batched = backend.generate(CHATS, params)
    for chat, g in zip(CHATS, batched):
        (single,) = backend.generate([chat], params)
        assert single.samples == g.samples
        assert g.samples[0] == g.samples[1]  # greedy: all n samples are the same


def test_greedy_is_argmax_and_stop_strings_cut(tiny_llama):
    import torch

    backend = tiny_llama
    prompt = backend.tokenizer.apply_chat_template(CHATS[0], add_generation_prompt=True, tokenize=False)
    ids = backend.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        for _ in range(6):
            ids = ids + [int(backend.model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())]
    assert not set(ids[-6:]) & backend._eos_ids
    (one,) = backend.generate([CHATS[0]], GenerationParams(max_new_tokens=6))
    assert one.text == backend.tokenizer.decode(ids[-6:], skip_special_tokens=True)
    assert one.samples[0].finish_reason == "length" and one.usage.n_completion_tokens == 6
    # A stop string cuts the text before it and ends the sample with finish_reason "stop".
    text = one.text
    stop = next(text[i:i + 2] for i in range(2, len(text) - 1) if text[i:i + 2].strip())
    (cut,) = backend.generate([CHATS[0]], GenerationParams(max_new_tokens=6, stop=(stop,)))
    assert cut.samples[0].finish_reason == "stop"
    assert cut.text == text[: text.find(stop)]
    assert cut.samples[0].n_tokens <= 6


def test_info_describes_the_model(tiny_llama, tiny_gpt2, tiny_llama_dir):
    from compressbench.backends.hf import HFBackend

    info = tiny_llama.info()
    assert (info.n_layers, info.d_model, info.n_heads, info.head_dim, info.n_ctx) == (2, 64, 4, 16, 256)
    assert info.family == "llama" and tiny_gpt2.info().family == "gpt2"
    assert info.n_params == sum(p.numel() for p in tiny_llama.model.parameters())
    # Llama: embeddings + untied head (V x 64 each) + 2 layers (q,o: 64x64; k,v: 64x32; mlp 3x64x128; 2 norms) + norm
    v = len(tiny_llama.tokenizer)
    assert info.n_params == 2 * v * 64 + 2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128 + 2 * 64) + 64
    assert info.revision.startswith("sha256:")
    assert HFBackend(str(tiny_llama_dir)).info().revision == info.revision
    assert tiny_gpt2.info().revision != info.revision
    assert tiny_gpt2.count_tokens(["def f(x):", ""]) == [len(tiny_gpt2.tokenizer("def f(x):")["input_ids"]), 0]


def test_load_errors(tmp_path):
    from compressbench.backends.hf import HFBackend

    with pytest.raises(UsageError, match="does not exist"):
        HFBackend(str(tmp_path / "missing.gguf"))
    with pytest.raises(UsageError, match="no config.json"):
        HFBackend(str(tmp_path))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(UsageError, match="not a .gguf"):
        HFBackend(str(tmp_path / "weights.bin"))
    with pytest.raises(BackendUnavailable, match="hub is disabled"):
        HFBackend("no-such-org/no-such-model-xyz")
    with pytest.raises(UsageError, match="dtype"):
        HFBackend(str(tmp_path), dtype="float8")


def test_cuda_matches_cpu(tiny_llama_dir, tiny_gpt2_dir, tiny_llama, tiny_gpt2):
    """On a machine with a GPU: device="cuda" gives the CPU's log-probs (runs only there)."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    from compressbench.backends.hf import HFBackend

    for d, cpu in ((tiny_llama_dir, tiny_llama), (tiny_gpt2_dir, tiny_gpt2)):
        gpu = HFBackend(str(d), device="cuda")
        assert gpu._prefix_group_limit() > 1  # "auto" groups prefixes on CUDA
        np.testing.assert_allclose(gpu.score_matrix(PREFIXES, CONTINUATIONS),
                                   cpu.score_matrix(PREFIXES, CONTINUATIONS), atol=1e-3)
        one_at_a_time = HFBackend(str(d), device="cuda", prefix_batching="off")
        np.testing.assert_allclose(gpu.score_matrix(GROUP_PREFIXES, CONTINUATIONS),
                                   one_at_a_time.score_matrix(GROUP_PREFIXES, CONTINUATIONS), atol=1e-4)
        flat = gpu.score(PREFIXES, CONTINUATIONS[: len(PREFIXES)])
        np.testing.assert_allclose([t.total_nats for t in flat],
                                   [t.total_nats for t in cpu.score(PREFIXES, CONTINUATIONS[: len(PREFIXES)])],
                                   atol=1e-3)
        g = gpu.generate(CHATS, GenerationParams(max_new_tokens=5, temperature=1.0, n=2, seed=1))
        assert g == gpu.generate(CHATS, GenerationParams(max_new_tokens=5, temperature=1.0, n=2, seed=1))


# ---------------------------------------------------------------- prefix batching (grouped score_matrix)
# Prefixes of very different token lengths (1 to ~120 tokens): a group mixes them, so most rows
# attend through left padding.
GROUP_PREFIXES = PREFIXES + [
    "while stack:\n    node = stack.pop()\n",
    "y = [i * i for i in range(100) if i % 3 == 0]  # squares of multiples of three\n" * 2,
    "z",
]


def _spy_shared_forward(backend, monkeypatch) -> list[tuple[int, int, int, int, bool]]:
    """Record (G prefixes, rows, inputs per row, prefix keys, padded) of each shared-prefix forward.

    The real forward still runs."""
    calls: list[tuple[int, int, int, int, bool]] = []
    real = backend._forward_shared_prefix

    def spy(ids, pos, prefix_kv, pad=None):
        calls.append((prefix_kv[0][0].shape[0], ids.shape[0], ids.shape[1], prefix_kv[0][0].shape[2], pad is not None))
        return real(ids, pos, prefix_kv, pad)

    monkeypatch.setattr(backend, "_forward_shared_prefix", spy)
    return calls


@pytest.mark.parametrize("which", MODELS)
@pytest.mark.parametrize("group,max_batch_tokens", [(3, 32768), (16, 32768), (5, 400), (16, 260)])
def test_grouped_score_matrix_matches_per_pair_score(which, group, max_batch_tokens, request, monkeypatch):
    """Several prefixes per forward (forced on CPU) equals one forward per (prefix, continuation) pair."""
    from compressbench.backends.hf import HFBackend

    base = request.getfixturevalue(which)
    backend = HFBackend(base.reference, max_batch_tokens=max_batch_tokens, prefix_batching=group)
    lengths = backend.count_tokens(GROUP_PREFIXES)
    assert max(lengths) > 100 and min(lengths) == 1 and len(GROUP_PREFIXES) % group != 0
    calls = _spy_shared_forward(backend, monkeypatch)
    matrix = backend.score_matrix(GROUP_PREFIXES, CONTINUATIONS)
    flat = base.score([p for p in GROUP_PREFIXES for _ in CONTINUATIONS],
                      [c for _ in GROUP_PREFIXES for c in CONTINUATIONS])
    expected = np.array([t.total_nats for t in flat]).reshape(matrix.shape)
    np.testing.assert_allclose(matrix, expected, atol=1e-4, rtol=0)
    assert np.all(matrix[:, CONTINUATIONS.index("")] == 0.0)
    # The grouped path really ran: forwards over several prefixes at once, some of them padded.
    assert max(g for g, *_ in calls) > 1 and any(padded for *_, padded in calls)
    assert all(rows % g == 0 for g, rows, *_ in calls)
    # The budget holds: rows x (prefix keys + continuation inputs) <= max_batch_tokens.
    assert all(rows * (keys + n_in) <= max_batch_tokens for _, rows, n_in, keys, _ in calls)
    # The same matrix as one prefix at a time, to float rounding.
    off = HFBackend(base.reference, max_batch_tokens=max_batch_tokens, prefix_batching="off")
    np.testing.assert_allclose(matrix, off.score_matrix(GROUP_PREFIXES, CONTINUATIONS), atol=1e-4, rtol=0)


def test_grouped_score_matrix_prefixes_subsets_and_order(tiny_llama_dir, tiny_llama):
    """A prefix's row does not depend on which prefixes share its group, nor on their order."""
    from compressbench.backends.hf import HFBackend

    backend = HFBackend(str(tiny_llama_dir), prefix_batching=4)
    full = backend.score_matrix(GROUP_PREFIXES, CONTINUATIONS)
    rev = backend.score_matrix(GROUP_PREFIXES[::-1], CONTINUATIONS)
    np.testing.assert_allclose(rev[::-1], full, atol=1e-5, rtol=0)
    for i in (0, 2, 4):
        np.testing.assert_allclose(tiny_llama.score_matrix([GROUP_PREFIXES[i]], CONTINUATIONS)[0], full[i],
                                   atol=1e-4, rtol=0)


def test_shared_prefix_attention_matches_masked_softmax():
    """The grouped attention kernel against an independent per-row softmax over [own prefix; causal self]."""
    import torch

    from compressbench.backends.hf import _shared_prefix_attention

    gen = torch.Generator().manual_seed(0)
    n_g, bc, h, hkv, q, d, lp = 3, 2, 4, 2, 5, 8, 7
    lens = [7, 3, 1]  # left-padded prefixes of 7, 3 and 1 tokens
    pk = torch.randn(n_g, hkv, lp, d, generator=gen, dtype=torch.float64)
    pv = torch.randn(n_g, hkv, lp, d, generator=gen, dtype=torch.float64)
    pad = torch.tensor([[j < lp - n for j in range(lp)] for n in lens])
    pk = pk.masked_fill(pad[:, None, :, None], float("nan"))  # padding keys are never looked at ...
    pv = pv.masked_fill(pad[:, None, :, None], 0.0)  # ... and padding values are zeroed by the caller
    query = torch.randn(n_g * bc, h, q, d, generator=gen, dtype=torch.float64)
    key = torch.randn(n_g * bc, hkv, q, d, generator=gen, dtype=torch.float64)
    value = torch.randn(n_g * bc, hkv, q, d, generator=gen, dtype=torch.float64)
    module = type("Layer", (), {"layer_idx": 0})()
    got, _ = _shared_prefix_attention(module, query, key, value, None, scaling=0.3,
                                      compressbench_prefix_kv=[(pk, pv)], compressbench_prefix_pad=pad)
    assert got.shape == (n_g * bc, q, h, d)
    for r in range(n_g * bc):
        p = r // bc
        real = lp - lens[p]
        for head in range(h):
            kv_head = head // (h // hkv)
            for i in range(q):
                keys = torch.cat([pk[p, kv_head, real:], key[r, kv_head, : i + 1]])
                values = torch.cat([pv[p, kv_head, real:], value[r, kv_head, : i + 1]])
                weights = torch.softmax(keys @ query[r, head, i] * 0.3, dim=0)
                torch.testing.assert_close(got[r, i, head], weights @ values, atol=1e-12, rtol=0)


def test_prefix_batching_option(tiny_llama_dir, tiny_llama):
    import torch

    from compressbench.backends.hf import HFBackend

    for bad in (0, -2, "on", 1.5, True, None):
        with pytest.raises(UsageError, match="prefix_batching"):
            HFBackend(str(tiny_llama_dir), prefix_batching=bad)
    assert tiny_llama.prefix_batching == "auto" and tiny_llama._prefix_group_limit() == 1  # CPU: one at a time
    backend = HFBackend(str(tiny_llama_dir), prefix_batching="auto")
    backend.device = torch.device("cuda")  # the policy only (nothing runs): grouped on CUDA
    assert backend._prefix_group_limit() > 1000
    # Groups respect the limit and the token budget, longest prefixes first.
    backend = HFBackend(str(tiny_llama_dir), prefix_batching=3, max_batch_tokens=99)
    groups = backend._prefix_groups([10, 50, 5, 30, 20, 1, 2], vocab=backend._vocab())
    assert groups == [[1], [3, 4, 0], [2, 6, 5]]  # 2 x 50 > 99; 3 x 30 <= 99; then at most 3
    # Without the shared-prefix attention (other families) there is no grouping.
    backend._shared_prefix_attn = False
    assert backend._prefix_group_limit() == 1
