"""Code that runs inside the scan's worker processes: read, hash, make thumbnails.

Hashing is `imgdedup.fingerprint.fingerprint`, unchanged: the scan never computes codes of
its own, so it follows the service whenever the hashing changes. Work arrives in chunks
(a few dozen items per task) to keep the per-task overhead of the pool negligible.
"""

from __future__ import annotations

import io
import os
import time
import warnings
from dataclasses import dataclass

from PIL import Image

from imgdedup.errors import InputError
from imgdedup.fingerprint import Fingerprint, ImageLimits, fingerprint
from imgdedup.fingerprint.decode import ORIENTATION_TRANSPOSE, check_header_limits, orientation_to_apply
from imgdedup.process_pool import prepare_worker
from imgdedup.scan.checkpoint import encode_fingerprint
from imgdedup.scan.sources import ReadError, SourceSpec, read_item


def init_worker(environment: dict[str, str]) -> None:
    """Worker start: the shared worker set-up, plus the parent's AWS_* variables
    (`environment`): forkserver workers inherit the environment of the fork server,
    which may have started before they were set."""
    prepare_worker()
    os.environ.update(environment)


@dataclass(frozen=True, slots=True)
class HashTask:
    index: int
    key: str
    data: bytes | None = None  # already fetched by the parent (URL sources)


@dataclass(frozen=True, slots=True)
class HashResult:
    index: int
    fingerprint: Fingerprint | None
    encoded: str | None  # checkpoint form of the fingerprint (None: error, or not encodable)
    error: str | None
    detail: str | None
    retryable: bool
    size: int | None
    version: str | None  # None: keep the listing's
    modified: float | None
    physical: str | None


def hash_chunk(
    spec: SourceSpec, limits: ImageLimits, tasks: list[HashTask], delay_s: float = 0.0
) -> list[HashResult]:
    return [_hash_one(spec, limits, task, delay_s) for task in tasks]


def _hash_one(spec: SourceSpec, limits: ImageLimits, task: HashTask, delay_s: float) -> HashResult:
    if delay_s:
        time.sleep(delay_s)  # test hook: makes a scan slow enough to interrupt
    size = version = modified = physical = None
    try:
        if task.data is not None:
            data = task.data
            size = len(data)
        else:
            blob = read_item(spec, task.key, limits.max_bytes)
            data, size, version, modified, physical = blob.data, blob.size, blob.version, blob.modified, blob.physical
        fp = fingerprint(data, limits)
    except ReadError as exc:
        return HashResult(task.index, None, None, exc.code, exc.detail, exc.retryable, size, version, modified, physical)
    except InputError as exc:
        return HashResult(task.index, None, None, exc.code, exc.detail, False, size, version, modified, physical)
    except Exception as exc:  # a decoder bug must not stop an estate-wide scan
        return HashResult(
            task.index, None, None, "hashing_failed", f"{type(exc).__name__}: {exc}", False,
            size, version, modified, physical,
        )
    try:
        encoded: str | None = encode_fingerprint(fp)
    except TypeError:
        encoded = None  # a fingerprint field the checkpoint cannot store: re-hashed on resume
    return HashResult(task.index, fp, encoded, None, None, False, size, version, modified, physical)


# --- thumbnails -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ThumbTask:
    sha: str
    key: str
    data: bytes | None = None


def thumb_chunk(
    spec: SourceSpec, limits: ImageLimits, tasks: list[ThumbTask], size: int
) -> list[tuple[str, bytes | None]]:
    out: list[tuple[str, bytes | None]] = []
    for task in tasks:
        try:
            data = task.data if task.data is not None else read_item(spec, task.key, limits.max_bytes).data
            out.append((task.sha, make_thumbnail(data, size, limits.max_pixels)))
        except Exception:
            out.append((task.sha, None))  # the report shows a placeholder
    return out


def make_thumbnail(data: bytes, size: int, max_pixels: int) -> bytes:
    """A small JPEG (longest side `size`) for the report: upright, alpha on white.

    JPEGs are decoded with DCT scaling to the smallest scale at least `size` wide, so a
    thumbnail costs about what hashing does."""
    jxl = check_header_limits(data, max_pixels)  # JPEG XL decodes at open
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image: Image.Image = Image.open(io.BytesIO(data))
        if image.size[0] * image.size[1] > max_pixels:
            raise ValueError("canvas too large")
        if image.format in ("JPEG", "MPO"):
            image.draft(image.mode, (size, size))
        if image.format != "HEIF":  # HEIF opens at its primary image
            image.seek(0)
        image.load()
    orientation = orientation_to_apply(image, jxl)  # as hashing turns it upright
    if orientation in ORIENTATION_TRANSPOSE:
        image = image.transpose(ORIENTATION_TRANSPOSE[orientation])
    transparent = image.mode in ("RGBA", "LA", "PA", "P") or "transparency" in image.info
    if transparent:
        image = image.convert("RGBA")
    elif image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    # Shrink first, flatten after: Pillow resamples RGBA with premultiplied alpha, so
    # this equals flattening at full size, on far fewer pixels.
    image.thumbnail((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    if transparent:
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=72, optimize=True)
    return out.getvalue()
