"""`imgdedup bench soak`: uploads through service replicas while replicas are killed and the broker and Redis restart.

Starts a local S3 server (moto) and a Tansu broker storing its log there (so a broker
restart keeps topics, records and group offsets), a Redis of its own (--redis-port,
appendonly yes, its data in the work folder) and one `imgdedup serve`; produces
--events uploads in families of near-duplicates (soak_workload.py), keeping at most
--backlog produced but undecided. As decisions come back it scales the group to
--replicas, SIGKILLs a replica (its hashing workers too) --kills times and restarts it,
restarts the broker and Redis, and scales back to one replica (1 -> N -> 1). Then it
reads the whole decisions and dead-letter topics and the group's committed offsets and
checks (soak_verify.py): every event decided, the same on every redelivery, exactly
one accepted per family, no rejection or dead letter, every partition committed to its
end; and that no replica's RSS (its process tree, sampled every 0.5 s) passed
--rss-limit-mb. Prints the figures and one JSON line; everything it started is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgdedup.adapters.events import UploadEvent, decode_decision, encode_upload
from imgdedup.config import Settings
from imgdedup_devtools.bench.common import descendants, print_json_line, spawn_serve, stop_process, wait_http
from imgdedup_devtools.bench.soak_verify import PartitionEnd, verify
from imgdedup_devtools.bench.soak_workload import build_families
from imgdedup_devtools.bench.uploads import Upload
from imgdedup_devtools.broker import LocalS3, TansuBroker, free_port
from imgdedup_devtools.keys import throwaway_key

NAMESPACE = "soak"


# --- processes --------------------------------------------------------------------------
class RedisServer:
    """A redis-server of our own (never the shared one) with an append-only file, so that
    a restart keeps the index."""

    def __init__(self, port: int, directory: Path) -> None:
        self.port, self.directory = port, directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        redis_server = shutil.which("redis-server")
        if redis_server is None:
            raise RuntimeError("the soak needs redis-server on PATH")
        log = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [redis_server, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", ""],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        log.close()
        import redis

        deadline = time.monotonic() + 30
        while True:
            try:
                client = redis.Redis(port=self.port)
                client.ping()
                client.close()
                return
            except redis.RedisError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"redis-server on {self.port} did not start; see {self.directory}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        """SHUTDOWN (the append-only file is flushed), as a restart in operations does."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)  # redis-server: SHUTDOWN on SIGTERM
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.process = None


@dataclass
class Slot:
    """One replica position; its process is replaced when it is killed."""

    index: int
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    starts: int = 0
    peak_rss_main: int = 0
    peak_rss_tree: int = 0
    exit_codes: list[int | None] = field(default_factory=list)


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class RssSampler(threading.Thread):
    def __init__(self, slots: list[Slot]) -> None:
        super().__init__(daemon=True)
        self.slots = slots
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.5):
            for slot in self.slots:
                process = slot.process
                if process is None or process.poll() is not None:
                    continue
                main = rss_bytes(process.pid)
                tree = main + sum(rss_bytes(p) for p in descendants(process.pid))
                slot.peak_rss_main = max(slot.peak_rss_main, main)
                slot.peak_rss_tree = max(slot.peak_rss_tree, tree)


# --- the run ----------------------------------------------------------------------------
class Soak:
    def __init__(self, args: argparse.Namespace, uploads: list[Upload], workdir: Path) -> None:
        self.args, self.uploads, self.workdir = args, uploads, workdir
        tag = uuid.uuid4().hex[:8]
        self.s3 = LocalS3()
        self.broker = TansuBroker(storage=self.s3)
        self.redis = RedisServer(args.redis_port, workdir / "redis")
        self.values: dict[str, Any] = {
            "kafka_input_topic": f"soak-uploads-{tag}", "kafka_decisions_topic": f"soak-decisions-{tag}",
            "kafka_dlq_topic": f"soak-uploads-{tag}.dlq", "kafka_group_id": f"imgdedup-soak-{tag}",
            "kafka_commit_interval_ms": 500, "redis_prefix": f"soak-{tag}", "hash_workers": args.hash_workers,
            "max_in_flight": args.max_in_flight, "crop_windows": "false", "log_level": "INFO",
            "log_format": "json", "shutdown_timeout_s": 20.0,
            "api_keys_file": str(throwaway_key(workdir, "soak")[1]),
        }
        self.slots = [Slot(i) for i in range(args.replicas)]
        self.decided: set[str] = set()
        self.produced = 0
        self.actions: list[dict[str, Any]] = []
        self.started = time.monotonic()

    # replicas
    def spawn(self, slot: Slot) -> None:
        slot.port = free_port()
        slot.starts += 1
        log = self.workdir / f"replica-{slot.index}.{slot.starts}.log"
        slot.process = spawn_serve({**self.values, "http_port": slot.port}, log)

    def wait_ready(self, slot: Slot) -> None:
        assert slot.process is not None
        wait_http(f"http://127.0.0.1:{slot.port}/healthz", timeout=120, process=slot.process)

    def kill(self, slot: Slot) -> None:
        """SIGKILL the replica and its hashing workers at once, as a node failure would."""
        assert slot.process is not None
        for pid in [slot.process.pid, *descendants(slot.process.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        slot.exit_codes.append(slot.process.wait(10))
        slot.process = None

    def stop(self, slot: Slot) -> None:
        if slot.process is not None:
            slot.exit_codes.append(stop_process(slot.process, 60))
            slot.process = None

    def note(self, what: str) -> None:
        progress = len(self.decided) / len(self.uploads)
        entry = {"t_s": round(time.monotonic() - self.started, 1), "decided_pct": round(100 * progress, 1), "what": what}
        self.actions.append(entry)
        print(f"  [{entry['t_s']:7.1f} s, {entry['decided_pct']:5.1f} % decided] {what}", flush=True)

    # kafka clients
    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    async def produce(self) -> None:
        """Every upload once (again after a failed send: a duplicate is a redelivery),
        never more than --backlog ahead of the decisions."""
        from aiokafka import AIOKafkaProducer

        pending = list(self.uploads)
        chunk = 200
        while pending:
            producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, enable_idempotence=False, acks="all",
                                        linger_ms=5, max_batch_size=1 << 20, request_timeout_ms=15000)
            try:
                await producer.start()
                while pending:
                    while self.produced - len(self.decided) > self.args.backlog:  # noqa: ASYNC110 - paced by the reader
                        await asyncio.sleep(0.2)
                    batch, rest = pending[:chunk], pending[chunk:]
                    futures = []
                    for u in batch:
                        event = UploadEvent(u.image_id, NAMESPACE, u.image_id, "image/jpeg", u.data, None,
                                            uploaded_at_ms=round(time.time() * 1000))
                        futures.append(await producer.send(self.values["kafka_input_topic"], encode_upload(event),
                                                           key=f"{NAMESPACE}/{u.image_id}".encode()))
                    results = await asyncio.gather(*futures, return_exceptions=True)
                    failed = [u for u, r in zip(batch, results) if isinstance(r, BaseException)]
                    self.produced += len(batch) - len(failed)
                    pending = failed + rest
                    if failed:
                        print(f"  produce: {len(failed)} sends failed ({results[0]!r}); sending them again", flush=True)
                        break
            except Exception as exc:
                print(f"  producer: {exc!r}; reconnecting", flush=True)
            finally:
                with contextlib.suppress(Exception):  # the broker may be gone: nothing to stop cleanly
                    await producer.stop()
            if pending:
                await asyncio.sleep(1.0)

    async def follow(self) -> None:
        """Tracks which events have a decision (progress), reconnecting after a broker restart."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        positions: dict[int, int] = {}
        topic = self.values["kafka_decisions_topic"]
        while True:
            consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
                                        auto_offset_reset="earliest", max_partition_fetch_bytes=8 << 20)
            try:
                await consumer.start()
                tps = [TopicPartition(topic, p) for p in range(self.args.partitions)]
                consumer.assign(tps)
                for tp in tps:
                    if tp.partition in positions:
                        consumer.seek(tp, positions[tp.partition])
                idle = 0.0
                while True:
                    batch = await consumer.getmany(timeout_ms=500, max_records=5000)
                    for tp, records in batch.items():
                        for record in records:
                            self.decided.add(decode_decision(record.value, record.headers).event_id)
                        positions[tp.partition] = records[-1].offset + 1
                    idle = 0.0 if batch else idle + 0.5
                    if idle > 20:  # quiet for long: reconnect in case the broker went away under us
                        break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                print(f"  decision reader: {exc!r}; reconnecting", flush=True)
            finally:
                with contextlib.suppress(Exception):  # the broker may be gone: nothing to stop cleanly
                    await consumer.stop()
            await asyncio.sleep(1.0)

    async def wait_progress(self, fraction: float, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.decided) < fraction * len(self.uploads):
            if time.monotonic() > deadline:
                raise TimeoutError(f"stuck at {len(self.decided)}/{len(self.uploads)} decided for {timeout:.0f} s")
            for slot in self.slots:
                if slot.process is not None and slot.process.poll() is not None:
                    raise RuntimeError(f"replica {slot.index} exited by itself with {slot.process.returncode}")
            await asyncio.sleep(0.5)

    async def chaos(self) -> None:
        """The schedule, driven by the share of events decided."""
        args, progress_timeout = self.args, self.args.stall_timeout
        n = len(self.slots)
        await self.wait_progress(0.05, progress_timeout)
        for slot in self.slots[1:]:
            self.spawn(slot)
        for slot in self.slots[1:]:
            await asyncio.to_thread(self.wait_ready, slot)
        self.note(f"scaled 1 -> {n} replicas")
        kill_points = [0.10 + 0.55 * i / max(1, args.kills - 1) for i in range(args.kills)]
        events: list[tuple[float, str, int]] = [(p, "kill", i) for i, p in enumerate(kill_points)]
        events += [(0.40, "broker", 0), (0.55, "redis", 0)]
        victims = self.slots[1:] or self.slots
        for point, what, i in sorted(events):
            await self.wait_progress(point, progress_timeout)
            if what == "kill":
                slot = victims[i % len(victims)]
                self.kill(slot)
                self.note(f"SIGKILL replica {slot.index} (kill {i + 1}/{args.kills})")
                await asyncio.sleep(args.down_s)
                self.spawn(slot)
                await asyncio.to_thread(self.wait_ready, slot)
                self.note(f"replica {slot.index} restarted")
            elif what == "broker":
                await asyncio.to_thread(self.broker.restart)
                self.note("broker restarted (SIGTERM, same S3 storage)")
            else:
                await asyncio.to_thread(self.redis.stop)
                await asyncio.sleep(args.down_s)
                await asyncio.to_thread(self.redis.start)
                self.note("Redis restarted (SHUTDOWN, append-only file kept)")
        await self.wait_progress(0.80, progress_timeout)
        for slot in self.slots[1:]:
            await asyncio.to_thread(self.stop, slot)
        self.note(f"scaled {n} -> 1 replica (SIGTERM)")
        await self.wait_progress(1.0, progress_timeout)
        self.note("every event decided")

    async def offsets(self) -> dict[int, PartitionEnd]:
        """The group's committed offset per input partition, and where the partition's
        records end, found by reading on from the committed offset (Tansu's ListOffsets
        answers 1 for every partition after a restart on S3 storage)."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        committer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=self.values["kafka_group_id"],
                                     enable_auto_commit=False)
        reader = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
                                  auto_offset_reset="earliest", max_partition_fetch_bytes=32 << 20)
        await committer.start()
        await reader.start()
        try:
            tps = [TopicPartition(self.values["kafka_input_topic"], p) for p in range(self.args.partitions)]
            committed = {tp: await committer.committed(tp) for tp in tps}
            reader.assign(tps)
            for tp in tps:
                if committed[tp] is None:
                    await reader.seek_to_beginning(tp)
                else:
                    reader.seek(tp, committed[tp])
            end = {tp: committed[tp] or 0 for tp in tps}
            quiet_until = time.monotonic() + 3
            while time.monotonic() < quiet_until:
                batch = await reader.getmany(timeout_ms=500, max_records=1000)
                for tp, records in batch.items():
                    end[tp] = max(end[tp], records[-1].offset + 1)
                    quiet_until = time.monotonic() + 3
            return {tp.partition: PartitionEnd(-1 if committed[tp] is None else committed[tp], end[tp]) for tp in tps}
        finally:
            await reader.stop()
            await committer.stop()

    async def wait_committed(self, timeout: float) -> dict[int, PartitionEnd]:
        deadline = time.monotonic() + timeout
        while True:
            ends = await self.offsets()
            if all(e.committed == e.end for e in ends.values()) or time.monotonic() > deadline:
                return ends
            await asyncio.sleep(2)

    async def read_all(self, topic: str) -> list[Any]:
        """Every record of `topic`, from its start to its end (not by end_offsets: see offsets())."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
                                    auto_offset_reset="earliest", max_partition_fetch_bytes=32 << 20)
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(self.args.partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            out: list[Any] = []
            quiet_until = time.monotonic() + 5  # to its end: until nothing more comes for 5 s
            while time.monotonic() < quiet_until:
                batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
                for records in batch.values():
                    out.extend(records)
                    quiet_until = time.monotonic() + 5
            return out
        finally:
            await consumer.stop()

    def lag_series(self, slot: Slot) -> int:
        """How many partitions the replica exports an imgdedup_consumer_lag series for."""
        with urllib.request.urlopen(f"http://127.0.0.1:{slot.port}/metrics", timeout=5) as response:
            text = response.read().decode()
        return sum(1 for line in text.splitlines() if line.startswith("imgdedup_consumer_lag{"))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from imgdedup.adapters.kafka_clients import ensure_topics

    t0 = time.perf_counter()
    policy = Settings()
    uploads = build_families(args.events, family_size=args.family_size, seed=args.seed,
                             min_gap=policy.review_radius + 2, duplicate_radius=policy.duplicate_radius,
                             cache_dir=None if args.no_cache else args.cache_dir)
    print(f"soak: {len(uploads)} uploads in families of {args.family_size} "
          f"({sum(len(u.data) for u in uploads) / len(uploads) / 1024:.1f} KB mean) prepared in "
          f"{time.perf_counter() - t0:.1f} s; {args.replicas} replicas, {args.partitions} partitions, "
          f"{args.kills} kills", flush=True)
    workdir = Path(args.workdir or f"/tmp/imgdedup-soak-{uuid.uuid4().hex[:8]}")
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    soak = Soak(args, uploads, workdir)
    result: dict[str, Any] = {"bench": "soak", "events": len(uploads), "replicas": args.replicas,
                              "partitions": args.partitions, "kills": args.kills}
    sampler = RssSampler(soak.slots)
    tasks: list[asyncio.Task[None]] = []
    try:
        soak.s3.start()
        soak.broker.start()
        soak.redis.start()
        soak.values.update({"kafka_bootstrap": soak.bootstrap, "redis_url": soak.redis.url})
        settings = Settings(**{k: (v == "true" if k == "crop_windows" else v) for k, v in soak.values.items()})
        settings.validate()
        await ensure_topics(settings, partitions=args.partitions)
        print(f"broker {soak.bootstrap} (Tansu, storage {soak.broker.storage_engine} on {soak.s3.endpoint}), "
              f"Redis {soak.redis.url}, logs in {workdir}", flush=True)
        soak.spawn(soak.slots[0])
        soak.wait_ready(soak.slots[0])
        sampler.start()
        soak.started = time.monotonic()
        soak.note("1 replica ready; producing")
        follower = asyncio.create_task(soak.follow())
        producer = asyncio.create_task(soak.produce())
        tasks = [follower, producer]
        await soak.chaos()
        await producer
        decided_at = time.monotonic()
        partitions = await soak.wait_committed(args.commit_timeout)
        result["lag_series_last_replica"] = soak.lag_series(soak.slots[0])
        for slot in soak.slots:
            soak.stop(slot)
        decisions = [decode_decision(r.value, r.headers) for r in await soak.read_all(soak.values["kafka_decisions_topic"])]
        dead = await soak.read_all(soak.values["kafka_dlq_topic"])
        checks = verify(uploads, decisions, len(dead), partitions)
        limit = args.rss_limit_mb * 1024 * 1024
        over = [s.index for s in soak.slots if s.peak_rss_tree > limit]
        if over:
            checks["ok"] = False
            checks["problems"].append(f"replicas {over} passed {args.rss_limit_mb} MiB RSS")
        result.update({
            "seconds": round(decided_at - soak.started, 1),
            "events_per_s": round(len(uploads) / (decided_at - soak.started), 1),
            "broker_restarts": 1, "redis_restarts": 1,
            "replica_starts": sum(s.starts for s in soak.slots),
            "peak_rss_mb": [{"replica": s.index, "main": round(s.peak_rss_main / 2**20), "tree": round(s.peak_rss_tree / 2**20),
                             "starts": s.starts, "exit_codes": s.exit_codes} for s in soak.slots],
            "rss_limit_mb": args.rss_limit_mb, "actions": soak.actions, "checks": checks,
        })
        print_report(result)
    finally:
        sampler.done.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for slot in soak.slots:
            if slot.process is not None:
                slot.process.kill()
                slot.process.wait(10)
        soak.broker.stop()
        soak.s3.stop()
        soak.redis.stop()
        if not args.workdir and result.get("checks", {}).get("ok"):
            shutil.rmtree(workdir, ignore_errors=True)
        elif not result.get("checks", {}).get("ok"):
            print(f"logs kept in {workdir}", file=sys.stderr)
    return result


def print_report(r: dict[str, Any]) -> None:
    c = r["checks"]
    print(f"\n{r['events']} events in {r['seconds']} s ({r['events_per_s']} events/s) through up to {r['replicas']} "
          f"replicas on {r['partitions']} partitions: {r['kills']} SIGKILLs, {r['broker_restarts']} broker restart, "
          f"{r['redis_restarts']} Redis restart, 1 -> {r['replicas']} -> 1 replicas")
    print(f"decisions read {c['decisions_read']}: {c['decided']}/{c['events']} events decided, {c['redelivered']} "
          f"redelivered ({c['replayed']} replayed), {c['inconsistent']} inconsistent, verdicts {c['verdicts']}")
    print(f"families {c['families']}, accepted per family {c['accepted_per_family']}, wrong duplicates "
          f"{c['wrong_duplicates']}; rejected {c['rejected']}, dead letters {c['dead_letters']}, partitions not "
          f"committed to the end {c['partitions_behind']}")
    for rss in r["peak_rss_mb"]:
        print(f"  replica {rss['replica']}: peak RSS {rss['main']} MiB (process), {rss['tree']} MiB (with hashing "
              f"workers); {rss['starts']} starts, exits {rss['exit_codes']}")
    print(f"lag series exported by the last replica: {r['lag_series_last_replica']} of {r['partitions']} partitions")
    print(f"checks -> {'OK' if c['ok'] else 'FAILED'}")
    for problem in c["problems"]:
        print(f"  ! {problem}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--family-size", type=int, default=10, help="uploads per family of near-duplicates")
    parser.add_argument("--replicas", type=int, default=3, help="replicas at the peak (1 -> N -> 1)")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs of a replica, each restarted")
    parser.add_argument("--down-s", type=float, default=1.0, help="seconds a killed replica or Redis stays down")
    parser.add_argument("--backlog", type=int, default=3000, help="most events produced but not yet decided")
    parser.add_argument("--redis-port", type=int, default=6410, help="port of the soak's own redis-server")
    parser.add_argument("--hash-workers", type=int, default=1, help="IMGDEDUP_HASH_WORKERS of each replica")
    parser.add_argument("--max-in-flight", type=int, default=64)
    parser.add_argument("--rss-limit-mb", type=int, default=1536, help="fail if a replica's process tree passes this")
    parser.add_argument("--stall-timeout", type=float, default=600.0, help="fail if no progress step is reached in this many s")
    parser.add_argument("--commit-timeout", type=float, default=120.0,
                        help="how long to wait for the group to commit every partition to its end")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "imgdedup-bench")
    parser.add_argument("--no-cache", action="store_true")
    parser.add_argument("--workdir", help="folder for logs and Redis data (default: under /tmp, removed after a clean run)")
    parser.add_argument("--seed", type=int, default=1)


def main(args: argparse.Namespace) -> int:
    result = asyncio.run(run(args))
    print_json_line(result)
    return 0 if result.get("checks", {}).get("ok") else 1
