"""Group commit (payment_worker/adapters/coalesce.py): calls that arrive together share a batch,
results and errors reach the right caller, and one bad item cannot fail the others."""

from __future__ import annotations

import asyncio

import pytest

from payment_worker.adapters.coalesce import Coalescer
from payment_worker.exceptions import RetryableError


async def test_calls_waiting_while_a_batch_runs_share_the_next_batch() -> None:
    """With one batch at a time, 50 concurrent calls need far fewer than 50 batches."""
    sizes: list[int] = []

    async def run(items: list[int]) -> list[int]:
        sizes.append(len(items))
        await asyncio.sleep(0.01)
        return [i * 2 for i in items]

    coalescer: Coalescer[int, int] = Coalescer(run, parallel=1)
    results = await asyncio.gather(*(coalescer.submit(i) for i in range(50)))
    assert results == [i * 2 for i in range(50)]
    assert sum(sizes) == 50
    assert len(sizes) <= 3


async def test_a_lone_call_runs_at_once() -> None:
    """No timer: a single call is not held back waiting for company."""

    async def run(items: list[str]) -> list[str]:
        return [i.upper() for i in items]

    coalescer: Coalescer[str, str] = Coalescer(run)
    assert await asyncio.wait_for(coalescer.submit("a"), 0.05) == "A"


async def test_an_exception_result_fails_only_its_own_caller() -> None:
    """run_batch may answer one item with an exception; the others get their results."""

    async def run(items: list[int]) -> list[int | BaseException]:
        return [ValueError(i) if i == 3 else i for i in items]

    coalescer: Coalescer[int, int] = Coalescer(run, parallel=1)
    results = await asyncio.gather(*(coalescer.submit(i) for i in range(6)), return_exceptions=True)
    assert isinstance(results[3], ValueError)
    assert [r for i, r in enumerate(results) if i != 3] == [0, 1, 2, 4, 5]


async def test_a_failing_batch_is_retried_item_by_item() -> None:
    """A batch that raises (not retryable) is run again one item at a time: only the bad
    item fails."""

    async def run(items: list[int]) -> list[int]:
        if 7 in items:
            raise KeyError("bad item")
        return items

    coalescer: Coalescer[int, int] = Coalescer(run, parallel=1)
    results = await asyncio.gather(
        *(coalescer.submit(i) for i in range(10)), return_exceptions=True
    )
    assert isinstance(results[7], KeyError)
    assert [r for i, r in enumerate(results) if i != 7] == [0, 1, 2, 3, 4, 5, 6, 8, 9]


async def test_a_retryable_failure_reaches_every_caller_of_the_batch() -> None:
    """A retryable failure (database down) is not split: each caller retries on its own."""
    calls = 0

    async def run(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        raise RetryableError("database down")

    coalescer: Coalescer[int, int] = Coalescer(run, parallel=1)
    results = await asyncio.gather(*(coalescer.submit(i) for i in range(5)), return_exceptions=True)
    assert all(isinstance(r, RetryableError) for r in results)
    assert calls <= 2


async def test_max_batch_bounds_the_batch_size() -> None:
    """No batch is larger than max_batch."""
    sizes: list[int] = []

    async def run(items: list[int]) -> list[int]:
        sizes.append(len(items))
        await asyncio.sleep(0)
        return items

    coalescer: Coalescer[int, int] = Coalescer(run, max_batch=4, parallel=1)
    await asyncio.gather(*(coalescer.submit(i) for i in range(20)))
    assert max(sizes) <= 4 and sum(sizes) == 20


async def test_a_cancelled_caller_does_not_break_the_batch() -> None:
    """A caller that gives up does not stop the others from getting their results."""
    release = asyncio.Event()

    async def run(items: list[int]) -> list[int]:
        await release.wait()
        return items

    coalescer: Coalescer[int, int] = Coalescer(run, parallel=1)
    first = asyncio.create_task(coalescer.submit(1))
    second = asyncio.create_task(coalescer.submit(2))
    await asyncio.sleep(0)
    first.cancel()
    release.set()
    assert await second == 2
    with pytest.raises(asyncio.CancelledError):
        await first
