"""What `imgdedup bench accuracy` counts as users feel it (issue 12): distinct images
blocked or sent to review, originals refused at registration, and `imgdedup scan`
merging distinct originals; on tiny generated pictures whose answers are known."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from imagegen import distinct_image, encode
from imgdedup_devtools.bench.accuracy import _evaluate, _prepare, select_files
from imgdedup_devtools.bench.accuracy_report import BY_HAND_BEGIN, BY_HAND_END, kept_by_hand
from imgdedup_devtools.bench.scan_accuracy import count_scan, measure_scan
from imgdedup_devtools.bench.user_measures import TARGETS, DistinctCount, DistinctCounter, baseline_refusals, hamming
from PIL import ImageEnhance

from imgdedup.config import Settings
from imgdedup.decisions.rules import CheckVerdict

DUP, REVIEW, UNIQUE = CheckVerdict.DUPLICATE, CheckVerdict.REVIEW, CheckVerdict.UNIQUE


def test_a_distinct_image_counts_once_at_its_worst_form_and_partners_are_excused():
    counter = DistinctCounter(["pHash<=10"])
    counter.add_image("never-matched")
    # forms of one image: unique, review, duplicate of a stranger -> blocked once
    counter.add("blocked", UNIQUE, None, set(), {"pHash<=10": set()})
    counter.add("blocked", REVIEW, "o1", set(), {"pHash<=10": set()})
    counter.add("blocked", DUP, "o2", set(), {"pHash<=10": {"o2"}})
    counter.add("blocked", DUP, "o3", set(), {"pHash<=10": {"o3"}})
    # review only
    counter.add("reviewed", REVIEW, "o1", set(), {"pHash<=10": set()})
    counter.add("reviewed", UNIQUE, None, set(), {"pHash<=10": set()})
    # a duplicate of its partner (the same pixels) is not a false verdict ...
    counter.add("copy-of-o1", DUP, "o1", {"o1"}, {"pHash<=10": {"o1"}})
    # ... but a review naming a stranger still is
    counter.add("copy-of-o2", DUP, "o2", {"o2"}, {"pHash<=10": {"o2"}})
    counter.add("copy-of-o2", REVIEW, "o3", {"o2"}, {"pHash<=10": {"o2"}})

    counted = counter.count()
    assert (counted.images, counted.duplicate, counted.review) == (5, 1, 2)
    assert counted.baselines == {"pHash<=10": 1}
    assert counted.share("duplicate") == 0.2
    assert counter.blocking == {"blocked": "o2"}
    everything = counter.count(all_counted=True)
    assert (everything.images, everything.duplicate, everything.review) == (5, 3, 1)
    assert everything.baselines == {"pHash<=10": 3}


def test_baseline_refusals_register_in_order_and_drop_the_refused():
    ids = ["a", "b", "c", "d"]
    codes = {"h": np.array([0b0000, 0b0001, 0b0011, 0b1111_0000], dtype=np.uint64)}
    # b is within 1 of a (refused, not kept); c is within 1 of b only, so it is kept
    refused, refused_all = baseline_refusals(ids, codes, {"h": 1}, hamming, lambda x, y: False)
    assert refused == refused_all == {"h": 1}
    # a partner refusal counts only in the "all counted" figure
    refused, refused_all = baseline_refusals(ids, codes, {"h": 1}, hamming, lambda x, y: {x, y} == {"a", "b"})
    assert (refused, refused_all) == ({"h": 0}, {"h": 1})
    # PDQ-like rows of several words
    wide = {"h": np.array([[0, 0], [0, 3], [7, 0]], dtype=np.uint64)}
    assert baseline_refusals(["a", "b", "c"], wide, {"h": 2}, hamming, lambda x, y: False)[0] == {"h": 1}


def test_count_scan_finds_originals_merged_with_other_originals():
    originals = {"o/a.png": "a.png", "o/b.png": "b.png", "o/c.png": "c.png", "o/d.png": "d.png", "o/e.png": "e.png"}
    copies = {"c/a.jpg": ("a.png", "exact"), "c/b.jpg": ("b.png", "resize/half"),
              "c/c.jpg": ("c.png", "exact"), "c/e.jpg": ("e.png", "resize/half")}
    clusters = [
        ["o/a.png", "c/a.jpg"],             # a and its copy: right
        ["o/b.png", "c/c.jpg"],             # b with c's copy: b merged; c's copy misplaced
        ["o/d.png", "o/e.png", "c/e.jpg"],  # two originals: d and e merged (partners)
    ]
    review = [["o/c.png", "o/a.png"]]
    measure = count_scan(clusters, review, originals, copies, lambda x, y: {x, y} == {"d.png", "e.png"})
    assert measure.merged == ["b.png"]
    assert measure.merged_all_counted == ["b.png", "d.png", "e.png"]
    assert measure.merged_share() == 0.2
    assert measure.in_review_with_other == 2
    assert measure.found == {"exact": (1, 2), "resize/half": (1, 2)}
    assert measure.recall() == 0.5


def test_targets_report_met_and_not_met():
    target = {t.key: t for t in TARGETS}
    assert target["distinct_duplicate"].met(0.005) and not target["distinct_duplicate"].met(0.006)
    assert target["recall_crop"].met(0.9) and not target["recall_crop"].met(0.899)
    assert target["originals_refused"].met(0.5) is None
    # judged on the exact share: 3 of 598 is 0.502 %, over 0.5 % however it is rounded
    assert not target["distinct_duplicate"].met(DistinctCount(images=598, duplicate=3).share("duplicate"))


def test_the_hand_written_part_is_kept():
    previous = f"# old\n\nfigures\n\n{BY_HAND_BEGIN}\n## Checked by eye\n\nnotes\n{BY_HAND_END}\n\nmore figures\n"
    assert kept_by_hand(previous) == f"{BY_HAND_BEGIN}\n## Checked by eye\n\nnotes\n{BY_HAND_END}"
    assert kept_by_hand("# no markers") == ""


def test_held_out_selection_takes_every_genre_into_both_sets(tmp_path: Path):
    for genre, count in (("dark", 6), ("flags", 6), ("icons", 2)):
        (tmp_path / genre).mkdir()
        for i in range(count):
            (tmp_path / genre / f"{genre}-{i}.png").write_bytes(b"")
    (tmp_path / ".debs").mkdir()
    (tmp_path / ".debs" / "hidden.png").write_bytes(b"")
    originals, negatives = select_files(tmp_path, 5, 5, seed=1)
    assert len(originals) == len(negatives) == 5
    assert not set(originals) & set(negatives)
    for chosen in (originals, negatives):
        assert {p.parent.name for p in chosen} == {"dark", "flags", "icons"}
    assert select_files(tmp_path, 5, 5, seed=1) == (originals, negatives)


def _brighter(seed: int, factor: float):
    return ImageEnhance.Brightness(distinct_image(seed)).enhance(factor)


@pytest.fixture(scope="module")
def draw(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("corpus")
    files = {
        "o1.jpg": encode(distinct_image(101)),
        "o2.jpg": encode(distinct_image(102)),
        "o3-brighter-o1.jpg": encode(_brighter(101, 1.25)),  # not o1's pixels: a refusal of ours
        "n1.jpg": encode(distinct_image(103)),
        "n2-same-file-as-o2.jpg": encode(distinct_image(102)),  # a partner: excused
        "n3-contrast-o1.jpg": encode(ImageEnhance.Contrast(distinct_image(101)).enhance(1.3)),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    prepared = [_prepare((str(folder / name), "original" if name.startswith("o") else "negative")) for name in files]
    return asyncio.run(_evaluate(prepared, Settings.from_env({}), 1, seed=0))


def test_a_draw_counts_refusals_blocked_images_and_partners(draw):
    assert draw.refusals.originals == 3
    assert draw.refusals.ours == [("o3-brighter-o1.jpg", "o1.jpg")]
    assert draw.distinct.images == 3
    assert draw.distinct.duplicate == 1  # n3; n2 matched its partner
    assert draw.blocked == {"n3-contrast-o1.jpg": "o1.jpg"}
    assert draw.distinct_all_counted.duplicate == 2
    for baseline, found in draw.distinct_all_counted.baselines.items():
        assert found == draw.distinct.baselines[baseline] + 1, baseline  # n2's exact copy, excused
    measures = draw.user_measures()
    assert measures["distinct_duplicate"]["ours"] == 1 / 3
    # recall: o1, o2 and the refused o3 (whose variants name o1) all count
    assert measures["recall_encode_resize_colour_filter"]["ours"] >= 0.9
    assert draw.families["crop"].queries == 3 * 8


def test_scan_measure_merges_a_brightened_original_with_its_source(tmp_path: Path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(encode(distinct_image(201)))
    (folder / "b.jpg").write_bytes(encode(distinct_image(202)))
    (folder / "c-brighter-a.jpg").write_bytes(encode(_brighter(201, 1.25)))
    measure = measure_scan(sorted(folder.iterdir()), workers=1)
    assert (measure.originals, measure.copies) == (3, 3)
    assert measure.merged == ["a.jpg", "c-brighter-a.jpg"]
    assert sum(found for found, _ in measure.found.values()) == 3
