"""`DedupIndex` on Redis with multi-index hashing, shared by every replica.

First-wins across replicas is insert-then-verify with a sequence number (docs/design.md):
one script takes `seq = INCR` and indexes the image's codes as pending; the registration
then reads its near candidates, waits for lower seqs still pending, decides against the
kept ones and commits with a fenced compare-and-set on its own pending entry. The outcome
is that of deciding the images one at a time in seq order, across any number of
processes. How codes are stored and searched is the namespace's layout (`layouts.py`).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import cast

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from imgdedup.decisions.review import Change, Erasure, NamespaceStats, ReviewConflict, ReviewItem
from imgdedup.decisions.rules import KEPT_VERDICTS, Candidate, Lookup, MatchKind, Verdict, sort_candidates
from imgdedup.errors import ContentionError
from imgdedup.fingerprint import Fingerprint
from imgdedup.index.interface import DecideFn, changed_record, check_change, replay
from imgdedup.index.redis import review_scripts, scripts
from imgdedup.index.redis.encoding import decode_record, encode_record, kept_state, thumbnail_of
from imgdedup.index.redis.errors import maps_redis_errors
from imgdedup.index.redis.keys import KeySpace, delete_prefix
from imgdedup.index.redis.layouts import BucketLayout, Layout, LogLayout
from imgdedup.index.redis.mirror import RedisMirror
from imgdedup.index.redis.namespaces import NamespaceMeta, Namespaces
from imgdedup.index.redis.pending import OwnLease, RedisClock, Restart, State
from imgdedup.index.redis.topology import Client, check_ready, wait_for_replicas
from imgdedup.records import ImageRecord, Registration, validate_image_id, validate_namespace

log = logging.getLogger("imgdedup.index")


@dataclass(frozen=True, slots=True)
class _Taken:
    """A seq the insert step took for us, pending under our lease."""

    lease: OwnLease
    clock: RedisClock
    upto: bytes | None  # log layout: our own log entry


@dataclass(frozen=True, slots=True)
class _Judged:
    record: ImageRecord
    target_seq: int | None  # the kept image it was judged a duplicate or review of


class RedisMihIndex:
    """`DedupIndex` on Redis with multi-index hashing."""

    backend = "redis"

    def __init__(
        self,
        client: Client,
        *,
        prefix: str = "imgdedup",
        substrings: int = 4,
        lease_ms: int = 15_000,
        max_attempts: int = 32,
        mirror: bool = False,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 200,
    ) -> None:
        # One server or a Redis Cluster: the index's calls are the same on both (every
        # call's keys share one hash tag), so the parts below take either.
        self._client = client
        self._redis = cast(aioredis.Redis, client)
        # A decision is reported only once this many replicas hold it (0: at once).
        self._wait_replicas = wait_replicas
        self._wait_timeout_ms = wait_timeout_ms
        self.keys = KeySpace(prefix)
        self._lease_ms = lease_ms
        self._max_attempts = max_attempts
        # `mirror`: namespaces this replica creates get the log layout.
        self._namespaces = Namespaces(self._redis, self.keys, substrings=substrings, logged=mirror)
        self.mirror = RedisMirror(self._redis, self.keys.key)
        self._bucket_layout = BucketLayout(self._redis, self.keys)
        self._log_layout = LogLayout(self._redis, self.keys, self.mirror, self._namespaces)
        self._finalize = self._redis.register_script(scripts.FINALIZE)
        self._cas_delete = self._redis.register_script(scripts.CAS_DELETE)
        self._cas_set = self._redis.register_script(scripts.CAS_SET)
        self._apply_change = self._redis.register_script(review_scripts.APPLY_CHANGE)
        self.watch_conflicts = 0  # optimistic retries of removals (WATCH on the record)
        self.restarts = 0  # registrations decided again (fenced out, or target removed)
        self.pending_waits = 0  # times a registration waited for a concurrent near-duplicate

    def _layout(self, meta: NamespaceMeta) -> Layout:
        return self._log_layout if meta.logged else self._bucket_layout

    @maps_redis_errors
    async def substrings(self, namespace: str, *, create: bool = True) -> int:
        """m for this namespace: fixed by whoever created it, so all replicas agree.
        Reads pass create=False: asking about an unknown namespace must not create it."""
        return (await self._namespaces.meta(namespace, create=create)).m

    # --- reads -------------------------------------------------------------------------
    async def _states(self, namespace: str, seqs: list[int]) -> dict[int, State]:
        if not seqs:
            return {}
        raws = await self._redis.hmget(self.keys.state(namespace), [str(s) for s in seqs])
        return {seq: State.parse(cast(bytes, raw)) for seq, raw in zip(seqs, raws) if raw is not None}

    async def _candidates(
        self, namespace: str, distances: dict[int, int], kept: dict[int, State], fingerprint: Fingerprint
    ) -> tuple[Candidate, ...]:
        """The kept images as candidates, nearest first, with their verification
        thumbnails when the query has one (one MGET of their records, only when there are
        candidates: most queries have none)."""
        thumbnails: dict[int, bytes] = {}
        if fingerprint.thumbnail and kept:
            raws = await self._redis.mget([self.keys.record(namespace, st.image_id) for st in kept.values()])
            thumbnails = {seq: thumbnail_of(raw) for seq, raw in zip(kept, raws) if raw}
        return sort_candidates(
            [
                _candidate(seq, distances[seq], st, fingerprint.sha256_hex, thumbnails.get(seq, b""))
                for seq, st in kept.items()
            ]
        )

    @maps_redis_errors
    async def lookup(self, namespace: str, fingerprint: Fingerprint, *, radius: int) -> Lookup:
        validate_namespace(namespace)
        meta = await self._namespaces.meta(namespace, create=False)
        near = await self._layout(meta).near(
            namespace, meta, fingerprint.query_codes, radius, fingerprint.sha256_hex
        )
        states = await self._states(namespace, list(near))
        kept = {seq: st for seq, st in states.items() if st.kept}
        return Lookup(await self._candidates(namespace, near, kept, fingerprint))

    @maps_redis_errors
    async def query(self, namespace: str, code: int, *, radius: int) -> list[tuple[str, int]]:
        validate_namespace(namespace)
        meta = await self._namespaces.meta(namespace, create=False)
        near = await self._layout(meta).near(namespace, meta, (code,), radius)
        states = await self._states(namespace, list(near))
        return sorted(
            ((st.image_id, near[seq]) for seq, st in states.items() if st.kept),
            key=lambda pair: (pair[1], pair[0]),
        )

    @maps_redis_errors
    async def get(self, namespace: str, image_id: str) -> ImageRecord | None:
        validate_namespace(namespace)
        raw = await self._redis.get(self.keys.record(namespace, image_id))
        return decode_record(raw, namespace) if raw else None

    @maps_redis_errors
    async def duplicates_of(self, namespace: str, image_id: str) -> list[ImageRecord]:
        validate_namespace(namespace)
        ids = await self._redis.zrange(self.keys.dups(namespace, image_id), 0, -1)
        if not ids:
            return []
        raws = await self._redis.mget([self.keys.record(namespace, cast(bytes, i).decode()) for i in ids])
        return [decode_record(raw, namespace) for raw in raws if raw]

    # --- registration ------------------------------------------------------------------
    @maps_redis_errors
    async def register(
        self, namespace: str, image_id: str, fingerprint: Fingerprint, decide: DecideFn, *,
        radius: int, event_id: str | None = None,
    ) -> Registration:
        validate_namespace(namespace)
        validate_image_id(image_id)
        for _attempt in range(self._max_attempts):
            # Read again after a restart: the namespace may have been re-created.
            meta = await self._namespaces.meta(namespace, create=True)
            try:
                registration = await self._register_once(
                    namespace, image_id, fingerprint, decide, radius, event_id, meta
                )
            except Restart:
                self.restarts += 1
                continue
            # New or replayed alike: a replay may be of a decision whose own wait failed.
            await self._replicated(namespace)
            return registration
        raise ContentionError(f"register {namespace}/{image_id}: restarted {self._max_attempts} times")

    async def _register_once(
        self,
        namespace: str,
        image_id: str,
        fp: Fingerprint,
        decide: DecideFn,
        radius: int,
        event_id: str | None,
        meta: NamespaceMeta,
    ) -> Registration:
        await self._layout(meta).prepare(namespace, meta)
        taken = await self._take_seq(namespace, meta, image_id, fp)
        if isinstance(taken, Registration):
            return taken
        try:
            judged = await self._judge(namespace, meta, taken, image_id, fp, decide, radius, event_id)
            if isinstance(judged, Registration):
                return judged
            outcome = await self._commit(namespace, taken, judged)
        except BaseException:
            # Leave nothing pending behind if we fail or are cancelled mid-way.
            await asyncio.shield(self._abandon_own(namespace, meta, taken.lease, fp.indexed_codes))
            raise
        return await self._conclude(namespace, meta, taken, judged, outcome, fp)

    async def _take_seq(
        self, namespace: str, meta: NamespaceMeta, image_id: str, fp: Fingerprint
    ) -> _Taken | Registration:
        """The insert step: our seq, pending and indexed; or the stored decision of a known
        image_id. The script checks that the namespace's meta is still `meta`."""
        reply = await self._layout(meta).insert_pending(
            namespace, meta, image_id, fp.sha256_hex, fp.indexed_codes, self._lease_ms
        )
        if int(reply[0]) == -1:
            # Dropped and re-created since this replica read its layout and m.
            self._namespaces.forget(namespace)
            raise Restart()
        if int(reply[0]) == 0:
            return replay(decode_record(reply[1], namespace), fp)
        seq, payload, now_ms = int(reply[0]), reply[1], int(reply[2])
        return _Taken(
            OwnLease(seq, payload, fp.sha256_hex, image_id, self._lease_ms),
            RedisClock(now_ms),
            reply[3] if len(reply) > 3 else None,
        )

    async def _judge(
        self,
        namespace: str,
        meta: NamespaceMeta,
        taken: _Taken,
        image_id: str,
        fp: Fingerprint,
        decide: DecideFn,
        radius: int,
        event_id: str | None,
    ) -> _Judged | Registration:
        """Decide against the kept images with a lower seq, once none of them is pending;
        or replay, when the same image_id was registered concurrently and got in first."""
        seq = taken.lease.seq
        near = await self._layout(meta).near(
            namespace, meta, fp.query_codes, radius, fp.sha256_hex, upto=taken.upto
        )
        earlier = {s: d for s, d in near.items() if s < seq}
        states = await self._settled_states(namespace, earlier, taken.clock, taken.lease)
        if any(st.image_id == image_id for st in states.values()):
            stored = await self.get(namespace, image_id)
            if stored is not None:
                await self._abandon_own(namespace, meta, taken.lease, fp.indexed_codes)
                return replay(stored, fp)
        kept = {s: st for s, st in states.items() if st.kept and st.image_id != image_id}
        candidates = await self._candidates(namespace, earlier, kept, fp)
        decision = decide(Lookup(candidates))
        target_seq = next((c.seq for c in candidates if c.image_id == decision.duplicate_of), None)
        return _Judged(ImageRecord.build(namespace, image_id, fp, decision, seq, event_id), target_seq)

    async def _commit(self, namespace: str, taken: _Taken, judged: _Judged) -> int:
        """The fenced FINALIZE: 1 committed, 0 fenced out or the target removed meanwhile,
        -1 the image_id was decided meanwhile."""
        record = judged.record
        rec_key = self.keys.record(namespace, record.image_id)
        dups_key = self.keys.dups(namespace, record.duplicate_of) if record.duplicate_of else rec_key
        return int(
            await self._finalize(
                keys=[self.keys.state(namespace), rec_key, dups_key, self.keys.sha(namespace, record.sha256)],
                args=[
                    taken.lease.seq,
                    taken.lease.payload,
                    kept_state(record.sha256, record.image_id) if record.kept else b"",
                    encode_record(record),
                    record.image_id,
                    "1" if record.duplicate_of else "0",
                    str(judged.target_seq) if judged.target_seq is not None else "",
                ],
            )
        )

    async def _conclude(
        self, namespace: str, meta: NamespaceMeta, taken: _Taken, judged: _Judged, outcome: int, fp: Fingerprint
    ) -> Registration:
        """Act on FINALIZE's outcome: done, decide again with a new seq, or replay."""
        seq, codes = taken.lease.seq, fp.indexed_codes
        if outcome == 0:
            # Fenced out, or the image we were judged against was removed meanwhile:
            # withdraw (if still ours) and decide again with a new seq.
            await self._abandon_own(namespace, meta, taken.lease, codes)
            raise Restart()
        if outcome == -1:
            await self._layout(meta).strip(namespace, meta, seq, codes)
            stored = await self.get(namespace, judged.record.image_id)
            if stored is None:
                raise Restart()
            return replay(stored, fp)
        if not judged.record.kept:
            await self._layout(meta).strip(namespace, meta, seq, codes)
        return Registration(judged.record, replayed=False)

    async def _settled_states(
        self, namespace: str, earlier: dict[int, int], clock: RedisClock, own: OwnLease
    ) -> dict[int, State]:
        """States of the earlier candidates once none is pending (kept ones, and gone ones
        omitted). Expired pending entries are removed by compare-and-set; our own lease is
        extended while we wait, so long chains of waiters do not expire each other."""
        state_key = self.keys.state(namespace)
        settled: dict[int, State] = {}
        waiting = list(earlier)
        delay = 0.001
        waited = False
        while waiting:
            if waited and own.due(clock.now_ms()):
                renewed = own.renewed(clock.now_ms())
                if not int(await self._cas_set(keys=[state_key], args=[own.seq, own.payload, renewed])):
                    raise Restart()  # someone already judged our lease expired
                own.payload = renewed.encode()
            raws = await self._redis.hmget(state_key, [str(s) for s in waiting])
            still: list[int] = []
            for seq, raw in zip(waiting, raws):
                if raw is None:
                    continue
                state = State.parse(cast(bytes, raw))
                if state.kept:
                    settled[seq] = state
                elif state.lease_ms < clock.now_ms():
                    removed = await self._cas_delete(keys=[state_key], args=[seq, raw])
                    if not int(removed):
                        still.append(seq)  # it changed under us: read it again
                else:
                    still.append(seq)
            waiting = still
            if waiting:
                if not waited:
                    self.pending_waits += 1
                    waited = True
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(0.01, delay * 2)
        return settled

    async def _abandon_own(
        self, namespace: str, meta: NamespaceMeta, lease: OwnLease, codes: Iterable[int]
    ) -> None:
        """Withdraw our pending entry and its codes (best effort: otherwise the lease
        expires and waiters clean it up)."""
        try:
            await self._cas_delete(keys=[self.keys.state(namespace)], args=[lease.seq, lease.payload])
            await self._layout(meta).strip(namespace, meta, lease.seq, codes)
        except Exception as exc:
            log.warning("could not withdraw pending registration %s: %r", lease.seq, exc)

    # --- removal -----------------------------------------------------------------------
    @maps_redis_errors
    async def remove(self, namespace: str, image_id: str) -> bool:
        validate_namespace(namespace)
        meta = await self._namespaces.meta(namespace, create=False)
        record = await self._delete_record(namespace, image_id)
        if record is None:
            return False
        if record.kept:
            await self._layout(meta).strip(namespace, meta, record.seq, record.indexed_codes)
        await self._replicated(namespace)
        return True

    async def _replicated(self, namespace: str) -> None:
        """With `wait_replicas`: once the namespace's master has passed every write so far
        to that many replicas, so a failover cannot lose what is reported (docs/scaling.md);
        `IndexUnavailable` (retryable) if they do not acknowledge in time."""
        if self._wait_replicas:
            await wait_for_replicas(self._client, self.keys.seq(namespace), self._wait_replicas, self._wait_timeout_ms)

    async def _delete_record(self, namespace: str, image_id: str) -> ImageRecord | None:
        """Delete the image's record, state, exact-tier key and duplicate links in one
        optimistic transaction (WATCH on the record). None if it was unknown."""
        rec_key = self.keys.record(namespace, image_id)
        for attempt in range(self._max_attempts):
            async with self._redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(rec_key)
                    raw = await pipe.get(rec_key)
                    if not raw:
                        await pipe.unwatch()
                        return None
                    record = decode_record(raw, namespace)
                    sha_key = self.keys.sha(namespace, record.sha256)
                    drop_sha = False
                    if record.kept:
                        await pipe.watch(sha_key)
                        drop_sha = await pipe.get(sha_key) == str(record.seq).encode()
                    pipe.multi()
                    if drop_sha:
                        pipe.delete(sha_key)
                    if record.kept:
                        pipe.hdel(self.keys.state(namespace), str(record.seq))
                        pipe.delete(self.keys.dups(namespace, image_id))
                    if record.duplicate_of is not None:
                        pipe.zrem(self.keys.dups(namespace, record.duplicate_of), image_id)
                    pipe.delete(rec_key)
                    pipe.zrem(self.keys.reviews(namespace), image_id)
                    pipe.hdel(self.keys.sources(namespace), image_id)
                    pipe.delete(self.keys.history(namespace, image_id))
                    await pipe.execute()
                    return record
                except WatchError:
                    self.watch_conflicts += 1
                    await asyncio.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))
        raise ContentionError(f"remove {namespace}/{image_id}: too many concurrent changes")

    # --- review workflow and tenant operations -----------------------------------------
    @maps_redis_errors
    async def note_review(self, namespace: str, image_id: str, seq: int, source_uri: str | None) -> None:
        validate_namespace(namespace)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zadd(self.keys.reviews(namespace), {image_id: seq})
            if source_uri:
                pipe.hset(self.keys.sources(namespace), image_id, source_uri)
            await pipe.execute()

    @maps_redis_errors
    async def reviews(self, namespace: str, *, after: int, limit: int) -> list[tuple[ImageRecord, ReviewItem]]:
        """Entries whose record is no longer an open review (resolved by a change that
        raced a redelivery's `note_review`) are skipped and dropped from the queue."""
        validate_namespace(namespace)
        queue = self.keys.reviews(namespace)
        out: list[tuple[ImageRecord, ReviewItem]] = []
        low = f"({after}"
        while len(out) < limit:
            rows = cast(
                list[tuple[bytes, float]],
                await self._redis.zrangebyscore(queue, low, "+inf", start=0, num=limit, withscores=True),
            )
            if not rows:
                break
            ids = [member.decode() for member, _ in rows]
            raws = await self._redis.mget([self.keys.record(namespace, i) for i in ids])
            sources = await self._redis.hmget(self.keys.sources(namespace), ids)
            stale = []
            for image_id, (_, score), raw, source in zip(ids, rows, raws, sources):
                record = decode_record(raw, namespace) if raw else None
                if record is None or record.verdict is not Verdict.REVIEW or record.seq != int(score):
                    stale.append(image_id)
                elif len(out) < limit:
                    uri = cast(bytes, source).decode() if source else None
                    out.append((record, ReviewItem(image_id, record.seq, uri)))
            if stale:
                await self._redis.zrem(queue, *stale)
            low = f"({int(rows[-1][1])}"
        return out

    @maps_redis_errors
    async def source_uris(self, namespace: str, image_ids: list[str]) -> dict[str, str]:
        validate_namespace(namespace)
        if not image_ids:
            return {}
        values = await self._redis.hmget(self.keys.sources(namespace), image_ids)
        return {i: cast(bytes, v).decode() for i, v in zip(image_ids, values) if v}

    @maps_redis_errors
    async def apply_change(self, namespace: str, change: Change, expected: ImageRecord) -> ImageRecord:
        validate_namespace(namespace)
        meta = await self._namespaces.meta(namespace, create=False)
        rec_key = self.keys.record(namespace, change.image_id)
        raw = await self._redis.get(rec_key)
        current = decode_record(raw, namespace) if raw else None
        target = await self.get(namespace, change.to_duplicate_of) if change.to_duplicate_of else None
        check_change(change, expected, current, target)
        assert current is not None and raw is not None
        mode = "reindex" if change.reindexes else "unindex" if change.unindexes else "keep"
        seq, payload, lease = current.seq, "", None
        if change.reindexes:
            # A new seq, pending and indexed like a registration's: later registrations
            # wait for it and are judged against it; earlier ones never see it.
            await self._layout(meta).prepare(namespace, meta)
            reply = await self._layout(meta).insert_pending(
                namespace, meta, _reindex_alias(change.image_id), current.sha256, current.indexed_codes,
                self._lease_ms,
            )
            if int(reply[0]) <= 0:
                self._namespaces.forget(namespace)
                raise ReviewConflict(f"namespace {namespace!r} changed meanwhile; retry")
            seq, payload = int(reply[0]), cast(bytes, reply[1]).decode()
            lease = OwnLease(seq, reply[1], current.sha256, change.image_id, self._lease_ms)
        record = changed_record(current, change, seq, target)
        try:
            outcome = int(
                await self._apply_change(
                    keys=[
                        self.keys.state(namespace), rec_key,
                        self.keys.dups(namespace, current.duplicate_of) if current.duplicate_of else rec_key,
                        self.keys.dups(namespace, record.duplicate_of) if record.duplicate_of else rec_key,
                        self.keys.sha(namespace, current.sha256), self.keys.reviews(namespace),
                        self.keys.history(namespace, change.image_id),
                    ],
                    args=[
                        raw, encode_record(record), change.image_id, change.to_json(), current.seq, seq, payload, mode,
                        str(target.seq) if target is not None else "",
                        "1" if record.verdict is Verdict.REVIEW else "0",
                        kept_state(record.sha256, record.image_id),
                    ],
                )
            )
        except BaseException:
            if lease is not None:
                await asyncio.shield(self._abandon_own(namespace, meta, lease, current.indexed_codes))
            raise
        if outcome != 1:
            if lease is not None:
                await self._abandon_own(namespace, meta, lease, current.indexed_codes)
            what = {-1: "changed meanwhile", -2: "is matched against an image no longer kept"}
            raise ReviewConflict(
                f"image {change.image_id!r} {what.get(outcome, 'was not changed in time')}; read it again"
            )
        if change.unindexes:
            await self._layout(meta).strip(namespace, meta, current.seq, current.indexed_codes)
        return record

    @maps_redis_errors
    async def history(self, namespace: str, image_id: str) -> list[Change]:
        validate_namespace(namespace)
        raws = await self._redis.lrange(self.keys.history(namespace, image_id), 0, -1)
        return [Change.from_json(raw) for raw in raws]

    @maps_redis_errors
    async def find_sha(self, namespace: str, sha256_hex: str) -> list[ImageRecord]:
        """The kept image holding these bytes and its exact duplicates."""
        validate_namespace(namespace)
        holder = await self._redis.get(self.keys.sha(namespace, sha256_hex))
        if not holder:
            return []
        states = await self._states(namespace, [int(holder)])
        state = states.get(int(holder))
        if state is None or not state.kept:
            return []
        kept = await self.get(namespace, state.image_id)
        if kept is None:
            return []
        copies = await self.duplicates_of(namespace, kept.image_id)
        return sorted([kept, *(r for r in copies if r.sha256 == sha256_hex)], key=lambda r: r.seq)

    async def _scan_records(self, namespace: str, batch: int = 500) -> AsyncIterator[bytes]:
        keys: list[bytes] = []
        async for key in self._redis.scan_iter(match=self.keys.records_glob(namespace), count=batch):
            keys.append(key)
            if len(keys) >= batch:
                for raw in await self._redis.mget(keys):
                    if raw:
                        yield cast(bytes, raw)
                keys = []
        if keys:
            for raw in await self._redis.mget(keys):
                if raw:
                    yield cast(bytes, raw)

    @maps_redis_errors
    async def stats(self, namespace: str) -> NamespaceStats:
        """One SCAN over the namespace's records (an operator's question, not a hot path)."""
        validate_namespace(namespace)
        counts = {verdict.value: 0 for verdict in Verdict if verdict is not Verdict.REJECTED}
        async for raw in self._scan_records(namespace):
            verdict = decode_record(raw, namespace).verdict.value
            counts[verdict] = counts.get(verdict, 0) + 1
        indexed = sum(n for v, n in counts.items() if Verdict(v) in KEPT_VERDICTS)
        return NamespaceStats(counts, indexed, counts[Verdict.REVIEW.value])

    @maps_redis_errors
    async def erase(self, namespace: str) -> Erasure:
        validate_namespace(namespace)
        images = 0
        async for _key in self._redis.scan_iter(match=self.keys.records_glob(namespace), count=1000):
            images += 1
        keys = await self.drop_namespace(namespace)
        return Erasure(images=images, keys=keys)

    # --- lifecycle ---------------------------------------------------------------------
    @maps_redis_errors
    async def ping(self) -> None:
        """Raise unless every namespace can be served: the server answers, or every
        master of the cluster says its state is ok with all slots covered."""
        await check_ready(self._client)

    @maps_redis_errors
    async def close(self) -> None:
        self.mirror.clear()
        await self._redis.aclose()

    @maps_redis_errors
    async def drop_namespace(self, namespace: str, batch: int = 1000) -> int:
        """Delete every key of a namespace. For tests and tooling."""
        validate_namespace(namespace)
        deleted = await delete_prefix(self._client, self.keys.namespace(namespace), batch=batch)
        self._namespaces.forget(namespace)
        self.mirror.forget(namespace)
        return deleted


def _reindex_alias(image_id: str) -> str:
    """The name a re-indexed image's pending entry carries: no image id holds a control
    character, so it names no record and the insert step never mistakes it for a replay."""
    return "\x00" + image_id


def _candidate(seq: int, distance: int, state: State, sha256_hex: str, thumbnail: bytes = b"") -> Candidate:
    exact = state.sha256 == sha256_hex
    return Candidate(
        state.image_id, seq, 0 if exact else distance, MatchKind.EXACT if exact else MatchKind.NEAR, thumbnail
    )
