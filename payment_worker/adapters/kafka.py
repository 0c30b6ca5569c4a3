"""confluent-kafka clients: a consumer driven from one thread, and the outbox relay's producer."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from payment_worker.exceptions import InfrastructureUnavailable
from payment_worker.logs import LIBRDKAFKA
from payment_worker.service.ports import InboundRecord, OutboxMessage, StoredMessage

log = structlog.get_logger("payment_worker.kafka")

# Consumers: no auto commit (offsets are committed after the database), no auto offset store,
# a short queue backoff so a draining consumer does not stall.
CONSUMER_DEFAULTS: dict[str, Any] = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "auto.offset.reset": "earliest",
    "fetch.queue.backoff.ms": 10,
    "session.timeout.ms": 10000,
    "heartbeat.interval.ms": 1000,
}
PRODUCER_DEFAULTS: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
    "message.timeout.ms": 30000,
}


_CONSUMER_ONLY = (
    "group.",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "auto.offset.reset",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "fetch.",
    "max.poll.interval.ms",
    "partition.assignment.strategy",
    "isolation.level",
    "auto.commit.interval.ms",
    "queued.",
    "check.crcs",
    "enable.partition.eof",
)


def for_producer(config: dict[str, Any]) -> dict[str, Any]:
    """PAYMENT_KAFKA_CONFIG applies to every client; a producer skips the consumer-only keys
    (librdkafka would warn about each). Every client of ours is configured through here or
    for_consumer: both hand librdkafka's lines to the `librdkafka` logger (logs.py)."""
    return {
        "logger": LIBRDKAFKA,
        **{k: v for k, v in config.items() if not k.startswith(_CONSUMER_ONLY)},
    }


_PRODUCER_ONLY = (
    "linger.ms",
    "queue.buffering.",
    "batch.num.messages",
    "batch.size",
    "acks",
    "request.required.acks",
    "enable.idempotence",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "compression.",
    "retries",
    "message.send.max.retries",
    "transactional.",
    "partitioner",
    "sticky.partitioning.linger.ms",
    "enable.gapless.guarantee",
)


def for_consumer(config: dict[str, Any]) -> dict[str, Any]:
    """PAYMENT_KAFKA_CONFIG without the producer-only keys (librdkafka would warn)."""
    return {
        "logger": LIBRDKAFKA,
        **{k: v for k, v in config.items() if not k.startswith(_PRODUCER_ONLY)},
    }


def produce_waiting(producer: Producer, topic: str, kwargs: dict[str, Any]) -> None:
    """produce(), waiting out a full local queue (BufferError) by serving delivery reports;
    a KafkaException (refused at once) is the caller's."""
    while True:
        try:
            producer.produce(topic, **kwargs)
            return
        except BufferError:
            producer.poll(0.05)


class BrokerUnavailable(InfrastructureUnavailable):
    """The broker could not be reached or refused the request."""


def ready_messages(consumer: Consumer, max_messages: int, timeout_s: float) -> list[Message]:
    """Up to `max_messages`, returned as soon as one is there (plus what is already fetched).

    consume(n, timeout) would hold the first message until n arrive or the timeout passes,
    adding up to `timeout_s` of latency to every record at low rates.
    """
    first = consumer.poll(timeout_s)
    if first is None:
        return []
    return [first, *consumer.consume(max_messages - 1, 0)] if max_messages > 1 else [first]


def _header_bytes(value: str | bytes | None) -> bytes | None:
    if value is None:
        return None  # a header without a value stays one (dead letters keep headers as sent)
    return value.encode() if isinstance(value, str) else value


def to_record(message: Message) -> InboundRecord:
    timestamp = message.timestamp()
    return InboundRecord(
        topic=message.topic() or "",
        partition=message.partition() or 0,
        offset=message.offset() or 0,
        key=message.key(),
        value=message.value(),
        headers=[(str(h[0]), _header_bytes(h[1])) for h in (message.headers() or [])],
        timestamp_ms=timestamp[1] if timestamp and timestamp[0] else None,
    )


RevokeHandler = Callable[[list[tuple[str, int]]], Coroutine[Any, Any, dict[tuple[str, int], int]]]
AssignHandler = Callable[[list[tuple[str, int]]], None]


class ThreadedConsumer:
    """A group consumer whose every call runs on one dedicated thread.

    Rebalance callbacks run on that thread inside consume(); a revocation waits (through the
    event loop) for the revoked partitions' in-flight records and commits them first.
    """

    def __init__(
        self,
        config: dict[str, Any],
        topics: list[str],
        *,
        on_assign: AssignHandler,
        on_revoke: RevokeHandler,
    ) -> None:
        self.config = {**CONSUMER_DEFAULTS, **for_consumer(config)}
        self.topics = topics
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kafka-consumer")
        self._consumer: Consumer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._paused = False

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        assert self._loop is not None
        return await self._loop.run_in_executor(self._executor, fn, *args)

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._call(self._open)

    def _open(self) -> None:
        self._consumer = Consumer(self.config)
        self._consumer.subscribe(
            self.topics, on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._revoked
        )

    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(p.topic, p.partition) for p in partitions]
        log.info("partitions_assigned", partitions=[f"{t}[{p}]" for t, p in keys])
        self._on_assign(keys)
        if self._paused and partitions:
            consumer.pause(partitions)

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(p.topic, p.partition) for p in partitions]
        log.info("partitions_revoked", partitions=[f"{t}[{p}]" for t, p in keys])
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(self._on_revoke(keys), self._loop)
        try:
            offsets = future.result(timeout=120)
        except Exception as exc:
            log.error("revoke_drain_failed", error=str(exc))
            return
        if offsets:
            try:
                consumer.commit(
                    offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                    asynchronous=False,
                )
            except KafkaException as exc:
                log.warning("revoke_commit_failed", error=str(exc))

    async def consume(self, max_messages: int, timeout_s: float) -> list[InboundRecord]:
        return await self._call(self._consume, max_messages, timeout_s)  # type: ignore[no-any-return]

    def _consume(self, max_messages: int, timeout_s: float) -> list[InboundRecord]:
        assert self._consumer is not None
        records = []
        for message in ready_messages(self._consumer, max_messages, timeout_s):
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer_error", error=str(error))
                continue
            records.append(to_record(message))
        return records

    async def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        if offsets:
            await self._call(self._commit, offsets)

    def _commit(self, offsets: dict[tuple[str, int], int]) -> None:
        assert self._consumer is not None
        try:
            self._consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                asynchronous=False,
            )
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() == KafkaError._NO_OFFSET:
                return
            raise BrokerUnavailable(f"offset commit failed: {exc}") from exc

    async def set_paused(self, paused: bool) -> None:
        if paused != self._paused:
            self._paused = paused
            await self._call(self._set_paused, paused)

    def _set_paused(self, paused: bool) -> None:
        assert self._consumer is not None
        assignment = self._consumer.assignment()
        if assignment:
            (self._consumer.pause if paused else self._consumer.resume)(assignment)

    async def close(self) -> None:
        if self._consumer is not None:
            await self._call(self._consumer.close)
            self._consumer = None
        self._executor.shutdown(wait=True)


# Delivery failures that say nothing about the record itself: the broker (or the way to it)
# was unavailable. They are retried without counting towards parking the row.
_BROKER_WIDE = frozenset(
    {
        KafkaError._MSG_TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TIMED_OUT,
        KafkaError._PURGE_QUEUE,
        KafkaError._PURGE_INFLIGHT,
        KafkaError._FATAL,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NOT_ENOUGH_REPLICAS,
        KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.PRODUCER_FENCED,
    }
)


@dataclass(frozen=True, slots=True)
class DeliveryFailure:
    """An outbox row the broker did not take: why, and whether it said anything about the row
    (`broker_wide`: the broker was unavailable; the row itself may be fine)."""

    row_id: int
    error: str
    broker_wide: bool


def _failure(row_id: int, error: KafkaError | None, text: str) -> DeliveryFailure:
    return DeliveryFailure(row_id, text, error is not None and error.code() in _BROKER_WIDE)


class OutboxProducer:
    """The relay's idempotent producer. Delivery reports arrive on a polling thread and are
    collected for the relay to mark sent or failed."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = {**PRODUCER_DEFAULTS, **for_producer(config)}
        self._producer: Producer | None = None
        self._delivered: deque[int] = deque()
        self._failed: deque[DeliveryFailure] = deque()
        self._stop = threading.Event()
        self._fatal = threading.Event()
        self._thread: threading.Thread | None = None
        self.in_flight: set[int] = set()
        self._lock = threading.Lock()
        self.wakeup: Callable[[], None] | None = None

    def open(self) -> None:
        self._producer = self._new_producer()
        self._thread = threading.Thread(target=self._poll, name="kafka-producer", daemon=True)
        self._thread.start()

    def _new_producer(self) -> Producer:
        return Producer({**self.config, "error_cb": self._on_error})

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self._fatal.set()
        log.warning("producer_error", error=str(error), fatal=error.fatal())

    def reset_if_fatal(self) -> bool:
        """Replace a producer that hit a fatal error (fenced, out of sequence): an idempotent
        producer cannot recover by itself. Its undelivered rows stay unsent for the sweeper."""
        if not self._fatal.is_set():
            return False
        old = self._producer
        self._producer = self._new_producer()
        self._fatal.clear()
        if old is not None:
            old.purge(in_queue=True, in_flight=True, blocking=False)
            old.poll(0)
        with self._lock:
            self.in_flight.clear()
        log.warning("producer_recreated", detail="after a fatal error")
        return True

    def _poll(self) -> None:
        while not self._stop.is_set():
            producer = self._producer
            assert producer is not None
            producer.poll(0.05)

    def _on_delivery(self, row_id: int) -> Callable[[KafkaError | None, Message], None]:
        def report(error: KafkaError | None, _message: Message) -> None:
            with self._lock:
                self.in_flight.discard(row_id)
            if error is None:
                self._delivered.append(row_id)
            else:
                if error.fatal() or error.code() == KafkaError.PRODUCER_FENCED:
                    self._fatal.set()
                self._failed.append(_failure(row_id, error, str(error)))
            if self.wakeup is not None:
                self.wakeup()

        return report

    def produce(self, stored: StoredMessage) -> None:
        assert self._producer is not None
        message = stored.message
        kwargs: dict[str, Any] = {
            "key": message.key,
            "value": message.value,
            "headers": message.headers,
            "on_delivery": self._on_delivery(stored.id),
        }
        if message.partition is not None:
            kwargs["partition"] = message.partition
        with self._lock:
            self.in_flight.add(stored.id)
        try:
            produce_waiting(self._producer, message.topic, kwargs)
        except KafkaException as exc:  # refused at once: unknown partition, too large...
            with self._lock:
                self.in_flight.discard(stored.id)
            error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            self._failed.append(_failure(stored.id, error, str(exc)))
            if self.wakeup is not None:
                self.wakeup()

    def take_reports(self) -> tuple[list[int], list[DeliveryFailure]]:
        delivered = [self._delivered.popleft() for _ in range(len(self._delivered))]
        failed = [self._failed.popleft() for _ in range(len(self._failed))]
        return delivered, failed

    def flush(self, timeout_s: float) -> int:
        assert self._producer is not None
        return int(self._producer.flush(timeout_s))

    def close(self, timeout_s: float = 10.0) -> int:
        left = 0
        if self._producer is not None:
            left = self.flush(timeout_s)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        return left


# DirectProducer's own defaults (PAYMENT_KAFKA_CONFIG still overrides them). What it sends are
# answers again (replay's, marked duplicate): a copy written twice by a retried request
# changes nothing for a caller that matches replies by correlation id, so it needs no
# idempotent producer; one request in flight per connection keeps the answers in order. On
# Tansu, two idempotent producers at once (replay's two processes) held the answers back by
# 0.1-0.3 s per 20,000 records: replay ran at 17,700-18,700 records/s against 20,600-23,400
# without idempotence (three runs each, on 2026-11-29).
DIRECT_PRODUCER_DEFAULTS: dict[str, Any] = {
    "enable.idempotence": False,
    "max.in.flight.requests.per.connection": 1,
    "acks": "all",
}


class DirectProducer:
    """Messages that need no outbox (replay's answers from the ledger): produced straight away,
    with delivery reports for failures only (no Python call per delivered message). A failed
    delivery is produced again, up to `attempts` times; `drain` says how many never made it."""

    def __init__(self, config: dict[str, Any], attempts: int = 5) -> None:
        self.config = {
            **PRODUCER_DEFAULTS,
            **DIRECT_PRODUCER_DEFAULTS,
            **for_producer(config),
            "delivery.report.only.error": True,
        }
        self.attempts = attempts
        self.undeliverable = 0
        self.retried = 0
        self._retry: deque[tuple[Message, int]] = deque()
        self._fatal = threading.Event()
        self._producer: Producer | None = None

    def open(self) -> None:
        self._producer = self._new_producer()

    def _new_producer(self) -> Producer:
        return Producer({**self.config, "error_cb": self._on_error, "on_delivery": self._failed(1)})

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self._fatal.set()
        log.warning("producer_error", error=str(error), fatal=error.fatal())

    def _failed(self, attempt: int) -> Callable[[KafkaError | None, Message], None]:
        def report(error: KafkaError | None, message: Message) -> None:
            if error is None:
                return
            if error.fatal() or error.code() == KafkaError.PRODUCER_FENCED:
                self._fatal.set()
            if attempt >= self.attempts:
                self.undeliverable += 1
                log.error("message_undeliverable", topic=message.topic(), error=str(error))
            else:
                self.retried += 1
                self._retry.append((message, attempt + 1))

        return report

    def _produce(self, topic: str, kwargs: dict[str, Any]) -> None:
        while True:
            assert self._producer is not None
            try:
                produce_waiting(self._producer, topic, kwargs)
                return
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if isinstance(error, KafkaError) and error.fatal():
                    self._recreate()  # then produce again on the new producer
                    continue
                # Refused at once (unknown partition, too large): retrying will not help.
                self.undeliverable += 1
                log.error("message_undeliverable", topic=topic, error=str(exc))
                return

    def send(self, messages: list[OutboxMessage]) -> None:
        for message in messages:
            kwargs: dict[str, Any] = {
                "key": message.key,
                "value": message.value,
                "headers": message.headers,
            }
            if message.partition is not None:
                kwargs["partition"] = message.partition
            self._produce(message.topic, kwargs)
        self.poll()

    def poll(self) -> None:
        """Serve delivery reports; produce failed messages again (on a new producer after a
        fatal error: an idempotent producer cannot recover by itself)."""
        assert self._producer is not None
        self._producer.poll(0)
        if self._fatal.is_set():
            self._recreate()
        while self._retry:
            message, attempt = self._retry.popleft()
            kwargs: dict[str, Any] = {
                "key": message.key(),
                "value": message.value(),
                "headers": message.headers() or [],
                "on_delivery": self._failed(attempt),
            }
            partition = message.partition()
            if partition is not None and partition >= 0:  # else: not yet chosen by the key
                kwargs["partition"] = partition
            self._produce(message.topic() or "", kwargs)

    def _recreate(self) -> None:
        """Replace a producer that hit a fatal error (an idempotent producer cannot recover by
        itself). What it still held is purged and reported failed, hence produced again."""
        old = self._producer
        assert old is not None
        self._producer = self._new_producer()
        self._fatal.clear()
        old.purge(in_queue=True, in_flight=True, blocking=True)
        deadline = time.monotonic() + 5.0
        while len(old) > 0 and time.monotonic() < deadline:
            old.poll(0.1)  # serves the purged messages' reports: they go to the retry queue
        log.warning("producer_recreated", detail="after a fatal error")

    def drain(self, timeout_s: float = 60.0) -> int:
        """Wait until everything sent is delivered or undeliverable; returns how many are not
        delivered (undeliverable, or still queued at the deadline)."""
        assert self._producer is not None
        deadline = time.monotonic() + timeout_s
        left = len(self._producer)
        while time.monotonic() < deadline:
            self._producer.flush(min(1.0, max(0.0, deadline - time.monotonic())))
            self.poll()  # failures reported by the flush are produced again here
            left = len(self._producer)
            if left == 0:
                break
        return self.undeliverable + left

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(5)
            self._producer = None


def ensure_topics(
    bootstrap: dict[str, Any],
    topics: dict[str, int],
    timeout_s: float = 10.0,
    replication_factor: int = 1,
) -> list[str]:
    """Create the topics that do not exist yet (name -> partitions); returns those created.
    A replication factor of -1 is the broker's `default.replication.factor`."""
    admin = AdminClient(for_producer(bootstrap))
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    missing = [
        NewTopic(name, num_partitions=n, replication_factor=replication_factor)
        for name, n in topics.items()
        if name not in existing
    ]
    created = []
    if missing:
        for name, future in admin.create_topics(missing, operation_timeout=timeout_s).items():
            try:
                future.result(timeout=timeout_s)
                created.append(name)
            except KafkaException as exc:
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise BrokerUnavailable(f"cannot create topic {name}: {exc}") from exc
    return created


class TopicDirectory:
    """TopicDirectoryPort over the cluster's metadata, cached. Always the whole cluster's, never
    a request for one topic: a broker that creates topics on demand (Tansu; Apache Kafka with
    auto.create.topics.enable) would create the topic a hostile header names. A stale cache
    still answers while a refresh runs behind it; a miss waits for a refresh, at most one per
    `min_refresh_s`, so an attacker's unknown topics cost one metadata request a second."""

    def __init__(
        self,
        config: dict[str, Any],
        *,
        max_age_s: float = 30.0,
        min_refresh_s: float = 1.0,
        timeout_s: float = 5.0,
    ) -> None:
        self.config = for_producer(config)
        self.max_age_s = max_age_s
        self.min_refresh_s = min_refresh_s
        self.timeout_s = timeout_s
        self._admin: AdminClient | None = None
        self._partitions: dict[str, int] = {}
        self._fetched_at: float | None = None
        self._attempted_at = -1e18
        self._refresh: asyncio.Future[None] | None = None

    def _fetch(self) -> dict[str, int]:
        if self._admin is None:
            self._admin = AdminClient(self.config)
        try:
            metadata = self._admin.list_topics(timeout=self.timeout_s)
        except KafkaException as exc:
            raise BrokerUnavailable(f"cannot read the cluster's topics: {exc}") from exc
        finally:
            self._admin.poll(0)  # hands librdkafka's queued log lines to the logger
        return {
            name: len(topic.partitions)
            for name, topic in metadata.topics.items()
            if topic.error is None and topic.partitions
        }

    async def _refreshed(self) -> None:
        if self._refresh is None or self._refresh.done():
            self._attempted_at = time.monotonic()
            self._refresh = asyncio.ensure_future(self._do_refresh())
        await asyncio.shield(self._refresh)

    async def _do_refresh(self) -> None:
        self._partitions = await asyncio.to_thread(self._fetch)
        self._fetched_at = time.monotonic()

    async def partitions(self, topic: str) -> int | None:
        now = time.monotonic()
        if self._fetched_at is None:
            await self._refreshed()
        elif now - self._fetched_at > self.max_age_s and (
            self._refresh is None or self._refresh.done()
        ):
            refresh = asyncio.ensure_future(self._refreshed())
            refresh.add_done_callback(_consume_error)
        count = self._partitions.get(topic)
        if count is None and now - self._attempted_at >= self.min_refresh_s:
            await self._refreshed()
            count = self._partitions.get(topic)
        return count


def _consume_error(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("topic_metadata_refresh_failed", error=str(future.exception()))


def broker_problem(config: dict[str, Any], timeout_s: float = 3.0) -> str | None:
    """Why the cluster's metadata cannot be read (None: it can)."""
    try:
        AdminClient(for_producer(config)).list_topics(timeout=timeout_s)
    except KafkaException as exc:
        return kafka_text(exc)
    return None


def kafka_text(exc: KafkaException) -> str:
    """The message of a KafkaException's KafkaError, without its repr around it."""
    error = exc.args[0] if exc.args else None
    return str(error.str()) if isinstance(error, KafkaError) else str(exc)


def broker_reachable(config: dict[str, Any], timeout_s: float = 3.0) -> bool:
    return broker_problem(config, timeout_s) is None


def topic_partitions(
    config: dict[str, Any], names: list[str], timeout_s: float = 10.0
) -> dict[str, int | None]:
    """Each topic's partition count, None for a topic the cluster does not have."""
    try:
        metadata = AdminClient(for_producer(config)).list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise BrokerUnavailable(kafka_text(exc)) from exc
    found = {
        name: len(topic.partitions)
        for name, topic in metadata.topics.items()
        if topic.error is None and topic.partitions
    }
    return {name: found.get(name) for name in names}
