"""The error tree. Every error compressbench raises on purpose derives from CompressbenchError and
is defined here, so ``except CompressbenchError`` catches everything a user can see::

    CompressbenchError
    ├── UsageError (also a ValueError; CLI exit code 2)
    │   ├── ConfigError          a sweep or research config is malformed or names something unknown
    │   ├── DataError            a dataset file or row is malformed
    │   │   └── RecordVersionError   a records.jsonl line of another record format version
    │   ├── RunDirBusy           another process holds the run directory's lock
    │   └── ContextTooLong       a prompt does not fit the model's window (also a BackendError)
    ├── StoreError               writing a run or log file failed (disk full, I/O error)
    ├── BackendUnavailable       a missing optional extra or a model not installed
    ├── BackendError             a backend failed while doing its work
    │   ├── ContextTooLong
    │   ├── ScoringUnsupported   the backend cannot return prompt log-probs (cannot be the scorer)
    │   ├── MalformedResponse    a server answered 200 with an unusable body (wrong JSON shape,
    │   │                        log-probs that are NaN, infinite or above 0)
    │   └── RemoteError          an HTTP request failed for good (status, server message)
    │       ├── BatchRemoteError some requests of a batch failed (per-index errors and results)
    │       └── EndpointsDown    every endpoint is out of service (circuit breaker open)
    └── SweepAborted             more examples failed than max_error_rate allows (CLI exit code 1)

Messages say what was wrong and what to do about it. They never contain API keys.
"""

from __future__ import annotations

from typing import Any


class CompressbenchError(Exception):
    """Base class of every error compressbench raises deliberately."""


class UsageError(CompressbenchError, ValueError):
    """The caller passed something invalid (bad arguments, bad input data). CLI exit code 2."""


class ConfigError(UsageError):
    """A sweep configuration is malformed or names something unknown."""


class DataError(UsageError):
    """A dataset file or row is malformed (missing field, wrong encoding, empty dataset)."""


class RecordVersionError(DataError):
    """A record line was written by another record format version."""


class RunDirBusy(UsageError):
    """Another process holds the run directory's lock (one writer per run directory)."""


class StoreError(CompressbenchError):
    """Writing a run or log file failed (disk full, I/O error, unwritable path). The message says
    what happened to what was already written (never lost or corrupted) and what to do."""


class BackendUnavailable(CompressbenchError):
    """A backend or model cannot be used here: a missing optional extra or a model not installed.

    The message names the exact install command.
    """


class BackendError(CompressbenchError):
    """A backend failed while doing its work."""


class ContextTooLong(BackendError, UsageError):
    """A prompt (prefix + continuation) does not fit the model's context window."""

    def __init__(self, message: str, *, n_tokens: int | None = None, max_tokens: int | None = None):
        super().__init__(message)
        self.n_tokens = n_tokens
        self.max_tokens = max_tokens


class ScoringUnsupported(BackendError):
    """The backend cannot return prompt log-probabilities, so it cannot act as the MI scorer."""


class MalformedResponse(BackendError):
    """A server answered 200 with a body this client cannot use: JSON of the wrong shape for the
    route, or log-probs that are NaN, infinite or above 0 (not retried; that request fails)."""


class RemoteError(BackendError):
    """An HTTP backend's request failed for good (after retries). Carries status and server message."""

    def __init__(self, message: str, *, status: int | None = None, server_message: str | None = None):
        super().__init__(message)
        self.status = status
        self.server_message = server_message


class BatchRemoteError(RemoteError):
    """Some requests of a batch failed for good; the others succeeded.

    ``errors``: input index -> the error of that request. ``results``: one entry per input, the
    result where the request succeeded and None where it failed.
    """

    def __init__(self, message: str, *, errors: dict[int, CompressbenchError], results: list[Any]):
        first = errors[min(errors)]
        super().__init__(
            message,
            status=getattr(first, "status", None),
            server_message=getattr(first, "server_message", None),
        )
        self.errors = errors
        self.results = results

    @classmethod
    def of(cls, what: str, n_total: int, errors: dict[int, CompressbenchError],
           results: list[Any]) -> "BatchRemoteError":
        """The error for a batch of ``n_total`` ``what`` requests of which ``errors`` failed."""
        idx = sorted(errors)
        shown = ", ".join(map(str, idx[:20])) + (" ..." if len(idx) > 20 else "")
        first = errors[idx[0]]
        return cls(f"{len(idx)} of {n_total} {what} requests failed (indices {shown}); first error: "
                   f"{type(first).__name__}: {first}", errors=errors, results=results)


class EndpointsDown(RemoteError):
    """Every endpoint of a backend is out of service (circuit breaker open): failed without trying."""


class SweepAborted(CompressbenchError):
    """More examples failed than ``max_error_rate`` allows; records so far are on disk."""


__all__ = ["BackendError", "BackendUnavailable", "BatchRemoteError", "CompressbenchError", "ConfigError",
           "ContextTooLong", "DataError", "EndpointsDown", "MalformedResponse", "RecordVersionError",
           "RemoteError", "RunDirBusy", "ScoringUnsupported", "StoreError", "SweepAborted", "UsageError"]
