"""Process pools for CPU-bound work, shared by the service's hasher and the scan.

Workers ignore Ctrl-C and exit when their parent is gone. `RenewingPool` replaces its
executor when a worker dies, runs the work again one item at a time, and blames an
item that kills a worker on its own.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import wait
from typing import Any, TypeVar

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")
Work = Callable[[list[ItemT]], list[ResultT]]  # picklable; runs on a worker, one result per item
Blame = Callable[[ItemT], ResultT]  # the result of an item that killed its worker on its own


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


class RenewingPool:
    """An executor built on first use and rebuilt after one of its workers dies.

    `run(work, items, blame)` runs `work(items)` on a worker. If a worker dies meanwhile
    (on this work or a neighbour's), each item is run again on its own; an item whose
    lone run fails the same way is blamed, and `blame(item)` stands for its result (or
    raises). Lone runs queued when a culprit kills its worker again are blamed with it:
    the executor cannot say which task a dead worker was running."""

    def __init__(self, build: Callable[[], Executor]) -> None:
        self._build = build
        self._executor: Executor | None = None
        self._queued: set[Future[Any]] = set()
        self.consecutive_crashes = 0  # items blamed since the last work that finished

    def executor(self) -> Executor:
        if self._executor is None:
            self._executor = self._build()
        return self._executor

    async def run(self, work: Work[ItemT, ResultT], items: list[ItemT], blame: Blame[ItemT, ResultT]) -> list[ResultT]:
        """The results of `items` in order, less those `drop_queued` took back."""
        try:
            return await self._attempt(work, items)
        except BrokenProcessPool:
            pass
        alone = await asyncio.gather(*(self._run_alone(work, item, blame) for item in items))
        return [result for results in alone for result in results]

    async def _run_alone(self, work: Work[ItemT, ResultT], item: ItemT, blame: Blame[ItemT, ResultT]) -> list[ResultT]:
        try:
            return await self._attempt(work, [item])
        except BrokenProcessPool:
            self.consecutive_crashes += 1
            return [blame(item)]

    async def _attempt(self, work: Work[ItemT, ResultT], items: list[ItemT]) -> list[ResultT]:
        executor = self.executor()
        future: Future[list[ResultT]] | None = None
        try:
            future = executor.submit(work, items)
            self._queued.add(future)
            results = await asyncio.wrap_future(future)
        except BrokenProcessPool:  # submit() raises it too when it is the first to see the death
            self._renew(executor)
            raise
        except asyncio.CancelledError:
            if future is not None and future.cancelled() and not _task_cancelled():
                return []  # taken back by drop_queued()
            raise
        finally:
            if future is not None:
                self._queued.discard(future)
        self.consecutive_crashes = 0
        return results

    def _renew(self, broken: Executor) -> None:
        if self._executor is broken:  # not yet replaced by another caller that met the same death
            broken.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def drop_queued(self) -> None:
        """Take back the work no worker has started; the running work still finishes."""
        for future in list(self._queued):
            future.cancel()

    def close(self, *, cancel_futures: bool = False) -> None:
        if self._executor is not None:
            executor, self._executor = self._executor, None
            executor.shutdown(wait=True, cancel_futures=cancel_futures)


def _task_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
