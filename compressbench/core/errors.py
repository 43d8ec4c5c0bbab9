"""The error tree. Every error compressbench raises on purpose derives from CompressbenchError.

Messages say what was wrong and what to do about it. They never contain API keys.
"""

from __future__ import annotations


class CompressbenchError(Exception):
    """Base class of every error compressbench raises deliberately."""


class UsageError(CompressbenchError, ValueError):
    """The caller passed something invalid (bad arguments, bad input data). CLI exit code 2."""


class ConfigError(UsageError):
    """A sweep configuration is malformed or names something unknown."""


class DataError(UsageError):
    """A dataset file or row is malformed (missing field, wrong encoding, empty dataset)."""


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


class RemoteError(BackendError):
    """An HTTP backend's request failed for good (after retries). Carries status and server message."""

    def __init__(self, message: str, *, status: int | None = None, server_message: str | None = None):
        super().__init__(message)
        self.status = status
        self.server_message = server_message
