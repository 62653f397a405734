"""Image bytes -> `Fingerprint`: the exact tier (SHA-256 of the bytes) and the near tier
(perceptual codes of the decoded picture). Pure: no I/O, no globals, safe in worker
processes."""

from __future__ import annotations

import hashlib

from imgdedup.errors import EmptyImage, ImageTooLarge
from imgdedup.fingerprint.codes import perceptual_codes
from imgdedup.fingerprint.decode import decode_for_hashing
from imgdedup.fingerprint.model import Fingerprint, ImageLimits


def fingerprint(data: bytes, limits: ImageLimits) -> Fingerprint:
    """Hash one image. Raises an `InputError` subclass for anything we must refuse."""
    if not data:
        raise EmptyImage("the image body is empty")
    if len(data) > limits.max_bytes:
        raise ImageTooLarge(
            f"image is {len(data)} bytes; the limit is {limits.max_bytes} bytes"
        )
    sha = hashlib.sha256(data).digest()
    picture, fmt, (width, height) = decode_for_hashing(data, limits.max_pixels)
    codes = perceptual_codes(
        picture.gray, colour=picture.colour, windows=limits.crop_windows, rotations=limits.rotations
    )
    return Fingerprint(
        sha256=sha, codes=codes.whole, width=width, height=height, format=fmt,
        size_bytes=len(data), window_codes=codes.windows, rotated_codes=codes.rotated,
        thumbnail=codes.thumbnail,
    )
