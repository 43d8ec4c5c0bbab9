"""Cost model: FLOPs per role from model shape and token usage, dollars from a dated price table.

FLOPs (forward pass, multiply-add = 2 FLOPs). For a model with N parameters (MoE: active
parameters plus router), ``n_layers`` layers and attention width ``d_attn = n_heads * head_dim``,
the token at context position ``t`` (it attends to ``t`` tokens, itself included) costs::

    flops(t) = 2 * N + 4 * n_layers * t * d_attn

``2 * N`` is every weight matrix (projections, MLP, output head); the attention term counts the two
score products of each layer: ``Q K^T`` (``2 * t * d_attn``) and ``A V`` (``2 * t * d_attn``).
Summed over a call's positions this is the method's attention cost ``2 * n_layer * n_ctx * d_attn``
per token with ``n_ctx`` the length attended to, i.e. ``2 * n_layers * d_attn * P^2`` for a
P-token prefill (tests check it against a hand count at 512 and 8k tokens and against torch's
``FlopCounterMode`` on a real forward). Summing over the positions of one call with ``P`` prompt
tokens followed by ``G`` generated tokens gives the two parts reported separately::

    prefill_flops(P)      = sum_{t=1..P}     flops(t) = 2*N*P + 2*n_layers*d_attn * P*(P+1)
    generation_flops(P,G) = sum_{t=P+1..P+G} flops(t) = 2*N*G + 2*n_layers*d_attn * G*(2*P+G+1)

A run record only keeps the totals over its calls (``n_prompt_tokens``, ``n_completion_tokens``,
``n_calls``), so the cost of a role is ``n_calls`` times the cost of one call of average length
(``P = n_prompt_tokens / n_calls``, ``G = n_completion_tokens / n_calls``). Because the attention
term is quadratic in length, this slightly *underestimates* it when calls differ in length.
A call that samples several continuations from one prompt (``n > 1``) is charged as one
continuation of their total length, which overstates its attention term a little. Calls that
score continuations after one shared prefix (the MI scorer's rows) are recorded as such
(``shared_prefix_calls``: prefix tokens, total and squared continuation tokens) and charged exactly
by :func:`shared_prefix_flops`: one prefill of the prefix plus continuations that attend to it. A
fourth element ``n`` (``[P, S1, S2, n]``) says that prefill was shared by ``n`` records (the sweep
prefills each scoring prefix once per scoring round for every group of the dataset,
:func:`compressbench.engine.model_work.share_prefills`): this record is charged ``1/n`` of it
(:func:`prefill_share`), so the records of a round add up to one prefill per prefix; ``n = 0``
charges no prefill (nothing was scored after it, or, in records of older versions, the prefill
was charged whole to another group's record).
``N`` counts every parameter, embeddings included: the
tied/untied output projection costs ``2 * d_model * vocab`` per token, which the embedding count
matches for tied models and slightly overstates (by the input lookup table) for untied ones.

:func:`role_cost` is the one FLOPs/cost function: the sweep writes its FLOPs into every record
(``flops``), the summary sums them and the report recomputes them with the same call.

Dollars: ``usd = (n_prompt - n_cached) * input + n_cached * cached_input + n_completion * output``,
prices in USD per million tokens, from ``configs/prices.yaml`` (each entry dated), applied only to
roles whose model is marked ``paid_api``. Local roles report FLOPs and, when the user sets a
:class:`LocalRate`, a GPU-hour dollar estimate kept apart from API dollars.

Unknown stays unknown: a ``None`` input yields ``None`` (never 0).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from compressbench.core.errors import ConfigError
from compressbench.core.types import ModelInfo
from compressbench.core.paths import PACKAGE_DIR

log = logging.getLogger(__name__)

#: Roles whose usage a run records.
ROLES: tuple[str, ...] = ("compressor", "predictor", "scorer", "judge")

_MTOK = 1_000_000.0


# --------------------------------------------------------------------------------------------
# model shape


def d_attn(info: ModelInfo) -> int | None:
    """Attention width ``n_heads * head_dim`` (head_dim defaults to ``d_model // n_heads``); None if unknown."""
    if info.n_heads is None:
        return None
    head_dim = info.head_dim
    if head_dim is None and info.d_model is not None:
        head_dim = info.d_model // info.n_heads
    return None if head_dim is None else info.n_heads * head_dim


def active_params(info: ModelInfo) -> int | None:
    """Parameters used per token: ``n_active_params`` (MoE) if known, else ``n_params``."""
    return info.n_active_params if info.n_active_params is not None else info.n_params


def model_info_from_config(config: Mapping[str, Any], reference: str = "") -> ModelInfo:
    """Shape and parameter count of a decoder-only transformer from its Hugging Face config dict.

    Understands Llama-style configs (``num_hidden_layers``, ``hidden_size``, ``num_attention_heads``,
    ``num_key_value_heads``, ``head_dim``, ``intermediate_size``, gated MLP, RMSNorm; Llama, Mistral,
    Qwen2, SmolLM; Mixtral/Qwen-MoE with ``num_local_experts``/``num_experts`` and
    ``num_experts_per_tok``) and GPT-2 configs (``n_layer``, ``n_embd``, ``n_head``, ``n_positions``).

    Parameter count, Llama-style (V vocab, d hidden, L layers, h heads, k kv heads, a head_dim,
    f MLP width, biases only where the config says ``attention_bias``)::

        N = V*d * (1 if tied else 2) + d + L * (d*h*a + 2*d*k*a + h*a*d + 3*d*f + 2*d)

    MoE: the MLP term is ``E * 3*d*f + d*E`` (experts plus router); active parameters keep
    ``k_act`` of the ``E`` experts plus the router. GPT-2 (with biases, learned positions P)::

        N = V*d + P*d + 2*d + L * (12*d*d + 13*d)
    """
    mt = str(config.get("model_type", "")).lower()
    gpt2 = "n_embd" in config or mt == "gpt2"
    keys = ("n_embd", "n_layer", "n_head", "vocab_size") if gpt2 else (
        "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    missing = [k for k in keys if k not in config]
    if missing:
        raise ConfigError(
            f"model config lacks {missing[0]!r}: cannot derive the model's shape for FLOPs; "
            "set n_params, n_layers, n_heads and head_dim in the model's info instead"
        )
    if gpt2:
        d = int(config["n_embd"])
        n_layers = int(config["n_layer"])
        n_heads = int(config["n_head"])
        vocab = int(config["vocab_size"])
        n_pos = int(config.get("n_positions", config.get("n_ctx", 1024)))
        n_params = vocab * d + n_pos * d + 2 * d + n_layers * (12 * d * d + 13 * d)
        return ModelInfo(reference=reference, n_params=n_params, n_active_params=n_params,
                         n_layers=n_layers, d_model=d, n_heads=n_heads, head_dim=d // n_heads,
                         n_ctx=n_pos, family=mt or "gpt2")
    d = int(config["hidden_size"])
    n_layers = int(config["num_hidden_layers"])
    n_heads = int(config["num_attention_heads"])
    vocab = int(config["vocab_size"])
    n_kv = int(config.get("num_key_value_heads") or n_heads)
    head_dim = int(config.get("head_dim") or d // n_heads)
    ff = int(config.get("intermediate_size") or 4 * d)
    tied = bool(config.get("tie_word_embeddings", False))
    attn = d * n_heads * head_dim + 2 * d * n_kv * head_dim + n_heads * head_dim * d
    if config.get("attention_bias"):
        attn += n_heads * head_dim + 2 * n_kv * head_dim + d
    n_experts = int(config.get("num_local_experts") or config.get("num_experts") or 0)
    k_act = int(config.get("num_experts_per_tok") or 0)
    if n_experts > 1 and k_act > 0:
        ff_e = int(config.get("moe_intermediate_size") or ff)
        mlp_total = n_experts * 3 * d * ff_e + d * n_experts
        mlp_active = k_act * 3 * d * ff_e + d * n_experts
    else:
        mlp_total = mlp_active = 3 * d * ff
    base = vocab * d * (1 if tied else 2) + d
    n_params = base + n_layers * (attn + mlp_total + 2 * d)
    n_active = base + n_layers * (attn + mlp_active + 2 * d)
    return ModelInfo(reference=reference, n_params=n_params, n_active_params=n_active,
                     n_layers=n_layers, d_model=d, n_heads=n_heads, head_dim=head_dim,
                     n_ctx=config.get("max_position_embeddings"), family=mt or None)


def model_info_from_dict(d: Mapping[str, Any] | ModelInfo | None, reference: str = "") -> ModelInfo | None:
    """A :class:`ModelInfo` from a manifest's ``info`` dict (unknown keys go to ``extra``)."""
    if d is None or isinstance(d, ModelInfo):
        return d
    fields = set(ModelInfo.__dataclass_fields__)
    known = {k: v for k, v in d.items() if k in fields and k != "extra"}
    extra = {k: v for k, v in d.items() if k not in fields}
    known.setdefault("reference", reference)
    return ModelInfo(**known, extra=extra)


# --------------------------------------------------------------------------------------------
# FLOPs


def prefill_flops(info: ModelInfo, n_prompt_tokens: float | None) -> float | None:
    """FLOPs of one prefill of ``P`` prompt tokens: ``2*N*P + 2*n_layers*d_attn*P*(P+1)``; None if unknown."""
    n, da = active_params(info), d_attn(info)
    if n_prompt_tokens is None or n is None or da is None or info.n_layers is None:
        return None
    p = float(n_prompt_tokens)
    return 2.0 * n * p + 2.0 * info.n_layers * da * p * (p + 1.0)


def generation_flops(info: ModelInfo, n_prompt_tokens: float | None,
                     n_generated_tokens: float | None) -> float | None:
    """FLOPs of ``G`` tokens generated after ``P`` prompt tokens: ``2*N*G + 2*n_layers*d_attn*G*(2P+G+1)``."""
    n, da = active_params(info), d_attn(info)
    if (n_prompt_tokens is None or n_generated_tokens is None or n is None or da is None
            or info.n_layers is None):
        return None
    p, g = float(n_prompt_tokens), float(n_generated_tokens)
    return 2.0 * n * g + 2.0 * info.n_layers * da * g * (2.0 * p + g + 1.0)


def prefill_share(call: Sequence[float]) -> float:
    """The share of its prefix's prefill that a shared-prefix call ``[P, S1, S2]`` / ``[P, S1, S2, n]``
    is charged: 1 alone, ``1/n`` when ``n`` records shared that prefill, 0 for ``n = 0``."""
    if len(call) <= 3:
        return 1.0
    n = float(call[3])
    return 0.0 if n == 0 else 1.0 / n


def shared_prefix_flops(info: ModelInfo, n_prefix_tokens: float, n_continuation_tokens: float,
                        sum_sq_continuation_tokens: float) -> float | None:
    """FLOPs of one prefill of ``P`` prefix tokens followed by continuations of lengths ``L_c`` scored
    after it, each attending to the prefix and to itself (the shared-prefix schedule of
    ``score_matrix``)::

        prefill_flops(P) + sum_c generation_flops(P, L_c)
          = prefill_flops(P) + 2*N*S1 + 2*n_layers*d_attn*(2*P*S1 + S2 + S1)

    with ``S1 = sum_c L_c`` and ``S2 = sum_c L_c**2``; None if the shape is unknown."""
    n, da = active_params(info), d_attn(info)
    pre = prefill_flops(info, n_prefix_tokens)
    if pre is None or n is None or da is None or info.n_layers is None:
        return None
    p, s1, s2 = float(n_prefix_tokens), float(n_continuation_tokens), float(sum_sq_continuation_tokens)
    return pre + 2.0 * n * s1 + 2.0 * info.n_layers * da * (2.0 * p * s1 + s2 + s1)


# --------------------------------------------------------------------------------------------
# prices


@dataclass(frozen=True)
class Price:
    """List price of one API model in USD per million tokens, with the date and source it came from."""

    model: str
    input_usd_per_mtok: float
    output_usd_per_mtok: float
    cached_input_usd_per_mtok: float | None = None
    as_of: str = ""
    source: str = ""

    def usd(self, n_prompt_tokens: float | None, n_completion_tokens: float | None,
            n_cached_prompt_tokens: float | None = None) -> float | None:
        """``((P - C)*input + C*cached_input + G*output) / 1e6``; cached unknown -> C = 0 (upper bound).

        None if the prompt or completion count is unknown.
        """
        if n_prompt_tokens is None or n_completion_tokens is None:
            return None
        cached = float(n_cached_prompt_tokens or 0.0)
        cached_price = (self.cached_input_usd_per_mtok if self.cached_input_usd_per_mtok is not None
                        else self.input_usd_per_mtok)
        return ((float(n_prompt_tokens) - cached) * self.input_usd_per_mtok
                + cached * cached_price
                + float(n_completion_tokens) * self.output_usd_per_mtok) / _MTOK


@dataclass(frozen=True)
class LocalRate:
    """A user-set cost of local compute: ``usd = flops / effective_flops_per_s / 3600 * usd_per_gpu_hour``."""

    usd_per_gpu_hour: float
    effective_flops_per_s: float

    def __post_init__(self) -> None:
        if not (self.usd_per_gpu_hour >= 0 and self.effective_flops_per_s > 0):
            raise ConfigError(
                "local_rate needs usd_per_gpu_hour >= 0 and effective_flops_per_s > 0, got "
                f"{self.usd_per_gpu_hour} and {self.effective_flops_per_s}"
            )

    def usd(self, flops: float | None) -> float | None:
        return None if flops is None else flops / self.effective_flops_per_s / 3600.0 * self.usd_per_gpu_hour


def default_prices_path() -> Path:
    """The packaged ``configs/prices.yaml``."""
    return PACKAGE_DIR / "configs" / "prices.yaml"


@dataclass(frozen=True)
class PriceTable:
    """Prices by lower-cased model name or alias, plus an optional :class:`LocalRate`."""

    prices: Mapping[str, Price]
    local_rate: LocalRate | None = None
    path: str = ""

    @classmethod
    def load(cls, path: str | Path | None = None) -> PriceTable:
        """Read a price YAML (default: the packaged ``configs/prices.yaml``)."""
        p = Path(path) if path is not None else default_prices_path()
        if not p.is_file():
            raise ConfigError(f"price table {p} does not exist; pass an existing YAML file "
                              f"(see {default_prices_path()} for the format)")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"price table {p} is not valid YAML: {exc}") from None
        return cls.from_dict(data, path=str(p))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: str = "<dict>") -> PriceTable:
        models = data.get("models") or {}
        if not isinstance(models, Mapping):
            raise ConfigError(f"{path}: 'models' must be a mapping of model name -> prices")
        prices: dict[str, Price] = {}
        for name, entry in models.items():
            try:
                price = Price(
                    model=str(name),
                    input_usd_per_mtok=float(entry["input_usd_per_mtok"]),
                    output_usd_per_mtok=float(entry["output_usd_per_mtok"]),
                    cached_input_usd_per_mtok=(None if entry.get("cached_input_usd_per_mtok") is None
                                               else float(entry["cached_input_usd_per_mtok"])),
                    as_of=str(entry.get("as_of", "")),
                    source=str(entry.get("source", "")),
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise ConfigError(
                    f"{path}: price entry {name!r} needs numeric input_usd_per_mtok and "
                    f"output_usd_per_mtok (USD per 1M tokens); problem: {exc!r}"
                ) from None
            if not price.as_of:
                raise ConfigError(f"{path}: price entry {name!r} has no 'as_of' date; prices must be dated")
            for key in [name, *(entry.get("aliases") or [])]:
                prices[str(key).lower()] = price
        lr = data.get("local_rate")
        local = None
        if lr:
            try:
                local = LocalRate(float(lr["usd_per_gpu_hour"]), float(lr["effective_flops_per_s"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise ConfigError(f"{path}: local_rate needs usd_per_gpu_hour and "
                                  f"effective_flops_per_s; problem: {exc!r}") from None
        return cls(prices=prices, local_rate=local, path=path)

    def lookup(self, model: str) -> Price | None:
        """The price of ``model`` (case-insensitive name or alias), or None when not listed."""
        return self.prices.get(model.lower())


# --------------------------------------------------------------------------------------------
# per-role cost


@dataclass(frozen=True)
class RoleCost:
    """Cost of one role over some calls. None = unknown."""

    role: str
    n_calls: int | None
    n_prompt_tokens: float | None
    n_completion_tokens: float | None
    prefill_flops: float | None
    generation_flops: float | None
    api_usd: float | None  # None for local roles and for unknown usage/price
    local_usd: float | None = None  # from a LocalRate, local roles only

    @property
    def flops(self) -> float | None:
        if self.prefill_flops is None or self.generation_flops is None:
            return None
        return self.prefill_flops + self.generation_flops


def _num(x: Any) -> float | None:
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def role_cost(role: str, usage: Mapping[str, Any] | None, info: ModelInfo | None, *,
              paid_api: bool = False, price: Price | None = None,
              local_rate: LocalRate | None = None) -> RoleCost:
    """Cost of one role from its usage ``{"n_prompt_tokens", "n_completion_tokens", "n_calls",
    optional "n_cached_prompt_tokens"}`` summed over calls.

    FLOPs = ``n_calls * (prefill_flops(P) + generation_flops(P, G))`` with per-call averages
    ``P = n_prompt_tokens / n_calls`` and ``G = n_completion_tokens / n_calls`` (``n_calls``
    unknown -> 1 call). API dollars only when ``paid_api`` and a price is known.
    """
    usage = usage or {}
    p_tot = _num(usage.get("n_prompt_tokens"))
    g_tot = _num(usage.get("n_completion_tokens"))
    c_tot = _num(usage.get("n_cached_prompt_tokens"))
    calls = _num(usage.get("n_calls"))
    n_calls = int(calls) if calls is not None else None
    if calls == 0:
        # no calls at all: the role cost nothing (known zero, not unknown)
        return RoleCost(role, 0, 0.0, 0.0, 0.0, 0.0, 0.0 if paid_api else None,
                        0.0 if (local_rate and not paid_api) else None)
    k = calls if calls is not None else 1.0
    shared = [tuple(float(x) for x in c) for c in (usage.get("shared_prefix_calls") or ())]
    pre = gen = None
    if info is not None:
        # Shared-prefix calls are charged exactly (prefix once, continuations after it); the other
        # calls as calls of average length.
        k_rest = k - len(shared)
        p_rest = None if p_tot is None else p_tot - sum(c[0] + c[1] for c in shared)
        pre_shared: float | None = 0.0
        for c in shared:
            one = shared_prefix_flops(info, *c[:3])
            if one is not None and len(c) > 3:  # [P, S1, S2, n]: 1/n of the prefill (n = 0: none)
                one -= (1.0 - prefill_share(c)) * (prefill_flops(info, c[0]) or 0.0)
            pre_shared = None if pre_shared is None or one is None else pre_shared + one
        if k_rest > 0:
            p_avg = None if p_rest is None else p_rest / k_rest
            g_avg = None if g_tot is None else g_tot / k_rest
            one_pre = prefill_flops(info, p_avg)
            one_gen = generation_flops(info, p_avg, g_avg)
            pre = None if one_pre is None or pre_shared is None else k_rest * one_pre + pre_shared
            gen = None if one_gen is None else k_rest * one_gen
        else:
            pre, gen = pre_shared, (0.0 if pre_shared is not None else None)
    api = None
    local = None
    if paid_api:
        api = price.usd(p_tot, g_tot, c_tot) if price is not None else None
    elif local_rate is not None:
        local = local_rate.usd(None if pre is None or gen is None else pre + gen)
    return RoleCost(role, n_calls, p_tot, g_tot, pre, gen, api, local)


def mi_cost_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The one rule for *MI measurement FLOPs / compression FLOPs* (plan and report): ``rows`` per
    dataset with ``mi_flops`` (the scoring of every compressor but the identity baseline),
    ``identity_flops`` (the identity's scoring) and ``compress_flops`` (the model compressors'
    compressions), None = unknown; appends a ``total`` row (None if any part is unknown) and sets
    ``ratio = mi_flops / compress_flops`` and ``identity_ratio = identity_flops / compress_flops``
    (None when unknown or when nothing was compressed). Returns ``rows``."""
    if rows:
        total: dict[str, Any] = {"dataset": "total"}
        for k in ("mi_flops", "identity_flops", "compress_flops"):
            vals = [row[k] for row in rows]
            total[k] = None if any(v is None for v in vals) else float(sum(vals))
        rows.append(total)
    for row in rows:
        row["ratio"] = (row["mi_flops"] / row["compress_flops"]
                        if row["mi_flops"] is not None and row["compress_flops"] else None)
        row["identity_ratio"] = (row["identity_flops"] / row["compress_flops"]
                                 if row["identity_flops"] is not None and row["compress_flops"] else None)
    return rows
