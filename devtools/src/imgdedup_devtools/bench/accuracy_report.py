"""What `imgdedup bench accuracy` counts per draw, and how it is printed and written:
tallies per family and variant, the summary rows, the markdown document."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from imgdedup.decisions.rules import CheckVerdict
from imgdedup_devtools.bench.variants import NON_GEOMETRIC

#: Baseline columns and their thresholds (brute-force searches over the originals).
BASELINES = {"pHash<=10": 10, "dHash<=10": 10, "PDQ<=31": 31}
COLUMNS = ("ours", "ours_incl_review", *BASELINES)
#: Families queried a second time with IMGDEDUP_MATCH_ROTATIONS on get this suffix; the
#: baselines in those rows are the same plain searches, for comparison.
ROTATION_MODE = " (rotation mode)"
ALL_COUNTED = " (all counted)"
MATCHING_A_PARTNER = " (matching a partner: same pixels, same picture or star family)"
LOOKALIKES_MODULE = "devtools/src/imgdedup_devtools/bench/lookalikes.py"


@dataclass
class Tally:
    """Queries of one row, and how many each column counts."""

    queries: int = 0
    ours_duplicate: int = 0
    ours_review: int = 0
    baselines: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, verdict: CheckVerdict, ours_counts: bool, baselines_found: list[str]) -> None:
        """One query: ours counts its `duplicate` or `review` answer when `ours_counts`
        (the image it names is one this row counts); each baseline in `baselines_found`
        counts."""
        self.queries += 1
        if ours_counts:
            if verdict == CheckVerdict.DUPLICATE:
                self.ours_duplicate += 1
            elif verdict == CheckVerdict.REVIEW:
                self.ours_review += 1
        for name in baselines_found:
            self.baselines[name] += 1

    def rates(self) -> dict[str, float]:
        """Share of the queries each column counts, rounded as reported."""
        n = max(self.queries, 1)
        return {
            "ours": round(self.ours_duplicate / n, 4),
            "ours_incl_review": round((self.ours_duplicate + self.ours_review) / n, 4),
            **{name: round(self.baselines[name] / n, 4) for name in BASELINES},
        }

    def as_dict(self) -> dict[str, int | float]:
        return {"queries": self.queries, **self.rates()}


@dataclass(frozen=True)
class FalsePositive:
    """A never-registered image ours answered `duplicate` or `review` for."""

    query: str
    variant: str
    matched: str | None
    distance: int | None
    similarity: float | None
    verdict: str
    counted_apart: bool

    def sort_key(self) -> tuple[bool, bool, int, str, str]:
        """Duplicates first, those counted apart last among them, nearest first."""
        distance = -1 if self.distance is None else self.distance
        return self.verdict != CheckVerdict.DUPLICATE.value, self.counted_apart, distance, self.query, self.variant


@dataclass
class Draw:
    """The figures of one seed's draw of originals and negatives."""

    seed: int
    originals: int
    negatives: int
    skipped: int
    families: dict[str, Tally]
    variants: dict[str, Tally]
    indexed_codes_per_kept_image: float
    record_json_bytes_per_kept_image: int
    originals_judged_duplicate: list[tuple[str, str]]
    false_positives: list[FalsePositive]
    seconds: float = 0.0

    def summary(self) -> dict[str, dict[str, float]]:
        """The headline rows, each pooled over the families it names."""
        rates = {name: tally.rates() for name, tally in self.families.items()}

        def pooled(names: tuple[str, ...], column: str) -> float:
            present = [name for name in names if name in rates]
            total = sum(self.families[name].queries for name in present)
            hits = sum(rates[name][column] * self.families[name].queries for name in present)
            return round(hits / max(total, 1), 4)

        rows = {
            "non_geometric_recall": NON_GEOMETRIC,
            "crop_recall": ("crop",),
            "overlay_recall": ("overlay",),
            "geometric_recall": ("geometric",),
            "false_positive_rate": ("negative",),
            "false_positive_rate_all_counted": (f"negative{ALL_COUNTED}",),
            "geometric_recall_rotation_mode": (f"geometric{ROTATION_MODE}",),
            "false_positive_rate_rotation_mode": (f"negative{ROTATION_MODE}",),
        }
        return {row: {column: pooled(names, column) for column in COLUMNS} for row, names in rows.items()}

    def as_dict(self) -> dict[str, object]:
        """The machine-readable figures (the JSON line)."""
        return {
            "seed": self.seed, "originals": self.originals, "negatives": self.negatives, "skipped": self.skipped,
            "seconds": self.seconds, "summary": self.summary(),
            "families": {name: tally.as_dict() for name, tally in sorted(self.families.items())},
            "indexed_codes_per_kept_image": self.indexed_codes_per_kept_image,
            "record_json_bytes_per_kept_image": self.record_json_bytes_per_kept_image,
        }


# --- console -------------------------------------------------------------------------------
def print_draw(draw: Draw) -> None:
    print(f"seed {draw.seed}: {draw.originals} originals, {draw.negatives} negatives, {draw.skipped} files skipped, "
          f"{draw.seconds} s")
    print(f"{'family':<14}{'queries':>8}" + "".join(f"{c:>18}" for c in COLUMNS))
    for family, tally in sorted(draw.families.items()):
        rates = tally.rates()
        print(f"{family:<14}{tally.queries:>8}" + "".join(f"{rates[c]:>18.3f}" for c in COLUMNS))
    for name, values in draw.summary().items():
        print(f"{name:<36}" + "  ".join(f"{c}={values[c]:.3f}" for c in COLUMNS))
    print(f"index footprint: {draw.indexed_codes_per_kept_image} indexed codes and "
          f"{draw.record_json_bytes_per_kept_image} record bytes per kept image")


# --- markdown ------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunInfo:
    """What the document's opening line says about the run."""

    command: str
    date: str
    machine: str
    corpus: str
    duplicate_radius: int
    review_radius: int
    workers: int


def draw_title(index: int, seed: int) -> str:
    return f"Seed {seed} (" + ("the draw the thresholds were tuned on" if index == 0 else "held out") + ")"


def markdown(draws: list[Draw], run: RunInfo) -> str:
    seeds = ", ".join(str(draw.seed) for draw in draws)
    lines = [
        "# Near-duplicate accuracy",
        "",
        f"Written by `{run.command}` on {run.date} ({run.machine}). Corpus: `{run.corpus}` built by "
        f"`../shared/bench/build-corpus`, one draw per seed ({seeds}): the thresholds were tuned on the first "
        "draw, the others are held out. In each draw the originals are registered through the "
        "service's code path (hashing pool, in-memory index, decision rules; duplicate radius "
        f"{run.duplicate_radius}, review radius {run.review_radius}) and distinct images are never registered. "
        "Recall rows: share of variants answered `duplicate` of their original "
        "(imgdedup) or with their original within the threshold (baselines, brute force). The `negative` row is "
        "the false-positive rate: share of never-registered images (raw, and halved at JPEG q50) that matched "
        "anything other than its partner: a registered original with the same pixels (an identical file or a "
        "resize of it under another name: at 16x16 RGB no pixel differs by more than 16 of 255, nor by more "
        "than half the picture's spread), the same picture drawn twice (pairs reviewed by eye) or, for a member "
        "of the generated star polygon family (thin-line rings that differ in width), another member "
        f"(`{LOOKALIKES_MODULE}`). Matches with a partner are counted in a row of their own; the `all counted` "
        "row counts every match as a false positive.",
    ]
    for index, draw in enumerate(draws):
        lines += ["", f"## {draw_title(index, draw.seed)}", ""]
        lines += _draw_markdown(draw, run.workers)
    lines.append("")
    return "\n".join(lines)


def _draw_markdown(draw: Draw, workers: int) -> list[str]:
    header = "| family | queries | imgdedup | imgdedup incl. review | " + " | ".join(BASELINES) + " |"
    rule = "|---" * (2 + len(COLUMNS)) + "|"

    def row(label: str, tally: Tally) -> str:
        rates = tally.rates()
        return f"| {label} | {tally.queries} | " + " | ".join(f"{rates[c]:.3f}" for c in COLUMNS) + " |"

    lines = [
        f"{draw.originals} originals registered, {draw.negatives} distinct images never registered.",
        "",
        "### Summary",
        "",
        "| measure | " + " | ".join(COLUMNS) + " |",
        "|---" * (1 + len(COLUMNS)) + "|",
    ]
    for name, values in draw.summary().items():
        lines.append(f"| {name.replace('_', ' ')} | " + " | ".join(f"{values[c]:.3f}" for c in COLUMNS) + " |")
    lines += ["", "### Per family", "", header, rule]
    lines += [row(family, tally) for family, tally in sorted(draw.families.items())]
    lines += ["", "### Per variant", "", header.replace("family", "variant"), rule]
    lines += [row(variant, tally) for variant, tally in sorted(draw.variants.items())]
    lines += [
        "",
        f"Index footprint: {draw.indexed_codes_per_kept_image} indexed codes and "
        f"{draw.record_json_bytes_per_kept_image} bytes of JSON record per kept image.",
        "",
        "### Inspect before counting",
        "",
        f"Originals judged duplicates of another original at registration: {len(draw.originals_judged_duplicate)} "
        "(a real near-duplicate in the corpus, or a false positive of ours):",
    ]
    lines += [f"- `{a}` -> `{b}`" for a, b in draw.originals_judged_duplicate[:15]]
    called = [fp for fp in draw.false_positives if fp.verdict == CheckVerdict.DUPLICATE.value]
    lines += ["", f"Negatives ours called `duplicate` ({len(called)}; those counted apart marked; another "
              f"{len(draw.false_positives) - len(called)} went to `review`):"]
    for fp in called:
        similarity = "" if fp.similarity is None else f", similarity {fp.similarity:.2f}"
        known = " - counted apart" if fp.counted_apart else ""
        lines.append(f"- `{fp.query}` ({fp.variant}) matched `{fp.matched}` at distance "
                     f"{fp.distance}{similarity} ({fp.verdict}){known}")
    lines += ["", f"Wall time {draw.seconds} s with {workers} worker processes."]
    return lines
