"""Throw-away API keys for the demo and the benchmarks, which start the service with
authentication on (as deployed) and call it with a key made here."""

from __future__ import annotations

import json
from pathlib import Path

from imgdedup.auth import new_key


def throwaway_key(folder: Path, name: str = "devtools", namespaces: tuple[str, ...] = ("*",)) -> tuple[str, Path]:
    """A new admin key for `namespaces`, alone in `folder`/api-keys.json: (token, path).
    The caller removes the folder when done."""
    token, entry = new_key(name, list(namespaces), ["admin"], comment="throw-away key made by imgdedup-devtools")
    path = folder / "api-keys.json"
    path.write_text(json.dumps({"keys": [entry]}, indent=2) + "\n")
    return token, path
