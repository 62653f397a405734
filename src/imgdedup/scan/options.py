"""What a scan is asked to do (`ScanOptions`), and the error for a scan that cannot run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from imgdedup.config import Settings
from imgdedup.scan.cluster import DEFAULT_KEEPER


class ScanError(Exception):
    """The scan cannot run at all (bad source, bad option, unreachable index)."""


@dataclass
class ScanOptions:
    source: str
    out: Path = Path("imgdedup-report")
    workers: int = 0  # 0: every core this process may use
    keeper: str = DEFAULT_KEEPER
    price_min: float = 0.18
    price_max: float = 0.25
    currency: str = "HK$"
    namespace: str = "default"
    register: bool = False
    register_concurrency: int = 16
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    allow_private_urls: bool = False
    url_concurrency: int = 16
    limit: int | None = None
    stop_after: int | None = None
    fresh: bool = False
    all_files: bool = False
    include_hidden: bool = False
    thumb_size: int = 96
    max_thumbnails: int = 2000
    thumbs_per_cluster: int = 8
    page_size: int = 25
    chunk_size: int = 32
    progress_interval: float = 10.0
    tty: bool | None = None  # None: progress bar when the stream is a terminal
    test_delay_s: float = 0.0  # test hook: sleep per image in the workers
    settings: Settings | None = None
