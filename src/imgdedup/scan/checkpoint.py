"""The scan's checkpoint: one SQLite file (WAL journal, committed in small batches) with a
row per hashed or failed item, keyed by the item key and holding its size and version
when read, so a resumed scan re-hashes only the changed items.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgdedup.fingerprint import HASH_ALGORITHM, Fingerprint, ImageLimits

FORMAT = 1


class CheckpointMismatch(Exception):
    """The checkpoint belongs to another source."""


# --- fingerprint codec ------------------------------------------------------------------


def _enc(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes):
        return {"$b": value.hex()}
    if isinstance(value, tuple):
        return {"$t": [_enc(v) for v in value]}
    if isinstance(value, list):
        return [_enc(v) for v in value]
    if isinstance(value, np.ndarray):
        return {"$nd": [value.dtype.str, list(value.shape), base64.b64encode(value.tobytes()).decode()]}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"$d": {k: _enc(v) for k, v in value.items()}}
    raise TypeError(f"cannot checkpoint a {type(value).__name__}")


def _dec(value: Any) -> Any:
    if isinstance(value, list):
        return [_dec(v) for v in value]
    if isinstance(value, dict):
        if "$b" in value:
            return bytes.fromhex(value["$b"])
        if "$t" in value:
            return tuple(_dec(v) for v in value["$t"])
        if "$nd" in value:
            dtype, shape, data = value["$nd"]
            return np.frombuffer(base64.b64decode(data), dtype=np.dtype(dtype)).reshape(shape).copy()
        if "$d" in value:
            return {k: _dec(v) for k, v in value["$d"].items()}
    return value


def encode_fingerprint(fp: Fingerprint) -> str:
    """Tagged JSON built from `dataclasses.fields`, so the checkpoint follows whatever
    fields `Fingerprint` has."""
    return json.dumps(
        {f.name: _enc(getattr(fp, f.name)) for f in dataclasses.fields(fp)}, separators=(",", ":")
    )


def decode_fingerprint(raw: str) -> Fingerprint:
    data = json.loads(raw)
    return Fingerprint(**{name: _dec(value) for name, value in data.items()})


def compatibility(limits: ImageLimits) -> dict[str, Any]:
    """What must not change for checkpointed fingerprints to stay comparable. When any of
    it changes (a new hashing version), the old rows are discarded and everything is
    hashed again rather than compared with incompatible codes."""
    return {
        "format": FORMAT,
        "hash_algorithm": HASH_ALGORITHM,
        "fingerprint_fields": [f.name for f in dataclasses.fields(Fingerprint)],
        "limits": dataclasses.asdict(limits),
    }


# --- rows -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    key: str
    size: int | None
    version: str
    modified: float | None
    physical: str | None
    ok: bool
    fingerprint: str | None  # encoded; None for errors
    error: str | None
    detail: str | None
    retryable: bool
    hashes: int  # times this key was hashed (over all runs; a changed file counts again)


def _key(key: str) -> bytes:
    # File names need not be valid UTF-8; keep their exact bytes (surrogateescape).
    return key.encode("utf-8", "surrogateescape")


def _unkey(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


class Checkpoint:
    """SQLite-backed checkpoint. Not thread-safe: the scan's parent owns it."""

    def __init__(self, path: Path, *, source: str, compat: dict[str, Any], fresh: bool = False) -> None:
        self.path = path
        self.discarded_reason: str | None = None
        if fresh and path.exists():
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS files (
                key BLOB PRIMARY KEY, size INTEGER, version TEXT NOT NULL, modified REAL, physical TEXT,
                ok INTEGER NOT NULL, fingerprint TEXT, error TEXT, detail TEXT, retryable INTEGER NOT NULL,
                hashes INTEGER NOT NULL DEFAULT 1, updated REAL NOT NULL
            );
            CREATE TABLE IF NOT EXISTS thumbs (sha TEXT NOT NULL, size INTEGER NOT NULL, jpeg BLOB,
                PRIMARY KEY (sha, size));
            """
        )
        meta = dict(self._db.execute("SELECT name, value FROM meta").fetchall())
        if "source" in meta and meta["source"] != source:
            self._db.close()
            raise CheckpointMismatch(
                f"{path} is the checkpoint of a scan of {meta['source']}, not {source}; "
                "use another --out folder, or --fresh to start over here"
            )
        wanted = json.dumps(compat, sort_keys=True)
        if "compat" in meta and meta["compat"] != wanted:
            self.discarded_reason = (
                "the hashing changed since this checkpoint was written "
                f"({json.loads(meta['compat']).get('hash_algorithm')} -> {compat['hash_algorithm']}); "
                "every image is hashed again"
            )
            self._db.execute("DELETE FROM files")
            self._db.execute("DELETE FROM thumbs")
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('source', ?)", (source,))
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('compat', ?)", (wanted,))
        self._pending = 0
        self._db.execute("BEGIN")

    def load(self) -> dict[str, Row]:
        rows = self._db.execute(
            "SELECT key, size, version, modified, physical, ok, fingerprint, error, detail, retryable, hashes "
            "FROM files"
        )
        return {
            _unkey(r[0]): Row(_unkey(r[0]), r[1], r[2], r[3], r[4], bool(r[5]), r[6], r[7], r[8], bool(r[9]), r[10])
            for r in rows
        }

    def put(self, row: Row) -> None:
        self._db.execute(
            "INSERT INTO files (key, size, version, modified, physical, ok, fingerprint, error, detail, retryable, "
            "hashes, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?) "
            "ON CONFLICT (key) DO UPDATE SET size=excluded.size, version=excluded.version, "
            "modified=excluded.modified, physical=excluded.physical, ok=excluded.ok, "
            "fingerprint=excluded.fingerprint, error=excluded.error, detail=excluded.detail, "
            "retryable=excluded.retryable, hashes=files.hashes + 1, updated=excluded.updated",
            (_key(row.key), row.size, row.version, row.modified, row.physical, int(row.ok), row.fingerprint,
             row.error, row.detail, int(row.retryable), time.time()),
        )
        self._pending += 1

    def thumbs(self, shas: Iterable[str], size: int) -> dict[str, bytes | None]:
        out: dict[str, bytes | None] = {}
        shas = list(shas)
        for start in range(0, len(shas), 500):
            batch = shas[start : start + 500]
            marks = ",".join("?" * len(batch))
            for sha, jpeg in self._db.execute(
                f"SELECT sha, jpeg FROM thumbs WHERE size = ? AND sha IN ({marks})", (size, *batch)
            ):
                out[sha] = jpeg
        return out

    def put_thumb(self, sha: str, size: int, jpeg: bytes | None) -> None:
        self._db.execute("INSERT OR REPLACE INTO thumbs VALUES (?, ?, ?)", (sha, size, jpeg))
        self._pending += 1

    @property
    def pending(self) -> int:
        return self._pending

    def commit(self) -> None:
        self._db.execute("COMMIT")
        self._pending = 0
        self._db.execute("BEGIN")

    def close(self) -> None:
        try:
            self._db.execute("COMMIT")
        finally:
            self._db.close()
