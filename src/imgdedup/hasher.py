"""Runs the pure hashing in worker processes so the event loop never decodes pixels.

Decoding is CPU-bound and partly holds the GIL; a process pool keeps the loop free to
serve HTTP, heartbeat Kafka and talk to Redis while images are hashed on every core.
Workers are started with `spawn` (not `fork`: forking a process that already runs an
event loop and client threads is a classic source of deadlocks; not `forkserver`: its
server and workers outlive a SIGKILLed service). Each worker watches its parent and
exits when the parent is gone, so a killed service leaves no processes behind.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from imgdedup.errors import InputError
from imgdedup.fingerprint.hashing import Fingerprint, ImageLimits, fingerprint
from imgdedup.process_pool import prepare_worker


class HashingCrashed(InputError):
    """The worker died while decoding this image twice in a row (a decoder crash or OOM)."""

    code = "hashing_crashed"
    http_status = 422


def _worker_init() -> None:
    """Worker start: the shared worker set-up, then the heavy imports before the first job."""
    prepare_worker()
    import numpy  # noqa: F401
    import PIL.Image  # noqa: F401

    import imgdedup.fingerprint.hashing  # noqa: F401


class Hasher:
    """Async front of a worker pool computing `fingerprint(data)`."""

    def __init__(self, limits: ImageLimits, workers: int, *, use_threads: bool = False) -> None:
        self.limits = limits
        self.workers = workers
        self._use_threads = use_threads
        self._pool: Executor | None = None

    def _new_pool(self) -> Executor:
        if self._use_threads:
            return ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="hasher")
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init,
        )

    async def start(self) -> None:
        self._pool = self._new_pool()
        loop = asyncio.get_running_loop()
        # Start every worker now, so the first requests do not pay for process start-up.
        await asyncio.gather(*(loop.run_in_executor(self._pool, time.sleep, 0.01) for _ in range(self.workers)))

    async def fingerprint(self, data: bytes) -> Fingerprint:
        if self._pool is None:
            raise RuntimeError("Hasher.start() was not awaited")
        loop = asyncio.get_running_loop()
        for attempt in (1, 2):
            pool = self._pool
            try:
                return await loop.run_in_executor(pool, fingerprint, data, self.limits)
            except BrokenProcessPool:
                # A worker died (this image or a neighbour's). Replace the pool once; if
                # the same image kills it again, it is the image.
                if self._pool is pool:
                    pool.shutdown(wait=False, cancel_futures=True)
                    self._pool = self._new_pool()
                if attempt == 2:
                    raise HashingCrashed("the image crashed the decoder twice") from None
        raise AssertionError("unreachable")

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await asyncio.get_running_loop().run_in_executor(None, pool.shutdown)
