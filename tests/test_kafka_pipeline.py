"""Integration: the Kafka pipeline against a real Kafka-protocol broker (Tansu) and real Redis.

Each test uses its own topics, consumer group and Redis key prefix, so tests neither see
nor disturb each other's data.
"""

from __future__ import annotations

import asyncio
import collections
import io
import logging
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from auth_helpers import write_keys_file
from imagegen import distinct_image, encode, poison_tiff, variants
from imgdedup_devtools.broker import TansuBroker
from PIL import Image

from imgdedup._gen.imgdedup.v1 import events_pb2
from imgdedup.adapters.events import UploadEvent, decode_decision, encode_upload
from imgdedup.adapters.kafka_clients import ensure_topics
from imgdedup.app import Service
from imgdedup.config import Settings
from imgdedup.index.redis.keys import delete_prefix

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    external = os.environ.get("IMGDEDUP_TEST_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    with TansuBroker() as broker:
        yield broker.bootstrap


@dataclass
class Stack:
    settings: Settings
    env: dict[str, str]


@pytest.fixture
async def stack(kafka_bootstrap: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """Settings (and the equivalent environment) for one isolated pipeline."""
    tag = uuid.uuid4().hex[:10]
    keys_file = tmp_path_factory.mktemp("keys") / "api-keys.json"
    write_keys_file(keys_file)  # authentication on, as deployed (these tests use no /v1 route)
    values = {
        "api_keys_file": str(keys_file),
        "kafka_bootstrap": kafka_bootstrap,
        "kafka_input_topic": f"uploads-{tag}",
        "kafka_decisions_topic": f"decisions-{tag}",
        "kafka_dlq_topic": f"uploads-{tag}.dlq",
        "kafka_group_id": f"imgdedup-{tag}",
        "kafka_commit_interval_ms": 200,
        "redis_url": redis_url,
        "redis_prefix": f"imgdedup-test-{tag}",
        "http_port": 0,
        "hash_workers": 1,
        "max_in_flight": 16,
        "shutdown_timeout_s": 15.0,
        "log_format": "json",
        "log_level": "WARNING",
    }
    settings = Settings(**values)  # type: ignore[arg-type]
    settings.validate()
    await ensure_topics(settings, partitions=4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGDEDUP_")}
    env.update({f"IMGDEDUP_{k.upper()}": str(v) for k, v in values.items()})
    yield Stack(settings, env)
    client = aioredis.Redis.from_url(redis_url)
    await delete_prefix(client, settings.redis_prefix)
    await client.aclose()


async def publish(settings: Settings, events: list[tuple[bytes, list[tuple[str, bytes]]]], *, partitions: int = 4) -> None:
    """Send raw records, spread over the partitions at random (no key affinity)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=False, max_request_size=30_000_000
    )
    await producer.start()
    try:
        rng = random.Random(7)
        for value, headers in events:
            await producer.send(
                settings.kafka_input_topic, value, headers=headers, partition=rng.randrange(partitions)
            )
        await producer.flush()
    finally:
        await producer.stop()


class TopicReader:
    """Reads a topic from the beginning, without a group (no offsets committed)."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self._consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=settings.kafka_bootstrap, group_id=None, auto_offset_reset="earliest"
        )
        self.records: list = []

    async def __aenter__(self) -> TopicReader:
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def read_until(self, predicate, timeout: float = 60.0) -> list:
        deadline = time.monotonic() + timeout
        while not predicate(self.records):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out with {len(self.records)} records")
            batch = await self._consumer.getmany(timeout_ms=300)
            for records in batch.values():
                self.records.extend(records)
        return self.records


def upload(namespace: str, image_id: str, data: bytes, *, event_id: str | None = None, as_json: bool = False):
    event = UploadEvent(event_id or uuid.uuid4().hex, namespace, image_id, "image/jpeg", data, None)
    headers = [("content-type", b"application/json")] if as_json else []
    return encode_upload(event, as_json=as_json), headers


def decisions_of(records: list) -> list[events_pb2.DedupDecision]:
    return [decode_decision(r.value, r.headers) for r in records]


@pytest.fixture
async def service(stack: Stack) -> AsyncIterator[Service]:
    svc = Service(stack.settings)
    await svc.start()
    yield svc
    await svc.stop()


# ---------------------------------------------------------------------------------------
async def test_planted_duplicates_every_decision_checked(stack: Stack, service: Service) -> None:
    settings = stack.settings
    ns = "shop"
    originals = {f"orig-{i}": distinct_image(1000 + i) for i in range(12)}
    first_wave = [upload(ns, image_id, encode(img)) for image_id, img in originals.items()]
    second_wave = []
    expected_dup_of: dict[str, str] = {}
    for image_id, img in originals.items():
        for kind, data in variants(img).items():
            second_wave.append(upload(ns, f"{image_id}-{kind}", data, as_json=kind == "webp"))
            expected_dup_of[f"{image_id}-{kind}"] = image_id
        second_wave.append(upload(ns, f"{image_id}-copy", encode(img)))  # byte-identical copy
        expected_dup_of[f"{image_id}-copy"] = image_id
    second_wave.append(upload(ns, "corrupt", encode(distinct_image(5))[:1500]))
    second_wave.append((b"\x0a\x05sh", []))  # truncated protobuf
    second_wave.append((b'{"namespace": "shop"}', [("content-type", b"application/json")]))  # no image_id

    async with TopicReader(settings, settings.kafka_decisions_topic) as reader:
        await publish(settings, first_wave)
        await reader.read_until(lambda r: len(r) >= len(first_wave))
        await publish(settings, second_wave)
        records = await reader.read_until(lambda r: len(r) >= len(first_wave) + len(second_wave))
    decisions = decisions_of(records)
    assert len(decisions) == len(first_wave) + len(second_wave)
    by_id = {d.image_id: d for d in decisions if d.image_id}
    for image_id in originals:
        assert by_id[image_id].verdict == "accepted", by_id[image_id]
        assert len(by_id[image_id].sha256) == 64 and len(by_id[image_id].phashes[0]) == 16
    for image_id, original in expected_dup_of.items():
        decision = by_id[image_id]
        assert (decision.verdict, decision.duplicate_of) == ("duplicate", original), decision
        assert decision.match == ("exact" if image_id.endswith("-copy") else "near")
        assert decision.distance <= settings.duplicate_radius
        if decision.match == "near":  # the second look's correlation travels with the decision
            assert decision.HasField("similarity") and settings.min_similarity <= decision.similarity <= 1.0
        else:
            assert not decision.HasField("similarity")
    json_records = [r for r in records if dict(r.headers).get("content-type") == b"application/json"]
    assert {decode_decision(r.value, r.headers).image_id for r in json_records} >= {
        f"{i}-webp" for i in originals
    }
    rejected = [d for d in decisions if d.verdict == "rejected"]
    assert sorted(d.error.code for d in rejected) == ["invalid_event", "invalid_event", "undecodable_image"]
    assert by_id["corrupt"].error.detail

    async with TopicReader(settings, settings.kafka_dlq_topic) as dlq:
        dead = await dlq.read_until(lambda r: len(r) >= 3)
    codes = sorted(dict(r.headers)["imgdedup-error-code"].decode() for r in dead)
    assert codes == ["invalid_event", "invalid_event", "undecodable_image"]
    assert b"\x0a\x05sh" in {r.value for r in dead}  # the raw record, byte for byte

    metrics = service.metrics.render().decode()
    assert 'imgdedup_decisions_total{source="kafka",verdict="duplicate"} 60.0' in metrics
    assert 'imgdedup_rejections_total{code="undecodable_image",source="kafka"} 1.0' in metrics


async def test_redelivered_event_replays_stored_decision(stack: Stack, service: Service) -> None:
    image = encode(distinct_image(77))
    event = upload("replay", "img-1", image, event_id="evt-1")
    async with TopicReader(stack.settings, stack.settings.kafka_decisions_topic) as reader:
        await publish(stack.settings, [event])
        await reader.read_until(lambda r: len(r) >= 1)
        await publish(stack.settings, [event])  # the same record again, as after a crash
        records = await reader.read_until(lambda r: len(r) >= 2)
    first, second = decisions_of(records)
    assert (first.verdict, first.replayed) == ("accepted", False)
    assert (second.verdict, second.replayed) == ("accepted", True)
    assert second.event_id == "evt-1"


async def test_heic_and_jpeg_xl_uploads_are_decided(stack: Stack, service: Service) -> None:
    """HEIF and JPEG XL events, made by their encoders, are hashed by the service's worker
    processes: each is accepted, its JPEG copy is its duplicate, and an oversized one is
    rejected with the HTTP error code."""
    heic = encode(distinct_image(301, (480, 360)), "HEIF", quality=80)
    jxl = encode(distinct_image(302, (480, 360)), "JXL", quality=85)
    copies = [
        upload("formats", name + "-copy", encode(Image.open(io.BytesIO(data)).convert("RGB"), "JPEG", quality=85))
        for name, data in (("heic", heic), ("jxl", jxl))
    ]
    # A bare JPEG XL codestream whose SizeHeader claims 2^30 x 2^30 pixels (bits least
    # significant first: not small, 30-bit height, ratio 0, 30-bit width), then nothing.
    side = (1 << 30) - 1
    header = (0 | 3 << 1 | side << 3 | 0 << 33 | 3 << 36 | side << 38).to_bytes(9, "little")
    bomb = upload("formats", "bomb", b"\xff\x0a" + header + bytes(32))
    originals = [upload("formats", "heic", heic), upload("formats", "jxl", jxl), bomb]
    async with TopicReader(stack.settings, stack.settings.kafka_decisions_topic) as reader:
        await publish(stack.settings, originals)
        await reader.read_until(lambda r: len(r) >= 3)
        await publish(stack.settings, copies)
        records = await reader.read_until(lambda r: len(r) >= 5)
    by_id = {d.image_id: d for d in decisions_of(records)}
    assert (by_id["bomb"].verdict, by_id["bomb"].error.code) == ("rejected", "decompression_bomb")
    assert by_id["heic"].verdict == by_id["jxl"].verdict == "accepted"
    for name in ("heic", "jxl"):
        assert (by_id[f"{name}-copy"].verdict, by_id[f"{name}-copy"].duplicate_of) == ("duplicate", name)


async def test_url_source_fetched_and_private_addresses_refused(stack: Stack, kafka_bootstrap: str) -> None:
    image = encode(distinct_image(4242))
    async def serve_image(request: web.Request) -> web.Response:
        return web.Response(body=image, content_type="image/jpeg")

    async def not_found(request: web.Request) -> web.Response:
        return web.Response(status=404)

    app = web.Application()
    app.router.add_get("/img.jpg", serve_image)
    app.router.add_get("/missing.jpg", not_found)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    base = f"http://127.0.0.1:{port}"

    def url_event(image_id: str, url: str):
        event = UploadEvent(uuid.uuid4().hex, "urls", image_id, "", None, url)
        return encode_upload(event), []

    try:
        for allow, expected in ((False, "rejected"), (True, "accepted")):
            settings = Settings(**{**stack.settings.__dict__, "allow_private_urls": allow,
                                   "kafka_decisions_topic": stack.settings.kafka_decisions_topic + f"-{allow}"})
            await ensure_topics(settings, partitions=4)
            svc = Service(settings)
            await svc.start()
            try:
                async with TopicReader(settings, settings.kafka_decisions_topic) as reader:
                    await publish(settings, [url_event(f"u-{allow}", f"{base}/img.jpg")])
                    records = await reader.read_until(lambda r: len(r) >= 1)
                    decision = decisions_of(records)[0]
                    assert decision.verdict == expected, decision
                    if not allow:
                        assert decision.error.code == "url_refused"
                    else:
                        await publish(settings, [url_event("missing", f"{base}/missing.jpg"),
                                                 url_event("ftp", "ftp://example.org/x.jpg")])
                        records = await reader.read_until(lambda r: len(r) >= 3)
                        errors = {d.image_id: d.error.code for d in decisions_of(records)[1:]}
                        assert errors == {"missing": "fetch_failed", "ftp": "url_refused"}
            finally:
                await svc.stop()
    finally:
        await runner.cleanup()


async def test_poison_records_are_rejected_and_their_partition_moves_on(
    stack: Stack, service: Service, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A file the decoder fails on unexpectedly, and an event whose handling raises an
    unexpected error, each get a rejection and a dead letter; the records behind them in
    their partition are decided, and the committed offset passes them all."""
    settings = stack.settings
    assert service.hasher is not None and service.hasher.time_limit_s == settings.hash_timeout_s
    assert service.dedup is not None
    register = service.dedup.register
    secret = "secret-internal-state-5678"

    async def register_or_fail(namespace: str, image_id: str, data: bytes, **kwargs: object):
        if image_id == "boom":
            raise RuntimeError(secret)
        return await register(namespace, image_id, data, **kwargs)

    monkeypatch.setattr(service.dedup, "register", register_or_fail)
    events = [
        upload("poison", "tiff", poison_tiff()),
        upload("poison", "boom", encode(distinct_image(6100)), as_json=True),
        *(upload("poison", f"after-{n}", encode(distinct_image(6200 + n))) for n in range(3)),
    ]
    with caplog.at_level(logging.WARNING, logger="imgdedup.consumer"):
        async with TopicReader(settings, settings.kafka_decisions_topic) as reader:
            offsets = await publish_to_partition(settings, 0, events)
            records = await reader.read_until(lambda r: len(r) >= len(events))
        async with TopicReader(settings, settings.kafka_dlq_topic) as dlq:
            dead = await dlq.read_until(lambda r: len(r) >= 2)
        await committed_reaches(settings, TopicPartition(settings.kafka_input_topic, 0), offsets[-1] + 1)

    by_id = {d.image_id: d for d in decisions_of(records)}
    assert len(records) == len(events) and len(by_id) == len(events)
    assert (by_id["tiff"].verdict, by_id["tiff"].error.code) == ("rejected", "undecodable_image")
    assert (by_id["boom"].verdict, by_id["boom"].error.code) == ("rejected", "internal_error")
    assert secret not in by_id["boom"].error.detail and by_id["boom"].error.detail
    assert [by_id[f"after-{n}"].verdict for n in range(3)] == ["accepted"] * 3
    assert {r.value: dict(r.headers)["imgdedup-error-code"] for r in dead} == {
        events[0][0]: b"undecodable_image", events[1][0]: b"internal_error",
    }
    errors = [r for r in caplog.records if r.name == "imgdedup.consumer" and r.levelno >= logging.ERROR]
    assert len(errors) == 1, "the unexpected error is logged once, with its traceback"
    assert errors[0].exc_info is not None and secret in str(errors[0].exc_info[1])
    where = (errors[0].topic, errors[0].partition, errors[0].offset)  # type: ignore[attr-defined]
    assert where == (settings.kafka_input_topic, 0, offsets[1])


async def test_a_record_whose_rejection_cannot_be_produced_is_skipped_not_stalled(
    stack: Stack, service: Service, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The last line of defence: even the rejection fails (a bug). The record is logged
    and skipped; its partition moves on."""
    from imgdedup.adapters import kafka_consumer

    settings = stack.settings

    def broken_rejection(**fields: object):
        raise RuntimeError("cannot build the rejection")

    monkeypatch.setattr(kafka_consumer, "rejection", broken_rejection)
    events = [(b"\x0a\x05sh", []), upload("skip", "after", encode(distinct_image(6300)))]  # a truncated event first
    with caplog.at_level(logging.WARNING, logger="imgdedup.consumer"):
        async with TopicReader(settings, settings.kafka_decisions_topic) as reader:
            offsets = await publish_to_partition(settings, 0, events)
            records = await reader.read_until(lambda r: len(r) >= 1)
        await committed_reaches(settings, TopicPartition(settings.kafka_input_topic, 0), offsets[-1] + 1)
    assert [(d.image_id, d.verdict) for d in decisions_of(records)] == [("after", "accepted")]
    dropped = [r for r in caplog.records if r.getMessage().startswith("record dropped")]
    assert [(r.partition, r.offset) for r in dropped] == [(0, offsets[0])]  # type: ignore[attr-defined]


async def test_records_the_broker_refuses_for_good_end_without_stalling(
    stack: Stack, service: Service, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A decision or a dead letter the broker will never take (larger than its topic
    accepts) is not retried forever: a refused decision turns the event into a
    `decision_refused` rejection (dead-lettered), a refused dead letter leaves the
    rejection to go out alone; the partition moves on and the committed offset passes."""
    from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError

    settings = stack.settings
    assert service.consumer is not None and service.consumer._producer is not None
    producer = service.consumer._producer
    send = producer.send
    timeouts = {"left": 2}

    async def refusing_send(topic: str, value: bytes | None = None, key: bytes | None = None, **kw: object):
        if topic == settings.kafka_decisions_topic and key == b"refuse/too-big" and value is not None:
            if decode_decision(value, kw.get("headers")).verdict != "rejected":  # type: ignore[arg-type]
                raise MessageSizeTooLargeError("the decision is larger than the topic accepts")
        if topic == settings.kafka_dlq_topic:
            if timeouts["left"]:  # transient, although KafkaTimeoutError.retriable is False: retried
                timeouts["left"] -= 1
                raise KafkaTimeoutError()
            raise MessageSizeTooLargeError("the dead letter is larger than the topic accepts")
        return await send(topic, value=value, key=key, **kw)

    monkeypatch.setattr(producer, "send", refusing_send)
    events = [
        upload("refuse", "too-big", encode(distinct_image(6400))),
        upload("refuse", "undecodable", b"not an image at all"),
        upload("refuse", "after", encode(distinct_image(6401))),
    ]
    with caplog.at_level(logging.WARNING, logger="imgdedup.consumer"):
        async with TopicReader(settings, settings.kafka_decisions_topic) as reader:
            offsets = await publish_to_partition(settings, 0, events)
            records = await reader.read_until(lambda r: len(r) >= len(events))
        await committed_reaches(settings, TopicPartition(settings.kafka_input_topic, 0), offsets[-1] + 1)
    by_id = {d.image_id: d for d in decisions_of(records)}
    assert (by_id["too-big"].verdict, by_id["too-big"].error.code) == ("rejected", "decision_refused")
    assert (by_id["undecodable"].verdict, by_id["undecodable"].error.code) == ("rejected", "undecodable_image")
    assert by_id["after"].verdict == "accepted"
    assert timeouts["left"] == 0
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage() and r.levelno == logging.ERROR]
    assert len(refused) == 3  # the decision, then both dead letters
    text = service.metrics.render().decode()
    assert 'imgdedup_produce_refused_total{record="decision"} 1.0' in text
    assert 'imgdedup_produce_refused_total{record="dead_letter"} 2.0' in text


async def publish_to_partition(settings: Settings, partition: int, events: list) -> list[int]:
    """Send records in order to one partition; their offsets."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        offsets = []
        for value, headers in events:
            sent = await producer.send_and_wait(settings.kafka_input_topic, value, headers=headers, partition=partition)
            offsets.append(sent.offset)
        return offsets
    finally:
        await producer.stop()


async def committed_reaches(settings: Settings, tp: TopicPartition, offset: int, timeout: float = 30.0) -> None:
    """Wait until the broker holds a committed offset of at least `offset` for the group."""
    reader = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, group_id=settings.kafka_group_id, enable_auto_commit=False
    )
    await reader.start()
    try:
        deadline = time.monotonic() + timeout
        while (committed := await reader.committed(tp)) is None or committed < offset:
            assert time.monotonic() < deadline, f"committed offset {committed}, expected {offset}"
            await asyncio.sleep(0.2)
    finally:
        await reader.stop()


# --- real processes: crash, graceful stop, several replicas ----------------------------
def spawn_service(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "imgdedup", "serve"], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def processes_with_env(key: str, value: str) -> list[int]:
    """PIDs whose environment holds key=value (the service's workers inherit it)."""
    needle = f"{key}={value}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as env:
                    if needle in env.read().split(b"\0"):
                        found.append(int(entry))
            except OSError:
                continue
    return found


def families(namespace: str, count: int, seed: int) -> tuple[list, dict[str, str]]:
    """Events for `count` photos with 5 copies each (original + 4 variants), shuffled."""
    events, family_of = [], {}
    for f in range(count):
        image = distinct_image(seed + f)
        members = {"orig": encode(image), **variants(image)}
        for kind, data in members.items():
            image_id = f"fam{f}-{kind}"
            family_of[image_id] = f"fam{f}"
            events.append(upload(namespace, image_id, data))
    random.Random(seed).shuffle(events)
    return events, family_of


def assert_consistent(decisions: list[events_pb2.DedupDecision], family_of: dict[str, str]) -> None:
    """Every image decided, the same way every time; exactly one accepted per family."""
    verdicts: dict[str, set[tuple[str, str]]] = collections.defaultdict(set)
    for d in decisions:
        verdicts[d.image_id].add((d.verdict, d.duplicate_of))
    assert set(verdicts) == set(family_of), "some events were never decided"
    for image_id, seen in verdicts.items():
        assert len(seen) == 1, f"{image_id} decided differently on redelivery: {seen}"
    accepted = collections.Counter(family_of[i] for i, seen in verdicts.items() if next(iter(seen))[0] == "accepted")
    assert set(accepted) == set(family_of.values()), "a family has no accepted image"
    assert max(accepted.values()) == 1, f"accepted twice: {accepted}"
    for image_id, seen in verdicts.items():
        verdict, original = next(iter(seen))
        if verdict != "accepted":
            assert verdict == "duplicate" and family_of[original] == family_of[image_id]


async def test_killed_consumer_loses_nothing_and_accepts_nothing_twice(stack: Stack) -> None:
    events, family_of = families("crash", 24, seed=3000)
    async with TopicReader(stack.settings, stack.settings.kafka_decisions_topic) as reader:
        await publish(stack.settings, events)
        first = spawn_service(stack.env)
        try:
            await reader.read_until(lambda r: len(r) >= 15, timeout=90)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        # Nothing of the killed service survives it (its hashing workers exit on their own).
        group = stack.env["IMGDEDUP_KAFKA_GROUP_ID"]
        deadline = time.monotonic() + 10
        while processes_with_env("IMGDEDUP_KAFKA_GROUP_ID", group) and time.monotonic() < deadline:  # noqa: ASYNC110 - polling /proc
            await asyncio.sleep(0.2)
        assert processes_with_env("IMGDEDUP_KAFKA_GROUP_ID", group) == [], "orphaned worker processes"
        decided_before_kill = len(reader.records)
        assert decided_before_kill < len(events), "the kill did not land mid-stream"
        second = spawn_service(stack.env)
        try:
            ids = set(family_of)
            await reader.read_until(lambda r: {decode_decision(x.value, x.headers).image_id for x in r} >= ids, timeout=120)
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0, second.stderr.read().decode() if second.stderr else ""
    assert_consistent(decisions_of(reader.records), family_of)


async def test_sigterm_drains_and_commits_so_restart_replays_nothing(stack: Stack) -> None:
    events, family_of = families("drain", 16, seed=5000)
    async with TopicReader(stack.settings, stack.settings.kafka_decisions_topic) as reader:
        await publish(stack.settings, events)
        first = spawn_service(stack.env)
        await reader.read_until(lambda r: len(r) >= 10, timeout=90)
        first.send_signal(signal.SIGTERM)
        assert first.wait(30) == 0, first.stderr.read().decode() if first.stderr else ""
        second = spawn_service(stack.env)
        try:
            await reader.read_until(
                lambda r: {decode_decision(x.value, x.headers).image_id for x in r} >= set(family_of), timeout=120
            )
            await asyncio.sleep(1.0)  # anything redelivered would show up now
            more = await reader.read_until(lambda r: True)
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0
    decisions = decisions_of(more)
    assert_consistent(decisions, family_of)
    assert [d.image_id for d in decisions if d.replayed] == [], "graceful stop left decided work uncommitted"
    assert len(decisions) == len(events)


async def test_first_wins_across_two_service_processes(stack: Stack) -> None:
    """Near-duplicates spread over 4 partitions, consumed by two replicas at once."""
    events, family_of = families("race", 30, seed=7000)
    replicas = [spawn_service(stack.env), spawn_service(stack.env)]
    try:
        await asyncio.sleep(6)  # both join the group before the burst arrives
        async with TopicReader(stack.settings, stack.settings.kafka_decisions_topic) as reader:
            await publish(stack.settings, events)
            await reader.read_until(lambda r: len(r) >= len(events), timeout=120)
    finally:
        for process in replicas:
            process.send_signal(signal.SIGTERM)
        for process in replicas:
            assert process.wait(30) == 0
    assert_consistent(decisions_of(reader.records), family_of)


async def test_redis_outage_is_retried_not_rejected(stack: Stack, tmp_path) -> None:
    """Redis dies mid-stream: decisions stop (retried with back-off, offsets not committed),
    none is turned into a rejection; Redis returns and every event is decided."""
    import shutil
    import socket

    binary = shutil.which("redis-server")
    assert binary, "redis-server is needed for this test (.ci/run installs it)"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    def start_redis() -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(tmp_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return process
            except OSError:
                time.sleep(0.05)
        raise AssertionError("private redis-server did not start")

    redis_process = start_redis()
    settings = Settings(**{**stack.settings.__dict__, "redis_url": f"redis://127.0.0.1:{port}/0",
                           "kafka_max_retry_backoff_ms": 500})
    svc = Service(settings)
    await svc.start()
    try:
        async with TopicReader(settings, settings.kafka_decisions_topic) as reader:
            await publish(settings, [upload("outage", "before", encode(distinct_image(9001)))])
            await reader.read_until(lambda r: len(r) >= 1)
            redis_process.terminate()
            redis_process.wait(10)
            during = [upload("outage", f"during-{i}", encode(distinct_image(9100 + i))) for i in range(5)]
            await publish(settings, during)
            await asyncio.sleep(3)
            assert len(reader.records) == 1, "decided without an index?"
            redis_process = start_redis()
            records = await reader.read_until(lambda r: len(r) >= 6, timeout=60)
        decisions = decisions_of(records)
        assert [d.verdict for d in decisions[1:]] == ["accepted"] * 5
        metrics = svc.metrics.render().decode()
        assert 'imgdedup_transient_errors_total{component="index"}' in metrics
        assert 'imgdedup_redis_errors_total{source="kafka"}' in metrics
        assert "imgdedup_rejections_total{" not in metrics
    finally:
        await svc.stop()
        redis_process.terminate()
        redis_process.wait(10)
