"""libFuzzer's byte strings -> calls of the fuzz targets (`imgdedup bench fuzz`). Each
`TARGETS` entry builds (one_input, seeds): the function atheris calls with each input,
and the starting corpus, which gives the byte-level mutations real structure to work on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from urllib.parse import quote

import atheris

from imgdedup_devtools.fuzz_targets import (
    FuzzRequest,
    HttpTarget,
    check_decode,
    check_event,
    check_http,
    event_seeds,
    http_target,
    image_seeds,
)

OneInput = Callable[[bytes], None]

#: Header sets the first byte of an events input picks (valid, odd and broken ones).
EVENT_HEADERS: tuple[tuple[tuple[str, bytes], ...], ...] = (
    (),
    (("content-type", b"application/json"),),
    (("Content-Type", b"APPLICATION/JSON; charset=utf-8"),),
    (("content-type", b"application/x-protobuf"),),
    (("content-type", b"\xff\xfe json"),),
    (("content-type", b""), ("content-type", b"application/json")),
    (("x-trace", b"\x00\x01"), ("content-type", b" application/json ")),
    (("content-type", b"text/plain"),),
)


def decode_target() -> tuple[OneInput, dict[str, bytes]]:
    def one_input(data: bytes) -> None:
        check_decode(data)

    return one_input, dict(image_seeds())


def events_target() -> tuple[OneInput, dict[str, bytes]]:
    def one_input(data: bytes) -> None:
        if not data:
            check_event(None, None)
            return
        check_event(data[1:], EVENT_HEADERS[data[0] % len(EVENT_HEADERS)])

    seeds = {}
    for n, (value, headers) in enumerate(event_seeds()):
        seeds[f"event-{n}"] = bytes([EVENT_HEADERS.index(headers)]) + value
    return one_input, seeds


METHODS = ("GET", "POST", "DELETE", "PUT", "HEAD", "OPTIONS", "PATCH", "POST")
CONTENT_TYPES = (
    None, "image/jpeg", "image/png", "application/octet-stream", "application/json",
    "multipart/form-data; boundary=x", "image/", "application/x-www-form-urlencoded", "text/plain; charset=\u00e9",
)


def _segment(fdp: atheris.FuzzedDataProvider) -> str:
    """A path segment: a valid id, a dot segment, or fuzzed text percent-encoded (or raw)."""
    kind = fdp.ConsumeIntInRange(0, 5)
    if kind == 0:
        return "shop"
    if kind == 1:
        return fdp.PickValueInList([".", "..", "%2E", "%2e%2E", "...", "%00", "%ff", "%", "a%2Fb"])
    text = fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 600 if kind == 5 else 40))
    if kind == 2:  # raw, minus what cannot stand in a request target
        return "".join(c for c in text if 0x20 < ord(c) < 0x7F and c not in "/?#%")
    return quote(text, safe="", errors="surrogatepass")  # lone surrogates: invalid UTF-8


def http_target_inputs() -> tuple[OneInput, dict[str, bytes]]:
    loop = asyncio.new_event_loop()
    context = http_target()
    target: HttpTarget = loop.run_until_complete(context.__aenter__())
    images = list(image_seeds().values())

    def one_input(data: bytes, _keep_open: object = context) -> None:
        fdp = atheris.FuzzedDataProvider(data)
        method = fdp.PickValueInList(list(METHODS))
        ns, image_id = _segment(fdp), _segment(fdp)
        path = fdp.PickValueInList([
            f"/v1/namespaces/{ns}/images/{image_id}", f"/v1/namespaces/{ns}/images/{image_id}/duplicates",
            f"/v1/namespaces/{ns}/check", "/healthz", "/readyz", "/openapi.json", f"/v1/{ns}", f"/{image_id}",
        ])
        headers: list[tuple[str, str]] = []
        token = fdp.ConsumeIntInRange(0, 4)
        if token < 2:
            headers.append(("Authorization", f"Bearer {target.tokens['admin' if token == 0 else 'narrow']}"))
        elif token == 2:
            headers.append(("Authorization", "".join(c for c in fdp.ConsumeUnicode(30) if 0x20 <= ord(c) < 0x7F)))
        content_type = fdp.PickValueInList(list(CONTENT_TYPES))
        if content_type is not None:
            headers.append(("Content-Type", content_type))
        body_kind = fdp.ConsumeIntInRange(0, 3)
        if body_kind == 0:
            body = b""
        elif body_kind == 1:  # a real image, its tail overwritten by the rest
            image = images[fdp.ConsumeIntInRange(0, len(images) - 1)]
            cut = fdp.ConsumeIntInRange(0, len(image))
            body = image[:cut] + fdp.ConsumeBytes(len(image) - cut)
        else:
            body = fdp.ConsumeBytes(fdp.remaining_bytes())
        loop.run_until_complete(check_http(target.client, FuzzRequest(method, path, tuple(headers), body)))

    seeds = {f"http-{n}": bytes([n * 37 % 256]) * 16 + image for n, image in enumerate(images[:6])}
    return one_input, seeds


TARGETS: dict[str, Callable[[], tuple[OneInput, dict[str, bytes]]]] = {
    "decode": decode_target,
    "events": events_target,
    "http": http_target_inputs,
}
