"""The thumbnails phase: small JPEGs of the images the report shows, made on the worker
pool and cached in the checkpoint (a re-run makes only the missing ones)."""

from __future__ import annotations

import asyncio
from functools import partial

from imgdedup.errors import InputError
from imgdedup.process_pool import RenewingPool
from imgdedup.scan.cluster import Clustering, ScannedImage
from imgdedup.scan.downloads import Downloads
from imgdedup.scan.progress import Console
from imgdedup.scan.setup import ScanSetup
from imgdedup.scan.stopping import StopRequest
from imgdedup.scan.worker import ThumbTask, thumb_chunk


def choose(clustering: Clustering, max_thumbnails: int, per_cluster: int) -> dict[str, str]:
    """sha256 -> a key to read it from (exact copies share one thumbnail). Clusters first,
    largest savings first; a quarter of the budget is kept for the review band when
    there is one."""
    wanted: dict[str, str] = {}

    def fill(images: list[ScannedImage], limit: int) -> bool:
        for image in images:
            if len(wanted) >= limit:
                return False
            wanted.setdefault(image.fingerprint.sha256_hex, image.key)
        return True

    limit = max_thumbnails - (max_thumbnails // 4 if clustering.review else 0)
    for cluster in clustering.clusters:
        if not fill([m.image for m in cluster.members[:per_cluster]], limit):
            break
    for group in clustering.review:
        if not fill([group.anchor, *[m.image for m in group.members[: per_cluster - 1]]], max_thumbnails):
            break
    return wanted


async def make_thumbnails(
    setup: ScanSetup, wanted: dict[str, str], console: Console, pool: RenewingPool, stop: StopRequest,
    downloads: Downloads | None,
) -> dict[str, bytes]:
    """sha256 -> JPEG of every wanted image that has one (the others get a placeholder)."""
    o, checkpoint = setup.options, setup.checkpoint
    size = o.thumb_size
    cached = checkpoint.thumbs(wanted, size)
    thumbs: dict[str, bytes] = {sha: jpeg for sha, jpeg in cached.items() if jpeg is not None}
    missing = [(sha, key) for sha, key in wanted.items() if sha not in cached]
    if not missing or stop.reason:
        return thumbs
    bar = console.progress("thumbnails", len(missing))
    work = partial(thumb_chunk, setup.spec, setup.limits, size=size)
    in_flight: set[asyncio.Future[list[tuple[str, bytes | None]]]] = set()

    def take(done: set[asyncio.Future[list[tuple[str, bytes | None]]]]) -> None:
        for future in done:
            for sha, jpeg in future.result():
                checkpoint.put_thumb(sha, size, jpeg)
                if jpeg is not None:
                    thumbs[sha] = jpeg
                bar.advance()

    step = max(1, o.chunk_size // 2)
    for start in range(0, len(missing), step):
        if stop.reason:
            break
        tasks = await _tasks(missing[start : start + step], downloads)
        if tasks:
            in_flight.add(asyncio.ensure_future(pool.run(work, tasks, _placeholder)))
        if len(in_flight) > 2 * setup.workers:
            done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            take(done)
    if in_flight:
        done, _ = await asyncio.wait(in_flight)
        take(done)
    checkpoint.commit()
    bar.close()
    return thumbs


async def _tasks(batch: list[tuple[str, str]], downloads: Downloads | None) -> list[ThumbTask]:
    """URL sources are downloaded here first; a failed download gets a placeholder."""
    if downloads is None:
        return [ThumbTask(sha, key) for sha, key in batch]
    fetched = await downloads.fetch_all([key for _, key in batch])
    return [ThumbTask(sha, key, data) for (sha, key), data in zip(batch, fetched, strict=True)
            if not isinstance(data, InputError)]


def _placeholder(task: ThumbTask) -> tuple[str, bytes | None]:
    """An image that killed its worker on its own gets the placeholder."""
    return task.sha, None
