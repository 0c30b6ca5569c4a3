"""The replay's work on what was read: each batch sorted by what the ledger knows, recorded
answers given again straight to Kafka, new and ERROR commands through the pipeline again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Protocol, TypeVar

import structlog

from payment_worker.config import Settings
from payment_worker.entrypoints.chains import KeyedChains
from payment_worker.entrypoints.relay import OutboxRelay
from payment_worker.entrypoints.replay.exceptions import ReplayError
from payment_worker.entrypoints.replay.options import ReplayOptions
from payment_worker.entrypoints.replay.reading import Batches, PartitionReader
from payment_worker.entrypoints.replay.summary import ReplaySummary
from payment_worker.exceptions import GatewayRefusedCredentials
from payment_worker.retrying import retrying
from payment_worker.service.pipeline import Handled, Pipeline
from payment_worker.service.ports import BatchLedgerPort, DirectSenderPort, InboundRecord
from payment_worker.service.replay import (
    Classified,
    Kind,
    events_to_republish,
    look_up,
    prepare_batch,
    replies_for,
)

log = structlog.get_logger("payment_worker.replay")

T = TypeVar("T")


async def _retried(call: Callable[[], Awaitable[T]]) -> T:
    """A retryable failure (database restart...) tried again with a growing wait, then raised."""
    return await retrying(call, event="replay_retry", attempts=20, first_wait_s=0.1, max_wait_s=5.0)


class ReplayApp(Protocol):
    """What a replay runs on (the composition root's App has it all)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def store(self) -> BatchLedgerPort: ...

    @property
    def pipeline(self) -> Pipeline: ...

    @property
    def relay(self) -> OutboxRelay: ...

    @property
    def direct_sender(self) -> Callable[[], DirectSenderPort]: ...

    @property
    def reading_consumer(self) -> Callable[[], Any]: ...


class Replayer:
    """One replay of the partitions `options.shard` selects, run once by `run()`."""

    def __init__(self, app: ReplayApp, options: ReplayOptions) -> None:
        self.app = app
        self.options = options
        self.summary = ReplaySummary()
        self._republished: set[str] = set()
        self._chains = KeyedChains()
        self._refused_by: GatewayRefusedCredentials | None = None
        self._slots = asyncio.Semaphore(options.max_in_flight)
        # Answers from the ledger go straight to Kafka, not through the outbox: they change
        # nothing in the database, so there is no state to keep atomic with them, and a lost
        # one is given again by the next replay. Replay fails if one cannot be delivered.
        self._sender = app.direct_sender()
        self._reader = PartitionReader(app.reading_consumer, options, app.settings.topic_dlq)

    async def run(self, progress: Any = None) -> ReplaySummary:
        await self._reader.open()
        started = time.monotonic()
        if not self.options.dry_run:
            await asyncio.to_thread(self._sender.open)
        try:
            bounds = await self._reader.bounds()
            if progress is not None:
                progress.start(bounds.total)
            # Reading runs one batch ahead of the work on the previous one.
            batches: Batches = asyncio.Queue(2)
            reader = asyncio.create_task(self._reader.read(bounds, batches))
            # The ledger lookup of a batch runs while the previous batch is answered.
            looked_up: tuple[list[Classified], asyncio.Future[None]] | None = None
            lookups: list[asyncio.Future[None]] = []
            try:
                while (batch := await batches.get()) is not None:
                    if isinstance(batch, Exception):
                        raise batch
                    if self._refused_by is not None:
                        break
                    self.summary.read += len(batch)
                    items = await _retried(partial(prepare_batch, self.app.pipeline, batch))
                    lookup = asyncio.ensure_future(
                        _retried(partial(look_up, items, self.app.store))
                    )
                    lookups = [f for f in lookups if not f.done()] + [lookup]
                    if looked_up is not None:
                        await self._answer(*looked_up, progress)
                    looked_up = (items, lookup)
                if looked_up is not None:
                    await self._answer(*looked_up, progress)
                    looked_up = None
            finally:
                for pending in lookups:  # a lookup ahead of a batch that failed
                    if not pending.done():
                        pending.cancel()
                if not reader.done():
                    reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
            if self._chains.tasks:
                await asyncio.gather(*self._chains.tasks)
            if not self.options.dry_run:
                left = await asyncio.to_thread(self._sender.drain)
                if left:
                    raise ReplayError(f"{left} replies could not be delivered to Kafka")
            if self._refused_by is not None:  # after the answers already given are delivered
                raise self._refused_by
        finally:
            await self._reader.close()
            if not self.options.dry_run:
                await asyncio.to_thread(self._sender.close)
        self.summary.seconds = time.monotonic() - started
        return self.summary

    async def _answer(
        self, items: list[Classified], lookup: asyncio.Future[None], progress: Any
    ) -> None:
        await lookup
        for item in items:
            self.summary.kinds[str(item.kind)] += 1
        if progress is not None:
            answered = sum(1 for i in items if i.kind in (Kind.RECORDED, Kind.INVALID))
            processed = sum(1 for i in items if i.kind in (Kind.NEW, Kind.FAILED))
            progress.advance(len(items), answered, processed)
        if self.options.dry_run:
            return
        fast = [i for i in items if i.kind in (Kind.RECORDED, Kind.INVALID)]
        if fast:
            self._sender.send(replies_for(self.app.pipeline, fast))
        if self.options.republish_events:
            store = self.app.store
            events = await _retried(lambda: events_to_republish(fast, store, self._republished))
            stored = await _retried(lambda: store.record_many(events))
            self.summary.republished_events += len(stored)
            self.app.relay.publish(stored)
        for item in items:
            if item.kind is Kind.RECORDED and item.entry is not None:
                self.summary.outcomes[str(item.entry.outcome)] += 1
            elif item.kind is Kind.INVALID:
                self.summary.outcomes["INVALID_REQUEST"] += 1
            elif item.kind in (Kind.NEW, Kind.FAILED):
                await self._slots.acquire()
                self._start(item.record)

    def _start(self, record: InboundRecord) -> None:
        if self._refused_by is not None:  # nothing more is sent to a gateway refusing us
            self._slots.release()
            return
        key: bytes | str = record.key or f"{record.partition}/{record.offset}"
        self._chains.start(key, lambda: self._process(record), self._slots.release)

    async def _process(self, record: InboundRecord) -> None:
        """One record through the pipeline, as the worker does it; whatever goes wrong is
        this record's (answered ERROR and dead-lettered where possible), never the replay's."""
        pipeline = self.app.pipeline
        try:
            handled: Handled = await _retried(lambda: pipeline.handle(record))
        except GatewayRefusedCredentials as exc:
            # Our key, not the customer's: nothing is declined or dead-lettered, and the
            # replay stops with this one line (its payment stays pending, for the reconciler).
            self._refused_by = self._refused_by or exc
            return
        except Exception as exc:
            log.error(
                "replay_record_failed",
                partition=record.partition,
                offset=record.offset,
                error=f"{type(exc).__name__}: {exc}",
            )
            error = exc
            try:
                handled = await _retried(lambda: pipeline.handle_failure(record, error))
            except Exception as second:
                log.error(
                    "replay_record_skipped",
                    partition=record.partition,
                    offset=record.offset,
                    error=f"{type(second).__name__}: {second}",
                )
                self.summary.outcomes["skipped (see the log)"] += 1
                return
        self.app.relay.publish(handled.stored)
        if handled.outcome is not None:
            self.summary.outcomes[str(handled.outcome)] += 1
        self.summary.dead_letters += sum(
            1 for s in handled.stored if s.message.kind == "dead_letter"
        )
