"""The outbox relay: publishes committed outbox rows and marks them sent.

Fast path: rows written by this process are handed over right after their commit. Sweeper:
rows left unsent (a crash, a broker outage, another process) are claimed with SKIP LOCKED and
published again. Delivery is at least once; consumers deduplicate on the event id.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

import structlog

from payment_worker import metrics
from payment_worker.adapters.kafka import OutboxProducer
from payment_worker.adapters.postgres import PostgresStore
from payment_worker.exceptions import RetryableError
from payment_worker.service.ports import StoredMessage

log = structlog.get_logger("payment_worker.relay")


class OutboxRelay:
    def __init__(
        self,
        store: PostgresStore,
        producer: OutboxProducer,
        *,
        sweep_every_s: float = 2.0,
        sweep_older_than_s: float = 5.0,
    ) -> None:
        self.store = store
        self.producer = producer
        self.sweep_every_s = sweep_every_s
        self.sweep_older_than_s = sweep_older_than_s
        self._tasks: list[asyncio.Task[None]] = []
        self._reports = asyncio.Event()
        self._armed = threading.Event()
        self._stopping = False

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
        for row_id, error in failed:
            metrics.OUTBOX_FAILED.inc()
            log.warning("outbox_delivery_failed", row_id=row_id, error=error)
        if delivered:
            await self.store.mark_sent(delivered)
            metrics.OUTBOX_PUBLISHED.inc(len(delivered))

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

    async def sweep_once(self, older_than_s: float | None = None) -> int:
        """Publish unsent rows older than the given age; returns how many were published."""
        older = self.sweep_older_than_s if older_than_s is None else older_than_s
        self.producer.reset_if_fatal()
        published = 0
        async with self.store.claim_unsent(older, 500) as (claimed, cur):
            todo = [s for s in claimed if s.id not in self.producer.in_flight]
            if not todo:
                return 0
            for item in todo:
                self.producer.produce(item)
            left = await asyncio.to_thread(self.producer.flush, 10.0)
            delivered, failed = self.producer.take_reports()
            for row_id, error in failed:
                metrics.OUTBOX_FAILED.inc()
                log.warning("outbox_delivery_failed", row_id=row_id, error=error)
            if delivered:
                await self.store.mark_sent_in(cur, delivered)
                published = len(delivered)
                metrics.OUTBOX_PUBLISHED.inc(published)
            if left:
                log.warning("outbox_sweep_incomplete", unsent=left)
        if published:
            log.info("outbox_swept", published=published)
        return published

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_every_s)
            try:
                await self.sweep_once()
                metrics.OUTBOX_BACKLOG.set(await self.store.outbox_backlog())
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
