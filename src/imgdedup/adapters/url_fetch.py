"""Fetch an event's `url` source: http(s) only, bounded in size and time, SSRF-guarded.

The address check lives in the resolver, so it applies to the address actually
connected to, on every redirect hop; checking the host name up front and connecting
later would be open to DNS rebinding.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from imgdedup.errors import FetchFailed, ImageTooLarge, UrlRefused

MAX_REDIRECTS = 3


def is_public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class _RefusedAddress(OSError):
    pass


class GuardedResolver(AbstractResolver):
    """Resolves like the default resolver, then refuses non-public addresses."""

    def __init__(self, allow_private: bool) -> None:
        self._inner = ThreadedResolver()
        self._allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if self._allow_private:
            return results
        public = [r for r in results if is_public_address(r["host"])]
        if not public:
            raise _RefusedAddress(f"{host} resolves only to private or reserved addresses")
        return public

    async def close(self) -> None:
        await self._inner.close()


class UrlFetcher:
    def __init__(self, *, max_bytes: int, timeout_s: float, allow_private: bool) -> None:
        self._max_bytes = max_bytes
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._allow_private = allow_private
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(resolver=GuardedResolver(self._allow_private), limit=64)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, headers={"User-Agent": "imgdedup/0.1"}
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _check_url(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise UrlRefused(f"only http and https URLs are fetched, not {parts.scheme or 'none'!r}")
        if not parts.hostname:
            raise UrlRefused("the URL has no host")
        if parts.username or parts.password:
            raise UrlRefused("URLs with credentials are refused")
        if not self._allow_private:
            try:
                literal = ipaddress.ip_address(parts.hostname)
            except ValueError:
                return
            if not is_public_address(str(literal)):
                raise UrlRefused(f"{parts.hostname} is a private or reserved address")

    async def fetch(self, url: str) -> bytes:
        """Download the image; raise UrlRefused, FetchFailed or ImageTooLarge."""
        self._check_url(url)
        if self._session is None:
            raise RuntimeError("UrlFetcher.start() was not awaited")
        try:
            async with self._session.get(url, max_redirects=MAX_REDIRECTS) as response:
                if response.status != 200:
                    raise FetchFailed(f"GET {url} answered HTTP {response.status}")
                declared = response.content_length
                if declared is not None and declared > self._max_bytes:
                    raise ImageTooLarge(
                        f"{url} is {declared} bytes; the limit is {self._max_bytes} bytes"
                    )
                return await self._read_bounded(response.content, url)
        except (UrlRefused, FetchFailed, ImageTooLarge):
            raise
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, _RefusedAddress):
                raise UrlRefused(str(exc.os_error)) from None
            raise FetchFailed(f"cannot connect for {url}: {exc.os_error}") from None
        except aiohttp.TooManyRedirects:
            raise FetchFailed(f"{url}: more than {MAX_REDIRECTS} redirects") from None
        except TimeoutError:
            raise FetchFailed(f"{url}: timed out after {self._timeout.total} s") from None
        except aiohttp.ClientError as exc:
            raise FetchFailed(f"{url}: {type(exc).__name__}: {exc}") from None

    async def _read_bounded(self, content: Any, url: str) -> bytes:
        chunks: list[bytes] = []
        total = 0
        async for chunk in content.iter_chunked(64 * 1024):
            total += len(chunk)
            if total > self._max_bytes:
                raise ImageTooLarge(f"{url} exceeds the limit of {self._max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
