"""What the fuzzers feed and what they hold true, shared by the short CI run
(tests/test_fuzz.py, hypothesis) and the long run (`imgdedup bench fuzz`, atheris).

Three targets, each with one invariant:
- decode: image bytes give a `Fingerprint` or an `InputError`, never anything else;
- events: a Kafka record (value and headers) gives an `UploadEvent` or an `InputError`,
  and a rejection of it can always be encoded;
- http: any request gets a JSON `{"error", "detail"}` body with a documented code (or a
  success), never a 500.
A break of an invariant raises `Escaped`, whose `signature` groups failures by cause.
"""

from __future__ import annotations

import io
import json
import re
import traceback
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import ClientError, InvalidURL
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image, features
from yarl import URL

from imgdedup.adapters.events import (
    UploadEvent,
    decode_upload,
    encode_decision,
    encode_upload,
    is_json,
    partial_identity,
    rejection,
)
from imgdedup.adapters.http_api import create_http_app
from imgdedup.auth import Authenticator, new_key, parse_keys
from imgdedup.config import Settings
from imgdedup.decisions.deduplicator import Deduplicator
from imgdedup.decisions.rules import Policy
from imgdedup.errors import InputError
from imgdedup.fingerprint import Fingerprint, ImageLimits, fingerprint
from imgdedup.hasher import Hasher
from imgdedup.index.memory import MemoryIndex
from imgdedup.metrics import Metrics

#: Small limits: fuzzed headers claiming huge canvases are refused, not decoded.
DECODE_LIMITS = ImageLimits(max_bytes=1 << 20, max_pixels=4_000_000)


class Escaped(Exception):
    """An invariant broke: what escaped, and where (for grouping distinct failures)."""

    def __init__(self, what: str, signature: str) -> None:
        super().__init__(what)
        self.signature = signature


def _signature(exc: BaseException) -> str:
    """Exception type plus the innermost frame: one signature per distinct failure."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
    return f"{type(exc).__name__} at {where}"


# --- decode -----------------------------------------------------------------------------


def _picture(mode: str, size: tuple[int, int] = (24, 16)) -> Image.Image:
    rng = np.random.default_rng(7)
    rgb = Image.fromarray(rng.integers(0, 256, (4, 6, 3), dtype=np.uint8), "RGB").resize(size)
    if mode == "RGBA":
        rgba = rgb.convert("RGBA")
        rgba.putalpha(Image.linear_gradient("L").resize(size))
        return rgba
    return rgb.convert(mode)


@cache
def image_seeds() -> dict[str, bytes]:
    """Small valid files of every supported format (and a few refused ones), in several
    modes and codecs: the starting points mutations work from."""
    specs: list[tuple[str, str, str, dict[str, Any]]] = [
        ("jpeg-rgb", "RGB", "JPEG", {"quality": 80}),
        ("jpeg-gray", "L", "JPEG", {}),
        ("jpeg-cmyk", "CMYK", "JPEG", {}),
        ("jpeg-progressive", "RGB", "JPEG", {"progressive": True}),
        ("png-rgba", "RGBA", "PNG", {}),
        ("png-palette", "P", "PNG", {"transparency": 0}),
        ("png-gray16", "I;16", "PNG", {}),
        ("gif", "P", "GIF", {}),
        ("webp-lossy", "RGB", "WEBP", {"quality": 50}),
        ("webp-lossless", "RGBA", "WEBP", {"lossless": True}),
        ("tiff-raw", "RGB", "TIFF", {}),
        ("tiff-deflate", "RGB", "TIFF", {"compression": "tiff_deflate"}),
        ("tiff-lzw-gray", "L", "TIFF", {"compression": "tiff_lzw"}),
        ("tiff-bilevel", "1", "TIFF", {}),
        ("bmp", "RGB", "BMP", {}),
        ("bmp-palette", "P", "BMP", {}),
        ("ico", "RGBA", "ICO", {}),  # refused: not an upload format
        ("tga", "RGB", "TGA", {}),  # refused
        ("ppm", "RGB", "PPM", {}),  # refused
    ]
    if features.check("avif"):
        specs.append(("avif", "RGB", "AVIF", {"quality": 50}))
    seeds: dict[str, bytes] = {}
    for name, mode, fmt, options in specs:
        out = io.BytesIO()
        _picture(mode).save(out, fmt, **options)
        seeds[name] = out.getvalue()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the orientation path
    out = io.BytesIO()
    _picture("RGB").save(out, "JPEG", exif=exif.tobytes())
    seeds["jpeg-exif-rotated"] = out.getvalue()
    return seeds


def check_decode(data: bytes) -> Fingerprint | None:
    """The decode invariant; returns the fingerprint, or None for a refusal."""
    try:
        return fingerprint(data, DECODE_LIMITS)
    except InputError:
        return None
    except Exception as exc:
        raise Escaped(f"fingerprint raised {exc!r}", _signature(exc)) from exc


def mutate(data: bytes, choices: Sequence[int]) -> bytes:
    """Apply edits to `data` driven by `choices` (each a random int): byte overwrite,
    bit flip, delete, insert, duplicate a span, truncate. Deterministic in `choices`."""
    out = bytearray(data)
    for i in range(0, len(choices) - 2, 3):
        if not out:
            break
        op, where, what = choices[i] % 6, choices[i + 1] % len(out), choices[i + 2]
        if op == 0:
            out[where] = what & 0xFF
        elif op == 1:
            out[where] ^= 1 << (what % 8)
        elif op == 2:
            del out[where : where + 1 + what % 16]
        elif op == 3:
            out[where:where] = bytes([what & 0xFF]) * (1 + what % 8)
        elif op == 4:
            out[where:where] = out[where : where + 1 + what % 32]
        else:
            del out[max(1, where) :]
    return bytes(out)


# --- events -----------------------------------------------------------------------------

JSON_HEADERS = (("content-type", b"application/json"),)


@cache
def event_seeds() -> list[tuple[bytes, tuple[tuple[str, bytes], ...]]]:
    """Valid records in both wire formats, with bytes and with a URL."""
    events = [
        UploadEvent("e-1", "shop", "sku-1.jpg", "image/jpeg", b"\xff\xd8\xff\xe0img", None, 1700000000000, {"k": "v"}),
        UploadEvent("e-2", "tenant_a.v2", "caf\u00e9 100%", "", None, "https://example.com/a.png"),
    ]
    seeds: list[tuple[bytes, tuple[tuple[str, bytes], ...]]] = []
    for event in events:
        seeds.append((encode_upload(event), ()))
        seeds.append((encode_upload(event, as_json=True), JSON_HEADERS))
    return seeds


def check_event(value: bytes | None, headers: Sequence[tuple[str, bytes]] | None) -> UploadEvent | None:
    """The events invariant: an event, or an `InputError` whose rejection (with the
    identity the consumer salvages) encodes in the record's format."""
    try:
        return decode_upload(value, headers, "fallback-id")
    except InputError as exc:
        try:
            event_id, namespace, image_id = partial_identity(value, headers)
            message = rejection(
                event_id=event_id or "fallback-id", namespace=namespace, image_id=image_id,
                code=exc.code, detail=exc.detail,
            )
            encode_decision(message, as_json=is_json(headers))
        except Exception as inner:
            raise Escaped(f"rejecting the record raised {inner!r}", _signature(inner)) from inner
        return None
    except Exception as exc:
        raise Escaped(f"decode_upload raised {exc!r}", _signature(exc)) from exc


# --- http -------------------------------------------------------------------------------

_README = Path(__file__).resolve().parents[3] / "README.md"


@cache
def documented_error_codes() -> frozenset[str]:
    """The codes README's error paragraph lists (from "Errors are JSON" to the next
    blank line): an answer with any other code breaks the documented contract."""
    text = _README.read_text(encoding="utf-8")
    start = text.index("Errors are JSON")
    paragraph = text[start : text.index("\n\n", start)]
    return frozenset(re.findall(r"`([a-z][a-z_]+)`", paragraph))


@dataclass(frozen=True, slots=True)
class FuzzRequest:
    method: str
    #: Already percent-encoded as it goes on the wire.
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes


async def check_http(client: TestClient, request: FuzzRequest) -> int:
    """The HTTP invariant; returns the status. A success is 2xx; anything else must be
    a JSON error with a documented code, and never 500."""
    try:
        response = await client.request(
            request.method, URL(request.path, encoded=True), headers=list(request.headers),
            data=request.body if request.body else None,
        )
    except (ValueError, InvalidURL):
        return -1  # the client refused to send it: not a request the server can see
    except ClientError as exc:
        raise Escaped(f"{request.method} {request.path[:80]}: no answer: {exc!r}", _signature(exc)) from exc
    async with response:
        raw = await response.read()
        status = response.status
        where = f"{request.method} {request.path[:80]} -> {status}"
        if status >= 500 and status != 503:
            raise Escaped(f"{where}: {raw[:200]!r}", f"HTTP {status} on {request.method}")
        if status < 400 or request.method == "HEAD":
            return status
        if response.content_type != "application/json":
            raise Escaped(f"{where}: {response.content_type} body {raw[:200]!r}", f"non-JSON {status}")
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise Escaped(f"{where}: unparsable JSON {raw[:200]!r}", f"bad JSON {status}") from exc
        if not (isinstance(body, dict) and set(body) == {"error", "detail"}):
            raise Escaped(f"{where}: body {body!r}", f"error body shape {status}")
        if body["error"] not in documented_error_codes():
            raise Escaped(f"{where}: undocumented code {body['error']!r}", f"undocumented {body['error']}")
        return status


#: Namespace the narrow key (`HttpTarget.tokens["narrow"]`) may check in, and nothing else.
NARROW_NAMESPACE = "shop"


@dataclass(frozen=True, slots=True)
class HttpTarget:
    """A client of a real server for the service's app, authentication on; the client
    sends no credential of its own: `tokens` holds an admin and a narrow one."""

    client: TestClient
    tokens: dict[str, str]


async def _ready() -> dict[str, str]:
    return {"index": "ok"}


@asynccontextmanager
async def http_target() -> AsyncIterator[HttpTarget]:
    """The app over an in-process index, hashing on a thread, small limits."""
    settings = Settings(max_image_bytes=256 * 1024, max_image_pixels=4_000_000)
    settings.validate()
    tokens, entries = {}, []
    for name, namespaces, roles in (("admin", ["*"], ["admin"]), ("narrow", [NARROW_NAMESPACE], ["check"])):
        tokens[name], entry = new_key(f"fuzz-{name}", namespaces, roles)
        entries.append(entry)
    auth = Authenticator.with_keys(parse_keys({"keys": entries}, "fuzz keys"))
    hasher = Hasher(ImageLimits(settings.max_image_bytes, settings.max_image_pixels), workers=1, use_threads=True)
    await hasher.start()
    metrics = Metrics()
    index = MemoryIndex()
    dedup = Deduplicator(index, hasher, Policy(8, 12), metrics, max_in_flight=4)
    client = TestClient(TestServer(create_http_app(dedup, metrics, settings, _ready, auth)))
    await client.start_server()
    try:
        yield HttpTarget(client, tokens)
    finally:
        await client.close()
        await hasher.close()
        await index.close()
