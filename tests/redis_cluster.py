"""A real local Redis Cluster for tests: `redis-server --cluster-enabled yes` per node,
joined with `redis-cli --cluster create`, and the operations the failover and resharding
tests perform on it (SIGKILL a master, restart it, migrate a slot).

Kept out of conftest.py so that test modules can import it explicitly.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redis.cluster import key_slot

HOST = "127.0.0.1"
#: Cluster bus ports are data port + 10000; the tests' ranges are 7001-7020 (data).
NODE_TIMEOUT_MS = 1000


@dataclass
class Node:
    port: int
    process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def client(self, timeout: float = 2.0) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, socket_timeout=timeout, socket_connect_timeout=timeout)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class LocalCluster:
    """`masters` masters with `replicas` replicas each, on consecutive ports from `base_port`."""

    base_port: int
    masters: int = 3
    replicas: int = 1
    nodes: list[Node] = field(default_factory=list)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="imgdedup-cluster-")))

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.base_port}/0"

    @property
    def seed_addresses(self) -> list[str]:
        return [node.address for node in self.nodes]

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> LocalCluster:
        binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if binary is None or cli is None:
            raise RuntimeError("redis-server and redis-cli are needed for the cluster tests (.ci/run installs them)")
        count = self.masters * (1 + self.replicas)
        self.nodes = [Node(self.base_port + i) for i in range(count)]
        try:
            for node in self.nodes:
                self._spawn(node, binary)
            for node in self.nodes:
                _wait(lambda n=node: _answers(n), f"redis-server on port {node.port}")
            subprocess.run(
                [cli, "--cluster", "create", *self.seed_addresses, "--cluster-replicas", str(self.replicas),
                 "--cluster-yes"],
                check=True, capture_output=True, timeout=60,
            )
            self.wait_healthy()
            self.wait_replicas_in_sync()
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, node: Node, binary: str | None = None) -> None:
        binary = binary or shutil.which("redis-server") or "redis-server"
        if _answers(node):
            raise RuntimeError(f"port {node.port} already has a Redis: stop it first (the cluster tests own 7001-7020)")
        with open(self.workdir / f"{node.port}.log", "ab") as log:  # the child keeps its own copy
            node.process = subprocess.Popen(
                [binary, "--port", str(node.port), "--bind", HOST, "--cluster-enabled", "yes",
                 "--cluster-config-file", str(self.workdir / f"nodes-{node.port}.conf"),
                 "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--save", "", "--appendonly", "no",
                 "--dir", str(self.workdir), "--protected-mode", "no", "--repl-diskless-sync-delay", "0"],
                stdout=log, stderr=subprocess.STDOUT,
            )

    def stop(self) -> None:
        for node in self.nodes:
            if node.alive():
                assert node.process is not None
                node.process.terminate()
        for node in self.nodes:
            if node.process is not None:
                try:
                    node.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    node.process.kill()
                    node.process.wait(timeout=5)
        shutil.rmtree(self.workdir, ignore_errors=True)

    # --- topology ------------------------------------------------------------------------------
    def topology(self) -> tuple[dict[str, Node], dict[int, str]]:
        """(node id -> node of every live master, slot -> master id), as a live node says."""
        for node in self.nodes:
            if not node.alive():
                continue
            try:
                raw = node.client().execute_command("CLUSTER", "NODES")
            except redis.RedisError:
                continue
            text = raw.decode() if isinstance(raw, bytes) else str(raw)
            by_port = {n.port: n for n in self.nodes}
            masters: dict[str, Node] = {}
            slots: dict[int, str] = {}
            for line in text.splitlines():
                parts = line.split()
                node_id, address, flags = parts[0], parts[1], parts[2]
                if "master" not in flags or "fail" in flags:
                    continue
                port = int(address.split("@")[0].rsplit(":", 1)[1])
                masters[node_id] = by_port[port]
                for spec in parts[8:]:
                    if spec.startswith("["):
                        continue  # a slot being migrated or imported
                    lo, _, hi = spec.partition("-")
                    for slot in range(int(lo), int(hi or lo) + 1):
                        slots[slot] = node_id
            return masters, slots
        raise RuntimeError("no cluster node answers")

    def master_ports(self) -> list[int]:
        masters, slots = self.topology()
        return sorted(masters[node_id].port for node_id in set(slots.values()))

    def port_of_slot(self, slot: int) -> int:
        masters, slots = self.topology()
        return masters[slots[slot]].port

    def port_of_key(self, key: str) -> int:
        return self.port_of_slot(key_slot(key.encode()))

    def healthy(self) -> bool:
        """Every live node says the cluster is ok with all slots served."""
        for node in self.nodes:
            if not node.alive():
                continue
            try:
                info = cluster_info(node.client())
            except redis.RedisError:
                return False
            if info.get("cluster_state") != "ok" or int(info.get("cluster_slots_ok", 0)) != 16384:
                return False
        _masters, slots = self.topology()
        return len(slots) == 16384

    def wait_healthy(self, timeout: float = 30.0) -> None:
        _wait(self.healthy, "the cluster to be ok", timeout)

    # --- chaos ---------------------------------------------------------------------------------
    def kill(self, port: int) -> None:
        """SIGKILL the node on `port`: no goodbye to the cluster, no flush of anything."""
        node = next(n for n in self.nodes if n.port == port)
        assert node.process is not None
        os.kill(node.process.pid, signal.SIGKILL)
        node.process.wait(timeout=10)

    def wait_failover(self, dead_port: int, timeout: float = 30.0) -> None:
        """Until the live nodes agree that the master on `dead_port` failed and its
        replicas took over all its slots, and the cluster is ok again."""

        def taken_over() -> bool:
            masters, slots = self.topology()
            return len(slots) == 16384 and all(node.port != dead_port for node in masters.values()) and self.healthy()

        _wait(taken_over, f"a replica to take over from the master on port {dead_port}", timeout)

    def restart(self, port: int) -> None:
        """Start the node on `port` again with its nodes.conf: it rejoins (as a replica of
        whoever took over its slots)."""
        node = next(n for n in self.nodes if n.port == port)
        self._spawn(node)
        _wait(lambda: _answers(node), f"redis-server on port {port}")

    def wait_replicas_in_sync(self, timeout: float = 30.0) -> None:
        """Every master has a replica whose link is up."""

        def synced() -> bool:
            masters, slots = self.topology()
            for node_id in set(slots.values()):
                info = masters[node_id].client().info("replication")
                if not any(
                    isinstance(v, dict) and v.get("state") == "online"
                    for k, v in info.items() if k.startswith("slave")
                ):
                    return False
            return True

        _wait(synced, "every master to have an online replica", timeout)

    def migrate_slot(self, slot: int, to_port: int, batch: int = 50, pause_s: float = 0.0) -> int:
        """Move `slot` to the master on `to_port` as `redis-cli --cluster reshard` does:
        IMPORTING/MIGRATING, MIGRATE the keys in batches, then SETSLOT NODE everywhere.
        Returns how many keys moved. `pause_s` between batches keeps the slot half-moved
        longer, so traffic meets ASK and TRYAGAIN."""
        masters, slots = self.topology()
        source_id = slots[slot]
        source = masters[source_id]
        target_id = next(node_id for node_id, node in masters.items() if node.port == to_port)
        if source_id == target_id:
            return 0
        src, dst = source.client(timeout=10), masters[target_id].client(timeout=10)
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        moved = 0
        while True:
            keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch)
            if not keys:
                break
            src.execute_command("MIGRATE", HOST, to_port, "", 0, 5000, "REPLACE", "KEYS", *keys)
            moved += len(keys)
            if pause_s:
                time.sleep(pause_s)
        for node in (masters[target_id], source, *masters.values()):
            node.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        return moved


def cluster_info(client: redis.Redis) -> dict[str, str]:
    raw = client.execute_command("CLUSTER", "INFO")
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return dict(line.split(":", 1) for line in text.split() if ":" in line)


def _answers(node: Node) -> bool:
    """PING over a plain socket: redis-py's client retries a refused connection with
    back-off, seconds per closed port."""
    try:
        with socket.create_connection((HOST, node.port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _wait(predicate, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (redis.RedisError, OSError, KeyError, RuntimeError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout} s waiting for {what}")


def namespace_on(cluster_slots: dict[int, str], masters: dict[str, Node], port: int, base: str) -> str:
    """A namespace name starting with `base` whose keys live on the master on `port`."""
    for n in range(100_000):
        name = f"{base}-{n}"
        if masters[cluster_slots[key_slot(name.encode())]].port == port:
            return name
    raise RuntimeError(f"no namespace for port {port}")
