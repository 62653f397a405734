"""`imgdedup scan`: audit an existing folder, URL list or S3 prefix for duplicates with
the service's own hashing and decisions, and write an HTML report with JSON and CSV
exports; `--register` also loads the estate into the service's index. See docs/scan.md.

The re-exports are lazy: `imgdedup` imports `imgdedup.scan.cli` on every start to
offer the subcommand, which must not pull in the whole scanner.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ScanError", "ScanOptions", "ScanResult", "scan"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from imgdedup.scan import scanner

        return getattr(scanner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
