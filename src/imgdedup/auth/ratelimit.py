"""Per-credential request limits: one token bucket per principal, in this process.

Each principal may make `burst` requests at once and `rate` per second sustained. The
buckets live in this replica only, so with N replicas behind a load balancer a
credential gets up to N times the rate. Memory is bounded: one bucket per principal
seen, at most `max_buckets` of them (API keys are a fixed set; OIDC subjects beyond the
bound evict the least recently seen, which then starts again from a full bucket).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

#: Most buckets kept at once (about 100 bytes each).
MAX_BUCKETS = 10_000


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """`rate` requests/s with bursts of `burst`; rate 0 means unlimited."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_buckets: int = MAX_BUCKETS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate < 0 or burst < 1 or max_buckets < 1:
            raise ValueError("rate must be >= 0, burst and max_buckets >= 1")
        self.rate = rate
        self.burst = burst
        self._max = max_buckets
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def __len__(self) -> int:
        return len(self._buckets)

    def acquire(self, key: str) -> float:
        """Take one request for `key`: 0.0 if allowed, else the seconds until it would be."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
            if len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate


def retry_after_seconds(wait: float) -> int:
    """The Retry-After value (whole seconds, at least 1) for a wait in seconds."""
    return max(1, math.ceil(wait))
