"""A Redis that cannot serve surfaces from the index as `IndexUnavailable` (a transient
error: the consumer retries it, HTTP answers 503), never as a redis-py exception."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from functools import partial

import pytest
import redis.asyncio as aioredis
import redis.exceptions
from helpers import make_fingerprint

from imgdedup.decisions.rules import Policy, decide
from imgdedup.errors import IndexUnavailable, TransientError
from imgdedup.index.redis.index import RedisMihIndex

pytestmark = pytest.mark.integration

NS = "outage"
DECIDE = partial(decide, policy=Policy(8, 12))


def closed_port() -> int:
    """A local port nothing listens on (bound once, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def every_operation(index: RedisMihIndex) -> dict[str, Callable[[], Awaitable[object]]]:
    fp = make_fingerprint(0x0123456789ABCDEF, b"x")
    return {
        "register": lambda: index.register(NS, "a", fp, DECIDE, radius=12),
        "lookup": lambda: index.lookup(NS, fp, radius=12),
        "query": lambda: index.query(NS, fp.codes[0], radius=12),
        "get": lambda: index.get(NS, "a"),
        "remove": lambda: index.remove(NS, "a"),
        "duplicates_of": lambda: index.duplicates_of(NS, "a"),
        "substrings": lambda: index.substrings(NS),
        "ping": index.ping,
        "drop_namespace": lambda: index.drop_namespace(NS),
    }


@pytest.mark.parametrize("mirror", [False, True], ids=["buckets", "mirror"])
async def test_unreachable_redis_is_index_unavailable(mirror: bool) -> None:
    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{closed_port()}/0", socket_connect_timeout=1)
    index = RedisMihIndex(client, prefix="imgdedup-test-unreachable", mirror=mirror)
    try:
        for name, operation in every_operation(index).items():
            with pytest.raises(IndexUnavailable) as raised:
                await operation()
            assert isinstance(raised.value, TransientError), name
            assert isinstance(raised.value.__cause__, redis.exceptions.ConnectionError), name
    finally:
        await index.close()
