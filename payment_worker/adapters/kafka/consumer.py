"""The worker's group consumer (every call on one thread of its own) and the reading helpers
every consumer of ours uses."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from payment_worker.adapters.kafka.config import (
    BrokerUnavailable,
    consumer_defaults,
    for_consumer,
    incremental_rebalances,
    kafka_error,
)
from payment_worker.adapters.kafka.raw import RawHeaders, message_headers
from payment_worker.domain.ids import token_hex
from payment_worker.service.ports import AssignHandler, InboundRecord, RevokeHandler

log = structlog.get_logger("payment_worker.kafka")


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


# A header name that is not UTF-8 is carried under this prefix, in hex: dead letters are
# written with `str` names, and the bytes of the name are kept whole (contract section 2).
HEX_NAME_PREFIX = "dlq-name-hex:"


def readable_headers(raw: RawHeaders) -> list[tuple[str, bytes | None]]:
    """Raw headers with `str` names: a UTF-8 name as it is, any other in hex."""
    return _readable(raw)[0]


def _readable(raw: RawHeaders) -> tuple[list[tuple[str, bytes | None]], bool]:
    """readable_headers(), and whether every name was UTF-8."""
    out: list[tuple[str, bytes | None]] = []
    all_utf8 = True
    for name, value in raw:
        try:
            out.append((name.decode("utf-8"), value))
        except UnicodeDecodeError:
            out.append((HEX_NAME_PREFIX + name.hex(), value))
            all_utf8 = False
    return out, all_utf8


def to_record(message: Message) -> InboundRecord:
    """The record as the pipeline takes it; never raises. Headers are read as bytes from
    librdkafka (`raw.message_headers`), so a name that is not UTF-8 never reaches
    confluent-kafka's conversion, which raises or crashes on one: such a record comes back
    `unreadable`, every header kept (names that are not UTF-8 in hex)."""
    topic, partition, offset = message.topic() or "", message.partition() or 0, message.offset()
    timestamp = message.timestamp()
    unreadable: str | None = None
    try:
        key, value = message.key(), message.value()
    except Exception as exc:  # no record's bytes may stop a consumer
        key = value = None
        unreadable = f"key or value unreadable ({type(exc).__name__})"
    raw = message_headers(message)
    if raw is not None:
        headers, all_utf8 = _readable(raw)
        if not all_utf8:
            unreadable = "header names not UTF-8"
    else:
        try:  # the library's own conversion: only where the bytes could not be read first
            headers = [(str(h[0]), _header_bytes(h[1])) for h in (message.headers() or [])]
        except Exception as exc:  # SystemError from confluent-kafka for a name not UTF-8
            headers = []
            unreadable = f"header names not UTF-8 ({type(exc).__name__}); headers not kept"
    return InboundRecord(
        topic=topic,
        partition=partition,
        offset=offset or 0,
        key=key if isinstance(key, bytes | None) else _header_bytes(key),
        value=value if isinstance(value, bytes | None) else _header_bytes(value),
        headers=headers,
        timestamp_ms=timestamp[1] if timestamp and timestamp[0] else None,
        read_at=time.monotonic(),
        unreadable=unreadable,
    )


_Call = tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], Callable[..., Any], tuple[Any, ...]]


class OwnThread:
    """Runs calls one at a time, in order, on a thread of its own, for the event loop to await.
    The consumer's polls go through here, one per batch: ~40 µs of CPU per call on this
    machine against ~105 through run_in_executor (a pool's work item and the chaining of its
    future into the loop's), which a shallow queue pays for every record or two."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def call(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """`fn(*args)` on the thread; its result or exception in the future returned."""
        loop = asyncio.get_running_loop()
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
            self._thread.start()
        future: asyncio.Future[Any] = loop.create_future()
        self._calls.put((loop, future, fn, args))
        return future

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            loop, future, fn, args = call
            result: Any = None
            error: BaseException | None = None
            try:
                result = fn(*args)
            except BaseException as exc:  # the caller's to see, as run_in_executor gives it
                error = exc
            try:
                loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:  # the loop is closed: nobody waits for the answer
                pass

    def stop(self) -> None:
        """Ends the thread once the calls already asked for are done."""
        if self._thread is not None:
            self._calls.put(None)
            self._thread.join()
            self._thread = None


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # its waiter was cancelled meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


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
        self.config = {**consumer_defaults(config), **for_consumer(config)}
        self.topics = topics
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._thread = OwnThread("kafka-consumer")
        self._consumer: Consumer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._paused = False
        self._owned: set[tuple[str, int]] = set()
        self._incremental = incremental_rebalances(self.config)

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self._thread.call(fn, *args)

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
        self._owned = set(keys) | (self._owned if self._incremental else set())
        log.info("partitions_assigned", partitions=[f"{t}[{p}]" for t, p in keys])
        self._on_assign(keys)
        if partitions:
            # Both ways: a partition paused before a rebalance keeps librdkafka's pause when it
            # is handed back, and a resume made while the assignment was empty (between the
            # revocation and this call) reached nothing, which left it paused for good.
            (consumer.pause if self._paused else consumer.resume)(partitions)

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(p.topic, p.partition) for p in partitions]
        self._owned.difference_update(keys)
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
            # A rebalance can run inside ready_messages after its first record was fetched:
            # a record of a partition given up meanwhile is its new owner's, not ours.
            if (message.topic(), message.partition()) not in self._owned:
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
            error = kafka_error(exc)
            if error is not None and error.code() == KafkaError._NO_OFFSET:
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
        self._thread.stop()


def unsubscribed_config(config: dict[str, Any], group: str) -> dict[str, Any]:
    """A consumer that never subscribes (manual assignment, or only asking): it never joins
    `group` and commits nothing."""
    return {
        **consumer_defaults(config),
        **for_consumer(config),
        "group.id": group,
        "enable.auto.commit": False,
    }


def reading_consumer(config: dict[str, Any]) -> Consumer:
    """Replay's consumer: a group id of its own (random), so no live group's offsets are read
    or moved."""
    return Consumer(unsubscribed_config(config, f"payment-worker-replay-{token_hex(6)}"))
