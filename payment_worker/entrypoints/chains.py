"""Work run one after another per key (the commands of one order strictly in order) and
concurrently across keys: the worker's and replay's way of keeping order without a lock."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any


class KeyedChains:
    """Each `start(key, work)` runs `work()` once the last task started for `key` is done."""

    def __init__(self) -> None:
        self._tails: dict[bytes | str, asyncio.Task[None]] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def start(
        self,
        key: bytes | str,
        work: Callable[[], Coroutine[Any, Any, None]],
        on_done: Callable[[], None] | None = None,
    ) -> asyncio.Task[None]:
        previous = self._tails.get(key)
        # Nothing before it (the usual case): the work is the task, without a coroutine around.
        task = asyncio.create_task(work() if previous is None else _after(previous, work))
        self._tails[key] = task
        self.tasks.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self.tasks.discard(finished)
            if self._tails.get(key) is finished:
                del self._tails[key]
            if on_done is not None:
                on_done()

        task.add_done_callback(done)
        return task


async def _after(
    previous: asyncio.Task[None], work: Callable[[], Coroutine[Any, Any, None]]
) -> None:
    await asyncio.wait([previous])  # its outcome is its own, not ours
    await work()
