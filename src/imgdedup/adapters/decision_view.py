"""The outward view of a decision: the fields every client is told, whatever the wire.

HTTP response bodies and Kafka decision events are both built from `decision_view`, so
the two cannot disagree on what a decision says.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict

from imgdedup.fingerprint import code_hex
from imgdedup.records import ImageRecord


class DecisionView(TypedDict):
    """A decision in wire-neutral values (None: no value), in the order HTTP bodies list them."""

    image_id: str
    namespace: str
    verdict: str
    duplicate_of: str | None
    distance: int | None
    match: str | None
    similarity: float | None
    #: Told only in answer to a registration: the stored decision was repeated.
    replayed: NotRequired[bool]
    sha256: str
    phashes: list[str]


class _Replay(TypedDict, total=False):
    replayed: bool


def decision_view(record: ImageRecord, *, replayed: bool | None = None) -> DecisionView:
    """The view of a stored decision; `replayed` is given when it answers a registration."""
    replay: _Replay = {} if replayed is None else {"replayed": replayed}
    return {
        "image_id": record.image_id,
        "namespace": record.namespace,
        "verdict": record.verdict.value,
        "duplicate_of": record.duplicate_of,
        "distance": record.distance,
        "match": record.match.value if record.match else None,
        "similarity": record.similarity,
        **replay,
        "sha256": record.sha256,
        "phashes": [code_hex(c) for c in record.codes],
    }
