"""Progress lines when stderr is not a terminal (issue 12): stage, done/total, ETA."""

from __future__ import annotations

import io
import logging

from compressbench.core.progress import Progress, format_duration


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_format_duration():
    assert [format_duration(s) for s in (0, 7.4, 65, 3600 + 180)] == ["0s", "7s", "1m05s", "1h03m"]


def test_lines_without_a_terminal(caplog):
    caplog.set_level(logging.INFO, logger="compressbench.core.progress")
    clock = Clock()
    p = Progress("compress", 32, interval_s=30, stream=io.StringIO(), clock=clock)
    for k in range(32):
        clock.t += 5  # 5 s per item
        p.update()
    p.close()
    lines = [r.getMessage() for r in caplog.records]
    # a start line, one every 30 s (every 6 items), an end line
    assert lines[0] == "compress: 0/32 items"
    assert lines[1] == "compress: 6/32 items (19%), 30s elapsed, ETA 2m10s"  # 26 items x 5 s
    assert lines[-1] == "compress: 32/32 items done in 2m40s"
    assert len(lines) == 1 + 5 + 1


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_bar_and_no_lines(caplog):
    caplog.set_level(logging.INFO, logger="compressbench.core.progress")
    stream = FakeTTY()
    with Progress("score (MI)", 3, stream=stream) as p:
        p.update(3)
    assert caplog.records == [] and "score (MI)" in stream.getvalue()


def test_disabled_and_stopped(caplog):
    caplog.set_level(logging.INFO, logger="compressbench.core.progress")
    with Progress("x", 3, enabled=False, stream=io.StringIO()) as p:
        p.update()
    assert caplog.records == []
    with Progress("predict", 4, stream=io.StringIO(), clock=Clock()) as p:
        p.update()
    assert caplog.records[-1].getMessage() == "predict: 1/4 items stopped in 0s"
