"""The index contract both backends implement, and the record they store.

The interface is small on purpose: `register` (atomic decide-and-add), `lookup`
(read-only query), `get`, `remove`, `duplicates_of`. `register` takes the *pure*
decision function and runs it inside the backend's atomic section, so that the
first-wins rule is enforced where the data lives: in-process by a lock, in Redis by an
optimistic WATCH/MULTI transaction over every bucket the query read.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol

from ..decisions import Candidate, Decision, Lookup, MatchKind, Verdict, sort_candidates
from ..errors import InputError, InvalidIdentifier
from ..hashing import Fingerprint, code_hex

NAMESPACE_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_IMAGE_ID_LENGTH = 512

DecideFn = Callable[[Lookup], Decision]


class ImageIdConflict(InputError):
    """The image_id is already registered with different bytes."""

    code = "image_id_conflict"
    http_status = 409


def validate_namespace(namespace: str) -> str:
    if not NAMESPACE_RE.fullmatch(namespace):
        raise InvalidIdentifier(
            f"namespace {namespace!r} must be 1-64 characters of A-Z a-z 0-9 _ . -"
        )
    return namespace


def validate_image_id(image_id: str) -> str:
    if not image_id or len(image_id) > MAX_IMAGE_ID_LENGTH:
        raise InvalidIdentifier(f"image_id must be 1-{MAX_IMAGE_ID_LENGTH} characters")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in image_id):
        raise InvalidIdentifier("image_id must not contain control characters")
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
    #: duplicates (never matched against) and records of older versions.
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
            window_codes=fingerprint.window_codes,
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


class DedupIndex(Protocol):
    """Near-duplicate index over kept images, partitioned by namespace."""

    backend: str

    async def register(
        self,
        namespace: str,
        image_id: str,
        fingerprint: Fingerprint,
        decide: DecideFn,
        *,
        radius: int,
        event_id: str | None = None,
    ) -> Registration:
        """Atomically: replay a stored decision, or look up, decide, and record.

        Concurrent registrations of near-duplicates (within `radius`) are serialised:
        each sees the ones that committed before it, so exactly one is accepted.
        """
        ...

    async def lookup(self, namespace: str, fingerprint: Fingerprint, *, radius: int) -> Lookup:
        """Kept images that match exactly or within `radius`, without registering."""
        ...

    async def query(self, namespace: str, code: int, *, radius: int) -> list[tuple[str, int]]:
        """Raw radius query on one code: [(image_id, distance)], nearest first."""
        ...

    async def get(self, namespace: str, image_id: str) -> ImageRecord | None: ...

    async def remove(self, namespace: str, image_id: str) -> bool:
        """Forget an image: its codes leave the index. False if it was unknown."""
        ...

    async def duplicates_of(self, namespace: str, image_id: str) -> list[ImageRecord]:
        """Records judged `duplicate` or `review` of `image_id`, in registration order."""
        ...

    async def ping(self) -> None:
        """Raise if the backing store is unreachable."""
        ...

    async def close(self) -> None: ...


def candidates_from(
    exact_id: tuple[str, int] | None,
    near: dict[int, int],
    seq_to_id: dict[int, str],
    thumbnail_of: Callable[[str], bytes] = lambda _image_id: b"",
) -> Lookup:
    """Assemble a Lookup from raw scan results (the in-memory backend)."""
    out: list[Candidate] = []
    if exact_id is not None:
        out.append(Candidate(exact_id[0], exact_id[1], 0, MatchKind.EXACT))
    for seq, distance in near.items():
        image_id = seq_to_id.get(seq)
        if image_id is None or (exact_id is not None and seq == exact_id[1]):
            continue
        out.append(Candidate(image_id, seq, distance, MatchKind.NEAR, thumbnail_of(image_id)))
    return Lookup(sort_candidates(out))
