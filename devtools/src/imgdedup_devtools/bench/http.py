"""`imgdedup bench http`: inline /check latency and requests/s at N concurrent clients, and register throughput.

Starts `imgdedup serve` as a subprocess (HTTP only: no Kafka; the load generator must
not share the service's event loop; --in-process runs a `Service` in this process
instead), on Redis (--redis-url, fresh key prefix) or the in-memory index. Pre-encoded
1280x960 uploads (distinct photos plus planted copies, imgdedup_devtools/bench/uploads.py):

1. register: POST /v1/namespaces/{ns}/images/{id} of the originals of most families at
   --concurrency clients: images/s and latency; every answer must be 201 `accepted`.
2. with --rate R or --rate-of-saturation F, open loop: the saturation rate (closed loop
   at --saturation-clients), with F the one-client latency, then /check requests
   arriving at R (or F x saturation) per second for --seconds whatever is outstanding,
   latency from each scheduled arrival; with F the open-loop p99 / one-client p99.
3. check: for --seconds, --concurrency keep-alive aiohttp clients POST
   /v1/namespaces/{ns}/check with images drawn from registered originals, their copies
   and never-registered images: requests/s, latency p50/p99; every answer is checked
   (`duplicate` of the right original, or `unique`).

The service runs with authentication on, as deployed, and a throw-away admin key (no
request limit: the benchmark measures the service, not the limiter). Redis keys, the key
and the service process are removed before it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from imgdedup.config import Settings
from imgdedup.fingerprint import HASH_ALGORITHM
from imgdedup_devtools.bench.common import (
    bench_prefix,
    extra_env,
    extra_settings,
    fingerprint_cpu_ms,
    fmt_lat,
    latency_summary,
    print_json_line,
    run_clients,
    spawn_serve,
    stop_process,
    tree_cpu,
    wait_http,
)
from imgdedup_devtools.bench.service_options import add_service_arguments, clean_up_redis, service_values
from imgdedup_devtools.bench.uploads import Upload, add_workload_arguments, build_uploads, cache_dir, mean_kb, workload
from imgdedup_devtools.broker import free_port
from imgdedup_devtools.keys import throwaway_key

NAMESPACE = "bench"


async def post_image(session: Any, url: str, upload: Upload) -> tuple[int, dict[str, Any], float]:
    """POST the upload's bytes to `url`: (status, JSON body, seconds until the body was read)."""
    started = time.perf_counter()
    async with session.post(url, data=upload.data, headers={"Content-Type": "image/jpeg"}) as response:
        body = await response.json()
    return response.status, body, time.perf_counter() - started


async def register_all(session: Any, base: str, originals: list[Upload], concurrency: int) -> dict[str, Any]:
    times: list[float] = []
    statuses: collections.Counter[str] = collections.Counter()
    wrong: list[str] = []
    queue = list(originals)

    async def worker() -> None:
        while queue:
            upload = queue.pop()
            status, body, seconds = await post_image(session, f"{base}/v1/namespaces/{NAMESPACE}/images/{upload.image_id}",
                                                     upload)
            times.append(seconds)
            statuses[str(status)] += 1
            if status != 201 or body.get("verdict") != "accepted" or body.get("sha256") != upload.sha256_hex:
                wrong.append(f"{upload.image_id}: {status} {body}")

    wall = await run_clients(worker, concurrency)
    return {"images": len(originals), "seconds": round(wall, 2), "images_per_s": round(len(originals) / wall, 1),
            "latency": latency_summary(times), "statuses": dict(statuses), "wrong": len(wrong), "examples": wrong[:3]}


async def check_load(
    session: Any, base: str, pool: list[tuple[Upload, str | None]], concurrency: int, seconds: float, seed: int
) -> dict[str, Any]:
    """`pool`: (upload, expected duplicate_of or None for unique)."""
    times: list[float] = []
    statuses: collections.Counter[str] = collections.Counter()
    verdicts: collections.Counter[str] = collections.Counter()
    wrong: list[str] = []
    deadline = time.perf_counter() + seconds
    rng = random.Random(seed)

    async def worker() -> None:
        while time.perf_counter() < deadline:
            upload, original = pool[rng.randrange(len(pool))]
            status, body, seconds = await post_image(session, f"{base}/v1/namespaces/{NAMESPACE}/check", upload)
            times.append(seconds)
            statuses[str(status)] += 1
            verdicts[str(body.get("verdict"))] += 1
            problem = judge(upload, original, status, body)
            if problem:
                wrong.append(problem)

    wall = await run_clients(worker, concurrency)
    return {"requests": len(times), "seconds": round(wall, 2), "requests_per_s": round(len(times) / wall, 1),
            "latency": latency_summary(times), "statuses": dict(statuses), "verdicts": dict(verdicts),
            "wrong": len(wrong), "examples": wrong[:3]}


def judge(upload: Upload, original: str | None, status: int, body: dict[str, Any]) -> str | None:
    """What is wrong with a /check answer (None when it is right): a `duplicate` of the
    right original, or `unique` for an image whose family was never registered."""
    verdict = body.get("verdict")
    matches = body.get("matches") or []
    if original is None:
        ok = status == 200 and verdict == "unique"
    else:
        ok = status == 200 and verdict == "duplicate" and bool(matches) and matches[0]["image_id"] == original
    return None if ok else f"{upload.image_id}: {status} {verdict} {matches[:2]} (expected {original or 'unique'})"


async def open_loop(
    session: Any, base: str, pool: list[tuple[Upload, str | None]], rate: float, seconds: float, seed: int,
    max_outstanding: int = 2000,
) -> dict[str, Any]:
    """/check requests arriving at a fixed `rate` for `seconds`, each sent at its arrival
    time whatever is still outstanding (open loop). A latency runs from the request's
    scheduled arrival to its answer, so a generator that falls behind shows as latency
    rather than as fewer requests (no coordinated omission). Arrivals that find
    `max_outstanding` requests unanswered are counted as dropped."""
    times: list[float] = []
    statuses: collections.Counter[str] = collections.Counter()
    wrong: list[str] = []
    rng = random.Random(seed)
    count = max(1, round(rate * seconds))
    outstanding = 0
    dropped = 0

    async def one(upload: Upload, original: str | None, due: float) -> None:
        nonlocal outstanding
        try:
            async with session.post(f"{base}/v1/namespaces/{NAMESPACE}/check", data=upload.data,
                                    headers={"Content-Type": "image/jpeg"}) as response:
                body = await response.json()
            times.append(time.perf_counter() - due)
            statuses[str(response.status)] += 1
            problem = judge(upload, original, response.status, body)
            if problem:
                wrong.append(problem)
        finally:
            outstanding -= 1

    tasks: list[asyncio.Task[None]] = []
    started = time.perf_counter() + 0.05
    for i in range(count):
        due = started + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if outstanding >= max_outstanding:
            dropped += 1
            continue
        outstanding += 1
        upload, original = pool[rng.randrange(len(pool))]
        tasks.append(asyncio.create_task(one(upload, original, due)))
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - started
    return {"rate": round(rate, 1), "requests": len(times), "seconds": round(wall, 2),
            "requests_per_s": round(len(times) / wall, 1), "dropped": dropped, "latency": latency_summary(times),
            "statuses": dict(statuses), "wrong": len(wrong), "examples": wrong[:3]}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import aiohttp

    t0 = time.perf_counter()
    uploads = workload(args, args.images)
    families = sorted({u.family for u in uploads})
    registered = set(families[: round(len(families) * args.registered_fraction)])
    originals = [u for u in uploads if u.kind == "orig" and u.family in registered]
    orig_id = {u.family: u.image_id for u in originals}
    pool = [(u, orig_id.get(u.family)) for u in uploads]
    size_kb = mean_kb(uploads)
    print(f"http benchmark: {len(uploads)} uploads ({size_kb:.0f} KB mean) prepared in {time.perf_counter() - t0:.1f} s; "
          f"{len(originals)} originals to register, check pool {len(pool)} ({sum(1 for _, o in pool if o is None)} expected "
          f"unique); {args.concurrency} clients; index {args.index}; {'in-process' if args.in_process else 'subprocess'} "
          f"service; {platform.machine()}, {os.cpu_count()} cores, hash {HASH_ALGORITHM}", flush=True)

    prefix = bench_prefix("http")
    port = free_port()
    key_folder = tempfile.TemporaryDirectory(prefix="imgdedup-bench-http-keys-")
    token, keys_file = throwaway_key(Path(key_folder.name), "bench-http")
    values = {**service_values(args, prefix, shutdown_timeout_s=10.0), "http_port": port,
              "api_keys_file": str(keys_file), "rate_limit_per_key": 0.0}
    process: subprocess.Popen[bytes] | None = None
    service: Any = None
    log_path = Path(f"/tmp/imgdedup-bench-http-{port}.log")
    result: dict[str, Any] = {"bench": "http"}
    try:
        if args.in_process:
            from imgdedup.app import Service

            service = Service(Settings(**values, **extra_settings(args.env)))
            await service.start()
            pid = os.getpid()
        else:
            process = spawn_serve({**values, **extra_env(args.env)}, log_path)
            pid = process.pid
            await asyncio.to_thread(wait_http, f"http://127.0.0.1:{port}/readyz", 90, process)
        base = f"http://127.0.0.1:{port}"
        # open loop: as many connections as requests outstanding (0 = no limit)
        limit = 0 if args.rate or args.rate_of_saturation else args.concurrency
        connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120),
                                         headers={"Authorization": f"Bearer {token}"}) as session:
            # warm-up: start the hashing workers' imports and the keep-alive connections
            warm = build_uploads(args.concurrency, dup_fraction=0.0, seed=args.seed + 777, cache_dir=cache_dir(args),
                                 log=False)
            await asyncio.gather(*(post_image(session, f"{base}/v1/namespaces/warmup/check", u) for u in warm))
            cpu0 = tree_cpu(pid)
            reg = await register_all(session, base, originals, args.concurrency)
            cpu1 = tree_cpu(pid)
            print(f"register: {reg['images']} images in {reg['seconds']} s = {reg['images_per_s']} images/s at "
                  f"{args.concurrency} clients, {fmt_lat(reg['latency'])}, statuses {reg['statuses']}, {reg['wrong']} wrong",
                  flush=True)
            if args.rate or args.rate_of_saturation:
                result["open_loop"] = await open_loop_phases(session, base, pool, args, pid)
                for phase in result["open_loop"].values():
                    reg["examples"].extend(phase.get("examples", []))
            cpu_check = tree_cpu(pid)
            chk = await check_load(session, base, pool, args.concurrency, args.seconds, args.seed)
            cpu2 = tree_cpu(pid)
        chk["cpu_s_event_loop"] = round(cpu2["main"] - cpu_check["main"], 2)
        chk["cpu_s_hash_workers"] = round(cpu2["children"] - cpu_check["children"], 2)
        reg["cpu_s_event_loop"] = round(cpu1["main"] - cpu0["main"], 2)
        reg["cpu_s_hash_workers"] = round(cpu1["children"] - cpu0["children"], 2)
        print(f"check: {chk['requests']} requests in {chk['seconds']} s = {chk['requests_per_s']} requests/s at "
              f"{args.concurrency} clients, {fmt_lat(chk['latency'])}; statuses {chk['statuses']}, verdicts "
              f"{chk['verdicts']}, {chk['wrong']} wrong", flush=True)
        loop_label = "this process (service + load generator)" if args.in_process else "event loop"
        print(f"service CPU during check: {chk['cpu_s_event_loop']} s {loop_label} + {chk['cpu_s_hash_workers']} s hashing "
              f"workers ({1000 * (chk['cpu_s_event_loop'] + chk['cpu_s_hash_workers']) / max(1, chk['requests']):.1f} ms "
              "per request)", flush=True)
        fp_ms = fingerprint_cpu_ms([u.data for u, _ in pool], Settings(**values))
        chk["fingerprint_cpu_ms"] = round(fp_ms, 3)
        chk["service_cpu_per_fingerprint"] = round(
            1000 * (chk["cpu_s_event_loop"] + chk["cpu_s_hash_workers"]) / max(1, chk["requests"]) / fp_ms, 2)
        print(f"fingerprint of these images in this process (same run): {fp_ms:.2f} ms CPU each; service CPU per "
              f"request / fingerprint = {chk['service_cpu_per_fingerprint']}x", flush=True)
        for example in reg["examples"] + chk["examples"]:
            print(f"  ! {example}")
        result.update({"index": args.index, "mode": "in-process" if args.in_process else "subprocess",
                       "concurrency": args.concurrency, "cores": os.cpu_count(), "mean_kb": round(size_kb, 1),
                       "hash_workers": args.hash_workers, "register": reg, "check": chk,
                       "ok": reg["wrong"] == 0 and chk["wrong"] == 0
                       and all(p["wrong"] == 0 for p in result.get("open_loop", {}).values())})
    finally:
        if service is not None:
            await service.stop()
        if process is not None:
            result["service_exit_code"] = stop_process(process, 30)
            if result.get("ok") and result["service_exit_code"] == 0:
                os.unlink(log_path)
            else:
                print(f"service log: {log_path}", file=sys.stderr)
        await clean_up_redis(args, prefix)
        key_folder.cleanup()
    return result


async def open_loop_phases(
    session: Any, base: str, pool: list[tuple[Upload, str | None]], args: argparse.Namespace, pid: int
) -> dict[str, dict[str, Any]]:
    """The saturation rate (closed loop at --saturation-clients: requests/s when a request
    is always waiting), with --rate-of-saturation the one-client latency, then the open
    loop at --rate or at that share of the saturation rate."""
    phases: dict[str, dict[str, Any]] = {}

    async def measured(name: str, run: Any) -> dict[str, Any]:
        cpu0 = tree_cpu(pid)
        phase: dict[str, Any] = await run
        cpu1 = tree_cpu(pid)
        phase["cpu_ms_per_request"] = round(
            1000 * (cpu1["main"] - cpu0["main"] + cpu1["children"] - cpu0["children"]) / max(1, phase["requests"]), 2)
        phases[name] = phase
        return phase

    sat = await measured("saturation", check_load(session, base, pool, args.saturation_clients, args.seconds, args.seed))
    print(f"saturation: {sat['requests_per_s']} requests/s at {args.saturation_clients} clients (closed loop), "
          f"{fmt_lat(sat['latency'])}, {sat['cpu_ms_per_request']} ms service CPU per request", flush=True)
    one = None
    rate = args.rate
    if args.rate_of_saturation:
        one = await measured("one_client", check_load(session, base, pool, 1, args.seconds, args.seed + 1))
        print(f"one client: {one['requests_per_s']} requests/s, {fmt_lat(one['latency'])}, "
              f"{one['cpu_ms_per_request']} ms service CPU per request", flush=True)
        rate = args.rate_of_saturation * sat["requests_per_s"]
    opened = await measured("open_loop", open_loop(session, base, pool, rate, args.seconds, args.seed + 2))
    lat = opened["latency"]
    print(f"open loop at {opened['rate']} requests/s ({100 * rate / sat['requests_per_s']:.0f} % of saturation): "
          f"{opened['requests']} answered, {opened['dropped']} dropped, p50 {lat.get('p50_ms', 0):.2f} ms  "
          f"p90 {lat.get('p90_ms', 0):.2f} ms  p99 {lat.get('p99_ms', 0):.2f} ms  max {lat.get('max_ms', 0):.2f} ms; "
          f"{opened['cpu_ms_per_request']} ms service CPU per request", flush=True)
    if one is not None and one["latency"].get("n") and lat.get("n"):
        opened["p99_vs_one_client_p99"] = round(lat["p99_ms"] / one["latency"]["p99_ms"], 2)
        print(f"open-loop p99 / one-client p99 = {opened['p99_vs_one_client_p99']}x", flush=True)
    return phases


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--concurrency", type=int, default=50, help="concurrent keep-alive clients")
    parser.add_argument("--seconds", type=float, default=30.0, help="duration of the /check load")
    parser.add_argument("--images", type=int, default=400, help="uploads generated (originals + planted copies)")
    parser.add_argument("--registered-fraction", type=float, default=0.8,
                        help="share of the photo families whose original is registered first")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="also run /check open loop at this many requests/s (after measuring the saturation rate)")
    parser.add_argument("--rate-of-saturation", type=float, default=0.0,
                        help="also run /check open loop at this share of the measured saturation rate (0.5: half), "
                             "and report its p99 against the one-client p99")
    parser.add_argument("--saturation-clients", type=int, default=8,
                        help="closed-loop clients that measure the saturation rate")
    parser.add_argument("--in-process", action="store_true", help="run the Service in this process's event loop")
    add_service_arguments(parser)
    add_workload_arguments(parser)
    parser.add_argument("--seed", type=int, default=3)


def main(args: argparse.Namespace) -> int:
    result = asyncio.run(run(args))
    print_json_line(result)
    if not result.get("ok"):
        print("imgdedup bench http: some answers were wrong", file=sys.stderr)
        return 1
    return 0 if result.get("service_exit_code", 0) == 0 else 1
