"""The blocking client."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import httpx

from imgdedup.client import _protocol as p
from imgdedup.client._attempts import Attempts
from imgdedup.client._protocol import RetryPolicy
from imgdedup.client.models import CheckResult, Decision, Duplicates, ImageRecord

#: Identifies the client in the service's logs.
USER_AGENT = "imgdedup-client/1"


def http_options(api_key: str | None, timeout: float, connect_timeout: float) -> dict[str, Any]:
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return {"headers": headers, "timeout": httpx.Timeout(timeout, connect=connect_timeout)}


class Client:
    """imgdedup's HTTP API, blocking. One instance keeps a connection pool: share it
    (it is thread-safe) and `close()` it, or use it as a context manager.

    `timeout` bounds each attempt's reads and writes (hashing a large image takes a
    while: keep it above the service's IMGDEDUP_HASH_TIMEOUT_S), `connect_timeout` each
    connection. Failed attempts are retried as `retry` says: on 429 and 503 (honouring
    Retry-After) and when no answer came (refused, reset, timed out). Every call is safe
    to repeat: registering the same image id with the same bytes replays the stored
    decision (`Decision.replayed`)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url, transport=transport, **http_options(api_key, timeout, connect_timeout)
        )
        self._retry = retry or RetryPolicy()
        self._sleep = sleep
        self._rng = random.Random()

    def register(self, namespace: str, image_id: str, data: bytes, *, content_type: str | None = None) -> Decision:
        """Decide and register: `accepted`, `duplicate` or `review`."""
        return Decision.from_json(self._json(p.register_call(namespace, image_id, data, content_type)))

    def check(self, namespace: str, data: bytes, *, content_type: str | None = None) -> CheckResult:
        """Decide without registering."""
        return CheckResult.from_json(self._json(p.check_call(namespace, data, content_type)))

    def get(self, namespace: str, image_id: str) -> ImageRecord:
        return ImageRecord.from_json(self._json(p.get_call(namespace, image_id)))

    def duplicates(self, namespace: str, image_id: str) -> Duplicates:
        """The images judged duplicate (or review) of this one."""
        return Duplicates.from_json(self._json(p.duplicates_call(namespace, image_id)))

    def delete(self, namespace: str, image_id: str) -> None:
        """Remove from the index; raises NotFound when it is not there."""
        self._send(p.delete_call(namespace, image_id))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _json(self, call: p.Call) -> dict[str, Any]:
        return p.parse_json(self._send(call).content)

    def _send(self, call: p.Call) -> httpx.Response:
        attempts = Attempts(call, self._retry, self._rng)
        headers = {"Content-Type": call.content_type} if call.content_type else None
        while True:
            try:
                response = self._http.request(call.method, call.path, content=call.body, headers=headers)
            except httpx.TransportError as exc:
                self._sleep(attempts.after_transport_error(exc))
                continue
            delay = attempts.after_response(response.status_code, response.content, response.headers)
            if delay is None:
                return response
            self._sleep(delay)
