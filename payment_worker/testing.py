"""Helpers for tests, the demo and benchmarks: build and send commands, collect what comes back."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from payment_worker.adapters.avro_codec import AvroCodec, SchemaSet
from payment_worker.adapters.kafka import to_record
from payment_worker.service.messages import Topics


def command_record(**overrides: Any) -> dict[str, Any]:
    """A valid ProcessPayment record (new ids, 10.50 USD) with `overrides` applied."""
    record: dict[str, Any] = {
        "commandId": str(uuid.uuid4()),
        "orderId": str(uuid.uuid4()),
        "customerId": str(uuid.uuid4()),
        "reservationId": None,
        "amount": Decimal("10.50"),
        "currency": "USD",
        "paymentMethod": "credit_card",
        "requestedAt": datetime.now(UTC),
    }
    record.update(overrides)
    return record


def reply_payment(**overrides: Any) -> dict[str, Any]:
    """A succeeded payment as PaymentReply.payment carries it (text ids, timestamp-micros),
    new ids, 25.00 USD, with `overrides` applied."""
    record: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "orderId": str(uuid.uuid4()),
        "customerId": str(uuid.uuid4()),
        "reservationId": None,
        "amount": Decimal("25.00"),
        "currency": "USD",
        "paymentMethod": "credit_card",
        "status": "succeeded",
        "errorCode": None,
        "errorMessage": None,
        "failureReason": None,
        "transactionId": "txn_0123456789abcdef",
        "createdAt": 1_795_315_920_882_377,
        "processedAt": 1_795_315_921_388_378,
        "isSimulated": True,
        "simulatedResponse": "Success - TransactionId: txn_0123456789abcdef",
    }
    record.update(overrides)
    return record


@dataclass
class Received:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes | None]
    record: dict[str, Any] | None
    timestamp_ms: int = 0
    header_list: list[tuple[str, bytes | None]] = field(default_factory=list)


class KafkaHarness:
    """Produces commands (each flushed at once, or batched with flush=False and one flush())
    and reads topics back from the beginning."""

    def __init__(
        self,
        bootstrap: str,
        topics: Topics,
        codec: AvroCodec | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.codec = codec or AvroCodec(SchemaSet())
        self.extra = extra or {}
        self.producer = Producer({"bootstrap.servers": bootstrap, **self.extra})

    def send(
        self,
        record: dict[str, Any] | None = None,
        *,
        value: bytes | None = None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
        topic: str | None = None,
        flush: bool = True,
    ) -> dict[str, Any] | None:
        if record is not None and value is None:
            value = self.codec.encode("ProcessPayment", record, self.topics.commands)
        if key is None and record is not None:
            key = str(record["orderId"]).encode()
        kwargs: dict[str, Any] = {"key": key, "value": value, "headers": headers or []}
        if partition is not None:
            kwargs["partition"] = partition
        self.producer.produce(topic or self.topics.commands, **kwargs)
        if flush:
            self.producer.flush(10)
        return record

    def flush(self) -> None:
        self.producer.flush(30)

    def read(
        self,
        topic: str,
        *,
        expect: int | None = None,
        timeout_s: float = 30.0,
        idle_s: float = 1.5,
        decode: str | None = None,
        where: Callable[[Received], bool] | None = None,
    ) -> list[Received]:
        """Every record of `topic` from the start (only those `where` holds for, when given):
        until `expect` are in (then `idle_s` more, to catch extras) or, without `expect`, until
        nothing new came for `idle_s`."""
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"reader-{uuid.uuid4()}",
                "enable.auto.commit": False,
                "fetch.queue.backoff.ms": 10,
                **self.extra,
            }
        )
        try:
            metadata = consumer.list_topics(topic, timeout=10)
            partitions = metadata.topics[topic].partitions if topic in metadata.topics else {}
            consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
            out: list[Received] = []
            deadline = time.monotonic() + timeout_s
            last_new = time.monotonic()
            while time.monotonic() < deadline:
                for message in consumer.consume(500, 0.2):
                    if message.error():
                        continue
                    record = None
                    if decode is not None:
                        try:
                            record = self.codec.decode(decode, message.value())
                        except Exception:
                            record = None
                    headers = to_record(message).headers
                    received = Received(
                        message.topic() or "",
                        message.partition() or 0,
                        message.offset() or 0,
                        message.key(),
                        message.value(),
                        dict(headers),
                        record,
                        message.timestamp()[1],
                        headers,
                    )
                    if where is not None and not where(received):
                        continue
                    out.append(received)
                    last_new = time.monotonic()
                waited = time.monotonic() - last_new
                if expect is not None and len(out) >= expect and waited >= min(idle_s, 0.5):
                    break
                if expect is None and waited >= idle_s:
                    break
            return out
        finally:
            consumer.close()

    def committed(self, group: str, topic: str) -> dict[int, int]:
        """The offsets `group` has committed on each partition of `topic` (-1001: none)."""
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": group, **self.extra})
        try:
            partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            found = consumer.committed([TopicPartition(topic, p) for p in partitions], 10)
            return {tp.partition: tp.offset for tp in found}
        finally:
            consumer.close()

    def replies(
        self,
        expect: int | None = None,
        timeout_s: float = 60.0,
        topic: str | None = None,
        command_id: str | None = None,
    ) -> list[Received]:
        """Replies from the start (only those to `command_id`, when given), as read() reads."""
        return self.read(
            topic or self.topics.replies,
            expect=expect,
            timeout_s=timeout_s,
            decode="PaymentReply",
            where=None if command_id is None else _answers(command_id),
        )

    def replies_by_command(self, expect: int, timeout_s: float = 60.0) -> dict[str, list[Received]]:
        grouped: dict[str, list[Received]] = {}
        for reply in self.replies(expect, timeout_s):
            assert reply.record is not None
            grouped.setdefault(reply.record["commandId"], []).append(reply)
        return grouped


def _answers(command_id: str) -> Callable[[Received], bool]:
    """Whether a read reply answers the command `command_id`."""
    return lambda reply: reply.record is not None and reply.record["commandId"] == command_id
