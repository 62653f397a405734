"""`imgdedup scan`: audit an existing folder, URL list or S3 prefix for duplicates.

Hashes every image with the service's own `service.hashing.fingerprint` on a process
pool, checkpoints each result (an interrupted scan resumes), then clusters by
registering every image into an index through the service's own decision path, so the
audit always matches what the streaming service would decide. Writes a self-contained
HTML report plus JSON and CSV exports; `--register` also loads the estate into the
service's configured index. See docs/scan.md.
"""

from __future__ import annotations

from .scanner import ScanError, ScanOptions, ScanResult, run_scan, scan

__all__ = ["ScanError", "ScanOptions", "ScanResult", "run_scan", "scan"]
