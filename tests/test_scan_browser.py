"""The HTML report in a real headless Chromium: the page renders, thumbnails load, totals
match clusters.json, pagination and tabs work, and a report of 100k clusters stays
usable. Skipped only when Chromium is missing and cannot be installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
from helpers import make_fingerprint
from PIL import Image
from scan_helpers import build_estate, run

from imgdedup.scan.cluster import Cluster, Clustering, Member, ReviewGroup, ScannedImage
from imgdedup.scan.html import format_total, render
from imgdedup.scan.report import build_report, write_html

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
    "--disable-dev-shm-usage",
)


def _which() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def _install_chromium() -> str:
    """Debian: apt-get install chromium (update first if the package lists are stale)."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "not root or no apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "install", "-y", "-q", "chromium"]
    for attempt in (1, 2):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode == 0:
            return ""
        if attempt == 1:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
    return (done.stderr or done.stdout).strip().splitlines()[-1:][0] if (done.stderr or done.stdout) else "failed"


@pytest.fixture(scope="module")
def chromium() -> str:
    """Chromium from PATH; when missing and we may install packages (root with apt-get),
    Debian's `chromium` package is installed, as CI does."""
    path = _which()
    if path is None and os.environ.get("IMGDEDUP_TEST_NO_APT") != "1":
        reason = _install_chromium()
        path = _which()
        if path is None:
            pytest.skip(f"Chromium is not installed and `apt-get install -y chromium` failed ({reason})")
    if path is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium) and IMGDEDUP_TEST_NO_APT=1")
    return path


def browse(binary: str, profile: Path, url: str, *args: str, budget_ms: int = 5000, timeout: float = 120) -> str:
    """Load `url` headless and return the DOM after scripts ran (or take a --screenshot)."""
    action = [] if any(a.startswith("--screenshot") for a in args) else ["--dump-dom"]
    done = subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", *action, *args,
         url],
        capture_output=True, text=True, timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class Dom(HTMLParser):
    """Just enough of the rendered DOM: attributes of every element, text of the totals."""

    def __init__(self, markup: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.totals: dict[str, tuple[str, str]] = {}  # name -> (data-value, text)
        self._total: str | None = None
        self._text: list[str] = []
        self.texts: dict[str, str] = {}  # id -> text
        self._id: str | None = None
        self.feed(markup)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        self.elements.append((tag, attributes))
        if "data-total" in attributes:
            self._total, self._text = attributes["data-total"], []
            self._value = attributes["data-value"]
        if attributes.get("id"):
            self._id, self._idtext = attributes["id"], []

    def handle_data(self, data: str) -> None:
        if self._total is not None:
            self._text.append(data)
        if self._id is not None:
            self._idtext.append(data)

    def handle_endtag(self, tag: str) -> None:
        if self._total is not None and tag == "span":
            self.totals[self._total] = (self._value, "".join(self._text))
            self._total = None
        if self._id is not None:
            self.texts[self._id] = "".join(self._idtext)
            self._id = None

    def all(self, tag: str, **attrs: str) -> list[dict[str, str]]:
        return [a for t, a in self.elements if t == tag and all(a.get(k.replace("_", "-")) == v for k, v in attrs.items())]

    def body(self) -> dict[str, str]:
        return self.all("body")[0]


@pytest.fixture(scope="module")
def estate_report(tmp_path_factory: pytest.TempPathFactory):
    estate = build_estate(tmp_path_factory.mktemp("estate") / "estate")
    out = tmp_path_factory.mktemp("report")
    run(estate.root, out, page_size=2)
    return out, json.loads((out / "clusters.json").read_text())


def test_report_renders_with_thumbnails_and_totals_matching_the_json(chromium, estate_report, tmp_path: Path) -> None:
    out, report = estate_report
    dom = Dom(browse(chromium, tmp_path / "profile", (out / "report.html").as_uri()))
    clusters = report["clusters"]
    assert dom.body()["data-rendered"] == "clusters:1:2", "the script rendered the first page"
    shown = [int(s["data-cluster"]) for s in dom.all("section") if "data-cluster" in s]
    assert shown == [1, 2]
    images = dom.all("img")
    expected = sum(min(len(c["members"]), report["settings"]["thumbs_per_cluster"]) for c in clusters[:2])
    assert len(images) == expected > 0
    assert all(img.get("data-loaded") == "1" for img in images), "every thumbnail decoded (naturalWidth > 0)"
    totals = report["totals"]
    assert set(dom.totals) >= {"images", "bytes", "duplicates", "duplicate_share", "clusters", "reclaimable_gb",
                               "reclaimable_bytes", "monthly_saving_min", "monthly_saving_max", "unreadable"}
    for name, (value, text) in dom.totals.items():
        assert json.loads(value) == totals[name], name
        assert text == format_total(name, totals), name
    assert dom.texts["loaded-clusters"] == str(len(clusters)), "the page's data holds every cluster"


def test_pagination_and_tabs(chromium, estate_report, tmp_path: Path) -> None:
    out, report = estate_report
    n = len(report["clusters"])
    last = (n + 1) // 2
    dom = Dom(browse(chromium, tmp_path / "p1", (out / "report.html").as_uri() + f"#clusters/{last}"))
    assert dom.body()["data-rendered"] == f"clusters:{last}:{n - 2 * (last - 1)}"
    shown = [int(s["data-cluster"]) for s in dom.all("section") if "data-cluster" in s]
    assert shown == list(range(2 * last - 1, n + 1))
    assert "page " + str(last) + " of " + str(last) in dom.texts["pager-info"]
    dom = Dom(browse(chromium, tmp_path / "p2", (out / "report.html").as_uri() + "#unreadable/1"))
    assert dom.body()["data-rendered"] == f"unreadable:1:{min(2, len(report['unreadable']))}"
    cells = [a for t, a in dom.elements if t == "td" and a.get("class") == "key"]
    assert len(cells) == min(2, len(report["unreadable"]))


def test_screenshot(chromium, estate_report, tmp_path: Path) -> None:
    out, _report = estate_report
    shot = out / "screenshot.png"
    browse(chromium, tmp_path / "profile", (out / "report.html").as_uri(), f"--screenshot={shot}",
           "--window-size=1280,2000")
    with Image.open(shot) as image:
        assert image.size == (1280, 2000)
        colours = image.convert("RGB").resize((64, 100)).getcolors(64 * 100)
        assert colours is not None and len(colours) > 50, "a rendered page, not a blank one"


def _big_report(n_clusters: int) -> dict:
    def image(key: str, sha: int, size: int) -> ScannedImage:
        fp = make_fingerprint(sha, sha.to_bytes(8, "big"), width=1280, height=960, size_bytes=size)
        return ScannedImage(f"bucket/{key}", f"s3://estate/bucket/{key}", fp, 1.6e9, None)

    clusters = []
    for i in range(n_clusters):
        keeper = image(f"photos/{i:06d}/original.jpg", 2 * i, 200_000)
        dup = image(f"photos/{i:06d}/copy.jpg", 2 * i + 1, 150_000 + i % 1000)
        clusters.append(Cluster(i + 1, [Member(keeper, "keeper", None, None, None),
                                        Member(dup, "duplicate", keeper.key, 3, "near", dup.size_bytes)]))
    review = [
        ReviewGroup(g + 1, clusters[g].keeper.image, g + 1,
                    [Member(image(f"review/{g}.jpg", 10**7 + g, 90_000), "review", clusters[g].keeper.image.key, 11,
                            "near")])
        for g in range(10)
    ]
    images = [m.image for c in clusters for m in c.members] + [g.members[0].image for g in review]
    return build_report(
        source="s3://estate/bucket/", images=images, clustering=Clustering(clusters, review), unreadable=[],
        skipped=[], settings={"duplicate_radius": 8, "review_radius": 12, "hash_algorithm": "test",
                              "keeper": "resolution,oldest,path", "thumbs_per_cluster": 8},
        price_min=0.18, price_max=0.25, currency="HK$", stats={},
    )


def test_a_report_of_100k_clusters_stays_usable(chromium, tmp_path: Path) -> None:
    report = _big_report(100_000)
    page = tmp_path / "report.html"
    write_html(render(report, {}), page)
    assert page.stat().st_size < 40 * 1024 * 1024, "100k clusters fit in a reasonable page"
    started = time.monotonic()
    dom = Dom(browse(chromium, tmp_path / "profile", page.as_uri() + "#clusters/3000", budget_ms=20000))
    elapsed = time.monotonic() - started
    assert dom.body()["data-rendered"] == "clusters:3000:25"
    shown = [int(s["data-cluster"]) for s in dom.all("section") if "data-cluster" in s]
    assert shown == list(range(74_976, 75_001)), "only the visible page is in the DOM"
    assert elapsed < 60, f"rendering took {elapsed:.1f} s"
    dom = Dom(browse(chromium, tmp_path / "profile2", page.as_uri() + "#review/1", budget_ms=20000))
    assert dom.body()["data-rendered"] == "review:1:10"

