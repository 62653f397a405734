"""How records and state entries are stored in Redis: compact, versioned binary values.

A record (`P:{ns}:rec:<image_id>`) is version byte 0x01 then struct-packed fields; the
JSON of earlier versions (first byte `{`) is still read, so a namespace written by an
older release needs no migration. Layout of version 1 (integers little-endian, `uv` an
unsigned LEB128 varint, `str` a uv length then UTF-8):

    u8   version (1)
    u8   verdict (index into VERDICTS)
    u8   flags: 1 duplicate_of, 2 distance, 4 match, 8 match is near, 16 event_id,
         32 similarity, 64 thumbnail deflated
    uv   seq
    f64  created_at
    uv   width, uv height, uv size_bytes
    str  format
    32 B sha256
    str  image_id
    [str duplicate_of] [u8 distance] [f64 similarity] [str event_id]
    uv   count, then count x u64 codes
    uv   count, then count x u64 window codes
    uv   length, then the thumbnails (raw deflate of them when flag 64)
    ...  fields a later version appends: ignored, so records survive a rollback

The namespace is the key's, not stored. Thumbnails are deflated only when that is
smaller; inflating gives the exact bytes back, so decisions read what was written.

A kept image's state entry (`P:{ns}:state` seq -> value) is 0x01, the 32-byte SHA-256,
then the image_id; the text form `K|<sha hex>|<image_id>` of earlier versions is still
read. Pending entries stay text (`P|lease_ms|sha|image_id`): the insert script writes
them and they live only while a registration is decided.
"""

from __future__ import annotations

import struct
import zlib

from imgdedup.decisions.rules import MatchKind, Verdict
from imgdedup.records import ImageRecord

RECORD_VERSION = 1
VERDICTS: tuple[Verdict, ...] = (Verdict.ACCEPTED, Verdict.DUPLICATE, Verdict.REVIEW, Verdict.REJECTED)
_VERDICT_INDEX = {v: i for i, v in enumerate(VERDICTS)}

_DUPLICATE_OF = 1
_DISTANCE = 2
_MATCH = 4
_NEAR = 8
_EVENT_ID = 16
_SIMILARITY = 32
_DEFLATED = 64

_F64 = struct.Struct("<d")
_HEAD = struct.Struct("<BBB")

#: First byte of a binary kept state entry (text ones start with "K|" or "P|").
KEPT_STATE_TAG = b"\x01"


class CorruptValue(ValueError):
    """A stored value that is not in any format this version reads."""


# --- varints ---------------------------------------------------------------------------
def _uv(value: int) -> bytes:
    if value < 0:
        raise ValueError("varints are unsigned")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _str(text: str) -> bytes:
    data = text.encode()
    return _uv(len(data)) + data


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self._data):
            raise CorruptValue("stored record is truncated")
        out = self._data[self.pos : end]
        self.pos = end
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def uv(self) -> int:
        value = shift = 0
        while True:
            byte = self.u8()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift > 70:
                raise CorruptValue("stored record has an overlong varint")

    def f64(self) -> float:
        return float(_F64.unpack(self.take(8))[0])

    def text(self) -> str:
        return self.take(self.uv()).decode()

    def codes(self) -> tuple[int, ...]:
        n = self.uv()
        return struct.unpack(f"<{n}Q", self.take(8 * n))


# --- records ---------------------------------------------------------------------------
def _deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    return packer.compress(data) + packer.flush()


def encode_record(record: ImageRecord) -> bytes:
    """The stored form of `record` (its namespace excepted)."""
    flags = 0
    tail = bytearray()
    if record.duplicate_of is not None:
        flags |= _DUPLICATE_OF
        tail += _str(record.duplicate_of)
    if record.distance is not None:
        flags |= _DISTANCE
        tail.append(record.distance)
    if record.match is not None:
        flags |= _MATCH | (_NEAR if record.match is MatchKind.NEAR else 0)
    if record.similarity is not None:
        flags |= _SIMILARITY
        tail += _F64.pack(record.similarity)
    if record.event_id is not None:
        flags |= _EVENT_ID
        tail += _str(record.event_id)
    thumbnail = record.thumbnail
    if thumbnail:
        deflated = _deflate(thumbnail)
        if len(deflated) < len(thumbnail):
            flags |= _DEFLATED
            thumbnail = deflated
    sha = bytes.fromhex(record.sha256)
    if len(sha) != 32:
        raise ValueError("sha256 must be 64 hex digits")
    return b"".join(
        (
            _HEAD.pack(RECORD_VERSION, _VERDICT_INDEX[record.verdict], flags),
            _uv(record.seq),
            _F64.pack(record.created_at),
            _uv(record.width),
            _uv(record.height),
            _uv(record.size_bytes),
            _str(record.format),
            sha,
            _str(record.image_id),
            bytes(tail),
            _uv(len(record.codes)),
            struct.pack(f"<{len(record.codes)}Q", *record.codes),
            _uv(len(record.window_codes)),
            struct.pack(f"<{len(record.window_codes)}Q", *record.window_codes),
            _uv(len(thumbnail)),
            thumbnail,
        )
    )


def _is_json(raw: bytes) -> bool:
    return raw[:1] == b"{"


def decode_record(raw: bytes | str, namespace: str) -> ImageRecord:
    """A stored record, binary or the JSON of earlier versions."""
    data = raw.encode() if isinstance(raw, str) else raw
    if _is_json(data):
        return ImageRecord.from_json(data)
    r = _Reader(data)
    version, verdict, flags = _HEAD.unpack(r.take(_HEAD.size))
    if version < RECORD_VERSION:
        raise CorruptValue(f"stored record has unknown version {version}")
    seq = r.uv()
    created_at = r.f64()
    width, height, size_bytes = r.uv(), r.uv(), r.uv()
    fmt = r.text()
    sha = r.take(32).hex()
    image_id = r.text()
    duplicate_of = r.text() if flags & _DUPLICATE_OF else None
    distance = r.u8() if flags & _DISTANCE else None
    similarity = r.f64() if flags & _SIMILARITY else None
    event_id = r.text() if flags & _EVENT_ID else None
    codes = r.codes()
    window_codes = r.codes()
    thumbnail = _thumbnail(r, flags)
    match = (MatchKind.NEAR if flags & _NEAR else MatchKind.EXACT) if flags & _MATCH else None
    return ImageRecord(
        namespace=namespace, image_id=image_id, verdict=VERDICTS[verdict], duplicate_of=duplicate_of,
        distance=distance, match=match, sha256=sha, codes=codes, seq=seq, created_at=created_at,
        width=width, height=height, format=fmt, size_bytes=size_bytes, event_id=event_id,
        window_codes=window_codes, thumbnail=thumbnail, similarity=similarity,
    )


def _thumbnail(r: _Reader, flags: int) -> bytes:
    stored = r.take(r.uv())
    if not flags & _DEFLATED:
        return stored
    try:
        return zlib.decompress(stored, -15)
    except zlib.error as exc:
        raise CorruptValue("stored thumbnails do not inflate") from exc


def thumbnail_of(raw: bytes | str) -> bytes:
    """Only the verification thumbnails of a stored record (what a candidate needs)."""
    data = raw.encode() if isinstance(raw, str) else raw
    if _is_json(data):
        return ImageRecord.thumbnail_from_json(data)
    return decode_record(data, "").thumbnail


# --- state entries ---------------------------------------------------------------------
def kept_state(sha256_hex: str, image_id: str) -> bytes:
    """A kept image's state entry."""
    return KEPT_STATE_TAG + bytes.fromhex(sha256_hex) + image_id.encode()
