"""Where a namespace lives in Redis: its key names, and deleting every key under a prefix.

Every key of a namespace carries the hash tag `{ns}`, so a namespace lives in one Redis
Cluster slot and its scripts, MGETs and transactions are legal there (a namespace name
holds no braces: `records.validate_namespace`). The format is the same on one server and
on a cluster, so a single-server keyspace moves into a cluster as it is:

    P:{ns}:meta            JSON: substring count m, hash algorithm and layout, fixed at creation
    P:{ns}:seq             INCR counter: registration order (the "earliest" in first-wins)
    P:{ns}:state           hash seq -> "K|sha|image_id" (kept) or
                           "P|lease_ms|sha|image_id" (pending: being decided)
    P:{ns}:sha:<hex>       seq of the kept image with these exact bytes (exact tier)
    P:{ns}:rec:<image_id>  JSON ImageRecord (every decided image, for replay and GET)
    P:{ns}:dups:<image_id> sorted set (score seq) of images judged duplicate/review of it
    P:{ns}:b<j>:<hex>      bucket layout: bucket of substring j with value <hex>, packed
                           12-byte (code u64, seq u32) records
    P:{ns}:reviews         sorted set (score seq) of images with an open `review`
    P:{ns}:src             hash image_id -> source URI the upload gave (review queue)
    P:{ns}:hist:<image_id> list of JSON audit entries (`decisions.review.Change`)
    P:{ns}:log             log layout (meta "log"): stream of (seq, codes) adds and seq
                           tombstones that every replica applies to its mirror
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from imgdedup.index.mih import probes, split_code
from imgdedup.index.redis.topology import Client, by_slot, scan_nodes


class KeySpace:
    """The key names of every namespace under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def namespace(self, namespace: str) -> str:
        """What every key of the namespace starts with (followed by ':')."""
        return f"{self.prefix}:{{{namespace}}}"

    def key(self, namespace: str, suffix: str) -> str:
        return f"{self.namespace(namespace)}:{suffix}"

    def meta(self, namespace: str) -> str:
        return self.key(namespace, "meta")

    def seq(self, namespace: str) -> str:
        return self.key(namespace, "seq")

    def state(self, namespace: str) -> str:
        return self.key(namespace, "state")

    def log(self, namespace: str) -> str:
        return self.key(namespace, "log")

    def sha(self, namespace: str, sha256_hex: str) -> str:
        return self.key(namespace, f"sha:{sha256_hex}")

    def record(self, namespace: str, image_id: str) -> str:
        return self.key(namespace, f"rec:{image_id}")

    def dups(self, namespace: str, image_id: str) -> str:
        return self.key(namespace, f"dups:{image_id}")

    def reviews(self, namespace: str) -> str:
        return self.key(namespace, "reviews")

    def sources(self, namespace: str) -> str:
        return self.key(namespace, "src")

    def history(self, namespace: str, image_id: str) -> str:
        return self.key(namespace, f"hist:{image_id}")

    def records_glob(self, namespace: str) -> str:
        """SCAN pattern of every record key of the namespace."""
        return _glob_escape(self.record(namespace, "")) + "*"

    def bucket(self, namespace: str, j: int, value: int) -> str:
        return self.key(namespace, f"b{j}:{value:x}")

    def probe_keys(self, namespace: str, codes: Iterable[int], radius: int, m: int) -> list[str]:
        """The buckets a radius query on `codes` reads, without repeats."""
        keys: dict[str, None] = {}
        for code in codes:
            for j, value in probes(code, radius, m):
                keys[self.bucket(namespace, j, value)] = None
        return list(keys)

    def own_buckets(self, namespace: str, codes: Iterable[int], m: int) -> dict[str, list[int]]:
        """Bucket key -> the image's codes that live in it."""
        owned: dict[str, list[int]] = defaultdict(list)
        for code in dict.fromkeys(codes):
            for j, value in enumerate(split_code(code, m)):
                owned[self.bucket(namespace, j, value)].append(code)
        return owned


async def delete_prefix(client: Client, prefix: str, *, batch: int = 1000) -> int:
    """Delete every key under `prefix:` with SCAN and UNLINK (never KEYS or FLUSHDB), on
    every master of a cluster, each UNLINK within one slot. Returns how many keys were
    deleted."""
    deleted = 0
    async for keys in scan_nodes(client, f"{_glob_escape(prefix)}:*", batch):
        for start in range(0, len(keys), batch):
            for group in by_slot(client, keys[start : start + batch]):
                deleted += await client.unlink(*group)
    return deleted


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)
