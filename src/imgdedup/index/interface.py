"""The index contract both backends implement.

`register` takes the pure decision function and runs it inside the backend's atomic
section, so that first-wins is enforced where the data lives: in-process under a lock,
in Redis by the sequence-ordered insert-then-verify protocol (docs/design.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Protocol

from imgdedup.decisions.review import Change, Erasure, NamespaceStats, ReviewConflict, ReviewItem
from imgdedup.decisions.rules import Candidate, Decision, Lookup, MatchKind, sort_candidates
from imgdedup.errors import ImageIdConflict
from imgdedup.fingerprint import Fingerprint, hamming
from imgdedup.records import ImageRecord, Registration

DecideFn = Callable[[Lookup], Decision]


class DedupIndex(Protocol):
    """Near-duplicate index over kept images, partitioned by namespace."""

    backend: str

    async def register(
        self, namespace: str, image_id: str, fingerprint: Fingerprint, decide: DecideFn, *,
        radius: int, event_id: str | None = None,
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

    # --- review workflow and tenant operations -----------------------------------------
    async def note_review(self, namespace: str, image_id: str, seq: int, source_uri: str | None) -> None:
        """Put a `review` decision in the namespace's queue (idempotent), with where the
        image came from when the upload said."""
        ...

    async def reviews(
        self, namespace: str, *, after: int, limit: int
    ) -> list[tuple[ImageRecord, ReviewItem]]:
        """Open reviews with a seq above `after`, oldest first, at most `limit`."""
        ...

    async def source_uris(self, namespace: str, image_ids: list[str]) -> dict[str, str]:
        """The source URIs known for these images (only those that have one)."""
        ...

    async def apply_change(self, namespace: str, change: Change, expected: ImageRecord) -> ImageRecord:
        """Atomically: if the image's record is still `expected` (and a duplicate's
        target is kept), store the changed decision, move the image in or out of the index
        and the review queue, and append `change` to its audit log. An image that becomes
        kept takes a new seq, so registrations after it are judged against it and those
        before it are not: first-wins stays exact. `ReviewConflict` if anything differs."""
        ...

    async def history(self, namespace: str, image_id: str) -> list[Change]:
        """The image's audit log, oldest first."""
        ...

    async def find_sha(self, namespace: str, sha256_hex: str) -> list[ImageRecord]:
        """Every image registered with these exact bytes, in registration order."""
        ...

    async def stats(self, namespace: str) -> NamespaceStats:
        """Counts by verdict, the number of match targets and of open reviews."""
        ...

    async def erase(self, namespace: str) -> Erasure:
        """Delete everything stored for the namespace (records, index, queue, audit log)."""
        ...

    async def ping(self) -> None:
        """Raise if the backing store is unreachable."""
        ...

    async def close(self) -> None: ...


def replay(stored: ImageRecord, fingerprint: Fingerprint) -> Registration:
    """The stored decision of an image_id registered before; `ImageIdConflict` if it was
    registered with other bytes than `fingerprint`'s."""
    if stored.sha256 != fingerprint.sha256_hex:
        raise ImageIdConflict(
            f"image_id {stored.image_id!r} is already registered with different bytes "
            f"(sha256 {stored.sha256[:16]}...)"
        )
    return Registration(stored, replayed=True)


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


def same_decision(a: ImageRecord, b: ImageRecord) -> bool:
    """The same stored decision (what a change was planned against)."""
    return (a.seq, a.verdict, a.duplicate_of, a.sha256) == (b.seq, b.verdict, b.duplicate_of, b.sha256)


def check_change(
    change: Change, expected: ImageRecord, current: ImageRecord | None, target: ImageRecord | None
) -> None:
    """`ReviewConflict` unless the image is still as `expected` and a duplicate's target
    is a kept image other than itself."""
    if current is None or not same_decision(current, expected):
        raise ReviewConflict(f"image {change.image_id!r} changed meanwhile; read it again")
    if change.to_duplicate_of is not None and (
        target is None or not target.kept or target.image_id == change.image_id
    ):
        raise ReviewConflict(
            f"{change.to_duplicate_of!r} is not a kept image of this namespace: it cannot be the original"
        )


def changed_record(current: ImageRecord, change: Change, seq: int, target: ImageRecord | None) -> ImageRecord:
    """The record after `change`: its match facts are kept when the original stays the
    same, measured again (distance) when it is another image, and dropped when none."""
    if change.to_duplicate_of is None:
        distance, match, similarity = None, None, None
    elif change.to_duplicate_of == current.duplicate_of:
        distance, match, similarity = current.distance, current.match, current.similarity
    else:
        assert target is not None
        exact = target.sha256 == current.sha256
        distance = 0 if exact else min(hamming(a, b) for a in current.codes for b in target.indexed_codes)
        match, similarity = (MatchKind.EXACT if exact else MatchKind.NEAR), None
    return dataclasses.replace(
        current, verdict=change.to_verdict, duplicate_of=change.to_duplicate_of, distance=distance,
        match=match, similarity=similarity, seq=seq,
    )
