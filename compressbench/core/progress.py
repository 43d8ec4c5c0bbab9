"""Progress of long stages: a tqdm bar on a terminal, periodic log lines everywhere else.

CI logs and batch jobs have no terminal, and a tqdm bar there is either silent or a wall of
carriage returns. So when stderr is not a TTY, :class:`Progress` logs one line when a stage starts,
then at most one every ``interval_s`` seconds, and one when it ends::

    compress: 0/32 items
    compress: 12/32 items (38%), 1m05s elapsed, ETA 1m48s
    compress: 32/32 items done in 2m53s

on the logger ``compressbench.core.progress`` at INFO (the CLI shows it; a library caller decides).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import IO, Any
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

#: Seconds between progress lines when stderr is not a terminal (the CLI's default).
DEFAULT_INTERVAL_S = 30.0


def format_duration(seconds: float) -> str:
    """``2h03m``, ``1m05s``, ``7s`` (whole seconds)."""
    s = int(round(max(0.0, seconds)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{sec:02d}s"
    return f"{sec}s"


class Progress:
    """Progress of one stage over ``total`` items (see the module docstring).

    ``enabled=False`` shows nothing. ``stream``: where a bar would go (default stderr; its
    ``isatty()`` picks bar or log lines). ``clock``: seconds, monotonic (tests pass a fake one).
    """

    def __init__(self, stage: str, total: int, *, enabled: bool = True, interval_s: float = DEFAULT_INTERVAL_S,
                 unit: str = "items", stream: IO[str] | None = None, clock: Callable[[], float] = time.monotonic):
        self.stage = stage
        self.total = total
        self.unit = unit
        self.done = 0
        self._interval_s = interval_s
        self._clock = clock
        self._start = clock()
        self._last_line = self._start
        self._closed = False
        stream = stream if stream is not None else sys.stderr
        self._bar: Any = None
        self._lines = False
        if not enabled or total <= 0:
            return
        if getattr(stream, "isatty", lambda: False)():
            self._bar = tqdm(total=total, desc=stage, unit=unit.rstrip("s") or "item", file=stream, leave=False,
                             dynamic_ncols=True)
        else:
            self._lines = True
            log.info("%s: 0/%d %s", stage, total, unit)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self._lines and self.done < self.total:
            now = self._clock()
            if now - self._last_line >= self._interval_s:
                self._last_line = now
                log.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        """The progress line for now: stage, done/total, share, elapsed and ETA."""
        now = self._clock() if now is None else now
        elapsed = now - self._start
        text = f"{self.stage}: {self.done}/{self.total} {self.unit}"
        if self.total:
            text += f" ({self.done / self.total:.0%})"
        text += f", {format_duration(elapsed)} elapsed"
        if 0 < self.done < self.total and elapsed > 0:
            text += f", ETA {format_duration(elapsed / self.done * (self.total - self.done))}"
        return text

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self._lines:
            elapsed = self._clock() - self._start
            status = "done" if self.done >= self.total else "stopped"
            log.info("%s: %d/%d %s %s in %s", self.stage, self.done, self.total, self.unit, status,
                     format_duration(elapsed))

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["DEFAULT_INTERVAL_S", "Progress", "format_duration"]
