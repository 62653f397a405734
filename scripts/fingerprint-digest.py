#!/usr/bin/env python3
"""Digest of the fingerprints of every file under a folder.

Checks that a change of the hashing code leaves fingerprints bit-identical: every
file under FOLDER (recursive, sorted by path; files whose own name starts with '.'
skipped) is fingerprinted with crop windows and rotations on, and OUT gets one JSON
line per file, [relative path, row]. A row is [sha256, codes, window codes, rotated
codes, thumbnail, width, height, format] (hex strings) or ["error", error code] for a
refused file. Prints the number of lines and the SHA-256 of all of them: run it before
and after a change and compare the printed line (or diff the two OUT files).

    python scripts/fingerprint-digest.py FOLDER OUT.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from imgdedup.errors import InputError
from imgdedup.fingerprint import Fingerprint, ImageLimits, code_hex, fingerprint

LIMITS = ImageLimits(max_bytes=25 * 1024 * 1024, max_pixels=50_000_000, crop_windows=True, rotations=True)


def row(fp: Fingerprint) -> list[object]:
    """A fingerprint as JSON-friendly values, every field that hashing computes."""
    return [
        fp.sha256.hex(),
        [code_hex(c) for c in fp.codes],
        [code_hex(c) for c in fp.window_codes],
        [code_hex(c) for c in fp.rotated_codes],
        fp.thumbnail.hex(),
        fp.width,
        fp.height,
        fp.format,
    ]


def digest(root: Path, out: Path) -> tuple[int, str]:
    """Write one line per file of `root` to `out`; (line count, SHA-256 of the lines)."""
    total, count = hashlib.sha256(), 0
    paths = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    with out.open("w") as fh:
        for path in paths:
            try:
                result = row(fingerprint(path.read_bytes(), LIMITS))
            except InputError as exc:
                result = ["error", exc.code]
            line = json.dumps([str(path.relative_to(root)), result])
            fh.write(line + "\n")
            total.update(line.encode())
            count += 1
    return count, total.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="folder of images (searched recursively)")
    parser.add_argument("out", type=Path, help="JSON-lines file to write, one line per file")
    args = parser.parse_args()
    count, sha = digest(args.folder, args.out)
    print(count, sha)


if __name__ == "__main__":
    main()
