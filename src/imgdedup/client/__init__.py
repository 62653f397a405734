"""A client for imgdedup's HTTP API, for upload pipelines: `Client` (blocking) and
`AsyncClient` (asyncio), typed results, retries with back-off, errors carrying the API's
codes. It imports neither the service nor its image libraries; it needs httpx
(`pip install imgdedup[client]`)."""

from imgdedup.client._protocol import RetryPolicy
from imgdedup.client.asynchronous import AsyncClient
from imgdedup.client.errors import (
    ApiError,
    BadRequest,
    ClientError,
    Conflict,
    Forbidden,
    HashingFailed,
    ImageTooLarge,
    NotFound,
    RateLimited,
    ServerError,
    TransportError,
    Unauthenticated,
    Unavailable,
    UnsupportedImage,
)
from imgdedup.client.models import CheckResult, Decision, DuplicateEntry, Duplicates, ImageRecord, Match
from imgdedup.client.sync import Client

__all__ = [
    "ApiError", "AsyncClient", "BadRequest", "CheckResult", "Client", "ClientError", "Conflict",
    "Decision", "DuplicateEntry", "Duplicates", "Forbidden", "HashingFailed", "ImageRecord",
    "ImageTooLarge", "Match", "NotFound", "RateLimited", "RetryPolicy", "ServerError",
    "TransportError", "Unauthenticated", "Unavailable", "UnsupportedImage",
]
