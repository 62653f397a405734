"""Replica-local mirror of a log-layout namespace's codes, fed by the namespace's stream.

The insert script appends an add in the same atomic step as `seq = INCR`, and every
removal of an image's codes appends a tombstone:

    a = seq (u32 LE) + the image's indexed codes (u64 LE each)   registered (pending)
    d = seq (decimal)                                            duplicate, withdrawn or removed

So the adds are in seq order, and a mirror caught up to one's own entry has seen every
image with a lower seq. Each replica applies the stream to an in-process `MihTable`
(label = seq) per namespace; whether a candidate is kept, pending or gone still comes
from the state hash. A catch-up is one round trip (`scripts.CATCH_UP`); a backlog is
drained with plain XRANGEs under a per-namespace lock. The stream is never compacted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis.asyncio as aioredis

from imgdedup.errors import ContentionError
from imgdedup.index.mih_table import MihTable
from imgdedup.index.redis import scripts

log = logging.getLogger("imgdedup.index")

ADD = b"a"
DEL = b"d"
#: Entries per XRANGE while draining a backlog.
BATCH = 2_000
#: Entries the catch-up script returns (through Lua: kept small); more are drained.
SCRIPT_BATCH = 500

StreamId = tuple[int, int]


def parse_id(raw: bytes | str) -> StreamId:
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def format_id(stream_id: StreamId) -> str:
    return f"{stream_id[0]}-{stream_id[1]}"


def pack_add(seq: int, codes: Sequence[int] | np.ndarray) -> bytes:
    """The value of an add entry: what the insert script writes (it packs the seq)."""
    return np.array([seq], dtype="<u4").tobytes() + np.asarray(codes, dtype="<u8").tobytes()


def decode_adds(blobs: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(seqs, code counts, codes) of add entries, vectorised."""
    lengths = np.fromiter((len(b) for b in blobs), dtype=np.int64, count=len(blobs))
    if len(lengths) and (int(lengths.min()) < 4 or np.any((lengths - 4) % 8)):
        raise ValueError("malformed add entry in the namespace log")
    raw = np.frombuffer(b"".join(blobs), dtype=np.uint8)
    starts = np.cumsum(lengths) - lengths
    header = (starts[:, None] + np.arange(4)).ravel()
    seqs = raw[header].view("<u4").astype(np.int64)
    body = np.ones(len(raw), dtype=bool)
    body[header] = False
    codes = raw[body].view("<u8").astype(np.uint64)
    return seqs, (lengths - 4) // 8, codes


@dataclass(eq=False)
class MirrorState:
    """One namespace's mirror: the table, the last applied stream id and what it was
    built against."""

    name: str
    table: MihTable
    meta: bytes | None = None  # the namespace's meta when the mirror was started
    last: StreamId = (0, 0)
    loaded: bool = False  # a catch-up has reached the end of the log once (backlog drained)
    generation: int = 0  # bumped by every reset: replies sent before it are discarded
    entries: int = 0
    adds: int = 0
    removes: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class RedisMirror:
    """In-process mirrors of namespaces, one `MihTable` each, kept current from their
    Redis streams. `key(namespace, suffix)` names the namespace's keys."""

    def __init__(
        self,
        client: aioredis.Redis,
        key: Callable[[str, str], str],
        *,
        batch: int = BATCH,
        table_factory: Callable[[], MihTable] = MihTable,
    ) -> None:
        self._redis = client
        self._key = key
        self.batch = batch
        self._factory = table_factory
        self._spaces: dict[str, MirrorState] = {}
        self._catch_up = client.register_script(scripts.CATCH_UP)
        self.round_trips = 0
        self.resets = 0

    # --- state ----------------------------------------------------------------------------
    def state(self, namespace: str) -> MirrorState:
        ns = self._spaces.get(namespace)
        if ns is None:
            ns = self._spaces[namespace] = MirrorState(namespace, self._factory())
        return ns

    def forget(self, namespace: str) -> None:
        self._spaces.pop(namespace, None)

    def clear(self) -> None:
        self._spaces.clear()

    def _reset(self, ns: MirrorState, meta: bytes | None) -> None:
        if ns.entries or ns.last != (0, 0):
            self.resets += 1
            log.warning("mirror of namespace %r rebuilt from its log (namespace re-created or diverged)", ns.name)
        ns.table = self._factory()
        ns.meta = meta
        ns.last = (0, 0)
        ns.loaded = False
        ns.generation += 1
        ns.entries = ns.adds = ns.removes = 0

    # --- reads --------------------------------------------------------------------------------
    def near(self, namespace: str, codes: Sequence[int], radius: int) -> dict[int, int]:
        """{seq: smallest distance} of every mirrored code within `radius` of a query code
        (pending, kept and not-yet-stripped images alike, as the buckets held them)."""
        ns = self._spaces.get(namespace)
        return ns.table.near(tuple(codes), radius) if ns is not None else {}

    async def sync(
        self, namespace: str, *, upto: bytes | str | None = None, reads: Sequence[str] = ()
    ) -> tuple[bytes | None, list[Any]]:
        """Apply the log of `namespace` up to `upto` (an entry id, inclusive) or up to its
        end, and GET `reads` in the same round trip. Returns (the namespace's meta as read
        now, None if it does not exist; the values of `reads`)."""
        ns = self.state(namespace)
        if not ns.loaded or ns.lock.locked():
            async with ns.lock:  # cold mirror or a backlog being drained: one reader at a time
                return await self._sync(ns, upto, reads, locked=True)
        return await self._sync(ns, upto, reads, locked=False)

    async def _sync(
        self, ns: MirrorState, upto: bytes | str | None, reads: Sequence[str], *, locked: bool
    ) -> tuple[bytes | None, list[Any]]:
        target = parse_id(upto) if upto is not None else None
        upper = format_id(target) if target is not None else "+"
        fetch = target is None or ns.last < target
        generation, start = ns.generation, ns.last
        count = min(self.batch, SCRIPT_BATCH) if fetch else 0
        replies = await self._catch_up(
            keys=[self._key(ns.name, "meta"), self._key(ns.name, "log"), *reads],
            args=[f"({format_id(start)}", upper, count],
        )
        self.round_trips += 1
        meta, values = replies[0], replies[1 : 1 + len(reads)]
        more = False
        if meta != ns.meta:
            pristine = ns.entries == 0 and ns.last == (0, 0) and ns.generation == generation
            if not pristine:  # dropped or re-created since the mirror was started
                self._reset(ns, meta)
                more = meta is not None
            else:
                ns.meta = meta
        if meta is not None and meta == ns.meta and not more:
            if ns.generation != generation:
                more = True  # reset by another coroutine while this reply was in flight
            elif fetch:
                entries = replies[-1]
                self._apply(ns, entries)
                if len(entries) >= count and (target is None or ns.last < target):
                    more = True
                else:
                    ns.loaded = True
        if meta is None:
            ns.loaded = True  # nothing to read
        if more:
            if locked:
                await self._drain(ns, target, upper)
            else:
                async with ns.lock:
                    await self._drain(ns, target, upper)
        return meta, values

    async def _drain(self, ns: MirrorState, target: StreamId | None, upper: str) -> None:
        """Read batches until the log's end (or `target`) is applied."""
        key = self._key(ns.name, "log")
        while target is None or ns.last < target:
            generation, start = ns.generation, ns.last
            entries = await self._redis.xrange(key, min=f"({format_id(start)}", max=upper, count=self.batch) or []
            self.round_trips += 1
            if ns.generation != generation:
                continue
            self._apply(ns, entries)
            if len(entries) < self.batch:
                ns.loaded = True
                # A backlog lands in the table's flat-scanned tail: fold it into the
                # multi-index now (one O(codes) merge) rather than over the next queries.
                ns.table.settle()
                return

    def _apply(self, ns: MirrorState, entries: Sequence[Any]) -> None:
        """Apply entries newer than `ns.last`, in order. Synchronous: no other coroutine
        sees a half-applied batch. A failure (a seq added twice: Redis lost writes the
        mirror had seen) resets the mirror, which is then rebuilt from the log.
        Entries are (id, {field: value}) (redis-py's XRANGE) or [id, [field, value]]
        (the script's raw reply)."""
        first = 0
        while first < len(entries) and parse_id(entries[first][0]) <= ns.last:
            first += 1
        if first == len(entries):
            return
        try:
            adds: list[bytes] = []
            for _entry_id, fields in entries[first:]:
                if not isinstance(fields, dict):
                    fields = dict(zip(fields[::2], fields[1::2]))
                blob = fields.get(ADD)
                if blob is not None:
                    adds.append(blob)
                    continue
                dead = fields.get(DEL)
                if dead is not None:
                    if adds:
                        self._add(ns, adds)
                        adds = []
                    ns.table.remove(int(dead))
                    ns.removes += 1
            if adds:
                self._add(ns, adds)
        except Exception as exc:
            self._reset(ns, ns.meta)
            raise ContentionError(f"mirror of namespace {ns.name!r} disagrees with its log ({exc}): rebuilding") from exc
        ns.last = parse_id(entries[-1][0])
        ns.entries += len(entries) - first

    def _add(self, ns: MirrorState, blobs: list[bytes]) -> None:
        if len(blobs) <= 8:  # the steady state (a few new registrations): no vector set-up
            for blob in blobs:
                if len(blob) < 4 or (len(blob) - 4) % 8:
                    raise ValueError("malformed add entry in the namespace log")
                ns.table.add(int.from_bytes(blob[:4], "little"), np.frombuffer(blob, dtype="<u8", offset=4))
        else:
            seqs, counts, codes = decode_adds(blobs)
            ns.table.add_many(seqs, counts, codes)
        ns.adds += len(blobs)
