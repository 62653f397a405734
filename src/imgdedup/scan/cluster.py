"""Clusters from the service's own decisions, keepers, and reclaimable bytes: every image
is registered into a fresh index through the path HTTP and Kafka use; clusters are the
connected components of its `duplicate` links, and `review` links (the uncertain band)
are kept apart as review groups, never counted as reclaimable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from imgdedup.decisions.deduplicator import Deduplicator
from imgdedup.decisions.rules import Verdict
from imgdedup.errors import ContentionError, InputError
from imgdedup.fingerprint import Fingerprint
from imgdedup.records import ImageRecord

#: Keeper criteria, combinable in order of priority: "resolution,oldest" keeps the
#: largest picture and, among equally large ones, the oldest. "path" (lexicographic key)
#: always ends the list, so the choice is deterministic.
KEEPER_CRITERIA = {
    "resolution": "largest width x height",
    "bytes": "largest file",
    "oldest": "earliest modified (files: mtime; S3: LastModified; URLs: unknown)",
    "newest": "latest modified",
    "path": "first path / key in lexicographic order",
}
DEFAULT_KEEPER = "resolution,oldest"


@dataclass(slots=True)
class ScannedImage:
    key: str
    uri: str
    fingerprint: Fingerprint
    modified: float | None
    physical: str | None  # "dev:inode" for local files
    link: bool = False  # a symbolic link

    @property
    def size_bytes(self) -> int:
        return self.fingerprint.size_bytes

    @property
    def pixels(self) -> int:
        return self.fingerprint.width * self.fingerprint.height

    @property
    def storage_id(self) -> str:
        return self.physical or f"key:{self.key}"


def parse_keeper(spec: str) -> tuple[str, ...]:
    criteria = [c.strip().lower() for c in spec.split(",") if c.strip()]
    unknown = [c for c in criteria if c not in KEEPER_CRITERIA]
    if unknown or not criteria:
        raise ValueError(
            f"--keeper {spec!r}: use a comma-separated list of {', '.join(KEEPER_CRITERIA)}"
        )
    if "oldest" in criteria and "newest" in criteria:
        raise ValueError("--keeper: oldest and newest contradict each other")
    if "path" not in criteria:
        criteria.append("path")
    return tuple(criteria)


def keeper_sort_key(criteria: Sequence[str]) -> Callable[[ScannedImage], tuple[Any, ...]]:
    """Sort key: the best keeper sorts first. Unknown dates sort after known ones.

    Before the path decides, a real file beats a symbolic link: a link and the file it
    points to tie on everything else, and keeping the link while deleting its target
    would leave the link dangling."""

    def key(image: ScannedImage) -> tuple[Any, ...]:
        parts: list[Any] = []
        for criterion in criteria:
            if criterion == "path":
                parts.append(image.link)
            if criterion == "resolution":
                parts.append(-image.pixels)
            elif criterion == "bytes":
                parts.append(-image.size_bytes)
            elif criterion == "oldest":
                parts.append((image.modified is None, image.modified or 0.0))
            elif criterion == "newest":
                parts.append((image.modified is None, -(image.modified or 0.0)))
            elif criterion == "path":
                parts.append(image.key)
        return tuple(parts)

    return key


# --- clusters ---------------------------------------------------------------------------


@dataclass(slots=True)
class Member:
    image: ScannedImage
    role: str  # keeper | duplicate | review
    duplicate_of: str | None  # key of the image it was judged a duplicate/review of
    distance: int | None
    match: str | None  # exact | near
    reclaimable: int = 0
    same_file_as: str | None = None  # another path of the very same stored file (a link)
    cluster: int | None = None  # review members: their own duplicate cluster, if any


@dataclass(slots=True)
class Cluster:
    id: int
    members: list[Member]  # keeper first

    @property
    def keeper(self) -> Member:
        return self.members[0]

    @property
    def reclaimable(self) -> int:
        return sum(m.reclaimable for m in self.members)

    @property
    def bytes(self) -> int:
        return sum(m.image.size_bytes for m in self.members)


@dataclass(slots=True)
class ReviewGroup:
    id: int
    anchor: ScannedImage
    anchor_cluster: int | None
    members: list[Member]

    @property
    def bytes(self) -> int:
        return sum(m.image.size_bytes for m in self.members)


@dataclass(slots=True)
class Clustering:
    clusters: list[Cluster] = field(default_factory=list)
    review: list[ReviewGroup] = field(default_factory=list)
    verdicts: dict[str, int] = field(default_factory=dict)
    exact: int = 0
    near: int = 0


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


async def classify(
    images: Sequence[ScannedImage], dedup: Deduplicator, namespace: str = "scan",
    on_done: Callable[[int], None] | None = None,
) -> list[ImageRecord]:
    """Register every image, in the given order, into `dedup`'s (fresh) index. Image ids
    are positions, so any key is acceptable. Returns the record of each image.

    Given in keeper order (best first under the keeper rule), the keeper of each cluster
    is the image the others were judged duplicates of, since the service judges a
    near-duplicate against the earliest registered kept image; so every distance shown
    is the distance to the keeper."""
    records: list[ImageRecord] = []
    for position, image in enumerate(images):
        registration = await dedup.register_fingerprint(namespace, str(position), image.fingerprint)
        records.append(registration.record)
        if on_done is not None:
            on_done(1)
    return records


def build_clusters(
    images: Sequence[ScannedImage], records: Sequence[ImageRecord], criteria: Sequence[str]
) -> Clustering:
    """Clusters = connected components of `duplicate` links; review links kept apart."""
    n = len(images)
    sort_key = keeper_sort_key(criteria)
    uf = _UnionFind(n)
    result = Clustering()
    for record in records:
        result.verdicts[record.verdict.value] = result.verdicts.get(record.verdict.value, 0) + 1
    for position, record in enumerate(records):
        if record.verdict == Verdict.DUPLICATE and record.duplicate_of is not None:
            uf.union(position, int(record.duplicate_of))
    components: dict[int, list[int]] = {}
    for position in range(n):
        components.setdefault(uf.find(position), []).append(position)

    clusters: list[Cluster] = []
    cluster_of: dict[int, Cluster] = {}
    for positions in components.values():
        if len(positions) < 2:
            continue
        keeper_pos = min(positions, key=lambda p: sort_key(images[p]))
        members = [Member(images[keeper_pos], "keeper", None, None, None)]
        others = []
        for p in positions:
            if p == keeper_pos:
                continue
            record = records[p]
            match = record.match.value if record.match is not None else None
            others.append(
                Member(images[p], "duplicate", images[int(record.duplicate_of)].key if record.duplicate_of else None,
                       record.distance, match)
            )
            if match == "exact":
                result.exact += 1
            else:
                result.near += 1
        others.sort(key=lambda m: (m.match != "exact", m.distance or 0, m.image.key))
        members.extend(others)
        _count_reclaimable(members)
        cluster = Cluster(0, members)
        clusters.append(cluster)
        for p in positions:
            cluster_of[p] = cluster
    clusters.sort(key=lambda c: (-c.reclaimable, -len(c.members), c.keeper.image.key))
    for number, cluster in enumerate(clusters, 1):
        cluster.id = number
    result.clusters = clusters

    groups: dict[int, list[Member]] = {}
    for position, record in enumerate(records):
        if record.verdict == Verdict.REVIEW and record.duplicate_of is not None:
            anchor = int(record.duplicate_of)
            own = cluster_of.get(position)
            groups.setdefault(anchor, []).append(
                Member(images[position], "review", images[anchor].key, record.distance,
                       record.match.value if record.match is not None else None,
                       cluster=own.id if own is not None else None)
            )
    review = []
    for anchor, members in groups.items():
        members.sort(key=lambda m: (m.distance or 0, m.image.key))
        own = cluster_of.get(anchor)
        review.append(ReviewGroup(0, images[anchor], own.id if own is not None else None, members))
    review.sort(key=lambda g: (-g.bytes, g.anchor.key))
    for number, group in enumerate(review, 1):
        group.id = number
    result.review = review
    return result


def _count_reclaimable(members: list[Member]) -> None:
    """Deleting a duplicate frees its bytes, unless it is another path (hard or symbolic
    link) of a file that stays or was already counted: count each stored file once."""
    first_path: dict[str, str] = {members[0].image.storage_id: members[0].image.key}
    for member in members[1:]:
        storage = member.image.storage_id
        if storage in first_path:
            member.reclaimable = 0
            member.same_file_as = first_path[storage]
        else:
            first_path[storage] = member.image.key
            member.reclaimable = member.image.size_bytes


# --- loading the estate into the service's index ---------------------------------------


@dataclass(slots=True)
class RegisterSummary:
    backend: str
    namespace: str
    verdicts: dict[str, int] = field(default_factory=dict)
    replayed: int = 0
    differs_from_audit: int = 0
    errors: list[tuple[str, str, str]] = field(default_factory=list)  # (key, code, detail)

    def as_json(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "namespace": self.namespace,
            "registered": sum(self.verdicts.values()),
            "verdicts": dict(sorted(self.verdicts.items())),
            "replayed": self.replayed,
            "differs_from_audit": self.differs_from_audit,
            "errors": [{"key": k, "error": c, "detail": d} for k, c, d in self.errors],
        }


async def register_estate(
    images: Sequence[ScannedImage],
    audit: Sequence[ImageRecord],
    dedup: Deduplicator,
    namespace: str,
    *,
    concurrency: int = 16,
    on_done: Callable[[int], None] | None = None,
) -> RegisterSummary:
    """Register the estate into the service's index under the images' keys, in keeper
    order, so that the image the service keeps is the cluster's keeper.

    Images linked by the audit (duplicate or review) are registered one after another in
    keeper order; unlinked groups are independent (their kept images are farther apart
    than the review radius), so they run concurrently: the outcome is that of the
    sequential order, faster. In a namespace that already holds images the outcome may
    differ from the audit; `differs_from_audit` counts those images.
    """
    summary = RegisterSummary(getattr(dedup.index, "backend", "?"), namespace)
    uf = _UnionFind(len(images))
    for position, record in enumerate(audit):
        if record.duplicate_of is not None:
            uf.union(position, int(record.duplicate_of))
    chains: dict[int, list[int]] = {}
    for position in range(len(images)):
        chains.setdefault(uf.find(position), []).append(position)
    pending = iter(sorted(chains.values(), key=lambda c: c[0]))

    async def run_chains() -> None:
        for chain in pending:  # shared iterator: each chain is taken by one runner
            for position in chain:
                await _register_one(position)
                if on_done is not None:
                    on_done(1)

    async def _register_one(position: int) -> None:
        image = images[position]
        for attempt in range(6):
            try:
                registration = await dedup.register_fingerprint(namespace, image.key, image.fingerprint)
                break
            except ContentionError:
                if attempt == 5:
                    summary.errors.append((image.key, "contention", "index contention persisted; re-run --register"))
                    return
                await asyncio.sleep(0.05 * 2**attempt)
            except InputError as exc:
                summary.errors.append((image.key, exc.code, exc.detail))
                return
        record = registration.record
        summary.verdicts[record.verdict.value] = summary.verdicts.get(record.verdict.value, 0) + 1
        summary.replayed += registration.replayed
        expected = audit[position]
        expected_of = images[int(expected.duplicate_of)].key if expected.duplicate_of is not None else None
        if record.verdict != expected.verdict or record.duplicate_of != expected_of:
            summary.differs_from_audit += 1

    await asyncio.gather(*(run_chains() for _ in range(max(1, concurrency))))
    return summary
