"""The one retry policy of the package, on tenacity: jittered exponential waits, a stop, and a
log line per try. Used at every edge that tries again (dependencies, the database, the order
lock, a busy order) and by the worker loop for the wait between a record's tries."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    retry_if_result,
    stop_after_attempt,
    stop_after_delay,
    stop_before_delay,
    stop_never,
    wait_random_exponential,
)
from tenacity.stop import stop_base

from payment_worker.exceptions import RetryableError

T = TypeVar("T")

log = structlog.get_logger("payment_worker.retrying")

_OWNER = AsyncRetrying()  # what a RetryCallState must name; the wait reads its try alone


def jittered(first_s: float, max_s: float) -> wait_random_exponential:
    """Full jitter: try n waits a random time up to first_s * 2**n, at most max_s."""
    return wait_random_exponential(multiplier=first_s, max=max_s)


def wait_before(attempt: int, first_s: float = 0.1, max_s: float = 5.0) -> float:
    """The policy's wait before try `attempt + 1`, for a loop that sleeps on its own."""
    state = RetryCallState(_OWNER, None, (), {})
    state.attempt_number = attempt
    return float(jittered(first_s, max_s)(state))


async def retrying(
    call: Callable[[], Awaitable[T]],
    *,
    event: str,
    retry_on: tuple[type[BaseException], ...] = (RetryableError,),
    attempts: int | None = None,
    budget_s: float | None = None,
    first_wait_s: float = 0.1,
    max_wait_s: float = 5.0,
    **fields: Any,
) -> T:
    """`call()`, tried again on `retry_on` until `attempts` tries are made or the next wait
    would end past `budget_s` from the first try (then the last error is raised), logging
    `event` with the try, its error and the wait."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        # Nearly every call succeeds at once: tenacity is set up only once a try has failed.
        return await call()
    except retry_on as exc:
        wait = wait_before(1, first_wait_s, max_wait_s)
        if attempts is not None and attempts <= 1:
            raise
        if budget_s is not None and loop.time() - started + wait > budget_s:
            raise
        _log_try(event, 1, exc, wait, fields)
        await asyncio.sleep(wait)

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        sleep = state.next_action.sleep if state.next_action else 0.0
        _log_try(event, state.attempt_number + 1, error, sleep, fields)

    stop: stop_base = stop_never
    if attempts is not None:
        stop = stop_after_attempt(attempts - 1)
    if budget_s is not None:
        stop = stop | stop_before_delay(budget_s - (loop.time() - started))
    retryer = AsyncRetrying(
        stop=stop,
        # tenacity counts from the second try: its n-th wait is the policy's (n + 1)-th
        wait=lambda state: wait_before(state.attempt_number + 1, first_wait_s, max_wait_s),
        retry=retry_if_exception_type(retry_on),
        before_sleep=before_sleep,
        reraise=True,
    )
    return await retryer(call)


def _log_try(
    event: str, attempt: int, error: BaseException | None, wait_s: float, fields: dict[str, Any]
) -> None:
    log.warning(
        event,
        attempt=attempt,
        error=None if error is None else f"{type(error).__name__}: {error}",
        wait_s=round(wait_s, 3),
        **fields,
    )


async def polling(
    check: Callable[[], Awaitable[T | None]],
    *,
    budget_s: float,
    first_wait_s: float,
    max_wait_s: float,
) -> T | None:
    """The first answer of `check()` that is not None, asked again with jittered waits for at
    most `budget_s`; None when the budget runs out (a wait, not a failure: nothing logged)."""
    found = await check()
    if found is not None or budget_s <= 0:
        return found
    retryer = AsyncRetrying(
        stop=stop_after_delay(budget_s),
        wait=jittered(first_wait_s, max_wait_s),
        retry=retry_if_result(lambda answer: answer is None),
        retry_error_callback=lambda state: None,
    )
    answer: T | None = await retryer(check)
    return answer
