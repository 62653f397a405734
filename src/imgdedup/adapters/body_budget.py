"""A byte budget for request bodies: a body's bytes are reserved before it is read and
given back after its response, so the bodies an HTTP server holds at once never exceed
the budget, however many clients send at once.

Waiters are served first come, first served, so a large body is not starved by a stream
of small ones; a waiter that gets no room within the wait bound is refused.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from imgdedup.metrics import Metrics


class BudgetExhausted(Exception):
    """No room for this body within the wait bound: the server is overloaded."""


class BodyBudget:
    """At most `limit` bytes reserved at once; `wait_s` is the longest wait for room."""

    def __init__(self, limit: int, wait_s: float, metrics: Metrics | None) -> None:
        self.limit = limit
        self.wait_s = wait_s
        self.reserved = 0
        self.peak = 0
        self._metrics = metrics
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @asynccontextmanager
    async def reservation(self) -> AsyncIterator[Reservation]:
        """A reservation that grows as the body is read and is given back on exit."""
        held = Reservation(self)
        try:
            yield held
        finally:
            self.release(held.size)
            held.size = 0

    async def acquire(self, size: int, *, wait: bool) -> None:
        """Reserve `size` bytes, waiting up to `wait_s` if `wait`; else `BudgetExhausted`."""
        if size > self.limit:
            raise BudgetExhausted(f"{size} bytes exceed the whole budget of {self.limit}")
        if not self._waiters and self.reserved + size <= self.limit:
            self._take(size)
            return
        if not wait or self.wait_s <= 0:
            raise BudgetExhausted("no room for another body")
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (size, granted)
        self._waiters.append(entry)
        self._count_waiting()
        try:
            await asyncio.wait_for(asyncio.shield(granted), self.wait_s)
        except BaseException as exc:
            if granted.done() and not granted.cancelled():
                self.release(size)  # granted just as the wait ended: give the bytes back
            else:
                granted.cancel()
            if isinstance(exc, TimeoutError):
                raise BudgetExhausted(f"no room for {size} bytes within {self.wait_s:g} s") from None
            raise
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)
                self._count_waiting()
                self._grant()  # this waiter may have blocked smaller ones behind it

    def release(self, size: int) -> None:
        if size:
            self.reserved -= size
            self._report()
            self._grant()

    def _take(self, size: int) -> None:
        self.reserved += size
        self.peak = max(self.peak, self.reserved)
        self._report()

    def _grant(self) -> None:
        """Hand room to waiters in arrival order while the first one fits."""
        while self._waiters:
            size, granted = self._waiters[0]
            if granted.done():  # gave up waiting
                self._waiters.popleft()
                continue
            if self.reserved + size > self.limit:
                break
            self._waiters.popleft()
            self._take(size)
            granted.set_result(None)
        self._count_waiting()

    def _report(self) -> None:
        if self._metrics is not None:
            self._metrics.http_body_bytes.set(self.reserved)
            self._metrics.http_body_bytes_peak.set(self.peak)

    def _count_waiting(self) -> None:
        if self._metrics is not None:
            self._metrics.http_body_waiting.set(len(self._waiters))


class Reservation:
    """The bytes one request holds; grows in steps for bodies of unknown length."""

    def __init__(self, budget: BodyBudget) -> None:
        self._budget = budget
        self.size = 0

    async def grow(self, size: int, *, wait: bool) -> None:
        if size <= 0:
            return
        await self._budget.acquire(size, wait=wait)
        self.size += size
