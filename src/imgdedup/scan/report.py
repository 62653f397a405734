"""The scan's results as data (clusters.json), a flat table (clusters.csv) and a page
(report.html, rendered from the same data by `html.py`). A GB is 2^30 bytes, as storage
is billed; reclaimable bytes are the duplicates' (never keepers', never the review
band's), each stored file counted once.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from imgdedup.scan.cluster import Clustering, Member, ScannedImage

GB = 1 << 30
FORMAT = "imgdedup-scan/1"

#: clusters.csv columns, in order. One row per image of a duplicate cluster (the keeper
#: and its duplicates) and per image of the review band. A deletion job takes the rows
#: with role == "duplicate".
CSV_COLUMNS = (
    "cluster", "role", "key", "uri", "keeper", "duplicate_of", "distance", "match", "size_bytes",
    "reclaimable_bytes", "width", "height", "format", "modified", "sha256", "same_file_as",
)

#: Cluster-size buckets of the chart: (label, lowest size, highest size).
SIZE_BUCKETS = (
    ("2", 2, 2), ("3", 3, 3), ("4", 4, 4), ("5", 5, 5), ("6-10", 6, 10), ("11-20", 11, 20),
    ("21-50", 21, 50), ("51-100", 51, 100), ("101+", 101, None),
)


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _member_json(member: Member) -> dict[str, Any]:
    image = member.image
    fp = image.fingerprint
    out: dict[str, Any] = {
        "key": image.key,
        "uri": image.uri,
        "role": member.role,
        "size_bytes": image.size_bytes,
        "width": fp.width,
        "height": fp.height,
        "format": fp.format,
        "modified": iso(image.modified),
        "sha256": fp.sha256_hex,
        "duplicate_of": member.duplicate_of,
        "distance": member.distance,
        "match": member.match,
        "reclaimable_bytes": member.reclaimable,
    }
    if member.same_file_as is not None:
        out["same_file_as"] = member.same_file_as
    if member.role == "review":
        out["cluster"] = member.cluster
    return out


def size_histogram(sizes: Sequence[int]) -> list[dict[str, Any]]:
    out = []
    for label, lo, hi in SIZE_BUCKETS:
        count = sum(1 for s in sizes if s >= lo and (hi is None or s <= hi))
        out.append({"size": label, "clusters": count})
    return out


def build_report(
    *,
    source: str,
    images: Sequence[ScannedImage],
    clustering: Clustering,
    unreadable: Sequence[tuple[str, str, str, str]],  # (key, uri, code, detail)
    skipped: Sequence[tuple[str, str]],
    settings: dict[str, Any],
    price_min: float,
    price_max: float,
    currency: str,
    stats: dict[str, Any],
    register: dict[str, Any] | None = None,
) -> dict[str, Any]:
    stored: dict[str, int] = {}
    for image in images:
        stored.setdefault(image.storage_id, image.size_bytes)
    total_bytes = sum(stored.values())
    clusters = clustering.clusters
    duplicates = sum(len(c.members) - 1 for c in clusters)
    reclaimable = sum(c.reclaimable for c in clusters)
    review_images = sum(len(g.members) for g in clustering.review)
    review_bytes = sum(g.bytes for g in clustering.review)
    reclaimable_gb = reclaimable / GB
    totals = {
        "files": len(images) + len(unreadable),
        "images": len(images),
        "unreadable": len(unreadable),
        "skipped": len(skipped),
        "bytes": total_bytes,
        "clusters": len(clusters),
        "images_in_clusters": sum(len(c.members) for c in clusters),
        "duplicates": duplicates,
        "exact_duplicates": clustering.exact,
        "near_duplicates": clustering.near,
        "duplicate_share": round(duplicates / len(images), 4) if images else 0.0,
        "reclaimable_bytes": reclaimable,
        "reclaimable_gb": round(reclaimable_gb, 3),
        "reclaimable_share": round(reclaimable / total_bytes, 4) if total_bytes else 0.0,
        "review_groups": len(clustering.review),
        "review_images": review_images,
        "review_bytes": review_bytes,
        "currency": currency,
        "price_per_gb_month_min": price_min,
        "price_per_gb_month_max": price_max,
        "monthly_saving_min": round(reclaimable_gb * price_min, 2),
        "monthly_saving_max": round(reclaimable_gb * price_max, 2),
    }
    return {
        "format": FORMAT,
        "generated_at": iso(time.time()),
        "source": source,
        "settings": settings,
        "totals": totals,
        "cluster_sizes": size_histogram([len(c.members) for c in clusters]),
        "clusters": [
            {
                "id": c.id,
                "size": len(c.members),
                "keeper": c.keeper.image.key,
                "bytes": c.bytes,
                "reclaimable_bytes": c.reclaimable,
                "members": [_member_json(m) for m in c.members],
            }
            for c in clusters
        ],
        "review": [
            {
                "id": g.id,
                "anchor": g.anchor.key,
                "anchor_cluster": g.anchor_cluster,
                "bytes": g.bytes,
                "anchor_image": _member_json(Member(g.anchor, "anchor", None, None, None)),
                "members": [_member_json(m) for m in g.members],
            }
            for g in clustering.review
        ],
        "unreadable": [{"key": k, "uri": u, "error": c, "detail": d} for k, u, c, d in unreadable],
        "skipped": [{"key": k, "reason": r} for k, r in skipped],
        "register": register,
        "stats": stats,
    }


def _atomic_write(path: Path, write: Any, *, newline: str | None = None) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8", errors="surrogateescape", newline=newline) as out:
        write(out)
    os.replace(tmp, path)


def write_json(report: dict[str, Any], path: Path) -> None:
    _atomic_write(path, lambda out: json.dump(report, out, indent=1))


def csv_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for cluster in report["clusters"]:
        for m in cluster["members"]:
            rows.append({**m, "cluster": cluster["id"], "keeper": cluster["keeper"]})
    for group in report["review"]:
        for m in group["members"]:
            rows.append({**m, "cluster": f"R{group['id']}", "keeper": group["anchor"], "reclaimable_bytes": 0})
    return rows


def write_csv(report: dict[str, Any], path: Path) -> None:
    def write(out: Any) -> None:
        writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in csv_rows(report):
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in CSV_COLUMNS})

    _atomic_write(path, write, newline="")


def write_html(page: str, path: Path) -> None:
    _atomic_write(path, lambda out: out.write(page))
