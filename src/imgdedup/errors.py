"""Error taxonomy shared by every adapter.

Permanent errors (`InputError`): the caller's fault, one type per problem with a stable
machine code and HTTP status; rejected, never retried. The Kafka consumer puts the same
code into the `rejected` decision event, so both ways in share one vocabulary.
Transient errors (`TransientError`): retry later; the consumer retries with back-off,
HTTP answers 503 with Retry-After. Never turned into a rejection.
"""

from __future__ import annotations

from typing import Any, ClassVar

#: The code of a failure that is the service's fault, not the input's (a bug): HTTP 500,
#: and over Kafka a `rejected` decision with the record dead-lettered for a later replay.
INTERNAL_ERROR = "internal_error"
#: A request that is not valid HTTP (the server's parser refused it before any handler).
MALFORMED_REQUEST = "malformed_request"
#: Over Kafka only: the broker refused the event's decision for good (larger than the
#: decisions topic accepts, typically from large attributes). The event is rejected with
#: this code, its attributes left out of the rejection, and dead-lettered.
DECISION_REFUSED = "decision_refused"


class InputError(Exception):
    """The caller sent something we cannot process; retrying will not help. Each
    subclass names its machine code and HTTP status in its class line."""

    code: ClassVar[str] = "invalid_input"
    http_status: ClassVar[int] = 400

    def __init_subclass__(cls, *, code: str, http_status: int, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.code, cls.http_status = code, http_status

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class UndecodableImage(InputError, code="undecodable_image", http_status=400):
    """The bytes are not a picture a supported decoder can read."""


class EmptyImage(InputError, code="empty_image", http_status=400):
    """The body or payload holds no bytes."""


class UnsupportedImageType(InputError, code="unsupported_image_type", http_status=415):
    """A picture, but not in an upload format the service decodes."""


class ImageTooLarge(InputError, code="image_too_large", http_status=413):
    """Too many bytes: refused before any decoding work is spent on it."""


class DecompressionBomb(InputError, code="decompression_bomb", http_status=413):
    """Small file, huge canvas: refused from the header, before pixels are allocated."""


class InvalidEvent(InputError, code="invalid_event", http_status=400):
    """A Kafka record that is not a well-formed ImageUploaded event."""


class InvalidIdentifier(InputError, code="invalid_identifier", http_status=400):
    """A namespace or image id outside the allowed characters or length."""


class UrlRefused(InputError, code="url_refused", http_status=400):
    """The URL points somewhere we must not fetch from (private address, bad scheme)."""


class FetchFailed(InputError, code="fetch_failed", http_status=400):
    """The image URL could not be fetched (HTTP error, timeout, too large)."""


class ImageIdConflict(InputError, code="image_id_conflict", http_status=409):
    """The image_id is already registered with different bytes."""


class TransientError(Exception):
    """Not the caller's fault and not permanent: the same request may succeed later."""


class ContentionError(TransientError):
    """The atomic register step lost its optimistic race too many times in a row."""


class IndexUnavailable(TransientError):
    """The index's backing store is unreachable, timed out or refuses work for now
    (loading, read-only during a failover)."""


class IndexMismatch(Exception):
    """A namespace was created with other index parameters than this process uses."""


class StartupError(RuntimeError):
    """A dependency is unreachable at start; the message says which and how to fix it."""
