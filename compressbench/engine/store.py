"""The run store: ``runs/<sweep-name>/`` as described in docs/run_format.md.

- ``config.yaml``, ``manifest.json``, ``summary.csv``, ``summary.json``, ``mi_estimates.json``:
  written atomically (a temporary file in the same folder, then ``os.replace``).
  ``mi_estimates.json`` holds each cell's MI columns as soon as its group is scored
  (``{"cells": {cell_key: {mi_bits, ..., bits_per_token_ci_high}}}``), so a report of a run that
  stopped before its summary shows the sweep's own estimates.
- ``records.jsonl``: append-only; each batch of lines is written, flushed and fsync'ed. A record is
  never rewritten. A torn last line (the process was killed mid-write) is detected on open and cut
  off at the last complete line, so a resumed run never sees half a record.
- ``cache/``: content-addressed entries (JSON or .npy), named by the SHA-256 of a canonical JSON of
  everything that changes their content (see :func:`cache_key`).

- ``.lock``: held (``fcntl.flock``, exclusive) by the one sweep writing the folder; the kernel
  releases it when that process exits or is killed. It names the holder (pid, host, start time).

Typed records are read and written by :mod:`compressbench.engine.records`; :func:`read_summary` reads summaries.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from compressbench.core.errors import ConfigError, DataError, RunDirBusy
from compressbench.core.jsonl import JsonlAppender, repair_tail
from compressbench.core.jsonl import read_jsonl as _read_jsonl
from compressbench.engine.config import results_identity
from datetime import datetime, timezone
import difflib
import socket
import sys
import yaml

log = logging.getLogger(__name__)

CACHE_VERSION = 1
RECORDS = "records.jsonl"
SUMMARY_CSV = "summary.csv"
SUMMARY_JSON = "summary.json"
MI_ESTIMATES_JSON = "mi_estimates.json"
BITS_NOTE = "bits are log base 2"


# --------------------------------------------------------------------------- atomic writes


def atomic_write_bytes(path: Path, data: bytes, *, fsync: bool = True) -> None:
    """Write `data` to `path` atomically: a temp file in the same folder, (fsync,) ``os.replace``.

    A killed process leaves either the old file or the new one, never a mix. ``fsync=False``
    (cache entries) skips the flush to disk, which only matters if the machine itself crashes.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp creates 0600; run files are meant to be read by others
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (tuple, set, frozenset)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dumps(obj: Any) -> str:
    """Compact JSON (NaN written as NaN, which Python's json reads back)."""
    return json.dumps(obj, default=_json_default, ensure_ascii=False, separators=(",", ":"))


def canonical_json(obj: Any) -> str:
    """Key-sorted compact JSON: equal inputs give byte-equal output (used for cache keys)."""
    return json.dumps(obj, default=_json_default, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def cache_key(material: Mapping[str, Any]) -> str:
    """SHA-256 hex of the canonical JSON of `material` plus the cache format version."""
    return hashlib.sha256(canonical_json({"v": CACHE_VERSION, **material}).encode("utf-8")).hexdigest()


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- cache


class Cache:
    """Content-addressed cache under a folder: ``<root>/<key[:2]>/<key>.json|.npy``.

    Entries are written atomically and never modified. ``hits`` and ``misses`` count lookups.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    def _path(self, key: str, suffix: str) -> Path:
        return self.root / key[:2] / f"{key}{suffix}"

    def get_json(self, key: str) -> Any | None:
        p = self._path(key, ".json")
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            self.misses += 1
            return None
        try:
            value = json.loads(data)
        except json.JSONDecodeError:
            log.warning("ignoring a corrupt cache entry %s", p)
            self.misses += 1
            return None
        self.hits += 1
        return value

    def put_json(self, key: str, value: Any) -> None:
        atomic_write_bytes(self._path(key, ".json"), dumps(value).encode("utf-8"), fsync=False)

    def get_array(self, key: str) -> np.ndarray | None:
        p = self._path(key, ".npy")
        try:
            with p.open("rb") as fh:
                arr = np.load(fh, allow_pickle=False)
        except FileNotFoundError:
            self.misses += 1
            return None
        except (ValueError, OSError, EOFError):
            log.warning("ignoring a corrupt cache entry %s", p)
            self.misses += 1
            return None
        self.hits += 1
        return arr

    def put_array(self, key: str, value: np.ndarray) -> None:
        buf = io.BytesIO()
        np.save(buf, np.asarray(value), allow_pickle=False)
        atomic_write_bytes(self._path(key, ".npy"), buf.getvalue(), fsync=False)


# --------------------------------------------------------------------------- records


def repair_records(path: Path) -> int:
    """Make the end of ``records.jsonl`` whole before appending (:func:`compressbench.core.jsonl.repair_tail`):
    a torn last line is cut off, a complete one missing only its newline is kept. Returns the bytes removed."""
    return repair_tail(path)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """All complete lines of an append-only JSONL file (:func:`compressbench.core.jsonl.read_jsonl`)."""
    return _read_jsonl(path)


class RecordWriter(JsonlAppender):
    """Appends records to ``records.jsonl``: one line each, fsync'ed per batch; a write that fails
    part-way (disk full) is cut back off, so no partial record is left (:class:`compressbench.core.jsonl.JsonlAppender`)."""

    def __init__(self, path: Path):
        super().__init__(path, default=_json_default)

    def __enter__(self) -> RecordWriter:
        return self


# --------------------------------------------------------------------------- run directory


def _same_results(old_yaml: str, new_yaml: str) -> bool:
    """Whether two resolved configs differ only in scheduling-only settings (see config.results_identity)."""

    try:
        old, new = yaml.safe_load(old_yaml), yaml.safe_load(new_yaml)
    except yaml.YAMLError:
        return False
    return isinstance(old, dict) and isinstance(new, dict) and results_identity(old) == results_identity(new)


class RunLock:
    """An exclusive OS lock (``fcntl.flock``) on ``<run dir>/.lock`` for as long as it is held.

    Non-blocking: a second holder gets :class:`RunDirBusy` naming the first one (pid, host, start
    time, command). The kernel drops the lock when the holding process exits or is killed, so a
    crashed sweep never leaves a stale lock (the file stays; its content is only informative).
    """

    def __init__(self, root: Path):
        self.path = root / ".lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        # lazy: fcntl is POSIX-only; imported where the lock is taken
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "unknown process"
            finally:
                os.close(fd)
            raise RunDirBusy(f"{self.path.parent} is in use by another sweep ({holder}); one sweep writes a "
                             f"run directory at a time. Wait for it to finish, or use another --runs-dir or "
                             f"--set name=...") from None
        info = (f"pid {os.getpid()} on {socket.gethostname()}, started "
                f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}: {' '.join(sys.argv)[:300]}")
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode("utf-8"), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            # lazy: fcntl is POSIX-only; imported where the lock is taken
            import fcntl

            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _has_records(path: Path) -> bool:
    """Whether records.jsonl holds at least one complete line."""
    return bool(read_jsonl(path)) if path.exists() else False


class RunStore:
    """One run directory ``<runs_dir>/<name>/``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.cache = Cache(self.root / "cache")

    @property
    def records_path(self) -> Path:
        return self.root / RECORDS

    def lock(self) -> RunLock:
        """The run directory's writer lock (use as a context manager around the whole run)."""
        return RunLock(self.root)

    def prepare(self, config_yaml: str) -> None:
        """Write ``config.yaml`` (call with :meth:`lock` held). Refuse a folder that holds another
        config (one that asks for other results; scheduling-only settings may differ) once it has
        records; a folder whose earlier attempts wrote no record takes the new config."""
        self.root.mkdir(parents=True, exist_ok=True)
        cfg = self.root / "config.yaml"
        if cfg.exists():
            old = cfg.read_text(encoding="utf-8")
            if old != config_yaml and _same_results(old, config_yaml):
                log.info("resuming %s with other scheduling settings (batch sizes, threads, retries); "
                         "config.yaml keeps the ones the run started with", self.root)
            elif old != config_yaml and not _has_records(self.records_path):
                log.warning("%s: an earlier attempt with another config wrote no records; starting over with "
                            "this config", self.root)
                (self.root / "manifest.json").unlink(missing_ok=True)
                atomic_write_text(cfg, config_yaml)
            elif old != config_yaml:
                diff = "".join(difflib.unified_diff(old.splitlines(True), config_yaml.splitlines(True),
                                                    "config.yaml (in the run)", "config (now)", n=0))
                raise ConfigError(
                    f"{self.root} holds a run of a different config; resuming would mix results. "
                    f"Use another --runs-dir, another name (--set name=...), or delete the folder.\n{diff}"
                )
            return
        atomic_write_text(cfg, config_yaml)

    def write_manifest(self, manifest: Mapping[str, Any]) -> None:
        atomic_write_text(self.root / "manifest.json", json.dumps(manifest, indent=2, default=_json_default))

    def writer(self) -> RecordWriter:
        return RecordWriter(self.records_path)

    def repair(self) -> None:
        """Cut a torn last line left by an interrupted writer (call with :meth:`lock` held)."""
        repair_records(self.records_path)

    def write_summary(self, rows: Sequence[Mapping[str, Any]], columns: Sequence[str],
                      extra: Mapping[str, Any] | None = None) -> None:
        """``summary.json`` ({"bits_note", **extra, "rows"}) and ``summary.csv``, both atomically."""
        clean = [{c: _clean(r.get(c)) for c in columns} for r in rows]
        atomic_write_text(self.root / SUMMARY_JSON,
                          json.dumps({"bits_note": BITS_NOTE, **(extra or {}), "rows": clean}, indent=2,
                                     allow_nan=False))
        atomic_write_text(self.root / SUMMARY_CSV, summary_csv(clean, columns))

    def write_estimates(self, cells: Mapping[str, Mapping[str, Any]]) -> None:
        """``mi_estimates.json``: cell key -> the MI columns of its group's estimate (atomically)."""
        clean = {k: {c: _clean(v) for c, v in cols.items()} for k, cols in cells.items()}
        atomic_write_text(self.root / MI_ESTIMATES_JSON, json.dumps({"cells": clean}, indent=2, allow_nan=False))


def summary_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Summary rows as CSV text (``summary.csv``): None as an empty field, a nested list or mapping
    (a research row's per-round values) as JSON."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else json.dumps(v, allow_nan=False) if isinstance(v, (list, dict)) else v)
                    for k, v in ((c, _clean(r.get(c))) for c in columns)})
    return buf.getvalue()


def read_estimates(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """``mi_estimates.json`` of a run (cell key -> MI columns); empty when absent or unreadable
    (a run written before the file existed)."""
    p = Path(run_dir) / MI_ESTIMATES_JSON
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    cells = data.get("cells") if isinstance(data, dict) else None
    return {str(k): dict(v) for k, v in cells.items() if isinstance(v, dict)} if isinstance(cells, dict) else {}


def _clean(v: Any) -> Any:
    """JSON-safe scalar: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return None if not math.isfinite(f) else f
    if isinstance(v, np.integer):
        return int(v)
    return v


# --------------------------------------------------------------------------- reading summaries


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    """``summary.json`` of a run: ``{"bits_note": ..., "rows": [...]}``."""
    p = Path(run_dir) / SUMMARY_JSON
    if not Path(run_dir).is_dir():
        raise ConfigError(f"{run_dir} is not a run directory (no such folder)")
    if not p.exists():
        raise ConfigError(f"{run_dir} has no {SUMMARY_JSON} yet; run (or resume) the sweep first: "
                          f"compressbench sweep CONFIG")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{p} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise DataError(f"{p} lacks a 'rows' list; is it a compressbench summary?")
    return data
