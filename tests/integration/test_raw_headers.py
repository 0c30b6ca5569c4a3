"""Header bytes as the broker holds them (adapters/kafka/raw.py, consumer.to_record) on a
real broker: names of any bytes, written below confluent-kafka, read back whole without
confluent-kafka converting them, so that no record can make its conversion raise or crash."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Consumer, Message, TopicPartition

from payment_worker.adapters.kafka import to_record
from payment_worker.adapters.kafka.admin import ensure_topics
from payment_worker.adapters.kafka.raw import message_headers
from tests.rawkafka import RawProducer

pytestmark = pytest.mark.integration

HOSTILE = [
    (b"\xff\xfe", b"v"),
    (b"ok", None),
    (b"\xc3(", b""),
    ("é".encode(), b"\x00\x01"),
    (b"\x80", b"x"),
    (b"\xed\xa0\x80", b"surrogate"),  # UTF-8 of a lone surrogate: not UTF-8 either
]


def _one_message(
    broker: str, headers: list[tuple[bytes, bytes | None]]
) -> tuple[Consumer, Message]:
    topic = f"raw-headers-{uuid.uuid4().hex[:8]}"
    ensure_topics({"bootstrap.servers": broker}, {topic: 1})
    producer = RawProducer(broker)
    try:
        producer.produce(topic, key=b"k", value=b"v", headers=headers)
        producer.flush()
    finally:
        producer.close()
    consumer = Consumer({"bootstrap.servers": broker, "group.id": topic})
    consumer.assign([TopicPartition(topic, 0, 0)])
    for _ in range(100):
        message = consumer.poll(0.2)
        if message is not None and message.error() is None:
            return consumer, message
    consumer.close()
    raise AssertionError("the record was not read back")


def test_header_names_of_any_bytes_are_read_back_whole(broker: str) -> None:
    """Every name and value comes back byte for byte, in order, None values as None."""
    consumer, message = _one_message(broker, HOSTILE)
    try:
        assert message_headers(message) == HOSTILE
    finally:
        consumer.close()


def test_a_record_with_names_not_utf8_is_unreadable_with_its_names_in_hex(broker: str) -> None:
    """to_record gives the record, marked unreadable, each name that is not UTF-8 in hex and
    the others as text, without confluent-kafka ever converting them."""
    consumer, message = _one_message(broker, HOSTILE)
    try:
        record = to_record(message)
    finally:
        consumer.close()
    assert record.unreadable == "header names not UTF-8"
    assert record.headers == [
        ("dlq-name-hex:fffe", b"v"),
        ("ok", None),
        ("dlq-name-hex:c328", b""),
        ("é", b"\x00\x01"),
        ("dlq-name-hex:80", b"x"),
        ("dlq-name-hex:eda080", b"surrogate"),
    ]
    assert (record.key, record.value) == (b"k", b"v")


def test_a_record_with_utf8_names_is_read_as_confluent_kafka_would(broker: str) -> None:
    """Names that are UTF-8 give the same headers as the library's own `headers()`."""
    headers = [(b"traceparent", b"00-x"), ("名前".encode(), b"v"), (b"n", None)]
    consumer, message = _one_message(broker, headers)
    try:
        record = to_record(message)
        assert record.unreadable is None
        assert record.headers == message.headers()
    finally:
        consumer.close()
