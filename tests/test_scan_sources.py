"""`imgdedup scan` over a URL list (served by a real HTTP server on 127.0.0.1) and over
an S3 bucket/prefix (a real S3-compatible server: moto in server mode)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from scan_helpers import build_estate, free_port, groups, run

from imgdedup.adapters.url_fetch import ADDRESS_REFUSED, FETCH_FAILED
from imgdedup.scan import ScanError


@pytest.fixture(scope="module")
def estate(tmp_path_factory: pytest.TempPathFactory):
    return build_estate(tmp_path_factory.mktemp("estate") / "estate")


@pytest.fixture(scope="module")
def folder_groups(estate, tmp_path_factory: pytest.TempPathFactory) -> set[frozenset[str]]:
    """The clusters of the same files scanned as a folder: every source must agree."""
    return groups(run(estate.root, tmp_path_factory.mktemp("folder-out")).report)


# --- URL list -------------------------------------------------------------------------


class _FileServer:
    """aiohttp serving a folder on 127.0.0.1, in its own thread and event loop."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.requests = 0
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/files/"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        @web.middleware
        async def count(request: web.Request, handler):  # type: ignore[no-untyped-def]
            self.requests += 1
            return await handler(request)

        app = web.Application(middlewares=[count])
        app.router.add_static("/files/", self.root)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def __enter__(self) -> _FileServer:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="module")
def server(estate) -> Iterator[_FileServer]:
    with _FileServer(estate.root) as srv:
        yield srv


@pytest.fixture
def url_list(estate, server: _FileServer, tmp_path: Path) -> Path:
    lines = ["# estate served by the test", ""]
    lines += [server.base + key for key in estate.files]
    lines += [server.base + "originals/camera.jpg", server.base + "missing.jpg"]  # a repeat and a 404
    path = tmp_path / "urls.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_url_list_scan_finds_the_same_clusters_as_the_folder(
    estate, server: _FileServer, url_list: Path, folder_groups: set, tmp_path: Path
) -> None:
    result = run(url_list, tmp_path / "out", allow_private_urls=True)
    report = result.report
    assert report["source"] == str(url_list.resolve())
    assert groups(report, strip=server.base) == folder_groups
    unreadable = {u["key"].removeprefix(server.base): u for u in report["unreadable"]}
    missing = unreadable["missing.jpg"]
    assert (missing["error"], missing["detail"]) == ("fetch_failed", FETCH_FAILED), "no remote status in the report"
    for key, code in estate.unreadable.items():
        assert unreadable[key]["error"] == code
    assert unreadable["notes.txt"]["error"] == "undecodable_image", "URL lists try every URL"
    assert report["totals"]["files"] == len(estate.files) + 1, "the repeated URL is scanned once"
    member = report["clusters"][0]["members"][0]
    assert member["uri"] == member["key"] and member["key"].startswith(server.base)
    assert (tmp_path / "out/report.html").exists()

    before = server.requests
    again = run(url_list, tmp_path / "out", allow_private_urls=True)
    assert again.hashed == 1, "only the failed download (retryable) is tried again"
    assert again.reused == len(estate.files)
    assert server.requests - before == 1 + 0, "nothing downloaded again: thumbnails come from the checkpoint"


def test_url_list_refuses_private_addresses_unless_allowed(url_list: Path, tmp_path: Path) -> None:
    report = run(url_list, tmp_path / "out").report
    assert report["totals"]["images"] == 0
    assert {u["error"] for u in report["unreadable"]} == {"url_refused"}
    assert report["unreadable"][0]["detail"] == ADDRESS_REFUSED


def test_url_list_lines_that_are_not_urls(tmp_path: Path) -> None:
    path = tmp_path / "urls.txt"
    path.write_text("this is not a list of links\nftp://example.com/a.jpg\n")
    report = run(path, tmp_path / "out", allow_private_urls=True).report
    assert [u["error"] for u in report["unreadable"]] == ["url_refused", "url_refused"]
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(ScanError, match="holds no URLs"):
        run(tmp_path / "empty.txt", tmp_path / "out2")


# --- S3 -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    moto_server = pytest.importorskip("moto.server")
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch):
    boto3 = pytest.importorskip("boto3")
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")


def _upload(s3, estate, bucket: str, prefix: str) -> None:
    s3.create_bucket(Bucket=bucket)
    for key, data in estate.files.items():
        s3.put_object(Bucket=bucket, Key=prefix + key, Body=data)
    s3.put_object(Bucket=bucket, Key=prefix + "empty-folder/", Body=b"")  # a console "folder"
    s3.put_object(Bucket=bucket, Key="elsewhere/camera.jpg", Body=estate.files["originals/camera.jpg"])


def test_s3_prefix_scan_finds_the_same_clusters_as_the_folder(
    estate, s3, s3_endpoint: str, folder_groups: set, tmp_path: Path
) -> None:
    _upload(s3, estate, "estate", "photos/")
    result = run("s3://estate/photos/", tmp_path / "out", s3_endpoint_url=s3_endpoint)
    report = result.report
    assert report["source"] == "s3://estate/photos/"
    assert groups(report, strip="photos/") == folder_groups, "objects outside the prefix are not scanned"
    unreadable = {u["key"]: u["error"] for u in report["unreadable"]}
    assert unreadable == {"photos/" + k: code for k, code in estate.unreadable.items()}
    assert [s["key"] for s in report["skipped"]] == ["photos/notes.txt"]
    member = report["clusters"][0]["members"][0]
    assert member["uri"] == "s3://estate/" + member["key"]
    assert member["modified"] is not None, "LastModified is the age of an object"
    assert result.hashed == len(estate.images) + len(estate.unreadable)

    again = run("s3://estate/photos/", tmp_path / "out", s3_endpoint_url=s3_endpoint)
    assert again.hashed == 0 and again.reused == result.hashed, "unchanged ETags: nothing read again"
    s3.put_object(Bucket="estate", Key="photos/originals/rocket.jpg", Body=estate.files["originals/coffee.jpg"])
    changed = run("s3://estate/photos/", tmp_path / "out", s3_endpoint_url=s3_endpoint)
    assert changed.hashed == 1, "a changed object (new ETag) is hashed again"
    exact = {m["key"]: m["match"] for c in changed.report["clusters"] for m in c["members"]}
    assert "exact" in {exact["photos/originals/rocket.jpg"], exact["photos/originals/coffee.jpg"]}


def test_s3_missing_bucket_is_a_clear_error(s3, s3_endpoint: str, tmp_path: Path) -> None:
    with pytest.raises(ScanError, match="NoSuchBucket"):
        run("s3://no-such-bucket/x/", tmp_path / "out", s3_endpoint_url=s3_endpoint)


def test_s3_endpoint_from_the_environment(estate, s3, s3_endpoint: str, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _upload(s3, estate, "env-endpoint", "")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    report = run("s3://env-endpoint", tmp_path / "out").report
    assert report["totals"]["images"] == len(estate.images) + 1  # with elsewhere/camera.jpg
