"""Process pools for CPU-bound work, shared by the service's hasher and the scan.

Workers ignore Ctrl-C and exit when their parent is gone. `RenewingPool` replaces its
executor when a worker dies (or overruns its time limit and is killed), runs the lost
work again one item at a time, each in an executor of its own, and blames an item
that kills (or overruns) its worker alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
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


class Lost(enum.Enum):
    """How a worker lost an item: it died, or it overran the time limit and was killed."""

    CRASHED = "crashed"
    TIMED_OUT = "timed_out"


class _WorkLost(Exception):
    def __init__(self, how: Lost) -> None:
        super().__init__(how.value)
        self.how = how


class RenewingPool:
    """An executor built on first use and rebuilt after one of its workers dies.

    `run(work, items, blame)` runs `work(items)` on a worker of the shared executor. If a
    worker dies meanwhile (on this work or a neighbour's: the executor cannot say which
    task a dead worker was running), the executor is replaced and each item of every
    lost work runs again alone, in an executor of its own that runs nothing else (built
    by `build_alone`, best with one worker; default `build`), up to `workers` such items
    at a time. An item that kills that worker too is blamed: `blame(item)` stands for
    its result (or raises). Its neighbours get their results.

    With `time_limit_s`, a work may run that long per item; the workers of an executor
    that overruns are killed (the only way to stop a computation), which loses that
    executor's other work too: all of it runs again alone as above, and an item that
    overruns alone is blamed with `overtime(item)`. At most `workers` works are then
    submitted to the shared executor at once, so that a work's clock starts when a
    worker takes it. A thread cannot be killed: an overrunning thread is abandoned and
    finishes in the background."""

    def __init__(
        self, build: Callable[[], Executor], *, build_alone: Callable[[], Executor] | None = None,
        workers: int = 1, time_limit_s: float | None = None,
    ) -> None:
        self._build = build
        self._build_alone = build_alone or build
        self._executor: Executor | None = None
        self._queued: set[Future[Any]] = set()
        self._time_limit_s = time_limit_s
        self._lanes = asyncio.Semaphore(workers)  # items running alone at once
        self._slots = asyncio.Semaphore(workers) if time_limit_s is not None else None
        self._drops = 0  # drop_queued() calls so far
        self.consecutive_crashes = 0  # items blamed for a crash since the last work that finished

    def executor(self) -> Executor:
        if self._executor is None:
            self._executor = self._build()
        return self._executor

    async def run(
        self, work: Work[ItemT, ResultT], items: list[ItemT], blame: Blame[ItemT, ResultT],
        overtime: Blame[ItemT, ResultT] | None = None,
    ) -> list[ResultT]:
        """The results of `items` in order, less those `drop_queued` took back."""
        try:
            async with self._slots or contextlib.nullcontext():
                return await self._shared(work, items)
        except _WorkLost:
            pass
        outcomes = await asyncio.gather(*(self._alone(work, item) for item in items))
        results: list[ResultT] = []
        for item, outcome in zip(items, outcomes, strict=True):
            if outcome is Lost.CRASHED:
                self.consecutive_crashes += 1
                results.append(blame(item))
            elif outcome is Lost.TIMED_OUT:
                results.append((overtime or blame)(item))
            else:
                results.extend(outcome)
        return results

    async def _shared(self, work: Work[ItemT, ResultT], items: list[ItemT]) -> list[ResultT]:
        executor = self.executor()
        limit = None if self._time_limit_s is None else self._time_limit_s * len(items)
        try:
            return await self._attempt(executor, work, items, limit)
        except _WorkLost:
            self._renew(executor)
            raise

    async def _alone(self, work: Work[ItemT, ResultT], item: ItemT) -> list[ResultT] | Lost:
        """`work([item])` on the one worker of a new executor: nothing else can kill it."""
        drops = self._drops
        async with self._lanes:
            if self._drops != drops:
                return []  # taken back by drop_queued() while waiting for a lane
            executor = self._build_alone()
            finished = False
            try:
                # The worker is up before the clock starts: its start-up is not the item's time.
                await asyncio.wrap_future(executor.submit(_ready))
                results = await self._attempt(executor, work, [item], self._time_limit_s)
                finished = True
                return results
            except _WorkLost as lost:
                return lost.how
            except BrokenProcessPool:  # the worker died starting up
                return Lost.CRASHED
            finally:
                if not finished:  # dead, overrunning, or its caller gave up: stop it now
                    _kill_workers(executor)
                executor.shutdown(wait=False)

    async def _attempt(
        self, executor: Executor, work: Work[ItemT, ResultT], items: list[ItemT], limit: float | None
    ) -> list[ResultT]:
        """`work(items)` on `executor`; raises `_WorkLost` when its worker died or overran."""
        future: Future[list[ResultT]] | None = None
        try:
            future = executor.submit(work, items)
            self._queued.add(future)
            wrapped = asyncio.wrap_future(future)
            if limit is not None:
                try:
                    done, _ = await asyncio.wait({wrapped}, timeout=limit)
                except asyncio.CancelledError:
                    wrapped.cancel()
                    raise
                if not done:
                    wrapped.add_done_callback(_consume)
                    _kill_workers(executor)
                    raise _WorkLost(Lost.TIMED_OUT)
            results = await wrapped
        except BrokenProcessPool:  # submit() raises it too when it is the first to see the death
            raise _WorkLost(Lost.CRASHED) from None
        except asyncio.CancelledError:
            if future is not None and future.cancelled() and not _task_cancelled():
                return []  # taken back by drop_queued()
            raise
        finally:
            if future is not None:
                self._queued.discard(future)
        self.consecutive_crashes = 0
        return results

    def _renew(self, lost: Executor) -> None:
        if self._executor is lost:  # not yet replaced by another caller that met the same death
            self._executor = None
            # Work its killed workers held fails with BrokenProcessPool (run alone again);
            # a thread pool's other work still finishes.
            lost.shutdown(wait=False)

    def drop_queued(self) -> None:
        """Take back the work no worker has started; the running work still finishes."""
        self._drops += 1
        for future in list(self._queued):
            future.cancel()

    def close(self, *, cancel_futures: bool = False) -> None:
        if self._executor is not None:
            executor, self._executor = self._executor, None
            executor.shutdown(wait=True, cancel_futures=cancel_futures)


def _ready() -> None:
    """Runs on a new worker: its completion says the worker has started."""


def _consume(future: asyncio.Future[Any]) -> None:
    """Retrieve the outcome of abandoned work, so that asyncio does not report it."""
    if not future.cancelled():
        future.exception()


def _kill_workers(executor: Executor) -> None:
    """Kill a process pool's workers now, mid-task. Before Python 3.14 (`kill_workers`) a
    pool does not expose them otherwise. A thread pool has nothing to kill."""
    kill = getattr(executor, "kill_workers", None)
    if callable(kill):
        kill()
        return
    for process in list((getattr(executor, "_processes", None) or {}).values()):
        with contextlib.suppress(ValueError, OSError):  # already closed or reaped
            process.kill()


def _task_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
