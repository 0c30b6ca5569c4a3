"""`payment-worker replay`: read a topic with a consumer of its own, from a start position to
the end offsets seen at start, and feed every command through the pipeline again.

The live group's offsets are never read or moved (manual assignment, nothing committed).
Recorded outcomes are answered from the ledger in batches; new and ERROR commands do work.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import multiprocessing.connection
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from payment_worker.adapters.kafka import (
    CONSUMER_DEFAULTS,
    DirectProducer,
    for_consumer,
    ready_messages,
    to_record,
)
from payment_worker.config import Settings
from payment_worker.entrypoints.chains import KeyedChains
from payment_worker.entrypoints.relay import OutboxRelay
from payment_worker.exceptions import PaymentWorkerError, RetryableError
from payment_worker.service.pipeline import Handled, Pipeline
from payment_worker.service.ports import BatchLedgerPort, InboundRecord
from payment_worker.service.replay import (
    Classified,
    Kind,
    events_to_republish,
    look_up,
    prepare_batch,
    replies_for,
    without_dlq_headers,
)

log = structlog.get_logger("payment_worker.replay")


class ReplayError(PaymentWorkerError):
    """Replay cannot start (unknown topic, unreachable broker)."""


@dataclass
class ReplayOptions:
    topic: str
    from_timestamp_ms: int | None = None
    to_timestamp_ms: int | None = None
    republish_events: bool = False
    dry_run: bool = False
    batch_size: int = 2000
    max_in_flight: int = 500
    # This process's share of the partitions when the replay is split across processes:
    # (index, count) takes every count-th partition, starting at the index-th.
    shard: tuple[int, int] = (0, 1)


@dataclass
class ReplaySummary:
    read: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    dead_letters: int = 0
    republished_events: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.read / self.seconds if self.seconds > 0 else 0.0

    def rows(self) -> list[tuple[str, str]]:
        rows = [("records read", str(self.read))]
        for kind in Kind:
            rows.append((str(kind), str(self.kinds.get(str(kind), 0))))
        for outcome, n in sorted(self.outcomes.items()):
            rows.append((f"  outcome {outcome}", str(n)))
        rows.append(("dead letters written", str(self.dead_letters)))
        rows.append(("events republished", str(self.republished_events)))
        rows.append(("seconds", f"{self.seconds:.2f}"))
        rows.append(("records per second", f"{self.rate:,.0f}"))
        return rows


def parse_timestamp(text: str) -> int:
    """Milliseconds since the epoch from ISO 8601 (naive is UTC) or a number of milliseconds."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ReplayError(f"not a timestamp: {text!r} (ISO 8601 or epoch milliseconds)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


class Bounds:
    """Start and stop offsets per partition, fixed before the first record is read."""

    def __init__(self, consumer: Consumer, options: ReplayOptions) -> None:
        try:
            metadata = consumer.list_topics(options.topic, timeout=10)
        except KafkaException as exc:
            raise ReplayError(f"cannot reach the broker: {exc}") from exc
        topic = metadata.topics.get(options.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            raise ReplayError(f"topic {options.topic!r} does not exist")
        index, count = options.shard
        partitions = sorted(topic.partitions)[index::count]
        self.start: dict[int, int] = {}
        self.stop: dict[int, int] = {}
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(options.topic, p), 10)
            self.start[p], self.stop[p] = low, high
        if options.from_timestamp_ms is not None and partitions:  # a shard may have none
            for tp in consumer.offsets_for_times(
                [TopicPartition(options.topic, p, options.from_timestamp_ms) for p in partitions],
                10,
            ):
                self.start[tp.partition] = tp.offset if tp.offset >= 0 else self.stop[tp.partition]
        # --to-timestamp is applied per record while reading (a partition ends at its first
        # record at or after it): exact on any broker, and never past the end offsets above.
        self.topic = options.topic

    @property
    def total(self) -> int:
        return sum(max(0, self.stop[p] - self.start[p]) for p in self.start)

    def assignment(self) -> list[TopicPartition]:
        return [
            TopicPartition(self.topic, p, self.start[p] if self.start[p] >= 0 else OFFSET_BEGINNING)
            for p in self.start
            if self.stop[p] > self.start[p]
        ]


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


class Replayer:
    def __init__(self, app: ReplayApp, options: ReplayOptions) -> None:
        self.app = app
        self.options = options
        self.summary = ReplaySummary()
        self._republished: set[str] = set()
        self._chains = KeyedChains()
        self._slots = asyncio.Semaphore(options.max_in_flight)
        # Answers from the ledger go straight to Kafka, not through the outbox: they change
        # nothing in the database, so there is no state to keep atomic with them, and a lost
        # one is given again by the next replay. Replay fails if one cannot be delivered.
        self._sender = DirectProducer(app.settings.kafka_common())
        self._consumer_thread = ThreadPoolExecutor(1, thread_name_prefix="replay-consumer")

    async def _on_consumer_thread(self, fn: Any, *args: Any) -> Any:
        """Every consumer call on one thread of its own, one at a time."""
        return await asyncio.get_running_loop().run_in_executor(self._consumer_thread, fn, *args)

    def _consumer(self) -> Consumer:
        settings = self.app.settings
        config: dict[str, Any] = {
            **CONSUMER_DEFAULTS,
            **for_consumer(settings.kafka_common()),
            "group.id": f"payment-worker-replay-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
        }
        return Consumer(config)

    async def run(self, progress: Any = None) -> ReplaySummary:
        consumer = await self._on_consumer_thread(self._consumer)
        started = time.monotonic()
        if not self.options.dry_run:
            await asyncio.to_thread(self._sender.open)
        try:
            bounds = await self._on_consumer_thread(Bounds, consumer, self.options)
            if progress is not None:
                progress.start(bounds.total)
            # Reading runs one batch ahead of the work on the previous one.
            batches: asyncio.Queue[list[InboundRecord] | Exception | None] = asyncio.Queue(2)
            reader = asyncio.create_task(self._read(consumer, bounds, batches))
            # The ledger lookup of a batch runs while the previous batch is answered.
            looked_up: tuple[list[Classified], asyncio.Future[None]] | None = None
            lookups: list[asyncio.Future[None]] = []
            try:
                while (batch := await batches.get()) is not None:
                    if isinstance(batch, Exception):
                        raise batch
                    self.summary.read += len(batch)
                    items = await _retrying(
                        lambda batch=batch: prepare_batch(self.app.pipeline, batch)
                    )
                    lookup = asyncio.ensure_future(
                        _retrying(lambda items=items: look_up(items, self.app.store))
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
        finally:
            # On the consumer's thread: after a consume still running there (librdkafka
            # does not allow close() beside another call).
            await self._on_consumer_thread(consumer.close)
            self._consumer_thread.shutdown(wait=False)
            if not self.options.dry_run:
                await asyncio.to_thread(self._sender.close)
        self.summary.seconds = time.monotonic() - started
        return self.summary

    async def _read(
        self,
        consumer: Consumer,
        bounds: Bounds,
        batches: asyncio.Queue[list[InboundRecord] | Exception | None],
    ) -> None:
        """Records inside the bounds, in batches, until every partition reached its stop; then
        None (or the exception that stopped the reading)."""
        assignment = bounds.assignment()
        if assignment:
            await self._on_consumer_thread(consumer.assign, assignment)
        remaining = {tp.partition: bounds.stop[tp.partition] for tp in assignment}
        # The first batches are small, so that answering starts while the rest is read. A batch
        # is what has arrived, up to its size: consume(n, timeout) would wait out the timeout
        # for the last records of a partition, fewer than n.
        size = min(250, self.options.batch_size)
        try:
            while remaining:
                messages = await self._on_consumer_thread(ready_messages, consumer, size, 0.5)
                size = min(size * 2, self.options.batch_size)
                batch: list[InboundRecord] = []
                for message in messages:
                    if message.error() is not None:
                        continue
                    record = to_record(message)
                    partition, offset = record.partition, record.offset
                    stop = remaining.get(partition)
                    if stop is None or offset >= stop:
                        continue
                    if self._after_window(record):
                        del remaining[partition]
                        continue
                    if self._before_window(record):
                        continue
                    if record.topic == self.app.settings.topic_dlq:
                        record = without_dlq_headers(record)
                    batch.append(record)
                    if offset + 1 >= stop:
                        del remaining[partition]
                if batch:
                    await batches.put(batch)
                if not messages:
                    # Offsets with no record (transaction markers, compaction) end a partition
                    # once the position has passed its stop offset.
                    positions = await self._on_consumer_thread(
                        consumer.position,
                        [TopicPartition(self.options.topic, p) for p in remaining],
                    )
                    for tp in positions:
                        if tp.offset >= remaining.get(tp.partition, 0) > 0:
                            del remaining[tp.partition]
        except Exception as exc:  # handed to the processing loop, which raises it
            await batches.put(exc)
            return
        await batches.put(None)

    def _after_window(self, record: InboundRecord) -> bool:
        stop = self.options.to_timestamp_ms
        return stop is not None and record.timestamp_ms is not None and record.timestamp_ms >= stop

    def _before_window(self, record: InboundRecord) -> bool:
        start = self.options.from_timestamp_ms
        return start is not None and record.timestamp_ms is not None and record.timestamp_ms < start

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
            events = await _retrying(lambda: events_to_republish(fast, store, self._republished))
            stored = await _retrying(lambda: store.record_many(events))
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
        key: bytes | str = record.key or f"{record.partition}/{record.offset}"
        self._chains.start(key, lambda: self._process(record), self._slots.release)

    async def _process(self, record: InboundRecord) -> None:
        """One record through the pipeline, as the worker does it; whatever goes wrong is
        this record's (answered ERROR and dead-lettered where possible), never the replay's."""
        pipeline = self.app.pipeline
        try:
            handled: Handled = await _retrying(lambda: pipeline.handle(record))
        except Exception as exc:
            log.error(
                "replay_record_failed",
                partition=record.partition,
                offset=record.offset,
                error=f"{type(exc).__name__}: {exc}",
            )
            error = exc
            try:
                handled = await _retrying(lambda: pipeline.handle_failure(record, error))
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


async def _retrying(call: Any, attempts: int = 20) -> Any:
    """Retry a retryable failure (database restart...) with a growing wait, then give up."""
    for attempt in range(1, attempts + 1):
        try:
            return await call()
        except RetryableError as exc:
            if attempt == attempts:
                raise
            wait = min(5.0, 0.1 * 2**attempt)
            log.warning("replay_retry", attempt=attempt, error=str(exc), wait_s=wait)
            await asyncio.sleep(wait)
    raise AssertionError("unreachable")


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


class PipeProgress:
    """A shard's progress, sent to the process that started it."""

    def __init__(self, conn: multiprocessing.connection.Connection) -> None:
        self.conn = conn

    def start(self, total: int) -> None:
        self.conn.send(("total", total))

    def advance(self, n: int, answered: int = 0, processed: int = 0) -> None:
        self.conn.send(("advance", (n, answered, processed)))

    def stop(self) -> None:
        pass


ShardRunner = Callable[[ReplayOptions, Any], ReplaySummary]


def _shard_main(
    run_shard: ShardRunner, options: ReplayOptions, conn: multiprocessing.connection.Connection
) -> None:
    """A child process: replay one shard, send back its summary (or its error)."""
    try:
        summary = run_shard(options, PipeProgress(conn))
        conn.send(("done", (summary, time.time())))
    except BaseException as exc:
        known = isinstance(exc, PaymentWorkerError)
        conn.send(("error", str(exc) if known else f"{type(exc).__name__}: {exc}"))
        raise SystemExit(1) from None
    finally:
        conn.close()


def replay_in_processes(
    options: ReplayOptions, processes: int, run_shard: ShardRunner, progress: Any
) -> ReplaySummary:
    """The replay split by partition across `processes` child processes (one Python process
    answers about 9,000-12,000 records/s here, bound by one core): each reads its share of the
    partitions with its own consumer, database pool and producer; commands of one order stay
    in one partition, so their order is kept. The summary adds up the shards'; its seconds run
    from the first shard's start to the last one's end.

    The children are forked before this process creates any Kafka client, thread or event
    loop, so they start at once and share nothing that fork would break."""
    context = multiprocessing.get_context("fork")
    sys.stdout.flush()  # or a child would write this process's buffered output again
    sys.stderr.flush()
    gc.collect()
    gc.freeze()  # the children share the start-up objects instead of copying them
    receivers: list[multiprocessing.connection.Connection] = []
    children = []
    for index in range(processes):
        receiver, sender = context.Pipe(duplex=False)
        child = context.Process(
            target=_shard_main,
            args=(run_shard, replace(options, shard=(index, processes)), sender),
            name=f"payment-worker-replay-{index}",
        )
        child.start()
        sender.close()
        receivers.append(receiver)
        children.append(child)
    collected = False
    try:
        results, errors = _collect(receivers, processes, progress)
        collected = True
    finally:
        for child in children:
            if not collected and child.is_alive():
                child.terminate()  # interrupted (Ctrl-C): the shards stop too
            child.join()
    lost = len(children) - len(results) - len(errors)
    if lost:
        errors.append(f"{lost} replay process(es) ended without a result")
    if errors:
        raise ReplayError("; ".join(dict.fromkeys(errors)))
    return merge_summaries(results)


def _collect(
    receivers: list[multiprocessing.connection.Connection], processes: int, progress: Any
) -> tuple[list[tuple[ReplaySummary, float]], list[str]]:
    """The shards' messages until every pipe is closed: progress, then a result or an error."""
    totals: list[int] = []
    early = [0, 0, 0]  # progress reported before every shard gave its total
    results: list[tuple[ReplaySummary, float]] = []
    errors: list[str] = []
    waiting = set(receivers)
    while waiting:
        for conn in multiprocessing.connection.wait(list(waiting)):
            assert isinstance(conn, multiprocessing.connection.Connection)
            try:
                kind, value = conn.recv()
            except EOFError:
                waiting.discard(conn)
                continue
            if kind == "total":
                totals.append(value)
                if len(totals) == processes:
                    progress.start(sum(totals))
                    if early[0]:
                        progress.advance(*early)
            elif kind == "advance":
                if len(totals) == processes:
                    progress.advance(*value)
                else:
                    early = [a + b for a, b in zip(early, value, strict=True)]
            elif kind == "done":
                results.append(value)
            elif kind == "error":
                errors.append(value)
    return results, errors


def merge_summaries(results: list[tuple[ReplaySummary, float]]) -> ReplaySummary:
    """The shards' summaries added up; (summary, wall-clock end) each."""
    merged = ReplaySummary()
    for summary, _ in results:
        merged.read += summary.read
        merged.kinds.update(summary.kinds)
        merged.outcomes.update(summary.outcomes)
        merged.dead_letters += summary.dead_letters
        merged.republished_events += summary.republished_events
    if results:
        first_start = min(end - summary.seconds for summary, end in results)
        merged.seconds = max(end for _, end in results) - first_start
    return merged


def print_summary(summary: ReplaySummary, options: ReplayOptions, processes: int = 1) -> None:
    from rich.console import Console
    from rich.table import Table

    title = (
        f"replay of {options.topic}"
        + (f" ({processes} processes)" if processes > 1 else "")
        + (" (dry run: nothing written)" if options.dry_run else "")
    )
    table = Table(title=title)
    table.add_column("what")
    table.add_column("count", justify="right")
    for name, value in summary.rows():
        table.add_row(name, value)
    Console().print(table)
