"""The fingerprint record and the limits an image is hashed under."""

from __future__ import annotations

from dataclasses import dataclass

#: Identifies how codes are computed; stored per namespace so that codes computed by an
#: incompatible algorithm are never compared with these. Stored data: never edit it
#: without changing how codes are computed.
HASH_ALGORITHM = "phash64-dct32-trim-windows-v7"


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """What the index needs to know about one image."""

    sha256: bytes
    codes: tuple[int, ...]
    width: int
    height: int
    format: str
    size_bytes: int
    #: Codes of crop windows: stored in the index so that a later crop of this image
    #: matches, but never used to query (that would multiply the probes per query).
    window_codes: tuple[int, ...] = ()
    #: Codes of the picture mirrored and rotated (the other 7 symmetries of the square,
    #: for each whole-image code), when the rotation mode is on: query-side only, so a
    #: mirrored or rotated copy finds the stored original without growing the index.
    rotated_codes: tuple[int, ...] = ()
    #: Verification thumbnails for the second look at a candidate before it is called a
    #: duplicate (`thumbnails`, `second_look`): two 16x16 grey views (as stored, borders
    #: trimmed), their colour and aspect ratios; empty for pictures without perceptual
    #: codes.
    thumbnail: bytes = b""

    @property
    def query_codes(self) -> tuple[int, ...]:
        """The codes a lookup probes: whole-image codes, then their mirrored/rotated ones."""
        return self.codes + self.rotated_codes

    @property
    def indexed_codes(self) -> tuple[int, ...]:
        """Every code the index keeps for this image: whole-image codes, then windows
        (disjoint by construction, see `perceptual_codes`)."""
        return self.codes + self.window_codes

    @property
    def sha256_hex(self) -> str:
        return self.sha256.hex()

    @property
    def primary_code(self) -> int:
        return self.codes[0]


@dataclass(frozen=True, slots=True)
class ImageLimits:
    """What an upload may be (bytes, decoded pixels) and which optional codes it gets."""

    max_bytes: int
    max_pixels: int
    crop_windows: bool = True
    rotations: bool = False
