"""Near-duplicate accuracy: per-family recall and false positives vs pHash, dHash, PDQ.

Registers distinct originals from a real-image corpus (`../shared/bench/build-corpus
DIR`) through the service's own code path (Deduplicator, hashing pool, index, decision
rules), then queries variants of them (one family at a time) and distinct images that
were never registered. The baselines (ImageHash pHash and dHash at distance <= 10, PDQ at
<= 31) are brute-force searches over the same originals, computed in the same run on the
same bytes. A baseline "finds" a variant when its original is within the threshold (a
generous reading); ours must answer `duplicate` naming that original.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import json
import os
import platform
import random
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image

from imgdedup.config import Settings
from imgdedup.decisions.deduplicator import CheckResult, Deduplicator
from imgdedup.decisions.rules import CheckVerdict
from imgdedup.errors import InputError
from imgdedup.fingerprint.decode import normalise_mode
from imgdedup.hasher import Hasher
from imgdedup.index.memory import MemoryIndex
from imgdedup.metrics import Metrics
from imgdedup_devtools.bench.lookalikes import counted_apart, pixel_thumbnail, same_pixels
from imgdedup_devtools.bench.variants import NEGATIVE_TRANSFORMS, NON_GEOMETRIC, VARIANTS, save

NAMESPACE = "accuracy"
BASELINES = {"pHash<=10": 10, "dHash<=10": 10, "PDQ<=31": 31}
#: Families queried a second time with IMGDEDUP_MATCH_ROTATIONS on (rows get this suffix;
#: the baselines in those rows are the same plain searches, for comparison).
ROTATION_MODE = " (rotation mode)"
ROTATION_MODE_FAMILIES = ("geometric", "negative")
MAX_BENCH_PIXELS = 20_000_000  # bigger corpus files are skipped (and counted)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


# --- worker side (pure; runs in a process pool) -----------------------------------------
def _load_rgb(data: bytes) -> Image.Image:
    """The corpus image as the service sees it (first frame, alpha and colour-key
    transparency flattened onto white), in RGB: the variants are made from this."""
    image = Image.open(io.BytesIO(data))
    image.seek(0)
    return normalise_mode(image).convert("RGB")


def _baseline_hashes(data: bytes) -> tuple[int, int, tuple[int, int, int, int]]:
    """Baselines hash the same flattened RGB pixels we do: ImageHash would otherwise drop
    the alpha of cut-outs without flattening it, which is not what is being compared."""
    import imagehash
    import pdqhash

    image = _load_rgb(data)
    ph = int(str(imagehash.phash(image)), 16)
    dh = int(str(imagehash.dhash(image)), 16)
    vector, _quality = pdqhash.compute(np.ascontiguousarray(np.asarray(image.convert("RGB"))))
    packed = np.packbits(vector.astype(np.uint8)).tobytes()
    pdq = tuple(int.from_bytes(packed[i : i + 8], "big") for i in range(0, 32, 8))
    return ph, dh, pdq  # type: ignore[return-value]


def _prepare(job: tuple[str, str]) -> dict[str, object]:
    """Read one corpus file; for originals make every variant, for negatives the negative
    transforms; baseline hashes for everything."""
    path, role = job
    raw = Path(path).read_bytes()
    out: dict[str, object] = {"path": path, "role": role, "raw": raw, "items": []}
    try:
        with Image.open(io.BytesIO(raw)) as probe:
            if probe.width * probe.height > MAX_BENCH_PIXELS:
                raise ValueError(f"{probe.width}x{probe.height} is larger than the benchmark's limit")
        image = _load_rgb(raw)
    except Exception as exc:  # an unreadable corpus file is skipped and counted
        out["error"] = repr(exc)
        return out
    out["pixels"] = pixel_thumbnail(image)
    transforms = VARIANTS if role == "original" else NEGATIVE_TRANSFORMS
    items = []
    if role == "original":
        items.append(("original", "raw", raw, _baseline_hashes(raw)))
    for family, name, transform, fmt, options in transforms:
        data = raw if (family == "negative" and name == "raw") else save(transform(image), fmt, **options)
        items.append((family, name, data, _baseline_hashes(data)))
    out["items"] = items
    return out


# --- selection ---------------------------------------------------------------------------
def select_files(corpus: Path, originals: int, negatives: int, seed: int) -> tuple[list[Path], list[Path]]:
    """Disjoint, deterministic samples: photos and product-like cut-outs in both sets."""
    def images(folder: str) -> list[Path]:
        base = corpus / folder
        return sorted(p for p in base.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if base.is_dir() else []

    rng = random.Random(seed)
    photos, objects = images("photos"), images("objects")
    rng.shuffle(photos)
    rng.shuffle(objects)
    if not photos:
        raise SystemExit(f"no photos under {corpus}/photos: build the corpus with ../shared/bench/build-corpus {corpus}")
    n_photo_orig = min(len(photos) // 2, round(originals * 2 / 3))
    n_obj_orig = originals - n_photo_orig
    n_photo_neg = min(len(photos) - n_photo_orig, negatives // 2)
    n_obj_neg = negatives - n_photo_neg
    chosen_originals = photos[:n_photo_orig] + objects[:n_obj_orig]
    chosen_negatives = photos[n_photo_orig : n_photo_orig + n_photo_neg] + objects[n_obj_orig : n_obj_orig + n_obj_neg]
    return chosen_originals, chosen_negatives


# --- scoring -----------------------------------------------------------------------------
@dataclass
class Tally:
    queries: int = 0
    ours_duplicate: int = 0
    ours_review: int = 0
    baselines: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def as_dict(self) -> dict[str, object]:
        n = max(self.queries, 1)
        return {
            "queries": self.queries,
            "ours": round(self.ours_duplicate / n, 4),
            "ours_incl_review": round((self.ours_duplicate + self.ours_review) / n, 4),
            **{name: round(self.baselines[name] / n, 4) for name in BASELINES},
        }


def _pdq_distance(a: np.ndarray, b: tuple[int, int, int, int]) -> np.ndarray:
    return sum(np.bitwise_count(a[:, i] ^ np.uint64(b[i])) for i in range(4)).astype(np.int64)


class BaselineIndex:
    """Brute-force search over the originals' baseline hashes."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.ph: list[int] = []
        self.dh: list[int] = []
        self.pdq: list[tuple[int, int, int, int]] = []

    def add(self, image_id: str, hashes: tuple[int, int, tuple[int, int, int, int]]) -> None:
        self.ids.append(image_id)
        self.ph.append(hashes[0])
        self.dh.append(hashes[1])
        self.pdq.append(hashes[2])

    def freeze(self) -> None:
        self._ph = np.array(self.ph, dtype=np.uint64)
        self._dh = np.array(self.dh, dtype=np.uint64)
        self._pdq = np.array(self.pdq, dtype=np.uint64).reshape(-1, 4)

    def within(self, hashes: tuple[int, int, tuple[int, int, int, int]]) -> dict[str, set[str]]:
        ph = np.bitwise_count(self._ph ^ np.uint64(hashes[0]))
        dh = np.bitwise_count(self._dh ^ np.uint64(hashes[1]))
        pdq = _pdq_distance(self._pdq, hashes[2])
        out = {}
        for name, distances in (("pHash<=10", ph), ("dHash<=10", dh), ("PDQ<=31", pdq)):
            out[name] = {self.ids[i] for i in np.nonzero(distances <= BASELINES[name])[0]}
        return out


async def _evaluate(prepared: list[dict[str, object]], settings: Settings, workers: int) -> dict[str, object]:
    metrics = Metrics()
    hasher = Hasher(settings.image_limits, workers)
    await hasher.start()
    # The optional mirror/rotation mode only changes what a lookup probes: the same
    # index is queried a second time for the geometric variants and the negatives.
    rotation_hasher = Hasher(dataclasses.replace(settings.image_limits, rotations=True), workers)
    await rotation_hasher.start()
    policy = settings.policy
    index = MemoryIndex()
    dedup = Deduplicator(index, hasher, policy, metrics, max_in_flight=4 * workers)
    rotation_dedup = Deduplicator(
        index, rotation_hasher, dataclasses.replace(policy, match_rotations=True), metrics, max_in_flight=4 * workers
    )
    baseline = BaselineIndex()
    canonical: dict[str, str] = {}
    originals_judged_duplicate: list[tuple[str, str]] = []
    kept_codes: list[int] = []
    kept_record_bytes: list[int] = []
    try:
        originals = [p for p in prepared if p["role"] == "original" and p["items"]]
        for entry in originals:  # sequential: registration order is part of the contract
            image_id = Path(str(entry["path"])).name
            try:
                registration = await dedup.register(NAMESPACE, image_id, entry["raw"])  # type: ignore[arg-type]
            except InputError as exc:
                entry["items"] = []
                entry["error"] = f"{exc.code}: {exc.detail}"
                continue
            record = registration.record
            if record.kept:  # what the index stores per kept image (docs/scaling.md)
                kept_codes.append(len(record.indexed_codes))
                kept_record_bytes.append(len(record.to_json()))
            canonical[image_id] = record.duplicate_of if record.verdict.value == "duplicate" and record.duplicate_of else image_id
            if record.verdict.value == "duplicate":
                originals_judged_duplicate.append((image_id, str(record.duplicate_of)))
            baseline.add(image_id, entry["items"][0][3])  # type: ignore[index]
        baseline.freeze()
        registered = set(canonical)
        # Negatives showing the same pixels as a registered original (an identical file
        # or a resize of it under another name) have that original as a partner.
        kept = [(Path(str(e["path"])).name, e["pixels"]) for e in originals if Path(str(e["path"])).name in registered]
        original_ids = [name for name, _ in kept]
        original_pixels = np.stack([pixels for _, pixels in kept])  # type: ignore[misc]
        pixel_partners: dict[str, set[str]] = {}
        for entry in prepared:
            if entry["role"] == "negative" and "pixels" in entry:
                same = same_pixels(entry["pixels"], original_pixels)  # type: ignore[arg-type]
                # The original, or the kept one it was judged a duplicate of (the name a
                # match would carry).
                pixel_partners[Path(str(entry["path"])).name] = {
                    name for i in np.flatnonzero(same) for name in (original_ids[i], canonical[original_ids[i]])
                }

        tallies: dict[str, Tally] = defaultdict(Tally)
        per_variant: dict[str, Tally] = defaultdict(Tally)
        false_positives: list[dict[str, object]] = []
        slots = asyncio.Semaphore(4 * workers)

        async def query(entry: dict[str, object], family: str, name: str, data: bytes, hashes,
                        checker: Deduplicator = dedup) -> None:
            async with slots:
                try:
                    result = await checker.check(NAMESPACE, data)
                except InputError:
                    result = CheckResult(CheckVerdict.UNIQUE, (), None)  # type: ignore[arg-type]
            found = baseline.within(hashes)
            expected = Path(str(entry["path"])).name if entry["role"] == "original" else None
            accept = {expected, canonical.get(expected or "", expected)} if expected else set()
            named = result.decision.duplicate_of if result.decision is not None else None
            query_name = Path(str(entry["path"])).name
            if expected is not None:
                for tally in (tallies[family], per_variant[f"{family}/{name}"]):
                    tally.queries += 1
                    if result.verdict == CheckVerdict.DUPLICATE and named in accept:
                        tally.ours_duplicate += 1
                    elif result.verdict == CheckVerdict.REVIEW and named in accept:
                        tally.ours_review += 1
                    for baseline_name, ids in found.items():
                        if ids & accept:
                            tally.baselines[baseline_name] += 1
            else:
                # Every negative is counted. A match with its partner among the originals
                # (the same pixels, the same picture reviewed by eye, or another member
                # of the star polygon family) is not a false positive: it is counted in a
                # row of its own instead. The "all counted" row excuses nothing.
                partners = {i for i in registered if counted_apart(query_name, i)} | pixel_partners.get(query_name, set())
                rows: list[tuple[Tally, set[str]]] = [
                    (tallies[family], partners), (per_variant[f"{family}/{name}"], partners),
                    (tallies[f"{family} (all counted)"], set()),
                ]
                for tally, excused in rows:
                    tally.queries += 1
                    if named not in excused:
                        if result.verdict == CheckVerdict.DUPLICATE:
                            tally.ours_duplicate += 1
                        elif result.verdict == CheckVerdict.REVIEW:
                            tally.ours_review += 1
                    for baseline_name, ids in found.items():
                        if ids - excused:
                            tally.baselines[baseline_name] += 1
                if partners:
                    tally = tallies[f"{family} (matching a partner: same pixels, same picture or star family)"]
                    tally.queries += 1
                    if named in partners:
                        if result.verdict == CheckVerdict.DUPLICATE:
                            tally.ours_duplicate += 1
                        elif result.verdict == CheckVerdict.REVIEW:
                            tally.ours_review += 1
                    for baseline_name, ids in found.items():
                        if ids & partners:
                            tally.baselines[baseline_name] += 1
            if family == "negative" and result.verdict != CheckVerdict.UNIQUE and result.decision is not None:
                false_positives.append({
                    "query": query_name, "variant": name, "matched": named,
                    "distance": result.decision.distance, "similarity": result.decision.similarity,
                    "verdict": result.verdict.value,
                    "counted_apart": bool(named and (counted_apart(query_name, named) or named in pixel_partners.get(query_name, ()))),
                })

        jobs = []
        for entry in prepared:
            if "error" in entry:
                continue
            for family, name, data, hashes in entry["items"]:  # type: ignore[attr-defined]
                if family == "original":
                    continue
                jobs.append(query(entry, family, name, data, hashes))
                if family in ROTATION_MODE_FAMILIES:
                    jobs.append(query(entry, f"{family}{ROTATION_MODE}", name, data, hashes, rotation_dedup))
        await asyncio.gather(*jobs)
    finally:
        await hasher.close()
        await rotation_hasher.close()
    return {
        "families": {k: v.as_dict() for k, v in sorted(tallies.items())},
        "variants": {k: v.as_dict() for k, v in sorted(per_variant.items())},
        "originals_registered": len(canonical),
        "indexed_codes_per_kept_image": round(sum(kept_codes) / max(len(kept_codes), 1), 2),
        "record_json_bytes_per_kept_image": round(sum(kept_record_bytes) / max(len(kept_record_bytes), 1)),
        "originals_judged_duplicate": originals_judged_duplicate,
        "false_positive_examples": sorted(
            false_positives, key=lambda f: (f["verdict"] != "duplicate", f["counted_apart"], f["distance"], f["query"])
        ),
    }


def _summary(families: dict[str, dict[str, object]]) -> dict[str, object]:
    def pooled(names: tuple[str, ...], key: str) -> float:
        total = sum(int(families[n]["queries"]) for n in names if n in families)
        hits = sum(float(families[n][key]) * int(families[n]["queries"]) for n in names if n in families)
        return round(hits / max(total, 1), 4)

    keys = ["ours", "ours_incl_review", *BASELINES]
    return {
        "non_geometric_recall": {k: pooled(NON_GEOMETRIC, k) for k in keys},
        "crop_recall": {k: pooled(("crop",), k) for k in keys},
        "overlay_recall": {k: pooled(("overlay",), k) for k in keys},
        "geometric_recall": {k: pooled(("geometric",), k) for k in keys},
        "false_positive_rate": {k: pooled(("negative",), k) for k in keys},
        "false_positive_rate_all_counted": {k: pooled(("negative (all counted)",), k) for k in keys},
        "geometric_recall_rotation_mode": {k: pooled((f"geometric{ROTATION_MODE}",), k) for k in keys},
        "false_positive_rate_rotation_mode": {k: pooled((f"negative{ROTATION_MODE}",), k) for k in keys},
    }


def _markdown(result: dict[str, object], config: dict[str, object]) -> str:
    fam: dict[str, dict[str, object]] = result["families"]  # type: ignore[assignment]
    summary: dict[str, dict[str, float]] = result["summary"]  # type: ignore[assignment]
    cols = ["ours", "ours_incl_review", *BASELINES]
    header = "| family | queries | imgdedup | imgdedup incl. review | " + " | ".join(BASELINES) + " |"
    rule = "|---" * (3 + len(cols)) + "|"

    def row(label: str, data: dict[str, object]) -> str:
        return f"| {label} | {data['queries']} | " + " | ".join(f"{float(data[c]):.3f}" for c in cols) + " |"

    lines = [
        "# Near-duplicate accuracy",
        "",
        f"Written by `{config['command']}` on {config['date']} ({config['machine']}). Corpus: "
        f"`{config['corpus']}` built by `../shared/bench/build-corpus`; {config['originals']} originals registered "
        f"through the service's code path (hashing pool, in-memory index, decision rules; duplicate radius "
        f"{config['duplicate_radius']}, review radius {config['review_radius']}), {config['negatives']} distinct "
        "images never registered. Recall rows: share of variants answered `duplicate` of their original "
        "(imgdedup) or with their original within the threshold (baselines, brute force). The `negative` row is "
        "the false-positive rate: share of never-registered images (raw, and halved at JPEG q50) that matched "
        "anything other than its partner: a registered original with the same pixels (an identical file or a "
        "resize of it under another name: at 16x16 RGB no pixel differs by more than 16 of 255, nor by more "
        "than half the picture's spread), the same picture drawn twice (pairs reviewed by eye) or, for a member "
        "of the generated star polygon family (thin-line rings that differ in width), another member (`service/bench/lookalikes.py`). Matches with a partner are counted in a row of their "
        "own; the `all counted` row counts every match as a false positive.",
        "",
        "## Summary",
        "",
        "| measure | " + " | ".join(cols) + " |",
        "|---" * (1 + len(cols)) + "|",
    ]
    for name, values in summary.items():
        lines.append(f"| {name.replace('_', ' ')} | " + " | ".join(f"{values[c]:.3f}" for c in cols) + " |")
    lines += ["", "## Per family", "", header, rule]
    for family, data in fam.items():
        lines.append(row(family, data))
    lines += ["", "## Per variant", "", header.replace("family", "variant"), rule]
    for name, data in result["variants"].items():  # type: ignore[union-attr]
        lines.append(row(name, data))
    lines += ["", f"Index footprint: {result['indexed_codes_per_kept_image']} indexed codes and "
              f"{result['record_json_bytes_per_kept_image']} bytes of JSON record per kept image.",
              "", "## Inspect before counting", ""]
    judged = result["originals_judged_duplicate"]
    lines.append(f"Originals judged duplicates of another original at registration: {len(judged)} "  # type: ignore[arg-type]
                 "(a real near-duplicate in the corpus, or a false positive of ours):")
    for a, b in judged[:15]:  # type: ignore[index]
        lines.append(f"- `{a}` -> `{b}`")
    examples: list[dict[str, object]] = result["false_positive_examples"]  # type: ignore[assignment]
    called = [fp for fp in examples if fp["verdict"] == "duplicate"]
    lines += ["", f"Negatives ours called `duplicate` ({len(called)}; those counted apart marked; another "
              f"{len(examples) - len(called)} went to `review`):"]
    for fp in called:
        sim = "" if fp["similarity"] is None else f", similarity {fp['similarity']:.2f}"
        known = " - counted apart" if fp["counted_apart"] else ""
        lines.append(f"- `{fp['query']}` ({fp['variant']}) matched `{fp['matched']}` at distance "
                     f"{fp['distance']}{sim} ({fp['verdict']}){known}")
    lines += ["", f"Wall time {config['seconds']} s with {config['workers']} worker processes.", ""]
    return "\n".join(lines)


def run(corpus: Path, originals: int, negatives: int, seed: int, workers: int, write_docs: Path | None) -> dict[str, object]:
    started = time.perf_counter()
    settings = Settings.from_env({k: v for k, v in os.environ.items() if k.startswith("IMGDEDUP_") and k != "IMGDEDUP_REDIS_URL"})
    chosen_originals, chosen_negatives = select_files(corpus, originals, negatives, seed)
    print(f"accuracy: {len(chosen_originals)} originals x {len(VARIANTS)} variants, {len(chosen_negatives)} negatives "
          f"x {len(NEGATIVE_TRANSFORMS)}; preparing with {workers} processes ...", flush=True)
    jobs = [(str(p), "original") for p in chosen_originals] + [(str(p), "negative") for p in chosen_negatives]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        prepared = list(pool.map(_prepare, jobs, chunksize=4))
    result = asyncio.run(_evaluate(prepared, settings, workers))
    skipped = [p["path"] for p in prepared if "error" in p]
    result["summary"] = _summary(result["families"])  # type: ignore[arg-type]
    seconds = round(time.perf_counter() - started, 1)
    config = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}",
        "corpus": str(corpus), "originals": result["originals_registered"],
        "negatives": len(chosen_negatives) - sum(1 for s in skipped if s in map(str, chosen_negatives)),
        "duplicate_radius": settings.duplicate_radius, "review_radius": settings.review_radius,
        "seconds": seconds, "workers": workers, "seed": seed, "skipped": len(skipped),
        "command": f"imgdedup bench accuracy --corpus {corpus} --originals {originals} --negatives {negatives} --seed {seed}",
        "crop_windows": settings.crop_windows,
    }
    cols = ["ours", "ours_incl_review", *BASELINES]
    print(f"{'family':<14}{'queries':>8}" + "".join(f"{c:>18}" for c in cols))
    for family, data in result["families"].items():  # type: ignore[union-attr]
        print(f"{family:<14}{data['queries']:>8}" + "".join(f"{float(data[c]):>18.3f}" for c in cols))
    for name, values in result["summary"].items():  # type: ignore[union-attr]
        print(f"{name:<36}" + "  ".join(f"{c}={values[c]:.3f}" for c in cols))
    if write_docs is not None:
        write_docs.parent.mkdir(parents=True, exist_ok=True)
        write_docs.write_text(_markdown(result, config))
        print(f"wrote {write_docs}")
    print(f"index footprint: {result['indexed_codes_per_kept_image']} indexed codes and "
          f"{result['record_json_bytes_per_kept_image']} record bytes per kept image")
    line = {"bench": "accuracy", "config": config, "summary": result["summary"], "families": result["families"],
            "indexed_codes_per_kept_image": result["indexed_codes_per_kept_image"],
            "record_json_bytes_per_kept_image": result["record_json_bytes_per_kept_image"]}
    print(json.dumps(line))
    return line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", type=Path, required=True, help="folder built by ../shared/bench/build-corpus")
    parser.add_argument("--originals", type=int, default=300, help="distinct images registered")
    parser.add_argument("--negatives", type=int, default=600, help="distinct images never registered")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--write-docs", type=Path, default=Path("docs/accuracy.md"),
                        help="markdown report to (over)write; '-' to skip")


def main(args: argparse.Namespace) -> int:
    run(args.corpus, args.originals, args.negatives, args.seed, args.workers,
        None if str(args.write_docs) == "-" else args.write_docs)
    return 0
