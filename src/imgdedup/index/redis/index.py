"""Redis-backed multi-index hash table.

Layout (all keys of a namespace share the hash tag `{ns}`, so one namespace lives in
one Redis Cluster slot and its scripts are legal there):

    P:{ns}:meta            JSON: substring count m and hash algorithm, fixed at creation
    P:{ns}:seq             INCR counter: registration order (the "earliest" in first-wins)
    P:{ns}:b<j>:<hex>      bucket of substring j with value <hex>: packed 12-byte
                           (code u64, seq u32) records, appended by insert
    P:{ns}:state           hash seq -> "K|sha|image_id" (kept) or
                           "P|lease_ms|sha|image_id" (pending: being decided)
    P:{ns}:sha:<hex>       seq of the kept image with these exact bytes (exact tier)
    P:{ns}:rec:<image_id>  JSON ImageRecord (every decided image, for replay and GET)
    P:{ns}:dups:<image_id> sorted set (score seq) of images judged duplicate/review of it
    P:{ns}:log             mirror namespaces only (meta "log"), instead of the buckets: a
                           stream of (seq, codes) adds and seq tombstones that every replica
                           applies to an in-process table (`redis_mirror.RedisMirror`)

Reads: every probed bucket with ONE MGET, candidates verified in numpy client-side,
their state with one HMGET. One SET per bucket plus a fetch per candidate was measured
~40x slower, and Lua loops over candidates block the server; the two scripts here touch
only the image's own m buckets and O(1) keys.

First-wins atomicity: insert-then-verify with a sequence number.
1. A script takes `seq = INCR` and appends (code, seq) to the image's own buckets, state
   pending, in one atomic step: so every image with a lower seq is already in the
   buckets when this one reads them.
2. One MGET of the probed buckets; near candidates with a *higher* seq are ignored (they
   will see us), *lower* ones are waited for until kept or gone. Waits only ever point
   to lower seqs, so they cannot deadlock.
3. Decide against the kept lower-seq candidates, then finalize with a fenced
   compare-and-set on our own pending state.
The outcome is exactly that of deciding the images one at a time in seq order, across
any number of processes. A crashed registrar leaves a pending entry with a lease (Redis
clock); a waiter that finds the lease expired removes it by compare-and-set, and a slow
registrar whose entry was removed fails its fenced finalize and starts again with a new
seq. (An optimistic WATCH over every probed bucket was the first design; Redis 7.0's
WATCH is quadratic in the number of keys watched, ~1,100 here, so it was dropped.)
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import WatchError

from imgdedup.decisions.rules import Candidate, Lookup, MatchKind, sort_candidates
from imgdedup.errors import ContentionError, IndexMismatch
from imgdedup.fingerprint.hashing import HASH_ALGORITHM, Fingerprint
from imgdedup.index.interface import DecideFn, replay
from imgdedup.index.mih import nearest_per_seq, probes, split_code, unpack_records
from imgdedup.index.redis.errors import maps_redis_errors
from imgdedup.index.redis.mirror import RedisMirror
from imgdedup.records import ImageRecord, Registration, validate_image_id, validate_namespace

# The INSERT_PENDING step, in two layouts that share their first four KEYS and ARGV:
# KEYS rec, seq, state, meta; ARGV lease_ms, sha, image_id, the meta the caller read.
# {-1}: the namespace's meta is no longer the one the caller's layout and m came from
# (dropped and re-created meanwhile: read it again); {0, stored_record}: the image_id is
# already decided; else the seq is taken, the state is pending, and the layout's part
# has run: {seq, payload, now_ms[, log entry id]}.
_INSERT_HEAD = """
if redis.call('GET', KEYS[4]) ~= ARGV[4] then return {-1} end
local rec = redis.call('GET', KEYS[1])
if rec then return {0, rec} end
local seq = redis.call('INCR', KEYS[2])
if seq > 4294967295 then return redis.error_reply('namespace sequence exhausted (2^32 registrations)') end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local payload = 'P|' .. (now + tonumber(ARGV[1])) .. '|' .. ARGV[2] .. '|' .. ARGV[3]
redis.call('HSET', KEYS[3], seq, payload)
"""

# Bucket layout: KEYS[5..] the image's own buckets, ARGV[5..] the codes for each.
_INSERT_PENDING = _INSERT_HEAD + """
local tail = struct.pack('<I4', seq)
for i = 5, #KEYS do
  local codes = ARGV[i]
  local out = {}
  for off = 1, #codes, 8 do out[#out + 1] = string.sub(codes, off, off + 7) .. tail end
  redis.call('APPEND', KEYS[i], table.concat(out))
end
return {seq, payload, now}
"""

# Mirror layout: one stream entry (seq u32 LE + the image's codes, u64 LE) instead of the
# bucket appends, in the same atomic step as the INCR, so the log holds the registrations
# in seq order. KEYS[5]: the log; ARGV[5]: the codes. Also returns the entry's id.
_INSERT_PENDING_LOG = _INSERT_HEAD + """
local id = redis.call('XADD', KEYS[5], '*', 'a', struct.pack('<I4', seq) .. ARGV[5])
return {seq, payload, now, id}
"""

# KEYS: state, rec, dups-of-target, sha  ARGV: seq, expected payload, new state ('' = none),
# record json, image_id, add-to-dups flag, target seq ('' = none).
# 1 = done, 0 = fenced out or the target was removed meanwhile (decide again), -1 = id taken.
_FINALIZE = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
if ARGV[7] ~= '' and redis.call('HEXISTS', KEYS[1], ARGV[7]) == 0 then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return -1
end
if ARGV[3] == '' then redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  local holder = redis.call('GET', KEYS[4])
  if (not holder) or redis.call('HEXISTS', KEYS[1], holder) == 0 then redis.call('SET', KEYS[4], ARGV[1]) end
end
redis.call('SET', KEYS[2], ARGV[4])
if ARGV[6] == '1' then redis.call('ZADD', KEYS[3], ARGV[1], ARGV[5]) end
return 1
"""

# Remove one image's records from its own buckets (a duplicate, a withdrawn or removed
# registration). KEYS[1]: the state hash, then the buckets. ARGV[1]: the seq (u32 LE),
# ARGV[2]: the seq (decimal); ARGV[i + 1]: the 8-byte codes that live in KEYS[i]. Each
# record is found by a plain (C-speed) search for its exact 12 bytes at a record
# boundary: O(bucket bytes), no Lua loop over candidates, and atomic, so concurrent
# appends to the same buckets cannot make it retry. Every caller deletes the seq's state
# first; a state still there means the image is kept (e.g. a withdrawal that lost the
# race to its own finalize, whose reply never arrived) and nothing is stripped: 0.
_STRIP = """
if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 1 then return 0 end
local tail = ARGV[1]
for i = 2, #KEYS do
  local blob = redis.call('GET', KEYS[i])
  if blob then
    local changed = false
    local codes = ARGV[i + 1]
    for off = 1, #codes, 8 do
      local record = string.sub(codes, off, off + 7) .. tail
      local from = 1
      while true do
        local at = string.find(blob, record, from, true)
        if not at then break end
        if (at - 1) % 12 == 0 then
          blob = string.sub(blob, 1, at - 1) .. string.sub(blob, at + 12)
          changed = true
          from = at
        else
          from = at + 1
        end
      end
    end
    if changed then
      if #blob == 0 then redis.call('DEL', KEYS[i]) else redis.call('SET', KEYS[i], blob) end
    end
  end
end
return 1
"""

# Mirror namespaces' _STRIP: a tombstone for the seq, appended only if the seq has no
# state left (every caller deletes it first): a kept image is never dropped from the
# mirrors, e.g. by a withdrawal that lost the race to its own successful finalize.
# KEYS: state, log. ARGV: seq. 1 = appended.
_TOMBSTONE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
redis.call('XADD', KEYS[2], '*', 'd', ARGV[1])
return 1
"""

# Compare-and-set of a state entry: extend our own lease while we wait. 1 = renewed.
_CAS_SET = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  return 1
end
return 0
"""

# Compare-and-delete of a state entry (abandon an expired pending registration).
_CAS_DELETE = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
return 0
"""


log = logging.getLogger("imgdedup.index")


@dataclass(frozen=True, slots=True)
class _State:
    kept: bool
    lease_ms: int  # pending only
    sha256: str
    image_id: str

    @classmethod
    def parse(cls, raw: bytes) -> _State:
        text = raw.decode()
        if text.startswith("P|"):
            _, lease, sha, image_id = text.split("|", 3)
            return cls(False, int(lease), sha, image_id)
        _, sha, image_id = text.split("|", 2)
        return cls(True, 0, sha, image_id)


class _Restart(Exception):
    """Our pending entry was removed by a waiter (lease expired): start over."""


class RedisMihIndex:
    """`DedupIndex` on Redis with multi-index hashing."""

    backend = "redis"

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "imgdedup",
        substrings: int = 4,
        lease_ms: int = 15_000,
        max_attempts: int = 32,
        mirror: bool = False,
    ) -> None:
        self._redis = client
        self._prefix = prefix
        self._default_m = substrings
        self._lease_ms = lease_ms
        self._max_attempts = max_attempts
        self._m_cache: dict[str, int] = {}
        # New namespaces get the mirror layout (a log, no buckets). Existing ones keep the
        # layout their meta records, whatever this replica is configured with.
        self._mirror_new = mirror
        self._log_meta: dict[str, bytes] = {}  # mirror namespaces -> their meta
        self._meta_raw: dict[str, bytes] = {}  # every cached namespace -> the meta read
        self.mirror = RedisMirror(client, self._key)
        self._insert_log = client.register_script(_INSERT_PENDING_LOG)
        self._tombstone = client.register_script(_TOMBSTONE)
        self._insert = client.register_script(_INSERT_PENDING)
        self._finalize = client.register_script(_FINALIZE)
        self._cas_delete = client.register_script(_CAS_DELETE)
        self._cas_set = client.register_script(_CAS_SET)
        self._strip_script = client.register_script(_STRIP)
        self.watch_conflicts = 0  # optimistic retries of removals (WATCH on the record)
        self.restarts = 0  # registrations decided again (fenced out, or target removed)
        self.pending_waits = 0  # times a registration waited for a concurrent near-duplicate

    # --- keys ------------------------------------------------------------------------
    def _key(self, namespace: str, suffix: str) -> str:
        return f"{self._prefix}:{{{namespace}}}:{suffix}"

    def _bucket_key(self, namespace: str, j: int, value: int) -> str:
        return self._key(namespace, f"b{j}:{value:x}")

    def _probe_keys(self, namespace: str, codes: Iterable[int], radius: int, m: int) -> list[str]:
        if namespace in self._log_meta:
            return []  # mirror namespace: no buckets, `_near` asks the mirror
        keys: dict[str, None] = {}
        for code in codes:
            for j, value in probes(code, radius, m):
                keys[self._bucket_key(namespace, j, value)] = None
        return list(keys)

    def _own_buckets(self, namespace: str, codes: tuple[int, ...], m: int) -> dict[str, list[int]]:
        """Bucket key -> the image's codes that live in it."""
        owned: dict[str, list[int]] = defaultdict(list)
        for code in dict.fromkeys(codes):
            for j, value in enumerate(split_code(code, m)):
                owned[self._bucket_key(namespace, j, value)].append(code)
        return owned

    # --- namespace parameters ----------------------------------------------------------
    @maps_redis_errors
    async def substrings(self, namespace: str, *, create: bool = True) -> int:
        """m for this namespace: fixed by whoever created it, so all replicas agree.
        Reads pass create=False: asking about an unknown namespace must not create it."""
        m = self._m_cache.get(namespace)
        if m is not None:
            return m
        meta_key = self._key(namespace, "meta")
        wanted = json.dumps(
            {"m": self._default_m, "algorithm": HASH_ALGORITHM, "bits": 64, **({"log": uuid4().hex} if self._mirror_new else {})}
        )
        if create:
            await self._redis.set(meta_key, wanted, nx=True)
        raw = await self._redis.get(meta_key)
        if raw is None:
            return self._default_m  # unknown namespace, nothing in it: not cached
        meta = json.loads(raw)
        if meta.get("algorithm") != HASH_ALGORITHM or meta.get("bits") != 64:
            raise IndexMismatch(
                f"namespace {namespace!r} holds {meta.get('algorithm')} codes; this service "
                f"computes {HASH_ALGORITHM}: re-index it or use another namespace/prefix"
            )
        m = int(meta["m"])
        if meta.get("log"):
            self._log_meta[namespace] = raw
        else:
            self._log_meta.pop(namespace, None)
        self._meta_raw[namespace] = raw
        self._m_cache[namespace] = m
        return m

    # --- reads -------------------------------------------------------------------------
    async def _near(
        self, namespace: str, codes: tuple[int, ...], keys: list[str], radius: int, sha_hex: str | None = None,
        *, upto: bytes | None = None,
    ) -> dict[int, int]:
        """{seq: distance} of every record in the probed buckets within `radius`; with
        `sha_hex`, the kept image with those exact bytes is included at distance 0.
        Mirror namespaces (no buckets, `keys` empty): the same from this replica's mirror,
        first caught up to `upto` (a registration's own log entry: every lower seq is
        before it) or to the log's current end."""
        if namespace in self._log_meta:
            return await self._near_mirror(namespace, codes, radius, sha_hex, upto)
        sha_keys = [self._key(namespace, f"sha:{sha_hex}")] if sha_hex else []
        if not keys and not sha_keys:
            return {}
        values = await self._redis.mget([*sha_keys, *keys])
        present = [b for b in values[len(sha_keys):] if b]
        near = nearest_per_seq(unpack_records(b"".join(present)), codes, radius) if present else {}
        if sha_keys and values[0]:
            near[int(values[0])] = 0
        return near

    async def _near_mirror(
        self, namespace: str, codes: tuple[int, ...], radius: int, sha_hex: str | None, upto: bytes | None
    ) -> dict[int, int]:
        sha_keys = [self._key(namespace, f"sha:{sha_hex}")] if sha_hex else []
        meta, values = await self.mirror.sync(namespace, upto=upto, reads=sha_keys)
        if meta != self._log_meta.get(namespace):
            # Dropped or re-created since its parameters were read: read them again.
            self._forget_layout(namespace)
            if meta is None and upto is None:
                return {}
            raise ContentionError(f"namespace {namespace!r} was dropped or re-created meanwhile: retry")
        near = self.mirror.near(namespace, codes, radius)
        if sha_keys and values[0]:
            near[int(values[0])] = 0
        return near

    async def _thumbnails(self, namespace: str, kept: dict[int, _State]) -> dict[int, bytes]:
        """Verification thumbnails of kept candidates, from their records (one MGET, and
        only when a query has candidates: most have none)."""
        if not kept:
            return {}
        raws = await self._redis.mget([self._key(namespace, f"rec:{st.image_id}") for st in kept.values()])
        return {seq: ImageRecord.thumbnail_from_json(raw) for seq, raw in zip(kept, raws) if raw}

    async def _states(self, namespace: str, seqs: list[int]) -> dict[int, _State]:
        if not seqs:
            return {}
        raws = await self._redis.hmget(self._key(namespace, "state"), [str(s) for s in seqs])
        return {seq: _State.parse(raw) for seq, raw in zip(seqs, raws) if raw is not None}

    async def _kept_candidates(
        self, namespace: str, fingerprint: Fingerprint, radius: int
    ) -> tuple[Candidate, ...]:
        m = await self.substrings(namespace, create=False)
        near = await self._near(
            namespace, fingerprint.query_codes, self._probe_keys(namespace, fingerprint.query_codes, radius, m), radius,
            fingerprint.sha256_hex,
        )
        states = await self._states(namespace, list(near))
        kept = {seq: st for seq, st in states.items() if st.kept}
        thumbs = await self._thumbnails(namespace, kept) if fingerprint.thumbnail else {}
        return sort_candidates(
            [_candidate(seq, near[seq], st, fingerprint.sha256_hex, thumbs.get(seq, b"")) for seq, st in kept.items()]
        )

    @maps_redis_errors
    async def lookup(self, namespace: str, fingerprint: Fingerprint, *, radius: int) -> Lookup:
        validate_namespace(namespace)
        return Lookup(await self._kept_candidates(namespace, fingerprint, radius))

    @maps_redis_errors
    async def query(self, namespace: str, code: int, *, radius: int) -> list[tuple[str, int]]:
        validate_namespace(namespace)
        m = await self.substrings(namespace, create=False)
        near = await self._near(namespace, (code,), self._probe_keys(namespace, (code,), radius, m), radius)
        states = await self._states(namespace, list(near))
        return sorted(
            ((st.image_id, near[seq]) for seq, st in states.items() if st.kept),
            key=lambda pair: (pair[1], pair[0]),
        )

    @maps_redis_errors
    async def get(self, namespace: str, image_id: str) -> ImageRecord | None:
        validate_namespace(namespace)
        raw = await self._redis.get(self._key(namespace, f"rec:{image_id}"))
        return ImageRecord.from_json(raw) if raw else None

    @maps_redis_errors
    async def duplicates_of(self, namespace: str, image_id: str) -> list[ImageRecord]:
        validate_namespace(namespace)
        ids = await self._redis.zrange(self._key(namespace, f"dups:{image_id}"), 0, -1)
        if not ids:
            return []
        raws = await self._redis.mget([self._key(namespace, f"rec:{i.decode()}") for i in ids])
        return [ImageRecord.from_json(raw) for raw in raws if raw]

    # --- writes ------------------------------------------------------------------------
    @maps_redis_errors
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
        validate_namespace(namespace)
        validate_image_id(image_id)
        for _attempt in range(self._max_attempts):
            m = await self.substrings(namespace)  # again after a restart: the meta may have changed
            try:
                return await self._register_once(namespace, image_id, fingerprint, decide, radius, event_id, m)
            except _Restart:
                self.restarts += 1
        raise ContentionError(f"register {namespace}/{image_id}: restarted {self._max_attempts} times")

    async def _register_once(
        self,
        namespace: str,
        image_id: str,
        fp: Fingerprint,
        decide: DecideFn,
        radius: int,
        event_id: str | None,
        m: int,
    ) -> Registration:
        rec_key = self._key(namespace, f"rec:{image_id}")
        state_key = self._key(namespace, "state")
        own = self._own_buckets(namespace, fp.indexed_codes, m)
        if namespace in self._log_meta and not self.mirror.state(namespace).loaded:
            # A cold mirror reads the whole log (a minute at 10M codes) before this takes
            # a seq: no pending entry, which near registrations elsewhere would wait on,
            # is held while it loads. The catch-up after the insert is then short.
            meta, _ = await self.mirror.sync(namespace)
            if meta != self._log_meta.get(namespace):
                self._forget_layout(namespace)
                raise _Restart()
        result = await self._insert_pending(namespace, rec_key, state_key, image_id, fp, own)
        if int(result[0]) == -1:
            # Dropped and re-created since this replica read its layout and m.
            self._forget_layout(namespace)
            raise _Restart()
        if int(result[0]) == 0:
            return replay(ImageRecord.from_json(result[1]), fp)
        seq, payload, now_ms = int(result[0]), result[1], int(result[2])
        upto = result[3] if len(result) > 3 else None  # mirror namespaces: our log entry
        clock = _RedisClock(now_ms)
        own_lease: _OwnLease | None = None
        try:
            near = await self._near(
                namespace, fp.query_codes, self._probe_keys(namespace, fp.query_codes, radius, m), radius, fp.sha256_hex,
                upto=upto,
            )
            near.pop(seq, None)
            earlier = {s: d for s, d in near.items() if s < seq}
            own_lease = _OwnLease(seq, payload, fp.sha256_hex, image_id, self._lease_ms)
            states = await self._settled_states(namespace, earlier, clock, own_lease)
            payload = own_lease.payload
            for st in states.values():
                if st.image_id == image_id:
                    # The same image_id is being registered concurrently and got in first.
                    stored = await self.get(namespace, image_id)
                    if stored is not None:
                        await self._abandon_own(namespace, seq, payload, own)
                        return replay(stored, fp)
            kept = {s: st for s, st in states.items() if st.kept and st.image_id != image_id}
            thumbs = await self._thumbnails(namespace, kept) if fp.thumbnail else {}
            candidates = sort_candidates(
                [_candidate(s, earlier[s], st, fp.sha256_hex, thumbs.get(s, b"")) for s, st in kept.items()]
            )
            decision = decide(Lookup(candidates))
            target_seq = next((c.seq for c in candidates if c.image_id == decision.duplicate_of), None)
            record = ImageRecord.build(namespace, image_id, fp, decision, seq, event_id)
            new_state = f"K|{fp.sha256_hex}|{image_id}" if record.kept else ""
            dups_key = self._key(namespace, f"dups:{record.duplicate_of}") if record.duplicate_of else rec_key
            outcome = int(
                await self._finalize(
                    keys=[state_key, rec_key, dups_key, self._key(namespace, f"sha:{fp.sha256_hex}")],
                    args=[
                        seq, payload, new_state, record.to_json(), image_id,
                        "1" if record.duplicate_of else "0",
                        str(target_seq) if target_seq is not None else "",
                    ],
                )
            )
        except BaseException:
            # Leave nothing pending behind if we fail or are cancelled mid-way.
            current = own_lease.payload if own_lease is not None else payload
            await asyncio.shield(self._abandon_own(namespace, seq, current, own))
            raise
        if outcome == 0:
            # Fenced out, or the image we were judged against was removed meanwhile:
            # withdraw (if still ours) and decide again with a new seq.
            await self._abandon_own(namespace, seq, payload, own)
            raise _Restart()
        if outcome == -1:
            await self._strip(namespace, own, seq)
            stored = await self.get(namespace, image_id)
            if stored is None:
                raise _Restart()
            return replay(stored, fp)
        if not record.kept:
            await self._strip(namespace, own, seq)
        return Registration(record, replayed=False)

    async def _settled_states(
        self, namespace: str, earlier: dict[int, int], clock: _RedisClock, own: _OwnLease
    ) -> dict[int, _State]:
        """States of the earlier candidates once none is pending (kept ones, and gone ones
        omitted). Expired pending entries are removed by compare-and-set; our own lease is
        extended while we wait, so long chains of waiters do not expire each other."""
        settled: dict[int, _State] = {}
        waiting = list(earlier)
        delay = 0.001
        waited = False
        while waiting:
            if waited and own.due(clock.now_ms()):
                renewed = own.renewed(clock.now_ms())
                if not int(await self._cas_set(keys=[self._key(namespace, "state")], args=[own.seq, own.payload, renewed])):
                    raise _Restart()  # someone already judged our lease expired
                own.payload = renewed.encode()
            raws = await self._redis.hmget(self._key(namespace, "state"), [str(s) for s in waiting])
            still: list[int] = []
            for seq, raw in zip(waiting, raws):
                if raw is None:
                    continue
                state = _State.parse(raw)
                if state.kept:
                    settled[seq] = state
                elif state.lease_ms < clock.now_ms():
                    removed = await self._cas_delete(keys=[self._key(namespace, "state")], args=[seq, raw])
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

    async def _abandon_own(self, namespace: str, seq: int, payload: bytes, own: dict[str, list[int]]) -> None:
        try:
            await self._cas_delete(keys=[self._key(namespace, "state")], args=[seq, payload])
            await self._strip(namespace, own, seq)
        except Exception as exc:  # best effort: the lease expires and waiters clean it up
            log.warning("could not withdraw pending registration %s: %r", seq, exc)

    async def _insert_pending(
        self, namespace: str, rec_key: str, state_key: str, image_id: str, fp: Fingerprint, own: dict[str, list[int]]
    ) -> Any:
        """The INSERT_PENDING step of the namespace's layout: its own buckets, or its log.
        The script checks that the namespace's meta is still the one this replica cached."""
        meta_key, meta = self._key(namespace, "meta"), self._meta_raw.get(namespace, b"")
        if namespace in self._log_meta:
            codes = np.array(list(dict.fromkeys(fp.indexed_codes)), dtype="<u8").tobytes()
            return await self._insert_log(
                keys=[rec_key, self._key(namespace, "seq"), state_key, meta_key, self._key(namespace, "log")],
                args=[self._lease_ms, fp.sha256_hex, image_id, meta, codes],
            )
        packed = [np.array(codes, dtype="<u8").tobytes() for codes in own.values()]
        return await self._insert(
            keys=[rec_key, self._key(namespace, "seq"), state_key, meta_key, *own],
            args=[self._lease_ms, fp.sha256_hex, image_id, meta, *packed],
        )

    async def _strip(self, namespace: str, own: dict[str, list[int]], seq: int) -> None:
        """Remove the records of `seq` from its own buckets (bucket key -> its codes there);
        in a mirror namespace, append its tombstone to the log (once its state is gone)."""
        if namespace in self._log_meta:
            await self._tombstone(keys=[self._key(namespace, "state"), self._key(namespace, "log")], args=[seq])
            return
        if not own:
            return
        await self._strip_script(
            keys=[self._key(namespace, "state"), *own],
            args=[
                np.array([seq], dtype="<u4").tobytes(), str(seq),
                *(np.array(codes, dtype="<u8").tobytes() for codes in own.values()),
            ],
        )

    @maps_redis_errors
    async def remove(self, namespace: str, image_id: str) -> bool:
        validate_namespace(namespace)
        m = await self.substrings(namespace, create=False)
        rec_key = self._key(namespace, f"rec:{image_id}")
        for attempt in range(self._max_attempts):
            async with self._redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(rec_key)
                    raw = await pipe.get(rec_key)
                    if not raw:
                        await pipe.unwatch()
                        return False
                    record = ImageRecord.from_json(raw)
                    sha_key = self._key(namespace, f"sha:{record.sha256}")
                    drop_sha = False
                    if record.kept:
                        await pipe.watch(sha_key)
                        drop_sha = await pipe.get(sha_key) == str(record.seq).encode()
                    pipe.multi()
                    if drop_sha:
                        pipe.delete(sha_key)
                    if record.kept:
                        pipe.hdel(self._key(namespace, "state"), str(record.seq))
                        pipe.delete(self._key(namespace, f"dups:{image_id}"))
                    if record.duplicate_of is not None:
                        pipe.zrem(self._key(namespace, f"dups:{record.duplicate_of}"), image_id)
                    pipe.delete(rec_key)
                    await pipe.execute()
                    break
                except WatchError:
                    self.watch_conflicts += 1
                    await asyncio.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))
        else:
            raise ContentionError(f"remove {namespace}/{image_id}: too many concurrent changes")
        if record.kept:
            await self._strip(namespace, self._own_buckets(namespace, record.indexed_codes, m), record.seq)
        return True

    # --- lifecycle ---------------------------------------------------------------------
    @maps_redis_errors
    async def ping(self) -> None:
        await self._redis.ping()

    @maps_redis_errors
    async def close(self) -> None:
        self.mirror.clear()
        await self._redis.aclose()

    @maps_redis_errors
    async def drop_namespace(self, namespace: str, batch: int = 1000) -> int:
        """Delete every key of a namespace with SCAN (never KEYS). For tests and tooling."""
        validate_namespace(namespace)
        deleted = 0
        async for keys in _batched(self._redis.scan_iter(match=self._key(namespace, "*"), count=batch), batch):
            deleted += await self._redis.unlink(*keys)
        self._forget_layout(namespace)
        self.mirror.forget(namespace)
        return deleted

    def _forget_layout(self, namespace: str) -> None:
        """Drop what this replica cached of a namespace's meta (m, layout): read it again."""
        self._m_cache.pop(namespace, None)
        self._log_meta.pop(namespace, None)
        self._meta_raw.pop(namespace, None)


class _OwnLease:
    """Our pending entry while we wait on earlier ones: renewed at half its lease."""

    def __init__(self, seq: int, payload: bytes, sha256_hex: str, image_id: str, lease_ms: int) -> None:
        self.seq = seq
        self.payload = payload
        self._sha = sha256_hex
        self._image_id = image_id
        self._lease_ms = lease_ms
        self._expires_ms = _State.parse(payload).lease_ms

    def due(self, now_ms: int) -> bool:
        return self._expires_ms - now_ms < self._lease_ms // 2

    def renewed(self, now_ms: int) -> str:
        self._expires_ms = now_ms + self._lease_ms
        return f"P|{self._expires_ms}|{self._sha}|{self._image_id}"


class _RedisClock:
    """Redis server time (from the insert script), advanced by our monotonic clock, so
    lease checks do not depend on replicas' wall clocks agreeing."""

    def __init__(self, redis_now_ms: int) -> None:
        self._base = redis_now_ms
        self._start = time.monotonic()

    def now_ms(self) -> int:
        return self._base + int((time.monotonic() - self._start) * 1000)


def _candidate(seq: int, distance: int, state: _State, sha256_hex: str, thumbnail: bytes = b"") -> Candidate:
    exact = state.sha256 == sha256_hex
    return Candidate(
        state.image_id, seq, 0 if exact else distance, MatchKind.EXACT if exact else MatchKind.NEAR, thumbnail
    )


async def _batched(iterator: Any, size: int) -> Any:
    chunk: list[Any] = []
    async for item in iterator:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
