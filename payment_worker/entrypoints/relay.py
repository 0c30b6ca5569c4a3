"""The outbox relay: publishes committed outbox rows and marks them sent.

Fast path: rows written by this process are handed over right after their commit. Sweeper:
rows left unsent (a crash, a broker outage, another process, a refused delivery whose wait is
over) are leased with SKIP LOCKED and handed over again. Delivery reports mark rows sent, or
failed: a refused row waits longer each time and is parked after `max_attempts` refusals, so
that no row holds back the others. Delivery is at least once; consumers deduplicate on the
event id.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import structlog

from payment_worker import metrics
from payment_worker.exceptions import RetryableError
from payment_worker.service.ports import OutboxProducerPort, OutboxStorePort, StoredMessage

log = structlog.get_logger("payment_worker.relay")

# A broker-wide failure (timeout, no connection) counts against the row only while other
# rows are being delivered: then the broker is up and the trouble is the row's.
BROKER_UP_WINDOW_S = 30.0


class OutboxRelay:
    def __init__(
        self,
        store: OutboxStorePort,
        producer: OutboxProducerPort,
        *,
        max_attempts: int = 20,
        sweep_every_s: float = 2.0,
        sweep_older_than_s: float = 5.0,
        sweep_batch: int = 500,
        lease_s: float = 60.0,
        max_queued: int = 20_000,
    ) -> None:
        self.store = store
        self.producer = producer
        self.max_attempts = max_attempts
        self.sweep_every_s = sweep_every_s
        self.sweep_older_than_s = sweep_older_than_s
        self.sweep_batch = sweep_batch
        self.lease_s = lease_s
        self.max_queued = max_queued
        self._tasks: list[asyncio.Task[None]] = []
        self._reports = asyncio.Event()
        self._armed = threading.Event()
        self._last_delivery = -1e18

    async def start(self) -> None:
        loop = asyncio.get_running_loop()

        armed = threading.Event()  # one loop wake-up per burst of delivery reports, not one each

        def wakeup() -> None:
            if not armed.is_set():
                armed.set()
                loop.call_soon_threadsafe(self._reports.set)

        self._armed = armed

        self.producer.wakeup = wakeup
        self.producer.open()
        self._tasks = [
            asyncio.create_task(self._mark_loop(), name="relay-mark"),
            asyncio.create_task(self._sweep_loop(), name="relay-sweep"),
        ]

    def publish(self, stored: list[StoredMessage]) -> None:
        self.producer.reset_if_fatal()
        for item in stored:
            self.producer.produce(item)

    async def _mark_once(self) -> None:
        self.producer.reset_if_fatal()
        delivered, failed = self.producer.take_reports()
        if delivered:
            self._last_delivery = time.monotonic()
            await self.store.mark_sent(delivered)
            metrics.OUTBOX_PUBLISHED.inc(len(delivered))
        if failed:
            broker_up = time.monotonic() - self._last_delivery < BROKER_UP_WINDOW_S
            metrics.OUTBOX_FAILED.inc(len(failed))
            for failure in failed:
                log.warning(
                    "outbox_delivery_failed",
                    row_id=failure.row_id,
                    error=failure.error,
                    broker_wide=failure.broker_wide,
                )
            parked = await self.store.mark_failed(
                [(f.row_id, f.error, broker_up or not f.broker_wide) for f in failed],
                self.max_attempts,
            )
            for row in parked:
                metrics.OUTBOX_PARKED.labels(row.kind).inc()
                log.error(
                    "outbox_record_parked",
                    row_id=row.id,
                    kind=row.kind,
                    topic=row.topic,
                    partition=row.partition,
                    attempts=row.attempts,
                    error=row.error,
                    detail="refused by the broker too often; kept in the outbox, not retried",
                )

    async def _mark_loop(self) -> None:
        while True:
            await self._reports.wait()
            self._reports.clear()
            await asyncio.sleep(0.02)  # gather a few reports per UPDATE
            self._armed.clear()
            try:
                await self._mark_once()
            except RetryableError as exc:
                log.warning("outbox_mark_failed", error=str(exc))
                await asyncio.sleep(1)
                self._reports.set()
            except Exception:
                log.exception("outbox_mark_crashed")
                await asyncio.sleep(1)

    async def sweep_once(self, older_than_s: float | None = None) -> int:
        """Hand unsent rows older than the given age, and due for a try, to the producer;
        returns how many. Their delivery reports mark them as the fast path's do."""
        older = self.sweep_older_than_s if older_than_s is None else older_than_s
        self.producer.reset_if_fatal()
        if len(self.producer.in_flight) >= self.max_queued:
            return 0  # the producer has enough to deliver already (the broker is slow or away)
        claimed = await self.store.claim_unsent(older, self.sweep_batch, self.lease_s)
        todo = [s for s in claimed if s.id not in self.producer.in_flight]
        for item in todo:
            self.producer.produce(item)
        if todo:
            log.info("outbox_swept", handed_over=len(todo))
        return len(todo)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_every_s)
            try:
                await self.sweep_once()  # the backlog gauges are the state gauges' (gauges.py)
            except RetryableError as exc:
                log.warning("outbox_sweep_failed", error=str(exc))
            except Exception:
                log.exception("outbox_sweep_crashed")

    async def stop(self, timeout_s: float = 15.0) -> None:
        """Flush what is in flight, mark it sent, stop the loops."""
        left = await asyncio.to_thread(self.producer.close, timeout_s)
        if left:
            log.warning(
                "outbox_unflushed_at_stop",
                messages=left,
                detail="they stay in the outbox and are published on the next start",
            )
        with contextlib.suppress(RetryableError):
            await self._mark_once()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
