"""`imgdedup bench pipeline`: events/s and produce->decision latency through Kafka, with K service replicas.

Starts a Tansu broker (unless --bootstrap), creates fresh topics (--partitions), spawns
--replicas `imgdedup serve` processes in one consumer group (environment as
tests/test_kafka_pipeline.py sets it) on Redis (--redis-url, fresh key prefix) or the
in-memory index, warms them up until every replica owns partitions, then produces
--events pre-encoded 1280x960 uploads (distinct photos plus planted copies: byte-
identical, re-encoded, resized, brightened, WebP) as fast as possible (or at --rate)
and reads the decisions topic. Every decision is checked: each event decided, no
rejection, one accepted image per family and every copy a duplicate of it (exact iff
the bytes are equal), hashes equal to a local fingerprint, redeliveries consistent.

Reports events/s (first produce to last decision), produce->decision latency, CPU
seconds per replica (event-loop process and hashing workers separately), the broker's
and Redis's CPU, the CPU time of one fingerprint of the same images in this process
(same run) and the service's CPU per event as a multiple of it, and with --profile a py-spy profile of every replica summarised by
where the time goes. Topics (on an external broker), Redis keys and every process it
started are removed before it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgdedup.adapters.events import UploadEvent, decode_decision, encode_upload
from imgdedup.config import Settings
from imgdedup.fingerprint import HASH_ALGORITHM, code_hex
from imgdedup_devtools.bench.common import (
    bench_prefix,
    extra_env,
    fingerprint_cpu_ms,
    latency_summary,
    print_json_line,
    redis_cpu_seconds,
    spawn_serve,
    stop_process,
    tree_cpu,
    wait_http,
)
from imgdedup_devtools.bench.profile import summarise_raw_profile
from imgdedup_devtools.bench.service_options import add_service_arguments, clean_up_redis, service_values
from imgdedup_devtools.bench.uploads import (
    Upload,
    add_workload_arguments,
    build_uploads,
    cache_dir,
    expected_by_family,
    mean_kb,
    workload,
)
from imgdedup_devtools.broker import TansuBroker, free_port
from imgdedup_devtools.keys import throwaway_key

NAMESPACE = "bench"
WARMUP_NAMESPACE = "warmup"


@dataclass
class Replica:
    index: int
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    profiler: subprocess.Popen[bytes] | None = None
    profile_path: Path | None = None
    cpu_before: dict[str, float] = field(default_factory=dict)
    cpu_after: dict[str, float] = field(default_factory=dict)
    metrics_before: dict[str, float] = field(default_factory=dict)
    metrics_after: dict[str, float] = field(default_factory=dict)


def scrape(port: int) -> dict[str, float]:
    """Prometheus text of one replica -> {'name{labels}': value} (counters we report)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, value = line.rpartition(" ")
        if name.startswith(("imgdedup_events_consumed_total", "imgdedup_decisions_total", "imgdedup_replays_total",
                            "imgdedup_transient_errors_total", "imgdedup_index_", "imgdedup_hash_seconds_sum",
                            "imgdedup_hash_seconds_count", "imgdedup_decision_seconds_sum",
                            "imgdedup_decision_seconds_count")):
            try:
                out[name] = float(value)
            except ValueError:
                pass
    return out


def metric_sum(metrics: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in metrics.items() if k.startswith(prefix))


class DecisionReader:
    """Reads the decisions topic from the beginning (no group), timestamping arrivals."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from aiokafka import AIOKafkaConsumer

        self.topic = topic
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest", enable_auto_commit=False,
            fetch_max_wait_ms=20, max_partition_fetch_bytes=8 << 20,
        )
        self.records: list[tuple[float, Any]] = []  # (arrival perf_counter, DedupDecision)
        self.arrival_wall_ms: dict[int, float] = {}  # index in records -> arrival wall clock (ms)
        self._task: asyncio.Task[None] | None = None
        self.changed = asyncio.Event()

    async def start(self) -> None:
        from aiokafka import TopicPartition

        await self.consumer.start()
        partitions = None
        for _ in range(50):
            partitions = self.consumer.partitions_for_topic(self.topic)
            if partitions:
                break
            await self.consumer._client.force_metadata_update()
            await asyncio.sleep(0.1)
        if not partitions:
            raise RuntimeError(f"topic {self.topic} has no partitions")
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        self.consumer.assign(tps)
        await self.consumer.seek_to_beginning(*tps)
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=100, max_records=10_000)
            now = time.perf_counter()
            wall_ms = time.time() * 1000
            for records in batch.values():
                for record in records:
                    self.arrival_wall_ms[len(self.records)] = wall_ms
                    self.records.append((now, decode_decision(record.value, record.headers)))
            if batch:
                self.changed.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await self.consumer.stop()


async def wait_for(predicate: Any, reader: DecisionReader, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        reader.changed.clear()
        try:
            await asyncio.wait_for(reader.changed.wait(), min(remaining, 1.0))
        except TimeoutError:
            pass


def spawn_replicas(args: argparse.Namespace, values: dict[str, Any], logdir: Path) -> list[Replica]:
    replicas = []
    for i in range(args.replicas):
        port = free_port()
        log_path = logdir / f"replica-{i}.log"
        replicas.append(Replica(i, spawn_serve({**values, "http_port": port}, log_path), port, log_path))
    return replicas


def start_profilers(replicas: list[Replica], args: argparse.Namespace, outdir: Path) -> None:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        raise RuntimeError("--profile needs py-spy (pip install py-spy)")
    for replica in replicas:
        suffix = {"raw": "txt", "flamegraph": "svg", "speedscope": "json"}[args.profile_format]
        replica.profile_path = outdir / f"replica-{replica.index}.{suffix}"
        command = [py_spy, "record", "--pid", str(replica.process.pid), "--subprocesses", "--rate", str(args.profile_rate),
                   "--format", args.profile_format, "--output", str(replica.profile_path), "--nonblocking"]
        if args.profile_idle:
            command.append("--idle")
        replica.profiler = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                            stdin=subprocess.DEVNULL)
    time.sleep(1.0)  # attach before the load starts


def stop_profilers(replicas: list[Replica]) -> None:
    for replica in replicas:
        if replica.profiler is not None and replica.profiler.poll() is None:
            replica.profiler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
    for replica in replicas:
        if replica.profiler is not None:
            try:
                replica.profiler.wait(60)
            except subprocess.TimeoutExpired:
                replica.profiler.kill()
                replica.profiler.wait(10)


def check_decisions(uploads: list[Upload], decisions: list[Any], duplicate_radius: int) -> dict[str, Any]:
    """Every planted relationship, every decision."""
    by_event: dict[str, list[Any]] = collections.defaultdict(list)
    for d in decisions:
        by_event[d.event_id].append(d)
    by_id = {u.image_id: u for u in uploads}
    problems: list[str] = []
    missing = [u.image_id for u in uploads if u.image_id not in by_event]
    if missing:
        problems.append(f"{len(missing)} events never decided, e.g. {missing[:3]}")
    rejected = [d for d in decisions if d.verdict == "rejected"]
    if rejected:
        problems.append(f"{len(rejected)} rejections, e.g. {rejected[0].image_id}: {rejected[0].error.code} {rejected[0].error.detail}")
    inconsistent = 0
    hash_mismatch = 0
    final: dict[str, Any] = {}
    for event_id, seen in by_event.items():
        if event_id not in by_id:
            problems.append(f"decision for an unknown event {event_id}")
            continue
        if len({(d.verdict, d.duplicate_of) for d in seen}) != 1:
            inconsistent += 1
        upload = by_id[event_id]
        first = seen[0]
        if first.sha256 != upload.sha256_hex or list(first.phashes) != [code_hex(c) for c in upload.codes]:
            hash_mismatch += 1
        final[event_id] = first
    if inconsistent:
        problems.append(f"{inconsistent} events decided differently on redelivery")
    if hash_mismatch:
        problems.append(f"{hash_mismatch} decisions carry hashes that differ from the local fingerprint")
    verdicts = collections.Counter(d.verdict for d in final.values())
    bad_families = 0
    wrong_match = 0
    for _family, members in expected_by_family(uploads).items():
        decided = [(u, final[u.image_id]) for u in members if u.image_id in final]
        kept = [(u, d) for u, d in decided if d.verdict in ("accepted", "review")]
        if len(kept) != 1 or kept[0][1].verdict != "accepted":
            bad_families += 1
            if bad_families <= 3:
                problems.append(f"family {members[0].family}: kept "
                                f"{[(u.image_id, d.verdict, d.duplicate_of, d.distance) for u, d in kept]}")
            continue
        original, _ = kept[0]
        for u, d in decided:
            if u is original:
                continue
            if d.verdict != "duplicate" or d.duplicate_of != original.image_id:
                bad_families += 1
                problems.append(f"{u.image_id}: {d.verdict} of {d.duplicate_of!r}, expected duplicate of {original.image_id}")
                break
            exact = u.sha256_hex == original.sha256_hex
            distance = 0 if exact else u.distance_to(original)
            # the service may index extra codes (crop windows) or not, depending on its
            # settings: it reports a distance between the local minimum and the radius
            if d.match != ("exact" if exact else "near") or not distance <= d.distance <= duplicate_radius:
                wrong_match += 1
    if wrong_match:
        problems.append(f"{wrong_match} duplicates with the wrong match kind or distance")
    return {
        "events": len(uploads), "decided": len(final), "decisions_read": len(decisions),
        "redelivered": len(decisions) - len(final), "replayed": sum(1 for d in decisions if d.replayed),
        "verdicts": dict(verdicts), "families": len(expected_by_family(uploads)), "bad_families": bad_families,
        "missing": len(missing), "rejected": len(rejected), "inconsistent": inconsistent,
        "hash_mismatch": hash_mismatch, "wrong_match": wrong_match, "ok": not problems, "problems": problems[:20],
    }


async def produce(
    bootstrap: str, topic: str, uploads: list[Upload], namespace: str, rate: float, partitions: int | None = None,
    wall_ms: dict[str, int] | None = None,
) -> dict[str, float]:
    """Send every upload; returns event_id -> perf_counter at send. With `rate` > 0
    events are paced at that many per second (open loop), else sent as fast as the
    producer accepts them."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=False, acks=1, linger_ms=5,
        max_request_size=32 << 20, max_batch_size=1 << 20,
    )
    await producer.start()
    sent: dict[str, float] = {}
    try:
        started = time.perf_counter()
        futures = []
        for i, upload in enumerate(uploads):
            if rate > 0:
                delay = started + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            now = time.perf_counter()
            event = UploadEvent(upload.image_id, namespace, upload.image_id, "image/jpeg", upload.data, None,
                                uploaded_at_ms=round(time.time() * 1000))
            sent[upload.image_id] = now
            if wall_ms is not None:
                wall_ms[upload.image_id] = event.uploaded_at_ms
            futures.append(await producer.send(
                topic, encode_upload(event), key=f"{namespace}/{upload.image_id}".encode(),
                partition=(i % partitions) if partitions else None,
            ))
        await producer.flush()
        for future in futures:
            await future
    finally:
        await producer.stop()
    return sent


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from imgdedup.adapters.kafka_clients import ensure_topics

    if args.index == "memory" and args.replicas > 1:
        raise SystemExit("--index memory keeps the index inside each process: use --replicas 1 (or --index redis)")
    t0 = time.perf_counter()
    uploads = workload(args, args.events)
    size_kb = mean_kb(uploads)
    kinds = collections.Counter(u.kind for u in uploads)
    print(f"pipeline benchmark: {len(uploads)} uploads ({size_kb:.0f} KB mean; {dict(kinds)}) prepared in "
          f"{time.perf_counter() - t0:.1f} s; {args.replicas} replica(s), {args.partitions} partitions, index {args.index}; "
          f"{platform.machine()}, {os.cpu_count()} cores, hash {HASH_ALGORITHM}", flush=True)
    warm = build_uploads(2 * args.partitions, dup_fraction=0.0, seed=args.seed + 999, cache_dir=cache_dir(args), log=False)

    tag = uuid.uuid4().hex[:10]
    prefix = bench_prefix("pipeline")
    logdir = _make_dir(Path(args.workdir or f"/tmp/imgdedup-bench-pipeline-{tag}"))
    broker: TansuBroker | None = None
    replicas: list[Replica] = []
    reader: DecisionReader | None = None
    result: dict[str, Any] = {"bench": "pipeline"}
    bootstrap = args.bootstrap
    settings_values: dict[str, Any] = {}
    try:
        if not bootstrap:
            broker = TansuBroker().start()
            bootstrap = broker.bootstrap
        settings_values = {
            "kafka_bootstrap": bootstrap,
            "kafka_input_topic": f"bench-uploads-{tag}",
            "kafka_decisions_topic": f"bench-decisions-{tag}",
            "kafka_dlq_topic": f"bench-uploads-{tag}.dlq",
            "kafka_group_id": f"imgdedup-bench-{tag}",
            "kafka_commit_interval_ms": 500,
            # Authentication on, as deployed: the replicas need a key to start (this
            # benchmark itself only reads their public /readyz and /metrics).
            "api_keys_file": str(throwaway_key(logdir, "bench-pipeline")[1]),
            **service_values(args, prefix, shutdown_timeout_s=20.0),
        }
        settings = Settings(**settings_values)
        settings.validate()
        await ensure_topics(settings, partitions=args.partitions)
        reader = DecisionReader(bootstrap, settings.kafka_decisions_topic)
        await reader.start()
        replicas = spawn_replicas(args, {**settings_values, **extra_env(args.env)}, logdir)
        for replica in replicas:
            wait_http(f"http://127.0.0.1:{replica.port}/readyz", timeout=90, process=replica.process)
        await warm_up(replicas, reader, bootstrap, settings.kafka_input_topic, warm, args)
        print(f"{len(replicas)} replica(s) ready and consuming (logs in {logdir})", flush=True)

        if args.profile:
            _make_dir(args.profile)
            start_profilers(replicas, args, args.profile)
        for replica in replicas:
            replica.cpu_before = tree_cpu(replica.process.pid)
            replica.metrics_before = scrape(replica.port)
        broker_pid = broker._process.pid if broker is not None and broker._process is not None else None
        broker_cpu0 = tree_cpu(broker_pid) if broker_pid else None
        redis_cpu0 = _redis_cpu(args) if args.index == "redis" else None
        bench_cpu0 = time.process_time()
        already = len(reader.records)

        first_send = time.perf_counter()
        produced_wall_ms: dict[str, int] = {}
        sent = await produce(bootstrap, settings.kafka_input_topic, uploads, NAMESPACE, args.rate, wall_ms=produced_wall_ms)
        produced_at = time.perf_counter()
        wanted = set(sent)

        def all_decided() -> bool:
            return wanted <= {d.event_id for _, d in reader.records[already:]}

        await wait_for(all_decided, reader, args.timeout, f"{len(wanted)} decisions")
        done_at = max(t for t, d in reader.records[already:] if d.event_id in wanted)
        await asyncio.sleep(args.settle)  # redeliveries, if any, show up now
        for replica in replicas:
            replica.cpu_after = tree_cpu(replica.process.pid)
            replica.metrics_after = scrape(replica.port)
        broker_cpu1 = tree_cpu(broker_pid) if broker_pid else None
        redis_cpu1 = _redis_cpu(args) if args.index == "redis" else None
        bench_cpu = time.process_time() - bench_cpu0
        if args.profile:
            stop_profilers(replicas)

        decisions = [d for _, d in reader.records[already:] if d.namespace == NAMESPACE or d.event_id in wanted]
        first_arrival: dict[str, float] = {}
        for t, d in reader.records[already:]:
            if d.event_id in wanted and d.event_id not in first_arrival:
                first_arrival[d.event_id] = t
        latencies = [first_arrival[e] - sent[e] for e in wanted if e in first_arrival]
        # split on the service's clock (same machine): upload -> decision built, decision -> read here
        to_decided: list[float] = []
        to_reader: list[float] = []
        seen_ids: set[str] = set()
        for i, (_t, d) in enumerate(reader.records[already:], start=already):
            if d.event_id in wanted and d.event_id not in seen_ids and d.decided_at_ms:
                seen_ids.add(d.event_id)
                uploaded_ms = produced_wall_ms.get(d.event_id)
                if uploaded_ms is not None:
                    to_decided.append((d.decided_at_ms - uploaded_ms) / 1000)
                to_reader.append((reader.arrival_wall_ms[i] - d.decided_at_ms) / 1000)
        wall = done_at - first_send
        checks = check_decisions(uploads, decisions, Settings().duplicate_radius)
        per_replica = [replica_figures(replica, wall) for replica in replicas]
        total_cpu = sum(r["cpu_s_event_loop"] + r["cpu_s_hash_workers"] for r in per_replica)
        result.update({
            "replicas": args.replicas, "partitions": args.partitions, "index": args.index, "events": len(uploads),
            "mean_kb": round(size_kb, 1), "rate": args.rate or "max", "hash_workers": args.hash_workers,
            "max_in_flight": args.max_in_flight, "cores": os.cpu_count(),
            "events_per_s": round(len(wanted) / wall, 1),
            "seconds": round(wall, 2), "produce_seconds": round(produced_at - first_send, 2),
            "latency": latency_summary(latencies),
            "latency_upload_to_decided": latency_summary(to_decided),
            "latency_decided_to_read": latency_summary(to_reader),
            "per_replica": per_replica,
            "cpu_s_per_event_service": round(total_cpu / len(wanted) * 1000, 2),
            "cpu_s_broker": round(broker_cpu1["main"] - broker_cpu0["main"], 2) if broker_cpu0 and broker_cpu1 else None,
            "cpu_s_redis_server": round(redis_cpu1 - redis_cpu0, 2) if redis_cpu0 is not None and redis_cpu1 is not None else None,
            "cpu_s_bench_client": round(bench_cpu, 2),
            "checks": checks,
        })
        result["cpu_ms_per_event_service"] = result.pop("cpu_s_per_event_service")
        # The yardstick, same run, same images: one fingerprint each in this process.
        fp_ms = fingerprint_cpu_ms([u.data for u in uploads], settings)
        result["fingerprint_cpu_ms"] = round(fp_ms, 3)
        result["service_cpu_per_fingerprint"] = round(result["cpu_ms_per_event_service"] / fp_ms, 2)
        print_report(result)
        if args.profile:
            result["profile"] = {}
            for replica in replicas:
                if replica.profile_path and replica.profile_path.exists() and args.profile_format == "raw":
                    summary = summarise_raw_profile(replica.profile_path)
                    result["profile"][str(replica.index)] = summary
                    print(f"\nprofile of replica {replica.index} ({replica.profile_path}, {summary['samples']} samples, "
                          f"{summary['processes']} processes):")
                    for name, share in summary["categories"].items():
                        print(f"  {name:<34} {share:5.1f} %")
                    print("  top leaf functions:")
                    for leaf, share in summary["top_leaves"][:12]:
                        print(f"    {share:5.1f} %  {leaf}")
                elif replica.profile_path:
                    print(f"profile of replica {replica.index}: {replica.profile_path}")
    finally:
        if reader is not None:
            await reader.stop()
        for replica in replicas:
            if replica.profiler is not None and replica.profiler.poll() is None:
                replica.profiler.kill()
                replica.profiler.wait(10)
        exits = [stop_process(r.process, 40) for r in replicas]
        if replicas:
            result["replica_exit_codes"] = exits
            if any(code != 0 for code in exits):
                print(f"replica exit codes {exits}; logs in {logdir}", file=sys.stderr)
        if not args.workdir and result.get("checks", {}).get("ok") and all(code == 0 for code in result.get("replica_exit_codes", [])):
            shutil.rmtree(logdir, ignore_errors=True)  # replica logs are kept only when something failed
        await clean_up_redis(args, prefix)
        if broker is not None:
            broker.stop()
        elif settings_values:
            await _delete_topics(settings_values)
    return result


def replica_figures(replica: Replica, wall: float) -> dict[str, Any]:
    """What one replica did during the timed run, from its CPU times and metrics."""
    def delta(prefix: str) -> float:
        return metric_sum(replica.metrics_after, prefix) - metric_sum(replica.metrics_before, prefix)

    cpu_main = replica.cpu_after["main"] - replica.cpu_before["main"]
    hash_n, hash_s = delta("imgdedup_hash_seconds_count"), delta("imgdedup_hash_seconds_sum")
    dec_n, dec_s = delta("imgdedup_decision_seconds_count"), delta("imgdedup_decision_seconds_sum")
    return {
        "replica": replica.index,
        "events": int(delta("imgdedup_events_consumed_total")),
        "cpu_s_event_loop": round(cpu_main, 2),
        "cpu_s_hash_workers": round(replica.cpu_after["children"] - replica.cpu_before["children"], 2),
        "cpu_pct_event_loop": round(100 * cpu_main / wall, 1),
        "hash_ms_mean_incl_queue": round(1000 * hash_s / hash_n, 2) if hash_n else None,
        "receipt_to_decision_ms_mean": round(1000 * dec_s / dec_n, 1) if dec_n else None,
        "registers": int(delta('imgdedup_index_seconds_count{operation="register"}')),
        "pending_waits": int(delta("imgdedup_index_pending_waits_total")),
        "restarts": int(delta("imgdedup_index_restarts_total")),
        "transient_errors": int(delta("imgdedup_transient_errors_total")),
    }


async def warm_up(replicas: list[Replica], reader: DecisionReader, bootstrap: str, topic: str,
                  warm: list[Upload], args: argparse.Namespace) -> None:
    """One event per partition per round until every replica has consumed some: the
    group is formed and the hashing pools are warm before the clock starts."""
    deadline = time.monotonic() + 120
    round_ = 0
    while True:
        round_ += 1
        batch = [Upload(f"warm{round_}-{i}", -1, "orig", u.data) for i, u in enumerate(warm[: args.partitions])]
        sent = await produce(bootstrap, topic, batch, WARMUP_NAMESPACE, 0, partitions=args.partitions)
        await wait_for(lambda sent=sent: set(sent) <= {d.event_id for _, d in reader.records}, reader, 120,
                       "warm-up decisions")
        consumed = [metric_sum(scrape(r.port), "imgdedup_events_consumed_total") for r in replicas]
        if all(c > 0 for c in consumed):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"replicas did not all get partitions (consumed per replica: {consumed})")
        await asyncio.sleep(1.0)


def _make_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _redis_cpu(args: argparse.Namespace) -> float | None:
    import redis

    client = redis.Redis.from_url(args.redis_url)
    try:
        return redis_cpu_seconds(client)
    finally:
        client.close()


async def _delete_topics(values: dict[str, Any]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=values["kafka_bootstrap"])
    try:
        await admin.start()
        await admin.delete_topics([values["kafka_input_topic"], values["kafka_decisions_topic"], values["kafka_dlq_topic"]])
    except Exception as exc:  # best effort on someone else's broker
        print(f"could not delete the benchmark topics: {exc!r}", file=sys.stderr)
    finally:
        await admin.close()


def print_report(r: dict[str, Any]) -> None:
    lat = r["latency"]
    print(f"\n{r['events']} events in {r['seconds']} s (produced in {r['produce_seconds']} s): "
          f"{r['events_per_s']} events/s end to end with {r['replicas']} replica(s)")
    print(f"produce -> decision latency: p50 {lat['p50_ms']:.0f} ms  p90 {lat['p90_ms']:.0f} ms  p99 {lat['p99_ms']:.0f} ms  "
          f"max {lat['max_ms']:.0f} ms  ({'open loop at ' + str(r['rate']) + '/s' if r['rate'] != 'max' else 'all produced at once: includes queueing'})")
    a, b = r["latency_upload_to_decided"], r["latency_decided_to_read"]
    if a.get("n") and b.get("n"):
        print(f"  of which upload -> decision built (service clock) p50 {a['p50_ms']:.0f} ms p99 {a['p99_ms']:.0f} ms; "
              f"decision -> read back p50 {b['p50_ms']:.0f} ms p99 {b['p99_ms']:.0f} ms")
    for rep in r["per_replica"]:
        print(f"  replica {rep['replica']}: {rep['events']} events, CPU {rep['cpu_s_event_loop']} s event loop "
              f"({rep['cpu_pct_event_loop']} % of one core) + {rep['cpu_s_hash_workers']} s hashing workers; "
              f"hash {rep['hash_ms_mean_incl_queue']} ms mean incl. queue, receipt -> decision "
              f"{rep['receipt_to_decision_ms_mean']} ms mean; waits {rep['pending_waits']}, restarts "
              f"{rep['restarts']}, transient errors {rep['transient_errors']}")
    print(f"fingerprint of these images in this process (same run): {r['fingerprint_cpu_ms']} ms CPU each; service "
          f"CPU per event / fingerprint = {r['service_cpu_per_fingerprint']}x")
    print(f"service CPU {r['cpu_ms_per_event_service']} ms per event; broker CPU {r['cpu_s_broker']} s, Redis server CPU "
          f"{r['cpu_s_redis_server']} s, this client {r['cpu_s_bench_client']} s")
    c = r["checks"]
    print(f"checks: {c['decided']}/{c['events']} decided ({c['decisions_read']} decisions read, {c['redelivered']} "
          f"redelivered), verdicts {c['verdicts']}, {c['families']} families, {c['bad_families']} wrong, "
          f"{c['rejected']} rejected, {c['hash_mismatch']} hash mismatches -> {'OK' if c['ok'] else 'FAILED'}")
    for problem in c["problems"]:
        print(f"  ! {problem}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=2000, help="uploads in the timed run")
    parser.add_argument("--replicas", type=int, default=1, help="`imgdedup serve` processes in the consumer group")
    parser.add_argument("--partitions", type=int, default=6, help="partitions of the fresh input topic")
    parser.add_argument("--bootstrap", default="", help="use this Kafka instead of starting a Tansu broker")
    add_service_arguments(parser)
    parser.add_argument("--rate", type=float, default=0.0, help="events/s to produce at (0: as fast as possible)")
    parser.add_argument("--timeout", type=float, default=900.0, help="give up waiting for decisions after this many s")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds to keep reading after the last decision")
    parser.add_argument("--profile", type=Path, help="record every replica with py-spy into this folder")
    parser.add_argument("--profile-format", choices=("raw", "flamegraph", "speedscope"), default="raw",
                        help="py-spy output (raw collapsed stacks are summarised here)")
    parser.add_argument("--profile-rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--profile-idle", action="store_true", help="also sample idle threads (waiting time)")
    add_workload_arguments(parser)
    parser.add_argument("--workdir", help="folder for replica logs (default: a fresh one under /tmp, removed after a clean run)")
    parser.add_argument("--seed", type=int, default=1)


def main(args: argparse.Namespace) -> int:
    result = asyncio.run(run(args))
    print_json_line(result)
    checks = result.get("checks", {})
    if not checks.get("ok", False):
        print("imgdedup bench pipeline: decisions did not match the planted duplicates", file=sys.stderr)
        return 1
    if any(code != 0 for code in result.get("replica_exit_codes", [])):
        return 1
    return 0



