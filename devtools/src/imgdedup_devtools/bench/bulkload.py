"""Bulk loader for benchmarks: writes millions of codes straight into the Redis layout of
`imgdedup.index.redis.index.RedisMihIndex`, built client-side with numpy.

`register()` decides images one at a time (a Lua insert, an MGET of every probed bucket,
a fenced finalize), far too slowly to fill an index with millions of images. This writes
the state that many successful registrations of *kept* images would have left behind:

    P:{ns}:meta        JSON {"m", "algorithm": HASH_ALGORITHM, "bits": 64} (same dumps as
                       RedisMihIndex.substrings)
    P:{ns}:seq         N (the INCR counter, so a later register() continues after it)
    P:{ns}:b<j>:<hex>  every substring-j bucket: packed 12-byte (code u64 LE, seq u32 LE)
                       records in seq order, exactly what INSERT_PENDING appends
    P:{ns}:state       hash seq -> "K|<sha hex>|<image_id>"
    P:{ns}:sha:<hex>   seq of the image with those bytes (optional: exact tier)
    P:{ns}:rec:<id>    JSON ImageRecord (optional: only GET/replay read it)

so that `RedisMihIndex.query()` and `.lookup()` work on it unchanged. Seqs are 1..N in
the order of `codes`.

The mirror layout (`IMGDEDUP_REDIS_MIRROR`) has no buckets: `write_meta(..., log=True)`
marks the namespace, and `load_log` writes the stream `P:{ns}:log` with one add entry
(seq u32 LE + code u64 LE) per seq, exactly what `_INSERT_PENDING_LOG` appends.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

import numpy as np

from imgdedup.decisions.rules import Verdict
from imgdedup.fingerprint import HASH_ALGORITHM
from imgdedup.index.mih import RECORD_DTYPE, substring_widths
from imgdedup.records import ImageRecord

#: (start, stop) -> (image_ids, sha256 hexes) of seqs start+1 .. stop
Labeller = Callable[[int, int], tuple[list[str], list[str]]]


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def synthetic_shas(seed: int, start: int, stop: int) -> list[str]:
    """A pseudo-random SHA-256 hex per seq (start+1 .. stop), a pure function of (seed, seq)."""
    seqs = np.arange(start + 1, stop + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        words = np.stack([_splitmix64(seqs * np.uint64(4) + np.uint64(k) + np.uint64(seed) * np.uint64(0x100000001B3))
                          for k in range(4)], axis=1)
    blob = words.astype(">u8").tobytes().hex()
    return [blob[i * 64 : (i + 1) * 64] for i in range(stop - start)]


def synthetic_labels(seed: int = 0) -> Labeller:
    """image_id `i<seq>` and a pseudo-random SHA-256 hex, both pure functions of the seq."""

    def labels(start: int, stop: int) -> tuple[list[str], list[str]]:
        return [f"i{seq}" for seq in range(start + 1, stop + 1)], synthetic_shas(seed, start, stop)

    return labels


def key_base(prefix: str, namespace: str) -> str:
    return f"{prefix}:{{{namespace}}}:"


def substring_arrays(codes: np.ndarray, m: int) -> list[np.ndarray]:
    """Vectorised `mih.split_code`: substring values per table, most significant first."""
    codes = codes.astype(np.uint64, copy=False)
    out = []
    shift = 64
    for width in substring_widths(m):
        shift -= width
        out.append((codes >> np.uint64(shift)) & np.uint64((1 << width) - 1))
    return out


@dataclass
class BucketStats:
    tables: int
    bucket_keys: int = 0
    max_records: int = 0
    payload_bytes: int = 0
    per_table_keys: list[int] = field(default_factory=list)
    per_table_max: list[int] = field(default_factory=list)
    #: unique substring values per table: lets the caller regenerate the keys to delete
    values: list[np.ndarray] = field(default_factory=list, repr=False)


def write_meta(client: Any, prefix: str, namespace: str, m: int, n: int, *, log: bool = False) -> None:
    base = key_base(prefix, namespace)
    meta = {"m": m, "algorithm": HASH_ALGORITHM, "bits": 64, **({"log": uuid4().hex} if log else {})}
    client.set(base + "meta", json.dumps(meta))
    client.set(base + "seq", n)


# KEYS[1]: the log. ARGV[1]: seq of the first code; ARGV[2]: codes (u64 LE), one per seq.
# Redis serves nobody else while a call runs its XADDs: for bulk loading only.
_LOAD_LOG = """
local seq = tonumber(ARGV[1])
local codes = ARGV[2]
for off = 1, #codes, 8 do
  redis.call('XADD', KEYS[1], '*', 'a', struct.pack('<I4', seq) .. string.sub(codes, off, off + 7))
  seq = seq + 1
end
return seq
"""


def load_log(
    client: Any, prefix: str, namespace: str, codes: np.ndarray, *, first_seq: int = 1, per_call: int = 2000,
    calls_per_flush: int = 25,
) -> None:
    """The mirror layout's stream: one add entry per code, seqs first_seq.. in order."""
    key = key_base(prefix, namespace) + "log"
    script = client.register_script(_LOAD_LOG)
    packed = memoryview(np.ascontiguousarray(codes, dtype="<u8").tobytes())
    pipe = client.pipeline(transaction=False)
    queued = 0
    for start in range(0, len(codes), per_call):
        stop = min(len(codes), start + per_call)
        script(keys=[key], args=[first_seq + start, packed[start * 8 : stop * 8]], client=pipe)
        queued += 1
        if queued >= calls_per_flush:
            pipe.execute()
            queued = 0
    if queued:
        pipe.execute()


def load_buckets(
    client: Any,
    prefix: str,
    namespace: str,
    codes: np.ndarray,
    m: int,
    *,
    keys_per_command: int = 1000,
    bytes_per_flush: int = 8 << 20,
) -> BucketStats:
    """Group the (code, seq) records by bucket key and MSET them in pipelined batches."""
    n = len(codes)
    records = np.empty(n, dtype=RECORD_DTYPE)
    records["code"] = codes
    records["seq"] = np.arange(1, n + 1, dtype=np.uint32)
    base = key_base(prefix, namespace)
    stats = BucketStats(tables=m)
    for j, values in enumerate(substring_arrays(codes, m)):
        order = np.argsort(values, kind="stable")  # stable: records stay in seq order
        sorted_values = values[order]
        blob = memoryview(records[order].tobytes())
        del order
        uniq, starts = np.unique(sorted_values, return_index=True)
        del sorted_values
        ends = np.append(starts[1:], n)
        counts = ends - starts
        stats.per_table_keys.append(len(uniq))
        stats.per_table_max.append(int(counts.max()) if len(counts) else 0)
        stats.values.append(uniq)
        size = RECORD_DTYPE.itemsize
        pipe = client.pipeline(transaction=False)
        pending = 0
        args: list[Any] = []
        prefix_j = f"{base}b{j}:"
        for value, start, end in zip(uniq.tolist(), starts.tolist(), ends.tolist()):
            args.append(f"{prefix_j}{value:x}")
            args.append(blob[start * size : end * size])
            pending += (end - start) * size
            if len(args) >= 2 * keys_per_command:
                pipe.execute_command("MSET", *args)
                args = []
                if pending >= bytes_per_flush:
                    pipe.execute()
                    pending = 0
        if args:
            pipe.execute_command("MSET", *args)
        pipe.execute()
        del blob
    stats.bucket_keys = sum(stats.per_table_keys)
    stats.max_records = max(stats.per_table_max) if stats.per_table_max else 0
    stats.payload_bytes = n * m * RECORD_DTYPE.itemsize
    return stats


def load_state(
    client: Any, prefix: str, namespace: str, n: int, labels: Labeller, *, chunk: int = 20_000, fields_per_command: int = 5000
) -> None:
    """HSET state seq -> "K|sha|image_id" for seqs 1..n (kept images)."""
    key = key_base(prefix, namespace) + "state"
    pipe = client.pipeline(transaction=False)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        ids, shas = labels(start, stop)
        args: list[Any] = []
        for offset, (image_id, sha) in enumerate(zip(ids, shas)):
            args.append(start + offset + 1)
            args.append(f"K|{sha}|{image_id}")
            if len(args) >= 2 * fields_per_command:
                pipe.execute_command("HSET", key, *args)
                args = []
        if args:
            pipe.execute_command("HSET", key, *args)
        pipe.execute()


def load_exact(
    client: Any,
    prefix: str,
    namespace: str,
    codes: np.ndarray,
    labels: Labeller,
    *,
    records: bool = False,
    chunk: int = 5000,
) -> None:
    """Optional parts of the layout: `sha:<hex>` -> seq (first image with those bytes wins,
    as in FINALIZE) and, with `records`, `rec:<image_id>` ImageRecord JSON."""
    base = key_base(prefix, namespace)
    n = len(codes)
    seen: set[str] = set()
    now = time.time()
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        ids, shas = labels(start, stop)
        pipe = client.pipeline(transaction=False)
        sha_args: list[Any] = []
        rec_args: list[Any] = []
        for offset, (image_id, sha) in enumerate(zip(ids, shas)):
            seq = start + offset + 1
            if sha not in seen:
                seen.add(sha)
                sha_args += [f"{base}sha:{sha}", seq]
            if records:
                record = ImageRecord(
                    namespace=namespace, image_id=image_id, verdict=Verdict.ACCEPTED, duplicate_of=None,
                    distance=None, match=None, sha256=sha, codes=(int(codes[seq - 1]),), seq=seq,
                    created_at=now, width=0, height=0, format="JPEG", size_bytes=0,
                )
                rec_args += [f"{base}rec:{image_id}", record.to_json()]
        if sha_args:
            pipe.execute_command("MSET", *sha_args)
        if rec_args:
            pipe.execute_command("MSET", *rec_args)
        pipe.execute()


def delete_buckets(client: Any, prefix: str, namespace: str, stats: BucketStats, batch: int = 5000) -> int:
    """UNLINK the bucket keys `load_buckets` wrote (no SCAN needed for the bulk)."""
    base = key_base(prefix, namespace)
    deleted = 0
    for j, values in enumerate(stats.values):
        prefix_j = f"{base}b{j}:"
        pipe = client.pipeline(transaction=False)
        queued = 0
        for start in range(0, len(values), batch):
            pipe.unlink(*[f"{prefix_j}{v:x}" for v in values[start : start + batch].tolist()])
            queued += 1
            if queued >= 20:
                deleted += sum(pipe.execute())
                queued = 0
        if queued:
            deleted += sum(pipe.execute())
    return deleted
