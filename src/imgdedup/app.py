"""Composition root: builds every resource from Settings, starts them in dependency
order and closes them in reverse. Nothing else in the package opens resources; the index
comes from `imgdedup.index.open_index`."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiokafka.errors import KafkaError

from imgdedup.adapters.events import superseding_decision
from imgdedup.adapters.http_api import create_http_app
from imgdedup.adapters.http_server import http_runner
from imgdedup.adapters.kafka_consumer import UploadConsumer
from imgdedup.adapters.url_fetch import UrlFetcher
from imgdedup.auth import Authenticator, OidcUnavailable, build_authenticator
from imgdedup.config import Settings
from imgdedup.decisions.deduplicator import Deduplicator
from imgdedup.decisions.review import Change
from imgdedup.decisions.review_desk import ReviewDesk
from imgdedup.errors import StartupError
from imgdedup.hasher import Hasher
from imgdedup.index import open_index
from imgdedup.index.interface import DedupIndex
from imgdedup.metrics import Metrics
from imgdedup.records import ImageRecord

log = logging.getLogger("imgdedup.app")


class Service:
    """The running service: index, hashing pool, HTTP server and (optionally) consumer."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.index: DedupIndex | None = None
        self.hasher: Hasher | None = None
        self.fetcher: UrlFetcher | None = None
        self.dedup: Deduplicator | None = None
        self.consumer: UploadConsumer | None = None
        self.auth: Authenticator | None = None
        self.desk: ReviewDesk | None = None
        self._runner: web.AppRunner | None = None
        self.http_port: int | None = None

    async def start(self) -> None:
        s = self.settings
        try:
            # First: a bad keys file or an unreachable issuer fails before anything starts.
            self.auth = build_authenticator(s)  # raises ConfigError listing every problem
            try:
                await self.auth.start()
            except OidcUnavailable as exc:
                raise StartupError(
                    f"{exc}; start the identity provider or fix IMGDEDUP_OIDC_ISSUER"
                ) from exc
            self.index = await open_index(s)
            self.hasher = Hasher(s.image_limits, s.effective_hash_workers, time_limit_s=s.hash_timeout_s)
            await self.hasher.start()
            self.dedup = Deduplicator(
                self.index, self.hasher, s.policy, self.metrics, s.max_in_flight
            )
            self.fetcher = UrlFetcher(
                max_bytes=s.max_image_bytes, timeout_s=s.url_fetch_timeout_s, allow_private=s.allow_private_urls
            )
            await self.fetcher.start()
            self.desk = ReviewDesk(self.index)
            app = create_http_app(self.dedup, self.metrics, s, self.readiness, self.auth, self.desk)
            self._runner = http_runner(app, s, self.metrics)
            await self._runner.setup()
            site = web.TCPSite(self._runner, s.http_host, s.http_port)
            await site.start()
            sockets = getattr(site._server, "sockets", None) or []
            self.http_port = sockets[0].getsockname()[1] if sockets else s.http_port
            if s.kafka_bootstrap:
                self.consumer = UploadConsumer(s, self.dedup, self.fetcher, self.metrics)
                try:
                    await self.consumer.start()
                except KafkaError as exc:
                    self.consumer = None
                    raise StartupError(
                        f"Kafka at {s.kafka_bootstrap} does not answer ({exc}); start it, fix "
                        "IMGDEDUP_KAFKA_BOOTSTRAP, or unset it to serve HTTP only"
                    ) from exc
                self.desk.announce = self._announce_change
                self.desk.announce_erasure = self._announce_erasure
        except BaseException:
            await self.stop()
            raise
        log.info(
            "imgdedup started",
            extra={
                "index": s.index_backend,
                "http": f"{s.http_host}:{self.http_port}",
                "kafka": s.kafka_bootstrap or "disabled",
                "hash_workers": s.effective_hash_workers,
                "auth": _auth_summary(self.auth),
            },
        )

    async def _announce_change(self, record: ImageRecord, change: Change) -> None:
        """A reviewer's change, as a superseding decision on the decisions topic."""
        if self.consumer is not None:
            await self.consumer.publish(f"{record.namespace}/{record.image_id}", superseding_decision(record, change))

    async def _announce_erasure(self, namespace: str) -> None:
        """A tenant tombstone: an empty value keyed `<namespace>/`."""
        if self.consumer is not None:
            await self.consumer.publish(f"{namespace}/", None)

    async def readiness(self) -> dict[str, str]:
        checks: dict[str, str] = {}
        if self.index is not None:
            try:
                await asyncio.wait_for(self.index.ping(), 3)
                checks[self.index.backend] = "ok"
            except Exception as exc:
                checks[self.index.backend] = f"{type(exc).__name__}: {exc}"
        if self.settings.kafka_bootstrap:
            checks["kafka"] = await self.consumer.ready() if self.consumer else "not started"
        return checks

    async def stop(self) -> None:
        """Reverse order: stop taking work, drain, then close what the work used. Every
        step runs even if an earlier one failed."""
        steps: list[tuple[str, Callable[[], Awaitable[None]] | None]] = [
            ("consumer", self.consumer.stop if self.consumer else None),
            ("http", self._runner.cleanup if self._runner else None),
            ("fetcher", self.fetcher.close if self.fetcher else None),
            ("hasher", self.hasher.close if self.hasher else None),
            ("index", self.index.close if self.index else None),
        ]
        self.consumer = self._runner = self.fetcher = self.hasher = self.index = None
        for name, close in steps:
            if close is None:
                continue
            try:
                await close()
            except Exception:
                log.exception("closing %s failed", name)


def _auth_summary(auth: Authenticator | None) -> str:
    if auth is None or not auth.enabled:
        return "off"
    sources = []
    if auth.keys is not None:
        sources.append(f"{len(auth.keys)} API keys")
    if auth.oidc is not None:
        sources.append(f"OIDC {auth.oidc.issuer}")
    return ", ".join(sources)


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT (or `stop` is set), then drain and exit."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    service = Service(settings)
    await service.start()
    try:
        waiters: list[asyncio.Task[object]] = [asyncio.create_task(stop.wait())]
        if service.consumer is not None:
            waiters.append(asyncio.create_task(service.consumer.wait()))
        done, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        for task in done:
            if task.exception() is not None:
                log.error("consumer loop crashed; shutting down", exc_info=task.exception())
        log.info("shutting down: draining in-flight work")
    finally:
        await service.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
