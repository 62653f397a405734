"""The Redis client the index uses, and opening the Redis index from the settings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from imgdedup.errors import StartupError
from imgdedup.index.redis.index import RedisMihIndex

if TYPE_CHECKING:
    from imgdedup.config import Settings


def redis_client(settings: Settings) -> aioredis.Redis:
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
    # A blocking pool sized to the work we allow in flight: excess callers wait for a
    # connection instead of failing (redis-py's default pool raises when exhausted).
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url, max_connections=max(32, 2 * settings.max_in_flight + 8), timeout=10, **options
    )
    return aioredis.Redis(connection_pool=pool)


async def open_redis_index(settings: Settings) -> RedisMihIndex:
    """The Redis index the settings describe, once its server answers."""
    index = RedisMihIndex(
        redis_client(settings),
        prefix=settings.redis_prefix,
        substrings=settings.mih_substrings,
        mirror=settings.redis_mirror,
    )
    try:
        await index.ping()
    except Exception as exc:
        await index.close()
        raise StartupError(
            f"Redis at {settings.redacted()['redis_url']} does not answer ({exc}); start it, fix "
            "IMGDEDUP_REDIS_URL, or unset it to use the in-memory index"
        ) from exc
    return index
