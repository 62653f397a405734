"""Fetch an event's `url` source: http(s) only, bounded in size and time, SSRF-guarded.

Redirects are followed here, not by aiohttp, so that every hop's URL is checked before
it is requested. Each connection is pinned to a checked address:

- a host name is resolved once, inside the connector's resolver, which returns only
  the addresses the policy allows; aiohttp connects to exactly those (no second lookup,
  so DNS rebinding between check and connect is not possible), and the DNS cache is off
  so every new connection is resolved and checked afresh;
- aiohttp never calls the resolver for an IP-literal host, so literals are checked
  before each hop's request.

Errors raised to callers are generic (`url_refused`, `fetch_failed`): DNS answers,
connect errors and remote statuses would otherwise let a client map internal networks.
The reason is logged at INFO.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from imgdedup.adapters.address_policy import AddressPolicy, looks_like_ip_literal
from imgdedup.errors import FetchFailed, ImageTooLarge, UrlRefused

log = logging.getLogger("imgdedup.fetch")

MAX_REDIRECTS = 3
_REDIRECTS = frozenset({301, 302, 303, 307, 308})

ADDRESS_REFUSED = "the URL's address is not allowed"
FETCH_FAILED = "the image could not be fetched"


class _RefusedAddress(OSError):
    """Raised by the resolver; aiohttp hands it back as the connector error's os_error."""


class _Failed(Exception):
    """A fetch failure whose reason is for the log only."""


class GuardedResolver(AbstractResolver):
    """Resolves with `inner`, then returns only the addresses the policy allows."""

    def __init__(self, policy: AddressPolicy, inner: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._inner = inner or ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if self._policy.allows(r["host"], port)]
        if not allowed:
            raise _RefusedAddress(f"{host} resolves to no allowed address: {[r['host'] for r in results]}")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


def _redacted(url: URL) -> str:
    """The URL without credentials, query or fragment (signed URLs carry secrets there)."""
    try:
        return str(url.with_user(None).with_query(None).with_fragment(None))
    except ValueError:
        return "<unparsable URL>"


class UrlFetcher:
    """Downloads `url` sources for the service and the scan command.

    `policy` and `resolver` are seams for tests (an exempt loopback port, a scripted
    resolver); by default the policy is public addresses only, or anything when
    `allow_private` is set, and names are resolved by the system resolver.
    """

    def __init__(
        self,
        *,
        max_bytes: int,
        timeout_s: float,
        allow_private: bool,
        policy: AddressPolicy | None = None,
        resolver: AbstractResolver | None = None,
    ) -> None:
        self._max_bytes = max_bytes
        self._timeout_s = timeout_s
        self._policy = policy or AddressPolicy(allow_private=allow_private)
        self._inner_resolver = resolver
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(self._policy, self._inner_resolver), use_dns_cache=False, limit=64
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self._timeout_s),
            headers={"User-Agent": "imgdedup/0.1"},
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def fetch(self, url: str) -> bytes:
        """Download the image; raise UrlRefused, FetchFailed or ImageTooLarge."""
        if self._session is None:
            raise RuntimeError("UrlFetcher.start() was not awaited")
        try:
            target = URL(url)
        except (TypeError, ValueError):
            raise UrlRefused("the URL cannot be parsed") from None
        try:
            async with asyncio.timeout(self._timeout_s):
                return await self._follow(self._session, target)
        except _RefusedAddress as exc:
            log.info("url refused", extra={"url": _redacted(target), "reason": str(exc)})
            raise UrlRefused(ADDRESS_REFUSED) from None
        except _Failed as exc:
            log.info("url fetch failed", extra={"url": _redacted(target), "reason": str(exc)})
            raise FetchFailed(FETCH_FAILED) from None
        except TimeoutError:
            log.info("url fetch failed", extra={"url": _redacted(target), "reason": f"timed out after {self._timeout_s} s"})
            raise FetchFailed(FETCH_FAILED) from None

    async def _follow(self, session: aiohttp.ClientSession, url: URL) -> bytes:
        for hop in range(MAX_REDIRECTS + 1):
            try:
                self._check(url)
            except UrlRefused as exc:
                if hop == 0:
                    raise  # the client's own URL: the reason helps and reveals nothing
                raise _RefusedAddress(f"redirect to {_redacted(url)}: {exc.detail}") from None
            try:
                async with session.get(url, allow_redirects=False) as response:
                    if response.status in _REDIRECTS and "Location" in response.headers:
                        url = self._next_hop(response.url, response.headers["Location"])
                        continue
                    if response.status != 200:
                        raise _Failed(f"GET {_redacted(url)} answered HTTP {response.status}")
                    declared = response.content_length
                    if declared is not None and declared > self._max_bytes:
                        raise ImageTooLarge(self._too_large())
                    return await self._read_bounded(response.content)
            except aiohttp.ClientConnectorError as exc:
                if isinstance(exc.os_error, _RefusedAddress):
                    raise exc.os_error from None
                raise _Failed(f"cannot connect to {_redacted(url)}: {exc.os_error!r}") from None
            except aiohttp.ClientError as exc:
                raise _Failed(f"GET {_redacted(url)}: {type(exc).__name__}: {exc}") from None
        raise _Failed(f"more than {MAX_REDIRECTS} redirects")

    @staticmethod
    def _next_hop(current: URL, location: str) -> URL:
        try:
            return current.join(URL(location))
        except (TypeError, ValueError):
            raise _Failed(f"redirect to an unparsable location {location!r}") from None

    def _check(self, url: URL) -> None:
        """Refuse a URL before any connection is made for it."""
        if url.scheme not in ("http", "https"):
            raise UrlRefused(f"only http and https URLs are fetched, not {url.scheme or 'none'!r}")
        host = url.raw_host
        if not host:
            raise UrlRefused("the URL has no host")
        if url.raw_user is not None or url.raw_password is not None:
            raise UrlRefused("URLs with credentials are refused")
        if looks_like_ip_literal(host) and not self._policy.allows(host, url.port or 0):
            raise _RefusedAddress(f"{host} is not an allowed address")

    def _too_large(self) -> str:
        return f"the image exceeds the limit of {self._max_bytes} bytes"

    async def _read_bounded(self, content: Any) -> bytes:
        chunks: list[bytes] = []
        total = 0
        async for chunk in content.iter_chunked(64 * 1024):
            total += len(chunk)
            if total > self._max_bytes:
                raise ImageTooLarge(self._too_large())
            chunks.append(chunk)
        return b"".join(chunks)
