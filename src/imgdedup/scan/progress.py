"""Progress output: on a terminal one line redrawn in place (count, percentage, bar, rate,
ETA); elsewhere (CI logs, `nohup`, a pipe) a plain line every `interval` seconds and one
at the end. The rate covers the last few seconds, so the ETA follows the current speed.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import TextIO

REDRAW_S = 0.1
RATE_WINDOW_S = 5.0


def format_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "--:--"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    def __init__(
        self,
        label: str,
        total: int | None,
        *,
        stream: TextIO | None = None,
        tty: bool | None = None,
        interval: float = 10.0,
        unit: str = "images",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval = interval
        self.unit = unit
        self.clock = clock
        self.done = 0
        self.started = clock()
        self._last_draw = float("-inf")
        self._last_line = self.started
        self._samples: deque[tuple[float, int]] = deque([(self.started, 0)])
        self._closed = False

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = self.clock()
        self._samples.append((now, self.done))
        while len(self._samples) > 2 and now - self._samples[1][0] > RATE_WINDOW_S:
            self._samples.popleft()
        if self.tty:
            if now - self._last_draw >= REDRAW_S:
                self._draw(now)
        elif now - self._last_line >= self.interval:
            self._last_line = now
            self._line(now)

    def rate(self, now: float | None = None) -> float:
        now = self.clock() if now is None else now
        t0, n0 = self._samples[0]
        elapsed = now - t0
        return (self.done - n0) / elapsed if elapsed > 0 else 0.0

    def eta(self, now: float | None = None) -> float | None:
        if self.total is None:
            return None
        rate = self.rate(now)
        return (self.total - self.done) / rate if rate > 0 else None

    def _counts(self) -> str:
        if self.total is None:
            return f"{self.done:,}"
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return f"{self.done:,}/{self.total:,} ({pct:.1f}%)"

    def _draw(self, now: float) -> None:
        self._last_draw = now
        width = shutil.get_terminal_size((100, 20)).columns
        tail = f" {self.rate(now):,.0f} {self.unit}/s ETA {format_duration(self.eta(now))}"
        head = f"{self.label} {self._counts()} "
        bar_width = max(0, min(40, width - len(head) - len(tail) - 3))
        bar = ""
        if self.total and bar_width >= 5:
            filled = int(bar_width * min(1.0, self.done / self.total))
            bar = "[" + "#" * filled + "." * (bar_width - filled) + "]"
        line = (head + bar + tail)[: width - 1]
        self.stream.write("\r" + line.ljust(width - 1))
        self.stream.flush()

    def _line(self, now: float) -> None:
        self.stream.write(
            f"imgdedup scan: {self.label} {self._counts()}, {self.rate(now):,.0f} {self.unit}/s, "
            f"ETA {format_duration(self.eta(now))}\n"
        )
        self.stream.flush()

    def close(self) -> float:
        """Finish the line; returns the elapsed seconds."""
        if self._closed:
            return self.clock() - self.started
        self._closed = True
        now = self.clock()
        elapsed = now - self.started
        average = self.done / elapsed if elapsed > 0 else 0.0
        summary = f"{self.label} {self._counts()} in {format_duration(elapsed)} ({average:,.0f} {self.unit}/s)"
        if self.tty:
            width = shutil.get_terminal_size((100, 20)).columns
            self.stream.write("\r" + summary[: width - 1].ljust(width - 1) + "\n")
        else:
            self.stream.write(f"imgdedup scan: {summary}\n")
        self.stream.flush()
        return elapsed


class Console:
    """Where a scan talks: one-line messages and progress bars, on one stream."""

    def __init__(self, stream: TextIO, *, tty: bool | None = None, interval: float = 10.0) -> None:
        self.stream = stream
        self.tty = tty
        self.interval = interval

    def say(self, text: str) -> None:
        self.stream.write(f"imgdedup scan: {text}\n")
        self.stream.flush()

    def progress(self, label: str, total: int | None, unit: str = "images") -> Progress:
        return Progress(label, total, stream=self.stream, tty=self.tty, interval=self.interval, unit=unit)
