"""The state entries of the first-wins protocol (kept or pending under a lease) and the
clock the leases are measured on."""

from __future__ import annotations

import time
from dataclasses import dataclass

from imgdedup.index.redis.encoding import KEPT_STATE_TAG


class Restart(Exception):
    """This registration attempt cannot finish (our pending entry was removed by a waiter,
    the namespace was re-created, the image judged against was removed): start over."""


@dataclass(frozen=True, slots=True)
class State:
    """A seq's entry in the namespace's state hash."""

    kept: bool
    lease_ms: int  # pending only
    sha256: str
    image_id: str

    @classmethod
    def parse(cls, raw: bytes) -> State:
        """A stored entry: binary kept (`encoding.kept_state`) or the text forms."""
        if raw[:1] == KEPT_STATE_TAG:
            return cls(True, 0, raw[1:33].hex(), raw[33:].decode())
        text = raw.decode()
        if text.startswith("P|"):
            _, lease, sha, image_id = text.split("|", 3)
            return cls(False, int(lease), sha, image_id)
        _, sha, image_id = text.split("|", 2)
        return cls(True, 0, sha, image_id)


def pending_state(lease_until_ms: int, sha256_hex: str, image_id: str) -> str:
    return f"P|{lease_until_ms}|{sha256_hex}|{image_id}"


class RedisClock:
    """Redis server time (from the insert script), advanced by our monotonic clock, so
    lease checks do not depend on replicas' wall clocks agreeing."""

    def __init__(self, redis_now_ms: int) -> None:
        self._base = redis_now_ms
        self._start = time.monotonic()

    def now_ms(self) -> int:
        return self._base + int((time.monotonic() - self._start) * 1000)


class OwnLease:
    """Our pending entry (its seq and current payload) while we wait on earlier ones:
    renewed at half its lease."""

    def __init__(self, seq: int, payload: bytes, sha256_hex: str, image_id: str, lease_ms: int) -> None:
        self.seq = seq
        self.payload = payload
        self._sha = sha256_hex
        self._image_id = image_id
        self._lease_ms = lease_ms
        self._expires_ms = State.parse(payload).lease_ms

    def due(self, now_ms: int) -> bool:
        return self._expires_ms - now_ms < self._lease_ms // 2

    def renewed(self, now_ms: int) -> str:
        self._expires_ms = now_ms + self._lease_ms
        return pending_state(self._expires_ms, self._sha, self._image_id)
