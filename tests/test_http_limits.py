"""The HTTP server under hostile or unlucky clients, through the runner `imgdedup serve`
uses (`http_runner`): request bodies held within a byte budget, a read deadline against
slow clients (slowloris), and clients that hang up mid-request.

Clients here are raw sockets where the exact bytes and their pacing matter. The trickling
clients sleep between bytes: their slowness is the behaviour under test.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from PIL import Image

from imgdedup.adapters.http_api import create_http_app
from imgdedup.adapters.http_server import http_runner
from imgdedup.auth import Authenticator
from imgdedup.config import Settings
from imgdedup.decisions.deduplicator import Deduplicator
from imgdedup.decisions.rules import Policy
from imgdedup.fingerprint import ImageLimits
from imgdedup.hasher import Hasher
from imgdedup.index.memory import MemoryIndex
from imgdedup.metrics import Metrics

NS = "shop"
MAX_BYTES = 200_000


def jpeg(seed: int, side: int = 256) -> bytes:
    image = Image.effect_mandelbrot((side, side), (-2 + seed / 10, -1.5, 1, 1.5), 50).convert("RGB")
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


IMAGE = jpeg(1)
#: A budget with room for exactly one IMAGE (the largest image allowed, too).
ONE_IMAGE = {"max_image_bytes": len(IMAGE), "max_body_bytes_in_flight": len(IMAGE)}


@dataclass
class Served:
    host: str
    port: int
    metrics: Metrics
    #: Set to let hashing proceed (it waits for this when the server is gated).
    release: asyncio.Event
    #: How many images reached hashing.
    hashing: list[bytes]

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, image_id: str) -> str:
        return f"{self.base}/v1/namespaces/{NS}/images/{image_id}"

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)

    def requests(self, status: int) -> float:
        return sum(
            sample.value
            for family in self.metrics.registry.collect()
            if family.name == "imgdedup_http_requests"
            for sample in family.samples
            if sample.name.endswith("_total") and sample.labels["status"] == str(status)
        )


@asynccontextmanager
async def serve(*, gated: bool = False, **overrides: Any) -> AsyncIterator[Served]:
    """The service's HTTP server on a free port, over the in-memory index. `gated`: hashing
    waits for `Served.release`, so admitted bodies stay held."""
    settings = Settings(**{"max_image_bytes": MAX_BYTES, "http_host": "127.0.0.1", "http_port": 0, **overrides})
    settings.validate()
    hasher = Hasher(ImageLimits(MAX_BYTES, 4_000_000, crop_windows=False), workers=2, use_threads=True)
    await hasher.start()
    metrics = Metrics()
    release = asyncio.Event()
    hashing: list[bytes] = []
    if gated:
        real = hasher.fingerprint

        async def gate(data: bytes) -> Any:
            hashing.append(data)
            await release.wait()
            return await real(data)

        hasher.fingerprint = gate  # type: ignore[method-assign]
    dedup = Deduplicator(MemoryIndex(), hasher, Policy(8, 12), metrics, max_in_flight=64)

    async def ready() -> dict[str, str]:
        return {"index": "ok"}

    app = create_http_app(dedup, metrics, settings, ready, Authenticator.disabled())  # limits, not access
    runner = http_runner(app, settings, metrics)
    await runner.setup()
    site = web.TCPSite(runner, settings.http_host, 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield Served(settings.http_host, port, metrics, release, hashing)
    finally:
        release.set()
        await runner.cleanup()
        await hasher.close()


async def eventually(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Wait for server-side state the test cannot await directly (it changes inside the
    server's own tasks, on bytes the test sent through a socket)."""
    try:
        async with asyncio.timeout(timeout):
            while not condition():  # noqa: ASYNC110 - no event to await: the state is the server's
                await asyncio.sleep(0.005)
    except TimeoutError:
        pytest.fail(f"not within {timeout} s: {what}")


async def post(session: aiohttp.ClientSession, url: str, data: bytes) -> tuple[int, dict[str, Any], str | None]:
    async with session.post(url, data=data, headers={"Content-Type": "image/jpeg"}) as response:
        return response.status, await response.json(), response.headers.get("Retry-After")


def head(image_id: str, length: int | None) -> bytes:
    size = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (
        f"POST /v1/namespaces/{NS}/images/{image_id} HTTP/1.1\r\nHost: t\r\n"
        f"Content-Type: image/jpeg\r\n{size}\r\n\r\n"
    ).encode()


async def closed_by_server(reader: asyncio.StreamReader, within: float) -> bytes:
    """Everything the server sent until it closed the connection."""
    return await asyncio.wait_for(reader.read(), within)


# --- finding 3: bodies are held within a byte budget ----------------------------------------


async def test_bodies_held_at_once_never_exceed_the_budget() -> None:
    budget = 3 * len(IMAGE)
    async with serve(gated=True, max_image_bytes=len(IMAGE), max_body_bytes_in_flight=budget, http_body_wait_s=0) as served:
        async with aiohttp.ClientSession() as session:
            tasks = [asyncio.create_task(post(session, served.url(f"i{i}"), IMAGE)) for i in range(10)]
            refused = []
            while len(refused) < 7:  # the three admitted wait in hashing until released
                done, _ = await asyncio.wait([t for t in tasks if t not in refused], return_when=asyncio.FIRST_COMPLETED)
                refused.extend(done)
            for task in refused:
                status, body, retry_after = task.result()
                assert (status, body["error"], retry_after) == (503, "overloaded", "1"), body
            assert len(served.hashing) == 3
            assert served.sample("imgdedup_http_body_bytes") == budget
            assert served.sample("imgdedup_http_body_bytes_peak") == budget

            served.release.set()
            admitted = [await task for task in tasks if task not in refused]
            assert sorted(status for status, _, _ in admitted) == [201, 201, 201]
            assert served.sample("imgdedup_http_body_bytes") == 0
            assert served.sample("imgdedup_http_body_bytes_peak") == budget
            assert served.requests(503) == 7


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_room_is_reserved_before_the_body_is_read(chunked: bool) -> None:
    """A body still arriving already holds its room: the bound covers the reading."""
    async with serve(**ONE_IMAGE, http_body_wait_s=0) as served:
        _reader, writer = await asyncio.open_connection(served.host, served.port)
        try:
            first = IMAGE[:1000]
            writer.write(head("slow", None if chunked else len(IMAGE)))
            writer.write(b"%x\r\n%s\r\n" % (len(first), first) if chunked else first)
            await writer.drain()
            await eventually(lambda: served.sample("imgdedup_http_body_bytes") == len(IMAGE), "room reserved")
            async with aiohttp.ClientSession() as session:
                status, body, _ = await post(session, served.url("other"), IMAGE)
            assert (status, body["error"]) == (503, "overloaded")
            assert served.hashing == []
        finally:
            writer.close()


async def test_a_request_waits_for_room_within_the_bound() -> None:
    async with serve(gated=True, **ONE_IMAGE, http_body_wait_s=20) as served:
        async with aiohttp.ClientSession() as session:
            first = asyncio.create_task(post(session, served.url("first"), IMAGE))
            await eventually(lambda: len(served.hashing) == 1, "first body admitted")
            second = asyncio.create_task(post(session, served.url("second"), IMAGE))
            await eventually(lambda: served.sample("imgdedup_http_body_waiting") == 1, "second waits")
            assert not second.done()
            served.release.set()
            assert (await first)[0] == 201
            assert (await second)[0] == 201
            assert served.sample("imgdedup_http_body_waiting") == 0


async def test_a_request_that_finds_no_room_within_the_bound_is_503() -> None:
    async with serve(gated=True, **ONE_IMAGE, http_body_wait_s=0.2) as served:
        async with aiohttp.ClientSession() as session:
            first = asyncio.create_task(post(session, served.url("first"), IMAGE))
            await eventually(lambda: len(served.hashing) == 1, "first body admitted")
            status, body, retry_after = await post(session, served.url("second"), IMAGE)
            assert (status, body["error"], retry_after) == (503, "overloaded", "1")
            served.release.set()
            assert (await first)[0] == 201


# --- finding 5: slow clients are cut off ------------------------------------------------------


READ_TIMEOUT = 0.5
SLOW = {"http_read_timeout_s": READ_TIMEOUT, "http_body_wait_s": 0}


async def test_a_client_that_sends_nothing_is_disconnected() -> None:
    async with serve(**SLOW) as served:
        reader, writer = await asyncio.open_connection(served.host, served.port)
        try:
            assert await closed_by_server(reader, within=20 * READ_TIMEOUT) == b""
        finally:
            writer.close()
        assert served.sample("imgdedup_http_read_timeouts_total", phase="head") == 1


async def trickle(writer: asyncio.StreamWriter, reader: asyncio.StreamReader, data: bytes) -> int:
    """Send one byte per READ_TIMEOUT/5 until the server closes; the bytes sent."""
    for sent, byte in enumerate(data):
        if reader.at_eof() or writer.is_closing():
            return sent
        try:
            writer.write(bytes([byte]))
            await writer.drain()
        except ConnectionError:
            return sent
        try:
            await asyncio.wait_for(reader.read(), READ_TIMEOUT / 5)
            return sent + 1  # EOF: closed by the server
        except TimeoutError:
            continue
    return len(data)


async def test_a_trickled_head_is_cut_off() -> None:
    async with serve(**SLOW) as served:
        request = f"GET /v1/namespaces/{NS}/images/x HTTP/1.1\r\nHost: t\r\nX-Pad: {'p' * 200}\r\n\r\n".encode()
        reader, writer = await asyncio.open_connection(served.host, served.port)
        try:
            sent = await trickle(writer, reader, request)
        finally:
            writer.close()
        assert sent < len(request), "the whole head went through: no read deadline"
        assert served.sample("imgdedup_http_read_timeouts_total", phase="head") == 1
        assert served.requests(404) == 0


async def test_a_trickled_body_is_cut_off_and_counted_as_408(caplog: pytest.LogCaptureFixture) -> None:
    async with serve(**SLOW) as served:
        reader, writer = await asyncio.open_connection(served.host, served.port)
        try:
            writer.write(head("slow", len(IMAGE)))
            with caplog.at_level(logging.INFO, logger="imgdedup"):
                sent = await trickle(writer, reader, IMAGE)
                assert sent < len(IMAGE)
                await eventually(lambda: served.requests(408) == 1, "the cut-off request is counted")
        finally:
            writer.close()
        assert served.sample("imgdedup_http_read_timeouts_total", phase="body") == 1
        assert served.requests(500) == 0 and served.sample("imgdedup_http_body_bytes") == 0
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_the_deadline_is_per_request_and_stops_once_the_body_is_in() -> None:
    """Idle time between keep-alive requests and time spent deciding are not the
    client's: only sending is timed."""
    async with serve(gated=True, **SLOW) as served:
        reader, writer = await asyncio.open_connection(served.host, served.port)
        try:
            writer.write(head("a", len(IMAGE)) + IMAGE)
            await writer.drain()
            await eventually(lambda: len(served.hashing) == 1, "body in, hashing")
            await asyncio.sleep(3 * READ_TIMEOUT)  # deciding takes longer than the deadline
            served.release.set()
            response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert response.startswith(b"HTTP/1.1 201")
            length = int(next(line for line in response.split(b"\r\n") if line.lower().startswith(b"content-length"))
                         .split(b":")[1])
            await reader.readexactly(length)
            await asyncio.sleep(3 * READ_TIMEOUT)  # idle on the kept-alive connection
            writer.write(f"GET /v1/namespaces/{NS}/images/a HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            await writer.drain()
            assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).startswith(b"HTTP/1.1 200")
        finally:
            writer.close()
        assert served.sample("imgdedup_http_read_timeouts_total", phase="head") is None
        assert served.sample("imgdedup_http_read_timeouts_total", phase="body") is None


# --- finding 7: a client that hangs up is not a server error ----------------------------------


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_client_that_disconnects_mid_body_is_499_without_traceback(
    caplog: pytest.LogCaptureFixture, chunked: bool
) -> None:
    async with serve() as served:
        with caplog.at_level(logging.DEBUG, logger="imgdedup"):
            _reader, writer = await asyncio.open_connection(served.host, served.port)
            part = IMAGE[:500]
            writer.write(head("gone", None if chunked else len(IMAGE)))
            writer.write(b"%x\r\n%s\r\n" % (len(part), part) if chunked else part)
            await writer.drain()
            await eventually(lambda: served.sample("imgdedup_http_body_bytes") != 0, "body being read")
            writer.close()
            await eventually(lambda: served.requests(499) == 1, "the abandoned request is counted")
        assert served.requests(500) == 0
        assert served.sample("imgdedup_http_body_bytes") == 0
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        gone = [r for r in caplog.records if "disconnected" in r.getMessage()]
        assert len(gone) == 1 and gone[0].levelno == logging.INFO and gone[0].exc_info is None
        assert (gone[0].namespace, gone[0].image_id, gone[0].http_status) == (NS, "gone", 499)  # type: ignore[attr-defined]


# --- every answer is JSON, also to requests the HTTP parser refuses -----------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /v1/namespaces/shop/images/x HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n",
        b"POST /v1/namespaces/shop/images/x HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n",
        b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: t\r\n\r\n",
    ],
    ids=["not-http", "header-without-colon", "negative-length", "line-too-long"],
)
async def test_a_request_the_parser_refuses_gets_a_json_400(
    request_bytes: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    async with serve() as served:
        reader, writer = await asyncio.open_connection(served.host, served.port)
        try:
            writer.write(request_bytes)
            await writer.drain()
            answer = await closed_by_server(reader, within=10)
        finally:
            writer.close()
    head_bytes, _, body = answer.partition(b"\r\n\r\n")
    assert re.match(rb"HTTP/1\.[01] 400 ", head_bytes), answer[:200]
    assert b"content-type: application/json" in head_bytes.lower()
    assert json.loads(body) == {"error": "malformed_request", "detail": "the request is not valid HTTP/1.1"}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "a client's bad bytes are not our fault"
