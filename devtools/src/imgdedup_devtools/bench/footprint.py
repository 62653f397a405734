"""`imgdedup bench footprint`: Redis memory per kept image and per duplicate, all-in.

Fingerprints are realistic: `--templates` corpus images are hashed at the default
settings (whole-image codes, crop windows, verification thumbnails); kept image i takes
template i mod T with every code XORed with a per-image random mask of `--mask-bits`
bits (so each image's codes keep a real image's structure but differ from the others')
and the template's thumbnails. N kept images are bulk-loaded in the exact layout
`RedisMihIndex` writes (bucket layout, the service's default):

- buckets: 12-byte records APPENDed in `--rounds` rounds, so strings carry the growth
  slack APPEND leaves, as registrations one at a time do;
- the state hash entry, the exact-tier key and the record of each kept image;
- then D duplicates: their records and their entries in the kept image's duplicates set.

`used_memory` (INFO) is read after each part. Then `--registrations` real
`RedisMihIndex.register()` calls (new images and near copies of loaded ones, the
default policy) run against the loaded namespace with SLOWLOG capturing every command
over 1 ms; the slowest command and the per-command server time (INFO commandstats) are
printed.

`--format json` stores records and states as earlier versions did (JSON with base64
thumbnails, text state), for a baseline. Use a Redis of your own (`--redis-url`): the
namespace is deleted at the end, but millions of keys are written.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import redis
import redis.asyncio as aioredis

from imgdedup.config import Settings
from imgdedup.decisions.rules import MatchKind, Verdict, decide
from imgdedup.fingerprint import Fingerprint, fingerprint
from imgdedup.index.mih import RECORD_DTYPE
from imgdedup.index.redis.encoding import encode_record, kept_state
from imgdedup.index.redis.index import RedisMihIndex
from imgdedup.index.redis.keys import KeySpace
from imgdedup.records import ImageRecord
from imgdedup_devtools.bench import bulkload
from imgdedup_devtools.bench.common import bench_prefix, latency_summary, print_json_line, redis_used_memory

NS = "footprint"


def _templates(corpus: Path, count: int, seed: int) -> list[Fingerprint]:
    limits = Settings().image_limits
    files = sorted(p for d in ("photos", "objects", "variants") if (corpus / d).is_dir() for p in (corpus / d).iterdir())
    random.Random(seed).shuffle(files)
    out: list[Fingerprint] = []
    for path in files:
        if len(out) >= count:
            break
        try:
            fp = fingerprint(path.read_bytes(), limits)
        except Exception:
            continue
        if fp.codes:
            out.append(fp)
    if not out:
        raise SystemExit(f"no hashable images under {corpus}")
    return out


def _masks(rng: np.random.Generator, n: int, bits: int) -> np.ndarray:
    masks = np.zeros(n, dtype=np.uint64)
    for _ in range(bits):
        masks |= np.uint64(1) << rng.integers(0, 64, n, dtype=np.uint64)
    return masks


class Images:
    """Kept image i: template i mod T, codes XOR mask[i]; ids `k<i>`, SHA-256 synthetic."""

    def __init__(self, templates: list[Fingerprint], n: int, mask_bits: int, seed: int) -> None:
        self.templates = templates
        self.n = n
        self.masks = _masks(np.random.default_rng(seed), n, mask_bits)
        self.shas = bulkload.synthetic_labels(seed)

    def template(self, i: int) -> Fingerprint:
        return self.templates[i % len(self.templates)]

    def codes(self, i: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        fp, mask = self.template(i), int(self.masks[i])
        return tuple(c ^ mask for c in fp.codes), tuple(c ^ mask for c in fp.window_codes)


def _load_buckets(client: redis.Redis, keys: KeySpace, images: Images, m: int, rounds: int) -> int:
    per_image = [len(images.template(i).codes) + len(images.template(i).window_codes) for i in range(len(images.templates))]
    counts = np.array([per_image[i % len(per_image)] for i in range(images.n)], dtype=np.int64)
    codes = np.empty(int(counts.sum()), dtype=np.uint64)
    pos = 0
    for i in range(images.n):
        whole, windows = images.codes(i)
        both = whole + windows
        codes[pos : pos + len(both)] = both
        pos += len(both)
    records = np.empty(len(codes), dtype=RECORD_DTYPE)
    records["code"] = codes
    records["seq"] = np.repeat(np.arange(1, images.n + 1, dtype=np.uint32), counts)
    base = keys.namespace(NS) + ":"
    edges = np.linspace(0, len(codes), rounds + 1).astype(np.int64)
    for j, values in enumerate(bulkload.substring_arrays(codes, m)):
        for r in range(rounds):
            lo, hi = int(edges[r]), int(edges[r + 1])
            part_values = values[lo:hi]
            order = np.argsort(part_values, kind="stable")
            blob = memoryview(records[lo:hi][order].tobytes())
            uniq, starts = np.unique(part_values[order], return_index=True)
            ends = np.append(starts[1:], hi - lo)
            pipe = client.pipeline(transaction=False)
            for k, (value, start, end) in enumerate(zip(uniq.tolist(), starts.tolist(), ends.tolist())):
                pipe.append(f"{base}b{j}:{value:x}", blob[start * 12 : end * 12])
                if k % 5000 == 4999:
                    pipe.execute()
            pipe.execute()
    return len(codes)


def _kept_record(images: Images, i: int, sha: str, now: float) -> ImageRecord:
    fp = images.template(i)
    whole, windows = images.codes(i)
    return ImageRecord(
        namespace=NS, image_id=f"k{i + 1}", verdict=Verdict.ACCEPTED, duplicate_of=None, distance=None, match=None,
        sha256=sha, codes=whole, seq=i + 1, created_at=now, width=fp.width, height=fp.height, format=fp.format,
        size_bytes=fp.size_bytes, event_id=f"evt-{i + 1:012d}", window_codes=windows, thumbnail=fp.thumbnail,
    )


def _load_kept(client: redis.Redis, keys: KeySpace, images: Images, fmt: str, part: str, chunk: int = 5000) -> None:
    now = time.time()
    state_key = keys.state(NS)
    for start in range(0, images.n, chunk):
        stop = min(images.n, start + chunk)
        _ids, shas = images.shas(start, stop)
        pipe = client.pipeline(transaction=False)
        if part == "state":
            fields: list[Any] = []
            for offset, sha in enumerate(shas):
                image_id = f"k{start + offset + 1}"
                fields += [start + offset + 1, kept_state(sha, image_id) if fmt == "binary" else f"K|{sha}|{image_id}"]
            pipe.hset(state_key, mapping=dict(zip(fields[::2], fields[1::2])))
        elif part == "sha":
            pipe.mset({keys.sha(NS, sha): start + offset + 1 for offset, sha in enumerate(shas)})
        else:
            values: dict[str, Any] = {}
            for offset, sha in enumerate(shas):
                record = _kept_record(images, start + offset, sha, now)
                values[keys.record(NS, record.image_id)] = encode_record(record) if fmt == "binary" else record.to_json()
            pipe.mset(values)
        pipe.execute()


def _load_duplicates(
    client: redis.Redis, keys: KeySpace, images: Images, count: int, fmt: str, seed: int, chunk: int = 5000
) -> None:
    rng = np.random.default_rng(seed + 1)
    targets = rng.integers(0, images.n, count)
    now = time.time()
    shas = bulkload.synthetic_shas(seed + 7, 0, count)
    for start in range(0, count, chunk):
        pipe = client.pipeline(transaction=False)
        for d in range(start, min(count, start + chunk)):
            t = int(targets[d])
            fp = images.template(t)
            whole, _ = images.codes(t)
            record = ImageRecord(
                namespace=NS, image_id=f"d{d + 1}", verdict=Verdict.DUPLICATE, duplicate_of=f"k{t + 1}", distance=3,
                match=MatchKind.NEAR, sha256=shas[d], codes=tuple(c ^ 0x10204 for c in whole),
                seq=images.n + d + 1, created_at=now, width=fp.width, height=fp.height, format=fp.format,
                size_bytes=fp.size_bytes, event_id=f"evt-d{d + 1:011d}", similarity=0.9731,
            )
            pipe.set(keys.record(NS, record.image_id), encode_record(record) if fmt == "binary" else record.to_json())
            pipe.zadd(keys.dups(NS, f"k{t + 1}"), {record.image_id: record.seq})
        pipe.execute()


async def _registrations(url: str, prefix: str, images: Images, count: int, seed: int) -> dict[str, Any]:
    settings = Settings()
    policy = settings.policy
    index = RedisMihIndex(aioredis.Redis.from_url(url), prefix=prefix, substrings=settings.mih_substrings)
    rng = random.Random(seed + 2)
    nprng = np.random.default_rng(seed + 3)
    seconds: list[float] = []
    verdicts: dict[str, int] = {}
    try:
        for r in range(count):
            copy = r % 2 == 1
            t = rng.randrange(images.n) if copy else rng.randrange(len(images.templates))
            fp = images.template(t)
            if copy:  # a near copy of loaded image t: its codes with 2 more bits flipped
                whole, windows = images.codes(t)
                flip = int(_masks(nprng, 1, 2)[0])
                whole, windows = tuple(c ^ flip for c in whole), tuple(c ^ flip for c in windows)
            else:  # a new image: a template under a fresh mask
                mask = int(_masks(nprng, 1, 16)[0])
                whole, windows = tuple(c ^ mask for c in fp.codes), tuple(c ^ mask for c in fp.window_codes)
            query = Fingerprint(
                sha256=nprng.bytes(32), codes=whole, width=fp.width, height=fp.height, format=fp.format,
                size_bytes=fp.size_bytes, window_codes=windows, thumbnail=fp.thumbnail,
            )
            began = time.perf_counter()
            reg = await index.register(
                NS, f"r{r}", query, functools.partial(decide, policy=policy, query_thumbnail=query.thumbnail),
                radius=policy.review_radius,
            )
            seconds.append(time.perf_counter() - began)
            verdicts[reg.record.verdict.value] = verdicts.get(reg.record.verdict.value, 0) + 1
    finally:
        await index.close()
    return {"latency": latency_summary(seconds), "verdicts": verdicts}


def _slowest(client: redis.Redis) -> list[dict[str, Any]]:
    entries = client.slowlog_get(10_000)
    entries.sort(key=lambda e: -int(e["duration"]))
    return [
        {"us": int(e["duration"]), "command": " ".join(str(a) for a in e["command"].split()[:2])[:60]}
        for e in entries[:5]
    ]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6400/0", help="a Redis of your own")
    parser.add_argument("--corpus", type=Path, default=Path("../corpus"))
    parser.add_argument("--kept", type=int, default=1_000_000)
    parser.add_argument("--duplicates", type=int, default=300_000)
    parser.add_argument("--templates", type=int, default=1500)
    parser.add_argument("--mask-bits", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=8, help="APPEND rounds per bucket (growth slack)")
    parser.add_argument("--registrations", type=int, default=400)
    parser.add_argument("--format", choices=("binary", "json"), default="binary")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="leave the keys in Redis")


def main(args: argparse.Namespace) -> int:
    settings = Settings()
    m = settings.mih_substrings
    prefix = bench_prefix("footprint")
    keys = KeySpace(prefix)
    client = redis.Redis.from_url(args.redis_url)
    began = time.perf_counter()
    templates = _templates(args.corpus, args.templates, args.seed)
    per = np.array([len(t.codes) + len(t.window_codes) for t in templates])
    print(f"templates: {len(templates)} corpus images, {per.mean():.1f} indexed codes each, "
          f"thumbnails {np.mean([len(t.thumbnail) for t in templates]):.0f} B; m = {m}, format {args.format}")
    images = Images(templates, args.kept, args.mask_bits, args.seed)
    memory: dict[str, int] = {"before": redis_used_memory(client)}
    try:
        bulkload.write_meta(client, prefix, NS, m, args.kept + args.duplicates)
        codes = _load_buckets(client, keys, images, m, args.rounds)
        memory["buckets"] = redis_used_memory(client)
        for part in ("state", "sha", "record"):
            _load_kept(client, keys, images, args.format, part)
            memory[part] = redis_used_memory(client)
        _load_duplicates(client, keys, images, args.duplicates, args.format, args.seed)
        memory["duplicates"] = redis_used_memory(client)
        loaded = time.perf_counter() - began
        steps = ["before", "buckets", "state", "sha", "record"]
        per_kept = {s: (memory[s] - memory[p]) / args.kept for p, s in itertools.pairwise(steps)}
        kept_all = (memory["record"] - memory["before"]) / args.kept
        per_dup = (memory["duplicates"] - memory["record"]) / max(1, args.duplicates)
        print(f"loaded {args.kept:,} kept images ({codes:,} codes) and {args.duplicates:,} duplicates in {loaded:.0f} s")
        print("Redis used_memory per kept image: " + ", ".join(f"{k} {v:.0f} B" for k, v in per_kept.items()))
        print(f"per kept image, all-in: {kept_all:.0f} B; per duplicate: {per_dup:.0f} B")

        client.config_set("slowlog-log-slower-than", 1000)
        client.config_set("slowlog-max-len", 10_000)
        client.slowlog_reset()
        client.config_resetstat()
        regs = asyncio.run(_registrations(args.redis_url, prefix, images, args.registrations, args.seed))
        stats = client.info("commandstats")
        slowest = _slowest(client)
        worst = max((s["us"] for s in slowest), default=0)
        lat = regs["latency"]
        print(f"{args.registrations} registrations: p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms; "
              f"verdicts {regs['verdicts']}")
        print("server time per call: " + ", ".join(
            f"{name.removeprefix('cmdstat_')} {v['usec_per_call']:.0f} us x {v['calls']}"
            for name, v in sorted(stats.items(), key=lambda kv: -float(kv[1]["usec_per_call"]))[:6]))
        print(f"commands over 1 ms: {len(client.slowlog_get(10_000))}; slowest: "
              + (", ".join(f"{s['command']} {s['us'] / 1000:.2f} ms" for s in slowest) or "none"))
        print_json_line({
            "bench": "footprint", "format": args.format, "kept": args.kept, "duplicates": args.duplicates,
            "codes": codes, "m": m, "per_kept_bytes": round(kept_all), "per_duplicate_bytes": round(per_dup),
            "per_kept_parts": {k: round(v) for k, v in per_kept.items()}, "slowest_command_us": worst,
            "registration_latency": lat, "verdicts": regs["verdicts"],
        })
    finally:
        if not args.keep:
            client.config_set("slowlog-log-slower-than", 10_000)
            deleted = asyncio.run(_delete(args.redis_url, keys.namespace(NS)))
            print(f"deleted {deleted:,} keys", file=sys.stderr)
    return 0


async def _delete(url: str, prefix: str) -> int:
    from imgdedup.index.redis.keys import delete_prefix

    client = aioredis.Redis.from_url(url)
    try:
        return await delete_prefix(client, prefix, batch=5000)
    finally:
        await client.aclose()


