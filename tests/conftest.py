"""Fixtures: a Redis to test against (started on demand), a local Redis Cluster (started
on first use), and both index backends."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from itertools import count
from typing import Any
from uuid import uuid4

import pytest
import redis
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from helpers import StartClient
from redis.asyncio.cluster import RedisCluster
from redis_cluster import LocalCluster, namespace_on

from imgdedup.index.memory import MemoryIndex
from imgdedup.index.redis.index import RedisMihIndex
from imgdedup.index.redis.keys import delete_prefix

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
TEST_SUBSTRINGS = 4
#: The shared test cluster's first port (3 masters + 3 replicas: 7001-7006).
CLUSTER_PORT = 7001


def _redis_answers(url: str, timeout: float = 1.0) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
        return False
    finally:
        client.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_redis_server(binary: str, *options: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    process = subprocess.Popen(
        [binary, "--save", "", "--appendonly", "no", "--port", str(port), "--bind", "127.0.0.1", *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
            raise RuntimeError(f"redis-server exited with {process.returncode}: {stderr}")
        if _redis_answers(url, timeout=0.2):
            return process, url
        time.sleep(0.05)
    process.terminate()
    process.wait(timeout=5)
    raise RuntimeError(f"redis-server on port {port} did not answer within 10 s")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis that answers: IMGDEDUP_TEST_REDIS_URL, else local 6379, else one we start."""
    url = os.environ.get("IMGDEDUP_TEST_REDIS_URL", DEFAULT_REDIS_URL)
    if _redis_answers(url):
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            f"no Redis answers at {url} and no redis-server binary is on PATH: start Redis "
            "or set IMGDEDUP_TEST_REDIS_URL (these tests are not skipped without it)"
        )
    process, started_url = _start_redis_server(binary)
    try:
        yield started_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@pytest.fixture
def private_redis() -> Iterator[Callable[..., tuple[subprocess.Popen, str]]]:
    """Factory: start a redis-server of this test's own (extra command-line options
    allowed) -> (process, url). Every one started is stopped afterwards."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is needed for this test (.ci/run installs it)")
    started: list[subprocess.Popen] = []

    def start(*options: str) -> tuple[subprocess.Popen, str]:
        process, url = _start_redis_server(binary, *options)
        started.append(process)
        return process, url

    yield start
    for process in started:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=10)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalCluster]:
    """A real local Redis Cluster, 3 masters with a replica each, for the whole session
    (started on first use: a few seconds)."""
    cluster = LocalCluster(CLUSTER_PORT).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@dataclass
class RedisTarget:
    """What the Redis fixtures connect to: one server, or a cluster through a seed node."""

    url: str
    cluster: LocalCluster | None = None

    def connect(self, **options: Any) -> aioredis.Redis | RedisCluster:
        if self.cluster is not None:
            return RedisCluster.from_url(self.url, **options)
        return aioredis.Redis.from_url(self.url, **options)


@pytest.fixture
def redis_topology() -> str:
    """"single" (one server) or "cluster" (the local Redis Cluster). Test modules
    parametrise it (`pytest_generate_tests`) to run their Redis tests on both."""
    return "single"


@pytest.fixture
def redis_target(request: pytest.FixtureRequest, redis_topology: str) -> RedisTarget:
    if redis_topology == "cluster":
        cluster: LocalCluster = request.getfixturevalue("redis_cluster")
        return RedisTarget(cluster.url, cluster)
    return RedisTarget(request.getfixturevalue("redis_url"))


_next_master = count()


def parametrize_redis(metafunc: pytest.Metafunc, bucket_layout_only: set[str]) -> None:
    """For a test module's `pytest_generate_tests`: tests that use the Redis fixtures run
    once per layout (but those named in `bucket_layout_only`), on one server and on the
    local Redis Cluster."""
    if "redis_mirror" in metafunc.fixturenames and metafunc.function.__name__ not in bucket_layout_only:
        metafunc.parametrize("redis_mirror", [False, True], ids=["buckets", "mirror"])
    if "redis_topology" in metafunc.fixturenames:
        metafunc.parametrize("redis_topology", ["single", "cluster"])


def spread_namespace(request: pytest.FixtureRequest, base: str) -> str:
    """`base` on one server; on the cluster a name on the next master in turn, so a suite's
    tests spread their namespaces over every master."""
    params = getattr(request.node, "callspec", None)
    params = params.params if params else {}
    if params.get("redis_topology") != "cluster" and params.get("index") not in ("cluster", "cluster_mirror"):
        return base
    cluster: LocalCluster = request.getfixturevalue("redis_cluster")
    masters, slots = cluster.topology()
    ports = sorted({masters[node_id].port for node_id in slots.values()})
    return namespace_on(slots, masters, ports[next(_next_master) % len(ports)], base)


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix unique to one test, so tests never see each other's keys."""
    return f"imgdedup-test-{uuid4().hex[:12]}"


@pytest.fixture
def redis_mirror() -> bool:
    """Layout of the namespaces the Redis fixtures create: False = buckets, True = the
    mirror layout (a log per namespace, an in-process table per replica). Test modules
    parametrise it (`pytest_generate_tests`) to run against both."""
    return False


@contextlib.asynccontextmanager
async def _index_over(target: RedisTarget, prefix: str, mirror: bool) -> AsyncIterator[RedisMihIndex]:
    """A Redis index with its own client; every key under `prefix` is deleted afterwards."""
    client = target.connect()
    try:
        yield RedisMihIndex(client, prefix=prefix, substrings=TEST_SUBSTRINGS, mirror=mirror)
    finally:
        try:
            await delete_prefix(client, prefix)
        finally:
            await client.aclose()


@pytest.fixture
async def redis_index(redis_target: RedisTarget, redis_prefix: str, redis_mirror: bool) -> AsyncIterator[RedisMihIndex]:
    async with _index_over(redis_target, redis_prefix, redis_mirror) as index:
        yield index


@pytest.fixture
async def redis_replicas(
    redis_target: RedisTarget, redis_prefix: str, redis_index: RedisMihIndex, redis_mirror: bool
) -> AsyncIterator[Callable[..., Awaitable[list[RedisMihIndex]]]]:
    """Factory: n more `RedisMihIndex` instances over the same keys, each with its own
    client (connection pool) and mirror, like separate replicas of the service. Keys are
    cleaned up by `redis_index`, which shares the prefix."""
    clients: list[aioredis.Redis | RedisCluster] = []

    async def make(n: int, substrings: int = TEST_SUBSTRINGS, **kwargs) -> list[RedisMihIndex]:
        out = []
        for _ in range(n):
            client = redis_target.connect()
            clients.append(client)
            kwargs.setdefault("mirror", redis_mirror)
            out.append(RedisMihIndex(client, prefix=redis_prefix, substrings=substrings, **kwargs))
        return out

    try:
        yield make
    finally:
        for client in clients:
            await client.aclose()


@pytest.fixture
async def redis_mirror_index(redis_target: RedisTarget, redis_prefix: str) -> AsyncIterator[RedisMihIndex]:
    """A Redis index whose namespaces get the mirror layout."""
    async with _index_over(redis_target, redis_prefix, mirror=True) as index:
        yield index


@pytest.fixture
async def cluster_index(redis_cluster: LocalCluster, redis_prefix: str) -> AsyncIterator[RedisMihIndex]:
    """A Redis index on the local Redis Cluster (bucket layout)."""
    async with _index_over(RedisTarget(redis_cluster.url, redis_cluster), redis_prefix, mirror=False) as index:
        yield index


@pytest.fixture
async def cluster_mirror_index(redis_cluster: LocalCluster, redis_prefix: str) -> AsyncIterator[RedisMihIndex]:
    """A Redis index on the local Redis Cluster (mirror layout)."""
    async with _index_over(RedisTarget(redis_cluster.url, redis_cluster), redis_prefix, mirror=True) as index:
        yield index


@pytest.fixture
def memory_index() -> MemoryIndex:
    return MemoryIndex()


@pytest.fixture(params=["memory", "redis", "redis_mirror", "cluster", "cluster_mirror"])
def index(request: pytest.FixtureRequest):
    """The same contract tests, run against each backend (both Redis layouts, on one
    server and on the local Redis Cluster)."""
    return request.getfixturevalue(f"{request.param}_index")



@pytest.fixture
async def start_client() -> AsyncIterator[StartClient]:
    """`await start_client(app, headers=...)`: a test client of a real server for the app;
    every one is closed at teardown."""
    clients: list[TestClient] = []

    async def start(app: web.Application, headers: dict[str, str] | None = None) -> TestClient:
        client = TestClient(TestServer(app), headers=headers)
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()
