"""Property fuzzing, short enough for every CI run: mutated images, records and HTTP
requests never make anything but a fingerprint/event/answer or a documented refusal.

The invariants live in `imgdedup_devtools.fuzz_targets`, shared with the long run
(`imgdedup bench fuzz`, coverage-guided with atheris). Examples are derandomised, so
a CI failure replays; the long run explores further.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from imagegen import poison_avif_header, poison_avif_pixels, poison_tiff
from imgdedup_devtools.fuzz_targets import (
    NARROW_NAMESPACE,
    FuzzRequest,
    HttpTarget,
    check_decode,
    check_event,
    check_http,
    documented_error_codes,
    event_seeds,
    http_target,
    image_seeds,
    mutate,
)
from PIL import features

FUZZ = settings(
    derandomize=True, database=None, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

SEEDS = image_seeds()
POISONS = {"tiff-typeerror": poison_tiff()}
if features.check("avif"):
    POISONS |= {"avif-open": poison_avif_header(), "avif-load": poison_avif_pixels()}

edits = st.lists(st.integers(0, 1 << 16), min_size=3, max_size=24)


def test_seeds_cover_the_supported_formats() -> None:
    """The mutations start from real files of every upload format."""
    formats = {fp.format for fp in map(check_decode, SEEDS.values()) if fp is not None}
    expected = {"JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP"} | ({"AVIF"} if features.check("avif") else set())
    assert formats == expected


@pytest.mark.parametrize("name", sorted(POISONS))
def test_known_poison_files_are_refused(name: str) -> None:
    assert check_decode(POISONS[name]) is None


# --- decode -----------------------------------------------------------------------------


@settings(FUZZ, max_examples=400)
@given(seed=st.sampled_from(sorted(SEEDS | POISONS)), choices=edits)
def test_mutated_images_give_a_fingerprint_or_an_input_error(seed: str, choices: list[int]) -> None:
    check_decode(mutate((SEEDS | POISONS)[seed], choices))


@settings(FUZZ, max_examples=100)
@given(data=st.binary(max_size=2048))
@example(data=b"")
@example(data=b"\x00")
def test_arbitrary_bytes_give_a_fingerprint_or_an_input_error(data: bytes) -> None:
    check_decode(data)


@settings(FUZZ, max_examples=60)
@given(magic=st.sampled_from([b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"RIFF\x00\x00\x00\x00WEBPVP8 ",
                              b"II*\x00", b"MM\x00*", b"BM", b"\x00\x00\x00\x1cftypavif"]),
       rest=st.binary(max_size=512))
def test_a_magic_number_and_garbage_is_refused(magic: bytes, rest: bytes) -> None:
    check_decode(magic + rest)


# --- events -----------------------------------------------------------------------------

JSON = ("content-type", b"application/json")
header_sets = st.one_of(
    st.just(()), st.just((JSON,)),
    st.lists(st.tuples(st.sampled_from(["content-type", "Content-Type", "x-trace"]),
                       st.one_of(st.sampled_from([b"application/json", b"APPLICATION/JSON; charset=utf-8",
                                                  b"application/x-protobuf", b""]), st.binary(max_size=20))),
             max_size=3).map(tuple),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
EVENT_FIELDS = ["eventId", "event_id", "namespace", "imageId", "image_id", "contentType", "data", "url",
                "uploadedAtMs", "attributes", "unknownField"]


@settings(FUZZ, max_examples=300)
@given(seed=st.sampled_from(range(len(event_seeds()))), choices=edits, headers=st.none() | header_sets)
def test_mutated_records_give_an_event_or_an_input_error(seed: int, choices: list[int], headers) -> None:
    value, seed_headers = event_seeds()[seed]
    check_event(mutate(value, choices), seed_headers if headers is None else headers)


@settings(FUZZ, max_examples=200)
@given(value=st.none() | st.binary(max_size=300), headers=header_sets)
def test_arbitrary_records_give_an_event_or_an_input_error(value: bytes | None, headers) -> None:
    check_event(value, headers)


@settings(FUZZ, max_examples=300)
@given(document=st.dictionaries(st.sampled_from(EVENT_FIELDS), json_values, max_size=8) | json_values,
       as_text=st.booleans())
@example(document={"namespace": ".", "imageId": "a", "data": "aW1n"}, as_text=True)
@example(document={"namespace": "shop", "imageId": "..", "url": "https://e.com/a"}, as_text=True)
def test_json_documents_give_an_event_or_an_input_error(document: object, as_text: bool) -> None:
    value = json.dumps(document).encode() if as_text else json.dumps(document, ensure_ascii=False).encode()
    event = check_event(value, (JSON,))
    if event is not None:  # accepted: then it names something addressable
        assert event.namespace.strip(".") and event.image_id not in (".", "..")


def test_deeply_nested_json_is_an_input_error() -> None:
    assert check_event(b"[" * 100_000, (JSON,)) is None


# --- http -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http_loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def target(http_loop: asyncio.AbstractEventLoop) -> Iterator[HttpTarget]:
    context = http_target()
    yield http_loop.run_until_complete(context.__aenter__())
    http_loop.run_until_complete(context.__aexit__(None, None, None))


def _encoded(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="", errors="surrogatepass")


segments = st.one_of(
    st.sampled_from(["shop", NARROW_NAMESPACE, ".", "..", "%2E", "%2e%2E", "...", "%00", "%ff", "%", "a%2Fb",
                     "%C0%AE", "%E2%80%AE", "x" * 65, "i" * 513]),
    st.text(max_size=40).map(_encoded),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="/?#%"), max_size=30),
    st.text(min_size=500, max_size=700).map(_encoded),
)
tokens = st.sampled_from(["admin", "narrow", "none", "garbage"])
content_types = st.one_of(
    st.none(),
    st.sampled_from(["image/jpeg", "image/png", "application/octet-stream", "application/json", "text/plain",
                     "multipart/form-data; boundary=x", "image/", "application/x-www-form-urlencoded"]),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30),
)
bodies = st.one_of(
    st.just(b""),
    st.binary(max_size=200),
    st.tuples(st.sampled_from(sorted(SEEDS)), edits).map(lambda pair: mutate(SEEDS[pair[0]], pair[1])),
    st.sampled_from(sorted(SEEDS)).map(SEEDS.__getitem__),
)


def _request(target: HttpTarget, method: str, path: str, token: str, content_type: str | None, body: bytes,
             extra: list[tuple[str, str]]) -> FuzzRequest:
    headers = list(extra)
    if token in target.tokens:
        headers.append(("Authorization", f"Bearer {target.tokens[token]}"))
    elif token == "garbage":
        headers.append(("Authorization", "Bearer not-a-key"))
    if content_type is not None:
        headers.append(("Content-Type", content_type))
    return FuzzRequest(method, path, tuple(headers), body)


@settings(FUZZ, max_examples=250)
@given(
    method=st.sampled_from(["GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS"]),
    route=st.sampled_from(["image", "duplicates", "check", "other"]),
    ns=segments, image_id=segments, token=tokens, content_type=content_types, body=bodies,
    extra=st.lists(st.tuples(st.sampled_from(["Accept", "X-Request-Id", "Content-Encoding",
                                              ]),
                             st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20)),
                   max_size=2),
)
@example(method="POST", route="image", ns="shop", image_id="%2E", token="admin", content_type="image/tiff",
         body=poison_tiff(), extra=[])
def test_any_request_gets_json_with_a_documented_code_and_never_500(
    http_loop: asyncio.AbstractEventLoop, target: HttpTarget, method: str, route: str, ns: str, image_id: str,
    token: str, content_type: str | None, body: bytes, extra: list[tuple[str, str]],
) -> None:
    path = {
        "image": f"/v1/namespaces/{ns}/images/{image_id}",
        "duplicates": f"/v1/namespaces/{ns}/images/{image_id}/duplicates",
        "check": f"/v1/namespaces/{ns}/check",
        "other": f"/v1/{ns}/{image_id}",
    }[route]
    http_loop.run_until_complete(
        check_http(target.client, _request(target, method, path, token, content_type, body, extra))
    )


@pytest.mark.parametrize("name", sorted(POISONS))
def test_poison_files_over_http_are_400(http_loop: asyncio.AbstractEventLoop, target: HttpTarget, name: str) -> None:
    request = _request(target, "POST", "/v1/namespaces/shop/images/poison", "admin", "image/jpeg", POISONS[name], [])
    assert http_loop.run_until_complete(check_http(target.client, request)) == 400


def test_the_documented_codes_are_read_from_the_readme() -> None:
    codes = documented_error_codes()
    assert {"undecodable_image", "invalid_identifier", "unauthenticated", "not_found", "internal_error"} <= codes
