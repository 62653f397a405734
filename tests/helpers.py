"""Shared test helpers: fingerprints, random codes, and real image bytes made in memory.

Kept out of conftest.py so that test modules can import them explicitly.
"""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from collections.abc import Awaitable, Callable
from functools import cache
from pathlib import Path

import imgdedup_devtools.samples
import numpy as np
from aiohttp.test_utils import TestClient
from PIL import Image

from imgdedup.decisions.rules import Policy
from imgdedup.fingerprint import Fingerprint

#: The `start_client` fixture: `await start_client(app, headers=...)` -> a test client of a
#: real server for the app, closed at teardown.
StartClient = Callable[..., Awaitable[TestClient]]

SAMPLES_DIR = Path(imgdedup_devtools.samples.__file__).parent
SAMPLE_NAMES = tuple(sorted(p.stem for p in SAMPLES_DIR.glob("*.jpg")))

MASK64 = (1 << 64) - 1

#: The decision policy the tests share: a duplicate within 8 bits, review up to 12.
POLICY = Policy(duplicate_radius=8, review_radius=12)


# --- fingerprints and codes -------------------------------------------------------------


def sha_for(sha_seed: int | bytes) -> bytes:
    """A deterministic 32-byte SHA-256 for a seed (an int, or bytes standing for a file)."""
    if isinstance(sha_seed, bytes):
        return hashlib.sha256(sha_seed).digest()
    return hashlib.sha256(f"imgdedup-test-seed:{sha_seed}".encode()).digest()


def make_fingerprint(
    code: int,
    sha_seed: int | bytes,
    codes: tuple[int, ...] | list[int] | None = None,
    *,
    width: int = 640,
    height: int = 480,
    fmt: str = "JPEG",
    size_bytes: int = 12345,
) -> Fingerprint:
    """A `Fingerprint` with the given perceptual code(s) and a SHA derived from `sha_seed`.

    Equal seeds give equal SHAs (an exact byte copy); different seeds different ones.
    `codes`, when given, replaces the single `code` (the first one is the primary code).
    """
    all_codes = tuple(codes) if codes is not None else (code,)
    if not all_codes:
        raise ValueError("a fingerprint needs at least one code")
    for c in all_codes:
        if not 0 <= c <= MASK64:
            raise ValueError(f"code {c} is not a 64-bit unsigned value")
    return Fingerprint(
        sha256=sha_for(sha_seed),
        codes=all_codes,
        width=width,
        height=height,
        format=fmt,
        size_bytes=size_bytes,
    )


def random_code(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 1 << 64, dtype=np.uint64))


def flip_bits(code: int, k: int, rng: np.random.Generator, bits: int = 64) -> int:
    """`code` with exactly k distinct bits flipped (so the Hamming distance is exactly k)."""
    positions = rng.choice(bits, size=k, replace=False)
    mask = 0
    for p in positions.tolist():
        mask |= 1 << p
    return code ^ mask


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


# --- images -----------------------------------------------------------------------------


@cache
def _sample_bytes(name: str) -> bytes:
    return (SAMPLES_DIR / f"{name}.jpg").read_bytes()


def sample_bytes(name: str) -> bytes:
    """The original JPEG file of a sample photo."""
    return _sample_bytes(name)


def sample_image(name: str, mode: str = "RGB") -> Image.Image:
    """A decoded sample photo (a fresh copy each call, safe to mutate)."""
    with Image.open(io.BytesIO(_sample_bytes(name))) as im:
        return im.convert(mode)


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    """Encode a Pillow image to bytes in memory."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def jpeg(image: Image.Image, quality: int = 90, **params) -> bytes:
    return encode(image, "JPEG", quality=quality, **params)


def png(image: Image.Image, **params) -> bytes:
    return encode(image, "PNG", **params)


def webp(image: Image.Image, quality: int = 85, **params) -> bytes:
    return encode(image, "WEBP", quality=quality, **params)


def gif(image: Image.Image, **params) -> bytes:
    return encode(image, "GIF", **params)


def tiff(image: Image.Image, **params) -> bytes:
    return encode(image, "TIFF", **params)


def animated_gif(frames: list[Image.Image], duration: int = 100) -> bytes:
    return encode(
        frames[0], "GIF", save_all=True, append_images=frames[1:], duration=duration, loop=0
    )


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


def blank_png(width: int, height: int, bit_depth: int = 1) -> bytes:
    """A valid all-black greyscale PNG of any canvas size, built cheaply by hand.

    Each scanline is a filter byte plus zeros; the zlib stream is produced row by row, so
    a 20000x20000 1-bit canvas (~50 MB of raw scanlines) compresses to ~50 KB without
    ever holding the pixels (Pillow would need the full canvas in memory to save it).
    """
    row_bytes = (width * bit_depth + 7) // 8
    row = b"\x00" * (1 + row_bytes)
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(row) for _ in range(height)]
    parts.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


def exif_with(entries: list[tuple[int, int, int, bytes]], extra: bytes = b"") -> bytes:
    """A raw big-endian EXIF block (with the "Exif\\0\\0" header) from IFD0 entries.

    Each entry is (tag, TIFF type, count, 4-byte value-or-offset field). Offsets are
    relative to the TIFF header; `extra` is appended after the IFD (offset 8 + 2 +
    12 * len(entries) + 4).
    """
    ifd = struct.pack(">H", len(entries))
    for tag, typ, count, field in entries:
        ifd += struct.pack(">HHI", tag, typ, count) + field.ljust(4, b"\x00")
    ifd += struct.pack(">I", 0)
    return b"Exif\x00\x00" + b"MM\x00*" + struct.pack(">I", 8) + ifd + extra


def exif_ifd_data_offset(n_entries: int) -> int:
    return 8 + 2 + 12 * n_entries + 4


#: What the *stored* pixels must be for EXIF orientation o to display upright: the
#: inverse of the transform `ImageOps.exif_transpose` applies.
STORE_FOR_ORIENTATION: dict[int, Image.Transpose | None] = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}
