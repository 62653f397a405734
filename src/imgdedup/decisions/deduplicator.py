"""The use cases both adapters share: register an image, check one, forget one.

HTTP handlers and the Kafka consumer call these and only translate results and errors
to their own wire formats, so the two paths cannot drift apart.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass
from functools import partial

from imgdedup.decisions.rules import Candidate, CheckVerdict, Decision, Policy, Verdict, decide
from imgdedup.decisions.rules import check as check_rules
from imgdedup.fingerprint import Fingerprint
from imgdedup.hasher import Hasher
from imgdedup.index.interface import DedupIndex
from imgdedup.metrics import Metrics
from imgdedup.records import ImageRecord, Registration, validate_image_id, validate_namespace


@dataclass(frozen=True, slots=True)
class CheckResult:
    verdict: CheckVerdict
    matches: tuple[Candidate, ...]
    fingerprint: Fingerprint
    #: What registering would decide: the match it names (`duplicate_of`), the similarity.
    decision: Decision | None = None


class Deduplicator:
    def __init__(
        self, index: DedupIndex, hasher: Hasher, policy: Policy, metrics: Metrics, max_in_flight: int
    ) -> None:
        self.index = index
        self.hasher = hasher
        self.policy = policy
        self.metrics = metrics
        self._slots = asyncio.Semaphore(max_in_flight)
        self._exported: dict[str, int] = {}

    async def fingerprint(self, data: bytes) -> Fingerprint:
        started = time.perf_counter()
        async with self._slots:
            result = await self.hasher.fingerprint(data)
        self.metrics.hash_seconds.observe(time.perf_counter() - started)
        return result

    async def register(
        self, namespace: str, image_id: str, data: bytes, *, event_id: str | None = None,
        source_uri: str | None = None,
    ) -> Registration:
        """`source_uri`: where the image can be seen, kept only for the review queue."""
        validate_namespace(namespace)
        validate_image_id(image_id)
        stored = await self.index.get(namespace, image_id)
        if stored is not None and stored.sha256 == _sha256_hex(data):
            # Replay without paying for decoding (redeliveries are common).
            registration = Registration(stored, replayed=True)
        else:
            fp = await self.fingerprint(data)
            registration = await self.register_fingerprint(namespace, image_id, fp, event_id=event_id)
        if registration.record.verdict is Verdict.REVIEW:
            # Also on a replay: a redelivery heals a queue entry lost to a crash in between.
            await self.index.note_review(namespace, image_id, registration.record.seq, source_uri)
        return registration

    async def register_fingerprint(
        self, namespace: str, image_id: str, fp: Fingerprint, *, event_id: str | None = None
    ) -> Registration:
        started = time.perf_counter()
        try:
            return await self.index.register(
                namespace, image_id, fp, partial(decide, policy=self.policy, query_thumbnail=fp.thumbnail),
                radius=self.policy.review_radius, event_id=event_id,
            )
        finally:
            self.metrics.index_seconds.labels("register").observe(time.perf_counter() - started)
            self._export_conflicts()

    async def check(self, namespace: str, data: bytes) -> CheckResult:
        validate_namespace(namespace)
        fp = await self.fingerprint(data)
        started = time.perf_counter()
        lookup = await self.index.lookup(namespace, fp, radius=self.policy.review_radius)
        self.metrics.index_seconds.labels("lookup").observe(time.perf_counter() - started)
        verdict, matches, decision = check_rules(lookup, self.policy, fp.thumbnail)
        return CheckResult(verdict, matches, fp, decision)

    async def get(self, namespace: str, image_id: str) -> ImageRecord | None:
        validate_namespace(namespace)
        validate_image_id(image_id)
        return await self.index.get(namespace, image_id)

    async def duplicates_of(self, namespace: str, image_id: str) -> list[ImageRecord]:
        validate_namespace(namespace)
        validate_image_id(image_id)
        return await self.index.duplicates_of(namespace, image_id)

    async def remove(self, namespace: str, image_id: str) -> bool:
        validate_namespace(namespace)
        validate_image_id(image_id)
        started = time.perf_counter()
        try:
            return await self.index.remove(namespace, image_id)
        finally:
            self.metrics.index_seconds.labels("remove").observe(time.perf_counter() - started)
            self._export_conflicts()

    def _export_conflicts(self) -> None:
        """Copy the index's own counters (Redis backend) into Prometheus counters."""
        for attribute, counter in (
            ("watch_conflicts", self.metrics.index_conflicts),
            ("pending_waits", self.metrics.index_waits),
            ("restarts", self.metrics.index_restarts),
        ):
            total = getattr(self.index, attribute, 0)
            seen = self._exported.get(attribute, 0)
            if total > seen:
                counter.inc(total - seen)
                self._exported[attribute] = total


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
