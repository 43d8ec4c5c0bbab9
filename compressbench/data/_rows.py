"""Reading raw rows from local files, with errors that name the file, the row and the field.

Used by every loader in :mod:`compressbench.data`. Rows are plain dicts; each comes with a
human-readable location (``"line 3"`` for JSONL, ``"row 3"`` for Parquet, ``"item 3"`` for a
JSON list), 1-based, so a :class:`DataError` can say exactly where the problem is.
Heavy libraries (pyarrow, datasets) are imported inside the functions that need them.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from compressbench.core.errors import DataError

log = logging.getLogger(__name__)

#: A raw row and where it came from: (location text such as "line 3", the row).
Located = tuple[str, dict[str, Any]]

_TABLE_SUFFIXES = (".jsonl", ".json", ".parquet")


def read_text(path: Path) -> str:
    """The file's text, decoded as strict UTF-8.

    Raises DataError naming the file and the byte offset of the first invalid byte.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read dataset file {path}: {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path} is not valid UTF-8: byte 0x{raw[exc.start]:02x} at byte offset {exc.start} "
            f"({exc.reason}); re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
        ) from None


def read_json(path: Path) -> Any:
    """Parse a whole JSON file (UTF-8). Errors name the file, line and column."""
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None


def iter_jsonl(path: Path) -> Iterator[Located]:
    """Yield (``"line N"``, object) for each non-blank line of a JSONL file (N is 1-based)."""
    text = read_text(path)
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {n}: invalid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}: line {n}: each line must be a JSON object, got {type(obj).__name__}")
        yield f"line {n}", obj


def iter_parquet(path: Path) -> Iterator[Located]:
    """Yield (``"row N"``, row dict) for each row of a Parquet file (N is 1-based)."""
    try:
        # lazy: pyarrow/datasets (the [data] extra) load only for those files
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            f"reading {path} needs pyarrow: pip install 'compressbench[data]'"
        ) from None
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as exc:  # pyarrow raises ArrowInvalid (a ValueError) on bad files
        raise DataError(f"{path}: not a readable Parquet file: {exc}") from None
    for n, row in enumerate(table.to_pylist(), start=1):
        yield f"row {n}", row


def iter_table(path: Path) -> Iterator[Located]:
    """Rows of a JSONL, JSON (a list of objects) or Parquet file, chosen by the file suffix."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from iter_jsonl(path)
    elif suffix == ".parquet":
        yield from iter_parquet(path)
    elif suffix == ".json":
        data = read_json(path)
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of row objects (or JSONL / Parquet)")
        for n, obj in enumerate(data, start=1):
            if not isinstance(obj, dict):
                raise DataError(f"{path}: item {n}: each item must be an object, got {type(obj).__name__}")
            yield f"item {n}", obj
    else:
        raise DataError(f"{path}: unknown file type {suffix!r}; use .jsonl, .json or .parquet")


def table_files(path: Path, split: str | None) -> list[Path]:
    """The data files to read for ``path`` (a file, or a folder of files) and ``split``.

    A folder is searched recursively for .jsonl/.json/.parquet files; with a split, only files
    whose name starts with the split name (``test.jsonl``, ``test-00000-of-00001.parquet``) are
    kept. Files are read in sorted path order, so the row order is deterministic.
    """
    if not path.exists():
        raise DataError(f"dataset path {path} does not exist; pass an existing file or folder as `path`")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in _TABLE_SUFFIXES)
    if split is not None:
        chosen = [p for p in files if p.name.startswith(split)]
        if not chosen:
            names = sorted({p.name for p in files})
            raise DataError(
                f"no data file for split {split!r} under {path} (files must be named "
                f"'{split}.jsonl', '{split}-*.parquet', ...; found {names[:10]})"
            )
        return chosen
    if not files:
        raise DataError(f"no .jsonl, .json or .parquet files under {path}")
    return files


def local_rows(path: str | Path, split: str | None) -> list[tuple[Path, str, dict[str, Any]]]:
    """All rows of a local dataset file or folder: (file, location, row), in deterministic order.

    For a single file, a split (if given) keeps only rows whose ``split`` field equals it when
    the rows carry such a field; a file whose rows carry none is taken as the split itself.
    """
    p = Path(path)
    files = table_files(p, split)
    out = [(f, loc, row) for f in files for loc, row in iter_table(f)]
    if split is not None and p.is_file() and any("split" in row for _, _, row in out):
        present = sorted({str(row.get("split")) for _, _, row in out})
        out = [t for t in out if row_split_matches(t[2], split)]
        if not out:
            raise DataError(f"{p}: no rows with split {split!r} (splits present: {present})")
    return out


def row_split_matches(row: Mapping[str, Any], split: str) -> bool:
    return str(row.get("split")) == split


def require(row: Mapping[str, Any], field: str, where: str, kinds: type | tuple[type, ...] = str,
            *, allow_empty: bool = False) -> Any:
    """``row[field]``, checked: present, not null, of the expected type, non-empty for strings.

    ``where`` names the file and row (e.g. ``"data.jsonl: line 3"``) for the error message.
    """
    if field not in row or row[field] is None:
        present = ", ".join(sorted(map(str, row)))[:200]
        raise DataError(f"{where}: missing field {field!r} (fields present: {present})")
    value = row[field]
    if not isinstance(value, kinds):
        want = kinds.__name__ if isinstance(kinds, type) else " or ".join(k.__name__ for k in kinds)
        raise DataError(f"{where}: field {field!r} must be {want}, got {type(value).__name__}")
    if isinstance(value, str) and not allow_empty and not value.strip():
        raise DataError(f"{where}: field {field!r} is empty")
    return value


def hub_rows(hub_id: str, split: str | None, config: str | None = None,
             streaming: bool = False) -> Iterator[Located]:
    """Rows of a Hugging Face hub dataset through the ``datasets`` library (online only).

    Offline (HF_DATASETS_OFFLINE or HF_HUB_OFFLINE set) this raises DataError at once, saying
    to download the data elsewhere and pass a local ``path`` instead.
    """
    offline = [v for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
               if os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")]
    if offline:
        raise DataError(
            f"dataset hub_id {hub_id!r} cannot be fetched: offline mode ({offline[0]}=1). Download it "
            f"where there is network (e.g. `datasets.load_dataset({hub_id!r}).save_to_disk(...)` or the "
            "hub's parquet files) and pass the local file or folder as `path` instead of `hub_id`"
        )
    try:
        # lazy: pyarrow/datasets (the [data] extra) load only for those files
        import datasets
    except ImportError:
        raise DataError("loading from the hub needs `datasets`: pip install 'compressbench[data]'") from None
    try:
        ds = datasets.load_dataset(hub_id, config, split=split or "train", streaming=streaming)
    except Exception as exc:  # noqa: BLE001 - any hub/network failure becomes a clear DataError
        raise DataError(
            f"could not load {hub_id!r} (split {split or 'train'!r}) from the hub: "
            f"{type(exc).__name__}: {exc}. Pass a local file or folder as `path` instead"
        ) from exc
    for n, row in enumerate(ds, start=1):
        yield f"row {n}", dict(row)
