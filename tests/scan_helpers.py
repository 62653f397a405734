"""Helpers for the `imgdedup scan` tests: a small estate with planted duplicates, and
ways to run a scan and read its outputs."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import socket
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers import SAMPLES_DIR, sample_image
from imagegen import distinct_image
from PIL import Image

from imgdedup.config import Settings
from imgdedup.scan import ScanOptions, ScanResult, scan

#: An hour apart, so "oldest"/"newest" keeper rules have something to decide.
T0 = 1_600_000_000


def _encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def _jpeg(image: Image.Image, quality: int) -> bytes:
    return _encode(image, "JPEG", quality=quality)


@dataclass
class Estate:
    root: Path
    files: dict[str, bytes] = field(default_factory=dict)  # key -> bytes, every file written
    same_cluster: list[tuple[str, str]] = field(default_factory=list)  # (original, planted copy)
    exact: tuple[str, str] = ("", "")
    distinct: list[str] = field(default_factory=list)  # unrelated images: in no cluster
    unreadable: dict[str, str] = field(default_factory=dict)  # key -> error code
    skipped: list[str] = field(default_factory=list)

    def write(self, key: str, data: bytes, mtime: float) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, (mtime, mtime))
        self.files[key] = data

    @property
    def images(self) -> list[str]:
        return [k for k in self.files if k not in self.unreadable and k not in self.skipped]


def build_estate(root: Path) -> Estate:
    """Originals from the devtools samples, planted copies of them (exact, re-encoded, resized,
    other format), unrelated images, a corrupt file, a text file named .jpg, and a .txt.
    Originals are the oldest files."""
    estate = Estate(root)
    for i, sample in enumerate(sorted(SAMPLES_DIR.glob("*.jpg"))):
        estate.write(f"originals/{sample.name}", sample.read_bytes(), T0 + i)
    camera = (SAMPLES_DIR / "camera.jpg").read_bytes()
    estate.write("copies/camera-copy.jpg", camera, T0 + 3600)
    estate.exact = ("originals/camera.jpg", "copies/camera-copy.jpg")
    chelsea = sample_image("chelsea")
    estate.write("copies/chelsea-q40.jpg", _jpeg(chelsea, 40), T0 + 3601)
    coffee = sample_image("coffee")
    estate.write(
        "copies/coffee-half.png",
        _encode(coffee.resize((coffee.width // 2, coffee.height // 2), Image.Resampling.LANCZOS), "PNG"),
        T0 + 3602,
    )
    astronaut = sample_image("astronaut")
    estate.write(
        "copies/deeper/astronaut-small.jpg",
        _jpeg(astronaut.resize((int(astronaut.width * 0.6), int(astronaut.height * 0.6)), Image.Resampling.LANCZOS), 80),
        T0 + 3603,
    )
    estate.write("copies/rocket.webp", _encode(sample_image("rocket"), "WEBP", quality=75), T0 + 3604)
    estate.same_cluster = [
        estate.exact,
        ("originals/chelsea.jpg", "copies/chelsea-q40.jpg"),
        ("originals/coffee.jpg", "copies/coffee-half.png"),
        ("originals/astronaut.jpg", "copies/deeper/astronaut-small.jpg"),
        ("originals/rocket.jpg", "copies/rocket.webp"),
    ]
    for seed in range(3):
        key = f"other/distinct-{seed}.jpg"
        estate.write(key, _jpeg(distinct_image(7000 + seed), 90), T0 + 7200 + seed)
        estate.distinct.append(key)
    estate.write("broken/truncated.jpg", camera[:400], T0 + 9000)
    estate.unreadable["broken/truncated.jpg"] = "undecodable_image"
    estate.write("broken/notes.jpg", b"these are notes, not pixels\n" * 20, T0 + 9001)
    estate.unreadable["broken/notes.jpg"] = "undecodable_image"
    estate.write("notes.txt", b"not an image at all\n", T0 + 9002)
    estate.skipped.append("notes.txt")
    return estate


def many_images(root: Path, count: int, *, seed0: int = 100) -> list[str]:
    """`count` small unrelated JPEGs plus an exact copy of every fifth one."""
    keys = []
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        data = _jpeg(distinct_image(seed0 + i, (160, 120)), 85)
        (root / f"img-{i:04d}.jpg").write_bytes(data)
        keys.append(f"img-{i:04d}.jpg")
        if i % 5 == 0:
            (root / f"img-{i:04d}-copy.jpg").write_bytes(data)
            keys.append(f"img-{i:04d}-copy.jpg")
    return sorted(keys)


def scan_settings(**overrides: Any) -> Settings:
    """Service settings with no environment influence (IMGDEDUP_* of the caller ignored)."""
    return Settings.from_env({}, **overrides)


def options(source: Path | str, out: Path, **kw: Any) -> ScanOptions:
    kw.setdefault("workers", 2)
    kw.setdefault("tty", False)
    kw.setdefault("settings", scan_settings())
    return ScanOptions(source=str(source), out=out, **kw)


def run(source: Path | str, out: Path, *, register_index: Any = None, **kw: Any) -> ScanResult:
    stream = io.StringIO()
    result = asyncio.run(scan(options(source, out, **kw), stream=stream, register_index=register_index))
    result.log = stream.getvalue()  # type: ignore[attr-defined]
    return result


def cluster_of(report: dict[str, Any]) -> dict[str, int]:
    """key -> cluster id, for every image in a duplicate cluster."""
    return {m["key"]: c["id"] for c in report["clusters"] for m in c["members"]}


def groups(report: dict[str, Any], strip: str = "") -> set[frozenset[str]]:
    """Clusters as sets of keys (optionally with a prefix removed), order-free."""
    return {frozenset(m["key"].removeprefix(strip) for m in c["members"]) for c in report["clusters"]}


def comparable(report: dict[str, Any]) -> dict[str, Any]:
    """A report without what legitimately differs between two runs over the same files."""
    return {k: v for k, v in report.items() if k not in ("generated_at", "stats", "register")}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def checkpoint_rows(out: Path) -> list[tuple[str, int, int]]:
    """(key, ok, hashes) of every checkpoint row, read-only."""
    db = sqlite3.connect(f"file:{out / 'checkpoint.sqlite'}?mode=ro", uri=True, timeout=5)
    try:
        return [(k.decode(), ok, n) for k, ok, n in db.execute("SELECT key, ok, hashes FROM files")]
    finally:
        db.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
