"""The Redis client the index uses (one server, or a Redis Cluster), and opening the Redis
index from the settings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from imgdedup.errors import StartupError
from imgdedup.index.redis.index import RedisMihIndex

if TYPE_CHECKING:
    from imgdedup.config import Settings


def _options(settings: Settings) -> dict[str, Any]:
    """What both kinds of client share: timeouts, retries of a dropped connection, ACL, TLS."""
    options: dict[str, Any] = {
        "socket_timeout": 5,
        "socket_connect_timeout": 5,
        "health_check_interval": 30,
        "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
    }
    if settings.redis_username:
        options["username"] = settings.redis_username
    if settings.redis_password:
        options["password"] = settings.redis_password
    if settings.redis_ssl_ca_file:
        options["ssl_ca_certs"] = settings.redis_ssl_ca_file
    if settings.redis_ssl_certfile:
        options["ssl_certfile"] = settings.redis_ssl_certfile
        options["ssl_keyfile"] = settings.redis_ssl_keyfile
    return options


def _pool_size(settings: Settings) -> int:
    return max(32, 2 * settings.max_in_flight + 8)


def redis_client(settings: Settings) -> aioredis.Redis | RedisCluster:
    if settings.redis_cluster:
        return cluster_client(settings)
    # A blocking pool sized to the work we allow in flight: excess callers wait for a
    # connection instead of failing (redis-py's default pool raises when exhausted).
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url, max_connections=_pool_size(settings), timeout=10, **_options(settings)
    )
    return aioredis.Redis(connection_pool=pool)


def cluster_client(settings: Settings) -> RedisCluster:
    """A cluster client seeded with the URL's node and IMGDEDUP_REDIS_CLUSTER_NODES. It
    learns the slot map from the first seed that answers, follows MOVED and ASK, and
    re-reads the map after a failover; user, password and TLS come from the URL and the
    settings, as for one server."""
    parts = urlsplit(settings.redis_url)
    options = _options(settings)
    if parts.username and "username" not in options:
        options["username"] = parts.username
    if parts.password and "password" not in options:
        options["password"] = parts.password
    if parts.scheme == "rediss":
        options["ssl"] = True
    seeds = [(parts.hostname or "127.0.0.1", parts.port or 6379), *settings.cluster_seed_nodes()]
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in dict.fromkeys(seeds)],
        # Per node: each master gets its own pool of this size.
        max_connections=_pool_size(settings),
        **options,
    )


async def open_redis_index(settings: Settings) -> RedisMihIndex:
    """The Redis index the settings describe, once its server (or cluster) answers."""
    index = RedisMihIndex(
        redis_client(settings),
        prefix=settings.redis_prefix,
        substrings=settings.mih_substrings,
        mirror=settings.redis_mirror,
        wait_replicas=settings.redis_wait_replicas,
        wait_timeout_ms=settings.redis_wait_timeout_ms,
    )
    try:
        await index.ping()
    except Exception as exc:
        await index.close()
        what = "Redis Cluster seeded by" if settings.redis_cluster else "Redis at"
        raise StartupError(
            f"{what} {settings.redacted()['redis_url']} does not answer ({exc}); start it, fix "
            "IMGDEDUP_REDIS_URL, or unset it to use the in-memory index"
        ) from exc
    return index
