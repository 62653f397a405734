"""The human review workflow as data and rules: what a person may change about a
decision, and the audit entry each change leaves.

A reviewer resolves an open `review` as `duplicate` (of a kept image) or `distinct`, and
may overrule a `duplicate` as `distinct`; the last change of an image can be undone. An
image that ends `distinct` is stored as `accepted`, so it is a match target from then on.
Pure: the index applies a `Change` atomically and keeps the log.
"""

from __future__ import annotations

import enum
import json
import time
from dataclasses import asdict, dataclass
from typing import Any

from imgdedup.decisions.rules import KEPT_VERDICTS, Verdict
from imgdedup.errors import InputError


class ReviewConflict(InputError, code="conflict", http_status=409):
    """The change does not apply to the image's current decision (it changed meanwhile,
    or the transition is not one a reviewer may make)."""


class InvalidResolution(InputError, code="invalid_resolution", http_status=400):
    """A resolution request that names no valid outcome."""


class Outcome(enum.StrEnum):
    """What a reviewer says about an image."""

    DUPLICATE = "duplicate"
    DISTINCT = "distinct"


#: The verdict an image is stored with after each outcome.
STORED_VERDICT = {Outcome.DUPLICATE: Verdict.DUPLICATE, Outcome.DISTINCT: Verdict.ACCEPTED}
#: Longest reason kept in the audit log.
MAX_REASON_CHARS = 500


@dataclass(frozen=True, slots=True)
class Change:
    """One audit entry: who changed which decision, when, from what to what, and why."""

    image_id: str
    by: str
    at: float
    from_verdict: Verdict
    from_duplicate_of: str | None
    to_verdict: Verdict
    to_duplicate_of: str | None
    reason: str = ""
    #: True for an undo of the change before it.
    undo: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> Change:
        data: dict[str, Any] = json.loads(raw)
        data["from_verdict"] = Verdict(data["from_verdict"])
        data["to_verdict"] = Verdict(data["to_verdict"])
        return cls(**data)

    @property
    def reindexes(self) -> bool:
        """The image becomes a match target again (not kept before, kept after)."""
        return self.to_verdict in KEPT_VERDICTS and self.from_verdict not in KEPT_VERDICTS

    @property
    def unindexes(self) -> bool:
        return self.from_verdict in KEPT_VERDICTS and self.to_verdict not in KEPT_VERDICTS


def plan(
    image_id: str,
    current_verdict: Verdict,
    current_duplicate_of: str | None,
    outcome: Outcome,
    duplicate_of: str | None,
    *,
    by: str,
    reason: str = "",
) -> Change:
    """The change that resolves an image as `outcome`, or `ReviewConflict` when a
    reviewer may not make it from the image's current decision."""
    if outcome is Outcome.DUPLICATE:
        if current_verdict is not Verdict.REVIEW:
            raise ReviewConflict(
                f"image {image_id!r} is {current_verdict.value!r}: only a 'review' can be resolved as duplicate"
            )
        target = duplicate_of or current_duplicate_of
        if not target:
            raise InvalidResolution("a duplicate resolution needs duplicate_of")
        if target == image_id:
            raise InvalidResolution("an image cannot be a duplicate of itself")
    else:
        if current_verdict not in (Verdict.REVIEW, Verdict.DUPLICATE):
            raise ReviewConflict(
                f"image {image_id!r} is {current_verdict.value!r}: only a 'review' or a "
                "'duplicate' can be resolved as distinct"
            )
        if duplicate_of:
            raise InvalidResolution("a distinct resolution takes no duplicate_of")
        target = None
    return Change(
        image_id=image_id,
        by=by,
        at=time.time(),
        from_verdict=current_verdict,
        from_duplicate_of=current_duplicate_of,
        to_verdict=STORED_VERDICT[outcome],
        to_duplicate_of=target,
        reason=reason[:MAX_REASON_CHARS],
    )


def plan_undo(
    last: Change | None, current_verdict: Verdict, current_duplicate_of: str | None, *, by: str, reason: str = ""
) -> Change:
    """The change that takes back `last` (the image's latest change), if the image is
    still as `last` left it."""
    if last is None or last.undo:
        raise ReviewConflict("image has no change to undo")
    if (current_verdict, current_duplicate_of) != (last.to_verdict, last.to_duplicate_of):
        raise ReviewConflict("the image changed since its last review; nothing undone")
    return Change(
        image_id=last.image_id,
        by=by,
        at=time.time(),
        from_verdict=current_verdict,
        from_duplicate_of=current_duplicate_of,
        to_verdict=last.from_verdict,
        to_duplicate_of=last.from_duplicate_of,
        reason=reason[:MAX_REASON_CHARS],
        undo=True,
    )


@dataclass(frozen=True, slots=True)
class ReviewItem:
    """An open review as the queue lists it (the record holds the decision)."""

    image_id: str
    seq: int
    source_uri: str | None


@dataclass(frozen=True, slots=True)
class NamespaceStats:
    counts: dict[str, int]
    #: Images that are match targets (kept).
    indexed: int
    open_reviews: int


@dataclass(frozen=True, slots=True)
class Erasure:
    """What erasing a tenant removed."""

    images: int
    keys: int
