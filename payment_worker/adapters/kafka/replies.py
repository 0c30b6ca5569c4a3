"""The shim's side of request-reply: produce commands, receive the replies meant for this
process on the reply partitions the group gives it, each handed only to the request whose
command it answers."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
from confluent_kafka import (
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from payment_worker import metrics
from payment_worker.adapters.kafka.config import (
    PRODUCER_DEFAULTS,
    consumer_defaults,
    for_consumer,
    for_producer,
    incremental_rebalances,
)
from payment_worker.adapters.kafka.consumer import ready_messages
from payment_worker.adapters.kafka.producer import ReportPoller

log = structlog.get_logger("payment_worker.reply_listener")


class ReplyListener:
    """A consumer in the shims' group on the replies topic. Each shim owns the partitions the
    group assigns it and asks the worker (header reply-partition) to answer there, so it never
    reads the partitions of the other shims.

    A reply goes to the request waiting on its correlation id only when it answers that
    request's command (same command id and order id): any producer of the commands topic can
    copy a waiting request's correlation and reply headers onto a command of its own, and its
    reply must not become that caller's answer. Replies nobody waits for, undecodable ones and
    those answering another command are dropped and counted by reason."""

    def __init__(
        self,
        config: dict[str, Any],
        topic: str,
        decode: Callable[[bytes | None], dict[str, Any] | None],
    ) -> None:
        self.config = {
            **consumer_defaults(config),
            "auto.offset.reset": "latest",
            **for_consumer(config),
            "enable.auto.commit": False,
        }
        self._incremental = incremental_rebalances(self.config)
        self._next: dict[int, int] = {}  # the next offset to read, per partition once owned
        self.topic = topic
        self.decode = decode
        self.partitions: list[int] = []
        self._reply_partition: int | None = None
        self._waiting: dict[str, _Waiter] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.dropped = 0
        self.errors = 0  # rounds that failed and were listened again
        self.missing_topic = False  # the broker says the replies topic does not exist

    @property
    def not_ready_reason(self) -> str:
        if self.missing_topic:
            return (
                f"waiting for reply partitions: topic {self.topic} does not exist"
                " (create it with `payment-worker topics`)"
            )
        return "waiting for reply partitions"

    @property
    def ready(self) -> bool:
        return bool(self.partitions)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="reply-listener", daemon=True)
        self._thread.start()

    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # A partition new to this shim starts at its end, resolved now: a reply produced right
        # after the shim reports ready must not fall before a lazily resolved "latest"
        # position. One it had before (a rebalance took it away and gave it back) resumes where
        # it stopped: requests may still wait for the replies written meanwhile.
        positioned = []
        for tp in partitions:
            start = self._next.get(tp.partition)
            if start is None:
                start = _end_offset(consumer, tp)
            if start >= 0:
                self._next[tp.partition] = start
            positioned.append(TopicPartition(tp.topic, tp.partition, start))
        # An incremental rebalance (cooperative-sticky, or group.protocol=consumer) hands over
        # only the partitions added; an eager one, the whole new assignment.
        if self._incremental:
            consumer.incremental_assign(positioned)
            owned = set(self.partitions) | {p.partition for p in partitions}
        else:
            consumer.assign(positioned)
            owned = {p.partition for p in partitions}
        self.missing_topic = False
        self._own(owned)
        log.info("reply_partitions_assigned", topic=self.topic, partitions=self.partitions)

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._incremental:
            consumer.incremental_unassign(partitions)
            self._own(set(self.partitions) - {p.partition for p in partitions})
        else:
            consumer.unassign()
            self._own(set())
        log.info("reply_partitions_revoked", topic=self.topic, partitions=self.partitions)

    def _own(self, partitions: set[int]) -> None:
        self.partitions = sorted(partitions)
        self._reply_partition = self.partitions[0] if self.partitions else None

    def _run(self) -> None:
        consumer = Consumer(self.config)
        consumer.subscribe(
            [self.topic], on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._revoked
        )
        try:
            while not self._stop.is_set():
                try:
                    self._poll(consumer)
                except Exception:
                    # Whatever broke this round, the listener goes on: ending it would leave
                    # every caller waiting for replies nobody reads, the shim still ready.
                    self.errors += 1
                    log.exception("reply_listener_error", detail="listening again in 1 s")
                    self._stop.wait(1.0)
        finally:
            consumer.close()

    def _poll(self, consumer: Consumer) -> None:
        for message in ready_messages(consumer, 500, 0.1):
            error = message.error()
            if error is not None:
                if error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                    if not self.missing_topic:
                        log.warning(
                            "topic_missing",
                            topic=self.topic,
                            variable="PAYMENT_TOPIC_REPLIES",
                            hint="create it with `payment-worker topics`",
                        )
                    self.missing_topic = True
                elif error.code() != KafkaError._PARTITION_EOF:
                    log.warning("reply_consumer_error", error=str(error))
                continue
            self.missing_topic = False
            self._next[message.partition() or 0] = (message.offset() or 0) + 1
            try:
                self._deliver(message.value())
            except Exception:
                # This reply is lost to its caller (who gets a 504, and the same answer from
                # the ledger when it retries with its key); the replies after it are not.
                self._drop("error")
                log.exception("reply_delivery_failed", partition=message.partition())

    def _deliver(self, value: bytes | None) -> None:
        reply = self.decode(value)
        if reply is None:
            self._drop("undecodable")
            return
        correlation = str(reply.get("correlationId", ""))
        waiter = self._waiting.get(correlation)
        if waiter is None or self._loop is None:
            self._drop("unexpected")
            return
        if not waiter.answered_by(reply):
            self._drop("mismatched")
            log.warning(
                "reply_mismatched",
                correlation_id=correlation,
                command_id=waiter.command_id,
                order_id=waiter.order_id,
                reply_command_id=_text(reply.get("commandId")),
                reply_order_id=_text(reply.get("orderId")),
            )
            return
        self._loop.call_soon_threadsafe(_resolve, waiter.future, reply)

    def _drop(self, reason: str) -> None:
        self.dropped += 1
        metrics.SHIM_REPLIES_DROPPED.labels(reason).inc()

    def reply_partition(self) -> int | None:
        """The partition this shim asks the worker to answer on: the lowest one it owns. One
        partition for all its replies, because the worker then produces them as one batch
        instead of one small batch per partition (cheaper for the broker and both clients)."""
        return self._reply_partition

    def expect(
        self, correlation_id: str, command_id: str, order_id: str
    ) -> asyncio.Future[dict[str, Any]]:
        """The future of the reply to command `command_id` for order `order_id`, sent with
        `correlation_id` (which must come from a CSPRNG: it is all a reply is routed by)."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[correlation_id] = _Waiter(future, command_id.lower(), order_id.lower())
        return future

    def forget(self, correlation_id: str) -> None:
        self._waiting.pop(correlation_id, None)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


class _Waiter:
    """A request waiting for the reply to its command."""

    __slots__ = ("command_id", "future", "order_id")

    def __init__(
        self, future: asyncio.Future[dict[str, Any]], command_id: str, order_id: str
    ) -> None:
        self.future = future
        self.command_id = command_id
        self.order_id = order_id

    def answered_by(self, reply: dict[str, Any]) -> bool:
        """The reply answers this command: its command id and order id are ours, and so is
        the order of the payment it carries (fail closed: a missing id is not a match)."""
        if _text(reply.get("commandId")).lower() != self.command_id:
            return False
        if _text(reply.get("orderId")).lower() != self.order_id:
            return False
        payment = reply.get("payment")
        if payment is None:
            return True
        return isinstance(payment, dict) and _text(payment.get("orderId")).lower() == self.order_id


def _text(value: Any) -> str:
    """An id of a decoded reply as text (uuid logical types decode to str or UUID)."""
    return "" if value is None else str(value)


def _resolve(future: asyncio.Future[dict[str, Any]], reply: dict[str, Any]) -> None:
    if not future.done():
        future.set_result(reply)


class CommandProducer:
    """Produces commands and reports their delivery to an awaiting coroutine."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = {**PRODUCER_DEFAULTS, "linger.ms": 1, **for_producer(config)}
        self._producer: Producer | None = None
        self._poller = ReportPoller(lambda: self._producer, name="command-producer")

    def start(self) -> None:
        self._producer = Producer(self.config)
        self._poller.start()

    async def send(
        self,
        topic: str,
        key: bytes,
        value: bytes,
        headers: list[tuple[str, bytes]],
    ) -> None:
        """Returns once the broker has the command; raises KafkaException otherwise."""
        assert self._producer is not None
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def report(error: KafkaError | None, _message: Any) -> None:
            def settle() -> None:
                if done.done():
                    return
                if error is None:
                    done.set_result(None)
                else:
                    done.set_exception(KafkaException(error))

            loop.call_soon_threadsafe(settle)

        # Not produce_waiting: its poll would block the event loop (every request the shim
        # serves) while the queue is full; the poller thread serves the reports meanwhile.
        while True:
            try:
                self._producer.produce(
                    topic, key=key, value=value, headers=list[Any](headers), on_delivery=report
                )
                break
            except BufferError:
                await asyncio.sleep(0.01)
        await done

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._producer is not None:
            self._producer.flush(timeout_s)
        self._poller.stop()


def _end_offset(consumer: Consumer, tp: TopicPartition, tries: int = 10) -> int:
    """Where the partition ends now. A topic created a moment ago may answer "not leader" for
    a while: asked again (up to ~2 s) before falling back to a lazily resolved end, which a
    reply produced meanwhile could fall before."""
    for attempt in range(tries):
        try:
            return int(consumer.get_watermark_offsets(tp, timeout=10)[1])
        except KafkaException as exc:
            if attempt == tries - 1:
                log.warning("reply_offsets_unknown", partition=tp.partition, error=str(exc))
                return OFFSET_END
            time.sleep(0.2)
    return OFFSET_END
