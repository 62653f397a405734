"""A namespace's parameters (substring count m, layout), fixed by whoever created it so
that every replica agrees, and this replica's cache of them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import cast
from uuid import uuid4

import redis.asyncio as aioredis

from imgdedup.errors import IndexMismatch
from imgdedup.fingerprint import HASH_ALGORITHM
from imgdedup.index.redis.keys import KeySpace


@dataclass(frozen=True, slots=True)
class NamespaceMeta:
    m: int
    #: The meta as stored; the insert scripts check it is still the current one.
    raw: bytes
    #: Log layout (a stream mirrored by every replica) rather than bucket keys.
    logged: bool


class Namespaces:
    """Reads (and on first write creates) each namespace's meta, and caches it."""

    def __init__(self, client: aioredis.Redis, keys: KeySpace, *, substrings: int, logged: bool) -> None:
        self._redis = client
        self._keys = keys
        self._default_m = substrings
        # New namespaces get the log layout. Existing ones keep the layout their meta
        # records, whatever this replica is configured with.
        self._log_new = logged
        self._cache: dict[str, NamespaceMeta] = {}

    async def meta(self, namespace: str, *, create: bool) -> NamespaceMeta:
        """The namespace's parameters. Reads pass create=False: asking about an unknown
        namespace must not create it; it gets the defaults (bucket layout), uncached."""
        cached = self._cache.get(namespace)
        if cached is not None:
            return cached
        meta_key = self._keys.meta(namespace)
        if create:
            await self._redis.set(meta_key, self._new_meta(), nx=True)
        raw = await self._redis.get(meta_key)
        if raw is None:
            return NamespaceMeta(self._default_m, b"", logged=False)
        fields = json.loads(raw)
        if fields.get("algorithm") != HASH_ALGORITHM or fields.get("bits") != 64:
            raise IndexMismatch(
                f"namespace {namespace!r} holds {fields.get('algorithm')} codes; this service "
                f"computes {HASH_ALGORITHM}: re-index it or use another namespace/prefix"
            )
        meta = self._cache[namespace] = NamespaceMeta(int(fields["m"]), cast(bytes, raw), logged=bool(fields.get("log")))
        return meta

    def cached(self, namespace: str) -> NamespaceMeta | None:
        return self._cache.get(namespace)

    def forget(self, namespace: str) -> None:
        """Drop what is cached of the namespace (dropped or re-created): read it again."""
        self._cache.pop(namespace, None)

    def _new_meta(self) -> str:
        # The log layout's nonce tells a re-created namespace from the one a mirror holds.
        log = {"log": uuid4().hex} if self._log_new else {}
        return json.dumps({"m": self._default_m, "algorithm": HASH_ALGORITHM, "bits": 64, **log})
