"""What `imgdedup bench accuracy` counts per draw, and how it is printed and written:
tallies per family and variant, what users feel (distinct images blocked or sent to
review, originals refused, recall per family), the summary rows, the markdown document."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from imgdedup.decisions.rules import CheckVerdict
from imgdedup_devtools.bench.scan_accuracy import PLANTED, ScanMeasure
from imgdedup_devtools.bench.user_measures import TARGETS, DistinctCount, Refusals, Target, format_share
from imgdedup_devtools.bench.variants import ENCODE_RESIZE_COLOUR_FILTER, NON_GEOMETRIC, VARIANTS

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

    def hits(self, column: str) -> int:
        """How many queries `column` counts."""
        if column == "ours":
            return self.ours_duplicate
        if column == "ours_incl_review":
            return self.ours_duplicate + self.ours_review
        return self.baselines[column]

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
    refusals: Refusals
    distinct: DistinctCount
    distinct_all_counted: DistinctCount
    #: never-registered image -> the non-partner original ours blocked it as a copy of
    blocked: dict[str, str]
    false_positives: list[FalsePositive]
    seconds: float = 0.0

    def pooled(self, families: tuple[str, ...], column: str) -> float:
        """Share of the queries of `families` that `column` counts (not rounded)."""
        present = [name for name in families if name in self.families]
        total = sum(self.families[name].queries for name in present)
        hits = sum(self.families[name].hits(column) for name in present)
        return hits / max(total, 1)

    def user_measures(self) -> dict[str, dict[str, float]]:
        """Issue 12's measures, per column: ours (`duplicate` verdicts) and the baselines."""
        recall = {"recall_encode_resize_colour_filter": ENCODE_RESIZE_COLOUR_FILTER, "recall_overlay": ("overlay",),
                  "recall_crop": ("crop",)}
        out: dict[str, dict[str, float]] = {
            "distinct_duplicate": {"ours": self.distinct.share("duplicate"),
                                   **{b: self.distinct.share(b) for b in BASELINES}},
            "distinct_review": {"ours": self.distinct.share("review")},
            "originals_refused": {"ours": self.refusals.share("ours"),
                                  **{b: self.refusals.share(b) for b in BASELINES}},
        }
        for key, families in recall.items():
            out[key] = {"ours": self.pooled(families, "ours"), **{b: self.pooled(families, b) for b in BASELINES}}
        return out

    def summary(self) -> dict[str, dict[str, float]]:
        """The headline rows, each pooled over the families it names."""
        rows = {
            "encode_resize_colour_filter_recall": ENCODE_RESIZE_COLOUR_FILTER,
            "non_geometric_recall": NON_GEOMETRIC,
            "crop_recall": ("crop",),
            "overlay_recall": ("overlay",),
            "geometric_recall": ("geometric",),
            "false_positive_rate": ("negative",),
            "false_positive_rate_all_counted": (f"negative{ALL_COUNTED}",),
            "geometric_recall_rotation_mode": (f"geometric{ROTATION_MODE}",),
            "false_positive_rate_rotation_mode": (f"negative{ROTATION_MODE}",),
        }
        return {row: {column: self.pooled(names, column) for column in COLUMNS} for row, names in rows.items()}

    def as_dict(self) -> dict[str, object]:
        """The machine-readable figures (the JSON line)."""
        return {
            "seed": self.seed, "originals": self.originals, "negatives": self.negatives, "skipped": self.skipped,
            "seconds": self.seconds, "user_measures": _rounded(self.user_measures()), "summary": _rounded(self.summary()),
            "distinct": self.distinct.as_dict(), "distinct_all_counted": self.distinct_all_counted.as_dict(),
            "refusals": self.refusals.as_dict(),
            "families": {name: tally.as_dict() for name, tally in sorted(self.families.items())},
            "indexed_codes_per_kept_image": self.indexed_codes_per_kept_image,
            "record_json_bytes_per_kept_image": self.record_json_bytes_per_kept_image,
        }


def _rounded(table: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {row: {column: round(value, 4) for column, value in values.items()} for row, values in table.items()}


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
    for name, values in draw.user_measures().items():
        print(f"{name:<36}" + "  ".join(f"{c}={v:.4f}" for c, v in values.items()))
    d, r = draw.distinct, draw.refusals
    print(f"distinct never registered: {d.duplicate} of {d.images} judged duplicate, {d.review} review; "
          f"originals refused at registration: {len(r.ours)} of {r.originals} (+{len(r.ours_partner)} partners), "
          f"{len(r.ours_review)} registered as review")
    print(f"index footprint: {draw.indexed_codes_per_kept_image} indexed codes and "
          f"{draw.record_json_bytes_per_kept_image} record bytes per kept image")


def print_scan(label: str, measure: ScanMeasure) -> None:
    print(f"scan, {label}: {measure.originals} originals + {measure.copies} planted copies: "
          f"{len(measure.merged)} originals merged with another original ({len(measure.merged_all_counted)} all "
          f"counted), {measure.in_review_with_other} in a review group with another; copies clustered with their "
          f"original {measure.recall():.3f}; {measure.seconds} s")


# --- markdown ------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunInfo:
    """What the document's opening line says about the run."""

    command: str
    date: str
    machine: str
    duplicate_radius: int
    review_radius: int
    workers: int


@dataclass
class CorpusResult:
    """Every draw on one corpus, and its scan."""

    label: str
    path: str
    builder: str
    held_out: bool
    draws: list[Draw]
    scan: ScanMeasure | None = None


#: Kept across runs: the bench rewrites everything else of the document.
BY_HAND_BEGIN = "<!-- written by hand, kept by the bench: begin -->"
BY_HAND_END = "<!-- written by hand, kept by the bench: end -->"


def kept_by_hand(previous: str) -> str:
    """The hand-written part of the previous document, markers included ('' if none)."""
    start, end = previous.find(BY_HAND_BEGIN), previous.find(BY_HAND_END)
    if start < 0 or end < start:
        return ""
    return previous[start : end + len(BY_HAND_END)]


def draw_title(corpus: CorpusResult, index: int, seed: int) -> str:
    if corpus.held_out:
        return f"{corpus.label}, seed {seed}"
    return f"{corpus.label}, seed {seed} (" + ("tuned on" if index == 0 else "another draw") + ")"


def _cell(target: Target, draw: Draw, scan: ScanMeasure | None, first: bool) -> str:
    if target.key == "scan_merged":
        if scan is None or not first:
            return "-"
        value, detail = scan.merged_share(), f" ({len(scan.merged)} of {scan.originals})"
    elif target.key == "distinct_duplicate":
        value, detail = draw.distinct.share("duplicate"), f" ({draw.distinct.duplicate} of {draw.distinct.images})"
    elif target.key == "distinct_review":
        value, detail = draw.distinct.share("review"), f" ({draw.distinct.review} of {draw.distinct.images})"
    elif target.key == "originals_refused":
        value, detail = draw.refusals.share("ours"), f" ({len(draw.refusals.ours)} of {draw.refusals.originals})"
    else:
        value, detail = draw.user_measures()[target.key]["ours"], ""
    met = target.met(value)
    verdict = "" if met is None else (": met" if met else ": **not met**")
    shown = format_share(value, recall=not target.at_most)
    if met is False and target.bound is not None and shown == format_share(target.bound, recall=not target.at_most):
        shown = f"{value:.4f}" if not target.at_most else f"{100 * value:.3f} %"  # a miss never reads as the bound
    return shown + detail + verdict


def markdown(corpora: list[CorpusResult], run: RunInfo, by_hand: str = "") -> str:
    columns = [(corpus, index, draw) for corpus in corpora for index, draw in enumerate(corpus.draws)]
    lines = [
        "# Near-duplicate accuracy",
        "",
        f"Written by `{run.command}` on {run.date} ({run.machine}); every figure below is that command's output. "
        f"Default settings (duplicate radius {run.duplicate_radius}, review radius {run.review_radius}).",
        "",
        "Corpora: " + "; ".join(f"**{c.label}**: `{c.path}`, built by `{c.builder}`" for c in corpora) + ". "
        "The matching was tuned on the first draw of the first corpus; the held-out corpus is never tuned on.",
        "",
        "Protocol (issue 12). Per draw, distinct images are split in two: the *originals* are registered one by "
        "one through the service's code path (hashing pool, in-memory index, decision rules: what "
        "`POST /v1/namespaces/{ns}/images/{id}` runs), the others are never registered. Each original is then "
        f"checked (`/check`'s path) in {len([v for v in VARIANTS if v[0] != 'geometric'])} non-geometric variants "
        "and 3 geometric ones; each never-registered image in 3 forms (the file as stored, re-encoded as JPEG q88, "
        "halved at JPEG q50). The baselines (ImageHash pHash and dHash at distance <= 10, PDQ at <= 31) are "
        "brute-force searches over the same originals, on the same bytes, in the same run.",
        "",
        "- *distinct judged `duplicate`*: never-registered images any form of which was answered `duplicate` "
        "of an original (baselines: any form within the threshold of an original). *`review`*: those whose "
        "worst answer was `review`.",
        "- *originals refused at registration*: originals registered, in order, as `duplicate` of an earlier one "
        "(baselines: within the threshold of an earlier original they kept).",
        "- *recall*: share of variants answered `duplicate` naming their original (baselines: their original "
        "within the threshold). *encode / resize / colour / filter* is the issue's \"non-geometric\" family.",
        "- *partners*: the first corpus is not de-duplicated. A match between two files with the same pixels "
        "(identical, or one a resize of the other), the same picture drawn twice (pairs reviewed by eye) or two "
        f"members of the generated star polygon family (`{LOOKALIKES_MODULE}`) is not counted as a false "
        "verdict; the `all counted` figures in the detail excuse nothing. The held-out corpus has no such pairs "
        "by construction.",
        "",
        "## At a glance: issue 12's targets",
        "",
        "| measure | target | " + " | ".join(draw_title(c, i, d.seed) for c, i, d in columns) + " |",
        "|---|---" + "|---" * len(columns) + "|",
    ]
    for target in TARGETS:
        lines.append(f"| {target.label} | {target.describe()} | "
                     + " | ".join(_cell(target, d, c.scan, i == 0) for c, i, d in columns) + " |")
    lines += ["", "## imgdedup against the baselines, same run", "",
              "| draw | measure | imgdedup | " + " | ".join(BASELINES) + " |",
              "|---|---|---" + "|---" * len(BASELINES) + "|"]
    for corpus, index, draw in columns:
        for target in TARGETS:
            values = draw.user_measures().get(target.key)
            if values is None:
                continue
            recall = not target.at_most
            lines.append(f"| {draw_title(corpus, index, draw.seed)} | {target.label} | "
                         + " | ".join(format_share(values[c], recall=recall) if c in values else "-"
                                      for c in ("ours", *BASELINES)) + " |")
    scans = [c for c in corpora if c.scan is not None]
    if scans:
        lines += ["", "## `imgdedup scan` on distinct pictures with planted copies", "",
                  f"Each corpus: distinct files of its first draw's selection, and one planted copy of each (kinds "
                  f"cycled: {', '.join(PLANTED)}), scanned end to end at default settings.", "",
                  "| corpus | originals | planted copies | originals merged with another original | all counted "
                  "| originals in a review group with another | copies clustered with their original | seconds |",
                  "|---|---|---|---|---|---|---|---|"]
        for corpus in scans:
            m = corpus.scan
            assert m is not None
            lines.append(f"| {corpus.label} | {m.originals} | {m.copies} | {len(m.merged)} "
                         f"({format_share(m.merged_share())}) | {len(m.merged_all_counted)} "
                         f"({format_share(m.merged_share(all_counted=True))}) | {m.in_review_with_other} | "
                         f"{m.recall():.3f} | {m.seconds} |")
        lines += ["", "Copies clustered with their own original, per kind:", "",
                  "| corpus | " + " | ".join(PLANTED) + " |", "|---" * (1 + len(PLANTED)) + "|"]
        for corpus in scans:
            m = corpus.scan
            assert m is not None
            lines.append(f"| {corpus.label} | " + " | ".join(
                f"{m.found[k][0]} of {m.found[k][1]}" if k in m.found else "-" for k in PLANTED) + " |")
        for corpus in scans:
            m = corpus.scan
            assert m is not None
            if m.examples:
                lines += ["", f"{corpus.label}: originals merged with another original (first 15):"]
                lines += [f"- `{a}` with " + ", ".join(f"`{o}`" for o in others[:3]) for a, others in m.examples[:15]]
    if by_hand:
        lines += ["", by_hand]
    for corpus, index, draw in columns:
        lines += ["", f"## Detail: {draw_title(corpus, index, draw.seed)}", ""]
        lines += _draw_markdown(draw, run.workers)
    lines.append("")
    return "\n".join(lines)


#: Lists in the detail are cut to this many lines.
MAX_LISTED = 40


def _draw_markdown(draw: Draw, workers: int) -> list[str]:
    header = "| family | queries | imgdedup | imgdedup incl. review | " + " | ".join(BASELINES) + " |"
    rule = "|---" * (2 + len(COLUMNS)) + "|"

    def row(label: str, tally: Tally) -> str:
        rates = tally.rates()
        return f"| {label} | {tally.queries} | " + " | ".join(f"{rates[c]:.3f}" for c in COLUMNS) + " |"

    d, a, r = draw.distinct, draw.distinct_all_counted, draw.refusals
    lines = [
        f"{draw.originals} originals registered, {draw.negatives} distinct images never registered, "
        f"{draw.skipped} corpus files skipped (unreadable or over the benchmark's pixel limit).",
        "",
        f"Never-registered images: {d.duplicate} judged `duplicate`, {d.review} `review` of {d.images} "
        f"(all counted: {a.duplicate} and {a.review}; baselines all counted: "
        + ", ".join(f"{b} {a.baselines.get(b, 0)}" for b in BASELINES) + "). "
        f"Originals refused at registration: {len(r.ours)} of {r.originals}, another {len(r.ours_partner)} as a "
        f"duplicate of a partner, {len(r.ours_review)} registered with verdict `review`; baselines all counted: "
        + ", ".join(f"{b} {r.baselines_all.get(b, 0)}" for b in BASELINES) + ".",
        "",
        "### Summary per query",
        "",
        "The `false positive rate` rows count queries (every form of every never-registered image), not images.",
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
        f"Originals refused at registration ({len(r.ours)}; then {len(r.ours_partner)} refused as a duplicate of "
        "a partner, marked):",
    ]
    refused = [(x, y, "") for x, y in r.ours] + [(x, y, " - partner") for x, y in r.ours_partner]
    lines += [f"- `{x}` -> `{y}`{mark}" for x, y, mark in refused[:MAX_LISTED]]
    if len(refused) > MAX_LISTED:
        lines.append(f"- ... and {len(refused) - MAX_LISTED} more")
    lines += ["", f"Never-registered images judged `duplicate` ({len(draw.blocked)}), with the original named:"]
    lines += [f"- `{x}` -> `{y}`" for x, y in list(draw.blocked.items())[:MAX_LISTED]]
    if len(draw.blocked) > MAX_LISTED:
        lines.append(f"- ... and {len(draw.blocked) - MAX_LISTED} more")
    called = [fp for fp in draw.false_positives if fp.verdict == CheckVerdict.DUPLICATE.value]
    lines += ["", f"Forms of never-registered images ours called `duplicate` ({len(called)}, those of a partner "
              f"marked; another {len(draw.false_positives) - len(called)} went to `review`):"]
    for fp in called[:MAX_LISTED]:
        similarity = "" if fp.similarity is None else f", similarity {fp.similarity:.2f}"
        known = " - partner" if fp.counted_apart else ""
        lines.append(f"- `{fp.query}` ({fp.variant}) matched `{fp.matched}` at distance "
                     f"{fp.distance}{similarity}{known}")
    if len(called) > MAX_LISTED:
        lines.append(f"- ... and {len(called) - MAX_LISTED} more")
    lines += ["", f"Wall time {draw.seconds} s with {workers} worker processes."]
    return lines
