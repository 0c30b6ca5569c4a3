"""How far a replay is: a progress bar on a terminal, `replay_progress` log lines elsewhere."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import structlog

log = structlog.get_logger("payment_worker.replay")


class Progress:
    """A rich progress bar on a terminal; otherwise a `replay_progress` line every `every_s`
    seconds (records read, answered from the ledger, processed anew, read per second), from
    a timer thread, so a replay that waits still says where it is."""

    def __init__(self, every_s: float = 3.0, tty: bool | None = None) -> None:
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.every_s = every_s
        self.done = self.answered = self.processed = 0
        self.total = 0
        self._started = time.monotonic()
        self._bar: Any = None
        self._task: Any = None
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def start(self, total: int) -> None:
        self.total = total
        self._started = time.monotonic()
        if self.tty:
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(transient=False)
            self._bar.start()
            self._task = self._bar.add_task("replaying", total=total or None)
            return
        log.info("replay_started", records_to_read=total)
        self._ticker = threading.Thread(target=self._tick, name="replay-progress", daemon=True)
        self._ticker.start()

    def advance(self, n: int, answered: int = 0, processed: int = 0) -> None:
        self.done += n
        self.answered += answered
        self.processed += processed
        if self._bar is not None:
            self._bar.update(self._task, advance=n)

    def _tick(self) -> None:
        while not self._stop.wait(self.every_s):
            self.line()

    def line(self) -> None:
        elapsed = max(time.monotonic() - self._started, 1e-9)
        log.info(
            "replay_progress",
            read=self.done,
            of=self.total,
            answered=self.answered,
            processed=self.processed,
            per_s=round(self.done / elapsed),
        )

    def stop(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=2)
        if self._bar is not None:
            self._bar.stop()
