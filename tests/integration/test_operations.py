"""The state gauges move with what backs up, on the real broker and database: consumer lag
while nobody consumes, the outbox's oldest age while the broker refuses, the oldest pending
payment while its charge has no answer."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client import REGISTRY

from payment_worker.adapters.kafka import GroupLag, OutboxProducer
from payment_worker.adapters.postgres import PostgresStore
from payment_worker.entrypoints.gauges import StateGauges
from payment_worker.entrypoints.relay import OutboxRelay
from payment_worker.service.messages import Topics
from tests.integration.support import ROUTE, ledger_fields, message, pending_payment

pytestmark = pytest.mark.integration


def gauge(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    assert value is not None, f"{name}{labels} not exported"
    return value


def _produce(broker: str, topic: str, count: int) -> None:
    """One record per batch (the broker's end offset moves by one each)."""
    producer = Producer({"bootstrap.servers": broker, "linger.ms": 0})
    for _ in range(count):
        producer.produce(topic, key=b"k", value=b"v", partition=0)
        producer.flush(10)


def _commit(broker: str, group: str, topic: str, offset: int) -> None:
    """The group's position as a worker that consumed up to `offset` and then stopped."""
    consumer = Consumer({"bootstrap.servers": broker, "group.id": group})
    try:
        consumer.commit(offsets=[TopicPartition(topic, 0, offset)], asynchronous=False)
    finally:
        consumer.close()


async def test_consumer_lag_grows_while_nobody_consumes(
    store: PostgresStore, broker: str, topics: Topics
) -> None:
    """The group committed 3 of 3 records: lag 0; 4 more arrive while it is paused: 4; 2 more: 6.
    Partitions with nothing stay at 0."""
    group = f"payment-worker-{uuid.uuid4().hex[:8]}"
    lag = GroupLag({"bootstrap.servers": broker}, group, topics.commands)
    gauges = StateGauges(store, lag)
    try:
        _produce(broker, topics.commands, 3)
        _commit(broker, group, topics.commands, 3)
        seen = []
        for more in (0, 4, 2):
            _produce(broker, topics.commands, more)
            await gauges.sample_once()
            seen.append(
                gauge("payment_worker_consumer_lag_records", topic=topics.commands, partition="0")
            )
        assert seen == [0, 4, 6]
        assert (
            gauge("payment_worker_consumer_lag_records", topic=topics.commands, partition="3") == 0
        )
    finally:
        await lag.close()


async def test_outbox_oldest_age_grows_while_the_broker_refuses(store: PostgresStore) -> None:
    """Rows handed to a relay whose broker does not answer stay unsent: the backlog gauge counts
    them and the oldest unsent age keeps growing between samples."""
    lag = GroupLag({"bootstrap.servers": "127.0.0.1:1"}, "g", "t", timeout_s=0.2)
    gauges = StateGauges(store, lag)
    relay = OutboxRelay(
        store,
        OutboxProducer({"bootstrap.servers": "127.0.0.1:1", "message.timeout.ms": 60_000}),
        sweep_every_s=3600,
    )
    await relay.start()
    try:
        stored = await store.record([message(), message()])
        assert stored is not None
        relay.publish(stored)
        await gauges.sample_once()
        first = gauge("payment_worker_outbox_oldest_unsent_age_seconds")
        await asyncio.sleep(1.5)
        await gauges.sample_once()
        second = gauge("payment_worker_outbox_oldest_unsent_age_seconds")
        assert gauge("payment_worker_outbox_backlog") == 2
        assert second >= first + 1.0
    finally:
        await relay.stop(timeout_s=0.5)
        await lag.close()


async def test_pending_age_grows_while_the_charge_has_no_answer(store: PostgresStore) -> None:
    """A payment begun and never charged (the gateway hangs) is counted pending, and the
    oldest pending age grows between samples; once it is finished both go back to 0."""
    lag = GroupLag({"bootstrap.servers": "127.0.0.1:1"}, "g", "t", timeout_s=0.2)
    gauges = StateGauges(store, lag)
    try:
        payment = pending_payment()
        began = await store.begin_payment(payment, ledger_fields(payment), ROUTE)
        assert began.inserted
        await gauges.sample_once()
        first = gauge("payment_worker_pending_oldest_age_seconds")
        await asyncio.sleep(1.2)
        await gauges.sample_once()
        assert gauge("payment_worker_pending_payments") == 1
        assert gauge("payment_worker_pending_oldest_age_seconds") >= first + 1.0
    finally:
        await lag.close()


async def test_a_source_that_fails_is_counted_and_the_others_still_sampled(
    store: PostgresStore,
) -> None:
    """The broker unreachable: the kafka sample failure is counted, the database gauges are
    still set."""
    lag = GroupLag({"bootstrap.servers": "127.0.0.1:1"}, "g", "t", timeout_s=0.2)
    before = (
        REGISTRY.get_sample_value("payment_worker_state_sample_failures_total", {"source": "kafka"})
        or 0.0
    )
    try:
        started = time.monotonic()
        await StateGauges(store, lag).sample_once()
        assert time.monotonic() - started < 10
    finally:
        await lag.close()
    assert gauge("payment_worker_state_sample_failures_total", source="kafka") == before + 1
    assert gauge("payment_worker_pending_payments") == 0
