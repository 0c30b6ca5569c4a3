"""The outbox relay's guarantees on a real broker and database: what counts towards parking a
row, how parked rows come back, and which relay sends a row."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import psycopg
import pytest
from confluent_kafka.admin import AdminClient

from payment_worker.adapters.kafka import OutboxProducer, TopicDirectory, ensure_topics
from payment_worker.adapters.postgres import PostgresStore
from payment_worker.entrypoints.relay import OutboxRelay
from payment_worker.service.messages import Topics
from payment_worker.testing import KafkaHarness
from tests.integration.support import message

pytestmark = pytest.mark.integration


async def _until(check: Any, timeout_s: float = 30, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


def _relay(store: PostgresStore, broker: str, **kwargs: Any) -> OutboxRelay:
    """A relay whose own sweeper and prober stay asleep: the test drives them."""
    config = {"bootstrap.servers": broker, "message.timeout.ms": 2000}
    return OutboxRelay(
        store,
        OutboxProducer(config),
        topics=TopicDirectory(config),
        sweep_every_s=3600,
        probe_every_s=3600,
        **kwargs,
    )


async def test_parked_rows_come_back_by_themselves_once_their_route_works(
    store: PostgresStore, db: psycopg.Connection[Any], broker: str, topics: Topics
) -> None:
    """Replies to a reply topic that does not exist (deleted, or never made) are refused and
    parked (asking never creates the topic); once the topic exists, one probe goes through and
    every row of that route is unparked and delivered, without anyone touching the database."""
    late = f"late-replies-{uuid.uuid4().hex[:8]}"
    relay = _relay(store, broker, max_attempts=1, sweep_older_than_s=0)
    await relay.start()
    try:
        stored = await store.record(
            [message("reply", late, value=f"r{i}".encode()) for i in range(3)]
        )
        assert stored is not None
        relay.publish(stored)
        await _until(
            lambda: (
                db.execute("SELECT count(*) FROM outbox WHERE parked_at IS NOT NULL").fetchone()[0]
                == 3
            ),
            what="the rows to be parked",
        )
        assert late not in AdminClient({"bootstrap.servers": broker}).list_topics(timeout=10).topics
        db.execute("UPDATE outbox SET next_attempt_at = NULL")  # the first probe is due now
        assert await relay.probe_parked() == 1  # one route, still missing: its probe fails
        await _until(lambda: not relay.producer.in_flight, what="the probe's report")
        await asyncio.sleep(0.5)  # its report marked (a failed probe changes nothing)
        parked = db.execute("SELECT count(*) FROM outbox WHERE parked_at IS NOT NULL").fetchone()
        assert parked == (3,)
        ensure_topics({"bootstrap.servers": broker}, {late: 1})
        db.execute("UPDATE outbox SET next_attempt_at = NULL")  # the next probe is due now
        assert await relay.probe_parked() == 1
        await _until(
            lambda: (
                db.execute(
                    "SELECT count(*) FROM outbox WHERE parked_at IS NOT NULL AND sent_at IS NULL"
                ).fetchone()[0]
                == 0
            ),
            what="the route's rows to be unparked",
        )
        await relay.sweep_once(older_than_s=0)
        await _until(
            lambda: (
                db.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetchone()[0] == 0
            ),
            what="every row to be sent",
        )
    finally:
        await relay.stop(timeout_s=1)
    values = sorted(r.value for r in KafkaHarness(broker, topics).read(late, expect=3))
    assert values == [b"r0", b"r1", b"r2"]


async def test_a_row_on_the_fast_path_is_not_sent_again_by_another_relay(
    store: PostgresStore, db: psycopg.Connection[Any], broker: str
) -> None:
    """A row handed to one relay's producer is its own for longer than a delivery can take
    (the producer's message timeout): another relay's sweep leaves it alone even when the
    delivery is slow; a row whose try failed is due at its next try, however young."""
    producer = OutboxProducer({"bootstrap.servers": broker})
    other = OutboxRelay(store, producer)
    assert other.sweep_older_than_s > producer.config["message.timeout.ms"] / 1000
    stored = await store.record([message("reply", "payment-replies"), message("reply", "x")])
    assert stored is not None
    db.execute("UPDATE outbox SET created_at = now() - interval '10 seconds'")
    claimed = await store.claim_unsent(other.sweep_older_than_s, 100)
    assert claimed == []
    await store.mark_failed([(stored[1].id, "refused", True)], max_attempts=5)
    db.execute("UPDATE outbox SET next_attempt_at = now() - interval '1 second' WHERE id = %s",
               (stored[1].id,))  # fmt: skip
    claimed = await store.claim_unsent(other.sweep_older_than_s, 100)
    assert [c.id for c in claimed] == [stored[1].id]
