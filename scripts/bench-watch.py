#!/usr/bin/env python3
"""Why the Redis index does not WATCH every probed bucket: time WATCH of N keys.

Redis 7.0's watchForKey() scans the client's list of already-watched keys for each new
key, so WATCH k1..kN costs O(N^2) server time, during which Redis serves nobody. The
sizes timed bracket the buckets a radius-12 query probes at m=4
(`imgdedup.index.mih.probe_count(12, 4)`). Prints one line per N and a JSON line.

    python scripts/bench-watch.py [redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import json
import sys
import time

import redis


def main() -> None:
    client = redis.Redis.from_url(sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379/0")
    version = client.info("server")["redis_version"]
    figures = {}
    for n in (100, 300, 1100, 3000):
        keys = [f"imgdedup-bench-watch:{{ns}}:b0:{i:x}" for i in range(n)]
        best = float("inf")
        for _ in range(3):
            with client.pipeline() as pipe:
                started = time.perf_counter()
                pipe.watch(*keys)
                elapsed = time.perf_counter() - started
                pipe.unwatch()
            best = min(best, elapsed)
        figures[n] = round(best * 1000, 3)
        print(f"WATCH {n:>5} keys: {best * 1000:8.3f} ms  (Redis {version})")
    print(json.dumps({"bench": "watch", "redis_version": version, "watch_ms_by_keys": figures}))


if __name__ == "__main__":
    main()
