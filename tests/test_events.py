"""The Kafka event codec on its own: what is accepted, and how refusals read."""

from __future__ import annotations

import json

import pytest

from imgdedup._gen.imgdedup.v1 import events_pb2
from imgdedup.adapters.events import UploadEvent, decode_upload, encode_upload
from imgdedup.errors import InvalidEvent

JSON_HEADERS = [("content-type", b"application/json")]


def upload_json(**fields: object) -> bytes:
    return json.dumps({"eventId": "e-1", "namespace": "shop", "imageId": "a.jpg", "data": "AAAA", **fields}).encode()


def test_json_event_with_an_unknown_field_is_accepted_like_protobuf() -> None:
    """A producer on a newer schema: both formats ignore what they do not know."""
    event = decode_upload(upload_json(addedInV2={"x": 1}, region="eu"), JSON_HEADERS, "fallback")
    assert (event.event_id, event.namespace, event.image_id, event.data) == ("e-1", "shop", "a.jpg", b"\0\0\0")

    newer = encode_upload(UploadEvent("e-2", "shop", "b.jpg", "", b"img", None)) + bytes([0x98, 0x06, 0x01])
    assert decode_upload(newer, None, "fallback").image_id == "b.jpg"  # field 99 (varint): unknown


@pytest.mark.parametrize("value", [upload_json(), b'  \n{"namespace": "shop"}', b"{}"])
@pytest.mark.parametrize("headers", [None, [("content-type", b"application/x-protobuf")]])
def test_json_event_without_the_json_header_says_what_is_missing(value: bytes, headers) -> None:
    with pytest.raises(InvalidEvent) as info:
        decode_upload(value, headers, "fallback")
    assert info.value.detail == (
        "not a protobuf ImageUploaded; JSON events need the header content-type: application/json"
    )


def test_protobuf_event_whose_first_field_is_123_bytes_long_is_not_taken_for_json() -> None:
    """0x0A 0x7B ('\\n{') opens a legitimate message: event_id of 123 bytes."""
    value = encode_upload(UploadEvent("e" * 123, "shop", "a.jpg", "", b"img", None))
    assert value[:2] == b"\n{"
    assert decode_upload(value, None, "fallback").event_id == "e" * 123


def test_corrupt_protobuf_keeps_the_protobuf_detail() -> None:
    with pytest.raises(InvalidEvent) as info:
        decode_upload(b"\x0a\xff\xff\xff\xff\x0f", None, "fallback")
    assert info.value.detail.startswith("not an ImageUploaded protobuf message")


@pytest.mark.parametrize("namespace", [".", "..", "..."])
@pytest.mark.parametrize("as_json", [False, True])
def test_dot_only_namespaces_are_refused(namespace: str, as_json: bool) -> None:
    value = encode_upload(UploadEvent("e-1", namespace, "a.jpg", "", b"img", None), as_json=as_json)
    with pytest.raises(InvalidEvent) as info:
        decode_upload(value, JSON_HEADERS if as_json else None, "fallback")
    assert "only of dots" in info.value.detail


@pytest.mark.parametrize("image_id", [".", ".."])
@pytest.mark.parametrize("as_json", [False, True])
def test_dot_segment_image_ids_are_refused(image_id: str, as_json: bool) -> None:
    value = encode_upload(UploadEvent("e-1", "shop", image_id, "", b"img", None), as_json=as_json)
    with pytest.raises(InvalidEvent) as info:
        decode_upload(value, JSON_HEADERS if as_json else None, "fallback")
    assert "dot segment" in info.value.detail


def test_image_ids_with_dots_and_more_are_fine() -> None:
    for image_id in ("...", "./a", "a..", ".hidden"):
        value = encode_upload(UploadEvent("e-1", "shop", image_id, "", b"img", None))
        assert decode_upload(value, None, "fallback").image_id == image_id


def test_namespace_with_dots_and_letters_is_fine() -> None:
    value = encode_upload(UploadEvent("e-1", "shop.v2..eu", "a.jpg", "", b"img", None))
    assert decode_upload(value, None, "fallback").namespace == "shop.v2..eu"


def test_protobuf_schema_has_no_field_15() -> None:
    """The JSON sniffing above relies on it: 0x7B is field 15's group tag."""
    assert 15 not in {f.number for f in events_pb2.ImageUploaded.DESCRIPTOR.fields}
