"""`imgdedup` command line: serve, config, keys, hash, scan, and plugged-in commands."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from importlib.metadata import entry_points
from pathlib import Path

from imgdedup.config import ConfigError, Settings


def _cmd_serve(args: argparse.Namespace) -> int:
    from imgdedup import logs
    from imgdedup.app import serve
    from imgdedup.auth import startup_problems
    from imgdedup.errors import StartupError

    try:
        settings = Settings.from_env_checked([Settings.file_problems, startup_problems])
    except ConfigError as exc:
        print(f"imgdedup: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)
    try:
        asyncio.run(serve(settings))
    except ConfigError as exc:  # the keys file changed between the check above and start-up
        print(f"imgdedup: {exc}", file=sys.stderr)
        return 2
    except StartupError as exc:
        print(f"imgdedup: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    if args.check:
        from imgdedup.auth import startup_problems

        try:
            settings = Settings.from_env_checked([startup_problems])
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
    from imgdedup.errors import InputError
    from imgdedup.fingerprint import code_hex, fingerprint

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


def _add_keys(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from imgdedup.auth import keys_cli

    keys = sub.add_parser("keys", help="create API keys for IMGDEDUP_API_KEYS_FILE")
    keys_cli.add_arguments(keys)


def _add_scan(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from .scan import cli as scan_cli

    scan = sub.add_parser("scan", help="audit an existing folder, URL list or S3 prefix for duplicates")
    scan_cli.add_arguments(scan)
    scan.set_defaults(func=scan_cli.main)


#: Commands other distributions plug in (imgdedup-devtools: `bench`, `demo`): each entry
#: point is a callable that adds its sub-parser to the one it is given.
PLUGIN_GROUP = "imgdedup.commands"


def _add_plugins(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for entry_point in sorted(entry_points(group=PLUGIN_GROUP), key=lambda ep: ep.name):
        entry_point.load()(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgdedup", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP API and, when IMGDEDUP_KAFKA_BOOTSTRAP is set, the consumer")
    serve.set_defaults(func=_cmd_serve)
    config = sub.add_parser("config", help="list every setting with its default, or --check the environment")
    config.add_argument("--check", action="store_true")
    config.set_defaults(func=_cmd_config)
    hash_ = sub.add_parser("hash", help="print the fingerprint of image files")
    hash_.add_argument("files", nargs="+")
    hash_.set_defaults(func=_cmd_hash)
    _add_keys(sub)
    _add_scan(sub)
    _add_plugins(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
