"""Helpers shared by the benchmarks: percentiles, Redis key clean-up, process CPU time,
child processes. Not a benchmark itself (`imgdedup bench` lists only `commands.BENCHMARKS`)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np
import redis.asyncio as aioredis

from imgdedup.index.redis.keys import delete_prefix as delete_keys

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def bench_prefix(kind: str) -> str:
    """A Redis key prefix no other run uses: `imgdedup-bench-<kind>-<uuid>`."""
    return f"imgdedup-bench-{kind}-{uuid.uuid4().hex[:12]}"


def pct(values: Sequence[float] | np.ndarray, q: float) -> float:
    """Percentile (linear interpolation); NaN for no values."""
    if len(values) == 0:
        return float("nan")
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def latency_summary(seconds: Sequence[float] | np.ndarray) -> dict[str, float]:
    """p50/p90/p99/max/mean in milliseconds."""
    arr = np.asarray(seconds, dtype=np.float64) * 1000.0
    if len(arr) == 0:
        return {"n": 0}
    return {
        "n": len(arr),
        "p50_ms": round(float(np.percentile(arr, 50)), 3),
        "p90_ms": round(float(np.percentile(arr, 90)), 3),
        "p99_ms": round(float(np.percentile(arr, 99)), 3),
        "max_ms": round(float(arr.max()), 3),
        "mean_ms": round(float(arr.mean()), 3),
    }


def fmt_lat(summary: dict[str, Any]) -> str:
    if not summary.get("n"):
        return "n/a"
    return f"p50 {summary['p50_ms']:8.3f} ms  p99 {summary['p99_ms']:8.3f} ms"


async def run_clients(client: Callable[[], Awaitable[None]], count: int) -> float:
    """Run `count` copies of the `client` coroutine side by side; their wall seconds."""
    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(count)))
    return time.perf_counter() - started


def print_json_line(line: dict[str, Any]) -> None:
    """The one machine-readable line every benchmark ends with."""
    print(json.dumps(line, separators=(",", ":"), default=_json_default), flush=True)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# --- Redis ----------------------------------------------------------------------------
async def delete_prefix(url: str, prefix: str) -> int:
    """Delete every key under `prefix:` with a connection of its own (for `finally`
    blocks); returns how many."""
    client = aioredis.Redis.from_url(url)
    try:
        return await delete_keys(client, prefix, batch=2000)
    finally:
        await client.aclose()


def redis_used_memory(client: Any) -> int:
    return int(client.info("memory")["used_memory"])


def redis_cpu_seconds(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


# --- processes ------------------------------------------------------------------------
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, utime+stime seconds) of a live process, from /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (hashing workers, the forkserver...)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_stat(int(entry))
            if stat is not None:
                parents.setdefault(stat[0], []).append(int(entry))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def cpu_seconds(pid: int) -> float:
    stat = _proc_stat(pid)
    return stat[1] if stat else 0.0


def tree_cpu(pid: int) -> dict[str, float]:
    """CPU seconds so far of a process and, separately, of all its live descendants."""
    return {"main": cpu_seconds(pid), "children": sum(cpu_seconds(p) for p in descendants(pid))}


def stop_process(process: subprocess.Popen[Any], timeout: float = 30.0) -> int | None:
    """SIGTERM, wait, then SIGKILL: only the process we started, by its pid."""
    if process.poll() is not None:
        return process.returncode
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(10)


def wait_http(url: str, timeout: float = 60.0, process: subprocess.Popen[Any] | None = None) -> None:
    """Poll a URL until it answers 200 (service start-up)."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"service exited with {process.returncode} during start-up")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout} s: {last!r}")


def service_env(values: dict[str, Any]) -> dict[str, str]:
    """The current environment without any IMGDEDUP_* variable, plus `values` as
    IMGDEDUP_<NAME> (as tests/test_kafka_pipeline.py does for its replicas)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGDEDUP_")}
    env.update({f"IMGDEDUP_{k.upper()}": str(v) for k, v in values.items()})
    return env


def extra_env(pairs: list[str]) -> dict[str, str]:
    """`--env NAME=VALUE` options -> {name: value} (lower-case setting names, the
    IMGDEDUP_ prefix optional), for `service_env`."""
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--env {pair!r}: expected NAME=VALUE")
        out[name.strip().lower().removeprefix("imgdedup_")] = value
    return out


def extra_settings(pairs: list[str]) -> dict[str, Any]:
    """The same options as typed Settings fields (for an in-process Service)."""
    import dataclasses

    from imgdedup.config import Settings

    fields = {f.name: f for f in dataclasses.fields(Settings)}
    out: dict[str, Any] = {}
    for name, raw in extra_env(pairs).items():
        if name not in fields:
            raise SystemExit(f"--env {name}: not a setting of this version ({', '.join(sorted(fields))})")
        default = fields[name].default
        if isinstance(default, bool):
            out[name] = raw.strip().lower() in ("1", "true", "yes", "on")
        elif isinstance(default, int):
            out[name] = int(raw)
        elif isinstance(default, float):
            out[name] = float(raw)
        else:
            out[name] = raw
    return out


def spawn_serve(values: dict[str, Any], log_path: Any) -> subprocess.Popen[bytes]:
    """`imgdedup serve` (as `python -m imgdedup serve`) with IMGDEDUP_* from `values`,
    output to `log_path`."""
    import sys

    with open(log_path, "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "imgdedup", "serve"], env=service_env(values),
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def parse_int_list(text: str) -> list[int]:
    return [int(float(part)) for part in text.split(",") if part.strip()]


def fingerprint_cpu_ms(images: Sequence[bytes], settings: Any, sample: int = 300) -> float:
    """Mean CPU ms of one `fingerprint()` of these images in this process (one core),
    with the service's limits from `settings`: the hashing the service exists to do, the
    yardstick for its CPU per event or request (taken in the same run). Up to `sample`
    images, each hashed twice (the first pass warms caches and lazy imports)."""
    from imgdedup.fingerprint import fingerprint

    limits = settings.image_limits
    chosen = list(images[:sample])
    for data in chosen[:3]:
        fingerprint(data, limits)
    started = time.process_time()
    for data in chosen:
        fingerprint(data, limits)
    return 1000 * (time.process_time() - started) / max(1, len(chosen))
