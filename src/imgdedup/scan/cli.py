"""`imgdedup scan SOURCE`: find duplicate clusters in an existing folder, URL list or
S3 prefix, and write report.html, clusters.json and clusters.csv to --out."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from imgdedup.scan.cluster import DEFAULT_KEEPER, KEEPER_CRITERIA

EXIT_STOPPED = 3  # --stop-after reached: the checkpoint holds the work so far
EXIT_INTERRUPTED = 130


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Audit existing storage for duplicate images: hash everything on all cores (resumable), group exact and "
        "near duplicates the way the imgdedup service decides them, pick a keeper per cluster, and write a "
        "self-contained HTML report with JSON and CSV exports. Matching follows IMGDEDUP_DUPLICATE_RADIUS, "
        "IMGDEDUP_REVIEW_RADIUS and the IMGDEDUP_MAX_IMAGE_* limits."
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "examples:\n"
        "  imgdedup scan ~/Pictures --out audit            # then open audit/report.html\n"
        "  imgdedup scan urls.txt --out audit              # one http(s) URL per line\n"
        "  imgdedup scan s3://bucket/photos/ --out audit   # AWS credentials from the usual places\n"
        "  IMGDEDUP_REDIS_URL=redis://127.0.0.1:6379 imgdedup scan ~/Pictures --register --namespace shop\n"
        "Re-running the same command resumes an interrupted scan (and re-hashes only changed files)."
    )
    parser.add_argument("source", nargs="?", help="a folder (recursive), a text file of http(s) URLs, or s3://bucket/prefix")
    parser.add_argument("--out", type=Path, default=Path("imgdedup-report"),
                        help="folder for report.html, clusters.json, clusters.csv and the checkpoint "
                             "(default: ./imgdedup-report)")
    parser.add_argument("--workers", type=_positive, default=0, help="hashing processes (default: one per core)")
    parser.add_argument("--keeper", default=DEFAULT_KEEPER,
                        help="which image of a cluster to keep: comma-separated criteria in priority order, from "
                             f"{', '.join(KEEPER_CRITERIA)} (default: {DEFAULT_KEEPER}; ties end on path)")
    parser.add_argument("--price-min", type=_non_negative_float, default=0.18,
                        help="storage price per GB-month, low end (default 0.18)")
    parser.add_argument("--price-max", type=_non_negative_float, default=0.25,
                        help="storage price per GB-month, high end (default 0.25)")
    parser.add_argument("--currency", default="HK$", help="currency label of the prices (default HK$)")
    parser.add_argument("--register", action="store_true",
                        help="also load every image into the service's index (IMGDEDUP_REDIS_URL), keepers first")
    parser.add_argument("--namespace", default="default", help="index namespace for --register (default: default)")
    parser.add_argument("--register-concurrency", type=_positive, default=16,
                        help="unrelated images registered at once with --register (default 16)")
    parser.add_argument("--s3-endpoint-url", default=None,
                        help="S3-compatible endpoint (default: AWS, or AWS_ENDPOINT_URL)")
    parser.add_argument("--s3-region", default=None, help="S3 region (default: from the AWS configuration)")
    parser.add_argument("--allow-private-urls", action="store_true",
                        help="URL lists: allow private, loopback and link-local addresses (internal stores)")
    parser.add_argument("--url-concurrency", type=_positive, default=16, help="URL downloads at once (default 16)")
    parser.add_argument("--all-files", action="store_true",
                        help="try every file, not only image extensions (and extension-less files)")
    parser.add_argument("--include-hidden", action="store_true", help="also scan files and folders named .*")
    parser.add_argument("--limit", type=_positive, default=None, help="scan only the first N listed files")
    parser.add_argument("--fresh", action="store_true", help="ignore and replace the checkpoint in --out")
    parser.add_argument("--stop-after", type=int, default=None, metavar="N",
                        help="hash at most N new files, then stop as if interrupted (exit 3; resumable)")
    parser.add_argument("--thumb-size", type=_positive, default=96, help="thumbnail size in px (default 96)")
    parser.add_argument("--max-thumbnails", type=int, default=2000,
                        help="thumbnails embedded in the report, largest clusters first, a quarter kept for the "
                             "review band (default 2000)")
    parser.add_argument("--thumbs-per-cluster", type=_positive, default=8,
                        help="images shown side by side per cluster; the rest in a table (default 8)")
    parser.add_argument("--page-size", type=_positive, default=25, help="clusters per report page (default 25)")
    parser.add_argument("--progress-interval", type=_non_negative_float, default=10.0,
                        help="seconds between progress lines when stderr is not a terminal (default 10)")
    parser.add_argument("--chunk-size", type=_positive, default=32, help=argparse.SUPPRESS)
    parser.add_argument("--test-delay-ms", type=float, default=0.0, help=argparse.SUPPRESS)


def main(args: argparse.Namespace) -> int:
    from imgdedup.scan.scanner import ScanError, ScanOptions, scan

    if not args.source:
        print("imgdedup scan: SOURCE is required (a folder, a file of URLs, or s3://bucket/prefix)", file=sys.stderr)
        return 2
    options = ScanOptions(
        source=args.source, out=args.out, workers=args.workers, keeper=args.keeper, price_min=args.price_min,
        price_max=args.price_max, currency=args.currency, namespace=args.namespace, register=args.register,
        register_concurrency=args.register_concurrency, s3_endpoint_url=args.s3_endpoint_url,
        s3_region=args.s3_region, allow_private_urls=args.allow_private_urls, url_concurrency=args.url_concurrency,
        limit=args.limit, stop_after=args.stop_after, fresh=args.fresh, all_files=args.all_files,
        include_hidden=args.include_hidden, thumb_size=args.thumb_size, max_thumbnails=args.max_thumbnails,
        thumbs_per_cluster=args.thumbs_per_cluster, page_size=args.page_size,
        progress_interval=args.progress_interval, chunk_size=args.chunk_size, test_delay_s=args.test_delay_ms / 1000.0,
    )
    try:
        result = asyncio.run(scan(options))
    except ScanError as exc:
        print(f"imgdedup scan: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("imgdedup scan: aborted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    if result.interrupted:
        return EXIT_STOPPED if result.stop_reason == "stop-after" else EXIT_INTERRUPTED
    return 0
