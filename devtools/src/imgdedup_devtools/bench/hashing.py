"""`imgdedup bench hashing`: images/s per core of the service's hashing vs ImageHash.phash,
measured in the same run on the same bytes (single process = one core)."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import imagehash
from PIL import Image

from imgdedup.fingerprint import ImageLimits, fingerprint
from imgdedup.fingerprint.codes import perceptual_codes
from imgdedup.fingerprint.decode import decode_for_hashing
from imgdedup_devtools.bench.images import TYPICAL_OPTIONS, encoded, photo_1280x960

# Generous size limits (benchmark inputs are trusted); matching as in the service's default
# configuration (crop windows on) and, for comparison, with whole-image codes only.
LIMITS = ImageLimits(max_bytes=200_000_000, max_pixels=500_000_000)
SINGLE_CODE = ImageLimits(max_bytes=200_000_000, max_pixels=500_000_000, crop_windows=False)


def _rate(func: Callable[[Any], object], inputs: list[Any], min_seconds: float) -> float:
    for data in inputs[:3]:
        func(data)  # warm caches and lazy imports
    done = 0
    started = time.perf_counter()
    while True:
        for data in inputs:
            func(data)
        done += len(inputs)
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return done / elapsed


def _ours(data: bytes) -> object:
    return fingerprint(data, LIMITS)


def _ours_single_code(data: bytes) -> object:
    return fingerprint(data, SINGLE_CODE)


def _decode_only(data: bytes) -> object:
    """The floor under our hashing: the same guarded, DCT-scaled decode (YCbCr planes, no RGB)
    and nothing else (no SHA-256, no codes)."""
    return decode_for_hashing(data, LIMITS.max_pixels)


def _imagehash(data: bytes) -> object:
    return imagehash.phash(Image.open(io.BytesIO(data)))


def breakdown(inputs: list[bytes], min_seconds: float) -> dict[str, float]:
    """Where one fingerprint's time goes, in ms per image, each stage timed on its own
    through the same public functions `fingerprint` calls (the windows as the difference
    between perceptual codes with and without them); "other" is what is left of the
    whole fingerprint."""
    pictures = [decode_for_hashing(data, LIMITS.max_pixels)[0] for data in inputs]
    ms = {
        "SHA-256": 1000 / _rate(lambda data: hashlib.sha256(data).digest(), inputs, min_seconds),
        "decode (guarded, DCT-scaled, colour kept)": 1000 / _rate(_decode_only, inputs, min_seconds),
        "trim, whole-image codes, thumbnails": 1000 / _rate(
            lambda p: perceptual_codes(p.gray, colour=p.colour, windows=False), pictures, min_seconds),
    }
    with_windows = 1000 / _rate(lambda p: perceptual_codes(p.gray, colour=p.colour), pictures, min_seconds)
    ms["crop-window codes"] = with_windows - ms["trim, whole-image codes, thumbnails"]
    total = 1000 / _rate(_ours, inputs, min_seconds)
    ms["other (the whole fingerprint less its stages timed alone)"] = total - sum(ms.values())
    ms["total"] = total
    return {name: round(value, 3) for name, value in ms.items()}


def corpus_files(corpus: Path, limit: int) -> list[bytes]:
    paths = sorted(p for p in corpus.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))[:limit]
    return [p.read_bytes() for p in paths]


#: Formats hashed by default; AVIF, HEIF and JXL can be added with --formats.
DEFAULT_FORMATS = ("JPEG", "PNG", "WEBP")


def run(
    count: int = 20, min_seconds: float = 3.0, corpus: Path | None = None,
    formats: tuple[str, ...] = DEFAULT_FORMATS,
) -> dict[str, object]:
    images = [photo_1280x960(seed) for seed in range(count)]
    sets: dict[str, list[bytes]] = {f"1280x960 {fmt}": [encoded(i, fmt) for i in images] for fmt in formats}
    if corpus is not None:
        files = corpus_files(corpus, 300)
        if files:
            sets["corpus JPEG"] = files
    results: dict[str, object] = {}
    print(f"hashing, one core ({platform.processor() or platform.machine()}), >= {min_seconds:.0f} s per figure")
    for name, inputs in sets.items():
        mean_kb = sum(map(len, inputs)) / len(inputs) / 1024
        ours = _rate(_ours, inputs, min_seconds)
        single = _rate(_ours_single_code, inputs, min_seconds)
        baseline = _rate(_imagehash, inputs, min_seconds)
        floor = _rate(_decode_only, inputs, min_seconds)
        print(f"  {name:<18} {len(inputs):>4} files, {mean_kb:6.0f} KB avg: imgdedup default {ours:7.1f}/s "
              f"({ours / baseline:4.2f}x)  without crop windows {single:7.1f}/s ({single / baseline:4.2f}x)  "
              f"ImageHash.phash {baseline:6.1f}/s  | decode alone {floor:7.1f}/s ({1000 / floor:.2f} ms)")
        results[name] = {"files": len(inputs), "mean_kb": round(mean_kb, 1), "imgdedup_per_s": round(ours, 1),
                         "imgdedup_without_crop_windows_per_s": round(single, 1),
                         "imagehash_phash_per_s": round(baseline, 1), "ratio": round(ours / baseline, 2),
                         "ratio_without_crop_windows": round(single / baseline, 2),
                         "decode_only_per_s": round(floor, 1)}
    line: dict[str, object] = {"bench": "hashing", "results": results}
    if "JPEG" in formats:
        parts = breakdown(sets["1280x960 JPEG"], min_seconds)
        print("  where the time goes, 1280x960 JPEG (ms per image): "
              + ", ".join(f"{name} {value:.2f}" for name, value in parts.items()))
        line["breakdown_1280x960_jpeg_ms"] = parts
    print(json.dumps(line))
    return line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--count", type=int, default=20, help="generated 1280x960 images per format")
    parser.add_argument("--seconds", type=float, default=3.0, help="minimum time per figure")
    parser.add_argument("--corpus", type=Path, help="also hash the JPEGs of this folder (../shared/bench/build-corpus)")
    parser.add_argument("--formats", default=",".join(DEFAULT_FORMATS),
                        help="comma-separated formats of the generated images (any of "
                             f"{','.join(TYPICAL_OPTIONS)})")


def main(args: argparse.Namespace) -> int:
    formats = tuple(f.strip().upper() for f in args.formats.split(",") if f.strip())
    unknown = [f for f in formats if f not in TYPICAL_OPTIONS]
    if unknown:
        raise SystemExit(f"unknown format(s) {', '.join(unknown)}; choose from {', '.join(TYPICAL_OPTIONS)}")
    run(count=args.count, min_seconds=args.seconds, corpus=args.corpus, formats=formats)
    return 0
