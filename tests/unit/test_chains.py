"""Work per key, one after another, and across keys at once (entrypoints/chains.py): how the
worker and replay keep one order's commands in order without a lock."""

from __future__ import annotations

import asyncio

import pytest

from payment_worker.entrypoints.chains import KeyedChains


async def test_work_of_one_key_runs_in_the_order_started_even_when_the_first_is_slower() -> None:
    """Three pieces of work for one key, the first the slowest: each starts only once the one
    before it has finished, in the order they were started."""
    chains, log = KeyedChains(), []

    def work(name: str, delay: float):  # type: ignore[no-untyped-def]
        async def run() -> None:
            log.append(f"{name} start")
            await asyncio.sleep(delay)
            log.append(f"{name} end")

        return run

    for name, delay in (("a", 0.05), ("b", 0.0), ("c", 0.01)):
        chains.start(b"order-1", work(name, delay))
    await asyncio.gather(*chains.tasks)
    assert log == ["a start", "a end", "b start", "b end", "c start", "c end"]


async def test_work_of_other_keys_runs_at_once() -> None:
    """Two keys: the second key's work does not wait for the first's."""
    chains, started = KeyedChains(), asyncio.Event()

    async def first() -> None:
        await asyncio.wait_for(started.wait(), 1)  # only the other key's work can set it

    async def second() -> None:
        started.set()

    chains.start("order-1", first)
    chains.start("order-2", second)
    await asyncio.wait_for(asyncio.gather(*chains.tasks), 2)


async def test_a_failed_piece_does_not_stop_the_next_and_everything_is_forgotten() -> None:
    """An earlier piece that raises is its own failure: the next of its key still runs; each
    piece's on_done is called, and nothing is kept once all are done."""
    chains, ran, done = KeyedChains(), [], []

    async def fails() -> None:
        raise RuntimeError("boom")

    async def next_one() -> None:
        ran.append("next")

    failed = chains.start(b"k", fails, lambda: done.append("fails"))
    chains.start(b"k", next_one, lambda: done.append("next"))
    await asyncio.gather(*chains.tasks, return_exceptions=True)
    with pytest.raises(RuntimeError):
        failed.result()
    await asyncio.sleep(0)  # done callbacks run after the tasks end
    assert ran == ["next"] and done == ["fails", "next"]
    assert not chains.tasks and not chains._tails
