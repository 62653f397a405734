"""UrlFetcher and its address policy: every redirect hop checked, connections pinned to
checked addresses, generic errors outward, size and time limits on every path.

Test servers listen on 127.0.0.1 only. The "public" origin is loopback made public
through the policy's `exempt` seam for its one port; the "private" origin is not exempt,
so a request that reaches it is an SSRF the guard let through.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from ipaddress import ip_address

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from imgdedup.adapters.address_policy import AddressPolicy, is_public_address
from imgdedup.adapters.url_fetch import ADDRESS_REFUSED, FETCH_FAILED, MAX_REDIRECTS, UrlFetcher
from imgdedup.errors import FetchFailed, ImageTooLarge, UrlRefused

MAX_BYTES = 64 * 1024
IMAGE = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8  # the fetcher never decodes it


# --- the address policy ---------------------------------------------------------------

REFUSED = [
    "127.0.0.1", "127.8.9.10", "10.0.0.1", "172.16.0.1", "192.168.1.1", "169.254.169.254",
    "100.64.0.1", "100.127.255.254", "0.0.0.0", "0.1.2.3", "224.0.0.1", "239.255.255.250",
    "240.0.0.1", "255.255.255.255", "192.0.0.8", "192.0.2.1", "198.18.0.1", "203.0.113.5",
    "::1", "::", "fe80::1", "fe80::1%eth0", "fc00::1", "fd12:3456::1", "fec0::1", "ff02::1", "ff0e::1",
    "2001:db8::1", "3fff::1", "5f00::1", "100::1",
    # IPv4 inside IPv6
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254", "::ffff:100.64.0.1", "::ffff:0.0.0.0",
    "::127.0.0.1", "::10.0.0.1", "::8.8.8.8",  # IPv4-compatible: deprecated, refused whatever it carries
    "64:ff9b::7f00:1", "64:ff9b::a00:1", "64:ff9b::a9fe:a9fe", "64:ff9b::6440:1",  # NAT64 to private
    "64:ff9b:1::808:808", "64:ff9b:1:ffff::7f00:1",  # local-use NAT64
    "2002:7f00:1::1", "2002:a00:1::1", "2002:a9fe:a9fe::",  # 6to4 around private IPv4
    "2001:0:4136:e378:8000:63bf:3fff:fdd2", "2001:0:a00:1::",  # Teredo
]
PUBLIC = [
    "8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "2a00:1450:4001:82a::200e",
    "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1",
]


@pytest.mark.parametrize("address", REFUSED)
def test_policy_refuses_every_non_public_form(address: str) -> None:
    assert not is_public_address(ip_address(address.split("%")[0]))
    assert not AddressPolicy().allows(address, 80)


@pytest.mark.parametrize("address", PUBLIC)
def test_policy_allows_public_addresses(address: str) -> None:
    assert is_public_address(ip_address(address))
    assert AddressPolicy().allows(address, 443)


def test_policy_escape_hatch_and_exemptions() -> None:
    assert all(AddressPolicy(allow_private=True).allows(a, 80) for a in REFUSED)
    exempt = AddressPolicy(exempt=frozenset({("127.0.0.1", 8080)}))
    assert exempt.allows("127.0.0.1", 8080)
    assert not exempt.allows("127.0.0.1", 8081), "an exemption is for one port"
    assert not exempt.allows("::ffff:127.0.0.1", 8081)
    for garbage in ("", "localhost", "127.1", "2130706433", "0x7f.0.0.1", "::1::2"):
        assert not AddressPolicy().allows(garbage, 80), garbage


# --- loopback origins -----------------------------------------------------------------


class Origin:
    """A loopback HTTP server that counts the requests each path receives."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application(middlewares=[self._count])
        app.router.add_get("/img.jpg", self._image)
        app.router.add_get("/to", self._redirect)
        app.router.add_get("/loop", self._loop)
        app.router.add_get("/big", self._big)
        app.router.add_get("/big-stream", self._big_stream)
        app.router.add_get("/missing", self._missing)
        app.router.add_get("/hang", self._hang)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _count(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        self.hits[request.path] += 1
        return await handler(request)

    async def _image(self, request: web.Request) -> web.Response:
        return web.Response(body=IMAGE, content_type="image/jpeg")

    async def _redirect(self, request: web.Request) -> web.Response:
        status = int(request.query.get("status", "302"))
        return web.Response(status=status, headers={"Location": request.query["url"]})

    async def _loop(self, request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "/loop"})

    async def _big(self, request: web.Request) -> web.Response:
        return web.Response(body=b"x" * (MAX_BYTES + 1), content_type="image/jpeg")

    async def _big_stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        response.enable_chunked_encoding()  # no Content-Length: only the bounded read stops it
        await response.prepare(request)
        try:
            for _ in range(4):
                await response.write(b"x" * (MAX_BYTES // 2))
        except (ConnectionError, RuntimeError):
            pass  # the fetcher hung up once the limit was passed
        return response

    async def _missing(self, request: web.Request) -> web.Response:
        return web.Response(status=404)

    async def _hang(self, request: web.Request) -> web.Response:
        await self.release.wait()
        return web.Response(status=204)


class ScriptedResolver(AbstractResolver):
    """Answers names from a script; the n-th lookup of a name gets its n-th answer
    (the last one repeats), so a second lookup can be told apart from the first."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self._answers = answers
        self.calls: Counter[str] = Counter()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host not in self._answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        script = self._answers[host]
        answer = script[min(self.calls[host], len(script) - 1)]
        self.calls[host] += 1
        return [
            ResolveResult(
                hostname=host, host=address, port=port, proto=0, flags=socket.AI_NUMERICHOST,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
            )
            for address in answer
        ]

    async def close(self) -> None:
        pass


@pytest.fixture
async def public() -> AsyncIterator[Origin]:
    origin = Origin()
    await origin.start()
    yield origin
    await origin.stop()


@pytest.fixture
async def private() -> AsyncIterator[Origin]:
    origin = Origin()
    await origin.start()
    yield origin
    await origin.stop()


MakeFetcher = Callable[..., Awaitable[UrlFetcher]]


@pytest.fixture
async def make_fetcher(public: Origin) -> AsyncIterator[MakeFetcher]:
    """A started fetcher; by default only the public origin's port is exempt."""
    fetchers: list[UrlFetcher] = []

    async def make(
        *, exempt: set[tuple[str, int]] | None = None, allow_private: bool = False,
        resolver: AbstractResolver | None = None, timeout_s: float = 10.0,
    ) -> UrlFetcher:
        exempt = {("127.0.0.1", public.port)} if exempt is None else exempt
        policy = None if allow_private else AddressPolicy(exempt=frozenset(exempt))
        fetcher = UrlFetcher(
            max_bytes=MAX_BYTES, timeout_s=timeout_s, allow_private=allow_private, policy=policy, resolver=resolver
        )
        await fetcher.start()
        fetchers.append(fetcher)
        return fetcher

    yield make
    for fetcher in fetchers:
        await fetcher.close()


# --- redirects ------------------------------------------------------------------------


async def test_public_origin_fetched_directly_and_through_redirects(public: Origin, make_fetcher: MakeFetcher) -> None:
    fetcher = await make_fetcher()
    assert await fetcher.fetch(f"{public.base}/img.jpg") == IMAGE
    for status in (301, 302, 303, 307, 308):
        assert await fetcher.fetch(f"{public.base}/to?status={status}&url=/img.jpg") == IMAGE
    absolute = f"{public.base}/img.jpg"
    assert await fetcher.fetch(f"{public.base}/to?url={absolute}") == IMAGE
    assert public.hits["/img.jpg"] == 7


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("target", [
    "http://127.0.0.1:{port}/img.jpg",
    "http://[::ffff:127.0.0.1]:{port}/img.jpg",
    "http://[::ffff:7f00:1]:{port}/img.jpg",
    "http://[::1]:{port}/img.jpg",
    "http://127.1:{port}/img.jpg",
    "http://2130706433:{port}/img.jpg",
    "http://localhost:{port}/img.jpg",
    "http://0x7f.0.0.1:{port}/img.jpg",
])
async def test_redirect_to_a_private_target_is_refused(
    public: Origin, private: Origin, make_fetcher: MakeFetcher, target: str, status: int
) -> None:
    fetcher = await make_fetcher()
    location = target.format(port=private.port)
    with pytest.raises(UrlRefused) as refused:
        await fetcher.fetch(f"{public.base}/to?status={status}&url={location}")
    assert refused.value.detail == ADDRESS_REFUSED
    assert public.hits["/to"] == 1, "the public hop was made"
    assert sum(private.hits.values()) == 0, "the private origin was never reached"


async def test_redirect_after_an_allowed_redirect_is_checked_too(
    public: Origin, private: Origin, make_fetcher: MakeFetcher
) -> None:
    fetcher = await make_fetcher()
    second = f"/to?url=http://127.0.0.1:{private.port}/img.jpg"
    with pytest.raises(UrlRefused):
        await fetcher.fetch(f"{public.base}/to?url={second}")
    assert public.hits["/to"] == 2 and sum(private.hits.values()) == 0


@pytest.mark.parametrize("location", ["ftp://example.org/x.jpg", "file:///etc/passwd", "http://user:pw@{host}/img.jpg"])
async def test_redirect_to_another_scheme_or_with_credentials_is_refused_generically(
    public: Origin, make_fetcher: MakeFetcher, location: str
) -> None:
    fetcher = await make_fetcher()
    with pytest.raises(UrlRefused) as refused:
        await fetcher.fetch(f"{public.base}/to?url={location.format(host=f'127.0.0.1:{public.port}')}")
    assert refused.value.detail == ADDRESS_REFUSED
    assert public.hits["/img.jpg"] == 0


async def test_redirect_loop_stops_after_the_hop_limit(public: Origin, make_fetcher: MakeFetcher) -> None:
    fetcher = await make_fetcher()
    with pytest.raises(FetchFailed) as failed:
        await fetcher.fetch(f"{public.base}/loop")
    assert failed.value.detail == FETCH_FAILED
    assert public.hits["/loop"] == MAX_REDIRECTS + 1


# --- direct URLs ----------------------------------------------------------------------


@pytest.mark.parametrize("target", [
    "http://127.0.0.1:{port}/img.jpg",
    "http://[::ffff:127.0.0.1]:{port}/img.jpg",
    "http://[::1]:{port}/img.jpg",
    "http://127.1:{port}/img.jpg",
    "http://2130706433:{port}/img.jpg",
    "http://localhost:{port}/img.jpg",
])
async def test_private_target_refused_before_connecting(
    private: Origin, make_fetcher: MakeFetcher, target: str
) -> None:
    fetcher = await make_fetcher()
    with pytest.raises(UrlRefused) as refused:
        await fetcher.fetch(target.format(port=private.port))
    assert refused.value.detail == ADDRESS_REFUSED
    assert sum(private.hits.values()) == 0


@pytest.mark.parametrize(("url", "reason"), [
    ("ftp://example.org/x.jpg", "only http and https"),
    ("http:///x.jpg", "no host"),
    ("http://user:secret@example.org/x.jpg", "credentials"),
])
async def test_malformed_urls_refused_with_their_reason(make_fetcher: MakeFetcher, url: str, reason: str) -> None:
    fetcher = await make_fetcher()
    with pytest.raises(UrlRefused, match=reason):
        await fetcher.fetch(url)


async def test_allow_private_is_the_escape_hatch(public: Origin, private: Origin, make_fetcher: MakeFetcher) -> None:
    fetcher = await make_fetcher(allow_private=True)
    assert await fetcher.fetch(f"{private.base}/img.jpg") == IMAGE
    assert await fetcher.fetch(f"{public.base}/to?url={private.base}/img.jpg") == IMAGE
    assert private.hits["/img.jpg"] == 2


# --- host names: resolved once per connection, checked, pinned --------------------------


async def test_host_names_are_checked_on_every_hop(public: Origin, private: Origin, make_fetcher: MakeFetcher) -> None:
    resolver = ScriptedResolver({"cdn.test": [["127.0.0.1"]], "internal.test": [["127.0.0.1"]]})
    fetcher = await make_fetcher(resolver=resolver)
    assert await fetcher.fetch(f"http://cdn.test:{public.port}/img.jpg") == IMAGE
    with pytest.raises(UrlRefused) as refused:
        await fetcher.fetch(f"http://cdn.test:{public.port}/to?url=http://internal.test:{private.port}/img.jpg")
    assert refused.value.detail == ADDRESS_REFUSED
    assert resolver.calls["internal.test"] == 1
    assert sum(private.hits.values()) == 0


async def test_connection_goes_to_the_address_that_was_checked(public: Origin, make_fetcher: MakeFetcher) -> None:
    """DNS rebinding: the first answer is allowed and any later one is not. The fetch
    succeeds only if the connection uses the answer that was checked, not a new lookup."""
    resolver = ScriptedResolver({"rebind.test": [["127.0.0.1"], ["::1"]]})
    fetcher = await make_fetcher(resolver=resolver)
    assert await fetcher.fetch(f"http://rebind.test:{public.port}/img.jpg") == IMAGE
    assert resolver.calls["rebind.test"] == 1


# --- errors say nothing about the network --------------------------------------------


async def test_fetch_errors_are_generic_and_the_reason_is_logged(
    public: Origin, make_fetcher: MakeFetcher, caplog: pytest.LogCaptureFixture
) -> None:
    bound_only = socket.socket()  # bound, never listening: connections to it are refused
    bound_only.bind(("127.0.0.1", 0))
    closed_port = bound_only.getsockname()[1]
    resolver = ScriptedResolver({"cdn.test": [["127.0.0.1"]]})
    fetcher = await make_fetcher(resolver=resolver, exempt={("127.0.0.1", public.port), ("127.0.0.1", closed_port)})
    caplog.set_level(logging.DEBUG, logger="imgdedup.fetch")
    failures = {
        f"{public.base}/missing": "404",
        f"http://127.0.0.1:{closed_port}/img.jpg": "cannot connect",
        f"http://nowhere.test:{public.port}/img.jpg": "cannot connect",
    }
    for url, reason in failures.items():
        caplog.clear()
        with pytest.raises(FetchFailed) as failed:
            await fetcher.fetch(url)
        assert failed.value.detail == FETCH_FAILED, url
        records = fetch_records(caplog)
        assert [r.levelno for r in records] == [logging.INFO], url
        assert reason in records[0].reason, (url, records[0].reason)  # type: ignore[attr-defined]

    caplog.clear()
    with pytest.raises(UrlRefused) as refused:
        await fetcher.fetch("http://cdn.test:9/img.jpg")  # resolves to loopback, port not exempt
    assert refused.value.detail == ADDRESS_REFUSED
    assert [r.levelno for r in fetch_records(caplog)] == [logging.INFO]
    bound_only.close()


def fetch_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "imgdedup.fetch"]


async def test_logged_url_leaves_out_the_query(public: Origin, make_fetcher: MakeFetcher, caplog) -> None:
    fetcher = await make_fetcher()
    caplog.set_level(logging.INFO, logger="imgdedup.fetch")
    with pytest.raises(FetchFailed):
        await fetcher.fetch(f"{public.base}/missing?X-Amz-Signature=secret#frag")
    assert fetch_records(caplog)[0].url == f"{public.base}/missing"  # type: ignore[attr-defined]
    assert "secret" not in caplog.text


# --- size and time limits -------------------------------------------------------------


@pytest.mark.parametrize("path", ["/big", "/big-stream"])
async def test_size_limit_holds_directly_and_through_a_redirect(
    public: Origin, make_fetcher: MakeFetcher, path: str
) -> None:
    fetcher = await make_fetcher()
    for url in (f"{public.base}{path}", f"{public.base}/to?url={path}", f"{public.base}/to?url=/to%3Furl%3D{path}"):
        with pytest.raises(ImageTooLarge, match=f"limit of {MAX_BYTES} bytes"):
            await fetcher.fetch(url)
    assert public.hits[path] == 3


async def test_time_limit_covers_the_whole_redirect_chain(public: Origin, make_fetcher: MakeFetcher) -> None:
    fetcher = await make_fetcher(timeout_s=0.3)
    with pytest.raises(FetchFailed) as failed:
        await fetcher.fetch(f"{public.base}/to?url=/hang")
    assert failed.value.detail == FETCH_FAILED
    assert public.hits["/hang"] == 1
