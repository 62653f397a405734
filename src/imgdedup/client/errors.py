"""Errors the client raises. An `ApiError` carries the API's error code (`code`, as in
the README's error table), the HTTP status and the detail; its subclass says the status
class. A `TransportError` means no answer came (connection refused or reset, timeout)
after the retries."""

from __future__ import annotations


class ClientError(Exception):
    """Base of everything `imgdedup.client` raises."""


class TransportError(ClientError):
    """The service could not be reached or did not answer in time, on every attempt."""


class ApiError(ClientError):
    """The service answered with an error: `code` is its machine code
    (`undecodable_image`, `image_id_conflict`, `unavailable`, ...)."""

    def __init__(self, status: int, code: str, detail: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        #: Seconds the service asked to wait (429, 503), when it said.
        self.retry_after = retry_after


class BadRequest(ApiError):
    """400: the image or an identifier was refused (`undecodable_image`, `empty_image`,
    `invalid_identifier`, `invalid_input`)."""


class Unauthenticated(ApiError):
    """401: no, unknown or expired credential."""


class Forbidden(ApiError):
    """403: the credential may not use this namespace or operation."""


class NotFound(ApiError):
    """404: no such image (or route)."""


class Conflict(ApiError):
    """409 `image_id_conflict`: the image id is registered with other bytes."""


class ImageTooLarge(ApiError):
    """413: `image_too_large` (bytes) or `decompression_bomb` (pixels)."""


class UnsupportedImage(ApiError):
    """415: `unsupported_image_type` or `unsupported_media_type`."""


class HashingFailed(ApiError):
    """422: `hashing_crashed` or `hashing_timeout`; the image itself is the problem."""


class RateLimited(ApiError):
    """429 `rate_limited`, after the retries."""


class ServerError(ApiError):
    """500 `internal_error` (not retried: it may be the request that triggers it)."""


class Unavailable(ApiError):
    """503 `unavailable` or `overloaded`, after the retries (also a proxy's 502 or 504,
    with the code `http_502` or `http_504`)."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest, 401: Unauthenticated, 403: Forbidden, 404: NotFound, 409: Conflict,
    413: ImageTooLarge, 415: UnsupportedImage, 422: HashingFailed, 429: RateLimited,
    500: ServerError, 502: Unavailable, 503: Unavailable, 504: Unavailable,
}


def api_error(status: int, code: str, detail: str, retry_after: float | None = None) -> ApiError:
    kind = _BY_STATUS.get(status)
    if kind is None:
        kind = ServerError if status >= 500 else ApiError
    return kind(status, code, detail, retry_after)
