"""Kafka event codec: ImageUploaded in, DedupDecision out (protobuf binary or proto3 JSON).

The wire format follows the record header `content-type`: `application/json` means the
proto3 JSON mapping, anything else (or no header) protobuf binary. Decisions are written
in the format the input used, so a JSON producer reads JSON decisions.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from imgdedup._gen.imgdedup.v1 import events_pb2
from imgdedup.adapters.decision_view import decision_view
from imgdedup.decisions.review import Change
from imgdedup.errors import InvalidEvent, InvalidIdentifier
from imgdedup.records import ImageRecord, validate_image_id, validate_namespace

JSON_CONTENT_TYPE = "application/json"
PROTOBUF_CONTENT_TYPE = "application/x-protobuf"
JSON_WITHOUT_HEADER = (
    f"not a protobuf ImageUploaded; JSON events need the header content-type: {JSON_CONTENT_TYPE}"
)

Headers = Sequence[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class UploadEvent:
    event_id: str
    namespace: str
    image_id: str
    content_type: str
    data: bytes | None
    url: str | None
    uploaded_at_ms: int = 0
    attributes: dict[str, str] = field(default_factory=dict)


def header(headers: Headers | None, name: str) -> str | None:
    for key, value in headers or ():
        if key.lower() == name:
            return value.decode("utf-8", "replace") if value is not None else None
    return None


def is_json(headers: Headers | None) -> bool:
    content_type = header(headers, "content-type") or ""
    return content_type.split(";")[0].strip().lower() == JSON_CONTENT_TYPE


def decode_upload(value: bytes | None, headers: Headers | None, fallback_event_id: str) -> UploadEvent:
    """Parse and validate one record; raise `InvalidEvent` with the precise reason."""
    if not value:
        raise InvalidEvent("the record has no value")
    message = events_pb2.ImageUploaded()
    # No protobuf ImageUploaded starts with '{' (0x7B would be a group tag of field 15,
    # which the schema does not have): that is JSON sent without the header.
    if value[:1] == b"{" and not is_json(headers):
        raise InvalidEvent(JSON_WITHOUT_HEADER)
    try:
        _parse(message, value, headers)
    except (json_format.ParseError, UnicodeDecodeError) as exc:
        raise InvalidEvent(f"not an ImageUploaded JSON document: {exc}") from None
    except DecodeError as exc:
        if value.lstrip(b" \t\r\n")[:1] == b"{":
            raise InvalidEvent(JSON_WITHOUT_HEADER) from None
        raise InvalidEvent(f"not an ImageUploaded protobuf message: {exc}") from None
    if not message.namespace:
        raise InvalidEvent("namespace is missing")
    if not message.image_id:
        raise InvalidEvent("image_id is missing")
    source = message.WhichOneof("source")
    if source is None:
        raise InvalidEvent("neither data nor url is set")
    try:
        validate_namespace(message.namespace)
        validate_image_id(message.image_id)
    except InvalidIdentifier as exc:  # an event problem, reported as one
        raise InvalidEvent(exc.detail) from None
    return UploadEvent(
        event_id=message.event_id or fallback_event_id,
        namespace=message.namespace,
        image_id=message.image_id,
        content_type=message.content_type,
        data=message.data if source == "data" else None,
        url=message.url if source == "url" else None,
        uploaded_at_ms=message.uploaded_at_ms,
        attributes=dict(message.attributes),
    )


def partial_identity(value: bytes | None, headers: Headers | None) -> tuple[str, str, str]:
    """Best-effort (event_id, namespace, image_id) of an event that failed validation,
    so the rejection can still be routed to whoever sent it."""
    message = events_pb2.ImageUploaded()
    try:
        _parse(message, value or b"", headers)
    except Exception:
        return "", "", ""
    return message.event_id, message.namespace, message.image_id


def encode_upload(event: UploadEvent, *, as_json: bool = False) -> bytes:
    """Serialise an upload event (used by the demo, benchmarks and tests)."""
    fields = {f.name: getattr(event, f.name) for f in dataclasses.fields(event)}
    if event.data is not None:
        fields["url"] = None  # `data` and `url` are the oneof `source`: the bytes win
    return _serialise(events_pb2.ImageUploaded(**_set_fields(fields)), as_json=as_json)


def decision_from_record(
    record: ImageRecord, *, event_id: str, replayed: bool, attributes: dict[str, str] | None = None
) -> events_pb2.DedupDecision:
    """The decision event of a registration: the decision view, plus what the event adds."""
    return events_pb2.DedupDecision(
        event_id=event_id,
        decided_at_ms=_now_ms(),
        attributes=attributes or {},
        **_set_fields(decision_view(record, replayed=replayed)),
    )


def rejection(
    *, event_id: str, namespace: str, image_id: str, code: str, detail: str,
    attributes: dict[str, str] | None = None,
) -> events_pb2.DedupDecision:
    return events_pb2.DedupDecision(
        event_id=event_id,
        namespace=namespace,
        image_id=image_id,
        verdict="rejected",
        error=events_pb2.Error(code=code, detail=detail),
        decided_at_ms=_now_ms(),
        attributes=attributes or {},
    )


def encode_decision(message: events_pb2.DedupDecision, *, as_json: bool) -> bytes:
    return _serialise(message, as_json=as_json)


def decode_decision(value: bytes, headers: Headers | None = None) -> events_pb2.DedupDecision:
    message = events_pb2.DedupDecision()
    _parse(message, value, headers)
    return message


def _parse(message: Message, value: bytes, headers: Headers | None) -> None:
    """Fill `message` from a record value in the format its `content-type` header names.
    Unknown JSON fields are ignored, as protobuf ignores unknown fields: a producer on a
    newer schema is understood by an older consumer in both formats."""
    if is_json(headers):
        json_format.Parse(value.decode("utf-8"), message, ignore_unknown_fields=True)
    else:
        message.ParseFromString(value)


def _serialise(message: Message, *, as_json: bool) -> bytes:
    if as_json:
        return json_format.MessageToJson(message, indent=None).encode()
    return message.SerializeToString()


def _set_fields(values: Mapping[str, Any]) -> dict[str, Any]:
    """Message fields from values where None means "no value": proto3 has no null, so such
    a field is left unset (read back as empty, or as absent for `optional` fields)."""
    return {name: value for name, value in values.items() if value is not None}


def _now_ms() -> int:
    return int(time.time() * 1000)


def superseding_decision(record: ImageRecord, change: Change) -> events_pb2.DedupDecision:
    """The decision event of a reviewer's change: the image's new decision, naming the
    one it replaces."""
    return events_pb2.DedupDecision(
        event_id=f"review:{record.namespace}/{record.image_id}:{int(change.at * 1000)}",
        decided_at_ms=int(change.at * 1000),
        supersedes=events_pb2.Supersedes(
            **_set_fields(
                {
                    "verdict": change.from_verdict.value,
                    "duplicate_of": change.from_duplicate_of,
                    "changed_by": change.by,
                    "reason": change.reason,
                    "changed_at_ms": int(change.at * 1000),
                    "undo": change.undo,
                }
            )
        ),
        **_set_fields(decision_view(record)),
    )
