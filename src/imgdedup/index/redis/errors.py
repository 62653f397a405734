"""The Redis backend's failures as the index reports them: whatever means "Redis is not
usable right now" becomes `IndexUnavailable`, so no caller depends on redis-py's types."""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

from redis import exceptions as redis_exceptions

from imgdedup.errors import IndexUnavailable

P = ParamSpec("P")
T = TypeVar("T")

#: Unreachable, timed out, or refusing work for now. redis-py's ConnectionError also
#: covers an exhausted connection pool, a rejected login and a server still loading its
#: data (BusyLoadingError); ReadOnlyError is a replica during a failover. Redis Cluster:
#: the cluster client follows MOVED and ASK and retries TRYAGAIN, CLUSTERDOWN and
#: MASTERDOWN a bounded number of times; what is left when that runs out (ClusterError:
#: "TTL exhausted", or the last redirection or TRYAGAIN itself), a slot without a master
#: and a cluster no seed node answers for are all a failover or a resharding in progress.
#: RedisClusterException's other subclasses (a cross-slot command) are bugs, not outages.
UNAVAILABLE: tuple[type[Exception], ...] = (
    redis_exceptions.ConnectionError,
    redis_exceptions.TimeoutError,
    redis_exceptions.ReadOnlyError,
    redis_exceptions.ClusterError,
    redis_exceptions.TryAgainError,
    redis_exceptions.AskError,
    redis_exceptions.SlotNotCoveredError,
    redis_exceptions.RedisClusterUnreachableError,
)


@contextmanager
def unavailable_on_redis_errors() -> Iterator[None]:
    """Re-raise the failures in `UNAVAILABLE` as `IndexUnavailable`, chained to the cause."""
    try:
        yield
    except UNAVAILABLE as exc:
        raise IndexUnavailable(f"{type(exc).__name__}: {exc}") from exc


def maps_redis_errors(method: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """`unavailable_on_redis_errors` around a coroutine function."""

    @functools.wraps(method)
    async def mapped(*args: P.args, **kwargs: P.kwargs) -> T:
        with unavailable_on_redis_errors():
            return await method(*args, **kwargs)

    return mapped
