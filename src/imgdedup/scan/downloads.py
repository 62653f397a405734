"""URL sources: the scan process downloads the images (SSRF-guarded, size- and
time-bounded, a few at once) and hands the bytes to the workers."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from imgdedup.errors import InputError
from imgdedup.fingerprint import ImageLimits
from imgdedup.scan.sources import SourceSpec

if TYPE_CHECKING:
    from imgdedup.adapters.url_fetch import UrlFetcher


class Downloads:
    def __init__(self, fetcher: UrlFetcher, concurrency: int) -> None:
        self._fetcher = fetcher
        self._concurrency = concurrency

    @classmethod
    async def open(cls, spec: SourceSpec, limits: ImageLimits, *, timeout_s: float, concurrency: int) -> Downloads:
        from imgdedup.adapters.url_fetch import UrlFetcher

        fetcher = UrlFetcher(max_bytes=limits.max_bytes, timeout_s=timeout_s, allow_private=spec.allow_private_urls)
        await fetcher.start()
        return cls(fetcher, concurrency)

    async def fetch_all(self, urls: list[str]) -> list[bytes | InputError]:
        """Each URL's bytes, or the `InputError` that refused it, in order."""
        semaphore = asyncio.Semaphore(self._concurrency)

        async def one(url: str) -> bytes | InputError:
            async with semaphore:
                try:
                    return await self._fetcher.fetch(url)
                except InputError as exc:
                    return exc

        return list(await asyncio.gather(*(one(url) for url in urls)))

    async def close(self) -> None:
        await self._fetcher.close()
