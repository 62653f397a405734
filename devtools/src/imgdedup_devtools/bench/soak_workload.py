"""The soak's uploads: families of near-duplicate small pictures, so that exactly one
image per family must be accepted whatever the order, the replica or the redelivery.

Each family is one distinct 256x192 picture (a random low-frequency luminance field, the
part pHash reads, with a random tint and grain) and `family_size - 1` copies of it:
byte-identical ones and re-encodings (JPEG quality 50/70/90, half size, brighter, WebP,
PNG). Pictures are small because the soak tests delivery, not hashing speed: 50,000 of
them fit a broker restart's storage and two shared cores. The service is run without
crop windows (`crop_windows=false`), so that every code the index keeps is a code
computed here: a family whose codes come within `min_gap` bits of another family's, or
whose members are not all within the duplicate radius of each other, is regenerated.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from imgdedup.fingerprint import ImageLimits, fingerprint
from imgdedup_devtools.bench.images import encode
from imgdedup_devtools.bench.uploads import FamilyGate, Upload, load_cached, smooth_field, store_cached, variant

GENERATOR_VERSION = 1
WIDTH, HEIGHT = 256, 192
#: copies of a family's original, in the order they are added (byte copies repeat)
COPY_KINDS = ("copy", "q50", "small", "bright", "webp", "q70", "png", "copy2", "q90", "copy3")
#: as the service hashes in the soak: default limits, no crop windows, no rotations
LIMITS = ImageLimits(max_bytes=1 << 30, max_pixels=1 << 31, crop_windows=False, rotations=False)


def picture(seed: int) -> Image.Image:
    rng = np.random.default_rng([GENERATOR_VERSION, seed])
    big = smooth_field(rng, WIDTH, HEIGHT)
    tint = rng.uniform(0.7, 1.3, 3).astype(np.float32)
    grain = rng.normal(0, 4.0, (HEIGHT, WIDTH, 3)).astype(np.float32)
    pixels = 128 + 100 * big[:, :, None] * tint + grain
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def copy_of(image: Image.Image, original: bytes, kind: str) -> bytes:
    if kind.startswith("copy"):
        return original
    if kind.startswith("q"):
        return encode(image, "JPEG", quality=int(kind[1:]))
    if kind == "png":
        return encode(image, "PNG")
    return variant(image, original, kind)  # small, bright, webp: as the pipeline bench makes them


Member = tuple[str, bytes, str, tuple[int, ...], tuple[int, ...]]  # kind, bytes, sha256, codes, indexed


def _family_job(job: tuple[int, int]) -> tuple[int, list[Member]]:
    seed, size = job
    image = picture(seed)
    original = encode(image, "JPEG", quality=85)
    out: list[Member] = []
    for kind in ("orig", *COPY_KINDS[: size - 1]):
        data = original if kind == "orig" else copy_of(image, original, kind)
        fp = fingerprint(data, LIMITS)
        out.append((kind, data, fp.sha256_hex, tuple(fp.codes), tuple(fp.indexed_codes)))
    return seed, out


def build_families(
    events: int, *, family_size: int = 10, seed: int = 1, min_gap: int = 14, duplicate_radius: int = 10,
    cache_dir: Path | None = None, workers: int = 2, log: bool = True,
) -> list[Upload]:
    """`events` uploads in families of `family_size` (the last one smaller if it does not
    divide), in a seeded random order; image ids `s<family>-<kind>`."""
    if not 1 <= family_size <= len(COPY_KINDS) + 1:
        raise ValueError(f"family size must be 1..{len(COPY_KINDS) + 1}")
    sizes = [family_size] * (events // family_size) + ([events % family_size] if events % family_size else [])
    key = hashlib.sha256(repr((GENERATOR_VERSION, events, family_size, seed, min_gap, duplicate_radius)).encode())
    path = cache_dir / f"soak-{key.hexdigest()[:16]}.pickle" if cache_dir else None
    families: list[list[Member]] | None = load_cached(path)
    if families is None:
        if log:
            print(f"generating {len(sizes)} families of up to {family_size} small pictures on {workers} processes "
                  f"(cached for next time)...", flush=True)
        families = _generate(sizes, seed, min_gap, duplicate_radius, workers)
        store_cached(path, families)
    uploads = [
        Upload(f"s{number}-{kind}", number, kind, data, sha, codes, indexed)
        for number, members in enumerate(families)
        for kind, data, sha, codes, indexed in members
    ]
    order = np.random.default_rng(seed).permutation(len(uploads))
    return [uploads[i] for i in order]


def _generate(sizes: list[int], seed: int, min_gap: int, duplicate_radius: int, workers: int) -> list[list[Member]]:
    accepted: list[list[Member] | None] = [None] * len(sizes)
    gate = FamilyGate(min_gap, duplicate_radius)
    todo = list(range(len(sizes)))
    next_seed = seed * 10_000_000
    with ProcessPoolExecutor(max_workers=workers) as pool:
        while todo:
            jobs = [(next_seed + i, sizes[slot]) for i, slot in enumerate(todo)]
            next_seed += len(todo)
            retry = []
            for slot, (_seed, members) in zip(todo, pool.map(_family_job, jobs, chunksize=16)):
                ups = [Upload("", 0, kind, b"", sha, codes, indexed) for kind, _, sha, codes, indexed in members]
                if gate.admit(ups):
                    accepted[slot] = members
                else:
                    retry.append(slot)
            todo = retry
    return [a for a in accepted if a is not None]
