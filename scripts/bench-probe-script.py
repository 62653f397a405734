#!/usr/bin/env python3
"""Why probe keys are expanded by the client and read with MGET, not by a Lua script.

Expanding a radius-12 query's probe keys inside Redis would spare the client building
and parsing them, but every key then costs a string.format and a redis.call in Lua,
all while Redis serves nobody else. This loads N uniform codes into the service's
bucket layout, then times the same queries both ways and reads the server time per call
from INFO commandstats. Prints one line per m and a JSON line; removes its keys.

    python scripts/bench-probe-script.py [redis://127.0.0.1:6379/0] [N]
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid

import numpy as np
import redis
import redis.asyncio as aioredis
from imgdedup_devtools.bench.bulkload import key_base, load_buckets, write_meta
from imgdedup_devtools.bench.common import delete_prefix

from imgdedup.index.mih import nearest_per_seq, probe_radii, split_code, substring_widths, unpack_records
from imgdedup.index.redis.index import RedisMihIndex

RADIUS = 12

# ARGV: bucket key prefix, m, per substring (width, probe radius), then m substring values.
PROBE_SCRIPT = """
local prefix, m = ARGV[1], tonumber(ARGV[2])
local parts = {}
local function expand(j, value, width, from, mask, left)
  local blob = redis.call('GET', string.format('%s%d:%x', prefix, j, bit.bxor(value, mask)))
  if blob then parts[#parts + 1] = blob end
  if left == 0 then return end
  for b = from, width - 1 do
    expand(j, value, width, b + 1, bit.bor(mask, bit.lshift(1, b)), left - 1)
  end
end
for j = 0, m - 1 do
  local radius = tonumber(ARGV[4 + 2 * j])
  if radius >= 0 then expand(j, tonumber(ARGV[3 + 2 * m + j]), tonumber(ARGV[3 + 2 * j]), 0, 0, radius) end
end
return table.concat(parts)
"""


async def compare(url: str, prefix: str, codes: np.ndarray, m: int, queries: list[int]) -> dict[str, float]:
    client = aioredis.Redis.from_url(url)
    index = RedisMihIndex(client, prefix=prefix, substrings=m)
    script = client.register_script(PROBE_SCRIPT)
    namespace = f"m{m}"
    base = key_base(prefix, namespace)
    out: dict[str, float] = {}
    try:
        for mode in ("mget", "lua"):
            await client.config_resetstat()
            started = time.perf_counter()
            for query in queries:
                if mode == "mget":
                    keys = index.keys.probe_keys(namespace, (query,), RADIUS, m)
                    blob = b"".join(b for b in await client.mget(keys) if b)
                else:
                    args: list[object] = [base + "b", m]
                    for width, radius in zip(substring_widths(m), probe_radii(RADIUS, m)):
                        args += [width, radius]
                    blob = await script(keys=[base + "meta"], args=[*args, *split_code(query, m)])
                nearest_per_seq(unpack_records(blob), (query,), RADIUS)
            out[f"{mode}_query_ms"] = round((time.perf_counter() - started) / len(queries) * 1000, 3)
            stats = await client.info("commandstats")
            out[f"{mode}_server_us"] = stats["cmdstat_mget" if mode == "mget" else "cmdstat_evalsha"]["usec_per_call"]
    finally:
        await client.aclose()
    return out


def main() -> None:
    url = sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379/0"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
    sync = redis.Redis.from_url(url)
    prefix = f"imgdedup-bench-probe-{uuid.uuid4().hex[:8]}"
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    queries = [int(c) for c in codes[:200]]
    figures: dict[int, dict[str, float]] = {}
    try:
        for m in (4, 5):
            write_meta(sync, prefix, f"m{m}", m, n)
            load_buckets(sync, prefix, f"m{m}", codes, m)
            figures[m] = asyncio.run(compare(url, prefix, codes, m, queries))
            f = figures[m]
            print(f"N={n:,} m={m} r={RADIUS}: client MGET {f['mget_query_ms']:.2f} ms/query "
                  f"(server {f['mget_server_us']:.0f} us)  Lua expansion {f['lua_query_ms']:.2f} ms/query "
                  f"(server {f['lua_server_us']:.0f} us)")
    finally:
        asyncio.run(delete_prefix(url, prefix))
    version = sync.info("server")["redis_version"]
    print(json.dumps({"bench": "probe-script", "redis_version": version, "n": n, "radius": RADIUS, "by_m": figures}))


if __name__ == "__main__":
    main()
