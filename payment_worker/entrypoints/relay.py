"""The outbox relay: publishes committed outbox rows and marks them sent.

Fast path: rows written by this process are handed over right after their commit; no other
relay takes them before `sweep_older_than_s`, longer than a delivery can take (the producer's
message timeout), so one relay at a time sends a row. Sweeper: rows left unsent (a crash, a
broker outage, a refused delivery whose wait is over) are leased with SKIP LOCKED and handed
over again. Delivery reports mark rows sent, or failed: a row the broker refuses (or whose
topic or partition the broker no longer has) waits longer each time and is parked after
`max_attempts` refusals, so that no row holds back the others; a broker that is down or slow
refuses nothing and parks nothing. Parked rows come back by themselves: every
`probe_every_s` one parked row per route is sent again, and once one goes through, its route's
rows are unparked (or at once: `payment-worker outbox retry`). Delivery is at least once;
consumers deduplicate on the event id.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque

import structlog

from payment_worker import metrics
from payment_worker.exceptions import RetryableError
from payment_worker.service.ports import (
    DeliveryFailure,
    OutboxProducerPort,
    OutboxStorePort,
    StoredMessage,
    TopicDirectoryPort,
)

log = structlog.get_logger("payment_worker.relay")


class OutboxRelay:
    def __init__(
        self,
        store: OutboxStorePort,
        producer: OutboxProducerPort,
        *,
        topics: TopicDirectoryPort | None = None,
        max_attempts: int = 20,
        sweep_every_s: float = 2.0,
        sweep_older_than_s: float = 15.0,
        sweep_batch: int = 500,
        lease_s: float = 60.0,
        max_queued: int = 20_000,
        probe_every_s: float = 60.0,
    ) -> None:
        self.store = store
        self.producer = producer
        self.topics = topics
        self.max_attempts = max_attempts
        self.sweep_every_s = sweep_every_s
        self.sweep_older_than_s = sweep_older_than_s
        self.sweep_batch = sweep_batch
        self.lease_s = lease_s
        self.max_queued = max_queued
        self.probe_every_s = probe_every_s
        self._tasks: list[asyncio.Task[None]] = []
        self._reports = asyncio.Event()
        self._armed = threading.Event()
        self._waiting: deque[StoredMessage] = deque()  # librdkafka's queue was full
        self._waiting_ids: set[int] = set()
        self._room = asyncio.Event()
        self._probes: dict[int, tuple[str, int | None]] = {}

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
            asyncio.create_task(self._waiting_loop(), name="relay-waiting"),
            asyncio.create_task(self._probe_loop(), name="relay-probe"),
        ]

    def publish(self, stored: list[StoredMessage]) -> None:
        self.producer.reset_if_fatal()
        for item in stored:
            self._hand_over(item)

    def _hand_over(self, item: StoredMessage) -> None:
        """To the producer, or, while its queue is full, to the rows that wait for room (in
        order): the event loop never waits for the broker here."""
        if self._waiting or not self.producer.produce(item):
            self._waiting.append(item)
            self._waiting_ids.add(item.id)
            self._room.set()

    async def _waiting_loop(self) -> None:
        while True:
            await self._room.wait()
            try:
                while self._waiting:
                    if not self.producer.produce(self._waiting[0]):
                        await asyncio.sleep(0.01)  # the poller thread makes room meanwhile
                        continue
                    self._waiting_ids.discard(self._waiting.popleft().id)
            except Exception:
                # The rows still waiting stay unsent in the outbox: the sweeper has them later.
                log.exception("outbox_waiting_rows_dropped", rows=len(self._waiting))
                self._waiting.clear()
                self._waiting_ids.clear()
            self._room.clear()

    def _busy(self, row_id: int) -> bool:
        """Handed over already: in the producer, or waiting for room in it."""
        return row_id in self.producer.in_flight or row_id in self._waiting_ids

    async def _gone(self, failures: list[DeliveryFailure]) -> set[tuple[str, int | None]]:
        """The routes, among these broker-wide failures', that the broker no longer has: each
        topic asked once, all at once, so that marking never waits a lookup per row."""
        if self.topics is None:
            return set()
        topics = sorted({f.topic for f in failures if f.broker_wide and f.topic})

        async def partitions(topic: str) -> int | BaseException | None:
            try:
                return await self.topics.partitions(topic)  # type: ignore[union-attr]
            except Exception as exc:  # the metadata is unavailable too: an outage
                return exc

        counts = dict(zip(topics, await asyncio.gather(*map(partitions, topics)), strict=True))
        gone = set()
        for f in failures:
            count = counts.get(f.topic)
            if isinstance(count, BaseException) or not f.broker_wide:
                continue
            if count is None or (f.partition is not None and f.partition >= count):
                gone.add((f.topic, f.partition))
        return gone

    def _refused(self, failure: DeliveryFailure, gone: set[tuple[str, int | None]]) -> bool:
        """Whether a failed delivery counts towards parking its row: the broker refused the
        row itself, or the row's topic or partition no longer exists (librdkafka reports that
        as a timeout, like an outage). A broker that is down or slow refuses nothing."""
        return not failure.broker_wide or (failure.topic, failure.partition) in gone

    async def _mark_once(self) -> None:
        self.producer.reset_if_fatal()
        delivered, failed = self.producer.take_reports()
        if delivered:
            await self.store.mark_sent(delivered)
            metrics.OUTBOX_PUBLISHED.inc(len(delivered))
            await self._unpark_probed(delivered)
        failed = [f for f in failed if self._probes.pop(f.row_id, None) is None]
        if failed:
            metrics.OUTBOX_FAILED.inc(len(failed))
            counted = []
            gone = await self._gone(failed)
            for failure in failed:
                refused = self._refused(failure, gone)
                counted.append((failure.row_id, failure.error, refused))
                log.warning(
                    "outbox_delivery_failed",
                    row_id=failure.row_id,
                    error=failure.error,
                    broker_wide=failure.broker_wide,
                    counted=refused,
                )
            parked = await self.store.mark_failed(counted, self.max_attempts)
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
                    detail="refused by the broker too often; kept in the outbox and sent again"
                    " when its route works again (or by `payment-worker outbox retry`)",
                )

    async def _unpark_probed(self, delivered: list[int]) -> None:
        for row_id in delivered:
            route = self._probes.pop(row_id, None)
            if route is None:
                continue
            unparked = await self.store.unpark(*route)
            log.info("outbox_route_works_again", topic=route[0], partition=route[1],
                     unparked=unparked)  # fmt: skip

    async def probe_parked(self) -> int:
        """Send one parked row of each route again; returns how many were handed over."""
        probes = await self.store.claim_parked_probes(self.probe_every_s)
        todo = [p for p in probes if not self._busy(p.id)]
        for item in todo:
            self._probes[item.id] = (item.message.topic, item.message.partition)
            self._hand_over(item)
        return len(todo)

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self.probe_every_s)
            try:
                await self.probe_parked()
            except RetryableError as exc:
                log.warning("outbox_probe_failed", error=str(exc))
            except Exception:
                log.exception("outbox_probe_crashed")

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
        if len(self.producer.in_flight) + len(self._waiting) >= self.max_queued:
            return 0  # the producer has enough to deliver already (the broker is slow or away)
        claimed = await self.store.claim_unsent(older, self.sweep_batch, self.lease_s)
        todo = [s for s in claimed if not self._busy(s.id)]
        for item in todo:
            self._hand_over(item)
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
