"""The retry loop's decisions, shared by the sync and async clients."""

from __future__ import annotations

import random
from typing import Any

from imgdedup.client._protocol import RETRY_STATUSES, Call, RetryPolicy, error_of
from imgdedup.client.errors import TransportError


class Attempts:
    """Tracks one call's attempts. After each, the client asks what to do: `None`
    means the answer is final (return it), a number is the wait before trying again;
    giving up raises."""

    def __init__(self, call: Call, policy: RetryPolicy, rng: random.Random) -> None:
        self._call = call
        self._policy = policy
        self._rng = rng
        self._attempt = 0
        #: An earlier attempt got no answer: it may have reached the service.
        self._maybe_done = False

    def after_transport_error(self, exc: Exception) -> float:
        delay = self._policy.delay(self._attempt, None, self._rng)
        if delay is None:
            raise TransportError(
                f"{self._call.method} {self._call.path}: no answer after {self._attempt + 1} "
                f"attempt(s): {type(exc).__name__}: {exc}"
            ) from exc
        self._attempt += 1
        self._maybe_done = True
        return delay

    def after_response(self, status: int, body: bytes, headers: Any) -> float | None:
        if status in self._call.ok:
            return None
        if status == 404 and self._call.method == "DELETE" and self._maybe_done:
            return None  # deleted by the attempt whose answer was lost
        error = error_of(status, body, headers)
        if status not in RETRY_STATUSES:
            raise error
        delay = self._policy.delay(self._attempt, error.retry_after, self._rng)
        if delay is None:
            raise error
        self._attempt += 1
        return delay
