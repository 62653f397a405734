"""API keys for tests: real tokens and keys files made with the service's own code.

Test apps and services run with authentication on, as in production; these helpers give
them a key rather than switching it off.
"""

from __future__ import annotations

import json
from pathlib import Path

from imgdedup.auth import Authenticator, KeyStore, new_key, parse_keys

#: A key that may do everything everywhere, for tests that are not about authorisation.
ADMIN = ("test-admin", ["*"], ["admin"])


def make_keys(*specs: tuple[str, list[str], list[str]]) -> tuple[dict[str, object], dict[str, str]]:
    """(keys-file document, name -> token) for (name, namespaces, roles) specs."""
    entries, tokens = [], {}
    for name, namespaces, roles in specs:
        token, entry = new_key(name, list(namespaces), list(roles))
        entries.append(entry)
        tokens[name] = token
    return {"keys": entries}, tokens


def write_keys_file(path: Path, *specs: tuple[str, list[str], list[str]]) -> dict[str, str]:
    """Write a keys file with the given keys (default: ADMIN); name -> token."""
    document, tokens = make_keys(*(specs or (ADMIN,)))
    path.write_text(json.dumps(document))
    return tokens


def key_store(*specs: tuple[str, list[str], list[str]]) -> tuple[KeyStore, dict[str, str]]:
    document, tokens = make_keys(*(specs or (ADMIN,)))
    return parse_keys(document, "test keys"), tokens


def admin_auth(rate: float = 0.0, burst: int = 1) -> tuple[Authenticator, dict[str, str]]:
    """An authenticator with the ADMIN key, and the Authorization header that uses it."""
    store, tokens = key_store(ADMIN)
    return Authenticator.with_keys(store, rate, burst), bearer(tokens[ADMIN[0]])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
