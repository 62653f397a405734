"""Where a scan reads images from: a folder (recursive), a text file of http(s) URLs, or
an S3 bucket/prefix. Listing runs in the scan process; folder files and S3 objects are
read inside the workers (the bytes never cross a process pipe), URLs are downloaded by
the scan process (`downloads.py`).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

#: File name extensions tried by default in folders and S3 prefixes: the formats the
#: service decodes (HEIC/HEIF and JPEG XL included), matched case-insensitively. Objects
#: with no extension are tried too (common for content-addressed S3 keys); anything else
#: is listed as skipped. Formats the service does not decode (ICO, SVG) are tried on
#: purpose: an audit should say that they exist and cannot be deduplicated.
IMAGE_EXTENSIONS = frozenset(
    {
        "jpg", "jpeg", "jpe", "jfif", "pjpeg", "pjp", "png", "apng", "gif", "webp", "bmp", "dib",
        "tif", "tiff", "avif", "heic", "heics", "heif", "heifs", "hif", "jxl", "mpo", "ico", "svg",
    }
)


class SourceError(Exception):
    """The source as a whole cannot be scanned (missing folder, no such bucket, ...)."""


class ReadError(Exception):
    """One item could not be read. `retryable` errors (I/O, network) are tried again by a
    resumed scan; the others (too large) are remembered."""

    def __init__(self, code: str, detail: str, *, retryable: bool = True) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.retryable = retryable


@dataclass(frozen=True, slots=True)
class Item:
    """One listed object."""

    key: str  # relative path (folder), URL (URL list) or object key (S3)
    size: int | None = None  # bytes, when the listing knows it
    version: str = ""  # change detector: mtime_ns (folder), ETag (S3), "" (URL)
    modified: float | None = None  # POSIX time (keeper rules "oldest"/"newest")
    physical: str | None = None  # "dev:inode" of a local file: links to one file share it
    error: tuple[str, str] | None = None  # (code, detail) when already unreadable at listing
    link: bool = False  # a symbolic link (never kept when the file it points to is in the cluster)


@dataclass(slots=True)
class Listing:
    items: list[Item] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """A picklable description of the source, sent to the worker processes."""

    kind: str  # "folder" | "urls" | "s3"
    location: str  # absolute folder, absolute URL-list file, or s3://bucket/prefix
    bucket: str = ""
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    allow_private_urls: bool = False
    fetch_timeout_s: float = 10.0

    @property
    def fetch_in_parent(self) -> bool:
        return self.kind == "urls"

    def uri(self, key: str) -> str:
        """Where the item lives, for people and deletion scripts."""
        if self.kind == "folder":
            return os.path.join(self.location, key)
        if self.kind == "s3":
            return f"s3://{self.bucket}/{key}"
        return key


def parse_source(
    source: str,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    allow_private_urls: bool = False,
    fetch_timeout_s: float = 10.0,
) -> SourceSpec:
    """SOURCE: `s3://bucket[/prefix]`, a folder, or a text file of URLs."""
    if source.startswith("s3://"):
        parts = urlsplit(source)
        if not parts.netloc:
            raise SourceError(f"{source!r}: expected s3://bucket or s3://bucket/prefix")
        prefix = parts.path.lstrip("/")
        return SourceSpec(
            "s3", f"s3://{parts.netloc}/{prefix}", bucket=parts.netloc, prefix=prefix,
            endpoint_url=endpoint_url, region=region,
        )
    if source.startswith(("http://", "https://")):
        raise SourceError(
            f"{source!r}: a single URL is not a source; put URLs in a text file, one per line, and scan that file"
        )
    path = Path(source).expanduser()
    if path.is_dir():
        return SourceSpec("folder", str(path.resolve()))
    if path.is_file():
        return SourceSpec(
            "urls", str(path.resolve()), allow_private_urls=allow_private_urls, fetch_timeout_s=fetch_timeout_s
        )
    raise SourceError(f"{source!r} is neither a folder, a file of URLs, nor s3://bucket/prefix")


def wanted(name: str, all_files: bool) -> bool:
    if all_files:
        return True
    base = name.rsplit("/", 1)[-1]
    if "." not in base.lstrip("."):
        return True
    return base.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS


def extension_of(name: str) -> str:
    base = name.rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[-1].lower() if "." in base.lstrip(".") else ""


# --- listing (parent process) -----------------------------------------------------------


def list_folder(
    root: str,
    *,
    all_files: bool = False,
    include_hidden: bool = False,
    exclude: tuple[str, ...] = (),
    on_item: Callable[[int], None] | None = None,
) -> Listing:
    """Walk `root` recursively, following symbolic links (a directory reached twice, as
    through a link loop, is walked once). Hidden entries (".name") are left out unless
    `include_hidden`. Keys are '/'-separated paths relative to `root`, sorted."""
    listing = Listing()
    excluded = {os.path.realpath(p) for p in exclude}
    seen_dirs: set[tuple[int, int]] = set()
    stack: list[tuple[str, str]] = [(root, "")]
    while stack:
        dirpath, rel = stack.pop()
        try:
            st = os.stat(dirpath)
            ident = (st.st_dev, st.st_ino)
            if ident in seen_dirs:
                continue
            seen_dirs.add(ident)
            with os.scandir(dirpath) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            listing.items.append(Item(rel or ".", error=("io_error", f"cannot list folder: {exc.strerror or exc}")))
            continue
        subdirs: list[tuple[str, str]] = []
        for entry in entries:
            if not include_hidden and entry.name.startswith("."):
                continue
            key = f"{rel}/{entry.name}" if rel else entry.name
            try:
                if entry.is_dir():  # follows links
                    if os.path.realpath(entry.path) not in excluded:
                        subdirs.append((entry.path, key))
                    continue
                st = entry.stat()  # follows links
            except OSError as exc:
                reason = "broken symbolic link" if entry.is_symlink() else (exc.strerror or str(exc))
                listing.items.append(Item(key, error=("io_error", reason)))
                continue
            if not stat.S_ISREG(st.st_mode):
                listing.skipped.append((key, "not a regular file"))
                continue
            if not wanted(entry.name, all_files):
                listing.skipped.append((key, f"not an image file extension (.{extension_of(entry.name)})"))
                continue
            listing.items.append(
                Item(key, st.st_size, str(st.st_mtime_ns), st.st_mtime, f"{st.st_dev}:{st.st_ino}",
                     link=entry.is_symlink())
            )
            if on_item is not None:
                on_item(len(listing.items))
        stack.extend(reversed(subdirs))
    listing.items.sort(key=lambda item: item.key)
    return listing


def list_urls(spec: SourceSpec) -> Listing:
    """One URL per line; blank lines and lines starting with '#' are ignored; a URL listed
    twice is scanned once."""
    listing = Listing()
    seen: set[str] = set()
    try:
        text = Path(spec.location).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"cannot read the URL list {spec.location}: {exc}") from None
    for line in text.splitlines():
        url = line.strip()
        if not url or url.startswith("#") or url in seen:
            continue
        seen.add(url)
        listing.items.append(Item(url))
    if not listing.items:
        raise SourceError(f"{spec.location} holds no URLs (one http(s) URL per line expected)")
    return listing


def list_s3(
    spec: SourceSpec, *, all_files: bool = False, on_item: Callable[[int], None] | None = None
) -> Listing:
    listing = Listing()
    client = s3_client(spec)
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=spec.bucket, Prefix=spec.prefix)
        for page in pages:
            for obj in page.get("Contents", ()):
                key = obj["Key"]
                if key.endswith("/") and obj.get("Size", 0) == 0:
                    continue  # "folder" placeholder objects
                if not wanted(key, all_files):
                    listing.skipped.append((key, f"not an image file extension (.{extension_of(key)})"))
                    continue
                modified = obj.get("LastModified")
                listing.items.append(
                    Item(key, int(obj.get("Size", 0)), str(obj.get("ETag", "")).strip('"'),
                         modified.timestamp() if modified is not None else None)
                )
                if on_item is not None:
                    on_item(len(listing.items))
    except Exception as exc:  # botocore raises many unrelated types; all mean the same here
        raise SourceError(f"cannot list {spec.location}: {_s3_reason(exc)}") from None
    listing.items.sort(key=lambda item: item.key)
    return listing


def _s3_reason(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:
        error = response["Error"]
        return f"{error.get('Code', 'error')}: {error.get('Message', '')}".rstrip(": ")
    return f"{type(exc).__name__}: {exc}"


def s3_client(spec: SourceSpec) -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ModuleNotFoundError:
        raise SourceError("scanning S3 needs boto3: pip install boto3 (or the imgdedup[s3] extra)") from None
    config = Config(
        retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=10, read_timeout=60,
        max_pool_connections=4,
    )
    return boto3.client("s3", endpoint_url=spec.endpoint_url or None, region_name=spec.region or None, config=config)


def list_source(
    spec: SourceSpec,
    *,
    all_files: bool = False,
    include_hidden: bool = False,
    exclude: tuple[str, ...] = (),
    on_item: Callable[[int], None] | None = None,
) -> Listing:
    if spec.kind == "folder":
        return list_folder(
            spec.location, all_files=all_files, include_hidden=include_hidden, exclude=exclude, on_item=on_item
        )
    if spec.kind == "s3":
        return list_s3(spec, all_files=all_files, on_item=on_item)
    return list_urls(spec)


# --- reading (worker processes) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Blob:
    data: bytes
    size: int
    version: str
    modified: float | None
    physical: str | None


def read_local(root: str, key: str, max_bytes: int) -> Blob:
    path = os.path.join(root, key)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise ReadError("not_found", "the file disappeared since it was listed") from None
    except OSError as exc:
        raise ReadError("io_error", exc.strerror or str(exc)) from None
    try:
        st = os.fstat(fd)
        if st.st_size > max_bytes:
            raise ReadError(
                "image_too_large", f"file is {st.st_size} bytes; the limit is {max_bytes} bytes", retryable=False
            )
        chunks: list[bytes] = []
        remaining = st.st_size + 1  # one byte more: notice a file growing while we read
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 22))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
    except OSError as exc:
        raise ReadError("io_error", exc.strerror or str(exc)) from None
    finally:
        os.close(fd)
    return Blob(data, len(data), str(st.st_mtime_ns), st.st_mtime, f"{st.st_dev}:{st.st_ino}")


_S3_CLIENTS: dict[SourceSpec, Any] = {}


def read_s3(spec: SourceSpec, key: str, max_bytes: int) -> Blob:
    client = _S3_CLIENTS.get(spec)
    if client is None:
        client = _S3_CLIENTS[spec] = s3_client(spec)
    try:
        response = client.get_object(Bucket=spec.bucket, Key=key)
        length = int(response.get("ContentLength", 0))
        if length > max_bytes:
            response["Body"].close()
            raise ReadError(
                "image_too_large", f"object is {length} bytes; the limit is {max_bytes} bytes", retryable=False
            )
        data = response["Body"].read(max_bytes + 1)
    except ReadError:
        raise
    except Exception as exc:
        raise ReadError("s3_error", _s3_reason(exc)) from None
    modified = response.get("LastModified")
    return Blob(
        data, len(data), str(response.get("ETag", "")).strip('"'),
        modified.timestamp() if modified is not None else None, None,
    )


def read_item(spec: SourceSpec, key: str, max_bytes: int) -> Blob:
    if spec.kind == "folder":
        return read_local(spec.location, key, max_bytes)
    if spec.kind == "s3":
        return read_s3(spec, key, max_bytes)
    raise AssertionError("URL items are fetched by the parent")
