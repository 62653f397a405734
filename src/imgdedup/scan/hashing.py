"""The hashing phase: fingerprint every listed file the checkpoint does not already hold,
in chunks on the worker pool, storing each result in the checkpoint as it arrives."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

from imgdedup.errors import FetchFailed, InputError
from imgdedup.process_pool import RenewingPool
from imgdedup.scan.checkpoint import Checkpoint, Row, decode_fingerprint
from imgdedup.scan.cluster import ScannedImage
from imgdedup.scan.downloads import Downloads
from imgdedup.scan.options import ScanError
from imgdedup.scan.progress import Console, Progress
from imgdedup.scan.setup import ScanSetup
from imgdedup.scan.sources import Item, Listing, SourceSpec
from imgdedup.scan.stopping import StopRequest
from imgdedup.scan.worker import HashResult, HashTask, hash_chunk

COMMIT_EVERY_S = 0.5
COMMIT_EVERY_ROWS = 500
MAX_CONSECUTIVE_CRASHES = 8

Unreadable = tuple[str, str, str, str]  # (key, uri, code, detail)


@dataclass(frozen=True, slots=True)
class Hashing:
    """What the phase produced, by position in the listing."""

    hashed: dict[int, HashResult]  # this run
    reused: dict[int, Row]  # from the checkpoint
    cut_short: bool  # files left unhashed: --stop-after reached, or a stop request


async def hash_items(
    setup: ScanSetup, listing: Listing, console: Console, pool: RenewingPool, stop: StopRequest,
    downloads: Downloads | None,
) -> Hashing:
    """Hash what the checkpoint lacks, up to --stop-after files, until done or stopped."""
    o = setup.options
    reused, todo = _split_by_checkpoint(listing.items, setup.checkpoint.load())
    budget = len(todo) if o.stop_after is None else min(len(todo), max(0, o.stop_after))
    console.say(
        f"{len(listing.items):,} files ({len(listing.skipped):,} skipped by extension); {len(reused):,} already "
        f"in the checkpoint; hashing {budget:,} with {setup.workers} worker{'s' * (setup.workers != 1)}"
    )
    if budget == 0:
        return Hashing({}, reused, cut_short=budget < len(todo))
    recorder = _Recorder(setup.checkpoint, dict(todo), console.progress("hashing", budget))
    work = partial(hash_chunk, setup.spec, setup.limits, delay_s=o.test_delay_s)
    in_flight: set[asyncio.Future[list[HashResult]]] = set()
    # Small scans get small chunks (smooth progress, quick stop); big ones amortise the
    # per-task cost of the pool over up to `chunk_size` images.
    chunk_size = max(1, min(o.chunk_size, budget // (8 * setup.workers)))
    submitted = 0

    async def collect() -> None:
        if stop.reason:
            pool.drop_queued()  # the chunks no worker has started; the running ones are recorded
        done, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
        in_flight.difference_update(done)
        for future in done:
            for result in future.result():
                recorder.record(result)
        if pool.consecutive_crashes >= MAX_CONSECUTIVE_CRASHES:
            raise ScanError(
                f"{pool.consecutive_crashes} images in a row crashed their worker process: the workers cannot run "
                "here (out of memory? a broken install?); the checkpoint keeps the work done so far"
            )
        recorder.commit_if_due()

    try:
        for chunk in _chunks(todo[:budget], chunk_size):
            if stop.reason:
                break
            tasks = await _tasks(chunk, downloads, recorder)
            if tasks:
                in_flight.add(asyncio.ensure_future(pool.run(work, tasks, _crashed)))
            submitted += len(chunk)
            while in_flight and (len(in_flight) > 2 * setup.workers or stop.reason):
                await collect()
        while in_flight:
            await collect()
    finally:
        if in_flight:  # a failure: leave the rest
            await _abandon(in_flight, pool)
        setup.checkpoint.commit()
        recorder.bar.close()
    return Hashing(recorder.results, reused, cut_short=submitted < len(todo))


def assemble(listing: Listing, spec: SourceSpec, hashing: Hashing) -> tuple[list[ScannedImage], list[Unreadable]]:
    """The fingerprinted images and the unreadable files, in listing order."""
    images: list[ScannedImage] = []
    unreadable: list[Unreadable] = []
    for index, item in enumerate(listing.items):
        uri = spec.uri(item.key)
        if item.error is not None:
            unreadable.append((item.key, uri, *item.error))
            continue
        result = hashing.hashed.get(index)
        if result is not None:
            if result.fingerprint is None:
                unreadable.append((item.key, uri, result.error or "error", result.detail or ""))
                continue
            images.append(ScannedImage(
                item.key, uri, result.fingerprint,
                result.modified if result.modified is not None else item.modified,
                result.physical if result.physical is not None else item.physical, item.link,
            ))
            continue
        row = hashing.reused[index]
        if not row.ok:
            unreadable.append((item.key, uri, row.error or "error", row.detail or ""))
            continue
        assert row.fingerprint is not None
        images.append(
            ScannedImage(item.key, uri, decode_fingerprint(row.fingerprint), row.modified, row.physical, item.link)
        )
    return images, unreadable


class _Recorder:
    """Keeps each result, stores it in the checkpoint and commits every half second or
    500 rows, so a killed scan loses little."""

    def __init__(self, checkpoint: Checkpoint, by_index: dict[int, Item], bar: Progress) -> None:
        self.checkpoint = checkpoint
        self.by_index = by_index
        self.bar = bar
        self.results: dict[int, HashResult] = {}
        self._last_commit = time.monotonic()

    def record(self, result: HashResult) -> None:
        item = self.by_index[result.index]
        self.results[result.index] = dataclasses.replace(result, encoded=None)  # stored: free the text
        self.checkpoint.put(
            Row(
                item.key, result.size if result.size is not None else item.size,
                result.version if result.version is not None else item.version,
                result.modified if result.modified is not None else item.modified,
                result.physical if result.physical is not None else item.physical,
                result.error is None, result.encoded, result.error, result.detail, result.retryable, 1,
            )
        )
        self.bar.advance()

    def commit_if_due(self) -> None:
        if self.checkpoint.pending >= COMMIT_EVERY_ROWS or time.monotonic() - self._last_commit >= COMMIT_EVERY_S:
            self.checkpoint.commit()
            self._last_commit = time.monotonic()


def _split_by_checkpoint(items: list[Item], rows: dict[str, Row]) -> tuple[dict[int, Row], list[tuple[int, Item]]]:
    """(the rows that still hold, by position; the files to hash, with their position)."""
    reused: dict[int, Row] = {}
    todo: list[tuple[int, Item]] = []
    for index, item in enumerate(items):
        if item.error is not None:
            continue
        row = rows.get(item.key)
        if row is not None and _reusable(item, row):
            reused[index] = row
        else:
            todo.append((index, item))
    return reused, todo


def _reusable(item: Item, row: Row) -> bool:
    if item.size is not None and row.size != item.size:
        return False
    if item.version and row.version != item.version:
        return False
    if row.ok:
        return row.fingerprint is not None
    return not row.retryable


async def _tasks(chunk: list[tuple[int, Item]], downloads: Downloads | None, recorder: _Recorder) -> list[HashTask]:
    """The chunk's work for the pool. URL sources are downloaded here first; a download
    that fails is recorded at once (retryable when the server, not the URL, failed)."""
    if downloads is None:
        return [HashTask(index, item.key) for index, item in chunk]
    tasks = []
    for (index, item), data in zip(chunk, await downloads.fetch_all([item.key for _, item in chunk]), strict=True):
        if isinstance(data, InputError):
            retryable = isinstance(data, FetchFailed)
            recorder.record(HashResult(index, None, None, data.code, data.detail, retryable, None, None, None, None))
        else:
            tasks.append(HashTask(index, item.key, data))
    return tasks


def _crashed(task: HashTask) -> HashResult:
    """The result of an image that killed its worker on its own (retried by a resumed scan)."""
    return HashResult(
        task.index, None, None, "hashing_crashed", "the image crashed the decoder process", True,
        None, None, None, None,
    )


async def _abandon(in_flight: set[asyncio.Future[list[HashResult]]], pool: RenewingPool) -> None:
    """Stop waiting for the chunks in flight; those no worker has started are dropped."""
    pool.drop_queued()
    for future in in_flight:
        future.cancel()
    await asyncio.gather(*in_flight, return_exceptions=True)
    in_flight.clear()


def _chunks(items: list[tuple[int, Item]], size: int) -> Iterator[list[tuple[int, Item]]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
