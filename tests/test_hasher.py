"""The service's hasher on real worker processes, with a fingerprint function that
misbehaves for marked inputs: an image that kills its worker, or overruns the time
limit, is refused on its own; the images in flight beside it still get fingerprints."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from imagegen import distinct_image, encode

from imgdedup.fingerprint import Fingerprint, ImageLimits, fingerprint
from imgdedup.hasher import Hasher, HashingCrashed, HashingTimeout

LIMITS = ImageLimits(max_bytes=10_000_000, max_pixels=10_000_000, crop_windows=False)
CRASH = b"crash"
STALL = b"stall:"  # followed by the path of a file that records the stalled workers' pids
HASHED_BY = "HASHER_TEST_HASHED_BY"  # names a file that records the pid of every image's worker


def misbehaving(data: bytes, limits: ImageLimits) -> Fingerprint:
    """Worker side: `fingerprint` after a second's work, except that CRASH kills the
    worker and STALL never finishes."""
    if data == CRASH:
        os._exit(3)
    if data.startswith(STALL):
        with open(data[len(STALL) :].decode(), "a") as pids:
            pids.write(f"{os.getpid()}\n")
        time.sleep(3600)
    if HASHED_BY in os.environ:
        with open(os.environ[HASHED_BY], "a") as pids:
            pids.write(f"{os.getpid()}\n")
    time.sleep(1.0)
    return fingerprint(data, limits)


@asynccontextmanager
async def hasher(**options: object) -> AsyncIterator[Hasher]:
    h = Hasher(LIMITS, workers=2, compute=misbehaving, **options)  # type: ignore[arg-type]
    await h.start()
    try:
        yield h
    finally:
        await h.close()


def photos(count: int) -> list[bytes]:
    return [encode(distinct_image(800 + n, (96, 72))) for n in range(count)]


async def outcomes(h: Hasher, images: list[bytes]) -> list[Fingerprint | BaseException]:
    """All at once, in this order; each image's fingerprint or error."""
    return await asyncio.gather(*(h.fingerprint(data) for data in images), return_exceptions=True)


def assert_fingerprints(results: list[Fingerprint | BaseException], images: list[bytes]) -> None:
    for result, data in zip(results, images, strict=True):
        assert isinstance(result, Fingerprint), result
        assert result == fingerprint(data, LIMITS)


async def test_an_image_that_kills_its_worker_is_refused_alone() -> None:
    innocents = photos(4)
    async with hasher() as h:
        # The crash comes first: it kills its worker while the others are running or queued.
        results = await outcomes(h, [CRASH, *innocents])
        assert isinstance(results[0], HashingCrashed), results[0]
        assert_fingerprints(results[1:], innocents)
        assert_fingerprints(await outcomes(h, innocents[:1]), innocents[:1])  # the pool was renewed


async def test_an_image_that_overruns_the_time_limit_is_refused_and_its_worker_killed(tmp_path: Path) -> None:
    pids = tmp_path / "stalled-pids"
    innocents = photos(6)  # a second each: some are in flight on the other worker when the stall is killed
    async with hasher(time_limit_s=3.0) as h:
        results = await outcomes(h, [STALL + str(pids).encode(), *innocents])
        assert isinstance(results[0], HashingTimeout), results[0]
        assert results[0].code == "hashing_timeout" and "3 s" in results[0].detail
        assert_fingerprints(results[1:], innocents)
        stalled = [int(pid) for pid in pids.read_text().split()]
        assert len(stalled) == 2, "tried among the others, then alone"
        await until(lambda: not any(map(running, stalled)), "the overrunning workers were not killed")
        assert_fingerprints(await outcomes(h, innocents[:1]), innocents[:1])  # the pool was renewed


async def until(condition: Callable[[], bool], message: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message
        await asyncio.sleep(0.05)


def running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def test_the_time_limit_does_not_count_waiting_for_a_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight images of a second each on two workers under a limit of two seconds: the
    queue is longer than the limit, no image is, and none is tried twice."""
    hashed_by = tmp_path / "hashed-by"
    monkeypatch.setenv(HASHED_BY, str(hashed_by))  # the workers inherit it
    innocents = photos(8)
    async with hasher(time_limit_s=2.0) as h:
        assert_fingerprints(await outcomes(h, innocents), innocents)
    assert len(hashed_by.read_text().split()) == len(innocents)
