"""`imgdedup bench accuracy`: near-duplicate recall per variant family and false positives vs pHash, dHash, PDQ.

Registers distinct originals from a real-image corpus (`../shared/bench/build-corpus
DIR`) through the service's own code path (Deduplicator, hashing pool, index, decision
rules), then queries variants of them (one family at a time) and distinct images that
were never registered. The baselines (ImageHash pHash and dHash at distance <= 10, PDQ at
<= 31) are brute-force searches over the same originals, computed in the same run on the
same bytes. A baseline "finds" a variant when its original is within the threshold (a
generous reading); ours must answer `duplicate` naming that original. Each of `--seeds`
draws its own originals and negatives; one document reports every draw.

`--holdout-corpus` measures a second corpus (devtools/corpus/build-holdout-corpus, never
tuned on) the same way in the same run. Per corpus it also counts what users feel
(`user_measures`: distinct images blocked or sent to review, originals refused at
registration) and runs `imgdedup scan` on distinct pictures with planted copies
(`scan_accuracy`). The document opens with issue 12's targets against the figures.
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
import struct
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image

from imgdedup.config import Settings
from imgdedup.decisions.deduplicator import CheckResult, Deduplicator
from imgdedup.decisions.rules import CheckVerdict, Verdict
from imgdedup.errors import InputError
from imgdedup.fingerprint.decode import normalise_mode
from imgdedup.hasher import Hasher
from imgdedup.index.memory import MemoryIndex
from imgdedup.metrics import Metrics
from imgdedup_devtools.bench.accuracy_report import (
    ALL_COUNTED,
    BASELINES,
    MATCHING_A_PARTNER,
    ROTATION_MODE,
    CorpusResult,
    Draw,
    FalsePositive,
    RunInfo,
    Tally,
    kept_by_hand,
    markdown,
    print_draw,
    print_scan,
)
from imgdedup_devtools.bench.lookalikes import counted_apart, pixel_thumbnail, same_pixels
from imgdedup_devtools.bench.scan_accuracy import measure_scan
from imgdedup_devtools.bench.user_measures import DistinctCounter, Refusals, baseline_refusals, hamming
from imgdedup_devtools.bench.variants import NEGATIVE_TRANSFORMS, VARIANTS, save

NAMESPACE = "accuracy"
#: Families queried a second time in the mirror/rotation mode.
ROTATION_MODE_FAMILIES = ("geometric", "negative")
MAX_BENCH_PIXELS = 20_000_000  # bigger corpus files are skipped (and counted)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}

#: pHash, dHash, PDQ (four 64-bit words) of one image.
BaselineHashes = tuple[int, int, tuple[int, int, int, int]]


# --- worker side (pure; runs in a process pool) -----------------------------------------
@dataclass
class Sample:
    """One image to query: a variant of an original, or a transform of a negative."""

    family: str
    name: str
    data: bytes
    hashes: BaselineHashes


@dataclass
class Prepared:
    """One corpus file as a worker prepared it."""

    path: str
    role: str  # "original" or "negative"
    raw: bytes
    hashes: BaselineHashes | None = None  # of `raw`: what the baselines index for an original
    samples: list[Sample] = field(default_factory=list)
    pixels: np.ndarray | None = None  # `pixel_thumbnail` of the picture
    error: str | None = None  # unreadable, too large, or refused at registration: skipped

    @property
    def name(self) -> str:
        return Path(self.path).name


def _load_rgb(data: bytes) -> Image.Image:
    """The corpus image as the service sees it (first frame, alpha and colour-key
    transparency flattened onto white), in RGB: the variants are made from this."""
    image = Image.open(io.BytesIO(data))
    image.seek(0)
    return normalise_mode(image).convert("RGB")


def _baseline_hashes(data: bytes) -> BaselineHashes:
    """Baselines hash the same flattened RGB pixels we do: ImageHash would otherwise drop
    the alpha of cut-outs without flattening it, which is not what is being compared."""
    import imagehash
    import pdqhash

    image = _load_rgb(data)
    ph = int(str(imagehash.phash(image)), 16)
    dh = int(str(imagehash.dhash(image)), 16)
    vector, _quality = pdqhash.compute(np.ascontiguousarray(np.asarray(image.convert("RGB"))))
    packed = np.packbits(vector.astype(np.uint8)).tobytes()
    pdq: tuple[int, int, int, int] = struct.unpack(">4Q", packed)
    return ph, dh, pdq


def _prepare(job: tuple[str, str]) -> Prepared:
    """Read one corpus file; for originals make every variant, for negatives the negative
    transforms; baseline hashes for everything."""
    path, role = job
    raw = Path(path).read_bytes()
    out = Prepared(path, role, raw)
    try:
        with Image.open(io.BytesIO(raw)) as probe:
            if probe.width * probe.height > MAX_BENCH_PIXELS:
                raise ValueError(f"{probe.width}x{probe.height} is larger than the benchmark's limit")
        image = _load_rgb(raw)
    except Exception as exc:  # an unreadable corpus file is skipped and counted
        out.error = repr(exc)
        return out
    out.pixels = pixel_thumbnail(image)
    if role == "original":
        out.hashes = _baseline_hashes(raw)
    for family, name, transform, fmt, options in VARIANTS if role == "original" else NEGATIVE_TRANSFORMS:
        data = raw if (family == "negative" and name == "raw") else save(transform(image), fmt, **options)
        out.samples.append(Sample(family, name, data, _baseline_hashes(data)))
    return out


# --- selection ---------------------------------------------------------------------------
def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []


def select_files(corpus: Path, originals: int, negatives: int, seed: int) -> tuple[list[Path], list[Path]]:
    """Disjoint, deterministic samples. The tuning corpus (`photos/`, `objects/`): photos
    and product-like cut-outs in both sets, as the thresholds were tuned. Any other corpus
    (one folder per genre): every genre in equal turns, each split between the sets."""
    if not (corpus / "objects").is_dir():
        return select_by_genre(corpus, originals, negatives, seed)
    rng = random.Random(seed)
    photos, objects = _images(corpus / "photos"), _images(corpus / "objects")
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


def select_by_genre(corpus: Path, originals: int, negatives: int, seed: int) -> tuple[list[Path], list[Path]]:
    """Round-robin over the genre folders (each shuffled by `seed`) until both sets are
    full; each pick goes to the set that is further behind its size. File names must be
    unique across the corpus: they are the image ids."""
    rng = random.Random(seed)
    genres = []
    for folder in sorted(p for p in corpus.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = _images(folder)
        rng.shuffle(files)
        if files:
            genres.append(files)
    if not genres:
        raise SystemExit(f"no pictures in the genre folders of {corpus}")
    interleaved = [files[i] for i in range(max(map(len, genres))) for files in genres if i < len(files)]
    if len({p.name for p in interleaved}) != len(interleaved):
        raise SystemExit(f"file names repeat across the folders of {corpus}: they must be unique")
    chosen_originals: list[Path] = []
    chosen_negatives: list[Path] = []
    for path in interleaved:
        if len(chosen_originals) >= originals and len(chosen_negatives) >= negatives:
            break
        behind = len(chosen_originals) * max(negatives, 1) <= len(chosen_negatives) * max(originals, 1)
        if len(chosen_originals) < originals and (behind or len(chosen_negatives) >= negatives):
            chosen_originals.append(path)
        else:
            chosen_negatives.append(path)
    return chosen_originals, chosen_negatives


# --- scoring -----------------------------------------------------------------------------
def _pdq_distance(a: np.ndarray, b: tuple[int, int, int, int]) -> np.ndarray:
    return sum(np.bitwise_count(a[:, i] ^ np.uint64(b[i])) for i in range(4)).astype(np.int64)


class BaselineIndex:
    """Brute-force search over the originals' baseline hashes."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.ph: list[int] = []
        self.dh: list[int] = []
        self.pdq: list[tuple[int, int, int, int]] = []

    def add(self, image_id: str, hashes: BaselineHashes) -> None:
        self.ids.append(image_id)
        self.ph.append(hashes[0])
        self.dh.append(hashes[1])
        self.pdq.append(hashes[2])

    def freeze(self) -> None:
        self._ph = np.array(self.ph, dtype=np.uint64)
        self._dh = np.array(self.dh, dtype=np.uint64)
        self._pdq = np.array(self.pdq, dtype=np.uint64).reshape(-1, 4)

    def codes(self) -> dict[str, np.ndarray]:
        """Each baseline's codes, one row per original in registration order."""
        return {"pHash<=10": self._ph, "dHash<=10": self._dh, "PDQ<=31": self._pdq}

    def within(self, hashes: BaselineHashes) -> dict[str, set[str]]:
        ph = np.bitwise_count(self._ph ^ np.uint64(hashes[0]))
        dh = np.bitwise_count(self._dh ^ np.uint64(hashes[1]))
        pdq = _pdq_distance(self._pdq, hashes[2])
        out = {}
        for name, distances in (("pHash<=10", ph), ("dHash<=10", dh), ("PDQ<=31", pdq)):
            out[name] = {self.ids[i] for i in np.nonzero(distances <= BASELINES[name])[0]}
        return out


@dataclass
class Registered:
    """The originals as the index kept them."""

    #: image id -> the name a match with it carries: itself, or the kept original it was
    #: judged a duplicate of
    canonical: dict[str, str] = field(default_factory=dict)
    refusals: Refusals = field(default_factory=Refusals)
    kept_codes: list[int] = field(default_factory=list)
    kept_record_bytes: list[int] = field(default_factory=list)
    baseline: BaselineIndex = field(default_factory=BaselineIndex)


def _partner_test(entries: list[Prepared]) -> Callable[[str, str], bool]:
    """Are two of these corpus files partners: the same pixels (`same_pixels`), the same
    picture or two star polygons (`counted_apart`)?"""
    pixels = {entry.name: entry.pixels for entry in entries if entry.pixels is not None}

    def is_partner(a: str, b: str) -> bool:
        if counted_apart(a, b):
            return True
        pa, pb = pixels.get(a), pixels.get(b)
        return pa is not None and pb is not None and bool(same_pixels(pa, pb[None])[0])
    return is_partner


async def _register_originals(dedup: Deduplicator, originals: list[Prepared]) -> Registered:
    """Sequentially: registration order is part of the contract."""
    out = Registered()
    is_partner = _partner_test(originals)
    for entry in originals:
        try:
            registration = await dedup.register(NAMESPACE, entry.name, entry.raw)
        except InputError as exc:
            entry.samples = []
            entry.error = f"{exc.code}: {exc.detail}"
            continue
        record = registration.record
        if record.kept:  # what the index stores per kept image (docs/scaling.md)
            out.kept_codes.append(len(record.indexed_codes))
            out.kept_record_bytes.append(len(record.to_json()))
        duplicate = record.verdict == Verdict.DUPLICATE
        out.canonical[entry.name] = record.duplicate_of if duplicate and record.duplicate_of else entry.name
        pair = (entry.name, str(record.duplicate_of))
        if duplicate:
            (out.refusals.ours_partner if is_partner(*pair) else out.refusals.ours).append(pair)
        elif record.verdict == Verdict.REVIEW:
            out.refusals.ours_review.append(pair)
        assert entry.hashes is not None  # every readable original has them
        out.baseline.add(entry.name, entry.hashes)
    out.baseline.freeze()
    out.refusals.originals = len(out.canonical)
    out.refusals.baselines, out.refusals.baselines_all = baseline_refusals(
        out.baseline.ids, out.baseline.codes(), BASELINES, hamming, is_partner)
    return out


def _pixel_partners(prepared: list[Prepared], originals: list[Prepared], registered: Registered) -> dict[str, set[str]]:
    """Negatives showing the same pixels as a registered original (an identical file or a
    resize of it under another name) have that original as a partner, and the kept one
    it was judged a duplicate of (the name a match would carry)."""
    kept = [entry for entry in originals if entry.name in registered.canonical and entry.pixels is not None]
    original_ids = [entry.name for entry in kept]
    original_pixels = np.stack([entry.pixels for entry in kept if entry.pixels is not None])
    partners: dict[str, set[str]] = {}
    for entry in prepared:
        if entry.role == "negative" and entry.pixels is not None:
            same = same_pixels(entry.pixels, original_pixels)
            partners[entry.name] = {
                name for i in np.flatnonzero(same) for name in (original_ids[i], registered.canonical[original_ids[i]])
            }
    return partners


class Scorer:
    """Counts each query's answer, ours and the baselines', into the rows it belongs to."""

    def __init__(self, registered: Registered, pixel_partners: dict[str, set[str]]) -> None:
        self.registered = registered
        self.pixel_partners = pixel_partners
        self.families: dict[str, Tally] = defaultdict(Tally)
        self.variants: dict[str, Tally] = defaultdict(Tally)
        self.false_positives: list[FalsePositive] = []
        self.distinct = DistinctCounter(BASELINES)

    def score(self, entry: Prepared, family: str, name: str, result: CheckResult | None,
              found: dict[str, set[str]]) -> None:
        """`result` None: the service refused the query (counted as `unique`)."""
        verdict = result.verdict if result is not None else CheckVerdict.UNIQUE
        decision = result.decision if result is not None else None
        named = decision.duplicate_of if decision is not None else None
        rows = (self.families[family], self.variants[f"{family}/{name}"])
        if entry.role == "original":
            accept = {entry.name, self.registered.canonical.get(entry.name, entry.name)}
            for tally in rows:
                tally.add(verdict, named in accept, [b for b, ids in found.items() if ids & accept])
        else:
            # Every negative is counted. A match with its partner among the originals
            # (the same pixels, the same picture reviewed by eye, or another member of
            # the star polygon family) is not a false positive: it is counted in a row of
            # its own instead. The "all counted" row excuses nothing.
            partners = {i for i in self.registered.canonical if counted_apart(entry.name, i)}
            partners |= self.pixel_partners.get(entry.name, set())
            for tally in rows:
                tally.add(verdict, named not in partners, [b for b, ids in found.items() if ids - partners])
            if family == "negative":
                self.distinct.add(entry.name, verdict, named, partners, found)
            self.families[f"{family}{ALL_COUNTED}"].add(verdict, True, [b for b, ids in found.items() if ids])
            if partners:
                self.families[f"{family}{MATCHING_A_PARTNER}"].add(
                    verdict, named in partners, [b for b, ids in found.items() if ids & partners])
        if family == "negative" and verdict != CheckVerdict.UNIQUE and decision is not None:
            self.false_positives.append(FalsePositive(
                query=entry.name, variant=name, matched=named, distance=decision.distance,
                similarity=decision.similarity, verdict=verdict.value,
                counted_apart=bool(named and (counted_apart(entry.name, named)
                                              or named in self.pixel_partners.get(entry.name, ()))),
            ))


async def _evaluate(prepared: list[Prepared], settings: Settings, workers: int, seed: int) -> Draw:
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
    try:
        originals = [p for p in prepared if p.role == "original" and p.error is None]
        registered = await _register_originals(dedup, originals)
        scorer = Scorer(registered, _pixel_partners(prepared, originals, registered))
        for entry in prepared:
            if entry.role == "negative" and entry.error is None:
                scorer.distinct.add_image(entry.name)
        slots = asyncio.Semaphore(4 * workers)

        async def query(entry: Prepared, family: str, sample: Sample, checker: Deduplicator) -> None:
            async with slots:
                try:
                    result: CheckResult | None = await checker.check(NAMESPACE, sample.data)
                except InputError:
                    result = None
            scorer.score(entry, family, sample.name, result, registered.baseline.within(sample.hashes))

        jobs = []
        for entry in prepared:
            if entry.error is not None:
                continue
            for sample in entry.samples:
                jobs.append(query(entry, sample.family, sample, dedup))
                if sample.family in ROTATION_MODE_FAMILIES:
                    jobs.append(query(entry, f"{sample.family}{ROTATION_MODE}", sample, rotation_dedup))
        await asyncio.gather(*jobs)
    finally:
        await hasher.close()
        await rotation_hasher.close()
    kept_codes, kept_bytes = registered.kept_codes, registered.kept_record_bytes
    return Draw(
        seed=seed,
        originals=len(registered.canonical),
        negatives=sum(1 for p in prepared if p.role == "negative" and p.error is None),
        skipped=sum(1 for p in prepared if p.error is not None),
        families=dict(scorer.families),
        variants=dict(scorer.variants),
        indexed_codes_per_kept_image=round(sum(kept_codes) / max(len(kept_codes), 1), 2),
        record_json_bytes_per_kept_image=round(sum(kept_bytes) / max(len(kept_bytes), 1)),
        refusals=registered.refusals,
        distinct=scorer.distinct.count(),
        distinct_all_counted=scorer.distinct.count(all_counted=True),
        blocked=dict(sorted(scorer.distinct.blocking.items())),
        false_positives=sorted(scorer.false_positives, key=FalsePositive.sort_key),
    )


def measure_draw(corpus: Path, originals: int, negatives: int, seed: int, workers: int, settings: Settings) -> Draw:
    """One seed's draw: select, prepare in a process pool, register and query."""
    started = time.perf_counter()
    chosen_originals, chosen_negatives = select_files(corpus, originals, negatives, seed)
    print(f"accuracy, seed {seed}: {len(chosen_originals)} originals x {len(VARIANTS)} variants, "
          f"{len(chosen_negatives)} negatives x {len(NEGATIVE_TRANSFORMS)}; preparing with {workers} processes ...",
          flush=True)
    jobs = [(str(p), "original") for p in chosen_originals] + [(str(p), "negative") for p in chosen_negatives]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        prepared = list(pool.map(_prepare, jobs, chunksize=4))
    draw = asyncio.run(_evaluate(prepared, settings, workers, seed))
    draw.seconds = round(time.perf_counter() - started, 1)
    return draw


def run(corpus: Path, originals: int, negatives: int, seeds: list[int], workers: int,
        write_docs: Path | None, *, holdout: Path | None = None, holdout_seeds: list[int] | None = None,
        scan_images: int = 300) -> dict[str, object]:
    settings = Settings.from_env({k: v for k, v in os.environ.items() if k.startswith("IMGDEDUP_") and k != "IMGDEDUP_REDIS_URL"})
    plan = [("corpus 1", corpus, "../shared/bench/build-corpus", False, seeds)]
    if holdout is not None:
        plan.append(("corpus 2 (held out)", holdout, "devtools/corpus/build-holdout-corpus", True,
                     holdout_seeds or seeds[:1]))
    corpora = []
    for label, path, builder, held_out, draw_seeds in plan:
        print(f"== {label}: {path}", flush=True)
        result = CorpusResult(label, str(path), builder, held_out, [])
        for seed in draw_seeds:
            result.draws.append(measure_draw(path, originals, negatives, seed, workers, settings))
            print_draw(result.draws[-1])
        if scan_images > 0:
            chosen, _ = select_files(path, scan_images, 0, draw_seeds[0])
            result.scan = measure_scan(chosen, workers)
            print_scan(label, result.scan)
        corpora.append(result)
    command = (f"imgdedup bench accuracy --corpus {corpus} --originals {originals} --negatives {negatives} "
               f"--seeds {' '.join(map(str, seeds))}")
    if holdout is not None:
        command += f" --holdout-corpus {holdout}"
        if holdout_seeds:
            command += f" --holdout-seeds {' '.join(map(str, holdout_seeds))}"
    if scan_images != SCAN_IMAGES:
        command += f" --scan-images {scan_images}"
    info = RunInfo(
        command=command, date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        machine=f"{os.cpu_count()} cores, {platform.machine()}",
        duplicate_radius=settings.duplicate_radius, review_radius=settings.review_radius, workers=workers,
    )
    if write_docs is not None:
        write_docs.parent.mkdir(parents=True, exist_ok=True)
        by_hand = kept_by_hand(write_docs.read_text()) if write_docs.exists() else ""
        write_docs.write_text(markdown(corpora, info, by_hand))
        print(f"wrote {write_docs}")
    line: dict[str, object] = {
        "bench": "accuracy",
        "config": {**dataclasses.asdict(info), "crop_windows": settings.crop_windows},
        "corpora": [{"label": c.label, "path": c.path, "draws": [d.as_dict() for d in c.draws],
                     "scan": c.scan.as_dict() if c.scan else None} for c in corpora],
    }
    print(json.dumps(line))
    return line


#: Distinct pictures (each with one planted copy) `imgdedup scan` runs on, per corpus.
SCAN_IMAGES = 300


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", type=Path, required=True, help="folder built by ../shared/bench/build-corpus")
    parser.add_argument("--holdout-corpus", type=Path, default=None,
                        help="held-out corpus (devtools/corpus/build-holdout-corpus): measured the same way, "
                             "never tuned on")
    parser.add_argument("--originals", type=int, default=300, help="distinct images registered per draw")
    parser.add_argument("--negatives", type=int, default=600, help="distinct images never registered per draw")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2],
                        help="one draw per seed: the first is the one the thresholds were tuned on, the rest held out")
    parser.add_argument("--holdout-seeds", type=int, nargs="+", default=None,
                        help="draws on the held-out corpus (default: the first of --seeds)")
    parser.add_argument("--scan-images", type=int, default=SCAN_IMAGES,
                        help="distinct pictures per corpus for the `imgdedup scan` measure (each gets one planted "
                             "copy); 0 skips it")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--write-docs", type=Path, default=Path("docs/accuracy.md"),
                        help="markdown report to (over)write, keeping its hand-written part; '-' to skip")


def main(args: argparse.Namespace) -> int:
    run(args.corpus, args.originals, args.negatives, args.seeds, args.workers,
        None if str(args.write_docs) == "-" else args.write_docs, holdout=args.holdout_corpus,
        holdout_seeds=args.holdout_seeds, scan_images=args.scan_images)
    return 0
