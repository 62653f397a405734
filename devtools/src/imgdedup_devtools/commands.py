"""The `imgdedup bench` and `imgdedup demo` sub-commands, plugged into the runtime CLI
through the `imgdedup.commands` entry-point group."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys

from imgdedup.config import ConfigError

#: `imgdedup bench NAME ...` imports `imgdedup_devtools.bench.NAME`, which provides
#: `add_arguments(parser)` and `main(args) -> int`. Each prints figures and ends with one
#: JSON line.
BENCHMARKS = ("hashing", "index", "footprint", "pipeline", "http", "accuracy", "scan", "fuzz", "soak")


def add_bench(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = sub.add_parser("bench", help="benchmarks; each ends with one JSON line of figures")
    names = bench.add_subparsers(dest="which", required=True)
    for name in BENCHMARKS:
        module = importlib.import_module(f"imgdedup_devtools.bench.{name}")
        parser = names.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        module.add_arguments(parser)
        parser.set_defaults(func=module.main)


def add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser("demo", help="start a local broker and the service, publish sample uploads, print decisions")
    demo.add_argument("--no-serve", action="store_true", help="exit after printing the decisions")
    demo.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    try:
        return asyncio.run(run_demo(keep_serving=not args.no_serve))
    except ConfigError as exc:
        print(f"imgdedup: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
