"""The soak's verifier (`imgdedup bench soak`): what it accepts and each way it fails."""

from __future__ import annotations

from dataclasses import dataclass

from imgdedup_devtools.bench.soak_verify import PartitionEnd, verify


@dataclass(frozen=True)
class Up:
    image_id: str
    family: int


@dataclass(frozen=True)
class Dec:
    event_id: str
    verdict: str
    duplicate_of: str = ""
    replayed: bool = False

    @property
    def image_id(self) -> str:
        return self.event_id


UPLOADS = [Up("a1", 1), Up("a2", 1), Up("a3", 1), Up("b1", 2), Up("b2", 2)]
GOOD = [Dec("a2", "accepted"), Dec("a1", "duplicate", "a2"), Dec("a3", "duplicate", "a2"),
        Dec("b1", "accepted"), Dec("b2", "duplicate", "b1")]
DONE = {0: PartitionEnd(3, 3), 1: PartitionEnd(2, 2)}


def test_a_clean_run_passes_and_counts_redeliveries() -> None:
    redelivered = [*GOOD, Dec("a1", "duplicate", "a2", replayed=True)]
    checks = verify(UPLOADS, redelivered, 0, DONE)
    assert checks["ok"], checks["problems"]
    assert (checks["decided"], checks["decisions_read"], checks["redelivered"], checks["replayed"]) == (5, 6, 1, 1)
    assert checks["accepted_per_family"] == {"1": 2}


def test_each_broken_promise_is_reported() -> None:
    cases = {
        "no decision": (GOOD[:-1], 0, DONE),
        "differently on redelivery": ([*GOOD, Dec("a1", "accepted")], 0, DONE),
        "exactly one accepted": ([GOOD[0], Dec("a1", "accepted"), *GOOD[2:]], 0, DONE),  # a1 and a2
        "not a duplicate of": ([*GOOD[:2], Dec("a3", "duplicate", "b1"), *GOOD[3:]], 0, DONE),
        "never produced": ([*GOOD, Dec("zz", "accepted")], 0, DONE),
        "dead-letter": (GOOD, 1, DONE),
        "not committed to their end": (GOOD, 0, {0: PartitionEnd(3, 3), 1: PartitionEnd(1, 2)}),
    }
    for needle, (decisions, dead, partitions) in cases.items():
        checks = verify(UPLOADS, decisions, dead, partitions)
        assert not checks["ok"], needle
        assert any(needle in p for p in checks["problems"]), (needle, checks["problems"])
    rejected = [Dec("a2", "accepted"), Dec("a1", "duplicate", "a2"), Dec("a3", "rejected"), *GOOD[3:]]
    checks = verify(UPLOADS, rejected, 0, DONE)
    assert checks["rejected"] == 1 and not checks["ok"]
