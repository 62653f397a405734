"""What differs between one Redis server and a Redis Cluster, for the index: readiness
(every master serving its slots), which nodes a key scan must visit, and waiting for a
write to reach the replicas of the master that took it.

Everything else is the same on both: every key of one call shares the namespace's hash
tag, so the cluster client routes each call to the one master of that slot.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeAlias, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from imgdedup.errors import IndexUnavailable

Client: TypeAlias = "aioredis.Redis | RedisCluster"
#: Slots of a Redis Cluster (CLUSTER INFO's cluster_slots_assigned when all are).
SLOTS = 16384


def is_cluster(client: Client) -> bool:
    return isinstance(client, RedisCluster)


async def check_ready(client: Client) -> None:
    """Return if the index can serve every namespace; else raise `IndexUnavailable`
    saying why. One server: it answers PING. A cluster: every master the client knows
    answers and says cluster_state ok with all slots assigned and none failed."""
    if not isinstance(client, RedisCluster):
        await client.ping()
        return
    # The map is read at the first command; a fresh client has none yet.
    await client.initialize()
    for node in client.get_primaries():
        info = _parse_info(await client.execute_command("CLUSTER INFO", target_nodes=node))
        problem = _cluster_problem(info)
        if problem:
            raise IndexUnavailable(f"Redis Cluster node {node.name}: {problem}")


def _parse_info(raw: Any) -> dict[str, str]:
    if isinstance(raw, dict):
        if raw and all(isinstance(v, dict) for v in raw.values()):  # one reply per node
            raw = next(iter(raw.values()))
        return {str(k): str(v) for k, v in raw.items()}
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return dict(line.split(":", 1) for line in text.split() if ":" in line)


def _cluster_problem(info: dict[str, str]) -> str:
    if info.get("cluster_state") != "ok":
        return f"cluster_state is {info.get('cluster_state', 'unknown')}"
    assigned, failed = int(info.get("cluster_slots_assigned", 0)), int(info.get("cluster_slots_fail", 0))
    if assigned != SLOTS:
        return f"{SLOTS - assigned} of {SLOTS} slots have no master"
    if failed:
        return f"{failed} slots are served by a failed master"
    return ""


async def scan_nodes(client: Client, match: str, count: int) -> AsyncIterator[list[bytes]]:
    """The keys matching `match`, a batch per SCAN reply, from every master (SCAN walks one
    node's keyspace only)."""
    if not isinstance(client, RedisCluster):
        cursor = None
        while cursor != 0:
            cursor, keys = await client.scan(cursor or 0, match=match, count=count)
            if keys:
                yield [cast(bytes, key) for key in keys]
        return
    await client.initialize()
    for node in client.get_primaries():
        yield [key async for key in _scan_node(client, node, match, count)]


async def _scan_node(client: RedisCluster, node: ClusterNode, match: str, count: int) -> AsyncIterator[bytes]:
    cursor = 0
    while True:
        reply = await client.scan(cursor, match=match, count=count, target_nodes=node)
        cursors, keys = reply
        cursor = next(iter(cursors.values())) if isinstance(cursors, dict) else int(cursors)
        for key in keys:
            yield cast(bytes, key)
        if cursor == 0:
            return


def by_slot(client: Client, keys: list[bytes]) -> list[list[bytes]]:
    """`keys` grouped so that each group is legal in one multi-key command."""
    if not isinstance(client, RedisCluster):
        return [keys] if keys else []
    groups: dict[int, list[bytes]] = {}
    for key in keys:
        groups.setdefault(client.keyslot(key), []).append(key)
    return list(groups.values())


async def wait_for_replicas(client: Client, anchor_key: str, replicas: int, timeout_ms: int) -> None:
    """Return once `replicas` replicas of the master of `anchor_key`'s slot hold every write
    that master took so far; raise `IndexUnavailable` if they do not within `timeout_ms`.

    WAIT counts the replication offset of the connection it runs on, so it runs on the
    same connection right after a write to the slot (INCRBY of `anchor_key` by 0: a write
    that changes nothing). A master replicates in one ordered stream, so that write's
    acknowledgement covers every earlier write of the slot, whichever connection made it.
    """
    async with client.pipeline(transaction=False) as pipe:
        pipe.incrby(anchor_key, 0)
        if isinstance(client, RedisCluster):
            node = client.get_node_from_key(anchor_key)
            pipe.execute_command("WAIT", replicas, timeout_ms, target_nodes=node)
        else:
            node = None
            pipe.execute_command("WAIT", replicas, timeout_ms)
        _, acknowledged = await pipe.execute()
    if isinstance(client, RedisCluster) and client.get_node_from_key(anchor_key) != node:
        # The slot moved while the pipeline ran: the WAIT counted another master.
        raise IndexUnavailable("the namespace's slot moved while waiting for its replicas: retry")
    if isinstance(acknowledged, dict):
        acknowledged = sum(int(v) for v in acknowledged.values())
    if int(acknowledged) < replicas:
        raise IndexUnavailable(
            f"the write reached {int(acknowledged)} of {replicas} replicas within {timeout_ms} ms: retry"
        )
