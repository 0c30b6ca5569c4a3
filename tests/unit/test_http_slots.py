"""The HTTP client's line for a free connection (adapters/http_client.py, `_Slots`): first come
first served, each waiter until its own deadline, and no slot lost to a waiter that leaves."""

from __future__ import annotations

import asyncio

import pytest

from payment_worker.adapters.http_client import ConnectionWaitTimeout, _Slots


def _later(seconds: float) -> float:
    return asyncio.get_running_loop().time() + seconds


async def test_waiters_are_served_in_the_order_they_came() -> None:
    """One slot, held; three waiters; each slot given back goes to the first still waiting."""
    slots = _Slots(1)
    await slots.take(_later(5))
    served: list[int] = []

    async def wait(n: int) -> None:
        await slots.take(_later(5))
        served.append(n)

    waiters = [asyncio.ensure_future(wait(n)) for n in range(3)]
    await asyncio.sleep(0)
    for _ in range(3):
        slots.give()
        await asyncio.sleep(0)
    await asyncio.gather(*waiters)
    assert served == [0, 1, 2]


async def test_a_waiter_past_its_deadline_gives_up_and_leaves_the_line() -> None:
    """A waiter whose deadline comes first raises ConnectionWaitTimeout (a TimeoutError); the
    slot given back afterwards is free for the next request at once."""
    slots = _Slots(1)
    await slots.take(_later(5))
    with pytest.raises(ConnectionWaitTimeout):
        await slots.take(_later(0.05))
    slots.give()
    await asyncio.wait_for(slots.take(_later(5)), 0.5)  # free: no wait


async def test_a_cancelled_waiter_handed_a_slot_passes_it_on() -> None:
    """A waiter cancelled just as a slot was handed to it gives it to the next in line; one
    cancelled before gives nothing back and is out of the line."""
    slots = _Slots(1)
    await slots.take(_later(5))
    first = asyncio.ensure_future(slots.take(_later(5)))
    second = asyncio.ensure_future(slots.take(_later(5)))
    third = asyncio.ensure_future(slots.take(_later(5)))
    await asyncio.sleep(0)
    third.cancel()  # not handed anything: just leaves
    slots.give()  # to `first`...
    first.cancel()  # ...which leaves before it resumes: `second` has it
    await asyncio.wait_for(second, 0.5)
    assert first.cancelled() and third.cancelled()
    slots.give()
    await asyncio.wait_for(slots.take(_later(5)), 0.5)  # and it comes back free
    with pytest.raises(ConnectionWaitTimeout):  # one slot, held: nothing was made up
        await slots.take(_later(0.05))
