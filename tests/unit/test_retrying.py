"""The package's one retry policy: tries again only what is retryable, stops, waits with jitter
and says each failed try in one log line."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import pytest
import structlog

from payment_worker.exceptions import PermanentError, RetryableError
from payment_worker.retrying import polling, retrying, wait_before


def failing(times: int, error: Exception) -> tuple[list[int], Callable[[], Awaitable[str]]]:
    calls: list[int] = []

    async def call() -> str:
        calls.append(1)
        if len(calls) <= times:
            raise error
        return "done"

    return calls, call


async def test_a_retryable_failure_is_tried_again_with_a_line_per_failed_try() -> None:
    """Two retryable failures, then success: three calls, two `event` lines numbered 1 and 2,
    each with the error and the wait."""
    calls, call = failing(2, RetryableError("db restarting"))
    with structlog.testing.capture_logs() as logs:
        result = await retrying(call, event="thing_retry", first_wait_s=0.001, max_wait_s=0.01)

    assert (result, len(calls)) == ("done", 3)
    lines = [line for line in logs if line["event"] == "thing_retry"]
    assert [line["attempt"] for line in lines] == [1, 2]
    assert all(line["error"] == "RetryableError: db restarting" for line in lines)
    assert all(0 <= line["wait_s"] <= 0.01 for line in lines)


async def test_the_last_error_is_raised_once_the_tries_are_spent() -> None:
    """With attempts=3 and a failure every time: three calls, then the failure itself."""
    calls, call = failing(10, RetryableError("still down"))
    with pytest.raises(RetryableError, match="still down"):
        await retrying(call, event="x", attempts=3, first_wait_s=0.001, max_wait_s=0.001)
    assert len(calls) == 3


async def test_a_permanent_error_is_not_tried_again() -> None:
    """Only `retry_on` is retried: a PermanentError leaves after one call."""
    calls, call = failing(1, PermanentError("broken"))
    with pytest.raises(PermanentError):
        await retrying(call, event="x", first_wait_s=0.001)
    assert len(calls) == 1


async def test_a_budget_stops_the_tries() -> None:
    """With budget_s, retrying stops once that much time has gone, however many tries are
    left."""
    calls, call = failing(10_000, RetryableError("down"))
    started = time.monotonic()
    with pytest.raises(RetryableError):
        await retrying(call, event="x", budget_s=0.2, first_wait_s=0.01, max_wait_s=0.02)
    assert time.monotonic() - started < 1.0
    assert 2 < len(calls) < 10_000


async def test_polling_returns_the_first_answer_or_none_when_the_budget_is_spent() -> None:
    """polling asks until an answer that is not None comes, and gives None after budget_s."""
    asked: list[int] = []

    async def third_time() -> str | None:
        asked.append(1)
        return "held" if len(asked) == 3 else None

    assert await polling(third_time, budget_s=5, first_wait_s=0.001, max_wait_s=0.01) == "held"

    async def never() -> str | None:
        return None

    started = time.monotonic()
    assert await polling(never, budget_s=0.1, first_wait_s=0.01, max_wait_s=0.02) is None
    assert 0.1 <= time.monotonic() - started < 1.0


def test_waits_grow_with_the_try_are_jittered_and_capped() -> None:
    """Full jitter: each wait is random between 0 and first_s * 2**try, never above max_s."""
    late = [wait_before(8, first_s=0.1, max_s=5.0) for _ in range(200)]
    early = [wait_before(1, first_s=0.1, max_s=5.0) for _ in range(200)]
    assert max(late) <= 5.0 and max(early) <= 0.2
    assert len(set(late)) > 100  # random, not one fixed wait
    assert sum(late) / len(late) > 4 * sum(early) / len(early)
