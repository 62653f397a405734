"""`imgdedup keys new`: make an API key; the token is printed once and never stored."""

from __future__ import annotations

import argparse
import json
import sys

from imgdedup.auth.keys import KeysFileError, add_to_keys_file, new_key
from imgdedup.auth.policy import ROLE_NAMES


def _list(values: list[str]) -> list[str]:
    """`--roles check register` and `--roles check,register` alike."""
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def _cmd_new(args: argparse.Namespace) -> int:
    try:
        token, entry = new_key(args.name, _list(args.namespaces), _list(args.roles), args.comment)
        if args.file:
            add_to_keys_file(args.file, entry)
    except KeysFileError as exc:
        print(f"imgdedup: {exc}", file=sys.stderr)
        return 2
    if args.file:
        print(token)
        print(
            f"added key {entry['name']!r} to {args.file}; the token above is shown only now. "
            "Restart the service to load it.",
            file=sys.stderr,
        )
    elif args.json:
        print(json.dumps({"token": token, "entry": entry}))
    else:
        print("token (shown only now; give it to the client, it cannot be recovered):")
        print(f"  {token}")
        print("\nentry to add to the \"keys\" list of IMGDEDUP_API_KEYS_FILE (then restart the service):")
        print(json.dumps(entry, indent=2))
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="keys_command", required=True)
    new = sub.add_parser("new", help="create an API key: print its token once, and its entry for the keys file")
    new.add_argument("--name", required=True, help="the key's name (logs, request limits): 1-64 of A-Z a-z 0-9 _ . : @ -")
    new.add_argument("--namespaces", nargs="+", required=True, metavar="PATTERN",
                     help="namespaces it may use: exact names or prefixes ending in '*' ('shop-*'; '*': all)")
    new.add_argument("--roles", nargs="+", required=True, metavar="ROLE",
                     help=f"roles: {', '.join(ROLE_NAMES)} (register and review include check; admin includes all)")
    new.add_argument("--comment", default="", help="free text stored with the entry")
    output = new.add_mutually_exclusive_group()
    output.add_argument("--file", help="append the entry to this keys file (created if absent) and print only the token")
    output.add_argument("--json", action="store_true", help="print {\"token\": ..., \"entry\": ...} as one JSON line")
    new.set_defaults(func=_cmd_new)
