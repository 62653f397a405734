"""`imgdedup bench index`: Redis MIH radius queries at 1M-10M codes vs faiss and numpy scans.

For each code distribution (uniform random, clustered, real pHashes of a corpus mixed
into random ones) and size N, the codes are bulk-loaded into the exact Redis layout of
`RedisMihIndex` (bench/bulkload.py) for each substring count m, then measured
with the real `RedisMihIndex.query()`:

- latency p50/p99 and queries/s, sequential and with --concurrency clients, per radius;
- a breakdown of one query: probe-key generation, the MGET alone (client-measured, and
  the server's own microseconds from INFO commandstats), numpy verification, HMGET of
  the candidates' states; records and bytes read per query;
- Redis memory per code (INFO used_memory before/after: buckets only, then with the
  state hash), load time, and the longest Redis command during the queries (SLOWLOG);
- correctness: every baseline query's result compared with a numpy brute-force scan,
  and lookup() on stored images;
- baselines in the same run on the same codes and queries: faiss IndexBinaryFlat
  range_search and a numpy popcount scan (the in-memory backend's method);
- the mirror layout (`IMGDEDUP_REDIS_MIRROR`, `--layouts`): the codes bulk-loaded as the
  namespace's Redis log instead of buckets, a cold replica's load of its in-process
  table from the log, then the same `query()` measurements (each query includes its
  catch-up round trip), a breakdown (catch-up / local table / state HMGET), queries with
  a new registration appended to the log before each, memory (Redis per code, replica
  table) and SLOWLOG.

Everything this writes lives under a fresh `imgdedup-bench-index-<uuid>` prefix and is
deleted (UNLINK + SCAN sweep) before it exits, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgdedup.config import MAX_PROBES, Settings
from imgdedup.fingerprint import HASH_ALGORITHM, Fingerprint
from imgdedup.index.mih import (
    RECORD_DTYPE,
    nearest_per_seq,
    probe_count,
    substring_widths,
    suggest_substrings,
    unpack_records,
)
from imgdedup.index.mih_table import MihTable
from imgdedup_devtools.bench import bulkload
from imgdedup_devtools.bench.common import (
    DEFAULT_REDIS_URL,
    bench_prefix,
    delete_prefix,
    fmt_lat,
    latency_summary,
    parse_int_list,
    pct,
    print_json_line,
    redis_used_memory,
    run_clients,
)

DEFAULT_REVIEW_RADIUS = Settings().review_radius


# --- datasets ---------------------------------------------------------------------------
@dataclass
class Dataset:
    name: str
    codes: np.ndarray  # uint64, seq = index + 1
    labels: bulkload.Labeller
    queries: np.ndarray  # uint64
    query_kinds: list[str]
    note: str
    real_codes: int = 0

    def image_id(self, index: int) -> str:
        """image_id of codes[index] (seq index + 1); synthetic ones are `i<seq>`."""
        if index >= self.real_codes:
            return f"i{index + 1}"
        return self.labels(index, index + 1)[0][0]

    def sha(self, index: int) -> str:
        return self.labels(index, index + 1)[1][0]


def uniform_codes(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, np.iinfo(np.uint64).max, size=n, dtype=np.uint64, endpoint=True)


def flip_bits(rng: np.random.Generator, codes: np.ndarray, max_bits: Sequence[int] | np.ndarray | int) -> np.ndarray:
    """Each code with exactly k distinct random bits flipped (k per code, <= max_bits)."""
    n = len(codes)
    ks = np.broadcast_to(np.asarray(max_bits), (n,))
    out = codes.copy()
    if n == 0:
        return out
    # a random permutation of the 64 bit positions per code; flip its first k
    perms = np.argsort(rng.random((n, 64)), axis=1)
    for t in range(int(ks.max(initial=0))):
        active = ks > t
        out[active] ^= np.left_shift(np.uint64(1), perms[active, t].astype(np.uint64))
    return out


def clustered_codes(rng: np.random.Generator, n: int, clusters: int, spread: int) -> np.ndarray:
    """`clusters` uniform centres; members are a centre with up to `spread` bits flipped
    (each of `spread` random positions flipped with probability 0.8): dense buckets."""
    centres = uniform_codes(rng, clusters)
    out = centres[rng.integers(0, clusters, size=n)]
    for _ in range(spread):
        positions = rng.integers(0, 64, size=n).astype(np.uint64)
        flip = rng.random(n) < 0.8
        out ^= np.where(flip, np.left_shift(np.uint64(1), positions), np.uint64(0))
    return out


@dataclass
class CorpusCode:
    relpath: str
    group: str
    sha256_hex: str
    code: int


def _hash_file(path: str) -> tuple[str, int] | None:
    from imgdedup.errors import InputError
    from imgdedup.fingerprint import ImageLimits, fingerprint

    try:
        fp = fingerprint(Path(path).read_bytes(), ImageLimits(200_000_000, 500_000_000))
    except (InputError, OSError):
        return None
    return fp.sha256_hex, fp.primary_code


def corpus_codes(corpus: Path, suffixes: tuple[str, ...]) -> tuple[list[CorpusCode], int]:
    """pHash every matching file under `corpus` (symlinks followed), in a process pool.
    Returns the codes and the number of files that could not be hashed."""
    from concurrent.futures import ProcessPoolExecutor

    paths = sorted(p for p in corpus.rglob("*") if p.suffix.lower() in suffixes and not any(
        part.startswith(".") for part in p.relative_to(corpus).parts))
    if not paths:
        return [], 0
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        hashed = list(pool.map(_hash_file, [str(p) for p in paths], chunksize=16))
    out = []
    for path, result in zip(paths, hashed):
        if result is not None:
            rel = path.relative_to(corpus)
            out.append(CorpusCode(str(rel), rel.parts[0] if len(rel.parts) > 1 else "", result[0], result[1]))
    return out, len(paths) - len(out)


def make_queries(
    rng: np.random.Generator, stored: np.ndarray, count: int, max_radius: int, near_fraction: float = 0.5
) -> tuple[np.ndarray, list[str]]:
    """Half 'near' queries (a stored code with 0..max_radius bits flipped: there is at
    least one true hit), half uniform random codes (mostly misses)."""
    near = round(count * near_fraction)
    picks = stored[rng.integers(0, len(stored), size=near)] if len(stored) else np.zeros(0, np.uint64)
    near_codes = flip_bits(rng, picks, rng.integers(0, max_radius + 1, size=near))
    random_codes = uniform_codes(rng, count - near)
    order = rng.permutation(count)
    kinds = np.array(["near"] * near + ["random"] * (count - near))[order]
    return np.concatenate([near_codes, random_codes])[order], kinds.tolist()


def build_dataset(
    kind: str, n: int, args: argparse.Namespace, corpus: list[CorpusCode] | None, max_radius: int
) -> Dataset | None:
    rng = np.random.default_rng([args.seed, n, len(kind)])
    synthetic = bulkload.synthetic_labels(args.seed)
    if kind == "uniform":
        codes = uniform_codes(rng, n)
        queries, kinds = make_queries(rng, codes, args.queries, max_radius)
        return Dataset(kind, codes, synthetic, queries, kinds, "uniform random 64-bit codes")
    if kind == "clustered":
        clusters = min(args.clusters, n)
        codes = clustered_codes(rng, n, clusters, args.cluster_bits)
        queries, kinds = make_queries(rng, codes, args.queries, max_radius)
        return Dataset(kind, codes, synthetic, queries, kinds,
                       f"{clusters} uniform centres, members within {args.cluster_bits} bits (~{n // clusters} per cluster)")
    if kind == "real":
        if not corpus:
            return None
        indexed = [c for c in corpus if c.group != "variants"][:n]
        held_out = [c for c in corpus if c.group == "variants"]
        real = np.array([c.code for c in indexed], dtype=np.uint64)
        filler = uniform_codes(rng, n - len(real))
        codes = np.concatenate([real, filler])
        r = len(real)

        def labels(start: int, stop: int) -> tuple[list[str], list[str]]:
            ids: list[str] = []
            shas: list[str] = []
            if start < r:
                for c in indexed[start : min(stop, r)]:
                    ids.append(f"corpus/{c.relpath}")
                    shas.append(c.sha256_hex)
            if stop > r:
                more_ids, more_shas = synthetic(max(start, r), stop)
                ids += more_ids
                shas += more_shas
            return ids, shas

        # queries: the held-out real variants (real near-duplicate queries), then real
        # codes with 0..r bits flipped, then uniform random codes
        variant_queries = np.array([c.code for c in held_out], dtype=np.uint64)[: args.queries // 4]
        rest = args.queries - len(variant_queries)
        near_count = rest // 2
        near = flip_bits(rng, real[rng.integers(0, r, size=near_count)], rng.integers(0, max_radius + 1, size=near_count))
        rnd = uniform_codes(rng, rest - near_count)
        queries = np.concatenate([variant_queries, near, rnd])
        kinds = ["real-variant"] * len(variant_queries) + ["near"] * near_count + ["random"] * len(rnd)
        order = rng.permutation(len(queries))
        note = (f"{r} real pHashes ({', '.join(sorted({c.group or '.' for c in indexed}))}) mixed into "
                f"{n - r} uniform random codes ({100 * r / n:.3g}% real); queries: {len(variant_queries)} "
                f"held-out real variants, {near_count} real codes with 0..{max_radius} bits flipped, "
                f"{len(rnd)} random")
        return Dataset(kind, codes, labels, queries[order], [kinds[i] for i in order], note, real_codes=r)
    raise ValueError(f"unknown distribution {kind!r}")


# --- baselines ----------------------------------------------------------------------------
def brute_force(codes: np.ndarray, query: int, radius: int) -> tuple[np.ndarray, np.ndarray]:
    distances = np.bitwise_count(codes ^ np.uint64(query))
    hits = np.nonzero(distances <= radius)[0]
    return hits, distances[hits]


def expected_result(ds: Dataset, hits: np.ndarray, distances: np.ndarray) -> list[tuple[str, int]]:
    return sorted(((ds.image_id(int(i)), int(d)) for i, d in zip(hits, distances)), key=lambda p: (p[1], p[0]))


def numpy_baseline(codes: np.ndarray, queries: np.ndarray, radius: int) -> tuple[list[float], list[np.ndarray]]:
    times: list[float] = []
    results: list[np.ndarray] = []
    for q in queries.tolist():
        started = time.perf_counter()
        hits, _ = brute_force(codes, q, radius)
        times.append(time.perf_counter() - started)
        results.append(hits)
    return times, results


def memory_mih_table(codes: np.ndarray, radius: int) -> tuple[MihTable, float]:
    """The embedded backend's table (`MihTable`, one label per code) loaded with the
    dataset and settled, m chosen for `radius`: (table, load seconds)."""
    started = time.perf_counter()
    table = MihTable(radius_hint=radius, queries_hint=1)
    for label, code in enumerate(codes.tolist()):
        table.add(label, (code,))
    table.settle()
    return table, time.perf_counter() - started


def memory_mih_baseline(table: MihTable, queries: np.ndarray, radius: int) -> tuple[list[float], list[np.ndarray]]:
    """One query at a time on the loaded table: (times, results)."""
    times: list[float] = []
    results: list[np.ndarray] = []
    for q in queries.tolist():
        started = time.perf_counter()
        found = table.near((q,), radius)
        times.append(time.perf_counter() - started)
        results.append(np.array(sorted(found), dtype=np.int64))
    return times, results


def faiss_index(codes: np.ndarray) -> Any:
    import faiss

    index = faiss.IndexBinaryFlat(64)
    index.add(np.ascontiguousarray(codes.astype("<u8")).view(np.uint8).reshape(-1, 8))
    return index


def faiss_baseline(index: Any, queries: np.ndarray, radius: int, threads: int) -> tuple[list[float], list[np.ndarray], float]:
    """Per-query range_search on `threads` OpenMP threads (1 by default: with 2 threads a
    single query spends most of its time synchronising them on a busy 2-core machine),
    then all queries in one batched call on every core: (times, results, batch q/s)."""
    import faiss

    times: list[float] = []
    results: list[np.ndarray] = []
    xq = np.ascontiguousarray(queries.astype("<u8")).view(np.uint8).reshape(-1, 8)
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    started = time.perf_counter()
    index.range_search(xq, radius + 1)
    batch_qps = len(xq) / (time.perf_counter() - started)
    faiss.omp_set_num_threads(threads)
    for i in range(len(xq)):
        started = time.perf_counter()
        lims, _distances, labels = index.range_search(xq[i : i + 1], radius + 1)  # faiss: strictly below
        times.append(time.perf_counter() - started)
        results.append(np.sort(labels[lims[0] : lims[1]]))
    return times, results, batch_qps


# --- Redis helpers -------------------------------------------------------------------------
class SlowlogProbe:
    """SLOWLOG of the query phase: threshold lowered via CONFIG SET, restored afterwards."""

    def __init__(self, client: Any, prefix: str, threshold_us: int) -> None:
        self.client = client
        self.prefix = prefix.encode()
        self.threshold_us = threshold_us
        self.old: str | None = None

    def __enter__(self) -> SlowlogProbe:
        self.old = self.client.config_get("slowlog-log-slower-than").get("slowlog-log-slower-than")
        self.client.config_set("slowlog-log-slower-than", self.threshold_us)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.old is not None:
            self.client.config_set("slowlog-log-slower-than", self.old)

    def reset(self) -> None:
        self.client.slowlog_reset()

    def read(self) -> dict[str, Any]:
        entries = self.client.slowlog_get(1024)
        ours = []
        others = 0
        for entry in entries:
            command = entry.get("command", b"")
            raw = command if isinstance(command, bytes) else str(command).encode()
            if self.prefix in raw:
                ours.append(entry)
            else:
                others += 1
        if not ours:
            return {"threshold_us": self.threshold_us, "entries": 0, "max_us": 0, "others_ignored": others}
        worst = max(ours, key=lambda e: e["duration"])
        name = worst.get("command", b"")
        name = (name.decode(errors="replace") if isinstance(name, bytes) else str(name)).split(" ")[0]
        return {"threshold_us": self.threshold_us, "entries": len(ours), "max_us": int(worst["duration"]),
                "max_command": name, "others_ignored": others}


def command_stats(client: Any) -> dict[str, tuple[int, float]]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): (int(v["calls"]), float(v["usec"])) for name, v in stats.items()}


def server_usec_per_call(before: dict[str, tuple[int, float]], after: dict[str, tuple[int, float]], cmd: str) -> float | None:
    b = before.get(cmd, (0, 0.0))
    a = after.get(cmd, (0, 0.0))
    calls = a[0] - b[0]
    return round((a[1] - b[1]) / calls, 1) if calls > 0 else None


def parser_name(client: Any) -> str:
    import redis.asyncio.connection as connection

    cls = client.connection_pool.connection_kwargs.get("parser_class", connection.DefaultParser)
    return "hiredis" if "Hiredis" in cls.__name__ else "python"


def force_parser(client: Any, which: str) -> None:
    """Choose redis-py's reply parser for connections not made yet (hiredis is used
    automatically when installed, as the service's `redis[hiredis]` dependency does)."""
    import redis.asyncio.connection as connection

    if which == "hiredis":
        client.connection_pool.connection_kwargs["parser_class"] = connection._AsyncHiredisParser
    elif which == "python":  # what redis-py uses without hiredis
        client.connection_pool.connection_kwargs["parser_class"] = connection._AsyncRESP3Parser


def hiredis_available() -> bool:
    from redis.utils import HIREDIS_AVAILABLE

    return bool(HIREDIS_AVAILABLE)


async def mget_by_parser(args: argparse.Namespace, keys: list[list[str]]) -> dict[str, Any]:
    """The same MGETs through redis-py's pure-Python reply parser and through hiredis."""
    from imgdedup.index.redis.client import redis_client

    out: dict[str, Any] = {}
    for which in ("python", "hiredis"):
        if which == "hiredis" and not hiredis_available():
            out[which] = "not installed"
            continue
        client = redis_client(Settings(redis_url=args.redis_url))
        force_parser(client, which)
        try:
            await client.mget(keys[0])
            times = []
            for k in keys:
                t0 = time.perf_counter()
                await client.mget(k)
                times.append(time.perf_counter() - t0)
            out[which] = latency_summary(times)
        finally:
            await client.aclose()
    return out


def wait_lazyfree(client: Any, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if int(client.info("memory").get("lazyfree_pending_objects", 0)) == 0:
            return
        time.sleep(0.2)


# --- one layout -----------------------------------------------------------------------------
@dataclass
class Bench:
    """What the measurement of each layout on one dataset shares."""

    ds: Dataset
    args: argparse.Namespace
    sync_client: Any
    prefix: str
    radii: list[int]
    #: radius -> the brute-force answer to each baseline query
    expected: dict[int, list[list[tuple[str, int]]]]
    slowlog: SlowlogProbe


def query_client(args: argparse.Namespace) -> Any:
    """The asyncio Redis client `query()` runs on, with the reply parser of --parser."""
    from imgdedup.index.redis.client import redis_client

    client = redis_client(Settings(redis_url=args.redis_url, max_in_flight=max(16, args.concurrency)))
    force_parser(client, args.parser)
    return client


def print_concurrency_and_slowlog(args: argparse.Namespace, concurrent: dict[str, Any], slowlog: dict[str, Any]) -> None:
    print(f"    concurrency {args.concurrency} at r={args.radius}: {concurrent['queries_per_s']:,.0f} queries/s, "
          f"{fmt_lat(concurrent['latency'])}", flush=True)
    print(f"    SLOWLOG (> {slowlog['threshold_us']} us) during the queries: {slowlog['entries']} of our commands, "
          f"longest {slowlog['max_us']} us {slowlog.get('max_command', '')}", flush=True)


async def measure_mih(bench: Bench, m: int) -> dict[str, Any]:
    """The bucket layout with `m` substrings: bulk load, memory, then query()."""
    from imgdedup.index.redis.index import RedisMihIndex

    ds, args, sync_client, prefix, slowlog = bench.ds, bench.args, bench.sync_client, bench.prefix, bench.slowlog
    n = len(ds.codes)
    namespace = f"{ds.name}-{n}-m{m}"
    out: dict[str, Any] = {"distribution": ds.name, "n": n, "m": m, "widths": list(substring_widths(m)),
                           "suggested_m": suggest_substrings(n)}
    print(f"\n  m={m} (substring widths {'/'.join(map(str, substring_widths(m)))}; "
          f"suggest_substrings({n}) = {suggest_substrings(n)})", flush=True)
    wait_lazyfree(sync_client)
    mem0 = redis_used_memory(sync_client)
    started = time.perf_counter()
    bulkload.write_meta(sync_client, prefix, namespace, m, n)
    stats = bulkload.load_buckets(sync_client, prefix, namespace, ds.codes, m)
    t_buckets = time.perf_counter() - started
    mem1 = redis_used_memory(sync_client)
    bulkload.load_state(sync_client, prefix, namespace, n, ds.labels)
    t_total = time.perf_counter() - started
    mem2 = redis_used_memory(sync_client)
    load = {"seconds": round(t_total, 2), "buckets_seconds": round(t_buckets, 2),
            "codes_per_s": round(n / t_total), "bucket_keys": stats.bucket_keys,
            "records_per_bucket_mean": round(n * m / max(1, stats.bucket_keys), 2),
            "records_per_bucket_max": stats.max_records}
    memory = {"buckets_bytes_per_code": round((mem1 - mem0) / n, 1),
              "total_bytes_per_code": round((mem2 - mem0) / n, 1),
              "state_bytes_per_code": round((mem2 - mem1) / n, 1),
              "bucket_payload_bytes_per_code": RECORD_DTYPE.itemsize * m,
              "total_mb": round((mem2 - mem0) / 2**20, 1)}
    if args.exact_keys or args.records:
        bulkload.load_exact(sync_client, prefix, namespace, ds.codes, ds.labels, records=args.records)
        mem3 = redis_used_memory(sync_client)
        memory["with_exact_keys_bytes_per_code" if not args.records else "with_exact_and_records_bytes_per_code"] = round(
            (mem3 - mem0) / n, 1)
    out["load"] = load
    out["memory"] = memory
    print(f"    load {t_total:6.1f} s ({n / t_total:,.0f} codes/s; buckets {t_buckets:.1f} s): {stats.bucket_keys:,} bucket keys, "
          f"{load['records_per_bucket_mean']} records/bucket mean, max {stats.max_records:,}", flush=True)
    print(f"    Redis memory: buckets {memory['buckets_bytes_per_code']} B/code (payload {RECORD_DTYPE.itemsize * m}), "
          f"+ state hash {memory['state_bytes_per_code']} B/code = {memory['total_bytes_per_code']} B/code "
          f"({memory['total_mb']} MB)", flush=True)

    client = query_client(args)
    out["redis_parser"] = parser_name(client)
    index = RedisMihIndex(client, prefix=prefix, substrings=m)
    try:
        assert await index.substrings(namespace, create=False) == m
        queries = ds.queries.tolist()
        # correctness first: query() == brute force on every baseline query, each radius
        out["verify"] = await verify_queries(index, namespace, bench)

        slowlog.reset()
        out["radii"] = {str(r): await measure_radius(index, client, namespace, bench, r, m) for r in bench.radii}
        out["concurrent"] = await measure_concurrent(index, namespace, queries, args.radius, args.concurrency)
        sub = queries[: args.breakdown_queries]
        parsers = await mget_by_parser(args, [index.keys.probe_keys(namespace, (q,), args.radius, m) for q in sub])
        out["mget_by_parser"] = parsers
        print(f"    MGET alone at r={args.radius} by reply parser: "
              + ", ".join(f"{k} {fmt_lat(v) if isinstance(v, dict) else v}" for k, v in parsers.items()), flush=True)
        out["slowlog"] = slowlog.read()
        print_concurrency_and_slowlog(args, out["concurrent"], out["slowlog"])
    finally:
        await client.aclose()
        started = time.perf_counter()
        bulkload.delete_buckets(sync_client, prefix, namespace, stats)
        await delete_prefix(args.redis_url, f"{prefix}:{{{namespace}}}")
        out["free_seconds"] = round(time.perf_counter() - started, 2)
    return out


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def table_bytes(table: MihTable) -> int:
    """Bytes held by a MihTable's arrays (allocated capacity, not only the used part)."""
    names = ("codes", "labels", "alive", "_span_start", "_span_count", "_entries", "_entry_codes", "_offsets", "_keys")
    return sum(getattr(table, name).nbytes for name in names if hasattr(table, name))


async def measure_mirror(bench: Bench) -> dict[str, Any]:
    """The mirror layout: Redis log + state, a cold replica's table load, then query()."""
    from imgdedup.index.redis.index import RedisMihIndex

    ds, args, sync_client, prefix, slowlog = bench.ds, bench.args, bench.sync_client, bench.prefix, bench.slowlog
    n = len(ds.codes)
    namespace = f"{ds.name}-{n}-mirror"
    out: dict[str, Any] = {"distribution": ds.name, "n": n, "layout": "mirror"}
    print("\n  mirror layout (IMGDEDUP_REDIS_MIRROR=true): Redis log + state; each replica an in-process MihTable",
          flush=True)
    wait_lazyfree(sync_client)
    mem0 = redis_used_memory(sync_client)
    started = time.perf_counter()
    bulkload.write_meta(sync_client, prefix, namespace, 4, n, log=True)
    bulkload.load_log(sync_client, prefix, namespace, ds.codes)
    t_log = time.perf_counter() - started
    mem1 = redis_used_memory(sync_client)
    bulkload.load_state(sync_client, prefix, namespace, n, ds.labels)
    t_redis = time.perf_counter() - started
    mem2 = redis_used_memory(sync_client)
    client = query_client(args)
    out["redis_parser"] = parser_name(client)
    index = RedisMihIndex(client, prefix=prefix, substrings=4, mirror=True)
    try:
        await index.substrings(namespace, create=False)
        rss0 = rss_bytes()
        t0 = time.perf_counter()
        await index.mirror.sync(namespace)  # what a cold replica's first request does
        t_cold = time.perf_counter() - t0
        state = index.mirror.state(namespace)
        table = state.table
        out["load"] = {"redis_log_seconds": round(t_log, 2), "redis_seconds": round(t_redis, 2),
                       "mirror_cold_seconds": round(t_cold, 2), "mirror_codes_per_s": round(n / t_cold),
                       "round_trips": index.mirror.round_trips, "table_m": table.substrings}
        out["memory"] = {"log_bytes_per_code": round((mem1 - mem0) / n, 1),
                         "state_bytes_per_code": round((mem2 - mem1) / n, 1),
                         "total_bytes_per_code": round((mem2 - mem0) / n, 1),
                         "total_mb": round((mem2 - mem0) / 2**20, 1),
                         "replica_table_bytes_per_code": round(table_bytes(table) / n, 1),
                         "replica_rss_delta_bytes_per_code": round((rss_bytes() - rss0) / n, 1)}
        mem = out["memory"]
        print(f"    load: Redis log {t_log:.1f} s (+ state: {t_redis:.1f} s); cold replica reads the log into its table in "
              f"{t_cold:.1f} s ({n / t_cold:,.0f} codes/s, {index.mirror.round_trips} round trips, table m={table.substrings})",
              flush=True)
        print(f"    Redis memory: log {mem['log_bytes_per_code']} B/code + state hash {mem['state_bytes_per_code']} B/code "
              f"= {mem['total_bytes_per_code']} B/code ({mem['total_mb']} MB); replica table {mem['replica_table_bytes_per_code']}"
              f" B/code (RSS +{mem['replica_rss_delta_bytes_per_code']} B/code)", flush=True)

        queries = ds.queries.tolist()
        # correctness first: query() == brute force on every baseline query, each radius
        out["verify"] = await verify_queries(index, namespace, bench)

        slowlog.reset()
        out["radii"] = {str(r): await measure_mirror_radius(index, namespace, bench, r) for r in bench.radii}
        out["with_writes"] = await measure_mirror_with_writes(index, namespace, bench)
        out["concurrent"] = await measure_concurrent(index, namespace, queries, args.radius, args.concurrency)
        out["slowlog"] = slowlog.read()
        print_concurrency_and_slowlog(args, out["concurrent"], out["slowlog"])
    finally:
        await index.close()
        del index
        started = time.perf_counter()
        await delete_prefix(args.redis_url, f"{prefix}:{{{namespace}}}")
        out["free_seconds"] = round(time.perf_counter() - started, 2)
    return out


class Laps:
    """Times the steps of a repeated operation: `start()`, then `lap(step)` after each
    step; `times[step]` holds one duration per repetition."""

    def __init__(self, *steps: str) -> None:
        self.times: dict[str, list[float]] = {step: [] for step in steps}
        self._last = 0.0

    def start(self) -> None:
        self._last = time.perf_counter()

    def lap(self, step: str) -> None:
        now = time.perf_counter()
        self.times[step].append(now - self._last)
        self._last = now


async def time_queries(index: Any, namespace: str, queries: list[int], r: int) -> tuple[list[float], list[int], float]:
    """The real query() of every query, one at a time: (latencies, hits, wall seconds)."""
    times = []
    hits = []
    started = time.perf_counter()
    for q in queries:
        t0 = time.perf_counter()
        result = await index.query(namespace, q, radius=r)
        times.append(time.perf_counter() - t0)
        hits.append(len(result))
    return times, hits, time.perf_counter() - started


async def measure_mirror_radius(index: Any, namespace: str, bench: Bench, r: int) -> dict[str, Any]:
    """query() at radius `r` on the mirror layout, then its steps one by one on a subset."""
    queries = bench.ds.queries.tolist()
    times, hits, wall = await time_queries(index, namespace, queries, r)
    laps = Laps("catch_up", "local_table", "states_hmget")
    found: list[int] = []
    before = command_stats(bench.sync_client)
    for q in queries[: bench.args.breakdown_queries]:
        laps.start()
        await index.mirror.sync(namespace)
        laps.lap("catch_up")
        near = index.mirror.near(namespace, (q,), r)
        laps.lap("local_table")
        await index._states(namespace, list(near))
        laps.lap("states_hmget")
        found.append(len(near))
    after = command_stats(bench.sync_client)
    lat = latency_summary(times)
    b: dict[str, Any] = {
        "queries": len(found),
        "catch_up": latency_summary(laps.times["catch_up"]),
        "xrange_server_us": server_usec_per_call(before, after, "xrange"),
        "local_table": latency_summary(laps.times["local_table"]),
        "states_hmget": latency_summary(laps.times["states_hmget"]),
        "candidates_mean": round(float(np.mean(found)), 2),
    }
    out = {
        "query": lat,
        "queries_per_s": round(len(queries) / wall, 1),
        "hits_mean": round(float(np.mean(hits)), 2),
        "breakdown": b,
    }
    print(f"    r={r:>2}: query() {fmt_lat(lat)}  {out['queries_per_s']:8.1f} q/s  hits {out['hits_mean']:.1f}", flush=True)
    print(f"           catch-up {b['catch_up']['p50_ms']:.3f} ms (XRANGE server {b['xrange_server_us']} us) + local table "
          f"{b['local_table']['p50_ms']:.3f} ms (p99 {b['local_table']['p99_ms']:.3f}) + HMGET "
          f"{b['states_hmget']['p50_ms']:.3f} ms (p50s)", flush=True)
    return out


async def measure_mirror_with_writes(index: Any, namespace: str, bench: Bench) -> dict[str, Any]:
    """query() with one new registration appended to the log before each: the catch-up
    then fetches and applies one entry (another replica registered meanwhile)."""
    args = bench.args
    queries = bench.ds.queries.tolist()
    rng = np.random.default_rng(args.seed + 1)
    new = uniform_codes(rng, len(queries))
    n = len(bench.ds.codes)
    times = []
    for i, q in enumerate(queries):
        bulkload.load_log(bench.sync_client, bench.prefix, namespace, new[i : i + 1], first_seq=n + 1 + i)
        t0 = time.perf_counter()
        await index.query(namespace, q, radius=args.radius)
        times.append(time.perf_counter() - t0)
    lat = latency_summary(times)
    print(f"    r={args.radius:>2}, one new log entry before each query: query() {fmt_lat(lat)}", flush=True)
    return {"radius": args.radius, "query": lat, "entries_appended": len(queries)}


async def verify_queries(index: Any, namespace: str, bench: Bench) -> dict[str, int]:
    """query() against the brute force on every baseline query at each radius, then
    lookup() checks; prints and returns the counts (either layout)."""
    mismatches = checked = 0
    queries = bench.ds.queries.tolist()
    for r in bench.radii:
        for q, want in zip(queries, bench.expected[r]):
            got = await index.query(namespace, q, radius=r)
            checked += 1
            if got != want:
                mismatches += 1
                if mismatches <= 3:
                    print(f"    MISMATCH r={r} q={q:016x}: got {got[:5]}... ({len(got)}) want {want[:5]}... ({len(want)})")
    lookups_ok, lookups = await check_lookups(index, namespace, bench.ds, max(bench.radii), bench.args.lookup_checks)
    print(f"    verified: {checked} query() results vs numpy brute force, {mismatches} mismatches; "
          f"{lookups} lookup() checks, {lookups - lookups_ok} mismatches", flush=True)
    return {"queries_checked": checked, "mismatches": mismatches,
            "lookups_checked": lookups, "lookup_mismatches": lookups - lookups_ok}


async def check_lookups(index: Any, namespace: str, ds: Dataset, radius: int, count: int) -> tuple[int, int]:
    """lookup() of stored images: the image itself (exact, distance 0) and every stored
    code within `radius`, as a brute-force scan finds them."""
    rng = np.random.default_rng(len(ds.codes))
    picks = rng.integers(0, len(ds.codes), size=count).tolist()
    if ds.real_codes:
        picks[: count // 2] = rng.integers(0, ds.real_codes, size=count // 2).tolist()
    ok = 0
    for i in picks:
        sha = ds.sha(i)
        code = int(ds.codes[i])
        fp = Fingerprint(sha256=bytes.fromhex(sha), codes=(code,), width=1, height=1, format="JPEG", size_bytes=1)
        lookup = await index.lookup(namespace, fp, radius=radius)
        got = sorted((c.image_id, c.distance) for c in lookup.candidates)
        hits, distances = brute_force(ds.codes, code, radius)
        # a stored image with the same bytes is an exact match at distance 0
        want = sorted(
            (ds.image_id(int(h)), 0 if ds.sha(int(h)) == sha else int(d)) for h, d in zip(hits.tolist(), distances.tolist())
        )
        self_exact = any(c.image_id == ds.image_id(i) and c.match.value == "exact" for c in lookup.candidates)
        ok += int(got == want and self_exact)
    return ok, len(picks)


async def measure_radius(index: Any, client: Any, namespace: str, bench: Bench, r: int, m: int) -> dict[str, Any]:
    """query() at radius `r` on the bucket layout, then its steps one by one (as _near +
    _states do) on a subset."""
    ds = bench.ds
    queries = ds.queries.tolist()
    times, hits, wall = await time_queries(index, namespace, queries, r)
    sub = queries[: bench.args.breakdown_queries]
    laps = Laps("probe_keys", "mget", "verify_numpy", "states_hmget")
    records: list[int] = []
    nbytes: list[int] = []
    nkeys: list[int] = []
    nonempty: list[int] = []
    before = command_stats(bench.sync_client)
    for q in sub:
        laps.start()
        keys = index.keys.probe_keys(namespace, (q,), r, m)
        laps.lap("probe_keys")
        values = await client.mget(keys)
        laps.lap("mget")
        present = [b for b in values if b]
        blob = b"".join(present)
        near = nearest_per_seq(unpack_records(blob), (q,), r) if present else {}
        laps.lap("verify_numpy")
        await index._states(namespace, list(near))
        laps.lap("states_hmget")
        records.append(len(blob) // RECORD_DTYPE.itemsize)
        nbytes.append(len(blob))
        nkeys.append(len(keys))
        nonempty.append(len(present))
    after = command_stats(bench.sync_client)
    lat = latency_summary(times)
    kinds = np.array(ds.query_kinds)
    hits_arr = np.array(hits)
    b: dict[str, Any] = {
        "queries": len(sub),
        "probe_keys": latency_summary(laps.times["probe_keys"]),
        "mget": latency_summary(laps.times["mget"]),
        "mget_server_us": server_usec_per_call(before, after, "mget"),
        "verify_numpy": latency_summary(laps.times["verify_numpy"]),
        "states_hmget": latency_summary(laps.times["states_hmget"]),
        "hmget_server_us": server_usec_per_call(before, after, "hmget"),
        "keys_per_query": round(float(np.mean(nkeys)), 1),
        "nonempty_buckets_mean": round(float(np.mean(nonempty)), 1),
        "records_read_mean": round(float(np.mean(records)), 1),
        "records_read_p99": round(pct(records, 99), 1),
        "bytes_read_mean": round(float(np.mean(nbytes))),
    }
    out = {
        "probes": probe_count(r, m),
        "service_allows": probe_count(r, m) <= MAX_PROBES,
        "query": lat,
        "queries_per_s": round(len(queries) / wall, 1),
        "hits_mean": round(float(hits_arr.mean()), 2),
        "hits_mean_by_kind": {k: round(float(hits_arr[kinds == k].mean()), 2) for k in sorted(set(ds.query_kinds))},
        "breakdown": b,
    }
    print(f"    r={r:>2} ({out['probes']:>5} probes{'' if out['service_allows'] else ', over the service limit'}): "
          f"query() {fmt_lat(lat)}  {out['queries_per_s']:8.1f} q/s  hits {out['hits_mean']:.1f}  "
          f"read {b['records_read_mean']:,.0f} records ({b['bytes_read_mean'] / 1024:,.0f} KB)", flush=True)
    print(f"           keys {b['probe_keys']['p50_ms']:.3f} ms + MGET {b['mget']['p50_ms']:.3f} ms "
          f"(server {b['mget_server_us']} us) + verify {b['verify_numpy']['p50_ms']:.3f} ms + HMGET "
          f"{b['states_hmget']['p50_ms']:.3f} ms (p50s)", flush=True)
    return out


async def measure_concurrent(index: Any, namespace: str, queries: list[int], r: int, workers: int) -> dict[str, Any]:
    times: list[float] = []
    position = 0

    async def worker() -> None:
        nonlocal position
        while position < len(queries):
            q = queries[position]
            position += 1
            t0 = time.perf_counter()
            await index.query(namespace, q, radius=r)
            times.append(time.perf_counter() - t0)

    wall = await run_clients(worker, workers)
    return {"clients": workers, "radius": r, "queries_per_s": round(len(times) / wall, 1), "latency": latency_summary(times)}


# --- driver -------------------------------------------------------------------------------
async def bench_dataset(
    ds: Dataset, args: argparse.Namespace, sync_client: Any, prefix: str, radii: list[int], slowlog: SlowlogProbe
) -> dict[str, Any]:
    n = len(ds.codes)
    print(f"\n== {ds.name}, N = {n:,}: {ds.note}", flush=True)
    base_q = ds.queries[: args.baseline_queries]
    baselines: dict[str, Any] = {}
    expected: dict[int, list[list[tuple[str, int]]]] = {}
    t0 = time.perf_counter()
    findex = faiss_index(ds.codes)
    faiss_build = time.perf_counter() - t0
    table, mem_load = memory_mih_table(ds.codes, args.radius)
    for r in radii:
        np_times, np_hits = numpy_baseline(ds.codes, base_q, r)
        fa_times, fa_hits, fa_batch = faiss_baseline(findex, base_q, r, args.faiss_threads)
        agree = sum(int(np.array_equal(a, b)) for a, b in zip(np_hits, fa_hits))
        mem_times, mem_hits = memory_mih_baseline(table, base_q, r)
        mem_m = table.substrings
        mem_agree = sum(int(np.array_equal(a, b)) for a, b in zip(np_hits, mem_hits))
        if mem_agree != len(base_q):
            raise SystemExit(f"in-process MihTable disagrees with the numpy scan on {len(base_q) - mem_agree} queries")
        expected[r] = []
        for q, hits in zip(base_q.tolist(), np_hits):
            distances = np.bitwise_count(ds.codes[hits] ^ np.uint64(q))
            expected[r].append(expected_result(ds, hits, distances))
        baselines[str(r)] = {
            "queries": len(base_q),
            "numpy_scan": latency_summary(np_times),
            "numpy_queries_per_s": round(len(np_times) / sum(np_times), 1),
            "faiss_flat": latency_summary(fa_times),
            "faiss_queries_per_s": round(len(fa_times) / sum(fa_times), 1),
            "faiss_batch_queries_per_s": round(fa_batch, 1),
            "faiss_agrees_with_numpy": agree,
            "memory_mih": latency_summary(mem_times),
            "memory_mih_m": mem_m,
            "memory_mih_load_seconds": round(mem_load, 1),
            "hits_mean": round(float(np.mean([len(h) for h in np_hits])), 2),
        }
        print(f"  baselines r={r:>2}: numpy scan {fmt_lat(baselines[str(r)]['numpy_scan'])}   "
              f"faiss IndexBinaryFlat {fmt_lat(baselines[str(r)]['faiss_flat'])}   "
              f"(faiss = numpy on {agree}/{len(base_q)}; faiss batched on all cores {fa_batch:,.0f} q/s)\n"
              f"                 in-process MihTable (embedded backend, m={mem_m}, = numpy on all) "
              f"{fmt_lat(baselines[str(r)]['memory_mih'])}", flush=True)
    del findex, table
    threads = args.faiss_threads
    result: dict[str, Any] = {"distribution": ds.name, "n": n, "note": ds.note, "real_codes": ds.real_codes,
                              "faiss_build_seconds": round(faiss_build, 2), "faiss_threads": threads,
                              "baselines": baselines, "mih": []}
    bench = Bench(ds, args, sync_client, prefix, radii, expected, slowlog)
    layouts = {x.strip() for x in args.layouts.split(",")}
    if "buckets" in layouts:
        for m in substring_choices(args.substrings, n):
            result["mih"].append(await measure_mih(bench, m))
    if "mirror" in layouts:
        result["mirror"] = await measure_mirror(bench)
    return result


def substring_choices(spec: str, n: int) -> list[int]:
    if spec == "auto":
        return sorted({suggest_substrings(n), Settings().mih_substrings})
    return parse_int_list(spec)


def mirror_table(results: list[dict[str, Any]], radius: int) -> None:
    rows = [res for res in results if "mirror" in res and str(radius) in res["mirror"].get("radii", {})]
    if not rows:
        return
    print(f"\nmirror layout at r = {radius} (ms; query() = catch-up round trip + local MihTable + state HMGET, sequential)")
    print(f"  {'distribution':<10} {'N':>11} {'p50':>6} {'p99':>6} {'catch-up':>8} {'local p50/p99':>14} "
          f"{'+1 write p50/p99':>16} {'q/s x8':>7} {'faiss p50':>9} {'vs faiss':>8} {'log B/code':>10} "
          f"{'+state':>7} {'replica B/code':>14} {'Redis load s':>12} {'cold load s':>11} {'slowest cmd us':>14}")
    for res in rows:
        mir = res["mirror"]
        rr = mir["radii"][str(radius)]
        b = rr["breakdown"]
        faiss = res["baselines"].get(str(radius), {}).get("faiss_flat", {}).get("p50_ms", float("nan"))
        ww = mir["with_writes"]["query"]
        print(f"  {res['distribution']:<10} {res['n']:>11,} {rr['query']['p50_ms']:>6.3f} {rr['query']['p99_ms']:>6.3f} "
              f"{b['catch_up']['p50_ms']:>8.3f} {b['local_table']['p50_ms']:>6.3f} / {b['local_table']['p99_ms']:>5.3f} "
              f"{ww['p50_ms']:>7.3f} / {ww['p99_ms']:>6.3f} {mir['concurrent']['queries_per_s']:>7.0f} {faiss:>9.2f} "
              f"{faiss / rr['query']['p50_ms']:>7.1f}x {mir['memory']['log_bytes_per_code']:>10.1f} "
              f"{mir['memory']['total_bytes_per_code']:>7.1f} {mir['memory']['replica_table_bytes_per_code']:>14.1f} "
              f"{mir['load']['redis_seconds']:>12.1f} {mir['load']['mirror_cold_seconds']:>11.1f} {mir['slowlog']['max_us']:>14}")


def radius_table(results: list[dict[str, Any]]) -> None:
    if not any(res["mih"] for res in results):
        return
    print("\nquery() p50 ms by radius (sequential; in brackets: faiss IndexBinaryFlat p50 on the same queries)")
    radii = sorted({int(r) for res in results for mih in res["mih"] for r in mih["radii"]})
    print(f"  {'distribution':<10} {'N':>11} {'m':>2} " + " ".join(f"{'r=' + str(r):>16}" for r in radii))
    for res in results:
        for mih in res["mih"]:
            cells = []
            for r in radii:
                rr = mih["radii"].get(str(r))
                base = res["baselines"].get(str(r), {}).get("faiss_flat", {})
                cells.append(f"{rr['query']['p50_ms']:>7.2f} ({base.get('p50_ms', float('nan')):>6.2f})" if rr else f"{'':>16}")
            print(f"  {res['distribution']:<10} {res['n']:>11,} {mih['m']:>2} " + " ".join(f"{c:>16}" for c in cells))


def summary_table(results: list[dict[str, Any]], radius: int) -> None:
    if not any(res["mih"] for res in results):
        return
    print(f"\nsummary at r = {radius} (p50 / p99 ms; MIH = RedisMihIndex.query(), sequential)")
    print(f"  {'distribution':<10} {'N':>11} {'m':>2} {'probes':>6} {'MIH p50':>8} {'MIH p99':>8} {'MGET p50':>8} "
          f"{'q/s x8':>8} {'B/code':>7} {'load s':>7} {'faiss p50':>9} {'numpy p50':>9} {'in-proc MIH p50/p99':>20}")
    for res in results:
        base = res["baselines"].get(str(radius), {})
        for mih in res["mih"]:
            rr = mih["radii"].get(str(radius))
            if rr is None:
                continue
            print(f"  {res['distribution']:<10} {res['n']:>11,} {mih['m']:>2} {rr['probes']:>6} "
                  f"{rr['query']['p50_ms']:>8.2f} {rr['query']['p99_ms']:>8.2f} {rr['breakdown']['mget']['p50_ms']:>8.2f} "
                  f"{mih['concurrent']['queries_per_s']:>8.0f} {mih['memory']['total_bytes_per_code']:>7.0f} "
                  f"{mih['load']['seconds']:>7.1f} {base.get('faiss_flat', {}).get('p50_ms', float('nan')):>9.2f} "
                  f"{base.get('numpy_scan', {}).get('p50_ms', float('nan')):>9.2f} "
                  f"{base.get('memory_mih', {}).get('p50_ms', float('nan')):>9.3f} / "
                  f"{base.get('memory_mih', {}).get('p99_ms', float('nan')):>7.3f}")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import redis

    sizes = parse_int_list(args.sizes)
    radii = sorted(set(parse_int_list(args.radii)) | {args.radius})
    distributions = [d.strip() for d in args.distributions.split(",") if d.strip()]
    prefix = bench_prefix("index")
    print(f"index benchmark: Redis MIH ({args.redis_url}, prefix {prefix}; layouts {args.layouts}) vs faiss "
          "IndexBinaryFlat and numpy scan; "
          f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, hash {HASH_ALGORITHM}")
    print(f"redis-py reply parser for query(): {args.parser} (hiredis installed: {hiredis_available()})")
    print(f"sizes {sizes}, radii {radii} (main {args.radius}), substrings {args.substrings}, {args.queries} queries "
          f"per point, baselines and correctness on {args.baseline_queries}")
    corpus: list[CorpusCode] | None = None
    corpus_info: dict[str, Any] = {}
    if "real" in distributions:
        if args.corpus and args.corpus.is_dir():
            t0 = time.perf_counter()
            suffixes = tuple(f".{s.strip().lstrip('.').lower()}" for s in args.corpus_formats.split(","))
            corpus, failed = corpus_codes(args.corpus, suffixes)
            groups: dict[str, int] = {}
            for c in corpus:
                groups[c.group] = groups.get(c.group, 0) + 1
            distinct = len({c.code for c in corpus})
            corpus_info = {"dir": str(args.corpus), "formats": list(suffixes), "hashed": len(corpus), "failed": failed,
                           "distinct_codes": distinct, "by_folder": groups, "seconds": round(time.perf_counter() - t0, 1)}
            print(f"corpus {args.corpus}: {len(corpus)} files hashed ({failed} failed), {distinct} distinct codes, {groups}")
        else:
            corpus_info = {"skipped": f"no corpus folder ({args.corpus})"}
            print(f"real codes: skipped, no corpus folder ({args.corpus})")
    sync_client = redis.Redis.from_url(args.redis_url)
    redis_version = sync_client.info("server")["redis_version"]
    results: list[dict[str, Any]] = []
    try:
        with SlowlogProbe(sync_client, prefix, args.slowlog_us) as slowlog:
            for n in sizes:
                for kind in distributions:
                    ds = build_dataset(kind, n, args, corpus, max(radii))
                    if ds is None:
                        continue
                    results.append(await bench_dataset(ds, args, sync_client, prefix, radii, slowlog))
                    del ds
    finally:
        leftover = await delete_prefix(args.redis_url, prefix)
        sync_client.close()
        print(f"\ncleaned up: prefix {prefix} swept ({leftover} leftover keys unlinked)")
    summary_table(results, args.radius)
    mirror_table(results, args.radius)
    radius_table(results)
    return {"bench": "index", "suggested_m": {str(n): suggest_substrings(n) for n in sizes}, "redis_version": redis_version, "cores": os.cpu_count(), "hash_algorithm": HASH_ALGORITHM,
            "config": {"sizes": sizes, "radii": radii, "radius": args.radius, "substrings": args.substrings,
                       "queries": args.queries, "baseline_queries": args.baseline_queries, "layouts": args.layouts,
                       "concurrency": args.concurrency, "clusters": args.clusters, "cluster_bits": args.cluster_bits,
                       "max_probes_service": MAX_PROBES},
            "corpus": corpus_info, "results": results}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default="1000000,10000000", help="codes per index, comma-separated")
    parser.add_argument("--radius", type=int, default=DEFAULT_REVIEW_RADIUS,
                        help="main radius (concurrency run, summary); default: the service's review radius")
    parser.add_argument("--radii", default="4,8,10,12", help="radius sweep (sequential latency, baselines)")
    parser.add_argument("--layouts", default="buckets,mirror",
                        help="Redis layouts to measure: buckets (one MGET of the probed buckets), mirror (log + in-process table)")
    parser.add_argument("--substrings", default="auto",
                        help="substring counts m to load, e.g. 3,4,5; auto = suggest_substrings(N) and the service default")
    parser.add_argument("--distributions", default="uniform,clustered,real", help="uniform, clustered, real")
    parser.add_argument("--corpus", type=Path, default=Path("/work/corpus"),
                        help="folder of real images for the 'real' distribution (../shared/bench/build-corpus)")
    parser.add_argument("--corpus-formats", default="jpg,jpeg", help="file suffixes hashed from --corpus")
    parser.add_argument("--clusters", type=int, default=1000, help="cluster centres of the clustered distribution")
    parser.add_argument("--cluster-bits", type=int, default=4, help="members are within this many bits of their centre")
    parser.add_argument("--queries", type=int, default=1000, help="queries per (N, m, radius)")
    parser.add_argument("--baseline-queries", type=int, default=200,
                        help="queries timed on faiss/numpy and checked against query() (first of --queries)")
    parser.add_argument("--breakdown-queries", type=int, default=300, help="queries of the step-by-step breakdown")
    parser.add_argument("--lookup-checks", type=int, default=20, help="lookup() of stored images checked per load")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent query() clients (one process)")
    parser.add_argument("--faiss-threads", type=int, default=1, help="OpenMP threads of the per-query faiss timing")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument("--slowlog-us", type=int, default=1000, help="slowlog-log-slower-than during the run")
    parser.add_argument("--exact-keys", action="store_true", help="also write sha:<hex> keys (exact tier) and measure them")
    parser.add_argument("--records", action="store_true", help="also write rec:<id> ImageRecord JSON (implies --exact-keys)")
    parser.add_argument("--parser", choices=("default", "python", "hiredis"), default="default",
                        help="redis-py reply parser for query(): default = hiredis if installed, else pure Python")
    parser.add_argument("--seed", type=int, default=42)


def main(args: argparse.Namespace) -> int:
    if args.baseline_queries > args.queries:
        args.baseline_queries = args.queries
    line = asyncio.run(run(args))
    print_json_line(line)
    bad = sum(m["verify"]["mismatches"] + m["verify"]["lookup_mismatches"]
              for r in line["results"] for m in [*r["mih"], *([r["mirror"]] if "mirror" in r else [])])
    if bad:
        print(f"imgdedup bench index: {bad} results differ from the brute-force scan", file=sys.stderr)
        return 1
    return 0
