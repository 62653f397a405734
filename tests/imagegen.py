"""Deterministic synthetic photos for tests: many distinct images whose perceptual hashes
are far apart, and real-world variants of them (re-encode, resize, colour work)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageEnhance


def distinct_image(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A smooth random 'photo': low-frequency structure (what pHash sees) plus grain."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    image = Image.fromarray(coarse, "RGB").resize(size, Image.Resampling.BICUBIC)
    grain = rng.normal(0, 6, size=(size[1], size[0], 3))
    pixels = np.clip(np.asarray(image, dtype=np.float64) + grain, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def encode(image: Image.Image, fmt: str = "JPEG", **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **({"quality": 90} if fmt == "JPEG" and not options else options))
    return out.getvalue()


def variants(image: Image.Image) -> dict[str, bytes]:
    """Copies an archive really holds of one photo; all must be judged duplicates."""
    w, h = image.size
    return {
        "q35": encode(image, "JPEG", quality=35),
        "half-png": encode(image.resize((w // 2, h // 2), Image.Resampling.LANCZOS), "PNG"),
        "bright": encode(ImageEnhance.Brightness(image).enhance(1.08), "JPEG", quality=85),
        "webp": encode(image, "WEBP", quality=70),
    }


#: TIFF tag and field types `poison_tiff` needs.
_STRIP_OFFSETS = 273
_TYPE_LONG, _TYPE_UNDEFINED = 4, 7


def poison_tiff() -> bytes:
    """A TIFF of some hundred bytes on which Pillow raises `TypeError` inside `Image.load()`, not the
    `OSError` a corrupt file usually gives: one byte changed from a valid 8x8 bilevel TIFF,
    the type of its StripOffsets entry, LONG -> UNDEFINED (found by mutating such a file
    at random), so that the strip offset is read as bytes and `seek(b"...")` fails."""
    image = Image.fromarray((np.indices((8, 8)).sum(axis=0) % 2 * 255).astype(np.uint8), "L").convert("1")
    data = bytearray(encode(image, "TIFF"))
    assert data[:4] == b"II*\x00", "Pillow writes little-endian TIFFs"
    ifd = int.from_bytes(data[4:8], "little")
    for entry in range(ifd + 2, ifd + 2 + 12 * int.from_bytes(data[ifd : ifd + 2], "little"), 12):
        tag, kind = int.from_bytes(data[entry : entry + 2], "little"), int.from_bytes(data[entry + 2 : entry + 4], "little")
        if tag == _STRIP_OFFSETS:
            assert kind == _TYPE_LONG, kind
            data[entry + 2 : entry + 4] = _TYPE_UNDEFINED.to_bytes(2, "little")
            return bytes(data)
    raise AssertionError("no StripOffsets entry")


def _small_avif() -> bytes:
    image = Image.fromarray((np.indices((16, 16)).sum(axis=0) % 2 * 255).astype(np.uint8), "L").convert("RGB")
    return encode(image, "AVIF")


def poison_avif_header() -> bytes:
    """An AVIF on which Pillow's plugin raises `RuntimeError` ("Missing or empty image
    item") inside `Image.open`: the primary item id of a valid file's `pitm` box set to
    0xFFFF, an item that does not exist."""
    data = bytearray(_small_avif())
    box = data.index(b"pitm")
    # box type, then version (1 byte) and flags (3 bytes), then the 16-bit item id
    data[box + 8 : box + 10] = b"\xff\xff"
    return bytes(data)


def poison_avif_pixels() -> bytes:
    """An AVIF whose header is fine but on which Pillow raises `RuntimeError` ("Decoding
    of color planes failed") inside `Image.load()`: the first byte of the coded picture
    (the `mdat` payload, an AV1 OBU header) inverted."""
    data = bytearray(_small_avif())
    payload = data.index(b"mdat") + 4
    data[payload] ^= 0xFF
    return bytes(data)
