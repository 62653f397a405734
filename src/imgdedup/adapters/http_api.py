"""Inline HTTP adapter: register, check, look up and forget images over JSON.

Handlers only translate between HTTP and the `Deduplicator` use cases, so this path and
the Kafka path decide identically. One middleware maps every failure to the
`{"error": CODE, "detail": TEXT}` body and counts requests by route template; inside it,
`http_auth.auth_middleware` admits only callers whose credential allows the route.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from urllib.parse import quote

from aiohttp import HttpVersion11, hdrs, web

from imgdedup.adapters.body_budget import BodyBudget, BudgetExhausted, Reservation
from imgdedup.adapters.decision_view import decision_view
from imgdedup.adapters.http_auth import AUTH, auth_middleware, check_route_policies
from imgdedup.adapters.http_review import DESK, add_review_routes, change_json, source_uri
from imgdedup.auth import Authenticator
from imgdedup.config import Settings
from imgdedup.decisions.deduplicator import CheckResult, Deduplicator
from imgdedup.decisions.review_desk import ReviewDesk
from imgdedup.errors import ImageTooLarge, IndexUnavailable, InputError, TransientError
from imgdedup.fingerprint import code_hex
from imgdedup.metrics import Metrics
from imgdedup.records import ImageRecord, Registration

logger = logging.getLogger("imgdedup.http")

Readiness = Callable[[], Awaitable[dict[str, str]]]

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SOURCE = "http"
#: Route label for requests no route matched (404/405): keeps the label set bounded.
UNMATCHED_ROUTE = "unmatched"
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_ACCEPTED_MEDIA = "application/octet-stream"
#: What `curl --data-binary` sends when no type is given: a client that did not say,
#: not a form. The bytes are sniffed either way.
_UNSPECIFIED_MEDIA = frozenset({"application/x-www-form-urlencoded"})
#: Reservation step for bodies of unknown length (chunked): room is reserved before
#: each step is read.
_CHUNKED_STEP = 1 << 20
#: Status label of requests whose client went away before the answer (nginx's 499), and
#: of requests whose body did not arrive within IMGDEDUP_HTTP_READ_TIMEOUT_S.
CLIENT_GONE_STATUS = 499
READ_TIMEOUT_STATUS = 408


class UnsupportedMediaType(InputError, code="unsupported_media_type", http_status=415):
    """The request declared a body type that is not an image (e.g. a JSON or form post)."""


@dataclass(frozen=True, slots=True)
class _State:
    dedup: Deduplicator
    metrics: Metrics
    settings: Settings
    readiness: Readiness
    openapi: bytes
    bodies: BodyBudget


STATE: web.AppKey[_State] = web.AppKey("imgdedup_http_state", _State)


def create_http_app(
    dedup: Deduplicator,
    metrics: Metrics,
    settings: Settings,
    readiness: Readiness,
    auth: Authenticator,
    desk: ReviewDesk | None = None,
) -> web.Application:
    """Build the aiohttp application; the caller owns the runner and the dedup's lifecycle.
    `auth` decides who may call what (`Authenticator.disabled()`: everyone, everything)."""
    # +1: some aiohttp versions refuse a body of exactly client_max_size bytes; the exact
    # limit is checked again after reading, so the boundary is the same on every version.
    app = web.Application(
        client_max_size=settings.max_image_bytes + 1, middlewares=[_middleware, auth_middleware]
    )
    bodies = BodyBudget(settings.effective_max_body_bytes_in_flight, settings.http_body_wait_s, metrics)
    app[STATE] = _State(dedup, metrics, settings, readiness, _load_openapi(), bodies)
    app[AUTH] = auth
    image = "/v1/namespaces/{ns}/images/{image_id}"
    app.router.add_post(image, _register, name="image_register", expect_handler=_expect_continue_only)
    app.router.add_get(image, _get_record, name="image", expect_handler=_expect_continue_only)
    app.router.add_delete(image, _delete, name="image_delete", expect_handler=_expect_continue_only)
    app.router.add_get(image + "/duplicates", _duplicates, name="image_duplicates", expect_handler=_expect_continue_only)
    app.router.add_post("/v1/namespaces/{ns}/check", _check, name="check", expect_handler=_expect_continue_only)
    add_review_routes(app, desk or ReviewDesk(dedup.index))
    app.router.add_get("/healthz", _healthz, name="healthz", expect_handler=_expect_continue_only)
    app.router.add_get("/readyz", _readyz, name="readyz", expect_handler=_expect_continue_only)
    app.router.add_get("/metrics", _metrics, name="metrics", expect_handler=_expect_continue_only)
    app.router.add_get("/openapi.json", _openapi, name="openapi", expect_handler=_expect_continue_only)
    check_route_policies(app)
    return app


async def _expect_continue_only(request: web.Request) -> None:
    """`Expect: 100-continue` is answered as aiohttp does; any other expectation is
    ignored (RFC 9110 lets a server do so) instead of aiohttp's plain-text 417, which
    would bypass the JSON error middleware."""
    expect = request.headers.get(hdrs.EXPECT, "")
    if expect.lower() == "100-continue" and request.version == HttpVersion11:
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the interim answer is not the response's


def _load_openapi() -> bytes:
    """Read and parse once at start-up: a broken document fails the deploy, not a request."""
    raw = resources.files("imgdedup.adapters").joinpath("openapi.json").read_bytes()
    json.loads(raw)
    return raw


# --- handlers ---------------------------------------------------------------------------


async def _register(request: web.Request) -> web.Response:
    """Decide and record an image; a replay of the same bytes answers the stored decision."""
    state = request.app[STATE]
    ns, image_id = request.match_info["ns"], request.match_info["image_id"]
    started = time.perf_counter()
    uri = source_uri(request)
    with state.metrics.in_flight.labels(SOURCE).track_inprogress():
        async with _image_body(request) as data:
            registration = await state.dedup.register(ns, image_id, data, source_uri=uri)
    state.metrics.decision_seconds.labels(SOURCE).observe(time.perf_counter() - started)
    if registration.replayed:
        state.metrics.replays.labels(SOURCE).inc()
    else:
        state.metrics.decisions.labels(SOURCE, registration.record.verdict.value).inc()
    return web.json_response(
        _registration_json(registration),
        status=200 if registration.replayed else 201,
        headers={hdrs.LOCATION: _image_location(request, ns, image_id)},
    )


async def _check(request: web.Request) -> web.Response:
    """Dry run: what would registering these bytes decide? Nothing is stored."""
    state = request.app[STATE]
    ns = request.match_info["ns"]
    with state.metrics.in_flight.labels(SOURCE).track_inprogress():
        async with _image_body(request) as data:
            result = await state.dedup.check(ns, data)
    return web.json_response(_check_json(ns, result))


async def _get_record(request: web.Request) -> web.Response:
    state = request.app[STATE]
    ns, image_id = request.match_info["ns"], request.match_info["image_id"]
    record = await state.dedup.get(ns, image_id)
    if record is None:
        return _not_found(ns, image_id)
    history = await request.app[DESK].history(ns, image_id)
    return web.json_response({**_record_json(record), "history": [change_json(c) for c in history]})


async def _duplicates(request: web.Request) -> web.Response:
    """Images judged duplicate/review of this one; 404 tells "unknown" apart from "none"."""
    state = request.app[STATE]
    ns, image_id = request.match_info["ns"], request.match_info["image_id"]
    if await state.dedup.get(ns, image_id) is None:
        return _not_found(ns, image_id)
    records = await state.dedup.duplicates_of(ns, image_id)
    return web.json_response(
        {
            "image_id": image_id,
            "namespace": ns,
            "duplicates": [
                {
                    "image_id": r.image_id,
                    "verdict": r.verdict.value,
                    "distance": r.distance,
                    "match": r.match.value if r.match else None,
                    "created_at": _iso(r.created_at),
                }
                for r in records
            ],
        }
    )


async def _delete(request: web.Request) -> web.Response:
    state = request.app[STATE]
    ns, image_id = request.match_info["ns"], request.match_info["image_id"]
    if not await state.dedup.remove(ns, image_id):
        return _not_found(ns, image_id)
    return web.Response(status=204)


async def _healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers. Dependencies are /readyz's business, not a restart's."""
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    """Readiness: take this replica out of rotation while a dependency is down."""
    try:
        checks = dict(await request.app[STATE].readiness())
    except Exception as exc:  # the contract says it does not raise; stay honest if it does
        logger.exception("readiness probe raised")
        checks = {"readiness": f"probe failed: {type(exc).__name__}"}
    ready = all(value == "ok" for value in checks.values())
    return web.json_response(
        {"status": "ready" if ready else "unavailable", "checks": checks},
        status=200 if ready else 503,
    )


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[STATE].metrics.render()
    return web.Response(body=body, headers={hdrs.CONTENT_TYPE: METRICS_CONTENT_TYPE})


async def _openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[STATE].openapi, content_type="application/json")


# --- request bodies ---------------------------------------------------------------------


@asynccontextmanager
async def _image_body(request: web.Request) -> AsyncIterator[bytes]:
    """The raw image body, held within the body budget until the block ends (the
    response is decided). Oversized and non-image bodies are refused before any byte is
    read, and room for the body is reserved before it is read."""
    state = request.app[STATE]
    _check_body_headers(request, state.settings)
    async with state.bodies.reservation() as reservation:
        yield await _read_body(request, reservation, state.settings.max_image_bytes)


def _check_body_headers(request: web.Request, settings: Settings) -> None:
    declared = request.headers.get(hdrs.CONTENT_TYPE)
    if declared is not None:
        mime = request.content_type.lower()
        if not (mime.startswith("image/") or mime == _ACCEPTED_MEDIA or mime in _UNSPECIFIED_MEDIA):
            raise UnsupportedMediaType(
                f"Content-Type {mime!r} is not an image; send the raw bytes as image/* "
                f"or {_ACCEPTED_MEDIA}"
            )
    limit = settings.max_image_bytes
    length = request.content_length
    if length is not None and length > limit:
        raise ImageTooLarge(f"body is {length} bytes; the limit is {limit} bytes")


async def _read_body(request: web.Request, reservation: Reservation, limit: int) -> bytes:
    """Read at most what is reserved: the whole Content-Length up front (waiting for room),
    or step by step for a chunked body (later steps do not wait: a request must not hold
    part of the budget while it waits for more)."""
    length = request.content_length
    if length is not None:
        await reservation.grow(length, wait=True)
    chunks: list[bytes] = []
    total = 0
    while True:
        room = reservation.size - total
        if room == 0:
            if length is None and total < limit:
                await reservation.grow(min(_CHUNKED_STEP, limit - total), wait=total == 0)
                continue
            if await request.content.readany():  # anything past the limit
                raise ImageTooLarge(f"body exceeds the limit of {limit} bytes")
            break
        chunk = await request.content.read(room)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


# --- response bodies --------------------------------------------------------------------


def _iso(timestamp: float) -> str:
    return (
        datetime.fromtimestamp(timestamp, tz=UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def _registration_json(registration: Registration) -> dict[str, Any]:
    record = registration.record
    return {
        **decision_view(record, replayed=registration.replayed),
        "width": record.width,
        "height": record.height,
        "format": record.format,
        "created_at": _iso(record.created_at),
    }


def _record_json(record: ImageRecord) -> dict[str, Any]:
    return {
        **decision_view(record),
        "width": record.width,
        "height": record.height,
        "format": record.format,
        "size_bytes": record.size_bytes,
        "created_at": _iso(record.created_at),
        "event_id": record.event_id,
    }


def _check_json(namespace: str, result: CheckResult) -> dict[str, Any]:
    return {
        "namespace": namespace,
        "verdict": result.verdict.value,
        "duplicate_of": result.decision.duplicate_of if result.decision else None,
        "similarity": result.decision.similarity if result.decision else None,
        "matches": [
            {"image_id": m.image_id, "distance": m.distance, "match": m.match.value}
            for m in result.matches
        ],
        "sha256": result.fingerprint.sha256_hex,
        "phashes": [code_hex(c) for c in result.fingerprint.codes],
    }


def _error(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response({"error": code, "detail": detail}, status=status, headers=headers)


def _image_location(request: web.Request, namespace: str, image_id: str) -> str:
    """The image's URL path, each identifier percent-encoded as one path segment: an id
    holding '/', '..', '?' or '#' cannot point the client elsewhere."""
    template = request.app.router["image"].canonical
    return template.format(ns=quote(namespace, safe=""), image_id=quote(image_id, safe=""))


def _not_found(namespace: str, image_id: str) -> web.Response:
    logger.info(
        "image not found",
        extra={"namespace": namespace, "image_id": image_id, "error_code": "not_found"},
    )
    return _error(404, "not_found", f"no image {image_id!r} in namespace {namespace!r}")


# --- middleware -------------------------------------------------------------------------


def _route_label(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED_ROUTE


def _snake(reason: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", reason.lower()).strip("_") or "http_error"


def _from_http_exception(
    request: web.Request, exc: web.HTTPException, log: dict[str, Any]
) -> web.Response:
    """aiohttp's own errors (no route, wrong method, body cut off) in our JSON shape."""
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return _from_input_error(request, ImageTooLarge(exc.text or "request body too large"), log)
    headers: dict[str, str] = {}
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allow = exc.headers.get(hdrs.ALLOW, ",".join(sorted(exc.allowed_methods)))
        headers["Allow"] = allow
        detail = f"{request.method} is not allowed here; allowed: {allow}"
    elif isinstance(exc, web.HTTPNotFound):
        detail = f"no route for {request.method} {request.path}"
    else:
        detail = exc.reason
    code = _snake(exc.reason)
    logger.info(
        "http error: %s", code, extra={**log, "error_code": code, "http_status": exc.status}
    )
    return _error(exc.status, code, detail, headers or None)


def _from_input_error(request: web.Request, exc: InputError, log: dict[str, Any]) -> web.Response:
    request.app[STATE].metrics.rejections.labels(SOURCE, exc.code).inc()
    logger.info(
        "rejected: %s: %s",
        exc.code,
        exc.detail,
        extra={**log, "error_code": exc.code, "http_status": exc.http_status},
    )
    return _error(exc.http_status, exc.code, exc.detail)


def _overloaded(exc: BudgetExhausted, log: dict[str, Any]) -> web.Response:
    """No room in the body budget: shed the request; the client retries shortly. Logged
    at INFO like rejections: under overload a line per request would add to the load
    (`imgdedup_http_requests_total{status="503"}` counts them)."""
    logger.info(
        "overloaded: %s", exc, extra={**log, "error_code": "overloaded", "http_status": 503}
    )
    return _error(
        503,
        "overloaded",
        "too many request bodies in flight; retry shortly",
        headers={hdrs.RETRY_AFTER: "1"},
    )


def _client_gone(request: web.Request, exc: Exception) -> bool:
    """The client closed the connection (or it was closed for reading too slowly)."""
    transport = request.transport
    return isinstance(exc, ConnectionError) and (transport is None or transport.is_closing())


def _client_gone_response(request: web.Request, log: dict[str, Any]) -> web.Response:
    """Nobody to answer: log without a traceback and label the request 499 (or 408 when
    its body did not arrive in time), never as a server error."""
    timed_out = getattr(request.protocol, "read_timed_out", False)
    status = READ_TIMEOUT_STATUS if timed_out else CLIENT_GONE_STATUS
    logger.info(
        "request body not received in time" if timed_out else "client disconnected before the answer",
        extra={**log, "http_status": status},
    )
    return web.Response(status=status)


@web.middleware
async def _middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Map every failure to JSON and count every request by route template and status
    (never by raw path, which would give one time series per image id)."""
    log = {
        "namespace": request.match_info.get("ns"),
        "image_id": request.match_info.get("image_id"),
        "method": request.method,
        "path": request.path,
    }
    response: web.StreamResponse
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = exc if exc.status < 400 else _from_http_exception(request, exc, log)
    except InputError as exc:
        response = _from_input_error(request, exc, log)
    except BudgetExhausted as exc:
        response = _overloaded(exc, log)
    except TransientError as exc:
        if isinstance(exc, IndexUnavailable):
            request.app[STATE].metrics.redis_errors.labels(SOURCE).inc()
        logger.warning(
            "unavailable: %s: %s",
            type(exc).__name__,
            exc,
            extra={**log, "error_code": "unavailable", "http_status": 503},
        )
        response = _error(
            503,
            "unavailable",
            "the index is temporarily unavailable; retry shortly",
            headers={hdrs.RETRY_AFTER: "1"},
        )
    except Exception as exc:
        if _client_gone(request, exc):
            response = _client_gone_response(request, log)
        else:
            logger.exception(
                "unhandled error", extra={**log, "error_code": "internal_error", "http_status": 500}
            )
            response = _error(500, "internal_error", "internal server error")
    method = request.method if request.method in _KNOWN_METHODS else "OTHER"
    request.app[STATE].metrics.http_requests.labels(
        route=_route_label(request), method=method, status=str(response.status)
    ).inc()
    return response
