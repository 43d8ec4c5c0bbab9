"""compressbench: measure compressor/predictor LM pairs.

Mutual information between contexts and their compressions (from token log-probabilities, in
bits, log base 2), downstream accuracy and cost. Nothing heavy (torch, transformers, vllm,
matplotlib, datasets) is imported here.
"""

from compressbench.backends import Backend, load_backend
from compressbench.core.errors import (
    BackendError,
    BackendUnavailable,
    CompressbenchError,
    ConfigError,
    ContextTooLong,
    DataError,
    RemoteError,
    ScoringUnsupported,
    UsageError,
)
from compressbench.core.types import (
    Example,
    Generation,
    GenerationParams,
    ModelInfo,
    Sample,
    TokenLogprobs,
    Usage,
    nats_to_bits,
)
from compressbench.core.version import __version__

__all__ = [
    "Backend",
    "BackendError",
    "BackendUnavailable",
    "CompressbenchError",
    "ConfigError",
    "ContextTooLong",
    "DataError",
    "Example",
    "Generation",
    "GenerationParams",
    "ModelInfo",
    "RemoteError",
    "Sample",
    "ScoringUnsupported",
    "TokenLogprobs",
    "Usage",
    "UsageError",
    "load_backend",
    "nats_to_bits",
    "__version__",
]
