"""The hasher's process pool (`PipeExecutor`) keeps the standard pool's contract that
`RenewingPool` relies on: results and exceptions come back to their own futures, a
dead worker fails every unfinished future with BrokenProcessPool and the pool takes no
more work, queued work can be cancelled, shutdown from another thread waits for the
work submitted."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from concurrent.futures import CancelledError
from concurrent.futures.process import BrokenProcessPool

import pytest

from imgdedup.pipe_pool import PipeExecutor

SPAWN = multiprocessing.get_context("spawn")


def double(value: int) -> int:
    return 2 * value


def pid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def fail(message: str) -> None:
    raise ValueError(message)


def die() -> None:
    os._exit(3)


async def test_results_and_exceptions_reach_their_own_futures() -> None:
    pool = PipeExecutor(2, mp_context=SPAWN)
    try:
        futures = [pool.submit(double, n) for n in range(20)]
        failing = pool.submit(fail, "bad input")
        assert [await asyncio.wrap_future(f) for f in futures] == [2 * n for n in range(20)]
        with pytest.raises(ValueError, match="bad input"):
            await asyncio.wrap_future(failing)
        assert await asyncio.wrap_future(pool.submit(bytes.__len__, b"x" * 3_000_000)) == 3_000_000
    finally:
        pool.shutdown(wait=False)


async def test_work_runs_on_every_worker_side_by_side() -> None:
    pool = PipeExecutor(2, mp_context=SPAWN)
    try:
        pids = await asyncio.gather(*(asyncio.wrap_future(pool.submit(pid_after, 0.5)) for _ in range(2)))
        assert len(set(pids)) == 2 and os.getpid() not in pids
    finally:
        pool.shutdown(wait=False)


async def test_a_dead_worker_fails_every_unfinished_future_and_the_pool() -> None:
    pool = PipeExecutor(2, mp_context=SPAWN)
    await asyncio.wrap_future(pool.submit(double, 1))  # workers up
    slow = pool.submit(pid_after, 5.0)
    killer = pool.submit(die)
    queued = pool.submit(double, 2)
    for future in (slow, killer, queued):
        with pytest.raises(BrokenProcessPool):
            await asyncio.wrap_future(future)
    with pytest.raises(BrokenProcessPool):
        pool.submit(double, 3)
    pool.shutdown(wait=False)


async def test_kill_workers_breaks_the_work_in_flight() -> None:
    pool = PipeExecutor(1, mp_context=SPAWN)
    running = pool.submit(pid_after, 60.0)
    await asyncio.sleep(1.0)
    pool.kill_workers()
    with pytest.raises(BrokenProcessPool):
        await asyncio.wrap_future(running)
    pool.shutdown(wait=False)


async def test_queued_work_can_be_cancelled_and_shutdown_waits_for_the_rest() -> None:
    pool = PipeExecutor(1, mp_context=SPAWN)
    running = pool.submit(pid_after, 0.5)
    queued = pool.submit(double, 4)
    assert queued.cancel()
    kept = pool.submit(double, 5)
    await asyncio.to_thread(pool.shutdown, True)  # from another thread, as Hasher.close does
    assert isinstance(running.result(timeout=0), int)
    assert kept.result(timeout=0) == 10
    with pytest.raises(CancelledError):
        queued.result(timeout=0)
    with pytest.raises(RuntimeError):
        pool.submit(double, 6)
