"""Hashing on worker processes: decoding is CPU-bound and partly holds the GIL, so the
event loop stays free for HTTP, Kafka and Redis while images are hashed on every core.
Workers start with `spawn`: forking a process that already runs an event loop and
client threads is a classic source of deadlocks. The event loop talks to each worker
over a socket of its own (`pipe_pool`), without the standard pool's helper threads.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from functools import partial

from imgdedup.errors import InputError
from imgdedup.fingerprint import Fingerprint, ImageLimits, fingerprint
from imgdedup.pipe_pool import PipeExecutor
from imgdedup.process_pool import RenewingPool, prepare_worker


class HashingCrashed(InputError, code="hashing_crashed", http_status=422):
    """The image killed the worker decoding it, also when it was alone in a worker process
    (a decoder crash or running out of memory)."""


class HashingTimeout(InputError, code="hashing_timeout", http_status=422):
    """Fingerprinting the image overran the time limit, also alone in a worker process."""


#: What fingerprints one image on a worker (picklable): `fingerprint` but in tests.
Compute = Callable[[bytes, ImageLimits], Fingerprint]


def _worker_init() -> None:
    """Worker start: the shared worker set-up, then the heavy imports before the first job."""
    prepare_worker()
    import numpy  # noqa: F401
    import PIL.Image  # noqa: F401

    import imgdedup.fingerprint  # noqa: F401


def _fingerprint_each(compute: Compute, limits: ImageLimits, images: list[bytes]) -> list[Fingerprint]:
    return [compute(data, limits) for data in images]


def _crashed(data: bytes) -> Fingerprint:
    """The blame for an image that killed its worker on its own too: refuse it."""
    raise HashingCrashed("the image crashed the decoder process, also when decoded alone")


class Hasher:
    """Async front of a worker pool computing `fingerprint(data)`.

    `time_limit_s`: longest an image may take; its worker is killed and replaced then.
    `compute`: the function run on the workers (tests put a misbehaving one there)."""

    def __init__(
        self, limits: ImageLimits, workers: int, *, time_limit_s: float | None = None,
        use_threads: bool = False, compute: Compute = fingerprint,
    ) -> None:
        self.limits = limits
        self.workers = workers
        self.time_limit_s = time_limit_s
        self._use_threads = use_threads
        self._work = partial(_fingerprint_each, compute, limits)
        self._pool: RenewingPool | None = None

    def _new_executor(self, workers: int) -> Executor:
        if self._use_threads:
            return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hasher")
        return PipeExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init)

    async def start(self) -> None:
        self._pool = RenewingPool(
            partial(self._new_executor, self.workers), build_alone=partial(self._new_executor, 1),
            workers=self.workers, time_limit_s=self.time_limit_s,
        )
        executor = self._pool.executor()
        loop = asyncio.get_running_loop()
        # Start every worker now, so the first requests do not pay for process start-up.
        await asyncio.gather(*(loop.run_in_executor(executor, time.sleep, 0.01) for _ in range(self.workers)))

    async def fingerprint(self, data: bytes) -> Fingerprint:
        """Raises `HashingCrashed` or `HashingTimeout` when the image kills or overruns a
        worker on its own (a worker lost to a neighbour's image costs a retry alone)."""
        if self._pool is None:
            raise RuntimeError("Hasher.start() was not awaited")
        (result,) = await self._pool.run(self._work, [data], _crashed, self._overran)
        return result

    def _overran(self, data: bytes) -> Fingerprint:
        raise HashingTimeout(f"fingerprinting the image took longer than the limit of {self.time_limit_s:g} s")

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await asyncio.get_running_loop().run_in_executor(None, pool.close)
