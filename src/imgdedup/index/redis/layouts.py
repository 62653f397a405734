"""How a namespace stores and searches its codes: one strategy per layout, chosen by the
namespace's meta. Everything else of the first-wins protocol (seq, state, finalize) is
shared and lives in `index.py`.

- `BucketLayout`: bucket keys of packed (code, seq) records, read with one MGET.
- `LogLayout`: a stream of adds and tombstones that every replica applies to its
  in-process mirror (`mirror.RedisMirror`), which answers the radius queries.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol, cast

import numpy as np
import redis.asyncio as aioredis

from imgdedup.errors import ContentionError
from imgdedup.index.mih import nearest_per_seq, unpack_records
from imgdedup.index.redis import scripts
from imgdedup.index.redis.keys import KeySpace
from imgdedup.index.redis.mirror import RedisMirror
from imgdedup.index.redis.namespaces import NamespaceMeta, Namespaces
from imgdedup.index.redis.pending import Restart
from imgdedup.index.redis.topology import is_cluster

#: Bucket keys per MGET command of a query (see `BucketLayout._mget`).
MGET_CHUNK = 32
#: Buckets per STRIP_BUCKETS call (see `BucketLayout.strip_records`).
STRIP_CHUNK = 16


class Layout(Protocol):
    async def prepare(self, namespace: str, meta: NamespaceMeta) -> None:
        """Whatever must be ready before a registration takes its seq."""
        ...

    async def insert_pending(
        self, namespace: str, meta: NamespaceMeta, image_id: str, sha256_hex: str, codes: Iterable[int], lease_ms: int
    ) -> list[Any]:
        """The atomic insert step: take a seq, mark it pending and index `codes` under it.
        Replies as `scripts.INSERT_PENDING_*`: {-1}, {0, record} or {seq, payload, now_ms[, upto]}."""
        ...

    async def near(
        self, namespace: str, meta: NamespaceMeta, codes: Sequence[int], radius: int,
        sha256_hex: str | None = None, *, upto: bytes | None = None,
    ) -> dict[int, int]:
        """{seq: distance} of every indexed image within `radius` of a query code (kept or
        not: the state decides); with `sha256_hex`, the kept image with those exact bytes
        at distance 0. `upto`: the caller's own insert, which every lower seq precedes."""
        ...

    async def strip(self, namespace: str, meta: NamespaceMeta, seq: int, codes: Iterable[int]) -> None:
        """Take `seq`'s codes out of the index, once its state is gone (a kept image is
        left alone)."""
        ...


def _insert_keys(keys: KeySpace, namespace: str, image_id: str) -> list[str]:
    """The KEYS both insert scripts start with."""
    return [keys.record(namespace, image_id), keys.seq(namespace), keys.state(namespace), keys.meta(namespace)]


def _with_exact(near: dict[int, int], exact_seq: bytes | None) -> dict[int, int]:
    if exact_seq:
        near[int(exact_seq)] = 0
    return near


class BucketLayout:
    """Probed buckets read with ONE MGET, candidates verified in numpy client-side."""

    def __init__(self, client: aioredis.Redis, keys: KeySpace) -> None:
        self._redis = client
        self._keys = keys
        self._insert = client.register_script(scripts.INSERT_PENDING_BUCKETS)
        self._strip = client.register_script(scripts.STRIP_BUCKETS)
        #: A cluster client's pipelines refuse multi-key commands and scripts: there the
        #: chunks go one call after another (one slot, so one master, either way).
        self._cluster = is_cluster(client)

    async def prepare(self, namespace: str, meta: NamespaceMeta) -> None:
        return None

    async def insert_pending(
        self, namespace: str, meta: NamespaceMeta, image_id: str, sha256_hex: str, codes: Iterable[int], lease_ms: int
    ) -> list[Any]:
        own = self._keys.own_buckets(namespace, codes, meta.m)
        packed = [np.array(bucket_codes, dtype="<u8").tobytes() for bucket_codes in own.values()]
        return await self._insert(
            keys=[*_insert_keys(self._keys, namespace, image_id), *own],
            args=[lease_ms, sha256_hex, image_id, meta.raw, *packed],
        )

    async def near(
        self, namespace: str, meta: NamespaceMeta, codes: Sequence[int], radius: int,
        sha256_hex: str | None = None, *, upto: bytes | None = None,
    ) -> dict[int, int]:
        sha_keys = [self._keys.sha(namespace, sha256_hex)] if sha256_hex else []
        probed = self._keys.probe_keys(namespace, codes, radius, meta.m)
        if not probed and not sha_keys:
            return {}
        values = await self._mget([*sha_keys, *probed])
        present = [b for b in values[len(sha_keys) :] if b]
        near = nearest_per_seq(unpack_records(b"".join(cast(list[bytes], present))), tuple(codes), radius) if present else {}
        return _with_exact(near, cast("bytes | None", values[0]) if sha_keys else None)

    async def _mget(self, keys: list[str]) -> list[Any]:
        """MGET in chunks of `MGET_CHUNK` keys, pipelined: one round trip, but no single
        command holds Redis for all the bytes of a query (large buckets at millions of
        images). Every lower seq was inserted before our seq was taken, so reading the
        chunks at slightly different moments misses none of them."""
        if len(keys) <= MGET_CHUNK:
            return cast(list[Any], await self._redis.mget(keys))
        chunks = [keys[start : start + MGET_CHUNK] for start in range(0, len(keys), MGET_CHUNK)]
        if self._cluster:
            return [value for chunk in chunks for value in await self._redis.mget(chunk)]
        async with self._redis.pipeline(transaction=False) as pipe:
            for chunk in chunks:
                pipe.mget(chunk)
            replies = await pipe.execute()
        return [value for reply in replies for value in reply]

    async def strip(self, namespace: str, meta: NamespaceMeta, seq: int, codes: Iterable[int]) -> None:
        await self.strip_records(namespace, self._keys.own_buckets(namespace, codes, meta.m), seq)

    async def strip_records(self, namespace: str, own: dict[str, list[int]], seq: int) -> None:
        """Remove the records of `seq` from the given buckets (bucket key -> its codes there),
        `STRIP_CHUNK` buckets per script call, pipelined: each call rewrites its buckets, so
        one call for all of an image's buckets would hold Redis for all their bytes. Each
        call checks on its own that the seq's state is gone, so the chunks need no
        atomicity between them (readers ignore a seq without state)."""
        if not own:
            return
        seq_le, seq_text = np.array([seq], dtype="<u4").tobytes(), str(seq)
        items = list(own.items())
        calls: list[tuple[list[str], list[bytes | str]]] = [
            (
                [self._keys.state(namespace), *(key for key, _ in chunk)],
                [seq_le, seq_text, *(np.array(codes, dtype="<u8").tobytes() for _, codes in chunk)],
            )
            for chunk in (items[start : start + STRIP_CHUNK] for start in range(0, len(items), STRIP_CHUNK))
        ]
        if self._cluster:
            for keys, args in calls:
                await self._strip(keys=keys, args=args)
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                await self._strip(keys=keys, args=args, client=pipe)
            await pipe.execute()


class LogLayout:
    """Adds and tombstones in the namespace's stream; radius queries answered by this
    replica's mirror once caught up with the stream."""

    def __init__(self, client: aioredis.Redis, keys: KeySpace, mirror: RedisMirror, namespaces: Namespaces) -> None:
        self._keys = keys
        self._mirror = mirror
        self._namespaces = namespaces
        self._insert = client.register_script(scripts.INSERT_PENDING_LOG)
        self._tombstone = client.register_script(scripts.TOMBSTONE)

    async def prepare(self, namespace: str, meta: NamespaceMeta) -> None:
        """A cold mirror reads the whole log before the registration takes a seq, so no
        pending entry (which near registrations elsewhere would wait on) is held while it
        loads; the catch-up after the insert is then short."""
        if self._mirror.state(namespace).loaded:
            return
        current, _ = await self._mirror.sync(namespace)
        if current != meta.raw:
            self._namespaces.forget(namespace)
            raise Restart()

    async def insert_pending(
        self, namespace: str, meta: NamespaceMeta, image_id: str, sha256_hex: str, codes: Iterable[int], lease_ms: int
    ) -> list[Any]:
        packed = np.array(list(dict.fromkeys(codes)), dtype="<u8").tobytes()
        return await self._insert(
            keys=[*_insert_keys(self._keys, namespace, image_id), self._keys.log(namespace)],
            args=[lease_ms, sha256_hex, image_id, meta.raw, packed],
        )

    async def near(
        self, namespace: str, meta: NamespaceMeta, codes: Sequence[int], radius: int,
        sha256_hex: str | None = None, *, upto: bytes | None = None,
    ) -> dict[int, int]:
        """Caught up to `upto` or, without it, to the log's current end first."""
        sha_keys = [self._keys.sha(namespace, sha256_hex)] if sha256_hex else []
        current, values = await self._mirror.sync(namespace, upto=upto, reads=sha_keys)
        if current != meta.raw:
            # Dropped or re-created since its parameters were read: read them again.
            self._namespaces.forget(namespace)
            if current is None and upto is None:
                return {}
            raise ContentionError(f"namespace {namespace!r} was dropped or re-created meanwhile: retry")
        near = self._mirror.near(namespace, codes, radius)
        return _with_exact(near, values[0] if sha_keys else None)

    async def strip(self, namespace: str, meta: NamespaceMeta, seq: int, codes: Iterable[int]) -> None:
        await self._tombstone(keys=[self._keys.state(namespace), self._keys.log(namespace)], args=[seq])
