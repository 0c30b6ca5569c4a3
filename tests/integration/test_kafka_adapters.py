"""The confluent-kafka adapters and the outbox relay against a real (Apache Kafka) broker: the
outbox producer, ensure_topics, the threaded group consumer, and OutboxRelay over a real
PostgresStore."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from payment_worker.adapters.kafka import (
    BrokerUnavailable,
    DirectProducer,
    OutboxProducer,
    ThreadedConsumer,
    TopicDirectory,
    ensure_topics,
)
from payment_worker.adapters.postgres import PostgresStore
from payment_worker.devstack.broker import free_port
from payment_worker.entrypoints.relay import OutboxRelay
from payment_worker.service.messages import Topics
from payment_worker.service.ports import InboundRecord, OutboxMessage, StoredMessage
from payment_worker.testing import KafkaHarness, Received
from tests.integration.support import message

pytestmark = pytest.mark.integration

Offsets = dict[tuple[str, int], int]


def _read(broker: str, topics: Topics, topic: str, expect: int) -> list[Received]:
    return KafkaHarness(broker, topics).read(topic, expect=expect, timeout_s=20, idle_s=0.5)


def _consumer_config(broker: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": broker,
        "group.id": f"it-{uuid.uuid4().hex[:10]}",
    }


def _produce(broker: str, topic: str, values: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": broker})
    for value in values:
        producer.produce(topic, key=value, value=value)
    assert producer.flush(10) == 0


async def _consume(
    consumer: ThreadedConsumer, expect: int, timeout_s: float = 30
) -> list[InboundRecord]:
    records: list[InboundRecord] = []
    deadline = time.monotonic() + timeout_s
    while len(records) < expect and time.monotonic() < deadline:
        records += await consumer.consume(100, 0.2)
    return records


def _committed(broker: str, group_id: str, topic: str, partitions: int) -> Offsets:
    """The group's committed offsets as a fresh consumer of that group sees them."""
    fresh = Consumer(
        {"bootstrap.servers": broker, "group.id": group_id, "enable.auto.commit": False}
    )
    try:
        found = fresh.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
    finally:
        fresh.close()
    return {(tp.topic, tp.partition): tp.offset for tp in found if tp.offset >= 0}


class Revocations:
    """An on_revoke coroutine that remembers what it was given and answers `offsets`."""

    def __init__(self, offsets: Offsets | None = None) -> None:
        self.offsets = offsets or {}
        self.calls: list[list[tuple[str, int]]] = []
        self.finished = 0

    async def __call__(self, partitions: list[tuple[str, int]]) -> Offsets:
        self.calls.append(list(partitions))
        await asyncio.sleep(0.05)  # proves the coroutine is awaited, not just created
        self.finished += 1
        return {k: v for k, v in self.offsets.items() if k in partitions}


# -- OutboxProducer ----------------------------------------------------------------------------


def _stored(topics: Topics) -> list[StoredMessage]:
    return [
        StoredMessage(
            101,
            message(
                "event",
                topics.succeeded,
                partition=1,
                key=b"order-1",
                value=b"\xc3\x01event",
                headers=[("ce_id", b"e-1"), ("correlation-id", b"c-1")],
            ),
        ),
        StoredMessage(
            102,
            message(
                "reply",
                topics.succeeded,
                partition=0,
                key=b"order-2",
                value=b"reply",
                headers=[("ce_type", b"t")],
            ),
        ),
        StoredMessage(
            103,
            message("reply", topics.succeeded, partition=1, key=None, value=b"no-key", headers=[]),
        ),
    ]


def test_outbox_producer_reports_delivered_row_ids(broker: str, topics: Topics) -> None:
    """After a flush, take_reports returns the row ids of every delivered message (and no
    failures), once: a second call returns nothing."""
    producer = OutboxProducer({"bootstrap.servers": broker})
    producer.open()
    try:
        for stored in _stored(topics):
            producer.produce(stored)
        assert producer.flush(15) == 0
        delivered, failed = producer.take_reports()
        again = producer.take_reports()
    finally:
        producer.close()

    assert sorted(delivered) == [101, 102, 103]
    assert failed == []
    assert again == ([], [])
    assert producer.in_flight == set()


def test_outbox_producer_writes_to_the_given_partition_with_headers(
    broker: str, topics: Topics
) -> None:
    """Each stored message lands on its explicit partition with its key, value and headers."""
    producer = OutboxProducer({"bootstrap.servers": broker})
    producer.open()
    try:
        for stored in _stored(topics):
            producer.produce(stored)
        assert producer.flush(15) == 0
    finally:
        producer.close()

    read = _read(broker, topics, topics.succeeded, 3)
    got = {r.value: (r.partition, r.key, r.headers) for r in read}
    assert got == {
        b"\xc3\x01event": (1, b"order-1", {"ce_id": b"e-1", "correlation-id": b"c-1"}),
        b"reply": (0, b"order-2", {"ce_type": b"t"}),
        b"no-key": (1, None, {}),
    }


def test_outbox_producer_reports_a_failed_delivery(broker: str, topics: Topics) -> None:
    """A message that cannot be delivered (a partition the topic does not have) comes back in
    the failed reports with its row id, is no longer in flight, and is not reported delivered."""
    producer = OutboxProducer({"bootstrap.servers": broker, "message.timeout.ms": 3000})
    producer.open()
    try:
        producer.produce(StoredMessage(7, message("reply", topics.dlq, partition=5)))
        producer.flush(10)
        delivered, failed = producer.take_reports()
    finally:
        producer.close()

    assert delivered == []
    assert [f.row_id for f in failed] == [7]
    assert not failed[0].broker_wide, "an unknown partition is the record's trouble"
    assert producer.in_flight == set()


def test_direct_producer_delivers_what_it_sends(broker: str, topics: Topics) -> None:
    """DirectProducer (replay's answers) delivers every message, with its headers, to the
    given partition; drain() then reports none undelivered."""
    producer = DirectProducer({"bootstrap.servers": broker})
    producer.open()
    try:
        sent = [
            message("reply", topics.replies, partition=i % 2, value=f"v{i}".encode())
            for i in range(20)
        ]
        producer.send(sent)
        left = producer.drain(timeout_s=20)
    finally:
        producer.close()

    assert left == 0
    received = _read(broker, topics, topics.replies, expect=20)
    assert sorted(r.value for r in received) == sorted(m.value for m in sent)
    assert {(r.value, r.partition) for r in received} == {(m.value, m.partition) for m in sent}
    assert all(r.headers.get("correlation-id") == b"c-1" for r in received)


def test_direct_producer_keeps_answers_in_order(broker: str, topics: Topics) -> None:
    """Replay's answers go through an idempotent producer like every other of ours (so retried
    requests neither duplicate nor reorder them): 200 answers to one partition, sent in batches,
    arrive once each in the order sent."""
    assert DirectProducer({}).config["enable.idempotence"] is True
    producer = DirectProducer({"bootstrap.servers": broker, "linger.ms": 1})
    producer.open()
    try:
        sent = [
            message("reply", topics.replies, partition=0, value=f"{i:04d}".encode())
            for i in range(200)
        ]
        for start in range(0, 200, 10):
            producer.send(sent[start : start + 10])
        left = producer.drain(timeout_s=20)
    finally:
        producer.close()

    assert left == 0
    received = _read(broker, topics, topics.replies, expect=200)
    assert [r.value for r in received if r.partition == 0] == [m.value for m in sent]


def test_direct_producer_counts_what_it_could_not_deliver(broker: str, topics: Topics) -> None:
    """A message that cannot be delivered (a partition the topic does not have) is retried,
    then counted: drain() returns it, so replay can fail instead of claiming success."""
    producer = DirectProducer({"bootstrap.servers": broker, "message.timeout.ms": 2000}, attempts=2)
    producer.open()
    try:
        producer.send([message("reply", topics.dlq, partition=5)])
        left = producer.drain(timeout_s=30)
    finally:
        producer.close()

    assert left == 1


def test_direct_producer_replaced_after_a_fatal_error_loses_nothing(
    broker: str, topics: Topics
) -> None:
    """After a fatal error (a fenced idempotent producer), the producer is replaced and what
    the old one still held is produced again: every message arrives, none is counted lost."""
    producer = DirectProducer({"bootstrap.servers": broker, "linger.ms": 200})
    producer.open()
    try:
        sent = [message("reply", topics.replies, value=f"f{i}".encode()) for i in range(30)]
        producer.send(sent)  # still lingering in the producer's queue
        old = producer._producer
        producer._fatal.set()  # as the error callback does on a fatal error
        producer.poll()
        assert producer._producer is not old
        left = producer.drain(timeout_s=20)
    finally:
        producer.close()

    assert left == 0
    received = _read(broker, topics, topics.replies, expect=30)
    assert sorted(r.value for r in received) == sorted(m.value for m in sent)


def test_direct_producer_retries_then_counts_a_timed_out_delivery(topics: Topics) -> None:
    """With no broker to take it, a message times out, is produced again (`attempts`), then
    counted undelivered by drain()."""
    producer = DirectProducer(
        {"bootstrap.servers": f"127.0.0.1:{free_port()}", "message.timeout.ms": 500}, attempts=3
    )
    producer.open()
    try:
        producer.send([message("reply", topics.replies)])
        left = producer.drain(timeout_s=30)
    finally:
        producer.close()

    assert left == 1
    assert producer.retried == 2  # three attempts in all


# -- ensure_topics -----------------------------------------------------------------------------


def test_ensure_topics_creates_missing_topics_with_their_partitions(broker: str) -> None:
    """ensure_topics creates the topics that do not exist, with the partition counts asked for,
    and returns their names."""
    names = {f"it-a-{uuid.uuid4().hex[:8]}": 3, f"it-b-{uuid.uuid4().hex[:8]}": 1}

    created = ensure_topics({"bootstrap.servers": broker}, names)

    assert sorted(created) == sorted(names)
    admin = AdminClient({"bootstrap.servers": broker})
    deadline = time.monotonic() + 15
    while True:  # a broker may answer metadata without a topic created a moment ago
        topics = admin.list_topics(timeout=10).topics
        if all(n in topics for n in names) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert {n: len(topics[n].partitions) for n in names if n in topics} == names


def test_ensure_topics_is_idempotent(broker: str, topics: Topics) -> None:
    """Run again for topics that exist (the fixture made them), ensure_topics creates nothing,
    raises nothing, and leaves the partition count alone."""
    created = ensure_topics({"bootstrap.servers": broker}, {topics.commands: 8})

    assert created == []
    metadata = AdminClient({"bootstrap.servers": broker}).list_topics(timeout=10)
    assert len(metadata.topics[topics.commands].partitions) == 4


# -- ThreadedConsumer --------------------------------------------------------------------------


async def test_threaded_consumer_consumes_records_produced_one_per_flush(
    broker: str, topics: Topics
) -> None:
    """Records produced one per flush across the commands topic's partitions are all consumed,
    with their topic, partition, offset, key and value, once each."""
    values = [f"record-{i}".encode() for i in range(6)]
    _produce(broker, topics.commands, values)
    assigned: list[list[tuple[str, int]]] = []
    consumer = ThreadedConsumer(
        _consumer_config(broker),
        [topics.commands],
        on_assign=assigned.append,
        on_revoke=Revocations(),
    )
    await consumer.open()
    try:
        records = await _consume(consumer, len(values))
        records += await consumer.consume(100, 0.5)  # nothing more may come
    finally:
        await consumer.close()

    assert sorted(r.value for r in records if r.value) == values
    assert all(r.topic == topics.commands and r.key == r.value for r in records)
    assert len({(r.partition, r.offset) for r in records}) == len(values)
    assert sorted(p for p in assigned[0]) == [(topics.commands, p) for p in range(4)]


async def test_threaded_consumer_commit_stores_the_offsets(broker: str, topics: Topics) -> None:
    """commit() stores the given offsets for the group: a fresh consumer of the group reads
    them back with committed()."""
    _produce(broker, topics.commands, [b"a", b"b", b"c", b"d"])
    config = _consumer_config(broker)
    consumer = ThreadedConsumer(
        config, [topics.commands], on_assign=lambda _k: None, on_revoke=Revocations()
    )
    await consumer.open()
    try:
        records = await _consume(consumer, 4)
        points: Offsets = {}
        for r in records:
            key = (r.topic, r.partition)
            points[key] = max(points.get(key, 0), r.offset + 1)
        await consumer.commit(points)
    finally:
        await consumer.close()

    assert len(records) == 4
    assert _committed(broker, config["group.id"], topics.commands, 4) == points


async def test_threaded_consumer_awaits_on_revoke_at_close(broker: str, topics: Topics) -> None:
    """Closing the consumer awaits the on_revoke coroutine with the partitions it held."""
    revoke = Revocations()
    assigned: list[list[tuple[str, int]]] = []
    consumer = ThreadedConsumer(
        _consumer_config(broker), [topics.commands], on_assign=assigned.append, on_revoke=revoke
    )
    await consumer.open()
    try:
        deadline = time.monotonic() + 30
        while not assigned and time.monotonic() < deadline:
            await consumer.consume(10, 0.2)
        assert assigned, "no partitions assigned"
        assert revoke.calls == []
    finally:
        await consumer.close()

    assert revoke.finished == 1
    assert sorted(revoke.calls[0]) == sorted(assigned[0])


async def test_threaded_consumer_commits_what_on_revoke_returns(
    broker: str, topics: Topics
) -> None:
    """The offsets on_revoke answers are committed before the partitions are given up."""
    config = _consumer_config(broker)
    _produce(broker, topics.commands, [b"x"])
    revoke = Revocations({(topics.commands, 0): 1, (topics.commands, 3): 1})
    consumer = ThreadedConsumer(
        config, [topics.commands], on_assign=lambda _k: None, on_revoke=revoke
    )
    await consumer.open()
    try:
        await _consume(consumer, 1)
    finally:
        await consumer.close()

    assert _committed(broker, config["group.id"], topics.commands, 4) == revoke.offsets


async def test_a_consumer_resumed_between_revoke_and_assign_consumes_its_new_partitions(
    broker: str, topics: Topics
) -> None:
    """Paused (full), then resumed while a rebalance has taken its partitions and not yet
    handed the new ones (its assignment empty): the partitions it is given then are consumed,
    not left paused from before, which would stop them for good with nothing in flight."""
    _produce(broker, topics.commands, [f"r-{i}".encode() for i in range(40)])
    config = _consumer_config(broker)
    revoke, assigned = Revocations(), []
    consumer = ThreadedConsumer(
        config, [topics.commands], on_assign=assigned.append, on_revoke=revoke
    )
    await consumer.open()
    other = Consumer({**config, "enable.auto.commit": False, "session.timeout.ms": 6000})
    stop = asyncio.Event()

    def other_polls() -> None:  # a second member, to rebalance the group; it reads nothing
        other.subscribe([topics.commands], on_assign=lambda c, ps: c.pause(ps))
        while not stop.is_set():
            other.poll(0.1)

    try:
        deadline = time.monotonic() + 30
        while not assigned and time.monotonic() < deadline:
            await consumer.consume(1, 0.1)
        assert assigned, "no partitions assigned"
        await consumer.set_paused(True)
        polling = asyncio.get_running_loop().run_in_executor(None, other_polls)
        resumed_in_window = False
        records: list[InboundRecord] = []
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and not records:
            records += await consumer.consume(50, 0.05)
            if not resumed_in_window and revoke.calls and len(assigned) == 1:
                await consumer.set_paused(False)  # between the revocation and the assignment
                resumed_in_window = True
        assert resumed_in_window and len(assigned) == 2, (revoke.calls, assigned)
        assert records, f"nothing consumed from {assigned[1]} after the rebalance"
    finally:
        stop.set()
        await polling
        other.close()
        await consumer.close()


# -- OutboxRelay over PostgresStore --------------------------------------------------------------


def _messages(topics: Topics) -> list[OutboxMessage]:
    return [
        message(
            "event",
            topics.succeeded,
            partition=0,
            key=b"o-1",
            value=b"event-1",
            headers=[("ce_id", b"e-1")],
            payment_id=uuid.uuid4(),
        ),
        message(
            "reply",
            topics.replies,
            partition=1,
            key=b"o-1",
            value=b"reply-1",
            headers=[("correlation-id", b"c-1")],
        ),
    ]


async def _wait_all_sent(db: psycopg.Connection[Any], timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        row = db.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetchone()
        if row == (0,):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("outbox rows still unsent")


@pytest.fixture
async def relay(store: PostgresStore, broker: str) -> Any:
    """A started relay whose own sweeper stays asleep during the test."""
    the_relay = OutboxRelay(
        store,
        OutboxProducer({"bootstrap.servers": broker}),
        sweep_every_s=3600,
        sweep_older_than_s=3600,
    )
    await the_relay.start()
    yield the_relay
    await the_relay.stop()


async def test_relay_publishes_recorded_rows_and_marks_them_sent(
    relay: OutboxRelay,
    store: PostgresStore,
    db: psycopg.Connection[Any],
    broker: str,
    topics: Topics,
) -> None:
    """Rows recorded in the outbox and handed to publish() reach their topics and are marked
    sent (sent_at set) without a sweep."""
    stored = await store.record(_messages(topics))
    assert stored is not None

    relay.publish(stored)
    await _wait_all_sent(db)

    events = _read(broker, topics, topics.succeeded, 1)
    replies = _read(broker, topics, topics.replies, 1)
    assert [(r.partition, r.key, r.value, r.headers) for r in events] == [
        (0, b"o-1", b"event-1", {"ce_id": b"e-1"})
    ]
    assert [(r.partition, r.value) for r in replies] == [(1, b"reply-1")]
    assert (await store.stuck_state(details=False)).outbox_backlog == 0


async def test_relay_sweep_publishes_rows_left_unsent(
    relay: OutboxRelay,
    store: PostgresStore,
    db: psycopg.Connection[Any],
    broker: str,
    topics: Topics,
) -> None:
    """Rows recorded but never handed to publish() (a crash between commit and publish) are
    published by sweep_once(older_than_s=0) and marked sent."""
    stored = await store.record(_messages(topics))
    assert stored is not None

    published = await relay.sweep_once(older_than_s=0)

    assert published == 2
    await _wait_all_sent(db)
    assert [r.value for r in _read(broker, topics, topics.succeeded, 1)] == [b"event-1"]
    assert [r.value for r in _read(broker, topics, topics.replies, 1)] == [b"reply-1"]


async def test_relay_sweep_leaves_sent_rows_alone(
    relay: OutboxRelay,
    store: PostgresStore,
    db: psycopg.Connection[Any],
    broker: str,
    topics: Topics,
) -> None:
    """A sweep after everything was sent publishes nothing, so no duplicates appear."""
    stored = await store.record(_messages(topics))
    assert stored is not None
    assert await relay.sweep_once(older_than_s=0) == 2
    await _wait_all_sent(db)

    assert await relay.sweep_once(older_than_s=0) == 0

    assert len(_read(broker, topics, topics.succeeded, 1)) == 1


async def test_a_row_the_broker_refuses_is_retried_then_parked_and_never_holds_back_others(
    store: PostgresStore, db: psycopg.Connection[Any], broker: str, topics: Topics
) -> None:
    """A few hundred replies to a partition the topic does not have sit at the head of the
    outbox: an event written after them is published by the sweeper before any of them is
    given up on; each is tried `max_attempts` times with a growing wait, then parked."""
    relay = OutboxRelay(
        store,
        OutboxProducer({"bootstrap.servers": broker}),
        max_attempts=3,
        sweep_every_s=3600,
        sweep_older_than_s=0,
        sweep_batch=50,
    )
    await relay.start()
    try:
        refused = [message("reply", topics.replies, partition=9) for _ in range(200)]
        assert await store.record(refused) is not None
        assert await store.record([message("event", topics.succeeded, value=b"late")])
        db.execute("UPDATE outbox SET created_at = now() - interval '1 minute'")
        parked_when_sent = None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            await relay.sweep_once()
            await asyncio.sleep(0.3)
            sent = db.execute("SELECT count(*) FROM outbox WHERE sent_at IS NOT NULL").fetchone()
            parked = db.execute(
                "SELECT count(*) FROM outbox WHERE parked_at IS NOT NULL"
            ).fetchone()
            if sent == (1,) and parked_when_sent is None:
                parked_when_sent = parked[0]
            if sent == (1,) and parked == (200,):
                break
    finally:
        await relay.stop()
    assert parked_when_sent == 0, "the event waited for the refused rows to be given up on"
    rows = db.execute(
        "SELECT attempts, last_error IS NOT NULL, parked_at IS NOT NULL, sent_at IS NOT NULL"
        " FROM outbox ORDER BY id"
    ).fetchall()
    assert rows[:200] == [(3, True, True, False)] * 200
    assert rows[200] == (0, False, False, True)
    assert [r.value for r in _read(broker, topics, topics.succeeded, 1)] == [b"late"]
    state = await store.stuck_state(details=False)
    assert (state.outbox_backlog, state.parked) == (0, 200)


async def test_a_refusal_while_the_broker_is_away_is_not_counted(
    store: PostgresStore, db: psycopg.Connection[Any]
) -> None:
    """A broker-wide failure (no broker at all) is tried again without counting towards
    parking: a long outage parks nothing."""
    relay = OutboxRelay(
        store,
        OutboxProducer({"bootstrap.servers": "127.0.0.1:1", "message.timeout.ms": 500}),
        max_attempts=1,
        sweep_every_s=3600,
    )
    await relay.start()
    try:
        stored = await store.record([message("event", "payment-succeeded")])
        assert stored is not None
        relay.publish(stored)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            row = db.execute("SELECT last_error FROM outbox").fetchone()
            if row is not None and row[0] is not None:
                break
            await asyncio.sleep(0.1)
    finally:
        await relay.stop(timeout_s=1)
    assert db.execute("SELECT attempts, parked_at FROM outbox").fetchone() == (0, None)


async def test_topic_directory_knows_the_brokers_topics_and_creates_none(
    broker: str, topics: Topics
) -> None:
    """The directory answers a topic's partition count from the cluster's metadata, None for
    a topic the broker does not have, and asking never creates that topic (some brokers create a
    topic named in a metadata request for it)."""
    directory = TopicDirectory({"bootstrap.servers": broker})
    missing = f"no-such-topic-{uuid.uuid4().hex[:8]}"

    assert await directory.partitions(topics.commands) == 4
    assert await directory.partitions(missing) is None
    assert await directory.partitions(missing) is None

    names = AdminClient({"bootstrap.servers": broker}).list_topics(timeout=10).topics
    assert missing not in names


def _until_the_broker_lists(broker: str, topic: str) -> None:
    """Wait out the moment by which a broker's metadata lags its CreateTopics answer."""
    admin = AdminClient({"bootstrap.servers": broker})
    deadline = time.monotonic() + 10
    while topic not in admin.list_topics(timeout=5).topics:
        assert time.monotonic() < deadline, f"the broker never listed {topic}"
        time.sleep(0.01)


async def test_topic_directory_sees_a_topic_created_just_before_its_record_was_read(
    broker: str,
) -> None:
    """Contract section 2: a miss is judged on metadata fetched after the record was read. A
    topic created a moment after the directory last looked (and missed it), then named by a
    record read after that, is found by the first fetch after the read (no confirming fetch
    here: settle_s=0), not refused until some refresh interval ends."""
    directory = TopicDirectory({"bootstrap.servers": broker}, settle_s=0)
    late = f"late-replies-{uuid.uuid4().hex[:8]}"
    assert await directory.partitions(late) is None
    ensure_topics({"bootstrap.servers": broker}, {late: 3})
    _until_the_broker_lists(broker, late)
    read_at = time.monotonic()

    assert await directory.partitions(late, read_at) == 3


async def test_topic_directory_confirms_a_miss_after_the_broker_settles(broker: str) -> None:
    """A topic named right after CreateTopics answered, before the broker may list it: the
    directory confirms the miss with a later fetch and finds the topic."""
    directory = TopicDirectory({"bootstrap.servers": broker})
    late = f"late-replies-{uuid.uuid4().hex[:8]}"
    assert await directory.partitions(late) is None
    ensure_topics({"bootstrap.servers": broker}, {late: 2})

    assert await directory.partitions(late, time.monotonic()) == 2


async def test_topic_directory_hits_fetch_nothing_and_misses_share_one_fetch(
    broker: str, topics: Topics
) -> None:
    """A topic in the cache is answered without a metadata request, however often it is
    asked; misses of records read before a fetch began share that one fetch."""
    directory = TopicDirectory({"bootstrap.servers": broker})
    assert await directory.partitions(topics.commands) == 4
    before = directory.fetches
    for _ in range(50):
        assert await directory.partitions(topics.commands, time.monotonic()) == 4
    assert directory.fetches == before

    read_at = time.monotonic()
    missing = [f"no-such-topic-{uuid.uuid4().hex[:8]}" for _ in range(20)]
    found = await asyncio.gather(*(directory.partitions(name, read_at) for name in missing))

    assert found == [None] * 20
    assert directory.fetches == before + 2  # one after the records were read, one to confirm


async def test_topic_directory_without_a_broker_is_unavailable() -> None:
    """No broker: BrokerUnavailable (the record waits), not an answer that the topic is absent."""
    directory = TopicDirectory({"bootstrap.servers": f"127.0.0.1:{free_port()}"}, timeout_s=1)
    with pytest.raises(BrokerUnavailable):
        await directory.partitions("anything")
