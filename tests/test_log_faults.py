"""The append-only logs under hostile conditions (issue 12): a disk that fills up or fails in the
middle of a line, a writer killed with SIGKILL, a last line that lost only its newline, strings
that UTF-8 cannot encode. Every case checks that no complete record is ever lost.

Failures are injected with a real file whose writes stop part-way: the first bytes of the line
really reach the disk, then ENOSPC/EIO is raised, as a full disk or a failing device does.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from compressbench.agent import CompressionLog
from compressbench.core.errors import StoreError
from compressbench.core.jsonl import JsonlAppender, read_jsonl, repair_tail

pytestmark = pytest.mark.timeout(120)


class FailingFile:
    """A real unbuffered append file whose writes fail after ``budget`` more bytes.

    The bytes within the budget are written for real (a partial line on disk), then ``err`` is
    raised. ``truncate_fails`` makes the clean-up fail too (EIO on a dying disk).
    """

    def __init__(self, path: Path, budget: int, err: int = errno.ENOSPC, truncate_fails: bool = False):
        self._raw = open(path, "ab", buffering=0)  # noqa: SIM115
        self.budget = budget
        self.err = err
        self.truncate_fails = truncate_fails
        self.n_failures = 0

    def write(self, data) -> int:
        if self.budget <= 0:
            self.n_failures += 1
            raise OSError(self.err, os.strerror(self.err))
        n = self._raw.write(bytes(data[: self.budget]))
        self.budget -= n
        return n

    def truncate(self, size: int) -> int:
        if self.truncate_fails:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return self._raw.truncate(size)

    def flush(self) -> None:
        self._raw.flush()

    def fileno(self) -> int:
        return self._raw.fileno()

    def close(self) -> None:
        self._raw.close()


def _lines(path: Path) -> list[dict]:
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), data[-40:]
    return [json.loads(x) for x in data.split(b"\n") if x]


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO])
@pytest.mark.parametrize("budget", [0, 1, 17, 60])
def test_failed_write_is_cut_back_and_the_log_goes_on(tmp_path, err, budget, caplog):
    path = tmp_path / "agent" / "compressions.jsonl"
    with CompressionLog(path) as log:
        for k in range(3):
            log.record(f"ctx {k}", "q", f"z{k}")
    good = path.read_bytes()
    files: list[FailingFile] = []

    def opener(p: Path) -> FailingFile:
        files.append(FailingFile(p, budget, err))
        return files[-1]

    log = CompressionLog(path)
    log._writer = JsonlAppender(path, opener=opener)  # the same writer record() opens, on a failing file
    with pytest.raises(StoreError, match=rf"compressions\.jsonl: {os.strerror(err)}.*partial line was removed"):
        log.record("ctx 3", "q", "z3 " + "x" * 100)
    assert files[0].n_failures == 1
    assert path.read_bytes() == good  # the partial bytes are gone, nothing else touched
    # the disk has room again: the next records land on their own lines
    files[0].budget = 10**6
    log.record("ctx 4", "q", "z4")
    log.record("ctx 5", "q", "z5")
    log.close()
    assert [r["compression"] for r in _lines(path)] == ["z0", "z1", "z2", "z4", "z5"]
    assert [r["compression"] for r in CompressionLog(path).entries()] == ["z0", "z1", "z2", "z4", "z5"]
    assert any(str(path) in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_when_the_partial_line_cannot_be_removed_further_writes_are_refused(tmp_path):
    path = tmp_path / "log.jsonl"
    with CompressionLog(path) as log:
        log.record("ctx 0", "q", "z0")
    good = path.read_bytes()
    log = CompressionLog(path)
    ff: list[FailingFile] = []
    log._writer = JsonlAppender(path, opener=lambda p: ff.append(FailingFile(p, 20, errno.EIO, True)) or ff[-1])
    with pytest.raises(StoreError, match="could not be removed.*refusing further writes"):
        log.record("ctx 1", "q", "z1")
    ff[0].budget = 10**6
    with pytest.raises(StoreError, match="refusing further writes"):
        log.record("ctx 2", "q", "z2")  # never appended after the torn bytes
    assert path.read_bytes().startswith(good) and len(path.read_bytes()) == len(good) + 20
    # reading skips the torn tail; reopening cuts it off and writing resumes cleanly
    assert [r["compression"] for r in CompressionLog(path).entries()] == ["z0"]
    with CompressionLog(path) as log2:
        log2.record("ctx 3", "q", "z3")
    assert [r["compression"] for r in _lines(path)] == ["z0", "z3"]


def test_complete_last_line_without_newline_is_kept(tmp_path, caplog):
    path = tmp_path / "log.jsonl"
    with CompressionLog(path) as log:
        log.record("ctx 0", "q", "z0")
        log.record("ctx 1", "q", "z1")
    path.write_bytes(path.read_bytes()[:-1])  # killed between the line and its newline
    log = CompressionLog(path)
    assert [r["compression"] for r in log.entries()] == ["z0", "z1"]
    log.record("ctx 2", "q", "z2")
    log.close()
    assert [r["compression"] for r in _lines(path)] == ["z0", "z1", "z2"]
    assert any(str(path) in r.getMessage() and "newline" in r.getMessage() for r in caplog.records)


def test_torn_line_warning_names_the_real_file(tmp_path, caplog):
    path = tmp_path / "my-agent.log.jsonl"
    with CompressionLog(path) as log:
        log.record("ctx 0", "q", "z0")
    with path.open("ab") as fh:
        fh.write(b'{"v":1,"id":"ab')
    caplog.set_level(logging.WARNING)
    assert repair_tail(path) == len(b'{"v":1,"id":"ab')
    (msg,) = [r.getMessage() for r in caplog.records]
    assert str(path) in msg and "records.jsonl" not in msg


def test_a_damaged_middle_line_does_not_hide_the_rest(tmp_path, caplog):
    # a log damaged by an older writer: after a failed write the next record was appended to the
    # partial bytes (one merged, unreadable line), and more lines followed
    path = tmp_path / "log.jsonl"
    with CompressionLog(path) as log:
        log.record("ctx 0", "q", "z0")
    lines = path.read_bytes()
    path.write_bytes(lines + b'{"v":1,"id":"to' + lines.replace(b"z0", b"z1") + lines.replace(b"z0", b"z2"))
    assert [r["compression"] for r in CompressionLog(path).entries()] == ["z0", "z2"]
    assert any("line 2" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("text", ["lone \ud800 surrogate", "\udcff", "mixed ü \U0001F600 \udfff end"])
def test_any_str_is_recorded_and_read_back(tmp_path, text):
    path = tmp_path / "log.jsonl"
    with CompressionLog(path) as log:
        log.record(text, "q", "z " + text, metadata={"note": text})
    (row,) = CompressionLog(path).entries()
    assert row["context"] == text and row["compression"] == "z " + text and row["metadata"]["note"] == text
    path.read_bytes().decode("utf-8")  # the file itself stays valid UTF-8


WRITER = r"""
import sys
from compressbench.agent import CompressionLog
log = CompressionLog(sys.argv[1])
k = 0
while True:
    log.record("context %d " % k + "x" * (k % 7) * 300, "q", "z%d" % k)
    print(k, flush=True)   # printed only once record() returned: the line is on disk
    k += 1
"""


@pytest.mark.parametrize("n_before_kill", [5, 40])
def test_kill_9_of_the_writer_loses_no_acknowledged_record(tmp_path, n_before_kill):
    path = tmp_path / "log.jsonl"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                       os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=env)
    acked = []
    try:
        while len(acked) < n_before_kill:
            line = proc.stdout.readline()
            assert line, "the writer died"
            acked.append(int(line))
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    # more lines may have been written after the last one we read; none may be missing or damaged
    rows = CompressionLog(path).entries()
    got = [int(r["compression"][1:]) for r in rows]
    assert got[: len(acked)] == acked and got == list(range(len(got)))
    with CompressionLog(path) as log:  # reopening repairs any torn tail, then appends cleanly
        log.record("after", "q", "z-after")
    lines = _lines(path)
    assert [r["compression"] for r in lines] == [f"z{k}" for k in got] + ["z-after"]


def test_read_jsonl_reports_bad_lines_unless_asked_to_skip(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_bytes(b'{"a":1}\nnot json\n{"a":2}\n{"a":')
    from compressbench.core.errors import DataError

    with pytest.raises(DataError, match="line 2"):
        read_jsonl(p)
    assert read_jsonl(p, skip_bad=True) == [{"a": 1}, {"a": 2}]


def test_unwritable_log_path_is_a_clean_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot open .*file/log.jsonl"):
        CompressionLog(blocker / "log.jsonl").record("c", "q", "z")

