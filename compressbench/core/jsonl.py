"""Append-only JSONL files that survive crashes and full disks: one JSON object per line.

The rules, in one place:

- **Writing** (:class:`JsonlAppender`): each batch of lines is written with unbuffered writes, then
  fsync'ed. If a write fails part-way (ENOSPC, EIO, ...), the file is truncated back to where the
  batch began, so a partial line never stays behind to merge with the next record; the caller gets
  a :class:`~compressbench.core.errors.StoreError` and may try again (e.g. after freeing space). If even
  that truncation fails, the appender refuses every further write with a StoreError that says so;
  the torn line is then cut off the next time the file is opened.
- **Opening** (:func:`repair_tail`): a last line that lacks its newline but is a complete JSON
  object (the process died between the two) is kept and completed; a torn last line (not valid
  JSON) is cut off, with a warning that names the file.
- **Encoding** (:func:`encode_line`): any Python ``str`` can be written, lone surrogates included
  (such a line is written with ``\\uXXXX`` escapes, which JSON reads back to the same string).
- **Reading** (:func:`read_jsonl`): complete lines in file order; a torn last line is skipped.
  Other undecodable lines raise DataError, or are skipped with a warning naming the file and
  the line numbers (``skip_bad=True``).

One process writes a given file (threads are fine when the caller holds a lock per appender).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any

from compressbench.core.errors import DataError, StoreError

log = logging.getLogger(__name__)

#: Opens a path for appending in binary, unbuffered: returns a raw file object whose ``write``
#: returns how many bytes it wrote (``open(p, "ab", buffering=0)``). Tests inject failing ones.
Opener = Callable[[Path], IO[bytes]]


def encode_line(obj: Any, default: Callable[[Any], Any] | None = None) -> bytes:
    """One JSONL line (compact JSON + newline) as UTF-8 bytes.

    Raises TypeError/ValueError for objects JSON cannot hold (nothing is written then).
    """
    text = json.dumps(obj, default=default, ensure_ascii=False, separators=(",", ":"))
    try:
        return (text + "\n").encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: escape them (json reads \udXXX back as the same str)
        return (json.dumps(obj, default=default, ensure_ascii=True, separators=(",", ":")) + "\n").encode("ascii")


def _is_complete(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def repair_tail(path: Path) -> int:
    """Make the end of an append-only JSONL file whole before appending to it.

    A last line without its newline that is a complete JSON object gets its newline (kept); a
    torn last line is cut off. Returns the number of bytes removed. Complete lines are never touched.
    """
    if not path.exists():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with path.open("rb+") as fh:
        block = 1 << 16
        pos = size
        tail = b""
        while pos > 0:  # read back until the tail holds the start of the last line
            step = min(block, pos)
            pos -= step
            fh.seek(pos)
            tail = fh.read(step) + tail
            body = tail[:-1] if tail.endswith(b"\n") else tail
            if b"\n" in body:
                break
        body = tail[:-1] if tail.endswith(b"\n") else tail
        nl = body.rfind(b"\n")
        last_start = pos + nl + 1 if nl >= 0 else pos
        last = tail[last_start - pos:]
        if not last.strip():
            return 0
        if _is_complete(last.rstrip(b"\n")):
            if not last.endswith(b"\n"):
                fh.seek(size)
                fh.write(b"\n")
                fh.flush()
                os.fsync(fh.fileno())
                log.warning("%s: the last line was complete but lacked its newline (an interrupted write); "
                            "kept it and added the newline", path)
            return 0
        fh.truncate(last_start)
        fh.flush()
        os.fsync(fh.fileno())
    log.warning("%s: removed a torn last line (%d bytes) left by an interrupted write; every complete line is kept",
                path, size - last_start)
    return size - last_start


def read_jsonl(path: str | Path, *, skip_bad: bool = False) -> list[Any]:
    """All complete lines of an append-only JSONL file (``[]`` if it does not exist), in file order.

    A torn last line is skipped (not repaired). Another line that is not valid JSON raises
    DataError, or with ``skip_bad`` is skipped with one warning naming the file and line numbers.
    """
    p = Path(path)
    if not p.exists():
        return []
    with p.open("rb") as fh:
        lines = fh.read().split(b"\n")
    out: list[Any] = []
    bad: list[int] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError):
            if n == len(lines):  # the torn tail of an interrupted write
                continue
            if not skip_bad:
                raise DataError(f"{p}: line {n} is not valid JSON; was the file edited by hand?") from None
            bad.append(n)
    if bad:
        log.warning("%s: skipped %d unreadable line(s) (line %s); every other line was read", p, len(bad),
                    ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else ""))
    return out


def _open_append(path: Path) -> IO[bytes]:
    return open(path, "ab", buffering=0)  # noqa: SIM115 (closed by JsonlAppender.close)


class JsonlAppender:
    """Appends lines to one JSONL file; see the module docstring for what happens on failures.

    ``default``: JSON fallback for other types (as in ``json.dumps``). ``opener``: how the file is
    opened (tests inject file objects that fail mid-write).
    """

    def __init__(self, path: str | Path, *, default: Callable[[Any], Any] | None = None,
                 opener: Opener | None = None):
        self.path = Path(path)
        self._default = default
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            repair_tail(self.path)
            self._fh: IO[bytes] | None = (opener or _open_append)(self.path)
        except OSError as exc:
            raise StoreError(f"cannot open {self.path} for appending: {exc.strerror or exc}; "
                             "choose a writable location") from None
        self._refusal: str | None = None

    def append(self, records: Iterable[Mapping[str, Any]]) -> int:
        """Write the records (one line each), fsync; return the number of lines written.

        Raises TypeError/ValueError (nothing written) for records JSON cannot hold, and StoreError
        when the disk refuses the write (the file is then as it was before this call).
        """
        data = b"".join(encode_line(r, self._default) for r in records)
        if not data:
            return 0
        if self._refusal is not None or self._fh is None:
            raise StoreError(self._refusal or f"{self.path} is closed")
        fh = self._fh
        start = os.fstat(fh.fileno()).st_size
        try:
            view = memoryview(data)
            done = 0
            while done < len(view):
                n = fh.write(view[done:])
                if not n:
                    raise OSError(f"write returned {n!r}")
                done += n
            fh.flush()
            os.fsync(fh.fileno())
        except OSError as exc:
            self._undo(start, exc)
        return data.count(b"\n")

    def _undo(self, start: int, exc: OSError) -> None:
        """Cut the file back to ``start`` after a failed write; refuse further writes if that fails."""
        why = exc.strerror or str(exc)
        assert self._fh is not None
        try:
            self._fh.truncate(start)
            os.fsync(self._fh.fileno())
        except OSError as exc2:
            self._refusal = (
                f"{self.path}: an earlier write failed ({why}) and its partial line could not be removed "
                f"({exc2.strerror or exc2}); refusing further writes so it cannot merge with a new record. "
                "Every complete line is intact; free space, then open the file again (the partial line is cut off then)")
            self.close()
            raise StoreError(self._refusal) from None
        log.warning("%s: a write failed (%s); removed the partial line, every earlier line is intact", self.path, why)
        raise StoreError(f"could not write to {self.path}: {why}. The partial line was removed and every earlier "
                         "line is intact; free space (or fix the disk) and write again") from None

    def close(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError as exc:  # a close that fails to flush: nothing buffered here, so nothing lost
                log.warning("%s: closing failed (%s)", self.path, exc)
            self._fh = None

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["JsonlAppender", "encode_line", "read_jsonl", "repair_tail"]
