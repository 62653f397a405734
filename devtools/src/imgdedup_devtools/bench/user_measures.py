"""What users feel, counted per image by `imgdedup bench accuracy` (issue 12's protocol):

- a never-registered distinct image is *blocked* when any form of it sent to `check`
  (the file as stored, re-encoded, halved at JPEG q50) is judged `duplicate` of an image
  that is not its partner, and *sent to review* when the worst any form got is `review`;
- a distinct original is *refused at registration* when registering it, in order, is
  judged `duplicate` of an earlier original that is not its partner.

The baselines (brute force within their thresholds) are counted the same way: a distinct
image is blocked when any form has a non-partner original within the threshold, and an
original is refused when an earlier original the baseline kept is within it. Partners
(the same pixels, the same picture, star polygon family: `lookalikes`) are counted
apart; the `all counted` figures excuse nothing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from imgdedup.decisions.rules import CheckVerdict

#: Worst first wins: a form judged `duplicate` outweighs one judged `review`.
_RANK = {CheckVerdict.UNIQUE: 0, CheckVerdict.REVIEW: 1, CheckVerdict.DUPLICATE: 2}


@dataclass
class DistinctCount:
    """Never-registered distinct images: how many were blocked or sent to review."""

    images: int = 0
    duplicate: int = 0
    review: int = 0
    baselines: dict[str, int] = field(default_factory=dict)

    def share(self, column: str) -> float:
        """Share of the images `column` ("duplicate", "review" or a baseline) counts
        (not rounded: a target is judged on the exact share)."""
        hits = {"duplicate": self.duplicate, "review": self.review}.get(column, self.baselines.get(column, 0))
        return hits / max(self.images, 1)

    def as_dict(self) -> dict[str, object]:
        return {"images": self.images, "duplicate": self.duplicate, "review": self.review,
                "baselines": dict(self.baselines)}


class DistinctCounter:
    """Collects every form's answer per never-registered image, then counts images."""

    def __init__(self, baselines: Iterable[str]) -> None:
        self.baseline_names = tuple(baselines)
        self._worst: dict[str, CheckVerdict] = {}
        self._worst_all: dict[str, CheckVerdict] = {}
        self._found: dict[str, set[str]] = defaultdict(set)
        self._found_all: dict[str, set[str]] = defaultdict(set)
        self.blocking: dict[str, str] = {}  # image -> the non-partner ours named when blocking it

    def add_image(self, image: str) -> None:
        """Counts `image` even when none of its forms matches anything."""
        self._worst.setdefault(image, CheckVerdict.UNIQUE)
        self._worst_all.setdefault(image, CheckVerdict.UNIQUE)

    def add(self, image: str, verdict: CheckVerdict, named: str | None, partners: set[str],
            found: dict[str, set[str]]) -> None:
        """One form of `image`: ours answered `verdict` naming `named`; `found` holds, per
        baseline, the originals within its threshold."""
        self.add_image(image)
        if _RANK[verdict] > _RANK[self._worst_all[image]]:
            self._worst_all[image] = verdict
        counted = verdict if named is not None and named not in partners else CheckVerdict.UNIQUE
        if _RANK[counted] > _RANK[self._worst[image]]:
            self._worst[image] = counted
            if counted == CheckVerdict.DUPLICATE and named is not None:
                self.blocking[image] = named
        for name, ids in found.items():
            if ids:
                self._found_all[image].add(name)
            if ids - partners:
                self._found[image].add(name)

    def count(self, *, all_counted: bool = False) -> DistinctCount:
        worst = self._worst_all if all_counted else self._worst
        found = self._found_all if all_counted else self._found
        return DistinctCount(
            images=len(worst),
            duplicate=sum(1 for v in worst.values() if v == CheckVerdict.DUPLICATE),
            review=sum(1 for v in worst.values() if v == CheckVerdict.REVIEW),
            baselines={name: sum(1 for image in worst if name in found.get(image, ())) for name in self.baseline_names},
        )


@dataclass
class Refusals:
    """Distinct originals refused at registration (judged `duplicate` of an earlier one)."""

    originals: int = 0
    #: (refused, the original it was called a duplicate of), partners left out
    ours: list[tuple[str, str]] = field(default_factory=list)
    #: refused as a duplicate of a partner (the same pixels or picture): counted apart
    ours_partner: list[tuple[str, str]] = field(default_factory=list)
    #: registered, but with verdict `review` (kept; a person is asked)
    ours_review: list[tuple[str, str]] = field(default_factory=list)
    baselines: dict[str, int] = field(default_factory=dict)
    baselines_all: dict[str, int] = field(default_factory=dict)

    def share(self, column: str, *, all_counted: bool = False) -> float:
        if column == "ours":
            hits = len(self.ours) + (len(self.ours_partner) if all_counted else 0)
        elif column == "ours_review":
            hits = len(self.ours_review)
        else:
            hits = (self.baselines_all if all_counted else self.baselines).get(column, 0)
        return hits / max(self.originals, 1)

    def as_dict(self) -> dict[str, object]:
        return {"originals": self.originals, "refused": len(self.ours), "refused_partner": len(self.ours_partner),
                "review": len(self.ours_review), "baselines": dict(self.baselines),
                "baselines_all": dict(self.baselines_all)}


def baseline_refusals(
    ids: list[str], codes: dict[str, np.ndarray], thresholds: dict[str, int],
    distance: Callable[[np.ndarray, np.ndarray], np.ndarray], is_partner: Callable[[str, str], bool],
) -> tuple[dict[str, int], dict[str, int]]:
    """Register `ids` in order into a brute-force index per baseline: an original within
    the threshold of one the baseline already kept is refused (and not kept). `codes[name]`
    holds one row per id; `distance(rows, row)` gives the distances of `rows` to `row`.
    Returns (refusals of a non-partner, refusals all counted) per baseline."""
    refused: dict[str, int] = {}
    refused_all: dict[str, int] = {}
    for name, threshold in thresholds.items():
        kept: list[int] = []
        refused[name] = refused_all[name] = 0
        for i in range(len(ids)):
            near = [kept[j] for j in np.flatnonzero(distance(codes[name][kept], codes[name][i]) <= threshold)] \
                if kept else []
            if not near:
                kept.append(i)
                continue
            refused_all[name] += 1
            if any(not is_partner(ids[i], ids[j]) for j in near):
                refused[name] += 1
    return refused, refused_all


def hamming(rows: np.ndarray, row: np.ndarray) -> np.ndarray:
    """Bit distance of each of `rows` (uint64 words per row) to `row`."""
    return np.bitwise_count(rows ^ row).reshape(len(rows), -1).sum(axis=1)


# --- issue 12's targets ----------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    key: str
    label: str
    at_most: bool  # the measured share must be <= `bound` (else >=)
    bound: float | None  # None: reported, no target

    def met(self, value: float) -> bool | None:
        if self.bound is None:
            return None
        return value <= self.bound if self.at_most else value >= self.bound

    def describe(self) -> str:
        if self.bound is None:
            return "no target"
        return ("<= " if self.at_most else ">= ") + format_share(self.bound, recall=not self.at_most)


def format_share(value: float, *, recall: bool = False) -> str:
    """Recalls as 0.973, rates of false verdicts as percentages."""
    return f"{value:.3f}" if recall else f"{100 * value:.2f} %"


TARGETS = (
    Target("distinct_duplicate", "distinct images judged `duplicate` (never registered; any form)", True, 0.005),
    Target("distinct_review", "distinct images judged `review` (never registered; worst form)", True, 0.03),
    Target("originals_refused", "distinct originals refused at registration", True, None),
    Target("recall_encode_resize_colour_filter", "recall, encode / resize / colour / filter (non-geometric)",
           False, 0.97),
    Target("recall_overlay", "recall, overlays", False, 0.95),
    Target("recall_crop", "recall, crops", False, 0.90),
    Target("scan_merged", "`imgdedup scan`: distinct originals merged with another original", True, 0.01),
)
