"""Group commit: calls that arrive while a batch is running are served together by the next.

There is no timer and no batch barrier: a lone call runs at once; under load, calls pile up
while the current batch runs and go out together in the next one, so each command waits for
at most one batch ahead of it, never for the slowest command of its batch.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from payment_worker.exceptions import RetryableError

T = TypeVar("T")
R = TypeVar("R")

BatchFn = Callable[[list[T]], Awaitable[Sequence[R | BaseException]]]


class Coalescer(Generic[T, R]):
    """Serves `submit(item)` calls with `run_batch(items)`, up to `parallel` batches at once.

    `run_batch` returns one result per item, in order; a result that is an exception is raised
    for that item alone. If a whole batch fails with anything but a RetryableError, its items
    are run again one by one, so one bad item cannot fail the others.
    """

    def __init__(
        self, run_batch: BatchFn[T, R], *, max_batch: int = 256, parallel: int = 2
    ) -> None:
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.parallel = parallel
        self._queue: deque[tuple[T, asyncio.Future[R]]] = deque()
        self._running = 0
        self.batches = 0
        self.items = 0

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._running < self.parallel:
            self._running += 1
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = [
                    self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))
                ]
                await self._run([item for item, _ in batch], [f for _, f in batch])
        finally:
            self._running -= 1

    async def _run(self, items: list[T], futures: list[asyncio.Future[R]]) -> None:
        self.batches += 1
        self.items += len(items)
        try:
            results = await self.run_batch(items)
        except RetryableError as exc:
            for future in futures:
                _fail(future, exc)
            return
        except Exception as exc:
            if len(items) == 1:
                _fail(futures[0], exc)
                return
            for item, future in zip(items, futures, strict=True):
                await self._run([item], [future])
            return
        except BaseException as exc:  # cancellation: nobody may wait forever
            for future in futures:
                _fail(future, exc)
            raise
        for future, result in zip(futures, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)


def _fail(future: asyncio.Future[R], exc: BaseException) -> None:
    if future.done():
        return
    if isinstance(exc, asyncio.CancelledError):
        future.cancel()
    else:
        future.set_exception(exc)
