"""A process pool for an asyncio service: each worker owns one socket, which the event
loop writes work to and reads results from itself.

`concurrent.futures.ProcessPoolExecutor` passes every task through a manager thread
and a queue feeder thread before it reaches a worker, and every result back through
the manager thread and `call_soon_threadsafe`; each hop is a thread wake-up and a GIL
hand-off in the service process, which costs an image's round trip more than its
pickling. Here the event loop sends a task straight to an idle worker and reads its
result when the socket is readable. Same contract as the standard pool where
`RenewingPool` relies on it: `submit` returns a `concurrent.futures.Future`; when a
worker dies every unfinished future fails with `BrokenProcessPool` and the pool takes
no more work; `kill_workers()` kills every worker mid-task.

Built and used on the thread that runs the event loop; `shutdown` may be called from
any thread.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import pickle
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext
from multiprocessing.process import BaseProcess
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")
_STOP = b""  # asks a worker to exit


def _serve(conn: Connection, initializer: Callable[[], None] | None) -> None:
    """Worker: run each task received, send back ("ok", result) or ("err", exception)."""
    if initializer is not None:
        initializer()
    while True:
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):
            return  # the service is gone
        if message == _STOP:
            return
        outcome: tuple[str, Any]
        try:
            fn, args, kwargs = pickle.loads(message)
            outcome = ("ok", fn(*args, **kwargs))
        except BaseException as exc:  # the caller's future carries it
            outcome = ("err", exc)
        try:
            payload = pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # an unpicklable result or exception
            payload = pickle.dumps(("err", RuntimeError(f"result could not be sent: {exc!r}")))
        conn.send_bytes(payload)


class _Worker:
    __slots__ = ("conn", "future", "process", "stopping")

    def __init__(self, process: BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.future: Future[Any] | None = None
        self.stopping = False


class PipeExecutor(Executor):
    """`workers` processes of `mp_context` (spawn), started now, each running
    `initializer` first."""

    def __init__(
        self, workers: int, *, mp_context: SpawnContext, initializer: Callable[[], None] | None = None
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._queue: collections.deque[tuple[Future[Any], bytes]] = collections.deque()
        self._idle: collections.deque[_Worker] = collections.deque()
        self._workers: list[_Worker] = []
        self._broken = False
        self._shut = False
        for _ in range(workers):
            ours, theirs = mp_context.Pipe(duplex=True)
            process = mp_context.Process(target=_serve, args=(theirs, initializer), daemon=True, name="imgdedup-hasher")
            process.start()
            theirs.close()
            worker = _Worker(process, ours)
            self._workers.append(worker)
            self._idle.append(worker)
            self._loop.add_reader(ours.fileno(), self._readable, worker)

    # --- Executor ----------------------------------------------------------------------
    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        if self._broken:
            raise BrokenProcessPool("a worker of this pool died")
        if self._shut:
            raise RuntimeError("cannot schedule new work after shutdown")
        future: Future[R] = Future()
        payload = pickle.dumps((fn, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
        if threading.get_ident() == self._thread:
            self._enqueue(future, payload)
        else:
            self._loop.call_soon_threadsafe(self._enqueue, future, payload)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Workers finish the work already submitted (less what `cancel_futures` takes
        back), then exit; `wait` (off the event loop's thread) waits for that."""
        if threading.get_ident() == self._thread:
            self._shutdown_now(cancel_futures)
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing more to do there
            self._loop.call_soon_threadsafe(self._shutdown_now, cancel_futures)
        if wait:
            for worker in self._workers:
                worker.process.join()

    def kill_workers(self) -> None:
        """Kill every worker now (their futures fail with BrokenProcessPool)."""
        for worker in self._workers:
            with contextlib.suppress(ValueError, OSError, AttributeError):
                worker.process.kill()

    # --- on the event loop -------------------------------------------------------------
    def _enqueue(self, future: Future[Any], payload: bytes) -> None:
        if self._broken:
            future.set_exception(BrokenProcessPool("a worker of this pool died"))
            return
        self._queue.append((future, payload))
        self._dispatch()

    def _dispatch(self) -> None:
        while self._idle and self._queue:
            future, payload = self._queue.popleft()
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while queued
            worker = self._idle.popleft()
            worker.future = future
            try:
                worker.conn.send_bytes(payload)
            except OSError:  # the worker is gone; its socket's EOF breaks the pool
                self._idle.appendleft(worker)
                self._break()
                return
        if self._shut and not self._queue:
            while self._idle:
                self._stop(self._idle.popleft())

    def _readable(self, worker: _Worker) -> None:
        try:
            message = worker.conn.recv_bytes()
        except (EOFError, OSError):
            self._lost(worker)
            return
        future, worker.future = worker.future, None
        if future is not None:
            try:
                status, value = pickle.loads(message)
            except Exception as exc:
                status, value = "err", RuntimeError(f"result could not be read: {exc!r}")
            if status == "ok":
                future.set_result(value)
            else:
                future.set_exception(value)
        self._idle.append(worker)
        self._dispatch()

    def _lost(self, worker: _Worker) -> None:
        """EOF on a worker's socket: it exited (asked to, or it died)."""
        self._close(worker)
        if not worker.stopping:
            self._break()

    def _break(self) -> None:
        self._broken = True
        error = "a worker of this pool died while running or before starting a task"
        for worker in self._workers:
            if worker.future is not None and not worker.future.done():
                worker.future.set_exception(BrokenProcessPool(error))
            worker.future = None
        while self._queue:
            future, _ = self._queue.popleft()
            if future.set_running_or_notify_cancel():
                future.set_exception(BrokenProcessPool(error))
        self._idle.clear()
        self.kill_workers()  # the standard pool's workers go too when one dies
        for worker in self._workers:
            self._close(worker)

    def _shutdown_now(self, cancel_futures: bool) -> None:
        self._shut = True
        if cancel_futures:
            while self._queue:
                self._queue.popleft()[0].cancel()
        self._dispatch()

    def _stop(self, worker: _Worker) -> None:
        worker.stopping = True
        with contextlib.suppress(OSError):
            worker.conn.send_bytes(_STOP)

    def _close(self, worker: _Worker) -> None:
        if worker.conn.closed:
            return
        with contextlib.suppress(ValueError, OSError, RuntimeError):  # RuntimeError: the loop is closed
            self._loop.remove_reader(worker.conn.fileno())
        worker.conn.close()
        with contextlib.suppress(ValueError, AssertionError):
            worker.process.join(0)  # reap it if it has exited
