"""End-to-end tests of the inline HTTP API over a real aiohttp server.

The endpoint tests run against both index backends (in-process and Redis MIH), with real
photographs re-encoded, resized, cropped and brightened by Pillow.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient
from auth_helpers import admin_auth
from helpers import SAMPLES_DIR, StartClient
from imagegen import poison_tiff
from openapi_spec_validator import validate as validate_openapi
from PIL import Image, ImageEnhance
from yarl import URL

from imgdedup.adapters.decision_view import DecisionView
from imgdedup.adapters.events import decision_from_record, decode_decision, encode_decision
from imgdedup.adapters.http_api import METRICS_CONTENT_TYPE, create_http_app
from imgdedup.config import Settings
from imgdedup.decisions.deduplicator import Deduplicator
from imgdedup.decisions.rules import Policy
from imgdedup.errors import ContentionError, IndexUnavailable, InputError
from imgdedup.fingerprint import ImageLimits, hamming
from imgdedup.fingerprint.decode import SUPPORTED_FORMATS
from imgdedup.hasher import Hasher, HashingCrashed, HashingTimeout
from imgdedup.index.interface import DedupIndex
from imgdedup.index.memory import MemoryIndex
from imgdedup.index.redis.index import RedisMihIndex
from imgdedup.index.redis.keys import delete_prefix
from imgdedup.metrics import Metrics

REDIS_URL = "redis://127.0.0.1:6379/0"
SAMPLES = SAMPLES_DIR
MAX_BYTES = 200_000
MAX_PIXELS = 4_000_000
NS = "shop"
IMAGE_ROUTE = "/v1/namespaces/{ns}/images/{image_id}"

Readiness = Callable[[], Awaitable[dict[str, str]]]


# --- images -----------------------------------------------------------------------------


@cache
def photo(name: str) -> Image.Image:
    with Image.open(SAMPLES / f"{name}.jpg") as image:
        return image.convert("RGB")


def encode(image: Image.Image, fmt: str = "JPEG", **options: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def original(name: str) -> bytes:
    return encode(photo(name), quality=90)


def resized(name: str, factor: float = 0.5, quality: int = 80) -> bytes:
    image = photo(name)
    return encode(
        image.resize((int(image.width * factor), int(image.height * factor))), quality=quality
    )


def brightened(name: str, factor: float = 1.15) -> bytes:
    return encode(ImageEnhance.Brightness(photo(name)).enhance(factor), quality=85)


def cropped(name: str, fraction: float, quality: int = 85) -> bytes:
    image = photo(name)
    w, h = image.size
    return encode(image.crop((int(w * fraction), int(h * fraction), w, h)), quality=quality)


def image_url(image_id: str, ns: str = NS) -> str:
    return f"/v1/namespaces/{ns}/images/{image_id}"


def check_url(ns: str = NS) -> str:
    return f"/v1/namespaces/{ns}/check"


JPEG = {"Content-Type": "image/jpeg"}

#: What both a registration's answer and a stored record tell about an image.
DECISION_FIELDS = frozenset({
    "image_id", "namespace", "verdict", "duplicate_of", "distance", "match", "similarity",
    "sha256", "phashes", "width", "height", "format", "created_at",
})


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture
def settings() -> Settings:
    # An ample body budget: admission under load is tested on its own (test_http_limits.py).
    s = Settings(max_image_bytes=MAX_BYTES, max_image_pixels=MAX_PIXELS, max_body_bytes_in_flight=64 * MAX_BYTES)
    s.validate()
    return s


async def _all_ok() -> dict[str, str]:
    return {"index": "ok"}


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
async def index(request: pytest.FixtureRequest) -> AsyncIterator[DedupIndex]:
    if request.param == "memory":
        memory = MemoryIndex()
        yield memory
        await memory.close()
        return
    prefix = f"imgdedup-test-{uuid.uuid4().hex}"
    client = aioredis.from_url(REDIS_URL)
    try:
        yield RedisMihIndex(client, prefix=prefix)
    finally:
        await delete_prefix(client, prefix)
        await client.aclose()


@pytest.fixture
async def hasher(settings: Settings) -> AsyncIterator[Hasher]:
    # Whole-image codes only: these tests use a small crop to reach the review band. The
    # default crop windows (which make that crop a duplicate) are tested on their own.
    h = Hasher(
        ImageLimits(settings.max_image_bytes, settings.max_image_pixels, crop_windows=False),
        workers=2,
        use_threads=True,
    )
    await h.start()
    yield h
    await h.close()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def dedup(index: DedupIndex, hasher: Hasher, metrics: Metrics) -> Deduplicator:
    # The review band is left unconfirmed (no thumbnail correlation reaches 1.0), so a
    # small crop lands in `review`; the default confirmation is tested on its own.
    return Deduplicator(index, hasher, Policy(8, 12, confirm_similarity=1.0), metrics, max_in_flight=16)


@pytest.fixture
def make_client(settings: Settings, metrics: Metrics, start_client: StartClient) -> Callable[..., Awaitable[TestClient]]:
    """Start a real server for an app, authentication on as deployed: every request
    carries an admin key."""

    async def make(dedup: Deduplicator, readiness: Readiness = _all_ok) -> TestClient:
        auth, headers = admin_auth()
        return await start_client(create_http_app(dedup, metrics, settings, readiness, auth), headers=headers)

    return make


@pytest.fixture
async def client(
    make_client: Callable[..., Awaitable[TestClient]], dedup: Deduplicator
) -> TestClient:
    return await make_client(dedup)


ClientHashingWith = Callable[[Callable[[bytes], Awaitable[Any]]], Awaitable[TestClient]]


@pytest.fixture
def client_hashing_with(
    make_client: Callable[..., Awaitable[TestClient]],
    index: DedupIndex,
    hasher: Hasher,
    metrics: Metrics,
    monkeypatch: pytest.MonkeyPatch,
) -> ClientHashingWith:
    """A client whose hasher fingerprints with the given coroutine function instead."""

    async def make(fingerprint: Callable[[bytes], Awaitable[Any]]) -> TestClient:
        monkeypatch.setattr(hasher, "fingerprint", fingerprint)
        return await make_client(Deduplicator(index, hasher, Policy(8, 12), metrics, 4))

    return make


async def register(
    client: TestClient, image_id: str, data: bytes, ns: str = NS
) -> tuple[int, dict[str, Any]]:
    response = await client.post(image_url(image_id, ns), data=data, headers=JPEG)
    return response.status, await response.json()


async def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body = await response.json()
    assert body["error"] == code
    assert isinstance(body["detail"], str) and body["detail"]
    assert set(body) == {"error", "detail"}
    return body


# --- registration -----------------------------------------------------------------------


async def test_register_new_image_is_accepted_with_201(client: TestClient) -> None:
    data = original("astronaut")
    before = datetime.now(UTC)
    response = await client.post(image_url("a1"), data=data, headers=JPEG)
    assert response.status == 201
    assert response.headers["Location"] == image_url("a1")
    body = await response.json()
    assert set(body) == DECISION_FIELDS | {"replayed"}
    assert body["image_id"] == "a1" and body["namespace"] == NS
    assert body["verdict"] == "accepted"
    assert body["duplicate_of"] is None and body["distance"] is None and body["match"] is None
    assert body["replayed"] is False
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert len(body["phashes"]) == 1 and len(body["phashes"][0]) == 16
    int(body["phashes"][0], 16)
    assert (body["width"], body["height"], body["format"]) == (512, 512, "JPEG")
    created = datetime.fromisoformat(body["created_at"])
    assert created.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=1) <= created <= datetime.now(UTC) + timedelta(seconds=1)


@pytest.mark.parametrize(
    "image_id,segment",
    [
        ("a/../../b?x#y", "a%2F..%2F..%2Fb%3Fx%23y"),
        ("100% caf\u00e9", "100%25%20caf%C3%A9"),
    ],
)
async def test_location_keeps_the_id_in_one_encoded_segment(
    client: TestClient, image_id: str, segment: str
) -> None:
    path = f"/v1/namespaces/{NS}/images/{segment}"
    response = await client.post(URL(path, encoded=True), data=original("astronaut"), headers=JPEG)
    assert response.status == 201, await response.text()
    assert (await response.json())["image_id"] == image_id
    assert response.headers["Location"] == path
    record = await client.get(URL(response.headers["Location"], encoded=True))
    assert (await record.json())["image_id"] == image_id


async def test_replay_returns_200_and_the_stored_decision(client: TestClient) -> None:
    data = original("camera")
    status, first = await register(client, "c1", data)
    assert status == 201
    status, again = await register(client, "c1", data)
    assert status == 200
    assert again["replayed"] is True
    assert {**again, "replayed": False} == first


async def test_exact_duplicate_under_new_id(client: TestClient) -> None:
    data = original("coffee")
    assert (await register(client, "orig", data))[0] == 201
    status, body = await register(client, "copy", data)
    assert status == 201
    assert (body["verdict"], body["match"], body["distance"], body["duplicate_of"]) == (
        "duplicate",
        "exact",
        0,
        "orig",
    )
    assert body["replayed"] is False


@pytest.mark.parametrize("variant", [resized, brightened], ids=["resized", "brightened"])
async def test_near_duplicate_variant(client: TestClient, variant: Callable[[str], bytes]) -> None:
    assert (await register(client, "orig", original("rocket")))[0] == 201
    data = variant("rocket")
    assert data != original("rocket")
    status, body = await register(client, "variant", data)
    assert status == 201
    assert (body["verdict"], body["match"], body["duplicate_of"]) == ("duplicate", "near", "orig")
    assert 0 <= body["distance"] <= 8


async def test_cropped_variant_in_the_review_band_is_confirmed_by_its_thumbnails(
    make_client: Callable[..., Awaitable[TestClient]], index: DedupIndex, hasher: Hasher, metrics: Metrics
) -> None:
    client = await make_client(Deduplicator(index, hasher, Policy(8, 12), metrics, max_in_flight=4))
    _, a = await register(client, "orig", original("chelsea"))
    status, body = await register(client, "crop", cropped("chelsea", 0.06))
    assert status == 201
    assert (body["verdict"], body["match"], body["duplicate_of"]) == ("duplicate", "near", "orig")
    assert 8 < body["distance"] <= 12
    assert body["distance"] == hamming(int(a["phashes"][0], 16), int(body["phashes"][0], 16))
    assert 0.9 <= body["similarity"] <= 1.0


async def test_unconfirmed_candidate_in_the_review_band_goes_to_review(client: TestClient) -> None:
    await register(client, "orig", original("chelsea"))
    response = await client.post(f"/v1/namespaces/{NS}/check", data=cropped("chelsea", 0.06), headers=JPEG)
    checked = await response.json()
    assert (checked["verdict"], checked["duplicate_of"]) == ("review", "orig")
    assert checked["similarity"] < 1.0
    status, body = await register(client, "crop", cropped("chelsea", 0.06))
    assert status == 201
    assert (body["verdict"], body["duplicate_of"]) == ("review", "orig")
    assert 8 < body["distance"] <= 12


async def test_crop_is_a_duplicate_with_the_default_crop_windows(settings: Settings, memory_index) -> None:
    windows = Hasher(ImageLimits(settings.max_image_bytes, settings.max_image_pixels), workers=1, use_threads=True)
    await windows.start()
    try:
        dedup = Deduplicator(memory_index, windows, Policy(8, 12), Metrics(), max_in_flight=4)
        assert (await dedup.register("ns", "orig", original("chelsea"))).record.verdict == "accepted"
        for removed in (0.06, 0.2):
            record = (await dedup.register("ns", f"crop-{removed}", cropped("chelsea", removed))).record
            assert (record.verdict, record.duplicate_of) == ("duplicate", "orig"), removed
    finally:
        await windows.close()


async def test_different_photo_is_accepted(client: TestClient) -> None:
    assert (await register(client, "astronaut", original("astronaut")))[1]["verdict"] == "accepted"
    status, body = await register(client, "camera", original("camera"))
    assert status == 201 and body["verdict"] == "accepted" and body["duplicate_of"] is None


async def test_namespaces_are_independent(client: TestClient) -> None:
    data = original("astronaut")
    assert (await register(client, "x", data, ns="one"))[1]["verdict"] == "accepted"
    assert (await register(client, "x", data, ns="two"))[1]["verdict"] == "accepted"


async def test_registration_body_and_decision_event_tell_the_same_decision(
    client: TestClient, dedup: Deduplicator
) -> None:
    """HTTP and Kafka clients are told the same decision (None on HTTP is unset in the event)."""
    registered = [
        await register(client, "orig", original("rocket")),
        await register(client, "variant", resized("rocket")),
    ]
    assert [body["verdict"] for _, body in registered] == ["accepted", "duplicate"]
    assert registered[1][1]["similarity"] is not None  # every decision field has a value
    for _, body in registered:
        record = await dedup.get(NS, body["image_id"])
        assert record is not None
        event = decode_decision(
            encode_decision(decision_from_record(record, event_id="e1", replayed=False), as_json=False)
        )
        told = {
            "image_id": event.image_id,
            "namespace": event.namespace,
            "verdict": event.verdict,
            "duplicate_of": event.duplicate_of or None,
            "distance": event.distance if event.HasField("distance") else None,
            "match": event.match or None,
            "similarity": event.similarity if event.HasField("similarity") else None,
            "replayed": event.replayed,
            "sha256": event.sha256,
            "phashes": list(event.phashes),
        }
        assert set(told) == DecisionView.__required_keys__ | DecisionView.__optional_keys__
        assert {name: body[name] for name in told} == told


# --- check ------------------------------------------------------------------------------


async def test_check_is_unique_then_duplicate_and_never_registers(client: TestClient) -> None:
    data = original("astronaut")
    response = await client.post(
        check_url(), data=data, headers={"Content-Type": "application/octet-stream"}
    )
    assert response.status == 200
    body = await response.json()
    assert set(body) == {"namespace", "verdict", "duplicate_of", "similarity", "matches", "sha256", "phashes"}
    assert body["duplicate_of"] is None and body["similarity"] is None
    assert body["namespace"] == NS
    assert body["verdict"] == "unique" and body["matches"] == []
    assert body["sha256"] == hashlib.sha256(data).hexdigest()

    # check did not register: the image is unknown and a later registration is accepted
    assert (await client.get(image_url("a1"))).status == 404
    status, registered = await register(client, "a1", data)
    assert status == 201 and registered["verdict"] == "accepted"
    assert registered["phashes"] == body["phashes"]

    response = await client.post(check_url(), data=resized("astronaut"), headers=JPEG)
    body = await response.json()
    assert body["verdict"] == "duplicate"
    assert [(m["image_id"], m["match"]) for m in body["matches"]] == [("a1", "near")]

    body = await (await client.post(check_url(), data=data, headers=JPEG)).json()
    assert body["verdict"] == "duplicate"
    assert body["matches"] == [{"image_id": "a1", "distance": 0, "match": "exact"}]
    # still only the one registration
    assert (await client.get(image_url("a1") + "/duplicates")).status == 200
    assert (await (await client.get(image_url("a1") + "/duplicates")).json())["duplicates"] == []


async def test_check_lists_matches_nearest_first(client: TestClient) -> None:
    _, a = await register(client, "A", original("chelsea"))
    _, b = await register(client, "B", cropped("chelsea", 0.06))
    assert (a["verdict"], b["verdict"]) == ("accepted", "review")
    codes = {"A": int(a["phashes"][0], 16), "B": int(b["phashes"][0], 16)}

    orders = set()
    for fraction in (0.01, 0.04):
        body = await (await client.post(check_url(), data=cropped("chelsea", fraction, 88))).json()
        query = int(body["phashes"][0], 16)
        matches = body["matches"]
        assert {m["image_id"] for m in matches} == {"A", "B"}
        assert [m["distance"] for m in matches] == sorted(m["distance"] for m in matches)
        for m in matches:
            assert m["distance"] == hamming(query, codes[m["image_id"]]) and m["match"] == "near"
        orders.add(tuple(m["image_id"] for m in matches))
    # one query is closer to A, the other to B: the order follows distance, not registration
    assert orders == {("A", "B"), ("B", "A")}

    # exact bytes of B: the exact match comes first
    body = await (await client.post(check_url(), data=cropped("chelsea", 0.06))).json()
    assert body["matches"][0] == {"image_id": "B", "distance": 0, "match": "exact"}
    assert body["verdict"] == "duplicate"


# --- records, duplicates, delete --------------------------------------------------------


async def test_get_record(client: TestClient) -> None:
    data = original("coffee")
    _, decided = await register(client, "c-1", data)
    response = await client.get(image_url("c-1"))
    assert response.status == 200
    record = await response.json()
    assert set(record) == DECISION_FIELDS | {"size_bytes", "event_id", "history"}
    assert record["history"] == []
    assert record["image_id"] == "c-1" and record["namespace"] == NS
    assert record["verdict"] == "accepted"
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert record["phashes"] == decided["phashes"]
    assert all(len(h) == 16 and int(h, 16) >= 0 for h in record["phashes"])
    assert (record["width"], record["height"], record["format"]) == (600, 400, "JPEG")
    assert record["size_bytes"] == len(data)
    assert record["created_at"] == decided["created_at"]
    assert datetime.fromisoformat(record["created_at"]).utcoffset() == timedelta(0)
    assert record["event_id"] is None

    assert (await register(client, "c-2", data))[0] == 201
    record = await (await client.get(image_url("c-2"))).json()
    assert (record["verdict"], record["duplicate_of"], record["match"], record["distance"]) == (
        "duplicate",
        "c-1",
        "exact",
        0,
    )


async def test_get_unknown_image_is_404(client: TestClient) -> None:
    body = await assert_error(await client.get(image_url("nope")), 404, "not_found")
    assert "nope" in body["detail"]


async def test_duplicates_listing(client: TestClient) -> None:
    await register(client, "orig", original("chelsea"))
    await register(client, "other", original("camera"))
    await register(client, "exact", original("chelsea"))
    await register(client, "near", resized("chelsea"))
    await register(client, "review", cropped("chelsea", 0.06))

    response = await client.get(image_url("orig") + "/duplicates")
    assert response.status == 200
    body = await response.json()
    assert body["image_id"] == "orig" and body["namespace"] == NS
    listed = [(d["image_id"], d["verdict"], d["match"]) for d in body["duplicates"]]
    assert listed == [
        ("exact", "duplicate", "exact"),
        ("near", "duplicate", "near"),
        ("review", "review", "near"),
    ]
    for entry in body["duplicates"]:
        assert set(entry) == {"image_id", "verdict", "distance", "match", "created_at"}
        datetime.fromisoformat(entry["created_at"])
    assert body["duplicates"][0]["distance"] == 0

    assert (await (await client.get(image_url("other") + "/duplicates")).json())["duplicates"] == []
    await assert_error(await client.get(image_url("ghost") + "/duplicates"), 404, "not_found")


async def test_delete_then_404_and_same_bytes_accepted_again(client: TestClient) -> None:
    data = original("rocket")
    await register(client, "r1", data)
    response = await client.delete(image_url("r1"))
    assert response.status == 204
    assert await response.read() == b""
    await assert_error(await client.get(image_url("r1")), 404, "not_found")
    status, body = await register(client, "r2", data)
    assert status == 201
    assert body["verdict"] == "accepted" and body["duplicate_of"] is None
    # a near variant now matches r2, not the forgotten r1
    assert (await register(client, "r3", resized("rocket")))[1]["duplicate_of"] == "r2"


async def test_delete_unknown_is_404(client: TestClient) -> None:
    await assert_error(await client.delete(image_url("ghost")), 404, "not_found")


# --- errors -----------------------------------------------------------------------------


async def test_undecodable_image_is_400(client: TestClient) -> None:
    garbage = b"\x00this is not an image\xff" * 50
    await assert_error(
        await client.post(image_url("g"), data=garbage, headers=JPEG), 400, "undecodable_image"
    )
    await assert_error(await client.post(check_url(), data=garbage), 400, "undecodable_image")
    # truncated JPEG: right magic, missing data
    truncated = original("camera")[:2000]
    await assert_error(
        await client.post(image_url("t"), data=truncated, headers=JPEG), 400, "undecodable_image"
    )
    await assert_error(await client.get(image_url("g")), 404, "not_found")


async def test_a_file_the_decoder_fails_on_unexpectedly_is_400_not_500(client: TestClient) -> None:
    """Pillow raises TypeError, not OSError, on this TIFF: a corrupt file all the same."""
    tiff = poison_tiff()
    for url in (image_url("poison"), check_url()):
        response = await client.post(url, data=tiff, headers={"Content-Type": "image/tiff"})
        await assert_error(response, 400, "undecodable_image")


async def test_empty_body_is_400(client: TestClient) -> None:
    await assert_error(
        await client.post(image_url("e"), data=b"", headers=JPEG), 400, "empty_image"
    )
    await assert_error(await client.post(check_url(), data=b""), 400, "empty_image")


@pytest.mark.parametrize(
    "method,path",
    [
        ("POST", "/v1/namespaces/a%20b/images/x"),
        ("POST", "/v1/namespaces/a%20b/check"),
        ("GET", "/v1/namespaces/a%20b/images/x"),
        ("GET", "/v1/namespaces/a%20b/images/x/duplicates"),
        ("DELETE", "/v1/namespaces/a%20b/images/x"),
        ("POST", "/v1/namespaces/" + "n" * 65 + "/images/x"),
        ("POST", "/v1/namespaces/shop/images/" + "i" * 513),
        ("POST", "/v1/namespaces/shop/images/bad%07id"),
        ("POST", "/v1/namespaces/.../images/x"),
        ("GET", "/v1/namespaces/.../images/x"),
    ],
)
async def test_invalid_identifier_is_400(client: TestClient, method: str, path: str) -> None:
    data = original("astronaut") if method == "POST" else None
    response = await client.request(method, path, data=data, headers=JPEG)
    await assert_error(response, 400, "invalid_identifier")


@pytest.mark.parametrize("ns", ["%2E", "%2E%2E", ".", ".."])
async def test_dot_namespaces_sent_verbatim_are_400(client: TestClient, ns: str) -> None:
    """Clients resolve dot segments before sending; a raw request keeps them."""
    request = f"GET /v1/namespaces/{ns}/images/x HTTP/1.1\r\nHost: t\r\n{_auth_line(client)}\r\n"
    status, body = await _raw_request(client, request)
    assert (status, body["error"]) == (400, "invalid_identifier"), body


@pytest.mark.parametrize("image_id", ["%2E", "%2E%2E", ".", ".."])
@pytest.mark.parametrize("method", ["POST", "GET", "DELETE"])
async def test_dot_segment_image_ids_sent_verbatim_are_400(client: TestClient, image_id: str, method: str) -> None:
    """An image "." or ".." would have a Location that resolves to another URL."""
    data = original("astronaut")
    request = (
        f"{method} /v1/namespaces/{NS}/images/{image_id} HTTP/1.1\r\nHost: t\r\n{_auth_line(client)}"
        f"Content-Type: image/jpeg\r\nContent-Length: {len(data) if method == 'POST' else 0}\r\n\r\n"
    )
    status, body = await _raw_exchange(client, request.encode() + (data if method == "POST" else b""))
    assert (status, body["error"]) == (400, "invalid_identifier"), body
    assert "dot segment" in body["detail"]


async def test_same_id_different_bytes_is_409(client: TestClient) -> None:
    status, first = await register(client, "x", original("astronaut"))
    assert status == 201
    await assert_error(
        await client.post(image_url("x"), data=original("camera"), headers=JPEG),
        409,
        "image_id_conflict",
    )
    # the stored decision is untouched
    record = await (await client.get(image_url("x"))).json()
    assert record["sha256"] == first["sha256"]


async def test_too_large_body_is_413(client: TestClient) -> None:
    big = b"\xff\xd8" + b"\x00" * MAX_BYTES  # MAX_BYTES + 2 bytes, sent with Content-Length
    await assert_error(
        await client.post(image_url("big"), data=big, headers=JPEG), 413, "image_too_large"
    )
    await assert_error(
        await client.post(check_url(), data=big, headers=JPEG), 413, "image_too_large"
    )
    await assert_error(await client.get(image_url("big")), 404, "not_found")


async def _raw_exchange(client: TestClient, request: bytes) -> tuple[int, dict[str, Any]]:
    """Send bytes on a fresh connection *without finishing the body*; read one response.

    Getting an answer at all proves the server decided without waiting for the rest.
    """
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
        status = int(head.split(b" ", 2)[1])
        headers = dict(
            line.decode().lower().split(":", 1) for line in head.split(b"\r\n")[1:] if b":" in line
        )
        body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), timeout=5)
        return status, json.loads(body)
    finally:
        writer.close()


def _auth_line(client: TestClient) -> str:
    """The client's Authorization header, for requests written by hand."""
    return f"Authorization: {client.session.headers['Authorization']}\r\n"


async def _raw_request(client: TestClient, request: str) -> tuple[int, dict[str, Any]]:
    """A request sent byte for byte as written (no client-side URL normalisation)."""
    return await _raw_exchange(client, request.encode())


async def test_too_large_content_length_is_refused_before_reading(client: TestClient) -> None:
    head = (
        f"POST {image_url('huge')} HTTP/1.1\r\nHost: test\r\n{_auth_line(client)}"
        f"Content-Type: image/jpeg\r\nContent-Length: {50 * MAX_BYTES}\r\n\r\n"
    )
    status, body = await _raw_exchange(client, head.encode() + b"\xff\xd8\xff")
    assert (status, body["error"]) == (413, "image_too_large")


async def test_too_large_chunked_body_is_cut_off_at_the_limit(client: TestClient) -> None:
    chunk = b"\x00" * 16384
    chunks = (b"4000\r\n" + chunk + b"\r\n") * (MAX_BYTES // len(chunk) + 2)  # limit + ~16 KiB
    head = (
        f"POST {image_url('chunked')} HTTP/1.1\r\nHost: test\r\n{_auth_line(client)}"
        "Content-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    # the terminating 0-length chunk is never sent
    status, body = await _raw_exchange(client, head.encode() + chunks)
    assert (status, body["error"]) == (413, "image_too_large")


async def test_too_large_chunked_upload_from_a_client_is_413(client: TestClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(40):  # 40 x 16 KiB = 640 KiB, over three times the limit
            yield b"\x00" * 16384

    response = await client.post(image_url("chunked"), data=chunks(), headers=JPEG)
    assert "Content-Length" not in response.request_info.headers
    await assert_error(response, 413, "image_too_large")
    await assert_error(await client.get(image_url("chunked")), 404, "not_found")


async def test_body_of_exactly_the_limit_is_not_refused_as_too_large(client: TestClient) -> None:
    data = b"\x00" * MAX_BYTES
    await assert_error(
        await client.post(image_url("edge"), data=data, headers=JPEG), 400, "undecodable_image"
    )


async def test_byte_limit_is_enforced_by_http_even_if_the_hasher_allows_more(
    make_client: Callable[..., Awaitable[TestClient]], index: DedupIndex, metrics: Metrics
) -> None:
    lenient = Hasher(ImageLimits(10 * MAX_BYTES, MAX_PIXELS), workers=1, use_threads=True)
    await lenient.start()
    try:
        client = await make_client(Deduplicator(index, lenient, Policy(8, 12), metrics, 4))

        async def one_over() -> AsyncIterator[bytes]:
            yield b"\x00" * MAX_BYTES
            yield b"\x00"

        response = await client.post(image_url("over"), data=one_over(), headers=JPEG)
        await assert_error(response, 413, "image_too_large")
    finally:
        await lenient.close()


async def test_decompression_bomb_is_413(client: TestClient) -> None:
    bomb = encode(Image.new("L", (3000, 2000), 200), "PNG")  # 6 MP canvas in ~10 KB
    assert len(bomb) < MAX_BYTES
    await assert_error(
        await client.post(image_url("bomb"), data=bomb, headers={"Content-Type": "image/png"}),
        413,
        "decompression_bomb",
    )
    await assert_error(await client.post(check_url(), data=bomb), 413, "decompression_bomb")


@pytest.mark.parametrize("fmt", ["PPM", "ICO"])
async def test_unsupported_image_format_is_415(client: TestClient, fmt: str) -> None:
    data = encode(photo("chelsea").resize((64, 64)), fmt)
    await assert_error(
        await client.post(image_url("f"), data=data, headers={"Content-Type": "image/x-icon"}),
        415,
        "unsupported_image_type",
    )
    await assert_error(await client.post(check_url(), data=data), 415, "unsupported_image_type")


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/json", "multipart/form-data; boundary=x"]
)
async def test_non_image_content_type_is_415(client: TestClient, content_type: str) -> None:
    data = original("astronaut")
    await assert_error(
        await client.post(image_url("t"), data=data, headers={"Content-Type": content_type}),
        415,
        "unsupported_media_type",
    )
    await assert_error(
        await client.post(check_url(), data=data, headers={"Content-Type": content_type}),
        415,
        "unsupported_media_type",
    )
    await assert_error(await client.get(image_url("t")), 404, "not_found")


async def test_accepted_content_types(client: TestClient) -> None:
    for i, content_type in enumerate(
        # the last one is what `curl --data-binary @file` sends by default
        ["image/png", "IMAGE/JPEG; foo=bar", "application/octet-stream", "application/x-www-form-urlencoded"]
    ):
        response = await client.post(
            image_url(f"ct{i}"), data=original("astronaut"), headers={"Content-Type": content_type}
        )
        assert response.status == 201, await response.text()


async def test_unknown_route_is_json_404(client: TestClient) -> None:
    body = await assert_error(await client.get("/v2/nothing"), 404, "not_found")
    assert "/v2/nothing" in body["detail"]
    await assert_error(await client.get("/v1/namespaces/shop/nothing"), 404, "not_found")


async def test_wrong_method_is_json_405(client: TestClient) -> None:
    response = await client.put(image_url("x"), data=b"abc")
    await assert_error(response, 405, "method_not_allowed")
    assert set(response.headers["Allow"].split(",")) >= {"GET", "POST", "DELETE"}
    await assert_error(await client.get(check_url()), 405, "method_not_allowed")
    await assert_error(await client.post("/healthz"), 405, "method_not_allowed")


class FailingIndex(MemoryIndex):
    """Fails `register` (and `get`) with a chosen exception, to exercise the mapping."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__()
        self.exc = exc

    async def register(self, *args: Any, **kwargs: Any) -> Any:
        raise self.exc

    async def get(self, namespace: str, image_id: str) -> Any:
        if image_id == "boom":
            raise self.exc
        return await super().get(namespace, image_id)


@pytest.mark.parametrize(
    "exc",
    [
        ContentionError("lost the race 64 times"),
        IndexUnavailable("ConnectionError: Error 111 connecting to redis"),
        IndexUnavailable("TimeoutError: Timeout reading from redis"),
    ],
    ids=["contention", "redis-connection", "redis-timeout"],
)
async def test_transient_failures_are_503_with_retry_after(
    make_client: Callable[..., Awaitable[TestClient]],
    hasher: Hasher,
    metrics: Metrics,
    exc: Exception,
) -> None:
    client = await make_client(Deduplicator(FailingIndex(exc), hasher, Policy(8, 12), metrics, 4))
    response = await client.post(image_url("x"), data=original("camera"), headers=JPEG)
    await assert_error(response, 503, "unavailable")
    assert response.headers["Retry-After"] == "1"
    response = await client.get(image_url("boom"))
    await assert_error(response, 503, "unavailable")
    assert response.headers["Retry-After"] == "1"
    redis_errors = metrics.registry.get_sample_value("imgdedup_redis_errors_total", {"source": "http"})
    assert redis_errors == (None if isinstance(exc, ContentionError) else 2.0)


async def test_unexpected_error_is_500_without_traceback(
    make_client: Callable[..., Awaitable[TestClient]],
    hasher: Hasher,
    metrics: Metrics,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "secret-internal-state-1234"
    client = await make_client(
        Deduplicator(FailingIndex(RuntimeError(secret)), hasher, Policy(8, 12), metrics, 4)
    )
    with caplog.at_level(logging.INFO, logger="imgdedup.http"):
        response = await client.post(image_url("x"), data=original("camera"), headers=JPEG)
        text = await response.text()
    assert response.status == 500
    assert json.loads(text) == {"error": "internal_error", "detail": "internal server error"}
    assert secret not in text and "Traceback" not in text
    errors = [r for r in caplog.records if r.name == "imgdedup.http" and r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info is not None and secret in str(errors[0].exc_info[1])
    assert (errors[0].namespace, errors[0].image_id) == (NS, "x")  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "error",
    [HashingCrashed("the image crashed the decoder process"), HashingTimeout("it took too long")],
    ids=lambda e: e.code,
)
async def test_an_image_that_kills_or_overruns_its_worker_is_422(
    client_hashing_with: ClientHashingWith, error: InputError
) -> None:
    async def refuse(data: bytes) -> Any:
        raise error

    client = await client_hashing_with(refuse)
    await assert_error(
        await client.post(image_url("x"), data=original("camera"), headers=JPEG), 422, error.code
    )


async def test_input_errors_are_logged_with_identifiers(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="imgdedup.http"):
        await client.post(image_url("bad-one"), data=b"garbage", headers=JPEG)
    records = [r for r in caplog.records if r.name == "imgdedup.http"]
    assert records, "the rejection was not logged"
    record = records[-1]
    assert (record.namespace, record.image_id) == (NS, "bad-one")  # type: ignore[attr-defined]
    assert record.error_code == "undecodable_image"  # type: ignore[attr-defined]


# --- operations -------------------------------------------------------------------------


async def test_healthz(client: TestClient) -> None:
    response = await client.get("/healthz")
    assert response.status == 200
    assert await response.json() == {"status": "ok"}


@pytest.mark.parametrize(
    "checks,status,state",
    [
        ({"redis": "ok", "kafka": "ok"}, 200, "ready"),
        ({"redis": "ok", "kafka": "KafkaConnectionError: broker unreachable"}, 503, "unavailable"),
    ],
    ids=["ready", "unavailable"],
)
async def test_readyz_reports_every_check(
    make_client: Callable[..., Awaitable[TestClient]],
    dedup: Deduplicator,
    checks: dict[str, str],
    status: int,
    state: str,
) -> None:
    async def probe() -> dict[str, str]:
        return checks

    client = await make_client(dedup, probe)
    response = await client.get("/readyz")
    assert response.status == status
    assert await response.json() == {"status": state, "checks": checks}
    # liveness does not depend on readiness
    assert (await client.get("/healthz")).status == 200


async def test_readyz_probe_that_raises_is_unavailable(
    make_client: Callable[..., Awaitable[TestClient]], dedup: Deduplicator
) -> None:
    async def broken() -> dict[str, str]:
        raise RuntimeError("probe bug")

    client = await make_client(dedup, broken)
    response = await client.get("/readyz")
    assert response.status == 503
    assert (await response.json())["status"] == "unavailable"


async def test_metrics_exposition(client: TestClient) -> None:
    await register(client, "m1", original("astronaut"))
    await register(client, "m1", original("astronaut"))  # replay
    await register(client, "m2", original("astronaut"))  # exact duplicate
    await client.post(image_url("bad"), data=b"garbage", headers=JPEG)
    await client.get("/no/such/route")

    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"] == METRICS_CONTENT_TYPE
    text = await response.text()
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    route = IMAGE_ROUTE
    assert (
        samples[f'imgdedup_http_requests_total{{method="POST",route="{route}",status="201"}}'] == 2
    )
    assert (
        samples[f'imgdedup_http_requests_total{{method="POST",route="{route}",status="200"}}'] == 1
    )
    assert (
        samples[f'imgdedup_http_requests_total{{method="POST",route="{route}",status="400"}}'] == 1
    )
    assert samples['imgdedup_http_requests_total{method="GET",route="unmatched",status="404"}'] == 1
    assert samples['imgdedup_decisions_total{source="http",verdict="accepted"}'] == 1
    assert samples['imgdedup_decisions_total{source="http",verdict="duplicate"}'] == 1
    assert samples['imgdedup_replays_total{source="http"}'] == 1
    assert samples['imgdedup_rejections_total{code="undecodable_image",source="http"}'] == 1
    assert samples['imgdedup_decision_seconds_count{source="http"}'] == 3
    assert samples['imgdedup_in_flight{source="http"}'] == 0
    assert "imgdedup_http_requests_total" in text
    assert 'imgdedup_decisions_total{source="http",verdict="accepted"} 1.0' in text


async def test_in_flight_gauge_counts_requests_being_processed(
    client_hashing_with: ClientHashingWith, hasher: Hasher, metrics: Metrics
) -> None:
    release = asyncio.Event()
    entered = asyncio.Event()
    real = hasher.fingerprint

    async def slow(data: bytes) -> Any:
        entered.set()
        await release.wait()
        return await real(data)

    client = await client_hashing_with(slow)
    task = asyncio.create_task(register(client, "slow", original("camera")))
    await asyncio.wait_for(entered.wait(), 5)
    gauge = metrics.registry.get_sample_value("imgdedup_in_flight", {"source": "http"})
    assert gauge == 1
    release.set()
    assert (await task)[0] == 201
    assert metrics.registry.get_sample_value("imgdedup_in_flight", {"source": "http"}) == 0


#: The formats the decoder supports, as media-type subtypes (MPO is a JPEG; HEIC is the
#: usual label of HEIF photos).
IMAGE_MEDIA_TYPES = {"jpeg", "png", "gif", "webp", "bmp", "tiff", "avif", "heif", "heic", "jxl"}


def test_openapi_media_types_are_the_supported_formats() -> None:
    assert {f.lower() for f in SUPPORTED_FORMATS} - {"mpo"} == IMAGE_MEDIA_TYPES - {"heic"}


#: POST operations whose body is JSON (the review workflow), not an image.
JSON_BODY_OPERATIONS = {"resolveImage", "undoResolution"}


def _served_routes(app: web.Application) -> dict[str, set[str]]:
    served: dict[str, set[str]] = {}
    for resource in app.router.resources():
        methods = {route.method.lower() for route in resource if route.method != "HEAD"}
        served.setdefault(resource.canonical, set()).update(methods)
    return served


async def test_openapi_document_matches_the_served_routes(client: TestClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status == 200
    assert response.content_type == "application/json"
    doc = await response.json()
    assert doc["openapi"].startswith("3.1")
    validate_openapi(doc)
    documented = {
        path: {m for m in item if m in {"get", "post", "put", "patch", "delete"}}
        for path, item in doc["paths"].items()
    }
    assert documented == _served_routes(client.app)
    schemas = doc["components"]["schemas"]
    assert {
        "Decision",
        "CheckResult",
        "ImageRecord",
        "Duplicates",
        "Error",
        "Health",
        "Ready",
    } <= set(schemas)

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            target: Any = doc
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            node = target
        return node

    # every reference resolves, and every error response uses the Error schema
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                for parameter in operation:
                    assert resolve(parameter)["in"] == "path"
                continue
            for status, raw in operation["responses"].items():
                resp = resolve(raw)
                if int(status) >= 400 and path.startswith("/v1/"):
                    assert (
                        resolve(resp["content"]["application/json"]["schema"]) is schemas["Error"]
                    )
            if method == "post" and operation["operationId"] in JSON_BODY_OPERATIONS:
                body = resolve(operation["requestBody"])
                assert set(body["content"]) == {"application/json"}
            elif method == "post":
                # Each accepted format by its media type, not "any binary".
                body = resolve(operation["requestBody"])
                assert set(body["content"]) == {f"image/{fmt}" for fmt in IMAGE_MEDIA_TYPES}
                for media_type, item in body["content"].items():
                    assert item["schema"] == {"type": "string", "contentMediaType": media_type, "minLength": 1}

    image = doc["paths"][IMAGE_ROUTE]
    assert {"201", "200", "400", "409", "413", "415", "503"} <= set(image["post"]["responses"])
    assert {"200", "400", "404", "503"} <= set(image["get"]["responses"])
    assert {"204", "404"} <= set(image["delete"]["responses"])
    assert {"200", "400", "413", "415", "503"} <= set(
        doc["paths"]["/v1/namespaces/{ns}/check"]["post"]["responses"]
    )
    assert {"200", "503"} <= set(doc["paths"]["/readyz"]["get"]["responses"])

    # the documented response fields are what the API returns
    status, decision = await register(client, "doc", original("astronaut"))
    assert (
        set(decision)
        == set(schemas["Decision"]["properties"])
        == set(schemas["Decision"]["required"])
    )
    record = await (await client.get(image_url("doc"))).json()
    assert set(record) == set(schemas["ImageRecord"]["properties"])
    checked = await (await client.post(check_url(), data=original("astronaut"))).json()
    assert set(checked) == set(schemas["CheckResult"]["properties"])
    listing = await (await client.get(image_url("doc") + "/duplicates")).json()
    assert set(listing) == set(schemas["Duplicates"]["properties"])


# --- concurrency ------------------------------------------------------------------------


def _variants(name: str, count: int) -> list[bytes]:
    image = photo(name)
    out = []
    for i in range(count):
        side = 512 - 8 * (i % 6)
        out.append(encode(image.resize((side, side)), quality=60 + (i // 6) * 7))
    return out


async def test_concurrent_near_duplicates_exactly_one_accepted(client: TestClient) -> None:
    variants = _variants("astronaut", 30)
    assert len(set(variants)) == 30

    responses = await asyncio.gather(
        *(register(client, f"v{i}", data) for i, data in enumerate(variants))
    )
    assert all(status == 201 for status, _ in responses)
    verdicts = [body["verdict"] for _, body in responses]
    accepted = [body["image_id"] for _, body in responses if body["verdict"] == "accepted"]
    assert len(accepted) == 1, verdicts
    others = [body for _, body in responses if body["verdict"] != "accepted"]
    assert all(b["verdict"] == "duplicate" and b["duplicate_of"] == accepted[0] for b in others)

    listing = await (await client.get(image_url(accepted[0]) + "/duplicates")).json()
    assert len(listing["duplicates"]) == 29


@pytest.mark.parametrize("expect", ["0", "fancy-feature", "100-continue, x"])
async def test_an_unknown_expectation_is_ignored_not_a_plain_text_417(client: TestClient, expect: str) -> None:
    """aiohttp's default answer bypassed the JSON middleware; RFC 9110 allows ignoring it."""
    await assert_error(await client.get(image_url("nobody"), headers={"Expect": expect}), 404, "not_found")
    response = await client.post(image_url("exp"), data=original("astronaut"), headers={**JPEG, "Expect": expect})
    assert response.status == 201, await response.text()


async def test_expect_100_continue_still_works(client: TestClient) -> None:
    response = await client.post(image_url("cont"), data=original("astronaut"), headers=JPEG, expect100=True)
    assert response.status == 201, await response.text()


async def test_review_flow_queue_resolve_lookups_and_erase(client: TestClient) -> None:
    """A planted review is listed with its source URI, resolved as distinct (recorded on
    the record), a later copy is its duplicate; look-ups, counts and erasure answer."""
    await register(client, "orig", original("chelsea"))
    crop = cropped("chelsea", 0.06)
    response = await client.post(
        image_url("crop"), data=crop, headers={**JPEG, "X-Source-URI": "https://img.example/crop.jpg"}
    )
    assert (await response.json())["verdict"] == "review"
    queue = await (await client.get(f"/v1/namespaces/{NS}/reviews?limit=1")).json()
    [entry] = queue["reviews"]
    assert (entry["image_id"], entry["source_uri"], entry["duplicate_of"]) == ("crop", "https://img.example/crop.jpg", "orig")
    assert entry["candidates"][0]["image_id"] == "orig" and entry["candidates"][0]["has_thumbnail"]
    thumb = await client.get(image_url("orig") + "/thumbnail")
    assert thumb.status == 200 and (await thumb.read())[:8] == b"\x89PNG\r\n\x1a\n"
    await assert_error(
        await client.post(image_url("crop") + "/resolution", json={"outcome": "maybe"}), 400, "invalid_resolution"
    )
    resolved = await client.post(image_url("crop") + "/resolution", json={"outcome": "distinct", "reason": "other cat"})
    assert resolved.status == 200
    assert (await resolved.json())["verdict"] == "accepted"
    await assert_error(
        await client.post(image_url("crop") + "/resolution", json={"outcome": "distinct"}), 409, "conflict"
    )
    record = await (await client.get(image_url("crop"))).json()
    [change] = record["history"]
    assert (change["from"]["verdict"], change["to"]["verdict"], change["reason"]) == ("review", "accepted", "other cat")
    assert (await (await client.get(f"/v1/namespaces/{NS}/reviews")).json())["reviews"] == []
    assert (await register(client, "crop-again", crop))[0] == 201
    copy = (await (await client.get(image_url("crop-again"))).json())
    assert (copy["verdict"], copy["duplicate_of"]) == ("duplicate", "crop")
    by_sha = await (await client.get(f"/v1/namespaces/{NS}/images?sha256={copy['sha256']}")).json()
    assert [i["image_id"] for i in by_sha["images"]] == ["crop", "crop-again"]
    near = await (await client.get(f"/v1/namespaces/{NS}/similar?phash={copy['phashes'][0]}&radius=0")).json()
    assert near["images"] == [{"image_id": "crop", "distance": 0}]
    await assert_error(await client.get(f"/v1/namespaces/{NS}/similar?phash=zz"), 400, "invalid_query")
    stats = await (await client.get(f"/v1/namespaces/{NS}")).json()
    assert (stats["counts"], stats["indexed"], stats["open_reviews"]) == (
        {"accepted": 2, "duplicate": 1, "review": 0}, 2, 0
    )
    undo = await client.post(image_url("crop") + "/resolution/undo")
    assert (await undo.json())["verdict"] == "review"
    erased = await (await client.delete(f"/v1/namespaces/{NS}")).json()
    assert erased["removed"]["images"] == 3
    await assert_error(await client.get(image_url("orig")), 404, "not_found")
