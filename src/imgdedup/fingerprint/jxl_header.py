"""The canvas size and orientation of a JPEG XL file, read from its header alone.

The JPEG XL decoder decodes every pixel when the file is opened, so the pixel limit
(decompression-bomb guard) must be checked before that, from the codestream's
SizeHeader (ISO/IEC 18181-1, bare codestream or inside the ISO BMFF container).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

#: A bare codestream starts with these two bytes.
CODESTREAM_SIGNATURE = b"\xff\x0a"
#: The container's first box: size 12, type "JXL ", contents 0D 0A 87 0A.
CONTAINER_SIGNATURE = b"\x00\x00\x00\x0cJXL \x0d\x0a\x87\x0a"

#: Header bytes gathered before parsing: the SizeHeader and the orientation take at
#: most 77 bits after the signature.
_HEADER_BYTES = 32

#: xsize = ysize * num // den for the SizeHeader's `ratio` values 1-7.
_RATIOS = ((1, 1), (12, 10), (4, 3), (3, 2), (16, 9), (5, 4), (2, 1))


class JxlHeader(NamedTuple):
    width: int
    height: int
    #: The codestream's orientation (1-8, EXIF numbering); decoders apply it.
    orientation: int


class JxlHeaderError(ValueError):
    """The bytes start like JPEG XL but the header cannot be read."""


def is_jxl(data: bytes) -> bool:
    return data.startswith(CODESTREAM_SIGNATURE) or data.startswith(CONTAINER_SIGNATURE)


def read_jxl_header(data: bytes) -> JxlHeader:
    """Size and orientation of a JPEG XL file (`is_jxl` true); raises JxlHeaderError."""
    codestream = data if data.startswith(CODESTREAM_SIGNATURE) else _codestream_start(data)
    if not codestream.startswith(CODESTREAM_SIGNATURE):
        raise JxlHeaderError("no JPEG XL codestream signature")
    bits = _BitReader(codestream[2:_HEADER_BYTES + 2])
    small = bits.read(1)
    if small:
        height = (bits.read(5) + 1) * 8
    else:
        height = bits.u32_size()
    ratio = bits.read(3)
    if ratio:
        num, den = _RATIOS[ratio - 1]
        width = height * num // den
    elif small:
        width = (bits.read(5) + 1) * 8
    else:
        width = bits.u32_size()
    orientation = 1
    all_default = bits.read(1)
    if not all_default and bits.read(1):  # extra_fields
        orientation = bits.read(3) + 1
    return JxlHeader(width, height, orientation)


def _codestream_start(data: bytes) -> bytes:
    """The first bytes of the codestream inside the container: a `jxlc` box, or the
    `jxlp` boxes (partial codestream, each after a 4-byte index) joined in order."""
    pos, found = len(CONTAINER_SIGNATURE), b""
    while pos + 8 <= len(data) and len(found) < _HEADER_BYTES + 2:
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            if pos + 16 > len(data):
                break
            size = struct.unpack_from(">Q", data, pos + 8)[0]
            header = 16
        elif size == 0:
            size = len(data) - pos
        if size < header:
            raise JxlHeaderError("malformed container box")
        body = data[pos + header : pos + size]
        if kind == b"jxlc":
            return body
        if kind == b"jxlp":  # other boxes (metadata, JPEG reconstruction data) may sit between
            found += body[4:]
        pos += size
    return found


class _BitReader:
    """Least-significant bit first, as JPEG XL writes its headers."""

    def __init__(self, data: bytes) -> None:
        self._value = int.from_bytes(data, "little")
        self._left = len(data) * 8

    def read(self, count: int) -> int:
        if count > self._left:
            raise JxlHeaderError("truncated JPEG XL header")
        value = self._value & ((1 << count) - 1)
        self._value >>= count
        self._left -= count
        return value

    def u32_size(self) -> int:
        """U32(BitsOffset(9, 1), BitsOffset(13, 1), BitsOffset(18, 1), BitsOffset(30, 1))."""
        return self.read((9, 13, 18, 30)[self.read(2)]) + 1
