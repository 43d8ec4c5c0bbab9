"""compressbench: measure compressor/predictor LM pairs.

Mutual information between contexts and their compressions (from token log-probabilities, in
bits, log base 2), downstream accuracy and cost. Nothing heavy (torch, transformers, vllm,
matplotlib, datasets) is imported here.
"""

from compressbench.backends import Backend, load_backend
from compressbench.core.errors import (
    BackendError,
    BackendUnavailable,
    BatchRemoteError,
    CompressbenchError,
    ConfigError,
    ContextTooLong,
    DataError,
    EndpointsDown,
    MalformedResponse,
    RecordVersionError,
    RemoteError,
    RunDirBusy,
    ScoringUnsupported,
    StoreError,
    SweepAborted,
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
    "BatchRemoteError",
    "CompressbenchError",
    "ConfigError",
    "ContextTooLong",
    "DataError",
    "EndpointsDown",
    "Example",
    "Generation",
    "GenerationParams",
    "load_backend",
    "MalformedResponse",
    "ModelInfo",
    "nats_to_bits",
    "RecordVersionError",
    "RemoteError",
    "RunDirBusy",
    "Sample",
    "ScoringUnsupported",
    "StoreError",
    "SweepAborted",
    "TokenLogprobs",
    "Usage",
    "UsageError",
    "__version__",
]
