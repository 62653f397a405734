"""The Redis index on a real local Redis Cluster: settings, readiness, namespaces spread
over the masters, replica acknowledgement, and registrations through a master's failover
and a slot's migration.

The contract and first-wins suites run on the cluster too (test_index_contract.py,
test_redis_first_wins.py); this module holds what only a cluster has.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from functools import partial

import numpy as np
import pytest
import redis
from conftest import RedisTarget
from helpers import flip_bits, hamming, make_fingerprint, random_code
from redis.asyncio.cluster import RedisCluster
from redis.cluster import key_slot
from redis_cluster import LocalCluster, namespace_on

from imgdedup.config import ConfigError, Settings
from imgdedup.decisions.rules import Policy, Verdict, decide
from imgdedup.errors import ContentionError, IndexUnavailable
from imgdedup.index.redis.client import open_redis_index
from imgdedup.index.redis.index import RedisMihIndex
from imgdedup.index.redis.keys import delete_prefix
from imgdedup.records import Registration

pytestmark = pytest.mark.integration

DECIDE = partial(decide, policy=Policy(8, 12))
#: The cluster the failover and resharding tests break (3 masters + 3 replicas: 7011-7016).
CHAOS_PORT = 7011


# --- settings ------------------------------------------------------------------------------


def test_cluster_settings_are_validated() -> None:
    ok = Settings.from_env({
        "IMGDEDUP_REDIS_URL": "rediss://user:pw@10.0.0.1:7000", "IMGDEDUP_REDIS_CLUSTER": "true",
        "IMGDEDUP_REDIS_CLUSTER_NODES": "10.0.0.2:7000, [fd00::3]:7000",
    })
    assert ok.cluster_seed_nodes() == [("10.0.0.2", 7000), ("fd00::3", 7000)]
    for env, fragment in [
        ({"IMGDEDUP_REDIS_CLUSTER": "true"}, "need IMGDEDUP_REDIS_URL"),
        ({"IMGDEDUP_REDIS_URL": "redis://h:1/2", "IMGDEDUP_REDIS_CLUSTER": "true"}, "only database 0"),
        ({"IMGDEDUP_REDIS_URL": "unix:///tmp/r.sock", "IMGDEDUP_REDIS_CLUSTER": "true"}, "not unix://"),
        ({"IMGDEDUP_REDIS_URL": "redis://h:1", "IMGDEDUP_REDIS_CLUSTER_NODES": "h:2"}, "REDIS_CLUSTER is not true"),
        ({"IMGDEDUP_REDIS_URL": "redis://h:1", "IMGDEDUP_REDIS_CLUSTER": "true",
          "IMGDEDUP_REDIS_CLUSTER_NODES": "h:2,nope"}, "'nope' is not host:port"),
        ({"IMGDEDUP_REDIS_WAIT_REPLICAS": "-1"}, "must be >= 0"),
    ]:
        with pytest.raises(ConfigError) as caught:
            Settings.from_env(env)
        assert fragment in str(caught.value), (env, caught.value)


# --- on the shared cluster -------------------------------------------------------------------


def _keys_per_master(cluster: LocalCluster, prefix: str) -> dict[int, int]:
    """How many keys under `prefix` each master holds, asked of each master alone."""
    return {
        port: sum(1 for _ in redis.Redis(port=port).scan_iter(match=f"{prefix}:*", count=1000))
        for port in cluster.master_ports()
    }


async def test_namespaces_spread_over_every_master_and_are_dropped_everywhere(
    redis_cluster: LocalCluster, redis_prefix: str
) -> None:
    """The issue's reproduction (one registration in each of six namespaces through one
    seed node answered MOVED for most of them) through the service's own client: every
    namespace works, each lives on the master of its hash tag's slot, and a prefix delete
    finds the keys on every master."""
    settings = Settings(redis_url=redis_cluster.url, redis_cluster=True, redis_prefix=redis_prefix)
    index = await open_redis_index(settings)
    masters, slots = redis_cluster.topology()
    names = [namespace_on(slots, masters, port, f"ns{i}") for i, port in enumerate(redis_cluster.master_ports() * 2)]
    rng = np.random.default_rng(1)
    try:
        for name in names:
            registration = await index.register(name, "img", make_fingerprint(random_code(rng), name.encode()),
                                                DECIDE, radius=12)
            assert registration.record.verdict == Verdict.ACCEPTED
            assert await index.get(name, "img") == registration.record
            port = redis_cluster.port_of_key(index.keys.state(name))
            assert redis.Redis(port=port).hexists(index.keys.state(name), str(registration.record.seq))
        per_master = _keys_per_master(redis_cluster, redis_prefix)
        assert len(per_master) == 3 and all(count > 0 for count in per_master.values()), per_master
        await index.ping()  # ready
        dropped = await index.drop_namespace(names[0])
        assert dropped > 0
        client = RedisTarget(redis_cluster.url, redis_cluster).connect()
        try:
            assert await delete_prefix(client, redis_prefix) == sum(per_master.values()) - dropped
        finally:
            await client.aclose()
        assert set(_keys_per_master(redis_cluster, redis_prefix).values()) == {0}
    finally:
        await index.close()


async def test_extra_seed_nodes_are_tried_when_the_url_node_is_down(redis_cluster: LocalCluster, redis_prefix: str) -> None:
    settings = Settings(
        redis_url="redis://127.0.0.1:7020/0", redis_cluster=True, redis_prefix=redis_prefix,
        redis_cluster_nodes=",".join(redis_cluster.seed_addresses[1:3]),
    )
    index = await open_redis_index(settings)
    try:
        fp = make_fingerprint(random_code(np.random.default_rng(2)), b"seeded")
        assert (await index.register("seeded", "a", fp, DECIDE, radius=12)).record.verdict == Verdict.ACCEPTED
    finally:
        await index.drop_namespace("seeded")
        await index.close()


async def test_a_decision_waits_for_its_replica(redis_cluster: LocalCluster, redis_prefix: str) -> None:
    """With IMGDEDUP_REDIS_WAIT_REPLICAS the decision is reported once a replica holds it;
    asking for more replicas than a master has is a retryable error, and the retry replays
    the stored decision."""
    target = RedisTarget(redis_cluster.url, redis_cluster)
    one, two = target.connect(), target.connect()
    waits_one = RedisMihIndex(one, prefix=redis_prefix, wait_replicas=1, wait_timeout_ms=2000)
    waits_two = RedisMihIndex(two, prefix=redis_prefix, wait_replicas=2, wait_timeout_ms=100)
    rng = np.random.default_rng(3)
    try:
        first = await waits_one.register("acked", "a", make_fingerprint(random_code(rng), b"a"), DECIDE, radius=12)
        assert first.record.verdict == Verdict.ACCEPTED
        fp = make_fingerprint(random_code(rng), b"b")
        with pytest.raises(IndexUnavailable, match="reached 1 of 2 replicas"):
            await waits_two.register("acked", "b", fp, DECIDE, radius=12)
        retried = await waits_one.register("acked", "b", fp, DECIDE, radius=12)
        assert retried.replayed and retried.record.verdict == Verdict.ACCEPTED
    finally:
        await delete_prefix(one, redis_prefix)
        await one.aclose()
        await two.aclose()


async def test_waiting_for_a_replica_a_single_server_lacks_is_retryable(redis_url: str, redis_prefix: str) -> None:
    client = RedisTarget(redis_url).connect()
    index = RedisMihIndex(client, prefix=redis_prefix, wait_replicas=1, wait_timeout_ms=50)
    try:
        with pytest.raises(IndexUnavailable, match="reached 0 of 1 replicas"):
            await index.register("solo", "a", make_fingerprint(5, b"a"), DECIDE, radius=12)
    finally:
        await delete_prefix(client, redis_prefix)
        await client.aclose()


# --- failover and resharding under traffic -------------------------------------------------


@pytest.fixture(scope="module")
def chaos_cluster() -> Iterator[LocalCluster]:
    cluster = LocalCluster(CHAOS_PORT).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
async def chaos_replicas(chaos_cluster: LocalCluster, redis_prefix: str) -> AsyncIterator[list[RedisMihIndex]]:
    """Three replicas of the service on the chaos cluster, each with its own client, as
    the service configures them with IMGDEDUP_REDIS_WAIT_REPLICAS=1."""
    clients = [RedisCluster.from_url(chaos_cluster.url) for _ in range(3)]
    yield [
        RedisMihIndex(c, prefix=redis_prefix, lease_ms=2000, wait_replicas=1, wait_timeout_ms=500) for c in clients
    ]
    for client in clients:
        await client.aclose()


def _families(rng: np.random.Generator, namespaces: list[str], per_ns: int, copies: int) -> list[tuple[str, str, str, object]]:
    """(namespace, family, image_id, fingerprint) of `copies` near-copies (0-3 bits apart)
    of `per_ns` far-apart photos per namespace, in a random order."""
    items = []
    for ns in namespaces:
        bases: list[int] = []
        while len(bases) < per_ns:
            code = random_code(rng)
            if all(hamming(code, other) > 28 for other in bases):
                bases.append(code)
        for f, base in enumerate(bases):
            for c in range(copies):
                code = flip_bits(base, int(rng.integers(0, 4)), rng)
                items.append((ns, f"f{f}", f"f{f}-c{c}", make_fingerprint(code, f"{ns}/{f}/{c}".encode())))
    order = rng.permutation(len(items))
    return [items[i] for i in order]


async def test_failover_and_resharding_under_traffic_lose_nothing(
    chaos_cluster: LocalCluster, chaos_replicas: list[RedisMihIndex]
) -> None:
    """Registrations stream through three replicas while the master of one namespace is
    SIGKILLed (its replica is promoted; the old master comes back as a replica) and the
    slot of another namespace is migrated to another master. Every registration ends in
    a decision (retryable errors are retried, as the Kafka consumer and HTTP clients do),
    every reported decision is still stored afterwards, and each family has exactly one
    accepted image, all its other copies duplicates of it."""
    cluster = chaos_cluster
    masters, slots = cluster.topology()
    ports = cluster.master_ports()
    namespaces = [namespace_on(slots, masters, port, f"chaos{i}") for i, port in enumerate(ports)]
    killed_ns, moved_ns = namespaces[0], namespaces[1]
    victim = cluster.port_of_slot(key_slot(killed_ns.encode()))
    moved_slot = key_slot(moved_ns.encode())
    moved_to = ports[2]
    items = _families(np.random.default_rng(7), namespaces, per_ns=16, copies=6)

    decided: dict[tuple[str, str], Registration] = {}
    decided_at: dict[tuple[str, str], float] = {}
    warmed_up = asyncio.Event()  # a sixth decided: time to break things
    retried: list[str] = []
    queue: asyncio.Queue = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)
    deadline = time.monotonic() + 50

    async def worker(k: int) -> None:
        index = chaos_replicas[k % len(chaos_replicas)]
        while not queue.empty():
            ns, _family, image_id, fp = queue.get_nowait()
            while True:
                assert time.monotonic() < deadline, f"{ns}/{image_id} still undecided"
                try:
                    decided[ns, image_id] = await index.register(ns, image_id, fp, DECIDE, radius=12)
                    decided_at[ns, image_id] = time.monotonic()
                    if len(decided) >= len(items) // 6:
                        warmed_up.set()
                    break
                except (IndexUnavailable, ContentionError) as exc:  # retryable: as a client does
                    retried.append(f"{type(exc).__name__}: {str(exc)[:50]}")
                    await asyncio.sleep(0.1 + random.random() * 0.1)
            await asyncio.sleep(0.03)  # a stream, not a burst: traffic outlasts the chaos

    async def chaos() -> dict[str, float]:
        timeline: dict[str, float] = {}
        started = time.monotonic()
        await warmed_up.wait()
        timeline["kill_at_decided"] = len(decided)
        timeline["kill"] = time.monotonic()
        await asyncio.to_thread(cluster.kill, victim)
        with pytest.raises(IndexUnavailable):  # /readyz: a master is gone
            await chaos_replicas[0].ping()
        timeline["unready_after_s"] = time.monotonic() - started
        await asyncio.to_thread(cluster.wait_failover, victim)  # its replica took over the slots
        timeline["promoted_after_s"] = time.monotonic() - started
        timeline["promoted"] = time.monotonic()
        await asyncio.to_thread(cluster.restart, victim)  # back as a replica of the new master
        await asyncio.to_thread(cluster.wait_replicas_in_sync, 30)
        timeline["resynced_after_s"] = time.monotonic() - started
        timeline["migrate_at_decided"] = len(decided)
        timeline["migrate"] = time.monotonic()
        timeline["keys_moved"] = await asyncio.to_thread(cluster.migrate_slot, moved_slot, moved_to, 20, 0.05)
        timeline["migrated_after_s"] = time.monotonic() - started
        timeline["migrated"] = time.monotonic()
        timeline["decided_after_chaos"] = len(decided)
        return timeline

    chaos_task = asyncio.create_task(chaos())
    await asyncio.gather(*(worker(k) for k in range(12)))
    timeline = await chaos_task
    shown = {k: round(v, 2) for k, v in timeline.items() if k.endswith("_s") or k.endswith("decided") or k == "keys_moved"}
    print(f"{len(items)} registrations, chaos timeline {shown}, retried errors {Counter(retried)}")

    # The chaos happened while traffic ran: both namespaces had registrations decided
    # before and after their event.
    def decided_in(ns: str) -> list[float]:
        return [at for (name, _), at in decided_at.items() if name == ns]

    assert min(decided_in(killed_ns)) < timeline["kill"] < timeline["promoted"] < max(decided_in(killed_ns))
    assert min(decided_in(moved_ns)) < timeline["migrate"] < timeline["migrated"] < max(decided_in(moved_ns))
    assert cluster.port_of_slot(key_slot(killed_ns.encode())) != victim
    assert cluster.port_of_slot(moved_slot) == moved_to and timeline["keys_moved"] > 0

    # Nothing lost: every image decided, and every reported decision is what is stored.
    assert len(decided) == len(items)
    reader = chaos_replicas[0]
    for (ns, image_id), registration in decided.items():
        assert await reader.get(ns, image_id) == registration.record, (ns, image_id)
    # Exactly one accepted per family; every other copy a duplicate of it.
    families: dict[tuple[str, str], list[Registration]] = {}
    for ns, family, image_id, _fp in items:
        families.setdefault((ns, family), []).append(decided[ns, image_id])
    for key, members in families.items():
        accepted = [r.record for r in members if r.record.verdict == Verdict.ACCEPTED]
        assert len(accepted) == 1, (key, [(r.record.image_id, r.record.verdict) for r in members])
        assert all(r.record.duplicate_of == accepted[0].image_id for r in members if r.record is not accepted[0])
        assert accepted[0].seq == min(r.record.seq for r in members)
    await reader.ping()  # ready again
