"""Process pools for CPU-bound work, shared by the service's hasher and the scan:
workers ignore Ctrl-C and exit when their parent is gone."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from multiprocessing.connection import wait


def prepare_worker() -> None:
    """Start of a pool worker: leave Ctrl-C to the parent (a terminal sends SIGINT to the
    whole process group; the parent decides when its workers stop) and exit with the
    parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    exit_with_parent()


def exit_with_parent() -> None:
    """End this process as soon as its parent is gone, watched from a daemon thread.

    A pool worker holds both ends of its own task pipe, so after its parent is killed
    (SIGKILL, the OOM killer) it would otherwise wait for work forever."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_when_closed, args=(parent.sentinel,), name="parent-watchdog", daemon=True).start()


def _exit_when_closed(sentinel: int) -> None:
    wait([sentinel])
    os._exit(1)
