"""What is stored per image and how callers name it: the record, the registration
result, and the rules for namespaces and image ids."""

from __future__ import annotations

import base64
import json
import re
import time
from dataclasses import asdict, dataclass, fields
from typing import Any

from imgdedup.decisions.rules import Decision, MatchKind, Verdict
from imgdedup.errors import InvalidIdentifier
from imgdedup.fingerprint import Fingerprint, code_hex

NAMESPACE_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_IMAGE_ID_LENGTH = 512


def validate_namespace(namespace: str) -> str:
    if not NAMESPACE_RE.fullmatch(namespace):
        raise InvalidIdentifier(
            f"namespace {namespace!r} must be 1-64 characters of A-Z a-z 0-9 _ . -"
        )
    # "." and ".." are path segments that mean "here" and "up" to every URL resolver, and
    # dot-only names to many tools: a namespace must name something.
    if not namespace.strip("."):
        raise InvalidIdentifier(f"namespace {namespace!r} must not be made only of dots")
    return namespace


def validate_image_id(image_id: str) -> str:
    if not image_id or len(image_id) > MAX_IMAGE_ID_LENGTH:
        raise InvalidIdentifier(f"image_id must be 1-{MAX_IMAGE_ID_LENGTH} characters")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in image_id):
        raise InvalidIdentifier("image_id must not contain control characters")
    # As a URL path segment "." means "here" and ".." "up": the image's URL (Location)
    # would resolve to another resource. Other ids with dots are fine.
    if image_id in (".", ".."):
        raise InvalidIdentifier(f"image_id {image_id!r} is a dot segment, which URLs cannot address")
    return image_id


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """What is stored per (namespace, image_id): the decision and the hashes behind it."""

    namespace: str
    image_id: str
    verdict: Verdict
    duplicate_of: str | None
    distance: int | None
    match: MatchKind | None
    sha256: str
    codes: tuple[int, ...]
    seq: int
    created_at: float
    width: int
    height: int
    format: str
    size_bytes: int
    event_id: str | None = None
    window_codes: tuple[int, ...] = ()
    #: Verification thumbnails of a kept image (`hashing.thumbnails`); empty for
    #: duplicates (never matched against) and records stored without them.
    thumbnail: bytes = b""
    #: Thumbnail correlation with `duplicate_of`, when one was measured.
    similarity: float | None = None

    @property
    def indexed_codes(self) -> tuple[int, ...]:
        return self.codes + self.window_codes

    @property
    def kept(self) -> bool:
        return self.verdict in (Verdict.ACCEPTED, Verdict.REVIEW)

    @classmethod
    def build(
        cls,
        namespace: str,
        image_id: str,
        fingerprint: Fingerprint,
        decision: Decision,
        seq: int,
        event_id: str | None,
    ) -> ImageRecord:
        return cls(
            namespace=namespace,
            image_id=image_id,
            verdict=decision.verdict,
            duplicate_of=decision.duplicate_of,
            distance=decision.distance,
            match=decision.match,
            sha256=fingerprint.sha256_hex,
            codes=fingerprint.codes,
            seq=seq,
            created_at=time.time(),
            width=fingerprint.width,
            height=fingerprint.height,
            format=fingerprint.format,
            size_bytes=fingerprint.size_bytes,
            event_id=event_id,
            # Window codes serve only to find this image later: a duplicate is not indexed.
            window_codes=fingerprint.window_codes if decision.kept else (),
            thumbnail=fingerprint.thumbnail if decision.kept else b"",
            similarity=None if decision.similarity is None else round(decision.similarity, 4),
        )

    @property
    def decision(self) -> Decision:
        return Decision(self.verdict, self.duplicate_of, self.distance, self.match, self.similarity)

    def to_json(self) -> str:
        data = asdict(self)
        data["codes"] = [code_hex(c) for c in self.codes]
        data["window_codes"] = [code_hex(c) for c in self.window_codes]
        data["thumbnail"] = base64.b64encode(self.thumbnail).decode("ascii")
        return json.dumps(data, separators=(",", ":"))

    @staticmethod
    def thumbnail_from_json(raw: str | bytes) -> bytes:
        """Only the verification thumbnails of a stored record (what a candidate needs),
        without building the rest of it."""
        return base64.b64decode(json.loads(raw).get("thumbnail", ""))

    @classmethod
    def from_json(cls, raw: str | bytes) -> ImageRecord:
        data: dict[str, Any] = json.loads(raw)
        data["codes"] = tuple(int(c, 16) for c in data["codes"])
        data["window_codes"] = tuple(int(c, 16) for c in data.get("window_codes", ()))
        data["thumbnail"] = base64.b64decode(data.get("thumbnail", ""))
        # Fields a newer version added are ignored, so records survive a rollback.
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        data["verdict"] = Verdict(data["verdict"])
        data["match"] = MatchKind(data["match"]) if data["match"] else None
        return cls(**data)


@dataclass(frozen=True, slots=True)
class Registration:
    record: ImageRecord
    replayed: bool  # True: this image_id was decided before; the stored decision is returned
