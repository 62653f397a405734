"""API keys: the keys file (`IMGDEDUP_API_KEYS_FILE`), new keys, and token lookup.

The file is JSON and holds no secret, only SHA-256 digests of the tokens:

    {"keys": [
      {"name": "shop-frontend",
       "sha256": "<64 hex digits: SHA-256 of the token>",
       "namespaces": ["shop", "shop-*"],
       "roles": ["register"],
       "comment": "optional free text", "created_at": "optional, set by `keys new`"}
    ]}

A token is `imgdedup_` followed by 43 URL-safe characters (32 random bytes). It is shown
once, by `imgdedup keys new`, and never stored.

Why SHA-256 and not bcrypt/scrypt/argon2: those slow hashes exist to make guessing a
*low-entropy* password from a leaked hash expensive. A token here carries 256 random
bits, so guessing it from its digest is infeasible even at billions of SHA-256 per
second, while a slow hash would cost tens of milliseconds of CPU on every request and
rule out finding the key by its digest in one dictionary lookup.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from imgdedup.auth.policy import ROLE_NAMES, NamespacePattern, Principal, Role
from imgdedup.config import ConfigError

TOKEN_PREFIX = "imgdedup_"
#: Longer bearer values are refused before hashing (a token is 52 characters).
MAX_TOKEN_LENGTH = 512
KEY_NAME_RE = re.compile(r"[A-Za-z0-9_.:@-]{1,64}")
_DIGEST_RE = re.compile(r"[0-9a-f]{64}")
_REQUIRED = ("name", "sha256", "namespaces", "roles")
_OPTIONAL = ("comment", "created_at")


class KeysFileError(ConfigError):
    """The keys file cannot be used; `problems` lists every reason, one per line."""


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True, slots=True)
class ApiKey:
    digest: bytes
    principal: Principal


class KeyStore:
    """The keys of one keys file, found by the digest of the presented token."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self._by_digest = {key.digest: key for key in keys}

    def __len__(self) -> int:
        return len(self._by_digest)

    def lookup(self, token: str) -> Principal | None:
        if not token.startswith(TOKEN_PREFIX) or len(token) > MAX_TOKEN_LENGTH:
            return None
        digest = token_digest(token)
        # The dictionary is keyed by the SHA-256 of the *presented* token, which a caller
        # cannot steer towards a stored digest (that would need a pre-image), so the
        # lookup's timing tells nothing about the stored keys. The constant-time compare
        # keeps that property should the lookup ever change.
        key = self._by_digest.get(digest)
        if key is None or not hmac.compare_digest(key.digest, digest):
            return None
        return key.principal


def entry_problems(entry: Any, where: str) -> list[str]:
    """Every problem of one keys-file entry, each prefixed with `where`."""
    if not isinstance(entry, dict):
        return [f"{where}: must be an object with {', '.join(_REQUIRED)}"]
    problems: list[str] = []
    unknown = sorted(set(entry) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        problems.append(f"{where}: unknown field(s) {', '.join(map(repr, unknown))} (typo?)")
    for field in _REQUIRED:
        if field not in entry:
            problems.append(f"{where}: missing {field!r}")
    key_name = entry.get("name")
    if "name" in entry and not (isinstance(key_name, str) and KEY_NAME_RE.fullmatch(key_name)):
        problems.append(f"{where}: name {key_name!r} must be 1-64 of A-Z a-z 0-9 _ . : @ -")
    digest = entry.get("sha256")
    if "sha256" in entry and not (isinstance(digest, str) and _DIGEST_RE.fullmatch(digest)):
        problems.append(
            f"{where}: sha256 must be 64 lowercase hex digits (the SHA-256 of the token, as "
            "`imgdedup keys new` prints it), never the token itself"
        )
    problems += _list_problems(where, entry, "namespaces", "namespaces must be a non-empty list", _namespace_problem)
    problems += _list_problems(
        where, entry, "roles", f"roles must be a non-empty list of {', '.join(ROLE_NAMES)}", _role_problem
    )
    for field in _OPTIONAL:
        if field in entry and not isinstance(entry[field], str):
            problems.append(f"{where}: {field} must be a string")
    return problems


def _list_problems(
    where: str, entry: dict[str, Any], field: str, shape: str, item_problem: Callable[[Any], str | None]
) -> list[str]:
    """Problems of a list field: missing is reported elsewhere; not a non-empty list is
    `shape`; each item is checked by `item_problem` (None: fine)."""
    if field not in entry:
        return []
    items = entry[field]
    if not isinstance(items, list) or not items:
        return [f"{where}: {shape}"]
    return [f"{where}: {field}: {problem}" for item in items if (problem := item_problem(item)) is not None]


def _namespace_problem(text: Any) -> str | None:
    try:
        NamespacePattern.parse(text)
    except ValueError as exc:
        return str(exc)
    return None


def _role_problem(role: Any) -> str | None:
    return None if role in ROLE_NAMES else f"unknown role {role!r} (known: {', '.join(ROLE_NAMES)})"


def parse_keys(document: Any, source: str) -> KeyStore:
    """Validate a parsed keys document; raise `KeysFileError` listing every problem."""
    if not isinstance(document, dict) or set(document) != {"keys"} or not isinstance(document["keys"], list):
        raise KeysFileError([f"{source}: must be a JSON object with one field, \"keys\": a list of keys"])
    problems: list[str] = []
    keys: list[ApiKey] = []
    seen_names: dict[str, int] = {}
    seen_digests: dict[str, int] = {}
    if not document["keys"]:
        problems.append(f"{source}: defines no key (create one with `imgdedup keys new`)")
    for i, entry in enumerate(document["keys"]):
        where = f"{source}: keys[{i}]"
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            where += f" (name {entry['name']!r})"
        found = entry_problems(entry, where)
        problems.extend(found)
        if found:
            continue
        if entry["name"] in seen_names:
            problems.append(f"{where}: name already used by keys[{seen_names[entry['name']]}]")
        if entry["sha256"] in seen_digests:
            problems.append(f"{where}: same sha256 as keys[{seen_digests[entry['sha256']]}] (one token, two keys)")
        seen_names.setdefault(entry["name"], i)
        seen_digests.setdefault(entry["sha256"], i)
        principal = Principal.of(
            f"key:{entry['name']}",
            (NamespacePattern.parse(text) for text in entry["namespaces"]),
            (Role(role) for role in entry["roles"]),
        )
        keys.append(ApiKey(bytes.fromhex(entry["sha256"]), principal))
    if problems:
        raise KeysFileError(problems)
    return KeyStore(keys)


def load_keys_file(path: str) -> KeyStore:
    """Read and validate the keys file; raise `KeysFileError` listing every problem."""
    source = f"IMGDEDUP_API_KEYS_FILE={path}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise KeysFileError([f"{source}: cannot read it ({reason})"]) from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KeysFileError([f"{source}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"]) from None
    return parse_keys(document, source)


def new_key(name: str, namespaces: list[str], roles: list[str], comment: str = "") -> tuple[str, dict[str, Any]]:
    """A fresh token and the keys-file entry for it; raise `KeysFileError` on bad input."""
    token = new_token()
    entry: dict[str, Any] = {
        "name": name,
        "sha256": token_digest(token).hex(),
        "namespaces": namespaces,
        "roles": roles,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }
    if comment:
        entry["comment"] = comment
    problems = entry_problems(entry, "new key")
    if problems:
        raise KeysFileError(problems)
    return token, entry


def add_to_keys_file(path: str, entry: dict[str, Any]) -> None:
    """Append `entry` to the keys file at `path` (created if absent), after validating
    the whole result; the file is replaced atomically. It holds digests only, so it is
    written world-readable: a container user other than the file's owner must read it."""
    target = Path(path)
    document: Any = {"keys": []}
    if target.exists():
        try:
            document = json.loads(target.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise KeysFileError([f"{path}: cannot read it as JSON ({exc})"]) from None
        if isinstance(document, dict) and isinstance(document.get("keys"), list):
            parse_keys(document, path)  # an existing broken file is reported, not extended
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise KeysFileError([f"{path}: must be a JSON object with one field, \"keys\": a list of keys"])
    document["keys"].append(entry)
    parse_keys(document, path)
    partial = target.with_name(f".{target.name}.partial")
    partial.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    partial.chmod(0o644)
    partial.replace(target)
