"""The I/O-free half of the clients: which request each call makes, what its answer
means, and how long to wait before trying again. The sync and async clients only send."""

from __future__ import annotations

import email.utils
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

from imgdedup.client.errors import ApiError, api_error

T = TypeVar("T")

#: Statuses worth another attempt: the service asked to slow down or is briefly unable
#: (429, 503), or a proxy in front of it found it gone (502, 504; every call is safe to
#: repeat, so a request that did reach the service does no harm).
RETRY_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """`retries` more attempts after the first. Waits grow exponentially from
    `backoff_s` up to `max_backoff_s`, with jitter (a random half of each wait), so
    many clients refused together do not come back together. A `Retry-After` from the
    service is honoured as asked up to `max_retry_after_s`; a longer one ends the
    retries and raises."""

    retries: int = 3
    backoff_s: float = 0.25
    max_backoff_s: float = 8.0
    max_retry_after_s: float = 30.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float | None:
        """Seconds to wait before attempt `attempt + 1` (0-based), or None: give up."""
        if attempt >= self.retries:
            return None
        ceiling = min(self.max_backoff_s, self.backoff_s * (2 ** attempt))
        backoff = ceiling / 2 + rng.uniform(0, ceiling / 2)
        if retry_after is None:
            return backoff
        if retry_after > self.max_retry_after_s:
            return None
        return retry_after + rng.uniform(0, min(backoff, 1.0))


def retry_after_seconds(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """A Retry-After header: seconds, or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now())


@dataclass(frozen=True, slots=True)
class Call:
    """One API operation: the request, and how to read its successful answers."""

    method: str
    path: str
    ok: frozenset[int]
    body: bytes | None = None
    content_type: str | None = None


def segment(value: str) -> str:
    """A namespace or image id as one path segment ('/' and '%' included, encoded)."""
    return quote(value, safe="")


def image_path(namespace: str, image_id: str) -> str:
    return f"/v1/namespaces/{segment(namespace)}/images/{segment(image_id)}"


def register_call(namespace: str, image_id: str, data: bytes, content_type: str | None) -> Call:
    return Call("POST", image_path(namespace, image_id), frozenset({200, 201}), data,
                content_type or "application/octet-stream")


def check_call(namespace: str, data: bytes, content_type: str | None) -> Call:
    return Call("POST", f"/v1/namespaces/{segment(namespace)}/check", frozenset({200}), data,
                content_type or "application/octet-stream")


def get_call(namespace: str, image_id: str) -> Call:
    return Call("GET", image_path(namespace, image_id), frozenset({200}))


def duplicates_call(namespace: str, image_id: str) -> Call:
    return Call("GET", image_path(namespace, image_id) + "/duplicates", frozenset({200}))


def delete_call(namespace: str, image_id: str) -> Call:
    return Call("DELETE", image_path(namespace, image_id), frozenset({204}))


def error_of(status: int, body: bytes, headers: Any) -> ApiError:
    """The exception for an error answer; a body that is not the API's JSON error
    (a proxy's page, say) still gives the status, with a code made from it."""
    code, detail = f"http_{status}", body[:200].decode("utf-8", "replace").strip() or f"HTTP {status}"
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
            code = parsed["error"]
            detail = str(parsed.get("detail", ""))
    except ValueError:
        pass
    return api_error(status, code, detail, retry_after_seconds(headers.get("retry-after")))


def parse_json(body: bytes) -> dict[str, Any]:
    value = json.loads(body)
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    return value
