"""`imgdedup bench scan [FOLDER]`: the rate of `imgdedup scan` end to end against ImageHash in a loop.

For each folder (the one given, e.g. the benchmark corpus of ../shared/bench/build-corpus,
and a folder of generated 1280x960 JPEGs) it measures, on the same files:

- `imgdedup scan` end to end (listing, hashing on all cores, clustering, thumbnails,
  reports) from an empty checkpoint, in files per second;
- `imgdedup.fingerprint` alone in one process: times the worker count, the
  ceiling any parallel scan can reach with this hashing;
- ImageHash.phash in a loop in one process (open, phash), as a user would write it.

Prints one line per folder and ends with one JSON line of figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from imgdedup.config import Settings
from imgdedup.fingerprint import fingerprint
from imgdedup.scan.scanner import ScanOptions, scan
from imgdedup.scan.sources import list_folder

DEFAULT_COUNT = 5000  # enough that starting the worker pool is noise
DEFAULT_BASELINE_S = 300.0
CEILING_SAMPLE_S = 20.0


#: Generated files come in groups of DUPLICATE_EVERY: distinct photos, then a copy of the
#: group's first one (cycling through these kinds), so the folder holds duplicates as an
#: estate does.
DUPLICATE_EVERY = 5
COPY_KINDS = ("q50", "small", "bright", "copy")


def _make_jpeg(args: tuple[str, int]) -> None:
    from imgdedup_devtools.bench.images import encode
    from imgdedup_devtools.bench.uploads import distinct_photo, variant

    path, index = args
    group, position = divmod(index, DUPLICATE_EVERY)
    if position < DUPLICATE_EVERY - 1:
        data = encode(distinct_photo(group * DUPLICATE_EVERY + position), "JPEG", quality=85)
    else:  # a copy of the group's first photo
        image = distinct_photo(group * DUPLICATE_EVERY)
        original = encode(image, "JPEG", quality=85)
        data = variant(image, original, COPY_KINDS[group % len(COPY_KINDS)])
    Path(path).write_bytes(data)


def generated_jpegs(folder: Path, count: int, workers: int) -> Path:
    """`count` 1280x960 JPEGs: distinct photos (quality 85) and, every DUPLICATE_EVERY-th
    file, a copy of one of them (re-encoded, half size, brighter or byte-identical).
    Made once and reused."""
    folder.mkdir(parents=True, exist_ok=True)
    todo = [(str(folder / f"photo-{seed:05d}.jpg"), seed) for seed in range(count)
            if not (folder / f"photo-{seed:05d}.jpg").exists()]
    if todo:
        print(f"generating {len(todo)} 1280x960 JPEGs in {folder}", file=sys.stderr)
        context = multiprocessing.get_context("forkserver")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            list(pool.map(_make_jpeg, todo, chunksize=16))
    return folder


def _files(folder: Path) -> list[Path]:
    return [folder / item.key for item in list_folder(str(folder)).items if item.error is None]


def imagehash_loop(files: list[Path], max_seconds: float) -> dict[str, Any]:
    """ImageHash.phash over the files, one process; extrapolated past `max_seconds`."""
    import imagehash
    from PIL import Image

    started = time.perf_counter()
    done = errors = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in files:
            try:
                with Image.open(path) as image:
                    imagehash.phash(image)
            except Exception:
                errors += 1
            done += 1
            if time.perf_counter() - started > max_seconds:
                break
    elapsed = time.perf_counter() - started
    seconds = elapsed * len(files) / done if done else 0.0
    return {
        "files": len(files), "measured_files": done, "errors": errors, "seconds": round(seconds, 2),
        "per_s": round(len(files) / seconds, 1) if seconds else 0.0, "extrapolated": done < len(files),
    }


def fingerprint_one_core(files: list[Path], max_seconds: float) -> float:
    """Images/s of `imgdedup.fingerprint` alone, one process (reads included)."""
    limits = Settings.from_env().image_limits
    step = max(1, len(files) // 2000)  # an even sample across the folder
    sample = files[::step]
    started = time.perf_counter()
    done = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in sample:
            try:
                fingerprint(path.read_bytes(), limits)
            except Exception:
                pass
            done += 1
            if time.perf_counter() - started > max_seconds:
                break
    return done / (time.perf_counter() - started)


def scan_folder(folder: Path, workers: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="imgdedup-scan-bench-") as out:
        options = ScanOptions(source=str(folder), out=Path(out), workers=workers, fresh=True, tty=False,
                              progress_interval=30.0)
        result = asyncio.run(scan(options, stream=sys.stderr))
    assert result.report is not None
    files = result.report["totals"]["files"]
    seconds = result.seconds
    return {
        "files": files,
        "images": result.report["totals"]["images"],
        "unreadable": result.report["totals"]["unreadable"],
        "clusters": result.report["totals"]["clusters"],
        "seconds": round(seconds["total"], 2),
        "per_s": round(files / seconds["total"], 1),
        "hashing_per_s": round(files / seconds["hashing"], 1) if seconds.get("hashing") else None,
        "phase_seconds": {k: round(v, 2) for k, v in seconds.items()},
    }


def measure(name: str, folder: Path, workers: int, baseline_s: float) -> dict[str, Any]:
    files = _files(folder)
    size = sum(os.path.getsize(p) for p in files)
    ours = scan_folder(folder, workers)
    ceiling = fingerprint_one_core(files, CEILING_SAMPLE_S)
    baseline = imagehash_loop(files, baseline_s)
    line = {
        "folder": str(folder), "files": len(files), "mean_kb": round(size / max(1, len(files)) / 1024, 1),
        "workers": workers, "scan": ours, "fingerprint_one_core_per_s": round(ceiling, 1),
        "hashing_ceiling_per_s": round(ceiling * workers, 1), "imagehash_loop": baseline,
        "speedup_vs_imagehash": round(baseline["seconds"] / ours["seconds"], 2) if ours["seconds"] else None,
    }
    print(
        f"  {name:<24} {len(files):>6,} files, {line['mean_kb']:6.1f} KB avg: imgdedup scan {ours['seconds']:7.1f} s "
        f"= {ours['per_s']:6.1f} files/s (hashing phase {ours['hashing_per_s']}/s; fingerprint() alone "
        f"{ceiling:.0f}/s per core, ceiling {ceiling * workers:.0f}/s) | ImageHash.phash loop "
        f"{baseline['seconds']:7.1f} s = {baseline['per_s']:6.1f}/s{' (extrapolated)' if baseline['extrapolated'] else ''}"
        f" | {line['speedup_vs_imagehash']}x"
    )
    return line


def run(
    corpus: Path | None, *, count: int = DEFAULT_COUNT, workers: int | None = None,
    baseline_s: float = DEFAULT_BASELINE_S, work_dir: Path | None = None,
) -> dict[str, Any]:
    workers = workers or Settings.from_env().effective_hash_workers
    work = work_dir or Path(tempfile.gettempdir()) / "imgdedup-scan-bench"
    jpegs = generated_jpegs(work / f"estate1280x960-{count}", count, workers)
    print(f"scan rate, {workers} workers on {os.cpu_count()} cores ({platform.machine()}, Python "
          f"{platform.python_version()}); ImageHash baseline: one process")
    results: dict[str, Any] = {}
    if corpus is not None:
        results["corpus"] = measure(f"corpus {corpus.name}", corpus, workers, baseline_s)
    results["jpeg_1280x960"] = measure("generated 1280x960 JPEG", jpegs, workers, baseline_s)
    line = {"bench": "scan", "workers": workers, "results": results}
    print(json.dumps(line))
    return line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("corpus", nargs="?", type=Path, help="a folder to scan, e.g. the build-corpus output")
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT, help="generated 1280x960 JPEGs")
    parser.add_argument("--workers", type=int, default=None, help="scan workers (default: every core)")
    parser.add_argument("--baseline-seconds", type=float, default=DEFAULT_BASELINE_S,
                        help="time cap of the ImageHash loop per folder; beyond it the time is extrapolated")
    parser.add_argument("--work-dir", type=Path, default=None, help="where generated JPEGs are kept between runs")


def main(args: argparse.Namespace) -> int:
    run(args.corpus, count=args.count, workers=args.workers, baseline_s=args.baseline_seconds, work_dir=args.work_dir)
    return 0
