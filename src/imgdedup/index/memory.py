"""In-process index, the embedded default when no Redis is configured; lost on exit.

Codes live in a multi-index hash table per namespace (`mih_table.MihTable`). `register`
looks up and inserts under a per-namespace lock with no await in between, so it is
first-wins within the process (the only place this backend is shared).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from imgdedup.decisions.rules import Lookup
from imgdedup.fingerprint import Fingerprint
from imgdedup.index.interface import DecideFn, candidates_from, replay
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
                ns.append(fingerprint.indexed_codes, seq)
                ns.seq_to_id[seq] = image_id
                ns.sha_to_kept.setdefault(record.sha256, image_id)
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
                ns.drop(record.seq)
                ns.seq_to_id.pop(record.seq, None)
                if ns.sha_to_kept.get(record.sha256) == image_id:
                    del ns.sha_to_kept[record.sha256]
                ns.duplicates.pop(image_id, None)
            if record.duplicate_of is not None:
                ns.duplicates.get(record.duplicate_of, {}).pop(image_id, None)
            return True

    async def duplicates_of(self, namespace: str, image_id: str) -> list[ImageRecord]:
        ns = self._ns(namespace)
        ids = ns.duplicates.get(image_id, {})
        return sorted((ns.records[i] for i in ids if i in ns.records), key=lambda r: r.seq)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._namespaces.clear()
