"""OwnThread (adapters/kafka/consumer.py): the consumer's calls, one at a time and in order, on
a thread of its own, answered to the event loop."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from payment_worker.adapters.kafka.consumer import OwnThread


async def test_calls_run_in_order_on_one_thread_that_is_not_the_loops() -> None:
    """Every call runs on the same thread, not the event loop's, one after the other in the
    order asked, and each caller gets its own call's result."""
    thread = OwnThread("test-own-thread")
    ran: list[tuple[int, str]] = []

    def work(i: int) -> int:
        ran.append((i, threading.current_thread().name))
        time.sleep(0.001 * (i % 3))  # an earlier call may take longer than a later one
        return i * 10

    try:
        results = await asyncio.gather(*(thread.call(work, i) for i in range(20)))
    finally:
        thread.stop()
    assert results == [i * 10 for i in range(20)]
    assert [i for i, _ in ran] == list(range(20))
    assert {name for _, name in ran} == {"test-own-thread"}
    assert threading.current_thread().name != "test-own-thread"


async def test_an_exception_reaches_its_caller_and_the_thread_goes_on() -> None:
    """A call that raises gives its caller that exception; the next call is served."""
    thread = OwnThread("test-own-thread")

    def fail() -> None:
        raise ValueError("refused")

    try:
        with pytest.raises(ValueError, match="refused"):
            await thread.call(fail)
        assert await thread.call(lambda: "next") == "next"
    finally:
        thread.stop()


async def test_a_cancelled_caller_leaves_the_thread_serving_the_others() -> None:
    """A caller cancelled while its call runs gets CancelledError; the call finishes on the
    thread, and the calls after it are answered."""
    thread = OwnThread("test-own-thread")
    started = threading.Event()

    def slow() -> str:
        started.set()
        time.sleep(0.05)
        return "late"

    try:
        waiting = asyncio.ensure_future(thread.call(slow))
        await asyncio.to_thread(started.wait, 5)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert await thread.call(lambda: "after") == "after"
    finally:
        thread.stop()


def test_stop_ends_the_thread_and_a_new_call_starts_another() -> None:
    """stop() waits for the calls asked for and ends the thread; a call after it starts a new
    one."""
    thread = OwnThread("test-own-thread")

    def alive() -> bool:
        return any(t.name == "test-own-thread" for t in threading.enumerate())

    async def one() -> str:
        return await thread.call(lambda: threading.current_thread().name)  # type: ignore[no-any-return]

    assert asyncio.run(one()) == "test-own-thread"
    thread.stop()
    assert not alive()
    assert asyncio.run(one()) == "test-own-thread"
    assert alive()
    thread.stop()
    thread.stop()
    assert not alive()
