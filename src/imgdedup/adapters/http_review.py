"""HTTP routes of the review workflow and the tenant operations: the review queue,
resolutions and their undo, look-ups by SHA-256 and by perceptual code, a namespace's
counts, its erasure, and the stored thumbnails the review page shows.

Handlers translate between HTTP and `ReviewDesk`; failures are `InputError`s that the
API's middleware answers with the one JSON error model.
"""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime
from typing import Any

import numpy as np
from aiohttp import hdrs, web
from PIL import Image

from imgdedup.adapters.decision_view import decision_view
from imgdedup.adapters.http_auth import PRINCIPAL
from imgdedup.decisions.review import Change, InvalidResolution, Outcome
from imgdedup.decisions.review_desk import QueueEntry, ReviewDesk, UnknownImage
from imgdedup.errors import InputError
from imgdedup.fingerprint.thumbnails import THUMB_SIDE, unpack_thumbnails
from imgdedup.records import ImageRecord

DESK: web.AppKey[ReviewDesk] = web.AppKey("imgdedup_review_desk", ReviewDesk)

#: Header an HTTP upload may carry to say where the image can be seen (review queue).
SOURCE_URI_HEADER = "X-Source-URI"
MAX_SOURCE_URI_CHARS = 2048
DEFAULT_PAGE = 50
MAX_PAGE = 200
#: Largest radius a perceptual-code look-up may ask for: the probes grow combinatorially.
MAX_LOOKUP_RADIUS = 16
MAX_RESOLUTION_BODY = 16 * 1024
_SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")
_CODE_RE = re.compile(r"[0-9a-fA-F]{1,16}")
#: Side of a rendered thumbnail (the stored one is 16x16).
THUMBNAIL_RENDER_SIDE = 128


class InvalidQuery(InputError, code="invalid_query", http_status=400):
    """A query parameter outside its allowed form or range."""


class InvalidSourceUri(InputError, code="invalid_source_uri", http_status=400):
    """The source URI an upload gave is not an http(s) URL of reasonable length."""


def add_review_routes(app: web.Application, desk: ReviewDesk) -> None:
    app[DESK] = desk
    ns = "/v1/namespaces/{ns}"
    image = ns + "/images/{image_id}"
    app.router.add_get(ns, _namespace_stats, name="namespace")
    app.router.add_delete(ns, _namespace_erase, name="namespace_erase")
    app.router.add_get(ns + "/reviews", _reviews, name="reviews")
    app.router.add_get(ns + "/images", _images_by_sha, name="images_by_sha")
    app.router.add_get(ns + "/similar", _similar, name="similar")
    app.router.add_post(image + "/resolution", _resolve, name="image_resolution")
    app.router.add_post(image + "/resolution/undo", _undo, name="image_resolution_undo")
    app.router.add_get(image + "/thumbnail", _thumbnail, name="image_thumbnail")


def source_uri(request: web.Request) -> str | None:
    """The upload's optional source URI header, validated."""
    value = request.headers.get(SOURCE_URI_HEADER)
    if value is None or value == "":
        return None
    if len(value) > MAX_SOURCE_URI_CHARS or not re.match(r"https?://[^\s]+\Z", value):
        raise InvalidSourceUri(
            f"{SOURCE_URI_HEADER} must be an http(s) URL of at most {MAX_SOURCE_URI_CHARS} characters"
        )
    return value


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def change_json(change: Change) -> dict[str, Any]:
    return {
        "by": change.by,
        "at": iso(change.at),
        "from": {"verdict": change.from_verdict.value, "duplicate_of": change.from_duplicate_of},
        "to": {"verdict": change.to_verdict.value, "duplicate_of": change.to_duplicate_of},
        "reason": change.reason,
        "undo": change.undo,
    }


def _who(request: web.Request) -> str:
    principal = request.get(PRINCIPAL)
    return principal.id if principal is not None else "anonymous"


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise InvalidQuery(f"{name} must be an integer from {low} to {high}")
    return int(raw)


# --- handlers ---------------------------------------------------------------------------


def _entry_json(entry: QueueEntry) -> dict[str, Any]:
    record = entry.record
    candidates = []
    if record.duplicate_of is not None:
        candidates.append(
            {
                "image_id": record.duplicate_of,
                "distance": record.distance,
                "similarity": record.similarity,
                "match": record.match.value if record.match else None,
                "source_uri": entry.candidate_source_uri,
                "has_thumbnail": bool(entry.candidate is not None and entry.candidate.thumbnail),
            }
        )
    return {
        "image_id": record.image_id,
        "seq": entry.item.seq,
        "created_at": iso(record.created_at),
        "source_uri": entry.item.source_uri,
        "duplicate_of": record.duplicate_of,
        "distance": record.distance,
        "similarity": record.similarity,
        "has_thumbnail": bool(record.thumbnail),
        "sha256": record.sha256,
        "candidates": candidates,
    }


async def _reviews(request: web.Request) -> web.Response:
    """Open reviews, oldest first; `cursor` is the last seq of the previous page."""
    ns = request.match_info["ns"]
    after = _int_param(request, "cursor", 0, 0, 10**18 - 1)
    limit = _int_param(request, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
    page = await request.app[DESK].queue(ns, after=after, limit=limit)
    return web.json_response(
        {
            "namespace": ns,
            "reviews": [_entry_json(e) for e in page.entries],
            "next_cursor": str(page.next_cursor) if page.next_cursor is not None else None,
        }
    )


async def _resolution_body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_RESOLUTION_BODY:
        raise InvalidResolution(f"the body must be a JSON object of at most {MAX_RESOLUTION_BODY} bytes")
    raw = await request.content.read(MAX_RESOLUTION_BODY + 1)
    if len(raw) > MAX_RESOLUTION_BODY:
        raise InvalidResolution(f"the body must be a JSON object of at most {MAX_RESOLUTION_BODY} bytes")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidResolution("the body is not JSON") from None
    if not isinstance(body, dict):
        raise InvalidResolution("the body must be a JSON object")
    for key in ("outcome", "duplicate_of", "reason"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise InvalidResolution(f"{key} must be a string")
    return body


async def _resolve(request: web.Request) -> web.Response:
    ns, image_id = request.match_info["ns"], request.match_info["image_id"]
    body = await _resolution_body(request)
    try:
        outcome = Outcome(str(body.get("outcome") or ""))
    except ValueError:
        raise InvalidResolution("outcome must be 'duplicate' or 'distinct'") from None
    record, change = await request.app[DESK].resolve(
        ns, image_id, outcome, body.get("duplicate_of") or None, by=_who(request), reason=body.get("reason") or ""
    )
    return web.json_response(_changed_json(record, change))


async def _undo(request: web.Request) -> web.Response:
    ns, image_id = request.match_info["ns"], request.match_info["image_id"]
    body = await _resolution_body(request)
    record, change = await request.app[DESK].undo(ns, image_id, by=_who(request), reason=body.get("reason") or "")
    return web.json_response(_changed_json(record, change))


def _changed_json(record: ImageRecord, change: Change) -> dict[str, Any]:
    """The decision as every other answer gives it, and the change that led to it."""
    return {**decision_view(record), "change": change_json(change)}


def _brief(record: ImageRecord) -> dict[str, Any]:
    return {
        "image_id": record.image_id,
        "verdict": record.verdict.value,
        "duplicate_of": record.duplicate_of,
        "created_at": iso(record.created_at),
    }


async def _images_by_sha(request: web.Request) -> web.Response:
    ns = request.match_info["ns"]
    sha = request.query.get("sha256", "")
    if not _SHA256_RE.fullmatch(sha):
        raise InvalidQuery("sha256 must be 64 hexadecimal digits")
    records = await request.app[DESK].find_sha(ns, sha.lower())
    return web.json_response({"namespace": ns, "sha256": sha.lower(), "images": [_brief(r) for r in records]})


async def _similar(request: web.Request) -> web.Response:
    """Kept images within `radius` of a 64-bit perceptual code (hex), nearest first."""
    ns = request.match_info["ns"]
    code = request.query.get("phash", "")
    if not _CODE_RE.fullmatch(code):
        raise InvalidQuery("phash must be a 64-bit code in hexadecimal (1-16 digits)")
    radius = _int_param(request, "radius", 10, 0, MAX_LOOKUP_RADIUS)
    hits = await request.app[DESK].similar(ns, int(code, 16), radius)
    return web.json_response(
        {
            "namespace": ns,
            "phash": f"{int(code, 16):016x}",
            "radius": radius,
            "images": [{"image_id": i, "distance": d} for i, d in hits],
        }
    )


async def _namespace_stats(request: web.Request) -> web.Response:
    ns = request.match_info["ns"]
    stats = await request.app[DESK].stats(ns)
    return web.json_response(
        {
            "namespace": ns,
            "images": sum(stats.counts.values()),
            "counts": stats.counts,
            "indexed": stats.indexed,
            "open_reviews": stats.open_reviews,
        }
    )


async def _namespace_erase(request: web.Request) -> web.Response:
    """Erase every key of the tenant; `tombstone=true` also tells the decisions topic."""
    ns = request.match_info["ns"]
    tombstone = request.query.get("tombstone", "false")
    if tombstone not in ("true", "false"):
        raise InvalidQuery("tombstone must be true or false")
    erased = await request.app[DESK].erase(ns, tombstone=tombstone == "true")
    return web.json_response({"namespace": ns, "removed": {"images": erased.images, "keys": erased.keys}})


async def _thumbnail(request: web.Request) -> web.Response:
    """The stored verification thumbnail of a kept image as a PNG (no image bytes are
    stored: this 16x16 view is what the service keeps)."""
    ns, image_id = request.match_info["ns"], request.match_info["image_id"]
    record = await request.app[DESK].index.get(ns, image_id)
    if record is None:
        raise UnknownImage(f"no image {image_id!r} in namespace {ns!r}")
    if not record.thumbnail:
        raise UnknownImage(f"image {image_id!r} has no stored thumbnail (only kept images have one)")
    return web.Response(
        body=render_thumbnail(record.thumbnail), content_type="image/png",
        headers={hdrs.CACHE_CONTROL: "private, max-age=300"},
    )


def render_thumbnail(blob: bytes) -> bytes:
    """The first grey view, with its colour planes when stored, as an upscaled PNG."""
    views = unpack_thumbnails(blob)
    if views is None:
        raise UnknownImage("the stored thumbnail is not in a known layout")
    grey = Image.fromarray(views.grey[0].astype(np.uint8), "L")
    if views.chroma is not None:
        planes = (Image.fromarray((views.chroma[0, i] + 128.0).astype(np.uint8), "L") for i in (0, 1))
        sized = [p.resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BILINEAR) for p in planes]
        picture = Image.merge("YCbCr", (grey, *sized)).convert("RGB")
    else:
        picture = grey.convert("RGB")
    out = io.BytesIO()
    picture.resize((THUMBNAIL_RENDER_SIDE, THUMBNAIL_RENDER_SIDE), Image.Resampling.NEAREST).save(out, "PNG")
    return out.getvalue()
