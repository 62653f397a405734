"""Upload workloads for the pipeline and HTTP benchmarks: distinct 1280x960 photo-like
JPEGs plus real-world copies of some of them (planted duplicates), encoded before any
timing starts, with the fingerprint each must get so every decision can be checked.

`images.photo_1280x960` has only five distinct pictures (its seeds differ by grain,
which pHash ignores), so distinct images here are one of those samples blended with a
random low-frequency luminance field (random 8x8 DCT coefficients: exactly what pHash
looks at) and a random colour tint. Families whose codes come within `min_gap` bits of
another family's are regenerated, so the only near matches are the planted ones.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import random
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

from imgdedup.config import Settings
from imgdedup.fingerprint import HASH_ALGORITHM, ImageLimits, fingerprint
from imgdedup.fingerprint.phash import dct_matrix
from imgdedup_devtools.bench.images import SAMPLES, encode, sample

GENERATOR_VERSION = 1
WIDTH, HEIGHT = 1280, 960

#: copies an archive really holds of one photo; all within the duplicate radius of it
VARIANT_KINDS = ("copy", "q50", "small", "bright", "webp")

_LIMITS = ImageLimits(max_bytes=1 << 30, max_pixels=1 << 31)


@dataclass(frozen=True, slots=True)
class Upload:
    image_id: str
    family: int
    kind: str  # "orig" or one of VARIANT_KINDS
    data: bytes
    sha256_hex: str = ""
    codes: tuple[int, ...] = ()  # the fingerprint's codes (what a query probes with)
    indexed: tuple[int, ...] = ()  # every code the index keeps for it (codes + any extra ones)

    @property
    def code(self) -> int:
        return self.codes[0] if self.codes else 0

    def distance_to(self, kept: Upload) -> int:
        """Distance the index reports when this image is looked up against `kept`."""
        return min(((a ^ b).bit_count() for a in self.codes for b in kept.indexed), default=65)


@lru_cache(maxsize=8)
def _base(index: int) -> np.ndarray:
    return np.asarray(sample(SAMPLES[index]).resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC), dtype=np.float32)


@lru_cache(maxsize=1)
def _grain() -> np.ndarray:
    return np.random.default_rng(0).normal(0, 4.0, size=(HEIGHT + 64, WIDTH + 64, 3)).astype(np.float32)


class FamilyGate:
    """Admits a family of uploads when its members are duplicates of each other (within
    `duplicate_radius`) and its codes stay more than `min_gap` bits from every family
    admitted before, so the expected decisions of a workload are known."""

    def __init__(self, min_gap: int, duplicate_radius: int) -> None:
        self._min_gap = min_gap
        self._radius = duplicate_radius
        self._kept_query = np.zeros(0, np.uint64)
        self._kept_indexed = np.zeros(0, np.uint64)

    def admit(self, members: list[Upload]) -> bool:
        query = np.array([c for u in members for c in u.codes], dtype=np.uint64)
        index = np.array([c for u in members for c in u.indexed], dtype=np.uint64)
        inner = all(a.distance_to(b) <= self._radius for a in members for b in members if a is not b)
        far = all(
            len(x) == 0 or len(y) == 0 or int(np.bitwise_count(x[:, None] ^ y[None, :]).min()) > self._min_gap
            for x, y in ((query, self._kept_indexed), (index, self._kept_query))
        )
        if not (inner and far and len(query)):
            return False
        self._kept_query = np.concatenate([self._kept_query, query])
        self._kept_indexed = np.concatenate([self._kept_indexed, index])
        return True


def load_cached(path: Path | None) -> Any:
    """What `store_cached` left at `path`; None if nothing (or something unreadable) is there."""
    if path is None or not path.exists():
        return None
    try:
        return pickle.loads(path.read_bytes())
    except Exception:
        return None


def store_cached(path: Path | None, value: object) -> None:
    """Keep generated workload for the next run (written whole, then renamed)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
    tmp.replace(path)


def smooth_field(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A random low-frequency field in [-1, 1] of `height` x `width` (8x8 DCT
    coefficients drawn from `rng`, scaled up bicubically): a picture's large shapes."""
    coefficients = np.zeros((32, 32))
    coefficients[:8, :8] = rng.normal(0, 1, (8, 8))
    coefficients[0, 0] = 0
    dct = dct_matrix(32)
    field = dct.T @ coefficients @ dct
    field = field / max(1e-9, float(np.abs(field).max()))
    small = Image.fromarray(((field + 1) * 127.5).astype(np.uint8), "L")
    return np.asarray(small.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32) / 127.5 - 1


def distinct_photo(seed: int) -> Image.Image:
    rng = np.random.default_rng([GENERATOR_VERSION, seed])
    big = smooth_field(rng, WIDTH, HEIGHT)
    tint = rng.uniform(0.7, 1.3, 3).astype(np.float32)
    dy, dx = (int(v) for v in rng.integers(0, 64, 2))
    pixels = (0.2 * _base(seed % len(SAMPLES)) + 0.8 * 128 + 100 * big[:, :, None] * tint
              + _grain()[dy : dy + HEIGHT, dx : dx + WIDTH])
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def variant(image: Image.Image, original: bytes, kind: str) -> bytes:
    if kind == "copy":
        return original  # byte-identical: the exact tier
    if kind == "q50":
        return encode(image, "JPEG", quality=50)
    if kind == "small":
        return encode(image.resize((image.width // 2, image.height // 2), Image.Resampling.LANCZOS), "JPEG", quality=80)
    if kind == "bright":
        return encode(ImageEnhance.Brightness(image).enhance(1.08), "JPEG", quality=85)
    if kind == "webp":
        return encode(image, "WEBP", quality=75)
    raise ValueError(kind)


def make_family(seed: int, kinds: tuple[str, ...]) -> list[tuple[str, bytes]]:
    """[(kind, bytes)] of one original 1280x960 JPEG (quality 85) and its copies."""
    image = distinct_photo(seed)
    original = encode(image, "JPEG", quality=85)
    return [("orig", original), *((kind, variant(image, original, kind)) for kind in kinds)]


Hashed = tuple[str, tuple[int, ...], tuple[int, ...]]


def _hash(data: bytes) -> Hashed:
    """(sha256 hex, query codes, indexed codes) exactly as the service computes them."""
    fp = fingerprint(data, _LIMITS)
    return fp.sha256_hex, tuple(fp.codes), tuple(fp.indexed_codes)


def _family_job(job: tuple[int, tuple[str, ...]]) -> tuple[int, list[tuple[str, bytes, Hashed]]]:
    seed, kinds = job
    return seed, [(kind, data, _hash(data)) for kind, data in make_family(seed, kinds)]


def _hash_job(data: bytes) -> Hashed:
    return _hash(data)


def plan(events: int, dup_fraction: float, seed: int) -> list[tuple[str, ...]]:
    """Variant kinds per family so that originals + copies == events."""
    rng = random.Random(seed)
    copies = round(events * dup_fraction)
    originals = events - copies
    if originals <= 0:
        raise ValueError("need at least one original")
    copies = min(copies, originals * len(VARIANT_KINDS))
    kinds: list[list[str]] = [[] for _ in range(originals)]
    while sum(map(len, kinds)) < copies:
        family = rng.randrange(originals)
        unused = [k for k in VARIANT_KINDS if k not in kinds[family]]
        if unused:
            kinds[family].append(rng.choice(unused))
    return [tuple(k) for k in kinds]


def build_uploads(
    events: int,
    *,
    dup_fraction: float = 0.3,
    seed: int = 1,
    cache_dir: Path | None = None,
    workers: int | None = None,
    min_gap: int = 14,
    duplicate_radius: int = 8,
    log: bool = True,
) -> list[Upload]:
    """`events` uploads (originals and planted copies), shuffled; the fingerprint of each
    is computed here with the service's own hashing. Bytes are cached in `cache_dir`."""
    families = plan(events, dup_fraction, seed)
    key = hashlib.sha256(repr((GENERATOR_VERSION, HASH_ALGORITHM, events, dup_fraction, seed, min_gap)).encode()).hexdigest()[:16]
    path = cache_dir / f"uploads-{key}.pickle" if cache_dir else None
    raw: list[tuple[int, list[tuple[str, bytes]]]] | None = load_cached(path)
    from_cache = raw is not None
    workers = workers or os.cpu_count() or 1
    with ProcessPoolExecutor(max_workers=workers) as pool:
        if raw is None:
            if log:
                print(f"generating {len(families)} distinct 1280x960 photos and {events - len(families)} copies "
                      f"on {workers} processes (cached for next time)...", flush=True)
            raw = _generate(pool, families, seed, min_gap, duplicate_radius)
            store_cached(path, raw)
        # always re-hash with the current code: the cache holds bytes only
        flat = [(family, kind, data) for family, (_seed, members) in enumerate(raw) for kind, data in members]
        hashes = list(pool.map(_hash_job, [data for _, _, data in flat], chunksize=8))
    uploads = [
        Upload(f"f{family}-{kind}", family, kind, data, sha, codes, indexed)
        for (family, kind, data), (sha, codes, indexed) in zip(flat, hashes)
    ]
    close = too_close(uploads, min_gap, duplicate_radius)
    if close:
        if not from_cache or path is None:
            raise RuntimeError(f"generated families are not separated: {close[:3]}")
        # the cache holds bytes hashed by an earlier version of the hashing code
        if log:
            print(f"cached uploads no longer separated under the current hashing ({len(close)} close pairs): "
                  "regenerating", flush=True)
        path.unlink()
        return build_uploads(events, dup_fraction=dup_fraction, seed=seed, cache_dir=cache_dir, workers=workers,
                             min_gap=min_gap, duplicate_radius=duplicate_radius, log=log)
    random.Random(seed).shuffle(uploads)
    return uploads


def too_close(uploads: list[Upload], min_gap: int, duplicate_radius: int) -> list[tuple[str, str, int]]:
    """Pairs that break the plan: an image whose codes come within `min_gap` bits of
    another family's indexed codes, or a family member that would not be a duplicate
    of another member registered first."""
    out: list[tuple[str, str, int]] = []
    families: dict[int, list[Upload]] = {}
    for upload in uploads:
        families.setdefault(upload.family, []).append(upload)
    indexed = np.array([c for u in uploads for c in u.indexed], dtype=np.uint64)
    owner = np.array([u.family for u in uploads for _ in u.indexed])
    owner_id = [u.image_id for u in uploads for _ in u.indexed]
    for upload in uploads:
        for code in upload.codes:
            distances = np.bitwise_count(indexed ^ np.uint64(code))
            bad = np.nonzero((owner != upload.family) & (distances <= min_gap))[0]
            out += [(upload.image_id, owner_id[j], int(distances[j])) for j in bad.tolist()[:3]]
    for members in families.values():
        for later in members:
            for first in members:
                if later is not first and later.distance_to(first) > duplicate_radius:
                    out.append((later.image_id, first.image_id, later.distance_to(first)))
    return out


def _generate(
    pool: ProcessPoolExecutor, families: list[tuple[str, ...]], seed: int, min_gap: int, duplicate_radius: int
) -> list[tuple[int, list[tuple[str, bytes]]]]:
    """Families whose members are duplicates of each other (whichever comes first) and
    whose codes stay more than `min_gap` bits from every other family's."""
    accepted: list[tuple[int, list[tuple[str, bytes]]] | None] = [None] * len(families)
    gate = FamilyGate(min_gap, duplicate_radius)
    todo = list(range(len(families)))
    next_seed = seed * 10_000_000
    while todo:
        jobs = []
        for slot in todo:
            jobs.append((next_seed, families[slot]))
            next_seed += 1
        results = list(pool.map(_family_job, jobs, chunksize=4))
        retry = []
        for slot, (fam_seed, members) in zip(todo, results):
            uploads = [Upload("", 0, kind, b"", sha, codes, indexed) for kind, _, (sha, codes, indexed) in members]
            if gate.admit(uploads):
                accepted[slot] = (fam_seed, [(kind, data) for kind, data, _ in members])
            else:
                retry.append(slot)
        todo = retry
    return [a for a in accepted if a is not None]


def add_workload_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `workload` (the benchmark adds --seed)."""
    parser.add_argument("--dup-fraction", type=float, default=0.3, help="share of the uploads that are planted copies")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "imgdedup-bench",
                        help="generated uploads are cached here")
    parser.add_argument("--no-cache", action="store_true")


def cache_dir(args: argparse.Namespace) -> Path | None:
    return None if args.no_cache else args.cache_dir


def workload(args: argparse.Namespace, count: int) -> list[Upload]:
    """`count` uploads for the service's default policy: every copy within the duplicate
    radius of its original, families more than two bits beyond the review radius apart."""
    policy = Settings()
    return build_uploads(count, dup_fraction=args.dup_fraction, seed=args.seed, cache_dir=cache_dir(args),
                         duplicate_radius=policy.duplicate_radius, min_gap=policy.review_radius + 2)


def mean_kb(uploads: list[Upload]) -> float:
    return sum(len(u.data) for u in uploads) / len(uploads) / 1024


def expected_by_family(uploads: list[Upload]) -> dict[int, list[Upload]]:
    out: dict[int, list[Upload]] = {}
    for upload in uploads:
        out.setdefault(upload.family, []).append(upload)
    return out
