"""The HTTP server around the application: aiohttp's runner, plus a read deadline per
request that aiohttp does not have.

aiohttp bounds how long a connection may idle between requests, but not how long a
client may take to send a request: a client trickling its head or its body one byte at a
time holds a connection (and its buffers) for as long as it likes (slowloris). Here every
request must arrive whole, head and body, within `IMGDEDUP_HTTP_READ_TIMEOUT_S` of its
first byte (of the connection, for the first request); a slower connection is closed.
The clock stops once the body is complete: the time a handler spends deciding is not
the client's.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from imgdedup.config import Settings
from imgdedup.errors import INTERNAL_ERROR, MALFORMED_REQUEST
from imgdedup.metrics import Metrics

logger = logging.getLogger("imgdedup.http")

#: How long an idle keep-alive connection stays open between requests (nginx's default).
KEEPALIVE_S = 75.0

OnTimeout = Callable[[str], None]


class DeadlineRequestHandler(RequestHandler):
    """aiohttp's connection handler with a deadline on reading each request."""

    def __init__(self, manager: web.Server, *, read_timeout_s: float, on_timeout: OnTimeout, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._read_timeout_s = read_timeout_s
        self._on_timeout = on_timeout
        self._deadline: asyncio.TimerHandle | None = None
        self._phase = "head"
        #: Set when this connection was closed for reading too slowly (the middleware
        #: labels the request it cut off with 408 instead of a client disconnect).
        self.read_timed_out = False

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None,
    ) -> StreamResponse:
        """A request aiohttp could not parse (or a fault outside the application): the
        API's JSON error body instead of aiohttp's plain text, and no parser detail."""
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send an error")
        peer = self.transport.get_extra_info("peername") if self.transport else None
        if status < 500:
            logger.info("malformed request refused", extra={"http_status": status, "peer": str(peer[0]) if peer else None,
                                                           "error": type(exc).__name__ if exc else None})
            code, detail = MALFORMED_REQUEST, "the request is not valid HTTP/1.1"
        else:
            logger.error("error outside the application", exc_info=exc)
            code, detail = INTERNAL_ERROR, "internal server error"
        response = web.json_response({"error": code, "detail": detail}, status=status)
        response.force_close()
        return response

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm("head")  # a client that connects and sends nothing

    def data_received(self, data: bytes) -> None:
        if data and self._deadline is None:
            self._arm("head")  # the first bytes of a new request
        queued = len(self._messages)
        super().data_received(data)
        new = list(itertools.islice(self._messages, queued, None))
        if new:
            payload = new[-1][1]  # earlier pipelined requests are complete by definition
            if payload.is_eof():
                self._disarm()
            else:
                self._phase = "body"
                if self._deadline is None:
                    self._arm("body")
                payload.on_eof(self._disarm)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, phase: str) -> None:
        self._phase = phase
        if self._deadline is None:
            self._deadline = self._loop.call_later(self._read_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if self.transport is None:
            return
        self.read_timed_out = True
        peer = self.transport.get_extra_info("peername")
        logger.info(
            "request not received within %g s; connection closed",
            self._read_timeout_s,
            extra={"phase": self._phase, "peer": str(peer[0]) if peer else None},
        )
        self._on_timeout(self._phase)
        self.force_close()


class _DeadlineServer(web.Server):
    """aiohttp's server, making `DeadlineRequestHandler`s for its connections."""

    def __init__(self, *args: Any, read_timeout_s: float, on_timeout: OnTimeout, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_timeout_s = read_timeout_s
        self._on_timeout = on_timeout

    def __call__(self) -> RequestHandler:
        return DeadlineRequestHandler(
            self, loop=self._loop, read_timeout_s=self._read_timeout_s, on_timeout=self._on_timeout, **self._kwargs
        )


class _DeadlineRunner(web.AppRunner):
    def __init__(self, app: web.Application, *, read_timeout_s: float, on_timeout: OnTimeout, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._read_timeout_s = read_timeout_s
        self._on_timeout = on_timeout

    async def _make_server(self) -> web.Server:
        # The application builds its server (startup hooks, frozen router, handler
        # options); the same server is rebuilt to make deadline-aware connections.
        built = await super()._make_server()
        return _DeadlineServer(
            built.request_handler,
            request_factory=built.request_factory,
            handler_cancellation=built.handler_cancellation,
            read_timeout_s=self._read_timeout_s,
            on_timeout=self._on_timeout,
            **built._kwargs,
        )


def http_runner(app: web.Application, settings: Settings, metrics: Metrics) -> web.AppRunner:
    """The runner `imgdedup serve` listens with: read deadline, keep-alive bound, no access log."""

    def timed_out(phase: str) -> None:
        metrics.http_read_timeouts.labels(phase).inc()

    return _DeadlineRunner(
        app,
        read_timeout_s=settings.http_read_timeout_s,
        on_timeout=timed_out,
        access_log=None,
        keepalive_timeout=KEEPALIVE_S,
        shutdown_timeout=settings.shutdown_timeout_s,
    )
