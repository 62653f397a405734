"""The verdict rules, as pure functions of what the index found.

Kept images (verdict `accepted` or `review`) are the ones an upload pipeline stores, so
they are the ones indexed and matched against. A `duplicate` is recorded (for replay
and for "duplicates of X") but never becomes a match target itself: it was not stored.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Verdict(enum.StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REVIEW = "review"
    REJECTED = "rejected"


class CheckVerdict(enum.StrEnum):
    UNIQUE = "unique"
    DUPLICATE = "duplicate"
    REVIEW = "review"


class MatchKind(enum.StrEnum):
    EXACT = "exact"
    NEAR = "near"


KEPT_VERDICTS = frozenset({Verdict.ACCEPTED, Verdict.REVIEW})


@dataclass(frozen=True, slots=True)
class Candidate:
    """A kept image the index found for a query."""

    image_id: str
    seq: int  # registration order within the namespace: smaller = registered earlier
    distance: int
    match: MatchKind


@dataclass(frozen=True, slots=True)
class Lookup:
    """Everything the index saw for one query, nearest first."""

    candidates: tuple[Candidate, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class Policy:
    duplicate_radius: int
    review_radius: int

    def __post_init__(self) -> None:
        if not 0 <= self.duplicate_radius <= self.review_radius:
            raise ValueError("need 0 <= duplicate_radius <= review_radius")


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    duplicate_of: str | None = None
    distance: int | None = None
    match: MatchKind | None = None

    @property
    def kept(self) -> bool:
        return self.verdict in KEPT_VERDICTS


def sort_candidates(candidates: list[Candidate]) -> tuple[Candidate, ...]:
    """Exact first, then nearest, then earliest registered."""
    return tuple(
        sorted(candidates, key=lambda c: (c.match != MatchKind.EXACT, c.distance, c.seq))
    )


def decide(lookup: Lookup, policy: Policy) -> Decision:
    """Verdict for registering an image, given the kept images near it.

    An exact byte match wins. Otherwise `duplicate_of` is the *earliest registered*
    image within the duplicate radius (the original, not merely the closest copy), and
    failing that the earliest within the review radius.
    """
    exact = [c for c in lookup.candidates if c.match == MatchKind.EXACT]
    if exact:
        first = min(exact, key=lambda c: c.seq)
        return Decision(Verdict.DUPLICATE, first.image_id, 0, MatchKind.EXACT)
    for radius, verdict in (
        (policy.duplicate_radius, Verdict.DUPLICATE),
        (policy.review_radius, Verdict.REVIEW),
    ):
        within = [c for c in lookup.candidates if c.distance <= radius]
        if within:
            first = min(within, key=lambda c: c.seq)
            return Decision(verdict, first.image_id, first.distance, MatchKind.NEAR)
    return Decision(Verdict.ACCEPTED)


def check(lookup: Lookup, policy: Policy) -> tuple[CheckVerdict, tuple[Candidate, ...]]:
    """Verdict for a dry-run check, and the matches within the review radius, nearest first."""
    matches = sort_candidates(
        [c for c in lookup.candidates if c.match == MatchKind.EXACT or c.distance <= policy.review_radius]
    )
    decision = decide(Lookup(matches), policy)
    verdict = {
        Verdict.ACCEPTED: CheckVerdict.UNIQUE,
        Verdict.DUPLICATE: CheckVerdict.DUPLICATE,
        Verdict.REVIEW: CheckVerdict.REVIEW,
    }[decision.verdict]
    return verdict, matches
