"""The request-body byte budget on its own: bound, first-come-first-served waiting,
give-up and cancellation never leaking bytes."""

from __future__ import annotations

import asyncio

import pytest

from imgdedup.adapters.body_budget import BodyBudget, BudgetExhausted
from imgdedup.metrics import Metrics


async def settle() -> None:
    """Let every ready task run (no timers involved)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_reservations_never_exceed_the_limit_and_are_given_back() -> None:
    metrics = Metrics()
    budget = BodyBudget(100, wait_s=0, metrics=metrics)
    async with budget.reservation() as first:
        await first.grow(60, wait=True)
        with pytest.raises(BudgetExhausted):
            async with budget.reservation() as second:
                await second.grow(50, wait=True)
        async with budget.reservation() as third:
            await third.grow(40, wait=True)
            assert budget.reserved == 100
            assert metrics.registry.get_sample_value("imgdedup_http_body_bytes") == 100
    assert budget.reserved == 0 and budget.peak == 100
    assert metrics.registry.get_sample_value("imgdedup_http_body_bytes") == 0
    assert metrics.registry.get_sample_value("imgdedup_http_body_bytes_peak") == 100


async def test_more_than_the_whole_budget_is_refused_at_once() -> None:
    budget = BodyBudget(100, wait_s=60, metrics=None)
    with pytest.raises(BudgetExhausted):
        await budget.acquire(101, wait=True)


async def test_waiters_are_served_in_arrival_order() -> None:
    """A large body first in line is not overtaken by smaller ones that would fit."""
    budget = BodyBudget(100, wait_s=60, metrics=None)
    await budget.acquire(90, wait=True)
    order: list[int] = []

    async def take(size: int) -> None:
        await budget.acquire(size, wait=True)
        order.append(size)

    large = asyncio.create_task(take(80))
    await settle()
    small = asyncio.create_task(take(10))  # would fit now, but the large one came first
    await settle()
    assert order == [] and budget.reserved == 90
    budget.release(90)
    await asyncio.gather(large, small)
    assert order == [80, 10] and budget.reserved == 90


async def test_a_later_step_does_not_wait() -> None:
    budget = BodyBudget(100, wait_s=60, metrics=None)
    await budget.acquire(100, wait=True)
    with pytest.raises(BudgetExhausted):
        await budget.acquire(1, wait=False)


async def test_a_waiter_that_gives_up_leaves_nothing_behind() -> None:
    budget = BodyBudget(100, wait_s=0.05, metrics=Metrics())
    await budget.acquire(100, wait=True)
    with pytest.raises(BudgetExhausted):
        await budget.acquire(50, wait=True)
    budget.release(100)
    assert budget.reserved == 0
    await budget.acquire(100, wait=True)  # no ghost waiter holds a share


async def test_a_cancelled_waiter_leaves_nothing_behind() -> None:
    """Cancelled just as room is granted: whichever wins, no byte stays reserved."""
    budget = BodyBudget(100, wait_s=60, metrics=None)
    await budget.acquire(100, wait=True)

    async def hold() -> None:
        async with budget.reservation() as reservation:
            await reservation.grow(50, wait=True)

    waiter = asyncio.create_task(hold())
    await settle()
    budget.release(100)  # grants the waiter ...
    waiter.cancel()  # ... which is cancelled before it runs again
    await asyncio.gather(waiter, return_exceptions=True)
    assert budget.reserved == 0

    waiter = asyncio.create_task(hold())  # cancelled while still waiting
    await budget.acquire(100, wait=True)
    await settle()
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    budget.release(100)
    assert budget.reserved == 0
    await budget.acquire(100, wait=False)
