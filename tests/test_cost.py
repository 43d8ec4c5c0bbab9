"""Cost model: parameter counts and FLOPs against hand computations and transformers' own
parameter counts; dollars on a small usage table computed by hand."""

from __future__ import annotations

import math

import pytest

from compressbench.measure.cost import (
    LocalRate,
    PriceTable,
    generation_flops,
    model_info_from_config,
    prefill_flops,
    role_cost,
    shared_prefix_flops,
)
from compressbench.core.errors import ConfigError
from compressbench.core.types import ModelInfo

# SmolLM2-135M (Llama architecture, tied embeddings, grouped-query attention)
LLAMA_CFG = {
    "model_type": "llama", "hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9,
    "num_key_value_heads": 3, "head_dim": 64, "intermediate_size": 1536, "vocab_size": 49152,
    "tie_word_embeddings": True, "max_position_embeddings": 8192,
}
# GPT-2 small
GPT2_CFG = {"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12, "vocab_size": 50257,
            "n_positions": 1024}


def test_param_counts_match_published_sizes():
    # published sizes: GPT-2 small 124,439,808; SmolLM2-135M 134,515,008
    assert model_info_from_config(GPT2_CFG).n_params == 124_439_808
    llama = model_info_from_config(LLAMA_CFG)
    # hand: 49152*576 (tied) + 576 + 30*(576*576 + 2*576*192 + 576*576 + 3*576*1536 + 2*576)
    assert llama.n_params == 49152 * 576 + 576 + 30 * (2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536 + 2 * 576)
    assert llama.n_params == 134_515_008
    assert llama.n_layers == 30 and llama.n_heads * llama.head_dim == 576


@pytest.mark.torch
@pytest.mark.parametrize("kind", ["llama", "gpt2", "mixtral"])
def test_param_counts_match_transformers(kind):
    """Tiny random models: our count from the config equals transformers' own count."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if kind == "llama":
        cfg = transformers.LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96,
                                       num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                       tie_word_embeddings=False)
        model = transformers.LlamaForCausalLM(cfg)
    elif kind == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=300, n_embd=64, n_layer=2, n_head=4, n_positions=128)
        model = transformers.GPT2LMHeadModel(cfg)
    else:
        cfg = transformers.MixtralConfig(vocab_size=300, hidden_size=64, intermediate_size=48,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         num_local_experts=4, num_experts_per_tok=2)
        model = transformers.MixtralForCausalLM(cfg)
    info = model_info_from_config(cfg.to_dict())
    n_unique = sum(p.numel() for p in model.parameters())  # shared (tied) tensors counted once
    assert info.n_params == n_unique
    if kind == "mixtral":
        # active: 2 of 4 experts (3*64*48 weights each) per layer dropped
        assert info.n_active_params == info.n_params - 2 * 2 * 3 * 64 * 48


def _sum_over_positions(info: ModelInfo, first: int, last: int) -> float:
    """Independent form: sum over positions t of 2N plus, per layer, Q K^T (2*t*d_attn) and A V (2*t*d_attn)."""
    d_attn = info.n_heads * info.head_dim
    per_layer = lambda t: 2 * t * d_attn + 2 * t * d_attn  # noqa: E731
    return sum(2 * info.n_params + info.n_layers * per_layer(t) for t in range(first, last + 1))


def test_flops_llama_hand_computation():
    info = model_info_from_config(LLAMA_CFG)
    # prompt of 100 tokens, 20 generated: by hand
    # prefill  = 2*134515008*100 + 2*30*576*100*101 = 26_903_001_600 + 349_056_000
    # generate = 2*134515008*20  + 2*30*576*20*(2*100+20+1) = 5_380_600_320 + 152_755_200
    assert prefill_flops(info, 100) == 27_252_057_600
    assert generation_flops(info, 100, 20) == 5_533_355_520
    assert prefill_flops(info, 100) == _sum_over_positions(info, 1, 100)
    assert generation_flops(info, 100, 20) == _sum_over_positions(info, 101, 120)


def test_flops_gpt2_hand_computation():
    info = model_info_from_config(GPT2_CFG)
    # prefill of 10 tokens: 2*124439808*10 + 2*12*768*10*11 = 2_488_796_160 + 2_027_520
    assert prefill_flops(info, 10) == 2_490_823_680
    # 5 tokens after 10: 2*124439808*5 + 2*12*768*5*(20+5+1) = 1_244_398_080 + 2_396_160
    assert generation_flops(info, 10, 5) == 1_246_794_240
    assert generation_flops(info, 10, 5) == _sum_over_positions(info, 11, 15)


@pytest.mark.parametrize("n_tokens", [512, 8192])
def test_prefill_matches_a_hand_count_at_long_contexts(n_tokens):
    """SmolLM2-135M prefill: 2N per token plus, per layer and query position t (causal), Q K^T and
    A V at 2*t*d_attn FLOPs each. At 512 tokens that is 146.8 GFLOP (the old QK^T-only term gave
    142.3, 3% low); at 8k tokens 4.52 TFLOP (the old term: 3.36, 26% low)."""
    info = model_info_from_config(LLAMA_CFG)
    n, layers, d_attn = 134_515_008, 30, 9 * 64
    linear = 2 * n * n_tokens
    attention = 0
    for t in range(1, n_tokens + 1):
        attention += layers * (2 * t * d_attn + 2 * t * d_attn)
    assert prefill_flops(info, n_tokens) == linear + attention
    expected = {512: 146.82e9, 8192: 4.5237e12}[n_tokens]
    assert prefill_flops(info, n_tokens) == pytest.approx(expected, rel=1e-4)
    # the method's per-token attention term 2*n_layer*n_ctx*d_attn summed over the P positions
    method = linear + sum(2 * layers * t * d_attn for t in range(1, n_tokens + 1)) * 2
    assert prefill_flops(info, n_tokens) == method


@pytest.mark.torch
def test_prefill_matches_torch_flop_counter():
    """A real forward of a tiny Llama (eager attention) under torch's FlopCounterMode: its matmul
    count equals 2*P*(weights used as matrices) plus Q K^T and A V over the full P x P square
    (FlopCounterMode does not skip the causal mask's upper triangle); our causal count is that
    square's lower triangle with the diagonal: 4*L*P^2*d_attn * (P+1)/(2P)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                                   num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                                   max_position_embeddings=256, attn_implementation="eager")
    model = transformers.LlamaForCausalLM(cfg).eval()
    info = model_info_from_config(cfg.to_dict())
    n_tokens = 40
    ids = torch.randint(0, 300, (1, n_tokens))
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(ids)
    counted = counter.get_total_flops()
    d, layers, d_attn = 64, 3, 4 * 16
    norm_params = d + layers * 2 * d  # RMSNorm weights: in N, but no matmul
    full_square_attention = layers * 2 * (2 * n_tokens * n_tokens * d_attn)
    assert counted == 2 * n_tokens * (info.n_params - norm_params) + full_square_attention
    ours = prefill_flops(info, n_tokens)
    assert ours - 2 * n_tokens * info.n_params == full_square_attention * (n_tokens + 1) / (2 * n_tokens)


def test_moe_uses_active_params():
    dense = ModelInfo("d", n_params=1000, n_layers=2, n_heads=2, head_dim=4)
    moe = ModelInfo("m", n_params=1000, n_active_params=400, n_layers=2, n_heads=2, head_dim=4)
    # prefill of 3 tokens: 2*N*3 + 2*2*8*3*4 (= 2*L*d_attn*P*(P+1))
    assert prefill_flops(dense, 3) == 6000 + 4 * 8 * 12
    assert prefill_flops(moe, 3) == 2400 + 4 * 8 * 12


def test_unknown_stays_unknown():
    info = model_info_from_config(GPT2_CFG)
    assert prefill_flops(info, None) is None
    assert generation_flops(info, 10, None) is None
    assert prefill_flops(ModelInfo("x", n_params=100), 10) is None  # shape unknown
    rc = role_cost("predictor", {"n_prompt_tokens": None, "n_completion_tokens": 5, "n_calls": 1},
                   info, paid_api=True, price=PriceTable.load().lookup("gpt-4o"))
    assert rc.flops is None and rc.api_usd is None


def test_role_cost_averages_calls():
    info = model_info_from_config(GPT2_CFG)
    # 3 calls, 30 prompt and 15 completion tokens in all -> 3 calls of P=10, G=5
    rc = role_cost("compressor", {"n_prompt_tokens": 30, "n_completion_tokens": 15, "n_calls": 3}, info)
    assert rc.prefill_flops == 3 * 2_490_823_680
    assert rc.generation_flops == 3 * 1_246_794_240
    assert rc.flops == 3 * (2_490_823_680 + 1_246_794_240)
    assert rc.api_usd is None  # local role: FLOPs only


def test_shared_prefix_scoring_is_one_prefill_plus_continuations():
    """The MI scorer's row: prefix of 10 tokens once, continuations of 3 and 5 tokens after it, each
    attending to the prefix and itself (positions 11-13 and 11-15), never to the other continuation."""
    info = model_info_from_config(GPT2_CFG)
    by_positions = (_sum_over_positions(info, 1, 10) + _sum_over_positions(info, 11, 13)
                    + _sum_over_positions(info, 11, 15))
    assert shared_prefix_flops(info, 10, 8, 3 * 3 + 5 * 5) == by_positions
    usage = {"n_prompt_tokens": 18, "n_completion_tokens": 0, "n_calls": 1, "shared_prefix_calls": [[10, 8, 34]]}
    rc = role_cost("scorer", usage, info)
    assert rc.flops == by_positions
    # one long prefill of all 18 tokens (what the record's totals alone would imply) costs more
    assert prefill_flops(info, 18) > by_positions
    # mixed with a plain call (P=10, G=5): that call is charged on its own, the shared one exactly
    mixed = {"n_prompt_tokens": 28, "n_completion_tokens": 5, "n_calls": 2, "shared_prefix_calls": [[10, 8, 34]]}
    assert role_cost("scorer", mixed, info).flops == by_positions + _sum_over_positions(info, 1, 15)


def test_dollars_on_usage_table():
    table = PriceTable.load()
    gpt4o = table.lookup("GPT-4o")
    assert (gpt4o.input_usd_per_mtok, gpt4o.output_usd_per_mtok) == (2.50, 10.00)
    assert "as of" in gpt4o.source and gpt4o.as_of
    assert table.lookup("gpt-4o-2024-08-06") is gpt4o
    usage_rows = [  # (prompt, completion, cached) per query for a paid predictor
        (1200, 30, None), (800, 10, None), (2000, 50, 1000),
    ]
    total = sum(role_cost("predictor", {"n_prompt_tokens": p, "n_completion_tokens": c,
                                        "n_cached_prompt_tokens": k, "n_calls": 1},
                          None, paid_api=True, price=gpt4o).api_usd for p, c, k in usage_rows)
    # by hand: (1200*2.5 + 30*10) + (800*2.5 + 10*10) + (1000*2.5 + 1000*1.25 + 50*10) = 3300+2100+4250
    assert total == pytest.approx(9650 / 1e6, rel=1e-12)
    # a local role is never billed in API dollars, even with a price
    local = role_cost("compressor", {"n_prompt_tokens": 1000, "n_completion_tokens": 100, "n_calls": 1},
                      None, paid_api=False, price=gpt4o)
    assert local.api_usd is None


def test_local_rate_from_flops():
    info = model_info_from_config(GPT2_CFG)
    rate = LocalRate(usd_per_gpu_hour=3.6, effective_flops_per_s=1e12)
    rc = role_cost("compressor", {"n_prompt_tokens": 10, "n_completion_tokens": 5, "n_calls": 1},
                   info, local_rate=rate)
    flops = 2_490_823_680 + 1_246_794_240
    assert rc.local_usd == pytest.approx(flops / 1e12 / 3600 * 3.6)
    assert rc.api_usd is None


def test_bad_price_tables(tmp_path):
    with pytest.raises(ConfigError, match="as_of"):
        PriceTable.from_dict({"models": {"m": {"input_usd_per_mtok": 1, "output_usd_per_mtok": 2}}})
    with pytest.raises(ConfigError, match="output_usd_per_mtok"):
        PriceTable.from_dict({"models": {"m": {"input_usd_per_mtok": 1, "as_of": "2025-08-01"}}})
    with pytest.raises(ConfigError, match="does not exist"):
        PriceTable.load(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="effective_flops_per_s"):
        LocalRate(1.0, 0.0)


def test_every_packaged_price_is_dated():
    table = PriceTable.load()
    assert table.prices
    for price in table.prices.values():
        assert price.as_of.startswith("20") and "public list price as of" in price.source
        assert price.output_usd_per_mtok >= price.input_usd_per_mtok > 0
        assert math.isfinite(price.cached_input_usd_per_mtok)


# ----------------------------------------------------------------------------- found by mutation testing
#
# Each test below pins down behaviour that a mutant of compressbench/measure/cost.py changed while every test
# above still passed (see TESTING.md).


def test_a_role_with_no_calls_costs_a_known_zero():
    from compressbench.measure.cost import LocalRate, RoleCost, role_cost

    info = ModelInfo(reference="m", n_params=1000, n_layers=2, n_heads=2, head_dim=4)
    usage = {"n_prompt_tokens": 0, "n_completion_tokens": 0, "n_calls": 0}
    rate = LocalRate(2.0, 1e12)
    assert role_cost("judge", usage, info, paid_api=True) == RoleCost("judge", 0, 0.0, 0.0, 0.0, 0.0, 0.0, None)
    assert role_cost("judge", usage, info) == RoleCost("judge", 0, 0.0, 0.0, 0.0, 0.0, None, None)
    assert role_cost("judge", usage, info, local_rate=rate) == RoleCost("judge", 0, 0.0, 0.0, 0.0, 0.0, None, 0.0)
    assert role_cost("judge", usage, info, paid_api=True, local_rate=rate) == RoleCost(
        "judge", 0, 0.0, 0.0, 0.0, 0.0, 0.0, None)


def test_role_cost_records_calls_and_unknowns():
    from compressbench.measure.cost import role_cost

    info = ModelInfo(reference="m", n_params=1000, n_layers=2, n_heads=2, head_dim=4)
    rc = role_cost("predictor", {"n_prompt_tokens": 30, "n_completion_tokens": 6, "n_calls": 3}, info)
    assert (rc.role, rc.n_calls, rc.n_prompt_tokens, rc.n_completion_tokens) == ("predictor", 3, 30.0, 6.0)
    one = role_cost("predictor", {"n_prompt_tokens": 30, "n_completion_tokens": 6}, info)  # calls unknown: 1
    assert one.n_calls is None and one.flops == pytest.approx(2 * 1000 * 36 + 2 * 2 * 8 * 36 * 37, rel=1e-12)
    nan = role_cost("predictor", {"n_prompt_tokens": float("nan"), "n_completion_tokens": 6, "n_calls": 1}, info)
    assert nan.n_prompt_tokens is None and nan.flops is None  # NaN is unknown, never a number


def test_local_rate_bounds_and_unknown_flops():
    from compressbench.measure.cost import LocalRate

    assert LocalRate(0.0, 0.5).usd(3600.0) == 0.0  # free hardware and a slow one are allowed
    assert LocalRate(0.5, 0.5).usd(3600.0) == pytest.approx(1.0)
    assert LocalRate(1.0, 1.0).usd(None) is None
    with pytest.raises(ConfigError, match=r"^local_rate needs usd_per_gpu_hour >= 0 and effective_flops_per_s > 0, "
                                          r"got -1\.0 and 1\.0$"):
        LocalRate(-1.0, 1.0)
    with pytest.raises(ConfigError, match="got 1.0 and 0.0"):
        LocalRate(1.0, 0.0)


def test_price_table_fields_local_rate_and_errors(tmp_path):
    from compressbench.measure.cost import LocalRate, PriceTable

    table = PriceTable.from_dict({
        "models": {"Big-Model": {"input_usd_per_mtok": 1, "output_usd_per_mtok": 2, "as_of": "2026-01-01",
                                 "aliases": ["big"]}},
        "local_rate": {"usd_per_gpu_hour": 2.5, "effective_flops_per_s": 1e15}})
    assert table.path == "<dict>" and table.local_rate == LocalRate(2.5, 1e15)
    price = table.lookup("BIG")
    assert price is table.lookup("big-model") and price.model == "Big-Model" and price.source == ""
    assert PriceTable.from_dict({"models": {}}).local_rate is None
    with pytest.raises(ConfigError, match=r"^<dict>: 'models' must be a mapping of model name -> prices$"):
        PriceTable.from_dict({"models": ["a"]})
    with pytest.raises(ConfigError, match=r"^<dict>: local_rate needs usd_per_gpu_hour and effective_flops_per_s; "
                                          r"problem: KeyError\('effective_flops_per_s'\)$"):
        PriceTable.from_dict({"models": {}, "local_rate": {"usd_per_gpu_hour": 1}})
    path = tmp_path / "p.yaml"
    path.write_text("models:\n  m: {input_usd_per_mtok: 1, output_usd_per_mtok: 2, as_of: '2026', source: 'Liste de prix €'}\n"
                    "local_rate: {usd_per_gpu_hour: 1, effective_flops_per_s: 2}\n", encoding="utf-8")
    loaded = PriceTable.load(path)
    assert loaded.path == str(path) and loaded.lookup("m").source == "Liste de prix €"
    assert loaded.local_rate == LocalRate(1.0, 2.0)
    path.write_text("models: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"^price table {path} is not valid YAML: "):
        PriceTable.load(path)


def test_model_info_from_dict():
    from compressbench.measure.cost import model_info_from_dict

    info = ModelInfo(reference="x", n_params=5)
    assert model_info_from_dict(info) is info and model_info_from_dict(None) is None
    got = model_info_from_dict({"n_params": 7, "n_layers": 2, "vendor": "acme", "extra": {"ignored": 1}})
    assert got == ModelInfo(reference="", n_params=7, n_layers=2, extra={"vendor": "acme"})
    assert model_info_from_dict({"n_params": 7}, reference="ref").reference == "ref"
    assert model_info_from_dict({"n_params": 7, "reference": "own"}, reference="ref").reference == "own"


def test_unknown_inputs_give_none_not_an_error():
    from compressbench.measure.cost import LocalRate, generation_flops, role_cost

    no_heads = ModelInfo(reference="m", n_params=1000, n_layers=2)  # attention width unknown
    no_params = ModelInfo(reference="m", n_layers=2, n_heads=2, head_dim=4)
    assert generation_flops(no_heads, 10, 5) is None and generation_flops(no_params, 10, 5) is None
    info = ModelInfo(reference="m", n_params=1000, n_layers=2, n_heads=2, head_dim=4)
    usage = {"n_prompt_tokens": 10, "n_completion_tokens": 5, "n_calls": 1}
    local = role_cost("compressor", usage, info)
    assert local.api_usd is None and local.local_usd is None
    paid_no_price = role_cost("compressor", usage, info, paid_api=True)
    assert paid_no_price.api_usd is None
    no_info = role_cost("compressor", usage, None, local_rate=LocalRate(1.0, 1.0))
    assert (no_info.prefill_flops, no_info.generation_flops, no_info.flops, no_info.local_usd) == (None, None, None, None)
    no_completion = role_cost("compressor", {"n_prompt_tokens": 10, "n_calls": 1}, info)
    assert no_completion.generation_flops is None and no_completion.flops is None
    assert no_completion.prefill_flops == pytest.approx(2 * 1000 * 10 + 2 * 2 * 8 * 10 * 11)


def test_attention_width_and_unknown_shapes():
    from compressbench.measure.cost import d_attn, prefill_flops

    assert d_attn(ModelInfo(reference="m", n_heads=4, d_model=64)) == 64          # head_dim = d_model // heads
    assert d_attn(ModelInfo(reference="m", n_heads=4, d_model=66)) == 64          # floor division
    assert d_attn(ModelInfo(reference="m", n_heads=4, head_dim=8, d_model=64)) == 32  # head_dim given wins
    assert d_attn(ModelInfo(reference="m", n_heads=4)) is None
    assert d_attn(ModelInfo(reference="m", d_model=64)) is None
    assert prefill_flops(ModelInfo(reference="m", n_params=1000, n_layers=2), 10) is None  # no width
    assert prefill_flops(ModelInfo(reference="m", n_layers=2, n_heads=2, head_dim=4), 10) is None  # no params


# --- found by mutation testing: config parsing, pinned without torch (the tests against transformers'
# own parameter counts import torch, which scripts/mutation.sh cannot run). Every count is written
# out by hand: d = 64 hidden, V = 100 vocab, L = 2 layers, h = 4 heads.


def test_gpt2_configs_parsed_by_hand():
    base = {"n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": 100}
    per_layer = 12 * 64 * 64 + 13 * 64  # qkv, out, 4d MLP weights and their biases, two LayerNorms
    info = model_info_from_config({**base, "model_type": "gpt2", "n_positions": 32}, reference="g")
    assert info == ModelInfo(reference="g", n_params=100 * 64 + 32 * 64 + 2 * 64 + 2 * per_layer,
                             n_active_params=100 * 64 + 32 * 64 + 2 * 64 + 2 * per_layer, n_layers=2, d_model=64,
                             n_heads=4, head_dim=16, n_ctx=32, family="gpt2")
    # recognised by its keys alone; positions from n_ctx, else GPT-2's 1024
    by_keys = model_info_from_config({**base, "n_ctx": 48})
    assert (by_keys.family, by_keys.n_ctx, by_keys.n_params) == ("gpt2", 48, 100 * 64 + 48 * 64 + 2 * 64 + 2 * per_layer)
    plain = model_info_from_config({**base, "model_type": "GPT2"})
    assert (plain.family, plain.n_ctx, plain.n_params) == ("gpt2", 1024, 100 * 64 + 1024 * 64 + 2 * 64 + 2 * per_layer)
    assert model_info_from_config({**base, "model_type": "distilgpt2-like"}).family == "distilgpt2-like"
    assert type(info.head_dim) is int and model_info_from_config(base).reference == ""


def test_llama_style_configs_parsed_by_hand():
    cfg = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "vocab_size": 100, "intermediate_size": 128, "tie_word_embeddings": True,
           "max_position_embeddings": 512}
    # per layer: q (64x64), k and v (64 x 2 kv heads x 16), o (64x64), gated MLP 3 x 64 x 128, two RMSNorms
    layer = 64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128 + 2 * 64
    info = model_info_from_config(cfg, reference="l")
    assert info == ModelInfo(reference="l", n_params=100 * 64 + 64 + 2 * layer, n_active_params=100 * 64 + 64 + 2 * layer,
                             n_layers=2, d_model=64, n_heads=4, head_dim=16, n_ctx=512, family="llama")
    # untied output embedding; biases on q, k, v and o where the config says so
    untied = model_info_from_config({**cfg, "tie_word_embeddings": False, "attention_bias": True})
    assert untied.n_params == 2 * 100 * 64 + 64 + 2 * (layer + 64 + 2 * 32 + 64)
    # defaults: kv heads = heads, head_dim = d / h, MLP width 4d, untied, no n_ctx, no family
    bare = model_info_from_config({"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                                   "vocab_size": 100})
    bare_layer = 4 * 64 * 64 + 3 * 64 * 256 + 2 * 64
    assert (bare.n_params, bare.head_dim, bare.n_ctx, bare.family) == (2 * 100 * 64 + 64 + 2 * bare_layer, 16, None, None)
    # an explicit head_dim that is not d / h (Gemma-style)
    wide = model_info_from_config({**cfg, "head_dim": 32})
    assert wide.head_dim == 32
    assert wide.n_params == 100 * 64 + 64 + 2 * (64 * 128 + 2 * 64 * 64 + 128 * 64 + 3 * 64 * 128 + 2 * 64)


def test_moe_configs_parsed_by_hand():
    cfg = {"model_type": "mixtral", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 4, "vocab_size": 100, "intermediate_size": 128, "num_local_experts": 4,
           "num_experts_per_tok": 2}
    attn = 4 * 64 * 64
    total = 2 * 100 * 64 + 64 + 2 * (attn + 4 * 3 * 64 * 128 + 64 * 4 + 2 * 64)  # 4 experts and the router
    active = 2 * 100 * 64 + 64 + 2 * (attn + 2 * 3 * 64 * 128 + 64 * 4 + 2 * 64)  # 2 experts per token
    info = model_info_from_config(cfg)
    assert (info.n_params, info.n_active_params, info.family) == (total, active, "mixtral")
    # Qwen-MoE's names: num_experts and a smaller per-expert width
    qwen = model_info_from_config({**{k: v for k, v in cfg.items() if k != "num_local_experts"},
                                   "model_type": "qwen2_moe", "num_experts": 4, "moe_intermediate_size": 32})
    assert qwen.n_params == 2 * 100 * 64 + 64 + 2 * (attn + 4 * 3 * 64 * 32 + 64 * 4 + 2 * 64)
    assert qwen.n_active_params == 2 * 100 * 64 + 64 + 2 * (attn + 2 * 3 * 64 * 32 + 64 * 4 + 2 * 64)
    # two experts, one per token (Switch-style) still an MoE
    two = model_info_from_config({**cfg, "num_local_experts": 2, "num_experts_per_tok": 1})
    assert (two.n_params, two.n_active_params) == (
        2 * 100 * 64 + 64 + 2 * (attn + 2 * 3 * 64 * 128 + 64 * 2 + 2 * 64),
        2 * 100 * 64 + 64 + 2 * (attn + 1 * 3 * 64 * 128 + 64 * 2 + 2 * 64))
    # one expert, or no experts-per-token: a dense MLP
    dense = 2 * 100 * 64 + 64 + 2 * (attn + 3 * 64 * 128 + 2 * 64)
    for override in ({"num_local_experts": 1}, {"num_experts_per_tok": 0}):
        d = model_info_from_config({**cfg, **override})
        assert (d.n_params, d.n_active_params) == (dense, dense)


@pytest.mark.parametrize("cfg", [
    {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100},
    {"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": 100},
])
def test_a_config_missing_a_shape_key_names_it(cfg):
    for key in [k for k in cfg if k != "model_type"]:
        with pytest.raises(ConfigError) as err:
            model_info_from_config({k: v for k, v in cfg.items() if k != key})
        assert str(err.value) == (f"model config lacks {key!r}: cannot derive the model's shape for FLOPs; set "
                                  "n_params, n_layers, n_heads and head_dim in the model's info instead")


def test_role_cost_unknown_parts_stay_unknown_without_errors():
    """Found by mutation testing: a shape or token count that is unknown gives None, never a TypeError."""
    from compressbench.measure.cost import LocalRate, role_cost

    shape = ModelInfo(reference="m", n_params=1000, n_layers=2, d_model=8, n_heads=2, head_dim=4)
    no_params = ModelInfo(reference="m", n_layers=2, d_model=8, n_heads=2, head_dim=4)
    rate = LocalRate(usd_per_gpu_hour=3.6, effective_flops_per_s=1e12)
    shared = {"n_prompt_tokens": 10 + 6, "n_completion_tokens": 0, "n_calls": 1,
              "shared_prefix_calls": [(10, 6, 20)]}
    # only shared-prefix calls, shape unknown: prefill and generation both unknown
    rc = role_cost("scorer", shared, no_params, local_rate=rate)
    assert (rc.prefill_flops, rc.generation_flops, rc.flops, rc.local_usd) == (None, None, None, None)
    # a shared-prefix call next to ordinary calls, shape unknown
    mixed = {**shared, "n_prompt_tokens": 16 + 40, "n_completion_tokens": 5, "n_calls": 3}
    assert role_cost("scorer", mixed, no_params).flops is None
    # known shape: the shared call charged exactly, the generation of a scorer zero
    known = role_cost("scorer", shared, shape, local_rate=rate)
    assert known.generation_flops == 0.0 and known.flops == shared_prefix_flops(shape, 10, 6, 20)
    assert known.local_usd == pytest.approx(known.flops / 1e12 / 3600 * 3.6)
    # prompt tokens known, completion tokens unknown: prefill known, generation and dollars unknown
    half = role_cost("predictor", {"n_prompt_tokens": 30, "n_completion_tokens": None, "n_calls": 2}, shape,
                     local_rate=rate)
    assert half.prefill_flops == 2 * prefill_flops(shape, 15) and half.generation_flops is None
    assert half.flops is None and half.local_usd is None
