"""`imgdedup scan` on a folder of distinct pictures with planted copies, as part of
`imgdedup bench accuracy`: how many distinct originals end up in a duplicate cluster with
another original (on the deletion list), and how many planted copies are clustered with
their own original.

The folder holds N distinct corpus files (links to them) and one planted copy of each,
the kind cycling through `PLANTED` (a byte-identical copy and variants of the accuracy
benchmark). The scan runs end to end (`imgdedup.scan.scanner.scan`, default settings).
An original is *merged* when its file shares a cluster with another original or a copy
of another original; partners (the same pixels, the same picture: `lookalikes`) are
excused, and the `all counted` figure excuses nothing.
"""

from __future__ import annotations

import asyncio
import io
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgdedup_devtools.bench.lookalikes import counted_apart, pixel_thumbnail, same_pixels
from imgdedup_devtools.bench.variants import VARIANTS, save

#: The planted copies, cycled over the originals: "exact" is the file's bytes, the others
#: are `family/name` of `VARIANTS`.
PLANTED = ("exact", "reencode/jpeg-q40", "resize/half", "colour/brightness-1.25", "overlay/text-watermark",
           "overlay/border-white-5%", "crop/centre-15%", "crop/width-80%")
_VARIANTS = {f"{family}/{name}": (transform, fmt, options) for family, name, transform, fmt, options in VARIANTS}


@dataclass
class ScanMeasure:
    """What one scan of originals plus planted copies found."""

    originals: int = 0
    copies: int = 0
    #: originals whose file shares a cluster with another original (or its copy)
    merged: list[str] = field(default_factory=list)
    merged_all_counted: list[str] = field(default_factory=list)
    #: originals in a review group with another original (kept, a person is asked)
    in_review_with_other: int = 0
    #: per copy kind: (clustered with its own original, planted)
    found: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: examples of merged originals: (original, the other originals of its cluster)
    examples: list[tuple[str, list[str]]] = field(default_factory=list)
    seconds: float = 0.0

    def merged_share(self, *, all_counted: bool = False) -> float:
        return len(self.merged_all_counted if all_counted else self.merged) / max(self.originals, 1)

    def recall(self, kinds: tuple[str, ...] | None = None) -> float:
        chosen = [v for k, v in self.found.items() if kinds is None or k in kinds]
        return round(sum(f for f, _ in chosen) / max(sum(n for _, n in chosen), 1), 4)

    def as_dict(self) -> dict[str, Any]:
        return {"originals": self.originals, "copies": self.copies, "merged": len(self.merged),
                "merged_all_counted": len(self.merged_all_counted), "merged_share": round(self.merged_share(), 4),
                "in_review_with_other": self.in_review_with_other,
                "copy_recall": self.recall(), "found": {k: list(v) for k, v in self.found.items()},
                "seconds": self.seconds}


def count_scan(
    clusters: list[list[str]], review_groups: list[list[str]], originals: dict[str, str],
    copies: dict[str, tuple[str, str]], is_partner: Callable[[str, str], bool],
) -> ScanMeasure:
    """Count a scan's clusters. `clusters`/`review_groups`: member keys of each (a review
    group's anchor included); `originals`: key -> original name; `copies`: key ->
    (the original's name, copy kind)."""
    def source(key: str) -> str | None:
        return originals[key] if key in originals else copies[key][0] if key in copies else None

    out = ScanMeasure(originals=len(originals), copies=len(copies))
    cluster_of: dict[str, int] = {}
    for number, members in enumerate(clusters):
        names = {name for name in map(source, members) if name is not None}
        for key in members:
            cluster_of[key] = number
            if key not in originals:
                continue
            others = sorted(names - {originals[key]})
            if others:
                out.merged_all_counted.append(originals[key])
                if any(not is_partner(originals[key], other) for other in others):
                    out.merged.append(originals[key])
                    out.examples.append((originals[key], others))
    in_review: set[str] = set()
    for members in review_groups:
        names = {name for name in map(source, members) if name is not None}
        in_review |= {originals[k] for k in members if k in originals and names - {originals[k]}}
    out.in_review_with_other = len(in_review)
    key_of = {name: key for key, name in originals.items()}
    found: dict[str, list[int]] = {}
    for key, (name, kind) in copies.items():
        tally = found.setdefault(kind, [0, 0])
        tally[1] += 1
        own = key_of.get(name)
        if own is not None and key in cluster_of and cluster_of.get(own) == cluster_of[key]:
            tally[0] += 1
    out.found = {kind: (f, n) for kind, (f, n) in sorted(found.items())}
    out.merged.sort()
    out.merged_all_counted.sort()
    return out


def _plant(job: tuple[str, str]) -> tuple[bytes, str, np.ndarray | None]:
    """(the copy's bytes, its suffix, the original's pixel thumbnail); empty bytes when
    the file cannot be read."""
    from imgdedup_devtools.bench.accuracy import _load_rgb

    path, kind = job
    raw = Path(path).read_bytes()
    try:
        image = _load_rgb(raw)
    except Exception:  # an unreadable corpus file gets no copy
        return b"", "", None
    if kind == "exact":
        return raw, Path(path).suffix.lower(), pixel_thumbnail(image)
    transform, fmt, options = _VARIANTS[kind]
    data = save(transform(image), fmt, **options)
    return data, "." + ("jpg" if fmt == "JPEG" else str(fmt).lower()), pixel_thumbnail(image)


def plant_folder(files: list[Path], folder: Path, workers: int) -> tuple[dict[str, str], dict[str, tuple[str, str]],
                                                                         dict[str, np.ndarray]]:
    """Lay out `folder`: originals/ (links to `files`) and copies/ (one planted copy each).
    Returns (originals key -> name, copies key -> (name, kind), name -> pixel thumbnail)."""
    (folder / "originals").mkdir(parents=True)
    (folder / "copies").mkdir()
    jobs = [(str(path), PLANTED[i % len(PLANTED)]) for i, path in enumerate(files)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        planted = list(pool.map(_plant, jobs, chunksize=4))
    originals: dict[str, str] = {}
    copies: dict[str, tuple[str, str]] = {}
    pixels: dict[str, np.ndarray] = {}
    for (path_text, kind), (data, suffix, thumb) in zip(jobs, planted, strict=True):
        path = Path(path_text)
        if not data or thumb is None:
            continue
        key = f"originals/{path.name}"
        (folder / key).symlink_to(path.resolve())
        originals[key] = path.name
        pixels[path.name] = thumb
        copy_key = f"copies/{path.stem}--{kind.replace('/', '-')}{suffix}"
        (folder / copy_key).write_bytes(data)
        copies[copy_key] = (path.name, kind)
    return originals, copies, pixels


def measure_scan(files: list[Path], workers: int) -> ScanMeasure:
    """Plant one copy of each of `files`, scan the folder, count."""
    from imgdedup.scan.options import ScanOptions
    from imgdedup.scan.scanner import scan

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="imgdedup-scan-accuracy-") as work:
        folder = Path(work) / "estate"
        originals, copies, pixels = plant_folder(files, folder, workers)
        options = ScanOptions(source=str(folder), out=Path(work) / "report", workers=workers, fresh=True, tty=False,
                              progress_interval=60.0, max_thumbnails=50)
        result = asyncio.run(scan(options, stream=io.StringIO()))
    assert result.report is not None
    clusters = [[m["key"] for m in c["members"]] for c in result.report["clusters"]]
    review = [[g["anchor"], *(m["key"] for m in g["members"])] for g in result.report["review"]]

    def is_partner(a: str, b: str) -> bool:
        return counted_apart(a, b) or (a in pixels and b in pixels and bool(same_pixels(pixels[a], pixels[b][None])[0]))

    out = count_scan(clusters, review, originals, copies, is_partner)
    out.seconds = round(time.perf_counter() - started, 1)
    return out
