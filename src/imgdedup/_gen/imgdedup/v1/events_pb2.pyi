from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ImageUploaded(_message.Message):
    __slots__ = ("event_id", "namespace", "image_id", "content_type", "data", "url", "uploaded_at_ms", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    UPLOADED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    namespace: str
    image_id: str
    content_type: str
    data: bytes
    url: str
    uploaded_at_ms: int
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, event_id: _Optional[str] = ..., namespace: _Optional[str] = ..., image_id: _Optional[str] = ..., content_type: _Optional[str] = ..., data: _Optional[bytes] = ..., url: _Optional[str] = ..., uploaded_at_ms: _Optional[int] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "detail")
    CODE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    code: str
    detail: str
    def __init__(self, code: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class DedupDecision(_message.Message):
    __slots__ = ("event_id", "namespace", "image_id", "verdict", "duplicate_of", "distance", "match", "error", "sha256", "phashes", "replayed", "decided_at_ms", "attributes", "similarity", "supersedes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_OF_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    MATCH_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    PHASHES_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    DECIDED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    SUPERSEDES_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    namespace: str
    image_id: str
    verdict: str
    duplicate_of: str
    distance: int
    match: str
    error: Error
    sha256: str
    phashes: _containers.RepeatedScalarFieldContainer[str]
    replayed: bool
    decided_at_ms: int
    attributes: _containers.ScalarMap[str, str]
    similarity: float
    supersedes: Supersedes
    def __init__(self, event_id: _Optional[str] = ..., namespace: _Optional[str] = ..., image_id: _Optional[str] = ..., verdict: _Optional[str] = ..., duplicate_of: _Optional[str] = ..., distance: _Optional[int] = ..., match: _Optional[str] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., sha256: _Optional[str] = ..., phashes: _Optional[_Iterable[str]] = ..., replayed: _Optional[bool] = ..., decided_at_ms: _Optional[int] = ..., attributes: _Optional[_Mapping[str, str]] = ..., similarity: _Optional[float] = ..., supersedes: _Optional[_Union[Supersedes, _Mapping]] = ...) -> None: ...

class Supersedes(_message.Message):
    __slots__ = ("verdict", "duplicate_of", "changed_by", "reason", "changed_at_ms", "undo")
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_OF_FIELD_NUMBER: _ClassVar[int]
    CHANGED_BY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CHANGED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    UNDO_FIELD_NUMBER: _ClassVar[int]
    verdict: str
    duplicate_of: str
    changed_by: str
    reason: str
    changed_at_ms: int
    undo: bool
    def __init__(self, verdict: _Optional[str] = ..., duplicate_of: _Optional[str] = ..., changed_by: _Optional[str] = ..., reason: _Optional[str] = ..., changed_at_ms: _Optional[int] = ..., undo: _Optional[bool] = ...) -> None: ...
