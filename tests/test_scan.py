"""`imgdedup scan` on a folder: clusters, keepers, bytes, exports, unreadable files,
registration into the service's index, and the cluster rules on synthetic codes."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import flip_bits, make_fingerprint, random_code
from scan_helpers import (
    build_estate,
    checkpoint_rows,
    cluster_of,
    comparable,
    groups,
    many_images,
    options,
    read_csv,
    read_json,
    run,
    scan_settings,
)

from imgdedup import cli as service_cli
from imgdedup.decisions.deduplicator import Deduplicator
from imgdedup.decisions.rules import Policy
from imgdedup.fingerprint import ImageLimits
from imgdedup.hasher import Hasher
from imgdedup.index.memory import MemoryIndex
from imgdedup.index.redis.index import RedisMihIndex
from imgdedup.metrics import Metrics
from imgdedup.scan import ScanError, scan
from imgdedup.scan.checkpoint import decode_fingerprint, encode_fingerprint
from imgdedup.scan.cluster import (
    ScannedImage,
    build_clusters,
    classify,
    keeper_sort_key,
    parse_keeper,
)
from imgdedup.scan.html import format_total
from imgdedup.scan.progress import Progress, format_duration
from imgdedup.scan.report import CSV_COLUMNS, GB
from imgdedup.scan.sources import list_folder

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def estate(tmp_path_factory: pytest.TempPathFactory):
    return build_estate(tmp_path_factory.mktemp("estate") / "estate")


@pytest.fixture(scope="module")
def scanned(estate, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("out")
    return run(estate.root, out)


# --- folder scan: clusters, unreadable, skipped ------------------------------------------


def test_planted_copies_are_clustered_with_their_originals(estate, scanned) -> None:
    report = scanned.report
    where = cluster_of(report)
    for original, copy in estate.same_cluster:
        assert original in where and copy in where, f"{original} / {copy} not in any cluster"
        assert where[original] == where[copy], f"{original} and {copy} are in different clusters"
    for key in estate.distinct:
        assert key not in where, f"unrelated {key} was clustered"
    exact = next(m for c in report["clusters"] for m in c["members"] if m["key"] == estate.exact[1])
    assert exact["match"] == "exact" and exact["distance"] == 0
    assert exact["sha256"] == next(m["sha256"] for c in report["clusters"] for m in c["members"]
                                   if m["key"] == estate.exact[0])


def test_unreadable_files_are_listed_with_their_reason_and_never_fatal(estate, scanned) -> None:
    report = scanned.report
    unreadable = {u["key"]: u for u in report["unreadable"]}
    assert set(unreadable) == set(estate.unreadable)
    for key, code in estate.unreadable.items():
        assert unreadable[key]["error"] == code
        assert unreadable[key]["detail"]
        assert unreadable[key]["uri"] == str(estate.root / key)
    assert [s["key"] for s in report["skipped"]] == estate.skipped
    assert "not an image file extension" in report["skipped"][0]["reason"]
    totals = report["totals"]
    assert totals["images"] == len(estate.images)
    assert totals["unreadable"] == len(estate.unreadable)
    assert totals["files"] == len(estate.images) + len(estate.unreadable)
    assert totals["skipped"] == 1


def test_keeper_is_the_largest_then_oldest_and_distances_are_to_the_keeper(estate, scanned) -> None:
    for cluster in scanned.report["clusters"]:
        keeper, *others = cluster["members"]
        assert keeper["role"] == "keeper" and cluster["keeper"] == keeper["key"]
        assert keeper["key"].startswith("originals/"), cluster  # originals: largest or, on ties, oldest
        for member in others:
            assert member["role"] == "duplicate"
            assert member["duplicate_of"] == keeper["key"]
            assert member["width"] * member["height"] <= keeper["width"] * keeper["height"]
            if member["match"] == "near":
                assert 0 <= member["distance"] <= scanned.report["settings"]["duplicate_radius"]


def test_reclaimable_bytes_and_savings_arithmetic(estate, scanned) -> None:
    report = scanned.report
    totals = report["totals"]
    reclaimable = 0
    for cluster in report["clusters"]:
        duplicates = cluster["members"][1:]
        assert cluster["reclaimable_bytes"] == sum(len(estate.files[m["key"]]) for m in duplicates)
        assert cluster["members"][0]["reclaimable_bytes"] == 0
        assert cluster["bytes"] == sum(m["size_bytes"] for m in cluster["members"])
        reclaimable += cluster["reclaimable_bytes"]
    assert totals["reclaimable_bytes"] == reclaimable
    assert totals["bytes"] == sum(len(estate.files[k]) for k in estate.images)
    assert totals["reclaimable_gb"] == round(reclaimable / GB, 3)
    assert totals["monthly_saving_min"] == round(reclaimable / GB * 0.18, 2)
    assert totals["monthly_saving_max"] == round(reclaimable / GB * 0.25, 2)
    assert totals["duplicates"] == sum(c["size"] - 1 for c in report["clusters"])
    assert totals["duplicate_share"] == round(totals["duplicates"] / totals["images"], 4)
    assert totals["exact_duplicates"] + totals["near_duplicates"] == totals["duplicates"]
    clusters = sorted(report["clusters"], key=lambda c: -c["reclaimable_bytes"])
    assert [c["id"] for c in clusters] == list(range(1, len(clusters) + 1)), "sorted by reclaimable bytes"


def test_savings_use_the_configured_prices(estate, tmp_path: Path) -> None:
    run(estate.root, tmp_path)
    result = run(estate.root, tmp_path, price_min=1.5, price_max=2.0, currency="US$")
    totals = result.report["totals"]
    gb = totals["reclaimable_bytes"] / GB
    assert (totals["monthly_saving_min"], totals["monthly_saving_max"]) == (round(gb * 1.5, 2), round(gb * 2.0, 2))
    assert totals["currency"] == "US$"
    assert result.hashed == 0, "a second scan into a folder with a checkpoint reuses it"


def test_csv_and_json_exports_agree(scanned) -> None:
    report = read_json(scanned.out / "clusters.json")
    assert comparable(report) == comparable(json.loads(json.dumps(scanned.report)))
    rows = read_csv(scanned.out / "clusters.csv")
    assert tuple(rows[0].keys()) == CSV_COLUMNS
    members = [(str(c["id"]), m) for c in report["clusters"] for m in c["members"]]
    members += [(f"R{g['id']}", m) for g in report["review"] for m in g["members"]]
    assert len(rows) == len(members)
    for row, (cluster_id, m) in zip(rows, members):
        assert row["cluster"] == cluster_id
        assert (row["key"], row["role"], row["uri"], row["sha256"]) == (m["key"], m["role"], m["uri"], m["sha256"])
        assert int(row["size_bytes"]) == m["size_bytes"]
        assert row["distance"] == ("" if m["distance"] is None else str(m["distance"]))
    deletable = [r for r in rows if r["role"] == "duplicate"]
    assert sum(int(r["reclaimable_bytes"]) for r in deletable) == report["totals"]["reclaimable_bytes"]
    assert len(deletable) == report["totals"]["duplicates"]


def test_report_files_are_written(scanned) -> None:
    for name in ("report.html", "clusters.json", "clusters.csv", "checkpoint.sqlite"):
        assert (scanned.out / name).stat().st_size > 0
    page = (scanned.out / "report.html").read_text()
    assert "http://" not in page and "https://" not in page, "the report must not load anything from the network"
    totals = scanned.report["totals"]
    for name in ("images", "duplicates", "reclaimable_gb", "monthly_saving_min", "monthly_saving_max"):
        assert f'data-total="{name}" data-value="{json.dumps(totals[name])}">{format_total(name, totals)}<' in page


def test_changed_file_is_hashed_again_and_only_it(estate, tmp_path: Path) -> None:
    root = tmp_path / "estate"
    for key, data in estate.files.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(data)
    first = run(root, tmp_path / "out")
    assert first.hashed == len(estate.files) - len(estate.skipped) and first.reused == 0
    copy = root / "copies/chelsea-q40.jpg"
    copy.write_bytes((root / "originals/chelsea.jpg").read_bytes())  # now an exact copy
    os.utime(copy, (time.time() + 100, time.time() + 100))  # the newest file: not the keeper
    second = run(root, tmp_path / "out")
    assert second.hashed == 1 and second.reused == first.hashed - 1
    member = next(m for c in second.report["clusters"] for m in c["members"] if m["key"] == "copies/chelsea-q40.jpg")
    assert member["match"] == "exact"
    hashes = {key: n for key, _ok, n in checkpoint_rows(tmp_path / "out")}
    assert hashes["copies/chelsea-q40.jpg"] == 2 and set(hashes.values()) == {1, 2}


def test_links_to_one_file_are_not_counted_twice(estate, tmp_path: Path) -> None:
    root = tmp_path / "estate"
    root.mkdir()
    data = estate.files["originals/coffee.jpg"]
    (root / "coffee.jpg").write_bytes(data)
    (root / "coffee-copy.jpg").write_bytes(data)  # a real copy: its bytes are reclaimable
    os.link(root / "coffee-copy.jpg", root / "coffee-hardlink.jpg")  # the same file again
    (root / "coffee-symlink.jpg").symlink_to(root / "coffee.jpg")  # the keeper's file again
    (root / "dangling.jpg").symlink_to(root / "missing.jpg")
    os.utime(root / "coffee.jpg", (1_500_000_000, 1_500_000_000))
    report = run(root, tmp_path / "out").report
    [cluster] = report["clusters"]
    members = {m["key"]: m for m in cluster["members"]}
    assert cluster["keeper"] == "coffee.jpg"
    assert cluster["reclaimable_bytes"] == len(data), "only one extra stored file"
    assert members["coffee-symlink.jpg"]["reclaimable_bytes"] == 0
    assert members["coffee-symlink.jpg"]["same_file_as"] == "coffee.jpg"
    linked = [members["coffee-copy.jpg"], members["coffee-hardlink.jpg"]]
    assert sorted(m["reclaimable_bytes"] for m in linked) == [0, len(data)]
    assert report["totals"]["bytes"] == 2 * len(data)
    assert {u["key"]: u["error"] for u in report["unreadable"]} == {"dangling.jpg": "io_error"}
    assert "broken symbolic link" in report["unreadable"][0]["detail"]


def test_folder_walk_skips_hidden_entries_the_output_folder_and_link_loops(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a/b").mkdir(parents=True)
    (root / "a/b/x.jpg").write_bytes(b"x")
    (root / ".hidden").mkdir()
    (root / ".hidden/y.jpg").write_bytes(b"y")
    (root / "a/b/loop").symlink_to(root / "a")
    (root / "out").mkdir()
    (root / "out/z.jpg").write_bytes(b"z")
    (root / "noext").write_bytes(b"n")
    (root / "readme.md").write_bytes(b"r")
    listing = list_folder(str(root), exclude=(str(root / "out"),))
    assert [i.key for i in listing.items] == ["a/b/x.jpg", "noext"]
    assert listing.skipped == [("readme.md", "not an image file extension (.md)")]
    everything = list_folder(str(root), include_hidden=True, all_files=True)
    assert [i.key for i in everything.items] == [".hidden/y.jpg", "a/b/x.jpg", "noext", "out/z.jpg", "readme.md"]


def test_files_over_the_byte_limit_are_refused_unread(estate, tmp_path: Path) -> None:
    limit = 30_000
    result = run(estate.root, tmp_path, settings=scan_settings(max_image_bytes=limit))
    too_large = {u["key"] for u in result.report["unreadable"] if u["error"] == "image_too_large"}
    expected = {k for k in estate.images if len(estate.files[k]) > limit}
    assert expected and too_large == expected
    assert run(estate.root, tmp_path, settings=scan_settings(max_image_bytes=limit)).hashed == 0, "not retried"


def test_matching_follows_the_service_configuration(estate, tmp_path: Path) -> None:
    """Radii and the second look come from the service's settings (IMGDEDUP_DUPLICATE_RADIUS,
    _REVIEW_RADIUS, _CONFIRM_SIMILARITY): with confirmation out of reach, only exact codes
    make duplicates."""
    strict = run(estate.root, tmp_path / "strict", settings=scan_settings(
        duplicate_radius=0, review_radius=12, confirm_similarity=1.0))
    assert (strict.report["settings"]["duplicate_radius"], strict.report["settings"]["review_radius"]) == (0, 12)
    for cluster in strict.report["clusters"]:
        assert all(m["distance"] == 0 for m in cluster["members"][1:])
    for group in strict.report["review"]:
        assert all(0 < m["distance"] <= 12 for m in group["members"])
        assert all(m["role"] == "review" and m["duplicate_of"] == group["anchor"] for m in group["members"])
    default = run(estate.root, tmp_path / "default").report
    in_band = {m["key"] for g in strict.report["review"] for m in g["members"]}
    assert in_band <= set(cluster_of(default)), "what a stricter radius leaves for review, the default clusters"


def test_limit_scans_the_first_files_only(estate, tmp_path: Path) -> None:
    result = run(estate.root, tmp_path, limit=4)
    assert result.report["totals"]["files"] == 4


@pytest.mark.parametrize(
    "problem, kw",
    [("neither a folder", {"source": "/nonexistent/folder"}), ("--keeper", {"keeper": "prettiest"}),
     ("--price-min", {"price_min": 0.3, "price_max": 0.2}), ("single URL", {"source": "https://example.com/a.jpg"})],
)
def test_bad_arguments_fail_with_a_clear_message(tmp_path: Path, estate, problem: str, kw: dict) -> None:
    source = kw.pop("source", estate.root)
    with pytest.raises(ScanError, match=problem):
        asyncio.run(scan(options(source, tmp_path / "out", **kw), stream=io.StringIO()))


def test_checkpoint_of_another_source_is_refused(estate, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    run(other, tmp_path / "out")
    with pytest.raises(ScanError, match="checkpoint of a scan of"):
        run(estate.root, tmp_path / "out")
    assert run(estate.root, tmp_path / "out", fresh=True).report["totals"]["images"] == len(estate.images)


# --- keeper rules -----------------------------------------------------------------------


def _image(key: str, w: int, h: int, size: int, modified: float | None) -> ScannedImage:
    fp = make_fingerprint(1, key.encode(), width=w, height=h, size_bytes=size)
    return ScannedImage(key, key, fp, modified, None)


def test_keeper_rules_order() -> None:
    big_new = _image("b/big-new.jpg", 2000, 1000, 300, 2000.0)
    big_old = _image("c/big-old.jpg", 2000, 1000, 200, 1000.0)
    small_oldest = _image("a/small-oldest.png", 200, 100, 900, 10.0)
    undated = _image("d/undated.jpg", 2000, 1000, 100, None)
    images = [big_new, big_old, small_oldest, undated]

    def best(rule: str) -> str:
        return min(images, key=keeper_sort_key(parse_keeper(rule))).key

    assert best("resolution,oldest") == "c/big-old.jpg"
    assert best("resolution,newest") == "b/big-new.jpg"
    assert best("oldest") == "a/small-oldest.png"
    assert best("newest") == "b/big-new.jpg"
    assert best("bytes") == "a/small-oldest.png"
    assert best("path") == "a/small-oldest.png"
    assert best("resolution") == "b/big-new.jpg", "ties end on the path"
    assert parse_keeper("Resolution, oldest") == ("resolution", "oldest", "path")
    link = ScannedImage("a/link.jpg", "a/link.jpg", big_old.fingerprint, big_old.modified, None, link=True)
    for rule in ("path", "resolution,oldest", "oldest,path,bytes"):
        assert min([link, big_old], key=keeper_sort_key(parse_keeper(rule))) is big_old, "a link never beats its file"
    for bad in ("", "largest", "oldest,newest"):
        with pytest.raises(ValueError):
            parse_keeper(bad)


@pytest.mark.parametrize("rule, keeper", [("oldest", "originals/coffee.jpg"), ("newest", "copies/coffee-half.png"),
                                          ("bytes", "copies/coffee-half.png"), ("resolution", "originals/coffee.jpg")])
def test_keeper_rule_end_to_end(estate, tmp_path: Path, rule: str, keeper: str) -> None:
    report = run(estate.root, tmp_path, keeper=rule).report
    cluster = next(c for c in report["clusters"] if "copies/coffee-half.png" in {m["key"] for m in c["members"]})
    assert cluster["keeper"] == keeper
    assert report["settings"]["keeper"].startswith(rule)
    others = [m for m in cluster["members"] if m["key"] != keeper]
    assert all(m["duplicate_of"] == keeper for m in others)


# --- the cluster rules on chosen codes (service decisions, synthetic fingerprints) --------


async def _clusters_of(images: list[ScannedImage], policy: Policy) -> tuple:
    dedup = Deduplicator(MemoryIndex(), Hasher(ImageLimits(1, 1), 1), policy, Metrics(), 1)
    records = await classify(images, dedup)
    return records, build_clusters(images, records, parse_keeper("path"))


async def test_clusters_are_duplicate_links_and_the_review_band_stays_apart() -> None:
    rng = np.random.default_rng(5)
    a = random_code(rng)
    c = flip_bits(a, 10, rng)  # review band of a
    # d2: within the duplicate radius of c, and 12 from a (review radius of a only)
    a_only = [i for i in range(64) if (a >> i) & 1 != (c >> i) & 1]
    d2 = c
    for bit in [i for i in range(64) if i not in a_only][:2]:
        d2 ^= 1 << bit

    def img(key: str, code: int, sha: str | None = None, size: int = 100) -> ScannedImage:
        return ScannedImage(key, key, make_fingerprint(code, (sha or key).encode(), size_bytes=size), None, None)

    images = [
        img("a", a, size=1000),
        img("b-near", flip_bits(a, 3, rng), size=300),
        img("c-review", c, size=500),
        img("d-exact", a, sha="a", size=1000),
        img("e-dup-of-c", d2, size=50),
        img("f-alone", random_code(rng), size=70),
    ]
    records, result = await _clusters_of(images, Policy(8, 12))
    assert [r.verdict.value for r in records] == ["accepted", "duplicate", "review", "duplicate", "duplicate",
                                                   "accepted"]
    by_keeper = {c.keeper.image.key: c for c in result.clusters}
    assert set(by_keeper) == {"a", "c-review"}
    assert [(m.image.key, m.match) for m in by_keeper["a"].members] == [("a", None), ("d-exact", "exact"),
                                                                       ("b-near", "near")]
    assert by_keeper["a"].reclaimable == 1300
    assert [m.image.key for m in by_keeper["c-review"].members] == ["c-review", "e-dup-of-c"]
    assert [c.id for c in result.clusters] == [1, 2] and result.clusters[0].keeper.image.key == "a"
    [group] = result.review
    assert group.anchor.key == "a" and group.anchor_cluster == 1
    assert [(m.image.key, m.distance, m.cluster) for m in group.members] == [("c-review", 10, 2)]
    assert result.verdicts == {"accepted": 2, "duplicate": 3, "review": 1}
    assert (result.exact, result.near) == (1, 2)


def test_fingerprints_round_trip_through_the_checkpoint_codec() -> None:
    fp = make_fingerprint(0xDEADBEEF, b"x", codes=(1, 2**64 - 1), width=3, height=4, fmt="PNG", size_bytes=9)
    assert decode_fingerprint(encode_fingerprint(fp)) == fp


# --- registration into the service's index --------------------------------------------


async def test_register_loads_the_estate_into_a_memory_index(estate, tmp_path: Path) -> None:
    index = MemoryIndex()
    result = await scan(options(estate.root, tmp_path, register=True, namespace="estate"), stream=io.StringIO(),
                        register_index=index)
    report = result.report
    register = report["register"]
    assert register["backend"] == "memory" and register["namespace"] == "estate"
    assert register["registered"] == len(estate.images) and register["errors"] == []
    assert register["differs_from_audit"] == 0
    for cluster in report["clusters"]:
        keeper = await index.get("estate", cluster["keeper"])
        assert keeper is not None and keeper.verdict.value == "accepted"
        for member in cluster["members"][1:]:
            record = await index.get("estate", member["key"])
            assert record.verdict.value == "duplicate" and record.duplicate_of == cluster["keeper"]
    for key in estate.unreadable:
        assert await index.get("estate", key) is None
    again = await scan(options(estate.root, tmp_path, register=True, namespace="estate"), stream=io.StringIO(),
                       register_index=index)
    assert again.report["register"]["replayed"] == len(estate.images), "registering twice is idempotent"
    assert again.report["register"]["differs_from_audit"] == 0


async def test_register_loads_the_estate_into_redis(estate, tmp_path: Path, redis_url: str,
                                                    redis_index: RedisMihIndex, redis_prefix: str) -> None:
    settings = scan_settings(redis_url=redis_url, redis_prefix=redis_prefix)
    result = await scan(options(estate.root, tmp_path, register=True, namespace="estate", settings=settings),
                        stream=io.StringIO())
    register = result.report["register"]
    assert register["backend"] == "redis" and register["registered"] == len(estate.images)
    assert register["errors"] == [] and register["differs_from_audit"] == 0
    for cluster in result.report["clusters"]:
        keeper = await redis_index.get("estate", cluster["keeper"])
        assert keeper is not None and keeper.kept
        for member in cluster["members"][1:]:
            record = await redis_index.get("estate", member["key"])
            assert record.duplicate_of == cluster["keeper"]
    # the streaming service now knows the estate: a new upload of a planted copy is a duplicate
    data = estate.files[estate.exact[1]]
    fp = (await asyncio.to_thread(_fingerprint, data))
    lookup = await redis_index.lookup("estate", fp, radius=settings.review_radius)
    assert lookup.candidates and lookup.candidates[0].image_id == estate.exact[0]


def _fingerprint(data: bytes):
    from imgdedup.fingerprint import fingerprint

    return fingerprint(data, ImageLimits(1 << 25, 50_000_000))


async def test_register_reports_an_unreachable_index(estate, tmp_path: Path) -> None:
    settings = scan_settings(redis_url="redis://127.0.0.1:1/0")
    with pytest.raises(ScanError, match="does not answer"):
        await scan(options(estate.root, tmp_path, register=True, settings=settings), stream=io.StringIO())


# --- progress output ------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_is_a_bar_on_a_terminal() -> None:
    out, clock = io.StringIO(), _Clock()
    bar = Progress("hashing", 1000, stream=out, tty=True, clock=clock)
    for _ in range(10):
        clock.now += 0.5
        bar.advance(50)
    text = out.getvalue()
    assert text.startswith("\r") and "\n" not in text
    last = text.split("\r")[-1]
    assert "500/1,000 (50.0%)" in last and "100 images/s" in last and "ETA 0:05" in last and "[" in last
    bar.close()
    assert out.getvalue().endswith("\n")


def test_progress_is_periodic_lines_elsewhere() -> None:
    out, clock = io.StringIO(), _Clock()
    bar = Progress("hashing", 1000, stream=out, tty=False, interval=10, clock=clock)
    for _ in range(40):
        clock.now += 0.5
        bar.advance(20)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in out.getvalue()
    assert lines[0] == "imgdedup scan: hashing 400/1,000 (40.0%), 40 images/s, ETA 0:15"
    bar.close()
    assert out.getvalue().splitlines()[-1] == "imgdedup scan: hashing 800/1,000 (80.0%) in 0:20 (40 images/s)"
    assert format_duration(3725) == "1:02:05" and format_duration(None) == "--:--"


# --- command line -----------------------------------------------------------------------


def test_imgdedup_scan_command(estate, tmp_path: Path) -> None:
    """The README's one command: `imgdedup scan FOLDER --out DIR`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGDEDUP_")}
    done = subprocess.run(
        [sys.executable, "-m", "imgdedup", "scan", str(estate.root), "--out", str(tmp_path / "audit")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert f"report: {tmp_path / 'audit' / 'report.html'}" in done.stderr
    assert "imgdedup scan: hashing" in done.stderr, "plain progress lines when not on a terminal"
    assert (tmp_path / "audit/report.html").exists()
    assert groups(read_json(tmp_path / "audit/clusters.json")) >= {frozenset(pair) for pair in estate.same_cluster}


def test_a_terminal_gets_a_progress_bar(tmp_path: Path) -> None:
    import pty
    import select

    many_images(tmp_path / "src", 40)
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGDEDUP_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "imgdedup.scan", str(tmp_path / "src"), "--out", str(tmp_path / "out"),
         "--test-delay-ms", "15"],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
    )
    os.close(slave)
    output = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if not ready:
            if process.poll() is not None:
                break
            continue
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: every writer of the terminal is gone
            break
        if not data:
            break
        output += data
    os.close(master)
    assert process.wait(30) == 0, output.decode(errors="replace")
    text = output.decode(errors="replace")
    assert "\rhashing " in text and "images/s ETA" in text and "[#" in text, text
    assert "imgdedup scan: hashing" not in text, "no log lines on a terminal"
    assert "report: " in text


def test_scan_is_a_subcommand_of_imgdedup() -> None:
    parser = service_cli.build_parser()
    args = parser.parse_args(["scan", "some/folder", "--keeper", "oldest", "--register", "--stop-after", "3"])
    assert args.command == "scan" and args.source == "some/folder" and args.keeper == "oldest"
    assert args.register and args.stop_after == 3 and args.func.__module__ == "imgdedup.scan.cli"


def test_missing_source_and_bad_source_exit_2(tmp_path: Path) -> None:
    assert service_cli.main(["scan"]) == 2
    assert service_cli.main(["scan", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2




# --- benchmark ----------------------------------------------------------------------------


def test_benchmark_prints_rates_and_ends_with_one_json_line(estate, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from imgdedup_devtools.bench import scan as bench

    line = bench.run(estate.root, count=4, workers=2, baseline_s=5, work_dir=tmp_path)
    printed = capsys.readouterr().out.strip().splitlines()
    assert json.loads(printed[-1]) == line and line["bench"] == "scan"
    assert len(list((tmp_path / "estate1280x960-4").glob("*.jpg"))) == 4
    for name in ("corpus", "jpeg_1280x960"):
        figures = line["results"][name]
        assert figures["scan"]["per_s"] > 0 and figures["imagehash_loop"]["per_s"] > 0
        assert figures["fingerprint_one_core_per_s"] > 0 and figures["speedup_vs_imagehash"] > 0
    assert line["results"]["corpus"]["files"] == len(estate.images) + len(estate.unreadable)
