"""Error taxonomy shared by every adapter.

One exception type per *input* problem, each with a stable machine code and the HTTP
status it maps to. The Kafka consumer puts the same code into the `rejected` decision
event, so a client sees the same vocabulary whichever way it talks to the service.
Problems that are *not* the input's fault (Redis down, broker gone) are deliberately
not in this hierarchy: those are retried, never turned into a rejection.
"""

from __future__ import annotations


class InputError(Exception):
    """The caller sent something we cannot process; retrying will not help."""

    code = "invalid_input"
    http_status = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class UndecodableImage(InputError):
    code = "undecodable_image"
    http_status = 400


class EmptyImage(InputError):
    code = "empty_image"
    http_status = 400


class UnsupportedImageType(InputError):
    code = "unsupported_image_type"
    http_status = 415


class ImageTooLarge(InputError):
    """Too many bytes: refused before any decoding work is spent on it."""

    code = "image_too_large"
    http_status = 413


class DecompressionBomb(InputError):
    """Small file, huge canvas: refused from the header, before pixels are allocated."""

    code = "decompression_bomb"
    http_status = 413


class InvalidEvent(InputError):
    """A Kafka record that is not a well-formed ImageUploaded event."""

    code = "invalid_event"
    http_status = 400


class InvalidIdentifier(InputError):
    code = "invalid_identifier"
    http_status = 400


class UrlRefused(InputError):
    """The URL points somewhere we must not fetch from (private address, bad scheme)."""

    code = "url_refused"
    http_status = 400


class FetchFailed(InputError):
    """The image URL could not be fetched (HTTP error, timeout, too large)."""

    code = "fetch_failed"
    http_status = 400


class IndexMismatch(Exception):
    """A namespace was created with other index parameters than this process uses."""


class ContentionError(Exception):
    """The atomic register step lost its optimistic race too many times in a row.

    Transient by nature: callers retry (Kafka) or answer 503 (HTTP).
    """
