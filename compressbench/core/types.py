"""Core value types. Frozen dataclasses; units are in the field names (nats, bits, usd, n_tokens)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: One chat: a sequence of {"role": ..., "content": ...} messages.
Chat = Sequence[Mapping[str, str]]

LN2 = math.log(2.0)


def nats_to_bits(nats: float) -> float:
    """The one conversion from nats (natural log) to bits (log base 2)."""
    return nats / LN2


@dataclass(frozen=True)
class GenerationParams:
    """Sampling parameters for `Backend.generate`. temperature 0 means greedy."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1
    seed: int | None = 0
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.n < 1:
            raise ValueError(f"n (samples per chat) must be >= 1, got {self.n}")


@dataclass(frozen=True)
class Usage:
    """Token usage of one request. None means unknown (e.g. a server that omitted usage), never 0."""

    n_prompt_tokens: int | None
    n_completion_tokens: int | None
    n_cached_prompt_tokens: int | None = None


@dataclass(frozen=True)
class Sample:
    """One sampled completion."""

    text: str
    finish_reason: str  # "stop" | "length" | other backend-specific reason
    n_tokens: int | None  # generated tokens; None if unknown


@dataclass(frozen=True)
class Generation:
    """The result of generating for one chat: `params.n` samples and the request's usage."""

    samples: tuple[Sample, ...]
    usage: Usage

    @property
    def text(self) -> str:
        """The first sample's text."""
        return self.samples[0].text


@dataclass(frozen=True)
class TokenLogprobs:
    """Natural-log probabilities of each continuation token after its prefix."""

    token_ids: tuple[int, ...]
    logprobs_nats: tuple[float, ...]

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def total_nats(self) -> float:
        return math.fsum(self.logprobs_nats)


@dataclass(frozen=True)
class ModelInfo:
    """What is known of a model's size and shape, for cost accounting. None means unknown."""

    reference: str
    n_params: int | None = None
    n_active_params: int | None = None  # MoE: active parameters (plus router); else = n_params
    n_layers: int | None = None
    d_model: int | None = None
    n_heads: int | None = None
    head_dim: int | None = None
    n_ctx: int | None = None  # the model's context window in tokens
    family: str | None = None
    revision: str | None = None  # content hash or hub revision, for cache keys and manifests
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Example:
    """One dataset item: a context, a question about it, and what counts as a right answer.

    `options` holds the choices of a multiple-choice question (answers are then letters "A".."E").
    `reference` is a reference answer for perplexity scoring, when the task has one.
    """

    id: str
    context: str
    question: str
    answers: tuple[str, ...] = ()
    options: tuple[str, ...] = ()
    reference: str | None = None
    dataset: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)
