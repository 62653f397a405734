"""What the API answers, as typed values (one dataclass per response schema of
/openapi.json). Parsed leniently: fields a newer service adds are ignored."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) and value else None


def _opt_int(value: Any) -> int | None:
    return int(value) if value is not None else None


def _opt_float(value: Any) -> float | None:
    return float(value) if value is not None else None


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to a registration: `accepted`, `duplicate` (of `duplicate_of`) or
    `review`. `replayed` is true when the image id was already registered with the same
    bytes and the stored decision was returned (a retried upload)."""

    image_id: str
    namespace: str
    verdict: str
    duplicate_of: str | None
    distance: int | None
    match: str | None  # "exact" (same bytes) or "near"
    similarity: float | None
    replayed: bool
    sha256: str
    phashes: tuple[str, ...]
    width: int
    height: int
    format: str
    created_at: datetime | None

    @property
    def is_duplicate(self) -> bool:
        return self.verdict == "duplicate"

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Decision:
        return cls(
            image_id=body["image_id"], namespace=body["namespace"], verdict=body["verdict"],
            duplicate_of=body.get("duplicate_of"), distance=_opt_int(body.get("distance")),
            match=body.get("match"), similarity=_opt_float(body.get("similarity")),
            replayed=bool(body.get("replayed", False)), sha256=body.get("sha256", ""),
            phashes=tuple(body.get("phashes", ())), width=int(body.get("width", 0)),
            height=int(body.get("height", 0)), format=body.get("format", ""),
            created_at=_time(body.get("created_at")),
        )


@dataclass(frozen=True, slots=True)
class Match:
    image_id: str
    distance: int
    match: str

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Match:
        return cls(body["image_id"], int(body["distance"]), body["match"])


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The answer to a check (nothing registered): `unique`, `duplicate` or `review`,
    with the nearest registered images first."""

    namespace: str
    verdict: str
    duplicate_of: str | None
    similarity: float | None
    matches: tuple[Match, ...]
    sha256: str
    phashes: tuple[str, ...]

    @property
    def is_duplicate(self) -> bool:
        return self.verdict == "duplicate"

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> CheckResult:
        return cls(
            namespace=body["namespace"], verdict=body["verdict"],
            duplicate_of=body.get("duplicate_of"), similarity=_opt_float(body.get("similarity")),
            matches=tuple(Match.from_json(m) for m in body.get("matches", ())),
            sha256=body.get("sha256", ""), phashes=tuple(body.get("phashes", ())),
        )


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """What the service stores about a registered image (never its bytes)."""

    image_id: str
    namespace: str
    verdict: str
    duplicate_of: str | None
    distance: int | None
    match: str | None
    similarity: float | None
    sha256: str
    phashes: tuple[str, ...]
    width: int
    height: int
    format: str
    size_bytes: int
    created_at: datetime | None
    event_id: str | None

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ImageRecord:
        return cls(
            image_id=body["image_id"], namespace=body["namespace"], verdict=body["verdict"],
            duplicate_of=body.get("duplicate_of"), distance=_opt_int(body.get("distance")),
            match=body.get("match"), similarity=_opt_float(body.get("similarity")),
            sha256=body.get("sha256", ""), phashes=tuple(body.get("phashes", ())),
            width=int(body.get("width", 0)), height=int(body.get("height", 0)),
            format=body.get("format", ""), size_bytes=int(body.get("size_bytes", 0)),
            created_at=_time(body.get("created_at")), event_id=body.get("event_id"),
        )


@dataclass(frozen=True, slots=True)
class DuplicateEntry:
    image_id: str
    verdict: str  # "duplicate" or "review"
    distance: int
    match: str
    created_at: datetime | None

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> DuplicateEntry:
        return cls(body["image_id"], body["verdict"], int(body["distance"]), body["match"],
                   _time(body.get("created_at")))


@dataclass(frozen=True, slots=True)
class Duplicates:
    image_id: str
    namespace: str
    duplicates: tuple[DuplicateEntry, ...]

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Duplicates:
        return cls(body["image_id"], body["namespace"],
                   tuple(DuplicateEntry.from_json(d) for d in body.get("duplicates", ())))
