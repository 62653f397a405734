"""`imgdedup.client` against the real service (`imgdedup serve` in a subprocess, API keys
on), directly and through a small proxy that misbehaves on cue: 503 and 429 with
Retry-After, a dropped connection before or after the service saw the request, a stall."""

from __future__ import annotations

import collections
import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from auth_helpers import ADMIN, write_keys_file
from helpers import encode, sample_bytes, sample_image

from imgdedup.client import (
    ApiError,
    AsyncClient,
    BadRequest,
    Client,
    Conflict,
    Forbidden,
    ImageTooLarge,
    NotFound,
    RateLimited,
    RetryPolicy,
    TransportError,
    Unauthenticated,
    Unavailable,
    UnsupportedImage,
)
from imgdedup.client._protocol import retry_after_seconds

MAX_BYTES = 400_000
FAST = RetryPolicy(retries=3, backoff_s=0.01, max_backoff_s=0.05, max_retry_after_s=5.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_service(keys: Path, **settings: str) -> tuple[subprocess.Popen[bytes], str]:
    """`imgdedup serve` with the keys file and IMGDEDUP_<NAME> settings: (process, URL)."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGDEDUP_")}
    env.update({
        "IMGDEDUP_HTTP_PORT": str(port), "IMGDEDUP_API_KEYS_FILE": str(keys),
        "IMGDEDUP_HASH_WORKERS": "1", "IMGDEDUP_MAX_IMAGE_BYTES": str(MAX_BYTES),
        "IMGDEDUP_LOG_LEVEL": "WARNING",
    })
    env.update({f"IMGDEDUP_{k.upper()}": v for k, v in settings.items()})
    process = subprocess.Popen([sys.executable, "-m", "imgdedup", "serve"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return process, base
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"service did not start: {process.communicate()[1].decode()[-2000:]}")
        time.sleep(0.1)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    keys = tmp_path_factory.mktemp("keys") / "api-keys.json"
    return keys, write_keys_file(keys, ADMIN, ("checker", ["shop"], ["check"]))


@pytest.fixture(scope="module")
def service(keys_file: tuple[Path, dict[str, str]]) -> Iterator[tuple[str, dict[str, str]]]:
    """`imgdedup serve`, in-memory index: (base URL, key name -> token)."""
    process, base = start_service(keys_file[0])
    yield base, keys_file[1]
    stop(process)


class Proxy:
    """Forwards to the service, except for the actions queued in `script`, one per
    request: "503", "429", "502-html", "drop" (close before forwarding), "forward-drop"
    (forward, then close without answering), "stall" (answer nothing for 2 s)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.script: collections.deque[str] = collections.deque()
        self.seen: list[tuple[str, str]] = []  # (method, path) of every request
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                proxy.seen.append((self.command, self.path))
                action = proxy.script.popleft() if proxy.script else "forward"
                if action in ("503", "429"):
                    code = "unavailable" if action == "503" else "rate_limited"
                    wait = "1" if action == "503" else "2"
                    self._answer(int(action), b'{"error": "%s", "detail": "try later"}' % code.encode(),
                                 "application/json", {"Retry-After": wait})
                    return
                if action == "502-html":
                    self._answer(502, b"<html>bad gateway</html>", "text/html", {})
                    return
                if action == "stall":
                    time.sleep(2)
                if action in ("drop", "stall"):
                    self.close_connection = True
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                upstream = httpx.request(self.command, proxy.upstream + self.path, content=body, headers=headers)
                if action == "forward-drop":
                    self.close_connection = True
                    return
                self._answer(upstream.status_code, upstream.content, upstream.headers.get("content-type", ""),
                             {k: v for k, v in upstream.headers.items() if k.lower() in ("retry-after", "location")})

            def _answer(self, status: int, body: bytes, content_type: str, headers: dict[str, str]) -> None:
                self.send_response(status)
                if content_type:
                    self.send_header("Content-Type", content_type)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_DELETE = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(service: tuple[str, dict[str, str]]) -> Iterator[Proxy]:
    p = Proxy(service[0])
    yield p
    p.close()


class Waits(list[float]):
    """A `sleep` that records the waits asked for and does not wait."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)

    async def coro(self, seconds: float) -> None:
        self.append(seconds)


def admin(service: tuple[str, dict[str, str]], url: str | None = None, **kw: Any) -> Client:
    return Client(url or service[0], service[1][ADMIN[0]], **{"retry": FAST, **kw})


def ns() -> str:
    return f"client-{uuid.uuid4().hex[:8]}"


def jpeg_copy(name: str) -> bytes:
    return encode(sample_image(name).resize((300, 200)), "JPEG", quality=80)


# --- round trip -------------------------------------------------------------------------


def test_register_check_get_duplicates_delete(service: tuple[str, dict[str, str]]) -> None:
    space, original = ns(), sample_bytes("coffee")
    with admin(service) as client:
        first = client.register(space, "coffee/1 100%.jpg", original, content_type="image/jpeg")
        assert (first.verdict, first.replayed, first.format) == ("accepted", False, "JPEG")
        assert first.image_id == "coffee/1 100%.jpg" and first.created_at is not None
        again = client.register(space, "coffee/1 100%.jpg", original)
        assert (again.verdict, again.replayed, again.sha256) == ("accepted", True, first.sha256)
        copy = client.register(space, "copy", jpeg_copy("coffee"))
        assert (copy.verdict, copy.duplicate_of, copy.match) == ("duplicate", "coffee/1 100%.jpg", "near")
        assert copy.is_duplicate and copy.distance is not None and copy.similarity is not None
        checked = client.check(space, jpeg_copy("coffee"))
        assert checked.verdict == "duplicate" and checked.matches[0].image_id == "coffee/1 100%.jpg"
        assert client.check(space, sample_bytes("rocket")).verdict == "unique"
        record = client.get(space, "coffee/1 100%.jpg")
        assert (record.verdict, record.size_bytes, record.sha256) == ("accepted", len(original), first.sha256)
        dups = client.duplicates(space, "coffee/1 100%.jpg")
        assert [(d.image_id, d.verdict) for d in dups.duplicates] == [("copy", "duplicate")]
        client.delete(space, "copy")
        with pytest.raises(NotFound) as info:
            client.get(space, "copy")
        assert (info.value.status, info.value.code) == (404, "not_found")
        with pytest.raises(NotFound):
            client.delete(space, "copy")


# --- errors carry the API's codes ---------------------------------------------------------


def test_errors_are_exceptions_with_the_api_codes(service: tuple[str, dict[str, str]], proxy: Proxy) -> None:
    space = ns()
    with admin(service, proxy.url) as client:
        client.register(space, "a", sample_bytes("camera"))
        cases: list[tuple[Any, type[ApiError], int, str]] = [
            (lambda: client.register(space, "a", sample_bytes("rocket")), Conflict, 409, "image_id_conflict"),
            (lambda: client.register(space, "b", b"not an image"), BadRequest, 400, "undecodable_image"),
            (lambda: client.register(space, "b", b""), BadRequest, 400, "empty_image"),
            (lambda: client.register("no spaces", "b", sample_bytes("camera")), BadRequest, 400, "invalid_identifier"),
            (lambda: client.register(space, "b", os.urandom(MAX_BYTES + 1)), ImageTooLarge, 413, "image_too_large"),
            (lambda: client.check(space, sample_bytes("camera"), content_type="text/plain"),
             UnsupportedImage, 415, "unsupported_media_type"),
            (lambda: client.register(space, "b", encode(sample_image("camera").resize((64, 48)), "PCX")),
             UnsupportedImage, 415, "unsupported_image_type"),
            (lambda: client.get(space, "nope"), NotFound, 404, "not_found"),
        ]
        for call, kind, status, code in cases:
            before = len(proxy.seen)
            with pytest.raises(kind) as info:
                call()
            assert (info.value.status, info.value.code) == (status, code), info.value
            assert info.value.detail
            assert len(proxy.seen) == before + 1, "a refusal is not retried"
    with Client(service[0], "imgdedup_" + "x" * 43, retry=FAST) as stranger:
        with pytest.raises(Unauthenticated) as auth:
            stranger.get(space, "a")
        assert auth.value.code == "unauthenticated"
    with Client(service[0], service[1]["checker"], retry=FAST) as checker:
        assert checker.check("shop", sample_bytes("camera")).verdict == "unique"
        with pytest.raises(Forbidden) as denied:
            checker.register("shop", "x", sample_bytes("camera"))
        assert denied.value.code == "forbidden"


# --- retries --------------------------------------------------------------------------------


def test_503_is_retried_after_the_retry_after_it_asks_for(service: tuple[str, dict[str, str]], proxy: Proxy) -> None:
    waits = Waits()
    proxy.script.extend(["503"])
    with admin(service, proxy.url, sleep=waits) as client:
        decision = client.register(ns(), "a", sample_bytes("camera"))
    assert decision.verdict == "accepted" and not decision.replayed
    assert len(proxy.seen) == 2 and len(waits) == 1
    assert 1.0 <= waits[0] <= 2.0


@pytest.mark.integration
def test_503_while_redis_is_down_is_retried_until_it_is_back(
    keys_file: tuple[Path, dict[str, str]], private_redis: Any
) -> None:
    """The real outage: the service's Redis stops, the service answers 503 `unavailable`
    with Retry-After, and the client's wait (during which Redis comes back) is followed
    by a retry that succeeds."""
    redis, url = private_redis()
    port = url.rsplit(":", 1)[1].split("/")[0]
    process, base = start_service(keys_file[0], redis_url=url, redis_prefix=f"client-{uuid.uuid4().hex[:8]}")
    restarted: list[subprocess.Popen[bytes]] = []
    try:
        waits = Waits()

        def restart_redis_then_wait(seconds: float) -> None:
            waits.append(seconds)
            if not restarted:
                restarted.append(subprocess.Popen(
                    [shutil.which("redis-server") or "redis-server", "--save", "", "--appendonly", "no",
                     "--port", port, "--bind", "127.0.0.1"], stdout=subprocess.DEVNULL))
                deadline = time.monotonic() + 10
                while not _answers(int(port)) and time.monotonic() < deadline:
                    time.sleep(0.05)

        with Client(base, keys_file[1][ADMIN[0]], retry=FAST, sleep=restart_redis_then_wait) as client:
            assert client.register("outage", "a", sample_bytes("camera")).verdict == "accepted"
            redis.terminate()
            redis.wait(timeout=10)
            decision = client.register("outage", "b", sample_bytes("rocket"))
        assert decision.verdict == "accepted"
        assert restarted and waits and waits[0] >= 1.0  # the service's Retry-After, at least 1 s
    finally:
        stop(process)
        for extra in restarted:
            stop(extra)


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def test_backoff_grows_with_jitter_and_gives_up_with_the_last_error(
    service: tuple[str, dict[str, str]], proxy: Proxy
) -> None:
    waits = Waits()
    proxy.script.extend(["502-html", "drop", "502-html", "502-html"])
    policy = RetryPolicy(retries=3, backoff_s=1.0, max_backoff_s=3.0)
    with admin(service, proxy.url, sleep=waits, retry=policy) as client:
        with pytest.raises(Unavailable) as info:
            client.check(ns(), sample_bytes("camera"))
    assert (info.value.status, info.value.code) == (502, "http_502")
    assert len(proxy.seen) == 4 and len(waits) == 3
    for attempt, wait in enumerate(waits):
        ceiling = min(3.0, 2 ** attempt)
        assert ceiling / 2 <= wait <= ceiling


def test_rate_limited_after_the_retries_carries_retry_after(service: tuple[str, dict[str, str]], proxy: Proxy) -> None:
    waits = Waits()
    proxy.script.extend(["429", "429"])
    with admin(service, proxy.url, sleep=waits, retry=RetryPolicy(retries=1, backoff_s=0.01)) as client:
        with pytest.raises(RateLimited) as info:
            client.get(ns(), "a")
    assert (info.value.code, info.value.retry_after) == ("rate_limited", 2.0)
    assert len(waits) == 1 and waits[0] >= 2.0


def test_a_retry_after_beyond_the_policy_is_not_waited_for(service: tuple[str, dict[str, str]], proxy: Proxy) -> None:
    proxy.script.extend(["429"])
    waits = Waits()
    with admin(service, proxy.url, sleep=waits, retry=RetryPolicy(max_retry_after_s=1.0)) as client:
        with pytest.raises(RateLimited):
            client.get(ns(), "a")
    assert waits == [] and len(proxy.seen) == 1


def test_a_registration_whose_answer_was_lost_is_retried_and_replays(
    service: tuple[str, dict[str, str]], proxy: Proxy
) -> None:
    space, data = ns(), sample_bytes("astronaut")
    proxy.script.extend(["drop", "forward-drop"])  # lost before, then after the service saw it
    with admin(service, proxy.url, sleep=Waits()) as client:
        decision = client.register(space, "a", data)
        assert (decision.verdict, decision.replayed) == ("accepted", True)
        assert len(proxy.seen) == 3
        assert client.get(space, "a").sha256 == decision.sha256
        proxy.script.append("forward-drop")
        client.delete(space, "a")  # the retry's 404 means the lost attempt deleted it
        with pytest.raises(NotFound):
            client.get(space, "a")


def test_no_answer_at_all_is_a_transport_error(service: tuple[str, dict[str, str]], proxy: Proxy) -> None:
    waits = Waits()
    with admin(service, f"http://127.0.0.1:{_free_port()}", sleep=waits) as client:
        with pytest.raises(TransportError, match="4 attempt"):
            client.get(ns(), "a")
    assert len(waits) == FAST.retries
    proxy.script.append("stall")
    with admin(service, proxy.url, timeout=0.3, retry=RetryPolicy(retries=0)) as client:
        with pytest.raises(TransportError, match="Timeout"):
            client.get(ns(), "a")


def test_retry_after_as_an_http_date() -> None:
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=lambda: 1445412470.0) == 10.0
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


# --- async ----------------------------------------------------------------------------------


async def test_async_client_round_trip_retries_and_errors(service: tuple[str, dict[str, str]], proxy: Proxy) -> None:
    space, waits = ns(), Waits()
    proxy.script.extend(["503", "forward-drop"])
    async with AsyncClient(proxy.url, service[1][ADMIN[0]], retry=FAST, sleep=waits.coro) as client:
        decision = await client.register(space, "a", sample_bytes("chelsea"), content_type="image/jpeg")
        assert (decision.verdict, decision.replayed) == ("accepted", True)  # the dropped attempt registered it
        assert len(waits) == 2 and waits[0] >= 1.0
        copy = await client.register(space, "b", jpeg_copy("chelsea"))
        assert (copy.verdict, copy.duplicate_of) == ("duplicate", "a")
        assert (await client.check(space, jpeg_copy("chelsea"))).duplicate_of == "a"
        assert (await client.get(space, "b")).duplicate_of == "a"
        assert [d.image_id for d in (await client.duplicates(space, "a")).duplicates] == ["b"]
        with pytest.raises(Conflict) as info:
            await client.register(space, "a", sample_bytes("rocket"))
        assert info.value.code == "image_id_conflict"
        await client.delete(space, "b")
        with pytest.raises(NotFound):
            await client.get(space, "b")


def test_the_client_imports_no_server_side_library() -> None:
    code = ("import sys, imgdedup.client; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'PIL', 'numpy', 'redis', 'aiohttp', "
            "'aiokafka', 'pillow_heif', 'pillow_jxl', 'google'}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_readme_example_runs(service: tuple[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### Python client", 1)[1]
    example = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(example.strip().splitlines()) <= 10
    monkeypatch.setenv("IMGDEDUP_TOKEN", service[1][ADMIN[0]])
    example = example.replace("http://127.0.0.1:8080", service[0]).replace('"shop"', f'"{ns()}"')
    photo = sample_bytes("camera")
    exec(example, {"os": os, "photo_bytes": photo})
    exec(example.replace("sku-1.jpg", "sku-2.jpg"), {"os": os, "photo_bytes": jpeg_copy("camera")})
    assert capsys.readouterr().out.strip().startswith("sku-2.jpg copies sku-1.jpg (distance ")
