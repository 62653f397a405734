"""The asyncio client: the same calls as `Client`, awaited."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import httpx

from imgdedup.client import _protocol as p
from imgdedup.client._attempts import Attempts
from imgdedup.client._protocol import RetryPolicy
from imgdedup.client.models import CheckResult, Decision, Duplicates, ImageRecord
from imgdedup.client.sync import http_options


class AsyncClient:
    """imgdedup's HTTP API for asyncio; see `Client` for timeouts, retries and
    idempotency. Use one per event loop, `await aclose()` it or `async with` it."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url, transport=transport, **http_options(api_key, timeout, connect_timeout)
        )
        self._retry = retry or RetryPolicy()
        self._sleep = sleep
        self._rng = random.Random()

    async def register(
        self, namespace: str, image_id: str, data: bytes, *, content_type: str | None = None
    ) -> Decision:
        return Decision.from_json(await self._json(p.register_call(namespace, image_id, data, content_type)))

    async def check(self, namespace: str, data: bytes, *, content_type: str | None = None) -> CheckResult:
        return CheckResult.from_json(await self._json(p.check_call(namespace, data, content_type)))

    async def get(self, namespace: str, image_id: str) -> ImageRecord:
        return ImageRecord.from_json(await self._json(p.get_call(namespace, image_id)))

    async def duplicates(self, namespace: str, image_id: str) -> Duplicates:
        return Duplicates.from_json(await self._json(p.duplicates_call(namespace, image_id)))

    async def delete(self, namespace: str, image_id: str) -> None:
        await self._send(p.delete_call(namespace, image_id))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _json(self, call: p.Call) -> dict[str, Any]:
        return p.parse_json((await self._send(call)).content)

    async def _send(self, call: p.Call) -> httpx.Response:
        attempts = Attempts(call, self._retry, self._rng)
        headers = {"Content-Type": call.content_type} if call.content_type else None
        while True:
            try:
                response = await self._http.request(call.method, call.path, content=call.body, headers=headers)
            except httpx.TransportError as exc:
                await self._sleep(attempts.after_transport_error(exc))
                continue
            delay = attempts.after_response(response.status_code, response.content, response.headers)
            if delay is None:
                return response
            await self._sleep(delay)
