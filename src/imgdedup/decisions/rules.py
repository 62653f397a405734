"""The verdict rules, as pure functions of what the index found.

A near candidate is a duplicate when its code is close *and* a second look at the
thumbnails agrees (`Policy.judge`). Only kept images (`accepted`, `review`), the
ones an upload pipeline stores, are match targets; a `duplicate` is recorded for replay
and listings only.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from imgdedup.fingerprint.second_look import second_look


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


class Judgement(enum.Enum):
    """What the second look makes of a near candidate."""

    COPY = "copy"  # a duplicate
    LOOK_ALIKE = "look_alike"  # uncertain: a person reviews it
    DIFFERENT = "different"  # another picture: ignored


@dataclass(frozen=True, slots=True)
class Candidate:
    """A kept image the index found for a query."""

    image_id: str
    seq: int  # registration order within the namespace: smaller = registered earlier
    distance: int
    match: MatchKind
    #: The stored verification thumbnails (`hashing.thumbnails`); empty when unknown.
    thumbnail: bytes = field(default=b"", repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Lookup:
    """Everything the index saw for one query, nearest first."""

    candidates: tuple[Candidate, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class Policy:
    duplicate_radius: int
    review_radius: int
    #: Within the duplicate radius: a similarity below this is a look-alike (review).
    min_similarity: float = 0.87
    #: Between the duplicate and the review radius: a similarity at or above this is a
    #: duplicate (a crop found through a window code, a heavier edit).
    confirm_similarity: float = 0.94
    #: The mirror/rotation mode: the second look also compares mirrored/rotated views.
    match_rotations: bool = False
    #: Below this similarity a candidate is another picture whose code met the query's by
    #: chance: ignored, not sent to review.
    distinct_similarity: float = 0.6

    def __post_init__(self) -> None:
        if not 0 <= self.duplicate_radius <= self.review_radius:
            raise ValueError("need 0 <= duplicate_radius <= review_radius")
        if not all(-1.0 <= value <= 1.0 for value in (self.min_similarity, self.confirm_similarity, self.distinct_similarity)):
            raise ValueError("similarities are correlations: need -1 <= value <= 1")
        if self.distinct_similarity > self.min_similarity:
            raise ValueError("need distinct_similarity <= min_similarity")

    def judge(self, candidate: Candidate, query_thumbnail: bytes) -> tuple[Judgement, float | None]:
        """What a near candidate is to the query, and the similarity measured.

        The second look is `fingerprint.second_look`: thumbnail correlation with colour and
        shape checks. Within the duplicate radius it only has to rule out a look-alike
        (>= `min_similarity`); between the duplicate and the review radius it has to
        confirm a copy (>= `confirm_similarity`). A candidate stored without thumbnails is
        judged by distance alone. A candidate whose views hardly correlate
        (< `distinct_similarity`) or whose dominant hue differs is another picture, not a
        look-alike for a person to review.
        """
        if candidate.distance > self.review_radius:
            return Judgement.DIFFERENT, None
        look = second_look(query_thumbnail, candidate.thumbnail, symmetries=self.match_rotations)
        sim = look.similarity
        if look.different or (sim is not None and sim < self.distinct_similarity):
            return Judgement.DIFFERENT, sim
        if look.colour is False or look.shape is False:  # alike in grey only, or of another shape
            return Judgement.LOOK_ALIKE, sim
        if sim is None:
            copy = candidate.distance <= self.duplicate_radius
        elif candidate.distance <= self.duplicate_radius:
            copy = sim >= self.min_similarity
        else:
            copy = sim >= self.confirm_similarity
        return (Judgement.COPY if copy else Judgement.LOOK_ALIKE), sim


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    duplicate_of: str | None = None
    distance: int | None = None
    match: MatchKind | None = None
    #: Thumbnail correlation with `duplicate_of` (near matches with thumbnails only).
    similarity: float | None = None

    @property
    def kept(self) -> bool:
        return self.verdict in KEPT_VERDICTS


def sort_candidates(candidates: list[Candidate]) -> tuple[Candidate, ...]:
    """Exact first, then nearest, then earliest registered."""
    return tuple(
        sorted(candidates, key=lambda c: (c.match != MatchKind.EXACT, c.distance, c.seq))
    )


def decide(lookup: Lookup, policy: Policy, query_thumbnail: bytes = b"") -> Decision:
    """Verdict for registering an image, given the kept images near it and the image's
    own verification thumbnails.

    An exact byte match wins. Otherwise `duplicate_of` is the *earliest registered*
    candidate judged a copy (the original, not merely the closest copy: see
    `Policy.judge`), and failing that the earliest look-alike within the review radius.
    """
    exact = [c for c in lookup.candidates if c.match == MatchKind.EXACT]
    if exact:
        first = min(exact, key=lambda c: c.seq)
        return Decision(Verdict.DUPLICATE, first.image_id, 0, MatchKind.EXACT)
    within = sorted((c for c in lookup.candidates if c.distance <= policy.review_radius), key=lambda c: c.seq)
    review: Decision | None = None
    for candidate in within:  # earliest first; stop at the first copy
        judgement, sim = policy.judge(candidate, query_thumbnail)
        if judgement is Judgement.COPY:
            return Decision(Verdict.DUPLICATE, candidate.image_id, candidate.distance, MatchKind.NEAR, sim)
        if judgement is Judgement.LOOK_ALIKE and review is None:
            review = Decision(Verdict.REVIEW, candidate.image_id, candidate.distance, MatchKind.NEAR, sim)
    return review or Decision(Verdict.ACCEPTED)


def check(
    lookup: Lookup, policy: Policy, query_thumbnail: bytes = b""
) -> tuple[CheckVerdict, tuple[Candidate, ...], Decision]:
    """Verdict for a dry-run check, the matches within the review radius (nearest first),
    and the decision registering would make (which match it names, and the similarity)."""
    matches = sort_candidates(
        [c for c in lookup.candidates if c.match == MatchKind.EXACT or c.distance <= policy.review_radius]
    )
    decision = decide(Lookup(matches), policy, query_thumbnail)
    verdict = {
        Verdict.ACCEPTED: CheckVerdict.UNIQUE,
        Verdict.DUPLICATE: CheckVerdict.DUPLICATE,
        Verdict.REVIEW: CheckVerdict.REVIEW,
    }[decision.verdict]
    return verdict, matches, decision
