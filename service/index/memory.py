"""In-process index: numpy flat scan, the embedded default when no Redis is configured.

A popcount over a contiguous uint64 array scans ~1M codes in a few milliseconds, which
is plenty for one process; MIH buys nothing here. Everything lives in this process and
is lost on exit. Atomicity: `register` does its lookup and insert under a per-namespace
asyncio lock with no await in between, so it is trivially first-wins within the
process (the only place this backend is shared).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np

from ..decisions import Lookup
from ..hashing import Fingerprint
from ..mih import hamming_distances
from .base import (
    DecideFn,
    ImageIdConflict,
    ImageRecord,
    Registration,
    candidates_from,
    validate_image_id,
    validate_namespace,
)


@dataclass
class _Namespace:
    codes: np.ndarray = field(default_factory=lambda: np.zeros(1024, dtype=np.uint64))
    seqs: np.ndarray = field(default_factory=lambda: np.zeros(1024, dtype=np.int64))
    alive: np.ndarray = field(default_factory=lambda: np.zeros(1024, dtype=bool))
    size: int = 0
    dead: int = 0
    next_seq: int = 1
    records: dict[str, ImageRecord] = field(default_factory=dict)
    seq_to_id: dict[int, str] = field(default_factory=dict)
    sha_to_kept: dict[str, str] = field(default_factory=dict)
    duplicates: dict[str, dict[str, None]] = field(default_factory=dict)  # ordered set
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def append(self, codes: tuple[int, ...], seq: int) -> None:
        needed = self.size + len(codes)
        if needed > len(self.codes):
            capacity = max(needed, 2 * len(self.codes))
            for name in ("codes", "seqs", "alive"):
                grown = np.zeros(capacity, dtype=getattr(self, name).dtype)
                grown[: self.size] = getattr(self, name)[: self.size]
                setattr(self, name, grown)
        end = self.size + len(codes)
        self.codes[self.size : end] = np.array(codes, dtype=np.uint64)
        self.seqs[self.size : end] = seq
        self.alive[self.size : end] = True
        self.size = end

    def drop(self, seq: int) -> None:
        rows = np.nonzero((self.seqs[: self.size] == seq) & self.alive[: self.size])[0]
        self.alive[rows] = False
        self.dead += len(rows)
        if self.dead > 1024 and self.dead * 2 > self.size:
            keep = np.nonzero(self.alive[: self.size])[0]
            n = len(keep)
            self.codes[:n] = self.codes[keep]
            self.seqs[:n] = self.seqs[keep]
            self.alive[:n] = True
            self.alive[n : self.size] = False
            self.size, self.dead = n, 0

    def near(self, queries: tuple[int, ...], radius: int) -> dict[int, int]:
        best: dict[int, int] = {}
        codes = self.codes[: self.size]
        alive = self.alive[: self.size]
        for query in queries:
            distances = hamming_distances(codes, query)
            hits = np.nonzero((distances <= radius) & alive)[0]
            for seq, distance in zip(self.seqs[hits].tolist(), distances[hits].tolist()):
                if distance < best.get(seq, 65):
                    best[seq] = distance
        return best

    def lookup(self, fingerprint: Fingerprint, radius: int) -> Lookup:
        exact_id = self.sha_to_kept.get(fingerprint.sha256_hex)
        exact = (exact_id, self.records[exact_id].seq) if exact_id is not None else None
        return candidates_from(exact, self.near(fingerprint.codes, radius), self.seq_to_id)


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
        self,
        namespace: str,
        image_id: str,
        fingerprint: Fingerprint,
        decide: DecideFn,
        *,
        radius: int,
        event_id: str | None = None,
    ) -> Registration:
        validate_image_id(image_id)
        ns = self._ns(namespace)
        async with ns.lock:
            stored = ns.records.get(image_id)
            if stored is not None:
                if stored.sha256 != fingerprint.sha256_hex:
                    raise ImageIdConflict(
                        f"image_id {image_id!r} is already registered with different bytes "
                        f"(sha256 {stored.sha256[:16]}...)"
                    )
                return Registration(stored, replayed=True)
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
