"""Replay's producer: messages that need no outbox, produced straight away and produced again
in this process when their delivery fails."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import structlog
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from payment_worker.adapters.kafka.config import PRODUCER_DEFAULTS, for_producer, kafka_error
from payment_worker.adapters.kafka.producer import (
    breaks_producer,
    on_client_error,
    produce_waiting,
)
from payment_worker.service.ports import OutboxMessage

log = structlog.get_logger("payment_worker.kafka")


class DirectProducer:
    """Messages that need no outbox (replay's answers from the ledger): produced straight away,
    with delivery reports for failures only (no Python call per delivered message). A failed
    delivery is produced again, up to `attempts` times; `drain` says how many never made it.

    It has no polling thread: the reports are failures only, and each is acted on (produced
    again) by the caller's next send, poll or drain, so one thread alone calls the producer."""

    def __init__(self, config: dict[str, Any], attempts: int = 5) -> None:
        self.config = {
            **PRODUCER_DEFAULTS,
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
        return Producer(
            {
                **self.config,
                "error_cb": on_client_error(self._fatal),
                "on_delivery": self._failed(1),
            }
        )

    def _failed(self, attempt: int) -> Callable[[KafkaError | None, Message], None]:
        def report(error: KafkaError | None, message: Message) -> None:
            if error is None:
                return
            if breaks_producer(error):
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
                error = kafka_error(exc)
                if error is not None and error.fatal():
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
