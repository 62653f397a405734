"""The review use cases both the API and the page call: list the queue, resolve, undo,
and the tenant-wide look-ups and erasure.

Every change is applied by the index atomically against the decision it was planned on,
and then handed to `announce` (the decisions topic when Kafka is configured), so that
downstream systems learn a decision was replaced.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from imgdedup.decisions.review import (
    Change,
    Erasure,
    NamespaceStats,
    Outcome,
    ReviewItem,
    plan,
    plan_undo,
)
from imgdedup.errors import InputError
from imgdedup.index.interface import DedupIndex
from imgdedup.records import ImageRecord, validate_image_id, validate_namespace

#: Publishes a changed decision (record after, the change); None when not configured.
Announce = Callable[[ImageRecord, Change], Awaitable[None]]
#: Publishes that a tenant was erased.
AnnounceErasure = Callable[[str], Awaitable[None]]


class UnknownImage(InputError, code="not_found", http_status=404):
    """No image with this id in the namespace."""


@dataclass(frozen=True, slots=True)
class QueueEntry:
    record: ImageRecord
    item: ReviewItem
    #: The kept image it may duplicate, and that image's source URI when known.
    candidate: ImageRecord | None
    candidate_source_uri: str | None


@dataclass(frozen=True, slots=True)
class QueuePage:
    entries: list[QueueEntry]
    next_cursor: int | None


class ReviewDesk:
    def __init__(self, index: DedupIndex) -> None:
        self.index = index
        self.announce: Announce | None = None
        self.announce_erasure: AnnounceErasure | None = None

    async def queue(self, namespace: str, *, after: int, limit: int) -> QueuePage:
        validate_namespace(namespace)
        rows = await self.index.reviews(namespace, after=after, limit=limit)
        targets = sorted({r.duplicate_of for r, _ in rows if r.duplicate_of})
        sources = await self.index.source_uris(namespace, targets)
        entries = []
        for record, item in rows:
            candidate = await self.index.get(namespace, record.duplicate_of) if record.duplicate_of else None
            entries.append(QueueEntry(record, item, candidate, sources.get(record.duplicate_of or "")))
        next_cursor = rows[-1][1].seq if len(rows) == limit else None
        return QueuePage(entries, next_cursor)

    async def _current(self, namespace: str, image_id: str) -> ImageRecord:
        validate_namespace(namespace)
        validate_image_id(image_id)
        record = await self.index.get(namespace, image_id)
        if record is None:
            raise UnknownImage(f"no image {image_id!r} in namespace {namespace!r}")
        return record

    async def resolve(
        self, namespace: str, image_id: str, outcome: Outcome, duplicate_of: str | None, *, by: str, reason: str = ""
    ) -> tuple[ImageRecord, Change]:
        current = await self._current(namespace, image_id)
        change = plan(image_id, current.verdict, current.duplicate_of, outcome, duplicate_of, by=by, reason=reason)
        return await self._apply(namespace, change, current)

    async def undo(self, namespace: str, image_id: str, *, by: str, reason: str = "") -> tuple[ImageRecord, Change]:
        current = await self._current(namespace, image_id)
        history = await self.index.history(namespace, image_id)
        change = plan_undo(history[-1] if history else None, current.verdict, current.duplicate_of, by=by, reason=reason)
        return await self._apply(namespace, change, current)

    async def _apply(self, namespace: str, change: Change, current: ImageRecord) -> tuple[ImageRecord, Change]:
        record = await self.index.apply_change(namespace, change, current)
        if self.announce is not None:
            await self.announce(record, change)
        return record, change

    async def history(self, namespace: str, image_id: str) -> list[Change]:
        validate_namespace(namespace)
        return await self.index.history(namespace, image_id)

    async def find_sha(self, namespace: str, sha256_hex: str) -> list[ImageRecord]:
        validate_namespace(namespace)
        return await self.index.find_sha(namespace, sha256_hex)

    async def similar(self, namespace: str, code: int, radius: int) -> list[tuple[str, int]]:
        validate_namespace(namespace)
        return await self.index.query(namespace, code, radius=radius)

    async def stats(self, namespace: str) -> NamespaceStats:
        validate_namespace(namespace)
        return await self.index.stats(namespace)

    async def erase(self, namespace: str, *, tombstone: bool = False) -> Erasure:
        validate_namespace(namespace)
        erased = await self.index.erase(namespace)
        if tombstone and self.announce_erasure is not None:
            await self.announce_erasure(namespace)
        return erased
