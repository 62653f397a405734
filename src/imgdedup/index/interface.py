"""The index contract both backends implement.

`register` takes the pure decision function and runs it inside the backend's atomic
section, so that first-wins is enforced where the data lives: in-process under a lock,
in Redis by the sequence-ordered insert-then-verify protocol (docs/design.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from imgdedup.decisions.rules import Candidate, Decision, Lookup, MatchKind, sort_candidates
from imgdedup.errors import ImageIdConflict
from imgdedup.fingerprint import Fingerprint
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
