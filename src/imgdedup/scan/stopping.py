"""Stopping a scan early: a signal or --stop-after asks, the phases finish the work in
flight, and the checkpoint keeps everything done so far."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO


class StopRequest:
    """Why the scan stops before its end, once something asks: "interrupted" (SIGINT,
    SIGTERM) or "stop-after" (--stop-after reached). The first reason stays."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def request(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason


@contextmanager
def stop_on_signals(stop: StopRequest, stream: TextIO) -> Iterator[None]:
    """While inside: SIGINT or SIGTERM requests a stop; a second signal acts at once."""
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []

    def on_signal(signum: int) -> None:
        if stop.reason is None:
            stream.write(
                f"\nimgdedup scan: {signal.Signals(signum).name}: finishing the images in flight and saving "
                "the checkpoint; run the same command again to resume\n"
            )
        stop.request("interrupted")
        for sig in installed:
            loop.remove_signal_handler(sig)
        installed.clear()

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal, sig)
            installed.append(sig)
        except (RuntimeError, ValueError, NotImplementedError):
            pass  # not the main thread (embedded use): the caller handles signals
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
