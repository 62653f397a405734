"""`imgdedup` command line: serve, demo, config, hash."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from .config import ConfigError, Settings


def _cmd_serve(args: argparse.Namespace) -> int:
    from . import logs
    from .app import StartupError, serve

    try:
        settings = Settings.from_env()
        missing = settings.file_problems()
        if missing:
            raise ConfigError(missing)
    except ConfigError as exc:
        print(f"imgdedup: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)
    try:
        asyncio.run(serve(settings))
    except StartupError as exc:
        print(f"imgdedup: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    try:
        return asyncio.run(run_demo(keep_serving=not args.no_serve))
    except ConfigError as exc:
        print(f"imgdedup: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _cmd_config(args: argparse.Namespace) -> int:
    if args.check:
        try:
            settings = Settings.from_env()
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 2
        print(json.dumps(settings.redacted(), indent=2))
        return 0
    print("| variable | default | meaning |\n|---|---|---|")
    for name, default, doc in Settings.documentation():
        shown = default if default == "(empty)" else f"`{default}`"
        print(f"| `{name}` | {shown} | {doc} |")
    return 0


def _cmd_hash(args: argparse.Namespace) -> int:
    from .errors import InputError
    from .hashing import code_hex, fingerprint

    settings = Settings.from_env()
    limits = settings.image_limits
    status = 0
    for path in args.files:
        try:
            fp = fingerprint(Path(path).read_bytes(), limits)
            print(json.dumps({"file": path, "sha256": fp.sha256_hex, "phashes": [code_hex(c) for c in fp.codes],
                              "width": fp.width, "height": fp.height, "format": fp.format}))
        except (InputError, OSError) as exc:
            print(json.dumps({"file": path, "error": getattr(exc, "code", "io_error"), "detail": str(exc)}))
            status = 1
    return status


#: Benchmarks: `imgdedup bench NAME ...` imports `service.bench.NAME`, which provides
#: `add_arguments(parser)` and `main(args) -> int`. Each prints figures and ends with one
#: JSON line.
BENCHMARKS = ("hashing", "index", "pipeline", "http", "accuracy")


def _add_bench(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    import importlib

    bench = sub.add_parser("bench", help="benchmarks; each ends with one JSON line of figures")
    names = bench.add_subparsers(dest="which", required=True)
    for name in BENCHMARKS:
        try:
            module = importlib.import_module(f"service.bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"service.bench.{name}":
                raise
            continue
        parser = names.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        module.add_arguments(parser)
        parser.set_defaults(func=module.main)


def _add_scan(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    try:
        from .scan import cli as scan_cli
    except ModuleNotFoundError as exc:
        if exc.name not in ("service.scan", "service.scan.cli"):
            raise
        return
    scan = sub.add_parser("scan", help="audit an existing folder, URL list or S3 prefix for duplicates")
    scan_cli.add_arguments(scan)
    scan.set_defaults(func=scan_cli.main)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgdedup", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP API and, when IMGDEDUP_KAFKA_BOOTSTRAP is set, the consumer")
    serve.set_defaults(func=_cmd_serve)
    demo = sub.add_parser("demo", help="start a local broker and the service, publish sample uploads, print decisions")
    demo.add_argument("--no-serve", action="store_true", help="exit after printing the decisions")
    demo.set_defaults(func=_cmd_demo)
    config = sub.add_parser("config", help="list every setting with its default, or --check the environment")
    config.add_argument("--check", action="store_true")
    config.set_defaults(func=_cmd_config)
    hash_ = sub.add_parser("hash", help="print the fingerprint of image files")
    hash_.add_argument("files", nargs="+")
    hash_.set_defaults(func=_cmd_hash)
    _add_bench(sub)
    _add_scan(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
