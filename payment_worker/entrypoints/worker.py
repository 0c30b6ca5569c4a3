"""The long-running worker: consume commands, run the pipeline concurrently (one order at a
time), publish through the outbox, commit offsets only behind the database."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time

import structlog

from payment_worker import metrics, tracing
from payment_worker.domain.ids import token_hex
from payment_worker.domain.routing import checked_route, record_trace_context
from payment_worker.entrypoints.chains import KeyedChains
from payment_worker.entrypoints.relay import OutboxRelay
from payment_worker.entrypoints.tracking import OffsetTracker, PartitionOffsets
from payment_worker.exceptions import (
    GatewayRefusedCredentials,
    InfrastructureUnavailable,
    RetryableError,
)
from payment_worker.retrying import wait_before
from payment_worker.service.pipeline import Handled, Pipeline
from payment_worker.service.ports import (
    ConsumerFactory,
    InboundRecord,
    OutcomeUnknown,
    ReconcilerStorePort,
    RecordConsumerPort,
)

log = structlog.get_logger("payment_worker.worker")

# How many consumed-but-uncommitted records a worker may hold, in units of max_in_flight.
WINDOW_FACTOR = 4


class Worker:
    def __init__(
        self,
        *,
        pipeline: Pipeline,
        store: ReconcilerStorePort,
        relay: OutboxRelay,
        make_consumer: ConsumerFactory,
        max_in_flight: int = 2000,
        group: str = "payment-worker",
        reconcile_after_s: float = 60.0,
        drain_timeout_s: float = 30.0,
        pause_after_s: float = 1.0,
        record_attempts: int = 8,
        claim_lease_s: float = 120.0,
    ) -> None:
        self.pipeline = pipeline
        self.store = store
        self.relay = relay
        self.make_consumer = make_consumer
        self.max_in_flight = max_in_flight
        self.group = group
        self.reconcile_after_s = reconcile_after_s
        self.drain_timeout_s = drain_timeout_s
        self.pause_after_s = pause_after_s
        self.record_attempts = record_attempts
        self.claim_lease_s = claim_lease_s
        self.reconciler_id = f"{socket.gethostname()}:{os.getpid()}:{token_hex(4)}"
        self.tracker = OffsetTracker()
        self._chains = KeyedChains()
        self._by_partition: dict[tuple[str, int], set[asyncio.Task[None]]] = {}
        self._stopping = asyncio.Event()
        self._refused_by: GatewayRefusedCredentials | None = None
        self._room = asyncio.Event()
        self.ready = False

    # -- rebalance ----------------------------------------------------------------------------

    def _on_assign(self, keys: list[tuple[str, int]]) -> None:
        self.ready = True

    async def _on_revoke(self, keys: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """Finish the revoked partitions' records, cancel those still running at the drain
        deadline (and wait until they have stopped), then say what to commit: the partitions
        are given up only once none of their work can go on here. A cancelled record is not
        committed, so its new owner gets it again; a payment it left pending is resumed with
        the same payment id (the gateway's idempotency key) or finished by the reconciler.
        What is waited for is the records still running: one given up (abandoned at stop, or
        kept uncommitted for a key the gateway refused) stays unfinished for the tracker, and
        waiting for it would hold the partitions until the deadline for nothing."""

        def running() -> set[asyncio.Task[None]]:
            return {t for key in keys for t in self._by_partition.get(key, ()) if not t.done()}

        deadline = time.monotonic() + self.drain_timeout_s
        # Polling a set that many tasks change; an event per partition would not be simpler.
        while running() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        still = running()
        if still:
            log.warning(
                "revoked_commands_cancelled",
                commands=len(still),
                partitions=[f"{t}[{p}]" for t, p in keys],
                detail=f"still running {self.drain_timeout_s:g} s after the revocation;"
                " their new owner processes them again",
            )
            for task in still:
                task.cancel()
            await asyncio.wait(still)
        points = self.tracker.to_commit(keys)
        self.tracker.forget(keys)
        return points

    # -- per record ---------------------------------------------------------------------------

    def _dispatch(self, record: InboundRecord) -> None:
        offsets = self.tracker.started(record.topic, record.partition, record.offset)
        key: bytes | str = record.key or f"{record.topic}/{record.partition}/{record.offset}"
        partition = (record.topic, record.partition)
        tasks = self._by_partition.setdefault(partition, set())
        metrics.IN_FLIGHT.inc()

        def done() -> None:
            self._room.set()
            metrics.IN_FLIGHT.dec()
            tasks.discard(task)
            if not tasks and self._by_partition.get(partition) is tasks:
                del self._by_partition[partition]

        task = self._chains.start(key, lambda: self._run(record, offsets), done)
        tasks.add(task)

    async def _run(self, record: InboundRecord, offsets: PartitionOffsets) -> None:
        started = time.monotonic()
        traced = tracing.active()
        with tracing.span(
            f"{record.topic} process",
            tracing.CONSUMER,
            parent=tracing.parent_from(*record_trace_context(record.headers)) if traced else None,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "process",
                "messaging.destination.name": record.topic,
                "messaging.destination.partition.id": str(record.partition),
                "messaging.kafka.offset": record.offset,
                "messaging.consumer.group.name": self.group,
            }
            if traced
            else None,
        ):
            handled = await self._with_retries(record)
            if handled is None:
                return  # abandoned at shutdown: not committed, so it is redelivered
            self.relay.publish(handled.stored)
            if tracing.recording():
                tracing.annotate(
                    {
                        "payment.outcome": str(handled.outcome) if handled.outcome else None,
                        "payment.duplicate": handled.duplicate,
                        "payment.dead_letter_reason": handled.dead_letter_reason,
                    }
                )
        metrics.LATENCY.observe(time.monotonic() - started)
        if handled.dead_letter_reason is not None:
            metrics.DEAD_LETTERS.labels(handled.dead_letter_reason).inc()
        if handled.outcome is not None:
            metrics.count_command(str(handled.outcome), handled.duplicate)
        offsets.finished(record.offset)

    async def _with_retries(self, record: InboundRecord) -> Handled | None:
        """The record's answer, whatever happens. A dependency every record needs (the
        database, the broker, the registry) is waited for until it is back or we stop. Any
        other failure of the record alone is tried a few times, then answered ERROR and
        dead-lettered; if even that fails, the record is dead-lettered alone, and if that
        fails too it is given up on (logged, counted) so that its partition moves on."""
        stage = 0  # 0: process it; 1: answer ERROR and dead-letter; 2: dead-letter; 3: give up
        tries = 0
        failure: BaseException | None = None
        while True:
            tries += 1
            try:
                if stage == 0:
                    return await self.pipeline.handle(record)
                assert failure is not None
                if stage == 1:
                    return await self.pipeline.handle_failure(record, failure)
                if stage == 2:
                    return await self.pipeline.dead_letter_only(record, failure)
                metrics.SKIPPED_RECORDS.inc()
                log.error(
                    "record_skipped",
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                    error=f"{type(failure).__name__}: {failure}",
                    detail="neither answered nor dead-lettered; its offset is committed",
                )
                return Handled(None)
            except GatewayRefusedCredentials as exc:
                self._refused(exc)
                return None  # not committed: taken again under a key the gateway accepts
            except InfrastructureUnavailable as exc:
                if self._stopping.is_set() and tries > 1:
                    log.warning(
                        "record_abandoned_at_stop",
                        partition=record.partition,
                        offset=record.offset,
                        error=str(exc),
                    )
                    return None
                await self._backoff(record, tries, exc)
            except Exception as exc:
                retryable = isinstance(exc, RetryableError)
                if retryable and tries < self.record_attempts:
                    await self._backoff(record, tries, exc)
                    continue
                if stage == 0:
                    log.error(
                        "record_processing_failed",
                        partition=record.partition,
                        offset=record.offset,
                        error=f"{type(exc).__name__}: {exc}",
                        exc_info=not retryable,
                    )
                    failure = exc
                else:
                    log.exception(
                        "record_failure_handling_failed", stage=stage, offset=record.offset
                    )
                stage, tries = stage + 1, 0

    def _refused(self, exc: GatewayRefusedCredentials) -> None:
        """The gateway refused our key: stop taking commands (run() ends and raises it)."""
        if self._refused_by is None:
            self._refused_by = exc
            log.error(
                "gateway_refused_credentials",
                error=str(exc),
                detail="the worker stops taking commands; no payment is declined for it",
            )
        self._room.set()

    async def _backoff(self, record: InboundRecord, attempt: int, exc: BaseException) -> None:
        metrics.RETRIES.labels(type(exc).__name__).inc()
        wait = wait_before(attempt, first_s=0.1, max_s=5.0)
        log.warning(
            "record_retry",
            partition=record.partition,
            offset=record.offset,
            attempt=attempt,
            error=str(exc),
            wait_s=round(wait, 2),
        )
        await asyncio.sleep(wait)

    # -- loops --------------------------------------------------------------------------------

    async def _commit_loop(self, consumer: RecordConsumerPort) -> None:
        while True:
            await asyncio.sleep(0.2)
            await self._commit(consumer)

    async def _commit(self, consumer: RecordConsumerPort) -> None:
        points = self.tracker.to_commit()
        if not points:
            return
        try:
            await consumer.commit(points)
            self.tracker.committed(points)
        except RetryableError as exc:
            log.warning("offset_commit_failed", error=str(exc))

    async def reconcile_once(self) -> int:
        """Finish payments left pending longer than the reconcile age (rule I5). Each is
        claimed in the database first, so exactly one worker finishes it; one that cannot be
        finished now is skipped (its claim lapses and a later pass tries again)."""
        finished = 0
        stale = await self.store.claim_stale(
            self.reconcile_after_s, self.reconciler_id, lease_s=self.claim_lease_s
        )
        for payment, route_json in stale:
            route = checked_route(route_json, str(payment.command_id), self.pipeline.config.routes)
            log.info(
                "reconciling_pending_payment",
                payment_id=str(payment.id),
                order_id=str(payment.order_id),
            )
            try:
                with tracing.span(
                    "payment reconcile",
                    parent=tracing.parent_from(route.traceparent, route.tracestate),
                    attributes={
                        "payment.id": str(payment.id),
                        "payment.order_id": str(payment.order_id),
                    },
                ):
                    handled = await self.pipeline.finish_stale(payment, route)
            except GatewayRefusedCredentials as exc:
                self._refused(exc)  # first: the worker stops even if the release fails
                with contextlib.suppress(Exception):  # the claim lapses by itself anyway
                    await self.store.release_claim(payment.id, self.reconciler_id)
                break
            except OutcomeUnknown:
                metrics.RECONCILE_SKIPPED.inc()
                log.info(
                    "reconcile_outcome_unknown",
                    payment_id=str(payment.id),
                    detail="still pending; the gateway is asked again at the next pass",
                )
                await self.store.release_claim(payment.id, self.reconciler_id)
                continue
            except Exception as exc:
                metrics.RECONCILE_SKIPPED.inc()
                log.warning(
                    "reconcile_payment_failed",
                    payment_id=str(payment.id),
                    error=f"{type(exc).__name__}: {exc}",
                    detail="skipped; tried again once its claim lapses",
                )
                continue
            self.relay.publish(handled.stored)
            if handled.outcome is not None:
                metrics.RECONCILED.inc()
                finished += 1
        if stale:
            await self.store.release_claims()
        await self.store.record_reconciler_run(self.reconciler_id, finished)
        return finished

    async def _reconcile_loop(self) -> None:
        every = min(max(self.reconcile_after_s / 4, 0.5), 15.0)
        while True:
            await asyncio.sleep(every)
            try:
                await self.reconcile_once()
            except RetryableError as exc:
                metrics.RECONCILER_RUNS.labels("failed").inc()
                log.warning("reconcile_failed", error=str(exc))
            except Exception:
                metrics.RECONCILER_RUNS.labels("failed").inc()
                log.exception("reconcile_crashed")
            else:
                metrics.RECONCILER_RUNS.labels("ok").inc()
                metrics.RECONCILER_LAST_RUN.set_to_current_time()

    async def run(self, stop: asyncio.Event) -> None:
        consumer = self.make_consumer(on_assign=self._on_assign, on_revoke=self._on_revoke)
        await consumer.open()
        await self.relay.start()
        background = [
            asyncio.create_task(self._commit_loop(consumer), name="commit"),
            asyncio.create_task(self._reconcile_loop(), name="reconcile"),
        ]
        log.info("worker_started", max_in_flight=self.max_in_flight)
        # In flight = commands being processed. Records already done but waiting behind a
        # slower one of their partition to be committed are only offsets: they do not count,
        # but their number (the records redelivered after a crash) is bounded too.
        max_window = self.max_in_flight * WINDOW_FACTOR
        paused = False
        full_since: float | None = None
        try:
            while not stop.is_set() and self._refused_by is None:
                running = len(self._chains.tasks)
                window = self.tracker.unfinished()
                room = min(500, self.max_in_flight - running, max_window - window)
                if paused:
                    if running <= self.max_in_flight // 2 and window <= max_window // 2:
                        paused, full_since = False, None
                        await consumer.set_paused(False)
                        continue
                    # Paused partitions yield nothing; polling serves the group session and
                    # rebalances (max.poll.interval.ms) while the worker waits.
                    records = await consumer.consume(1, 0.1)
                    metrics.CONSUMED.inc(len(records))
                    for record in records:
                        self._dispatch(record)
                    continue
                if room > 0:
                    full_since = None
                    records = await consumer.consume(room, 0.1)
                    metrics.CONSUMED.inc(len(records))
                    for record in records:
                        self._dispatch(record)
                    continue
                # Full: wait for a command to finish, without pausing the consumer (a pause
                # drops the prefetched records, and fetching them again stalled consumption for
                # ~0.5 s each time). Full for longer (a dependency down, commands retrying):
                # pause, so that polling can go on without taking records.
                now = time.monotonic()
                full_since = full_since or now
                if now - full_since >= self.pause_after_s:
                    paused = True
                    await consumer.set_paused(True)
                    continue
                self._room.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room.wait(), 0.2)
        finally:
            log.info("worker_stopping", in_flight=len(self._chains.tasks))
            self._stopping.set()
            if self._chains.tasks:
                _, still = await asyncio.wait(set(self._chains.tasks), timeout=self.drain_timeout_s)
                for task in still:
                    task.cancel()
            for task in background:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self._commit(consumer)
            await self.relay.stop()
            await consumer.close()
            log.info("worker_stopped")
        if self._refused_by is not None:
            raise self._refused_by
