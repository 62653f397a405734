"""The soak's verdict on what the decisions topic and the dead-letter topic hold: every
event decided, the same way on every redelivery, exactly one image accepted per family
(every other member a duplicate of it), no rejection and no dead letter, every input
partition committed to its end. Pure: no broker, no service."""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


class Decided(Protocol):
    """What the verifier reads of a DedupDecision."""

    event_id: str
    image_id: str
    verdict: str
    duplicate_of: str
    replayed: bool


class Member(Protocol):
    """What the verifier reads of an upload: its event/image id and its family."""

    @property
    def image_id(self) -> str: ...

    @property
    def family(self) -> int: ...


@dataclass(frozen=True)
class PartitionEnd:
    committed: int  # the group's committed offset (-1: none)
    end: int  # the partition's end offset (high watermark)


def verify(
    uploads: Sequence[Member],
    decisions: Iterable[Decided],
    dead_letters: int,
    partitions: Mapping[int, PartitionEnd],
) -> dict[str, Any]:
    by_event: dict[str, list[Decided]] = collections.defaultdict(list)
    read = 0
    for d in decisions:
        by_event[d.event_id].append(d)
        read += 1
    known = {u.image_id for u in uploads}
    problems: list[str] = []
    missing = [u.image_id for u in uploads if u.image_id not in by_event]
    if missing:
        problems.append(f"{len(missing)} events have no decision, e.g. {missing[:3]}")
    unknown = [e for e in by_event if e not in known]
    if unknown:
        problems.append(f"{len(unknown)} decisions for events never produced, e.g. {unknown[:3]}")
    inconsistent = [e for e, seen in by_event.items() if len({(d.verdict, d.duplicate_of) for d in seen}) > 1]
    if inconsistent:
        problems.append(f"{len(inconsistent)} events decided differently on redelivery, e.g. {inconsistent[:3]}")
    final = {e: seen[0] for e, seen in by_event.items() if e in known}
    rejected = sum(1 for d in final.values() if d.verdict == "rejected")
    if rejected:
        problems.append(f"{rejected} events rejected")
    if dead_letters:
        problems.append(f"{dead_letters} records on the dead-letter topic")

    families: dict[int, list[Member]] = collections.defaultdict(list)
    for u in uploads:
        families[u.family].append(u)
    accepted_per_family: collections.Counter[int] = collections.Counter()
    wrong_duplicates = 0
    for members in families.values():
        decided = [(u, final[u.image_id]) for u in members if u.image_id in final]
        winners = [u.image_id for u, d in decided if d.verdict == "accepted"]
        accepted_per_family[len(winners)] += 1
        if len(winners) != 1:
            continue
        for u, d in decided:
            if u.image_id != winners[0] and (d.verdict != "duplicate" or d.duplicate_of != winners[0]):
                wrong_duplicates += 1
    bad_families = sum(n for count, n in accepted_per_family.items() if count != 1)
    if bad_families:
        problems.append(f"{bad_families} families without exactly one accepted image: {dict(accepted_per_family)}")
    if wrong_duplicates:
        problems.append(f"{wrong_duplicates} family members not a duplicate of their family's accepted image")

    behind = {p: e for p, e in partitions.items() if e.committed != e.end}
    if behind:
        problems.append("input partitions not committed to their end (partition: committed/end): "
                        + ", ".join(f"{p}: {e.committed}/{e.end}" for p, e in sorted(behind.items())))
    return {
        "events": len(uploads), "decided": len(final), "decisions_read": read,
        "redelivered": read - len(by_event), "replayed": sum(1 for seen in by_event.values() for d in seen if d.replayed),
        "verdicts": dict(collections.Counter(d.verdict for d in final.values())),
        "families": len(families), "accepted_per_family": {str(k): v for k, v in sorted(accepted_per_family.items())},
        "missing": len(missing), "inconsistent": len(inconsistent), "rejected": rejected,
        "dead_letters": dead_letters, "wrong_duplicates": wrong_duplicates,
        "partitions_behind": len(behind), "ok": not problems, "problems": problems,
    }
