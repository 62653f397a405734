"""The scan, phase by phase: list, hash (parallel, checkpointed), cluster, thumbnails,
register (optional), write the reports.

Hashing runs on a `forkserver` process pool of our own in chunks of a few dozen items;
the parent only routes results into the checkpoint. Clustering happens once every
image has a fingerprint, because the registration order (keeper order) needs them all;
it costs a small fraction of the hashing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from imgdedup.config import ConfigError, Settings
from imgdedup.decisions.deduplicator import Deduplicator
from imgdedup.errors import FetchFailed, InputError
from imgdedup.fingerprint.hashing import HASH_ALGORITHM
from imgdedup.hasher import Hasher
from imgdedup.index.interface import DedupIndex
from imgdedup.index.memory import MemoryIndex
from imgdedup.metrics import Metrics
from imgdedup.records import validate_namespace
from imgdedup.scan import html as html_page
from imgdedup.scan.checkpoint import Checkpoint, CheckpointMismatch, Row, compatibility, decode_fingerprint
from imgdedup.scan.cluster import (
    DEFAULT_KEEPER,
    Clustering,
    ScannedImage,
    build_clusters,
    classify,
    keeper_sort_key,
    parse_keeper,
    register_estate,
)
from imgdedup.scan.progress import Progress, format_duration
from imgdedup.scan.report import build_report, write_csv, write_html, write_json
from imgdedup.scan.sources import Item, SourceError, SourceSpec, list_source, parse_source
from imgdedup.scan.worker import HashResult, HashTask, ThumbTask, hash_chunk, init_worker, thumb_chunk

COMMIT_EVERY_S = 0.5
COMMIT_EVERY_ROWS = 500
MAX_CONSECUTIVE_CRASHES = 8


class ScanError(Exception):
    """The scan cannot run at all (bad source, bad option, unreachable index)."""


@dataclass
class ScanOptions:
    source: str
    out: Path = Path("imgdedup-report")
    workers: int = 0  # 0: every core this process may use
    keeper: str = DEFAULT_KEEPER
    price_min: float = 0.18
    price_max: float = 0.25
    currency: str = "HK$"
    namespace: str = "default"
    register: bool = False
    register_concurrency: int = 16
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    allow_private_urls: bool = False
    url_concurrency: int = 16
    limit: int | None = None
    stop_after: int | None = None
    fresh: bool = False
    all_files: bool = False
    include_hidden: bool = False
    thumb_size: int = 96
    max_thumbnails: int = 2000
    thumbs_per_cluster: int = 8
    page_size: int = 25
    chunk_size: int = 32
    progress_interval: float = 10.0
    tty: bool | None = None  # None: progress bar when the stream is a terminal
    test_delay_s: float = 0.0  # test hook: sleep per image in the workers
    settings: Settings | None = None


@dataclass
class ScanResult:
    out: Path
    report: dict[str, Any] | None
    interrupted: bool
    hashed: int
    reused: int
    seconds: dict[str, float] = field(default_factory=dict)
    stop_reason: str | None = None  # "stop-after" or "interrupted" when interrupted

    @property
    def report_path(self) -> Path:
        return self.out / "report.html"




def _aws_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("AWS_")}


class _Pool:
    """A forkserver process pool that replaces itself when a worker dies."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._executor: ProcessPoolExecutor | None = None

    def get(self) -> ProcessPoolExecutor:
        if self._executor is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["imgdedup.scan.worker"])
            self._executor = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=context, initializer=init_worker,
                initargs=(_aws_environment(),),
            )
        return self._executor

    def renew(self, broken: ProcessPoolExecutor) -> None:
        if self._executor is broken:
            broken.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


def _chunks(items: list[tuple[int, Item]], size: int) -> Iterator[list[tuple[int, Item]]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _reusable(item: Item, row: Row | None) -> bool:
    if row is None:
        return False
    if item.size is not None and row.size != item.size:
        return False
    if item.version and row.version != item.version:
        return False
    if row.ok:
        return row.fingerprint is not None
    return not row.retryable


class _Scan:
    def __init__(self, options: ScanOptions, stream: TextIO, register_index: DedupIndex | None) -> None:
        self.o = options
        self.stream = stream
        self.register_index = register_index
        self.stop_reason: str | None = None
        self.seconds: dict[str, float] = {}
        self.hashed = 0
        self.reused = 0
        self.fetcher: Any = None

    def say(self, text: str) -> None:
        self.stream.write(f"imgdedup scan: {text}\n")
        self.stream.flush()

    def progress(self, label: str, total: int | None, unit: str = "images") -> Progress:
        return Progress(label, total, stream=self.stream, tty=self.o.tty, interval=self.o.progress_interval, unit=unit)

    # --- set-up ---------------------------------------------------------------------

    def configure(self) -> None:
        o = self.o
        try:
            self.settings = o.settings or Settings.from_env()
        except ConfigError as exc:
            raise ScanError(str(exc)) from None
        s = self.settings
        self.policy = s.policy
        self.limits = s.image_limits
        try:
            self.criteria = parse_keeper(o.keeper)
        except ValueError as exc:
            raise ScanError(str(exc)) from None
        if o.price_min < 0 or o.price_max < o.price_min:
            raise ScanError("need 0 <= --price-min <= --price-max")
        if o.register:
            try:
                validate_namespace(o.namespace)
            except InputError as exc:
                raise ScanError(f"--namespace: {exc.detail}") from None
        self.workers = o.workers or s.effective_hash_workers
        try:
            self.spec: SourceSpec = parse_source(
                o.source, endpoint_url=o.s3_endpoint_url, region=o.s3_region,
                allow_private_urls=o.allow_private_urls, fetch_timeout_s=s.url_fetch_timeout_s,
            )
        except SourceError as exc:
            raise ScanError(str(exc)) from None
        self.out = Path(o.out)
        self.out.mkdir(parents=True, exist_ok=True)
        try:
            self.checkpoint = Checkpoint(
                self.out / "checkpoint.sqlite", source=self.spec.location, compat=compatibility(self.limits),
                fresh=o.fresh,
            )
        except CheckpointMismatch as exc:
            raise ScanError(str(exc)) from None
        if self.checkpoint.discarded_reason:
            self.say(self.checkpoint.discarded_reason)

    def install_signals(self) -> list[int]:
        loop = asyncio.get_running_loop()
        installed = []

        def on_signal(signum: int) -> None:
            if self.stop_reason is None:
                self.stop_reason = "interrupted"
                self.stream.write(
                    f"\nimgdedup scan: {signal.Signals(signum).name}: finishing the images in flight and saving "
                    "the checkpoint; run the same command again to resume\n"
                )
            for sig in installed:  # a second signal acts immediately
                loop.remove_signal_handler(sig)
            installed.clear()

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, on_signal, sig)
                installed.append(sig)
            except (RuntimeError, ValueError, NotImplementedError):
                pass  # not the main thread (embedded use): the caller handles signals
        return installed

    # --- phases -----------------------------------------------------------------------

    def list_items(self) -> None:
        started = time.perf_counter()
        self.say(f"listing {self.spec.location}")
        counter = self.progress("listing", None, unit="files")
        exclude = (str(self.out),) if self.spec.kind == "folder" else ()
        try:
            listing = list_source(
                self.spec, all_files=self.o.all_files, include_hidden=self.o.include_hidden, exclude=exclude,
                on_item=lambda n: counter.advance(),
            )
        except SourceError as exc:
            raise ScanError(str(exc)) from None
        counter.close()
        self.items = listing.items[: self.o.limit] if self.o.limit else listing.items
        self.skipped = listing.skipped
        self.seconds["listing"] = time.perf_counter() - started

    async def hash_items(self, pool: _Pool) -> dict[int, HashResult]:
        started = time.perf_counter()
        rows = self.checkpoint.load()
        self.rows: dict[int, Row] = {}
        todo: list[tuple[int, Item]] = []
        for index, item in enumerate(self.items):
            if item.error is not None:
                continue
            row = rows.get(item.key)
            if _reusable(item, row):
                assert row is not None
                self.rows[index] = row
            else:
                todo.append((index, item))
        self.reused = len(self.rows)
        budget = len(todo) if self.o.stop_after is None else min(len(todo), max(0, self.o.stop_after))
        self.say(
            f"{len(self.items):,} files ({len(self.skipped):,} skipped by extension); {self.reused:,} already "
            f"in the checkpoint; hashing {budget:,} with {self.workers} worker{'s' * (self.workers != 1)}"
        )
        results: dict[int, HashResult] = {}
        if not todo or budget == 0:
            if budget < len(todo):
                self.stop_reason = "stop-after"
            self.seconds["hashing"] = time.perf_counter() - started
            return results
        bar = self.progress("hashing", budget)
        loop = asyncio.get_running_loop()
        in_flight: dict[asyncio.Future[Any], tuple[list[HashTask], bool, ProcessPoolExecutor, Future[Any]]] = {}
        last_commit = time.monotonic()
        submitted = 0
        max_in_flight = 2 * self.workers + 1
        by_index = dict(todo)
        # Small scans get small chunks (smooth progress, quick stop); big ones amortise the
        # per-task cost of the pool over up to `chunk_size` images.
        chunk_size = max(1, min(self.o.chunk_size, budget // (8 * self.workers)))

        def submit(tasks: list[HashTask], isolated: bool) -> None:
            executor = pool.get()
            concurrent = executor.submit(hash_chunk, self.spec, self.limits, tasks, self.o.test_delay_s)
            in_flight[asyncio.wrap_future(concurrent, loop=loop)] = (tasks, isolated, executor, concurrent)

        def record(result: HashResult) -> None:
            item = by_index[result.index]
            results[result.index] = dataclasses.replace(result, encoded=None)  # stored: free the text
            self.checkpoint.put(
                Row(
                    item.key, result.size if result.size is not None else item.size,
                    result.version if result.version is not None else item.version,
                    result.modified if result.modified is not None else item.modified,
                    result.physical if result.physical is not None else item.physical,
                    result.error is None, result.encoded, result.error, result.detail, result.retryable, 1,
                )
            )
            bar.advance()

        crashes = 0

        async def collect(return_when: str) -> None:
            nonlocal last_commit, crashes
            done, _ = await asyncio.wait(list(in_flight), return_when=return_when)
            for future in done:
                tasks, isolated, executor, _ = in_flight.pop(future)
                try:
                    chunk_results = future.result()
                except BrokenProcessPool:
                    pool.renew(executor)
                    if isolated:  # this very image killed a worker (retried by a resumed scan)
                        crashes += 1
                        task = tasks[0]
                        record(HashResult(task.index, None, None, "hashing_crashed",
                                          "the image crashed the decoder process", True, None, None, None, None))
                    else:  # find the culprit: resubmit one image per task
                        for task in tasks:
                            submit([task], True)
                    continue
                crashes = 0
                for result in chunk_results:
                    record(result)
            if crashes >= MAX_CONSECUTIVE_CRASHES:
                for future in in_flight:
                    future.cancel()
                in_flight.clear()
                raise ScanError(
                    f"{crashes} images in a row crashed their worker process: the workers cannot run here "
                    "(out of memory? a broken install?); the checkpoint keeps the work done so far"
                )
            if self.checkpoint.pending >= COMMIT_EVERY_ROWS or time.monotonic() - last_commit >= COMMIT_EVERY_S:
                self.checkpoint.commit()
                last_commit = time.monotonic()

        try:
            for chunk in _chunks(todo[:budget], chunk_size):
                if self.stop_reason:
                    break
                if self.spec.fetch_in_parent:
                    tasks = await self.fetch_tasks(chunk, record)
                else:
                    tasks = [HashTask(index, item.key) for index, item in chunk]
                if tasks:
                    submit(tasks, False)
                submitted += len(chunk)
                while len(in_flight) >= max_in_flight or (self.stop_reason and in_flight):
                    if self.stop_reason:
                        self._cancel_queued(in_flight)
                    if in_flight:
                        await collect(asyncio.FIRST_COMPLETED)
            while in_flight:
                if self.stop_reason:
                    self._cancel_queued(in_flight)
                if in_flight:
                    await collect(asyncio.FIRST_COMPLETED)
        finally:
            self.checkpoint.commit()
            self.seconds["hashing"] = bar.close()
        self.hashed = len(results)
        if self.stop_reason is None and submitted < len(todo):
            self.stop_reason = "stop-after"
        return results

    @staticmethod
    def _cancel_queued(in_flight: dict[asyncio.Future[Any], tuple[Any, Any, Any, Future[Any]]]) -> None:
        """On a stop: drop the chunks no worker has started; the running ones finish and
        are checkpointed, so no image is hashed twice across the stop."""
        for future, (*_, concurrent) in list(in_flight.items()):
            if concurrent.cancel():
                del in_flight[future]

    async def fetch_thumb_tasks(self, batch: list[tuple[str, str]]) -> list[ThumbTask]:
        semaphore = asyncio.Semaphore(self.o.url_concurrency)

        async def one(sha: str, key: str) -> ThumbTask | None:
            async with semaphore:
                try:
                    return ThumbTask(sha, key, await self.fetcher.fetch(key))
                except InputError:
                    return None  # the report shows a placeholder

        fetched = await asyncio.gather(*(one(sha, key) for sha, key in batch))
        return [task for task in fetched if task is not None]

    async def fetch_tasks(self, chunk: list[tuple[int, Item]], record: Any) -> list[HashTask]:
        """URL sources: download in the parent (SSRF-guarded, size/time-bounded)."""
        semaphore = asyncio.Semaphore(self.o.url_concurrency)

        async def one(index: int, item: Item) -> HashTask | None:
            async with semaphore:
                try:
                    return HashTask(index, item.key, await self.fetcher.fetch(item.key))
                except InputError as exc:
                    retryable = isinstance(exc, FetchFailed)
                    record(HashResult(index, None, None, exc.code, exc.detail, retryable, None, None, None, None))
                    return None

        fetched = await asyncio.gather(*(one(index, item) for index, item in chunk))
        return [task for task in fetched if task is not None]

    def assemble(self, results: dict[int, HashResult]) -> None:
        images: list[ScannedImage] = []
        unreadable: list[tuple[str, str, str, str]] = []
        for index, item in enumerate(self.items):
            uri = self.spec.uri(item.key)
            if item.error is not None:
                unreadable.append((item.key, uri, *item.error))
                continue
            result = results.get(index)
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
            row = self.rows[index]
            if not row.ok:
                unreadable.append((item.key, uri, row.error or "error", row.detail or ""))
                continue
            assert row.fingerprint is not None
            images.append(
                ScannedImage(item.key, uri, decode_fingerprint(row.fingerprint), row.modified, row.physical, item.link)
            )
        self.images = images
        self.unreadable = unreadable

    async def cluster(self) -> Clustering:
        started = time.perf_counter()
        self.images.sort(key=keeper_sort_key(self.criteria))
        dedup = Deduplicator(MemoryIndex(), Hasher(self.limits, 1), self.policy, Metrics(), 1)
        bar = self.progress("clustering", len(self.images))
        self.audit = await classify(self.images, dedup, on_done=bar.advance)
        bar.close()
        clustering = build_clusters(self.images, self.audit, self.criteria)
        self.seconds["clustering"] = time.perf_counter() - started
        return clustering

    async def thumbnails(self, clustering: Clustering, pool: _Pool) -> dict[str, bytes]:
        started = time.perf_counter()
        tiles = max(2, self.o.thumbs_per_cluster)
        wanted: dict[str, str] = {}  # sha256 -> a key to read it from (exact copies share)

        def fill(images: list[ScannedImage], limit: int) -> bool:
            for image in images:
                if len(wanted) >= limit:
                    return False
                wanted.setdefault(image.fingerprint.sha256_hex, image.key)
            return True

        # Clusters first, largest savings first; a quarter of the budget is kept for the
        # review band when there is one.
        limit = self.o.max_thumbnails - (self.o.max_thumbnails // 4 if clustering.review else 0)
        for cluster in clustering.clusters:
            if not fill([m.image for m in cluster.members[:tiles]], limit):
                break
        for group in clustering.review:
            if not fill([group.anchor, *[m.image for m in group.members[: tiles - 1]]], self.o.max_thumbnails):
                break
        size = self.o.thumb_size
        cached = self.checkpoint.thumbs(wanted, size)
        thumbs: dict[str, bytes] = {sha: jpeg for sha, jpeg in cached.items() if jpeg is not None}
        missing = [(sha, key) for sha, key in wanted.items() if sha not in cached]
        if missing and not self.stop_reason:
            bar = self.progress("thumbnails", len(missing))
            loop = asyncio.get_running_loop()
            in_flight: set[asyncio.Future[Any]] = set()

            def take(future: Future[Any] | asyncio.Future[Any]) -> None:
                try:
                    pairs = future.result()
                except BrokenProcessPool:
                    pool.renew(pool.get())
                    return  # those thumbnails become placeholders
                for sha, jpeg in pairs:
                    self.checkpoint.put_thumb(sha, size, jpeg)
                    if jpeg is not None:
                        thumbs[sha] = jpeg
                    bar.advance()

            step = max(1, self.o.chunk_size // 2)
            for start in range(0, len(missing), step):
                if self.stop_reason:
                    break
                batch = missing[start : start + step]
                if self.spec.fetch_in_parent:
                    tasks = await self.fetch_thumb_tasks(batch)
                else:
                    tasks = [ThumbTask(sha, key) for sha, key in batch]
                in_flight.add(loop.run_in_executor(pool.get(), thumb_chunk, self.spec, self.limits, tasks, size))
                if len(in_flight) >= 2 * self.workers + 1:
                    done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                    for future in done:
                        take(future)
            if in_flight:
                done, _ = await asyncio.wait(in_flight)
                for future in done:
                    take(future)
            self.checkpoint.commit()
            bar.close()
        self.seconds["thumbnails"] = time.perf_counter() - started
        return thumbs

    async def register(self) -> dict[str, Any]:
        from imgdedup.errors import StartupError
        from imgdedup.index import open_index

        started = time.perf_counter()
        index = self.register_index
        owned = index is None
        if index is None:
            if self.settings.index_backend == "memory":
                self.say(
                    "IMGDEDUP_REDIS_URL is empty: --register loads the embedded in-memory index, which is gone "
                    "when this command exits; set IMGDEDUP_REDIS_URL to load the service's Redis index"
                )
            try:
                index = await open_index(self.settings)
            except StartupError as exc:
                raise ScanError(str(exc)) from None
        try:
            dedup = Deduplicator(index, Hasher(self.limits, 1), self.policy, Metrics(), self.o.register_concurrency)
            bar = self.progress(f"registering into {index.backend} namespace {self.o.namespace}", len(self.images))
            summary = await register_estate(
                self.images, self.audit, dedup, self.o.namespace, concurrency=self.o.register_concurrency,
                on_done=bar.advance,
            )
            bar.close()
        finally:
            if owned:
                await index.close()
        self.seconds["register"] = time.perf_counter() - started
        return summary.as_json()


async def scan(
    options: ScanOptions, *, stream: TextIO | None = None, register_index: DedupIndex | None = None
) -> ScanResult:
    """Run a scan. `register_index`: with `options.register`, load the estate into this
    index instead of the one the settings configure (embedding, tests)."""
    started = time.perf_counter()
    run = _Scan(options, stream if stream is not None else sys.stderr, register_index)
    run.configure()
    installed = run.install_signals()
    pool = _Pool(run.workers)
    try:
        if run.spec.kind == "urls":
            from imgdedup.adapters.url_fetch import UrlFetcher

            run.fetcher = UrlFetcher(
                max_bytes=run.limits.max_bytes, timeout_s=run.settings.url_fetch_timeout_s,
                allow_private=run.spec.allow_private_urls,
            )
            await run.fetcher.start()
        await asyncio.to_thread(run.list_items)
        results = await run.hash_items(pool)
        if run.stop_reason:
            return _interrupted(run, started)
        run.assemble(results)
        clustering = await run.cluster()
        thumbs = await run.thumbnails(clustering, pool)
        if run.stop_reason:
            return _interrupted(run, started)
        register = await run.register() if options.register else None
        run.seconds["total"] = time.perf_counter() - started
        report = _write(run, clustering, thumbs, register)
    finally:
        pool.close()
        if run.fetcher is not None:
            await run.fetcher.close()
        run.checkpoint.close()
        loop = asyncio.get_running_loop()
        for sig in installed:
            loop.remove_signal_handler(sig)
    t = report["totals"]
    run.say(
        f"{t['images']:,} images, {t['clusters']:,} duplicate clusters, {t['duplicates']:,} duplicates, "
        f"{t['reclaimable_gb']:,.2f} GB reclaimable ({t['currency']}{t['monthly_saving_min']:,.2f}-"
        f"{t['monthly_saving_max']:,.2f}/month), {t['review_images']:,} in the review band, "
        f"{t['unreadable']:,} unreadable; {format_duration(run.seconds['total'])} "
        f"({report['stats']['files_per_second']:,.0f} files/s)"
    )
    run.say(f"report: {run.out / 'report.html'}  (data: clusters.json, clusters.csv)")
    return ScanResult(run.out, report, False, run.hashed, run.reused, run.seconds)


def _interrupted(run: _Scan, started: float) -> ScanResult:
    run.seconds["total"] = time.perf_counter() - started
    run.say(
        f"stopped ({run.stop_reason}) after hashing {run.hashed:,} files this run; the checkpoint is saved in "
        f"{run.out}; run the same command again to continue"
    )
    return ScanResult(run.out, None, True, run.hashed, run.reused, run.seconds, run.stop_reason)


def _write(run: _Scan, clustering: Clustering, thumbs: dict[str, bytes], register: dict[str, Any] | None) -> dict[str, Any]:
    o, s = run.o, run.settings
    total = run.seconds["total"]
    stats = {
        "workers": run.workers,
        "hashed": run.hashed,
        "reused": run.reused,
        "seconds": {k: round(v, 3) for k, v in run.seconds.items()},
        "files_per_second": round(len(run.items) / total, 1) if total > 0 else 0.0,
    }
    report = build_report(
        source=run.spec.location,
        images=run.images,
        clustering=clustering,
        unreadable=run.unreadable,
        skipped=run.skipped,
        settings={
            "duplicate_radius": s.duplicate_radius,
            "review_radius": s.review_radius,
            "hash_algorithm": HASH_ALGORITHM,
            "keeper": ",".join(run.criteria),
            "max_image_bytes": s.max_image_bytes,
            "max_image_pixels": s.max_image_pixels,
            "thumbs_per_cluster": max(2, o.thumbs_per_cluster),
        },
        price_min=o.price_min,
        price_max=o.price_max,
        currency=o.currency,
        stats=stats,
        register=register,
    )
    write_json(report, run.out / "clusters.json")
    write_csv(report, run.out / "clusters.csv")
    write_html(html_page.render(report, thumbs, page_size=o.page_size), run.out / "report.html")
    return report
