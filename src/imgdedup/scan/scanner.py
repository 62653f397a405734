"""The scan from start to end: set up, list, hash, cluster, make thumbnails, register
(optional) and write the reports. Hashing and thumbnails share one `forkserver` pool; a
stop request ends the scan after either, with the checkpoint saved for the next run.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TextIO

from imgdedup.decisions.deduplicator import Deduplicator
from imgdedup.fingerprint import HASH_ALGORITHM
from imgdedup.hasher import Hasher
from imgdedup.index.interface import DedupIndex
from imgdedup.index.memory import MemoryIndex
from imgdedup.metrics import Metrics
from imgdedup.process_pool import RenewingPool
from imgdedup.records import ImageRecord
from imgdedup.scan import html as html_page
from imgdedup.scan.cluster import Clustering, ScannedImage, build_clusters, classify, keeper_sort_key, register_estate
from imgdedup.scan.downloads import Downloads
from imgdedup.scan.hashing import Hashing, Unreadable, assemble, hash_items
from imgdedup.scan.options import ScanError, ScanOptions
from imgdedup.scan.progress import Console, format_duration
from imgdedup.scan.report import build_report, write_csv, write_html, write_json
from imgdedup.scan.setup import ScanSetup, configure
from imgdedup.scan.sources import Listing, SourceError, list_source
from imgdedup.scan.stopping import StopRequest, stop_on_signals
from imgdedup.scan.thumbnails import choose, make_thumbnails
from imgdedup.scan.worker import init_worker

__all__ = ["ScanError", "ScanOptions", "ScanResult", "scan"]


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


async def scan(
    options: ScanOptions, *, stream: TextIO | None = None, register_index: DedupIndex | None = None
) -> ScanResult:
    """Run a scan. `register_index`: with `options.register`, load the estate into this
    index instead of the one the settings configure (embedding, tests)."""
    started = time.perf_counter()
    console = Console(stream if stream is not None else sys.stderr, tty=options.tty, interval=options.progress_interval)
    setup = configure(options)
    if setup.checkpoint.discarded_reason:
        console.say(setup.checkpoint.discarded_reason)
    stop = StopRequest()
    seconds: dict[str, float] = {}
    pool = RenewingPool(partial(_new_executor, setup.workers), build_alone=_new_lone_executor)
    downloads: Downloads | None = None
    with stop_on_signals(stop, console.stream):
        try:
            if setup.spec.fetch_in_parent:
                downloads = await Downloads.open(
                    setup.spec, setup.limits, timeout_s=setup.settings.url_fetch_timeout_s,
                    concurrency=options.url_concurrency,
                )
            with _timed(seconds, "listing"):
                listing = await asyncio.to_thread(_list, setup, console)
            with _timed(seconds, "hashing"):
                hashing = await hash_items(setup, listing, console, pool, stop, downloads)
            if hashing.cut_short:
                stop.request("stop-after")
            if stop.reason:
                return _interrupted(setup, console, hashing, stop.reason, seconds, started)
            images, unreadable = assemble(listing, setup.spec, hashing)
            with _timed(seconds, "clustering"):
                images, audit, clustering = await _cluster(setup, images, console)
            with _timed(seconds, "thumbnails"):
                wanted = choose(clustering, options.max_thumbnails, _per_cluster(options))
                thumbs = await make_thumbnails(setup, wanted, console, pool, stop, downloads)
            if stop.reason:
                return _interrupted(setup, console, hashing, stop.reason, seconds, started)
            register = None
            if options.register:
                with _timed(seconds, "register"):
                    register = await _register(setup, images, audit, console, register_index)
            seconds["total"] = time.perf_counter() - started
            stats = _stats(setup, listing, hashing, seconds)
            report = _write_reports(setup, listing, images, unreadable, clustering, thumbs, register, stats)
        finally:
            pool.close(cancel_futures=True)
            if downloads is not None:
                await downloads.close()
            setup.checkpoint.close()
    t = report["totals"]
    console.say(
        f"{t['images']:,} images, {t['clusters']:,} duplicate clusters, {t['duplicates']:,} duplicates, "
        f"{t['reclaimable_gb']:,.2f} GB reclaimable ({t['currency']}{t['monthly_saving_min']:,.2f}-"
        f"{t['monthly_saving_max']:,.2f}/month), {t['review_images']:,} in the review band, "
        f"{t['unreadable']:,} unreadable; {format_duration(seconds['total'])} "
        f"({stats['files_per_second']:,.0f} files/s)"
    )
    console.say(f"report: {setup.out / 'report.html'}  (data: clusters.json, clusters.csv)")
    return ScanResult(setup.out, report, False, len(hashing.hashed), len(hashing.reused), seconds)


def _new_executor(workers: int) -> ProcessPoolExecutor:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["imgdedup.scan.worker"])
    return ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=init_worker, initargs=(_aws_environment(),)
    )


def _new_lone_executor() -> ProcessPoolExecutor:
    """One worker for an item retried alone after a crash. Started with `spawn`, not
    through the fork server: such retries come in bursts (every image a dead worker
    held), and they leave the fork server to the pool's own workers."""
    return ProcessPoolExecutor(
        max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=init_worker,
        initargs=(_aws_environment(),),
    )


def _aws_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("AWS_")}


@contextmanager
def _timed(seconds: dict[str, float], phase: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    seconds[phase] = time.perf_counter() - started


def _per_cluster(options: ScanOptions) -> int:
    return max(2, options.thumbs_per_cluster)


def _list(setup: ScanSetup, console: Console) -> Listing:
    o, spec = setup.options, setup.spec
    console.say(f"listing {spec.location}")
    counter = console.progress("listing", None, unit="files")
    exclude = (str(setup.out),) if spec.kind == "folder" else ()
    try:
        listing = list_source(
            spec, all_files=o.all_files, include_hidden=o.include_hidden, exclude=exclude,
            on_item=lambda n: counter.advance(),
        )
    except SourceError as exc:
        raise ScanError(str(exc)) from None
    counter.close()
    return Listing(listing.items[: o.limit] if o.limit else listing.items, listing.skipped)


async def _cluster(
    setup: ScanSetup, images: list[ScannedImage], console: Console
) -> tuple[list[ScannedImage], list[ImageRecord], Clustering]:
    """(the images in keeper order, the audit's record of each, the clusters). Runs once
    every image has its fingerprint: the registration order (keeper order) needs them all."""
    images = sorted(images, key=keeper_sort_key(setup.criteria))
    dedup = Deduplicator(MemoryIndex(), Hasher(setup.limits, 1), setup.policy, Metrics(), 1)
    bar = console.progress("clustering", len(images))
    audit = await classify(images, dedup, on_done=bar.advance)
    bar.close()
    return images, audit, build_clusters(images, audit, setup.criteria)


async def _register(
    setup: ScanSetup, images: list[ScannedImage], audit: list[ImageRecord], console: Console,
    index: DedupIndex | None,
) -> dict[str, Any]:
    from imgdedup.errors import StartupError
    from imgdedup.index import open_index

    o = setup.options
    owned = index is None
    if index is None:
        if setup.settings.index_backend == "memory":
            console.say(
                "IMGDEDUP_REDIS_URL is empty: --register loads the embedded in-memory index, which is gone "
                "when this command exits; set IMGDEDUP_REDIS_URL to load the service's Redis index"
            )
        try:
            index = await open_index(setup.settings)
        except StartupError as exc:
            raise ScanError(str(exc)) from None
    try:
        dedup = Deduplicator(index, Hasher(setup.limits, 1), setup.policy, Metrics(), o.register_concurrency)
        bar = console.progress(f"registering into {index.backend} namespace {o.namespace}", len(images))
        summary = await register_estate(
            images, audit, dedup, o.namespace, concurrency=o.register_concurrency, on_done=bar.advance
        )
        bar.close()
    finally:
        if owned:
            await index.close()
    return summary.as_json()


def _interrupted(
    setup: ScanSetup, console: Console, hashing: Hashing, reason: str, seconds: dict[str, float], started: float
) -> ScanResult:
    seconds["total"] = time.perf_counter() - started
    console.say(
        f"stopped ({reason}) after hashing {len(hashing.hashed):,} files this run; the checkpoint is saved in "
        f"{setup.out}; run the same command again to continue"
    )
    return ScanResult(setup.out, None, True, len(hashing.hashed), len(hashing.reused), seconds, reason)


def _stats(setup: ScanSetup, listing: Listing, hashing: Hashing, seconds: dict[str, float]) -> dict[str, Any]:
    total = seconds["total"]
    return {
        "workers": setup.workers,
        "hashed": len(hashing.hashed),
        "reused": len(hashing.reused),
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "files_per_second": round(len(listing.items) / total, 1) if total > 0 else 0.0,
    }


def _write_reports(
    setup: ScanSetup, listing: Listing, images: list[ScannedImage], unreadable: list[Unreadable],
    clustering: Clustering, thumbs: dict[str, bytes], register: dict[str, Any] | None, stats: dict[str, Any],
) -> dict[str, Any]:
    o, s = setup.options, setup.settings
    report = build_report(
        source=setup.spec.location,
        images=images,
        clustering=clustering,
        unreadable=unreadable,
        skipped=listing.skipped,
        settings={
            "duplicate_radius": s.duplicate_radius,
            "review_radius": s.review_radius,
            "hash_algorithm": HASH_ALGORITHM,
            "keeper": ",".join(setup.criteria),
            "max_image_bytes": s.max_image_bytes,
            "max_image_pixels": s.max_image_pixels,
            "thumbs_per_cluster": _per_cluster(o),
        },
        price_min=o.price_min,
        price_max=o.price_max,
        currency=o.currency,
        stats=stats,
        register=register,
    )
    write_json(report, setup.out / "clusters.json")
    write_csv(report, setup.out / "clusters.csv")
    write_html(html_page.render(report, thumbs, page_size=o.page_size), setup.out / "report.html")
    return report
