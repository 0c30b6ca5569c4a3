"""The producer model every producer of ours shares (produce_waiting, a thread serving
delivery reports, the fatal-error flag) and the outbox relay's producer."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import structlog
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from payment_worker.adapters.kafka.config import PRODUCER_DEFAULTS, for_producer, kafka_error
from payment_worker.service.ports import DeliveryFailure, StoredMessage

log = structlog.get_logger("payment_worker.kafka")


def produce_waiting(producer: Producer, topic: str, kwargs: dict[str, Any]) -> None:
    """produce(), waiting out a full local queue (BufferError) by serving delivery reports;
    a KafkaException (refused at once) is the caller's."""
    while True:
        try:
            producer.produce(topic, **kwargs)
            return
        except BufferError:
            producer.poll(0.05)


def on_client_error(fatal: threading.Event) -> Callable[[KafkaError], None]:
    """A producer's error_cb: logs librdkafka's client errors and raises `fatal` on a fatal
    one, for the owner to replace the producer (an idempotent one cannot recover by itself)."""

    def report(error: KafkaError) -> None:
        if error.fatal():
            fatal.set()
        log.warning("producer_error", error=str(error), fatal=error.fatal())

    return report


def breaks_producer(error: KafkaError) -> bool:
    """A delivery error after which the producer must be replaced (fatal, or fenced)."""
    return bool(error.fatal()) or error.code() == KafkaError.PRODUCER_FENCED


class ReportPoller:
    """A thread serving a producer's delivery reports while its owner does other work. It
    polls whatever `current` returns at each turn, so a producer replaced after a fatal error
    is served from then on."""

    def __init__(self, current: Callable[[], Producer | None], name: str) -> None:
        self._current = current
        self._name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            producer = self._current()
            assert producer is not None
            producer.poll(0.05)

    def stop(self) -> None:
        """Stops polling; the owner flushes first, so the last reports are served."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)


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


def _failure(stored: StoredMessage, error: KafkaError | None, text: str) -> DeliveryFailure:
    broker_wide = error is not None and error.code() in _BROKER_WIDE
    message = stored.message
    return DeliveryFailure(stored.id, text, broker_wide, message.topic, message.partition)


# A row handed to this producer is its relay's until the delivery report must have come (the
# message timeout, and a margin): a relay that died leaves its rows to the others that long, so
# the timeout is kept short. A delivery that times out is only tried again (an outage counts
# against no row), so a short timeout loses nothing.
OUTBOX_PRODUCER_DEFAULTS: dict[str, Any] = {"message.timeout.ms": 10_000}


class OutboxProducer:
    """The relay's idempotent producer. Delivery reports arrive on a polling thread and are
    collected for the relay to mark sent or failed."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = {**PRODUCER_DEFAULTS, **OUTBOX_PRODUCER_DEFAULTS, **for_producer(config)}
        self._producer: Producer | None = None
        self._delivered: deque[int] = deque()
        self._failed: deque[DeliveryFailure] = deque()
        self._fatal = threading.Event()
        self._poller = ReportPoller(lambda: self._producer, name="kafka-producer")
        self.in_flight: set[int] = set()
        self._lock = threading.Lock()
        self.wakeup: Callable[[], None] | None = None

    def open(self) -> None:
        self._producer = self._new_producer()
        self._poller.start()

    def _new_producer(self) -> Producer:
        return Producer({**self.config, "error_cb": on_client_error(self._fatal)})

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

    def _on_delivery(self, stored: StoredMessage) -> Callable[[KafkaError | None, Message], None]:
        row_id = stored.id

        def report(error: KafkaError | None, _message: Message) -> None:
            with self._lock:
                self.in_flight.discard(row_id)
            if error is None:
                self._delivered.append(row_id)
            else:
                if breaks_producer(error):
                    self._fatal.set()
                self._failed.append(_failure(stored, error, str(error)))
            if self.wakeup is not None:
                self.wakeup()

        return report

    def produce(self, stored: StoredMessage) -> bool:
        """Hand a row to librdkafka; False when its queue is full (the caller tries again
        later: this runs on the event loop, which must not wait here for room)."""
        assert self._producer is not None
        message = stored.message
        kwargs: dict[str, Any] = {
            "key": message.key,
            "value": message.value,
            "headers": message.headers,
            "on_delivery": self._on_delivery(stored),
        }
        if message.partition is not None:
            kwargs["partition"] = message.partition
        with self._lock:
            self.in_flight.add(stored.id)
        try:
            self._producer.produce(message.topic, **kwargs)
        except BufferError:
            with self._lock:
                self.in_flight.discard(stored.id)
            return False
        except KafkaException as exc:  # refused at once: unknown partition, too large...
            with self._lock:
                self.in_flight.discard(stored.id)
            self._failed.append(_failure(stored, kafka_error(exc), str(exc)))
            if self.wakeup is not None:
                self.wakeup()
        return True

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
        self._poller.stop()
        return left
