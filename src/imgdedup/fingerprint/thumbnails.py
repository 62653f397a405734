"""Verification thumbnails and their byte layout: what the second look compares.

Layout: two 16x16 grey views (as stored, borders trimmed), 8 bits per pixel; then both
views' Cb and Cr planes at 8x8, offset by 128; then both views' aspect ratios, one byte
each. A blob of the grey views alone is also read (colour and aspect then unknown)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from PIL import Image

THUMB_SIDE = 16
CHROMA_SIDE = 8
GREY_THUMBNAIL_BYTES = 2 * THUMB_SIDE * THUMB_SIDE
CHROMA_BYTES = 2 * 2 * CHROMA_SIDE * CHROMA_SIDE
#: The thumbnails are squares, so they lose the aspect ratio: it is stored as
#: 128 + ASPECT_STEPS_PER_OCTAVE * log2(width / height), clipped to a byte.
ASPECT_BYTES = 2
ASPECT_STEPS_PER_OCTAVE = 32
THUMBNAIL_BYTES = GREY_THUMBNAIL_BYTES + CHROMA_BYTES + ASPECT_BYTES


def thumbnails(
    untrimmed: np.ndarray, trimmed: np.ndarray, chroma: bytes | None = None, aspects: tuple[float, float] = (1.0, 1.0)
) -> bytes:
    """Two 32x32 hash inputs -> the verification thumbnails: each halved to 16x16 grey,
    then the two views' colour planes (`chroma_thumbnails`; neutral for a grey picture),
    then the two views' aspect ratios (width / height)."""
    out = []
    for pixels in (untrimmed, trimmed):
        half = pixels.reshape(THUMB_SIDE, 2, THUMB_SIDE, 2).mean(axis=(1, 3))
        out.append(np.clip(np.rint(half), 0, 255).astype(np.uint8).tobytes())
    out.append(chroma if chroma is not None else bytes([128]) * CHROMA_BYTES)
    out.append(bytes(int(np.clip(round(128 + ASPECT_STEPS_PER_OCTAVE * np.log2(a)), 0, 255)) for a in aspects))
    return b"".join(out)


def chroma_thumbnails(
    colour: Image.Image, box: tuple[int, int, int, int] | None, trim_scale: tuple[int, int]
) -> bytes:
    """A colour picture ("YCbCr" or "RGB", `Picture.colour`) -> CHROMA_BYTES: the Cb and
    Cr planes (offset by 128, as JPEG stores them) of the picture as stored, then of the
    trimmed box (given at `trim_scale`), each area-averaged to CHROMA_SIDE. Averaging and
    the YCbCr transform are both linear, so shrinking RGB first changes nothing but
    rounding."""
    sx, sy = colour.width / trim_scale[0], colour.height / trim_scale[1]
    boxes = [None] + ([None] if box is None else [(box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)])
    out = []
    for region in boxes:
        small = colour.resize((CHROMA_SIDE, CHROMA_SIDE), Image.Resampling.BOX, box=region)
        planes = np.asarray(small if small.mode == "YCbCr" else small.convert("YCbCr"))[..., 1:]
        out.append(np.ascontiguousarray(planes.transpose(2, 0, 1)).tobytes())
    return b"".join(out)


class Thumbnails(NamedTuple):
    """A thumbnail blob read back."""

    grey: np.ndarray  # (2, 16, 16): as stored, trimmed
    chroma: np.ndarray | None  # (2, 2, 8, 8): view, Cb/Cr; None for a blob without colour
    log_aspect: np.ndarray | None  # (2,): log2(width / height) of the two views


def unpack_thumbnails(blob: bytes) -> Thumbnails | None:
    """The views a `thumbnails` blob (or a grey-only one) holds; None for any other length."""
    if len(blob) not in (GREY_THUMBNAIL_BYTES, THUMBNAIL_BYTES):
        return None
    raw = np.frombuffer(blob, dtype=np.uint8)
    grey = raw[:GREY_THUMBNAIL_BYTES].reshape(2, THUMB_SIDE, THUMB_SIDE).astype(np.float64)
    if len(blob) == GREY_THUMBNAIL_BYTES:
        return Thumbnails(grey, None, None)
    chroma_end = GREY_THUMBNAIL_BYTES + CHROMA_BYTES
    chroma = raw[GREY_THUMBNAIL_BYTES:chroma_end].reshape(2, 2, CHROMA_SIDE, CHROMA_SIDE).astype(np.float64) - 128.0
    log_aspect = (raw[chroma_end:].astype(np.float64) - 128.0) / ASPECT_STEPS_PER_OCTAVE
    return Thumbnails(grey, chroma, log_aspect)
