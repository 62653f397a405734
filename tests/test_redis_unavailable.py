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

from imgdedup.config import Settings
from imgdedup.decisions.rules import Policy, decide
from imgdedup.errors import IndexUnavailable, TransientError
from imgdedup.index import open_index
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


async def test_redis_killed_under_a_running_index_is_index_unavailable(private_redis) -> None:
    """The service's own client (with its reconnect retries) over a server that dies."""
    process, url = private_redis()
    index = await open_index(Settings(redis_url=url, redis_prefix="imgdedup-test-killed"))
    try:
        fp = make_fingerprint(0x0F0F0F0F0F0F0F0F, b"before")
        assert not (await index.register("before", "a", fp, DECIDE, radius=12)).replayed
        process.terminate()
        process.wait(timeout=10)
        operations = every_operation(index)
        for name in ("register", "lookup", "get"):
            with pytest.raises(IndexUnavailable) as raised:
                await operations[name]()
            assert isinstance(raised.value.__cause__, redis.exceptions.ConnectionError), name
    finally:
        await index.close()


async def test_read_only_replica_is_index_unavailable(private_redis) -> None:
    """Writes to a replica (e.g. a client still pointed at a demoted master during a
    failover) are refused for now, not for good."""
    _process, url = private_redis("--replicaof", "127.0.0.1", str(closed_port()))
    client = aioredis.Redis.from_url(url)
    index = RedisMihIndex(client, prefix="imgdedup-test-read-only")
    try:
        with pytest.raises(IndexUnavailable) as raised:
            await index.register(NS, "a", make_fingerprint(1, b"a"), DECIDE, radius=12)
        assert isinstance(raised.value.__cause__, redis.exceptions.ReadOnlyError)
    finally:
        await index.close()
