"""Options of the benchmarks that run the service (`imgdedup bench http`, `imgdedup bench
pipeline`): which index it uses and how it hashes; the settings they give it; the
Redis clean-up afterwards."""

from __future__ import annotations

import argparse
from typing import Any

from imgdedup_devtools.bench.common import DEFAULT_REDIS_URL, delete_prefix


def add_service_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", choices=("redis", "memory"), default="redis")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument("--substrings", type=int, default=0, help="IMGDEDUP_MIH_SUBSTRINGS (0: the service default)")
    parser.add_argument("--hash-workers", type=int, default=0,
                        help="IMGDEDUP_HASH_WORKERS of each service process (0: one per core)")
    parser.add_argument("--max-in-flight", type=int, default=64, help="IMGDEDUP_MAX_IN_FLIGHT of each service process")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra service setting, e.g. --env crop_windows=false (IMGDEDUP_ prefix optional)")


def service_values(args: argparse.Namespace, prefix: str, shutdown_timeout_s: float) -> dict[str, Any]:
    """Settings fields from the options above: Redis keys under `prefix`, quiet JSON logs."""
    values: dict[str, Any] = {
        "redis_url": args.redis_url if args.index == "redis" else "",
        "redis_prefix": prefix,
        "hash_workers": args.hash_workers,
        "max_in_flight": args.max_in_flight,
        "log_level": "WARNING",
        "log_format": "json",
        "shutdown_timeout_s": shutdown_timeout_s,
    }
    if args.substrings:
        values["mih_substrings"] = args.substrings
    return values


async def clean_up_redis(args: argparse.Namespace, prefix: str) -> None:
    """Delete every key the run wrote under `prefix` (Redis index only)."""
    if args.index == "redis":
        deleted = await delete_prefix(args.redis_url, prefix)
        print(f"cleaned up: {deleted} Redis keys under {prefix}", flush=True)
