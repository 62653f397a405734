"""In-process index, the embedded default when no Redis is configured; lost on exit.

Codes live in a multi-index hash table per namespace (`mih_table.MihTable`). `register`
looks up and inserts under a per-namespace lock with no await in between, so it is
first-wins within the process (the only place this backend is shared).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from imgdedup.decisions.review import Change, Erasure, NamespaceStats, ReviewItem
from imgdedup.decisions.rules import Lookup, Verdict
from imgdedup.fingerprint import Fingerprint
from imgdedup.index.interface import DecideFn, candidates_from, changed_record, check_change, replay
from imgdedup.index.mih_table import MihTable
from imgdedup.records import ImageRecord, Registration, validate_image_id, validate_namespace


@dataclass
class _Namespace:
    table: MihTable = field(default_factory=MihTable)
    next_seq: int = 1
    records: dict[str, ImageRecord] = field(default_factory=dict)
    seq_to_id: dict[int, str] = field(default_factory=dict)
    sha_to_kept: dict[str, str] = field(default_factory=dict)
    duplicates: dict[str, dict[str, None]] = field(default_factory=dict)  # ordered set
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    reviews: dict[str, int] = field(default_factory=dict)  # open review: image_id -> seq
    sources: dict[str, str] = field(default_factory=dict)  # image_id -> source URI
    history: dict[str, list[Change]] = field(default_factory=dict)

    def index(self, record: ImageRecord) -> None:
        self.append(record.indexed_codes, record.seq)
        self.seq_to_id[record.seq] = record.image_id
        self.sha_to_kept.setdefault(record.sha256, record.image_id)

    def unindex(self, record: ImageRecord) -> None:
        self.drop(record.seq)
        self.seq_to_id.pop(record.seq, None)
        if self.sha_to_kept.get(record.sha256) == record.image_id:
            del self.sha_to_kept[record.sha256]

    def append(self, codes: tuple[int, ...], seq: int) -> None:
        self.table.add(seq, codes)

    def drop(self, seq: int) -> None:
        self.table.remove(seq)

    def near(self, queries: tuple[int, ...], radius: int) -> dict[int, int]:
        """{seq: smallest distance} of kept images within `radius` of any query code."""
        return self.table.near(queries, radius)

    def lookup(self, fingerprint: Fingerprint, radius: int) -> Lookup:
        exact_id = self.sha_to_kept.get(fingerprint.sha256_hex)
        exact = (exact_id, self.records[exact_id].seq) if exact_id is not None else None
        return candidates_from(
            exact, self.near(fingerprint.query_codes, radius), self.seq_to_id, lambda i: self.records[i].thumbnail
        )


class MemoryIndex:
    """`DedupIndex` held in this process's memory."""

    backend = "memory"

    def __init__(self) -> None:
        self._namespaces: dict[str, _Namespace] = {}

    def _ns(self, namespace: str) -> _Namespace:
        validate_namespace(namespace)
        ns = self._namespaces.get(namespace)
        if ns is None:
            ns = self._namespaces[namespace] = _Namespace()
        return ns

    async def register(
        self, namespace: str, image_id: str, fingerprint: Fingerprint, decide: DecideFn, *,
        radius: int, event_id: str | None = None,
    ) -> Registration:
        validate_image_id(image_id)
        ns = self._ns(namespace)
        async with ns.lock:
            stored = ns.records.get(image_id)
            if stored is not None:
                return replay(stored, fingerprint)
            decision = decide(ns.lookup(fingerprint, radius))
            seq = ns.next_seq
            ns.next_seq += 1
            record = ImageRecord.build(namespace, image_id, fingerprint, decision, seq, event_id)
            ns.records[image_id] = record
            if record.kept:
                ns.index(record)
            if record.duplicate_of is not None:
                ns.duplicates.setdefault(record.duplicate_of, {})[image_id] = None
            return Registration(record, replayed=False)

    async def lookup(self, namespace: str, fingerprint: Fingerprint, *, radius: int) -> Lookup:
        return self._ns(namespace).lookup(fingerprint, radius)

    async def query(self, namespace: str, code: int, *, radius: int) -> list[tuple[str, int]]:
        ns = self._ns(namespace)
        hits = ns.near((code,), radius)
        return sorted(
            ((ns.seq_to_id[seq], d) for seq, d in hits.items()), key=lambda pair: (pair[1], pair[0])
        )

    async def get(self, namespace: str, image_id: str) -> ImageRecord | None:
        return self._ns(namespace).records.get(image_id)

    async def remove(self, namespace: str, image_id: str) -> bool:
        ns = self._ns(namespace)
        async with ns.lock:
            record = ns.records.pop(image_id, None)
            if record is None:
                return False
            if record.kept:
                ns.unindex(record)
                ns.duplicates.pop(image_id, None)
            ns.reviews.pop(image_id, None)
            ns.sources.pop(image_id, None)
            ns.history.pop(image_id, None)
            if record.duplicate_of is not None:
                ns.duplicates.get(record.duplicate_of, {}).pop(image_id, None)
            return True

    async def duplicates_of(self, namespace: str, image_id: str) -> list[ImageRecord]:
        ns = self._ns(namespace)
        ids = ns.duplicates.get(image_id, {})
        return sorted((ns.records[i] for i in ids if i in ns.records), key=lambda r: r.seq)

    # --- review workflow and tenant operations -----------------------------------------
    async def note_review(self, namespace: str, image_id: str, seq: int, source_uri: str | None) -> None:
        ns = self._ns(namespace)
        async with ns.lock:
            record = ns.records.get(image_id)
            if record is None or record.verdict is not Verdict.REVIEW:
                return
            ns.reviews[image_id] = record.seq
            if source_uri:
                ns.sources[image_id] = source_uri

    async def reviews(self, namespace: str, *, after: int, limit: int) -> list[tuple[ImageRecord, ReviewItem]]:
        ns = self._ns(namespace)
        out = []
        for image_id, seq in sorted(ns.reviews.items(), key=lambda item: item[1]):
            record = ns.records.get(image_id)
            if seq <= after or record is None or record.verdict is not Verdict.REVIEW:
                continue
            out.append((record, ReviewItem(image_id, seq, ns.sources.get(image_id))))
            if len(out) >= limit:
                break
        return out

    async def source_uris(self, namespace: str, image_ids: list[str]) -> dict[str, str]:
        ns = self._ns(namespace)
        return {i: ns.sources[i] for i in image_ids if i in ns.sources}

    async def apply_change(self, namespace: str, change: Change, expected: ImageRecord) -> ImageRecord:
        ns = self._ns(namespace)
        async with ns.lock:
            current = ns.records.get(change.image_id)
            target = ns.records.get(change.to_duplicate_of) if change.to_duplicate_of else None
            check_change(change, expected, current, target)
            assert current is not None
            seq = current.seq
            if change.unindexes:
                ns.unindex(current)
            if change.reindexes:
                seq = ns.next_seq
                ns.next_seq += 1
            record = changed_record(current, change, seq, target)
            if change.reindexes:
                ns.index(record)
            if current.duplicate_of is not None:
                ns.duplicates.get(current.duplicate_of, {}).pop(change.image_id, None)
            if record.duplicate_of is not None:
                ns.duplicates.setdefault(record.duplicate_of, {})[change.image_id] = None
            ns.records[change.image_id] = record
            if record.verdict is Verdict.REVIEW:
                ns.reviews[change.image_id] = record.seq
            else:
                ns.reviews.pop(change.image_id, None)
            ns.history.setdefault(change.image_id, []).append(change)
            return record

    async def history(self, namespace: str, image_id: str) -> list[Change]:
        return list(self._ns(namespace).history.get(image_id, ()))

    async def find_sha(self, namespace: str, sha256_hex: str) -> list[ImageRecord]:
        ns = self._ns(namespace)
        return sorted((r for r in ns.records.values() if r.sha256 == sha256_hex), key=lambda r: r.seq)

    async def stats(self, namespace: str) -> NamespaceStats:
        ns = self._ns(namespace)
        counts = {verdict.value: 0 for verdict in Verdict if verdict is not Verdict.REJECTED}
        for record in ns.records.values():
            counts[record.verdict.value] = counts.get(record.verdict.value, 0) + 1
        open_reviews = sum(
            1 for i in ns.reviews if (r := ns.records.get(i)) is not None and r.verdict is Verdict.REVIEW
        )
        return NamespaceStats(counts, len(ns.seq_to_id), open_reviews)

    async def erase(self, namespace: str) -> Erasure:
        self._ns(namespace)
        ns = self._namespaces.pop(namespace)
        async with ns.lock:
            entries = len(ns.records) + len(ns.reviews) + len(ns.sources) + len(ns.history)
            return Erasure(images=len(ns.records), keys=entries)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._namespaces.clear()
