"""The outbox relay's own decisions, on fakes at its ports: which failed deliveries count
towards parking a row, and that a full producer queue never makes the event loop wait."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from payment_worker.entrypoints.relay import OutboxRelay
from payment_worker.service.ports import DeliveryFailure, OutboxMessage, ParkedRow, StoredMessage


def _stored(
    row_id: int, topic: str = "payment-replies", partition: int | None = 0
) -> StoredMessage:
    return StoredMessage(
        row_id, OutboxMessage("reply", topic, partition, b"k", b"v", [], None, None)
    )


class FakeStore:
    def __init__(self) -> None:
        self.sent: list[int] = []
        self.failed: list[tuple[int, str, bool]] = []
        self.unparked: list[tuple[str | None, int | None]] = []

    async def mark_sent(self, ids: list[int]) -> None:
        self.sent += ids

    async def claim_unsent(
        self, older_than_s: float, limit: int, lease_s: float = 60.0
    ) -> list[Any]:
        return []

    async def mark_failed(
        self, failures: list[tuple[int, str, bool]], max_attempts: int
    ) -> list[ParkedRow]:
        self.failed += failures
        return []

    async def claim_parked_probes(self, lease_s: float) -> list[StoredMessage]:
        return []

    async def unpark(self, topic: str | None = None, partition: int | None = None) -> int:
        self.unparked.append((topic, partition))
        return 1


class FakeProducer:
    """Takes rows until `room` runs out (then says its queue is full); reports on demand."""

    def __init__(self, room: int = 1_000) -> None:
        self.room = room
        self.produced: list[int] = []
        self.wakeup: Callable[[], None] | None = None
        self.in_flight: set[int] = set()
        self.delivered: list[int] = []
        self.failures: list[DeliveryFailure] = []

    def open(self) -> None:
        pass

    def reset_if_fatal(self) -> bool:
        return False

    def produce(self, stored: StoredMessage) -> bool:
        if self.room <= 0:
            return False
        self.room -= 1
        self.produced.append(stored.id)
        return True

    def take_reports(self) -> tuple[list[int], list[DeliveryFailure]]:
        delivered, failed = self.delivered, self.failures
        self.delivered, self.failures = [], []
        return delivered, failed

    def close(self, timeout_s: float = 10.0) -> int:
        return 0


class FakeDirectory:
    def __init__(self, topics: dict[str, int]) -> None:
        self.topics = topics

    async def partitions(self, topic: str) -> int | None:
        return self.topics.get(topic)


async def test_a_broker_wide_failure_never_counts_while_other_rows_are_delivered() -> None:
    """A timeout on a route that exists is the broker's trouble, not the row's: it does not
    count towards parking even right after other rows were delivered (one partition down for
    twenty minutes must not park every event keyed there)."""
    store, producer = FakeStore(), FakeProducer()
    relay = OutboxRelay(store, producer, topics=FakeDirectory({"payment-replies": 2}))
    producer.delivered = [1, 2, 3]
    producer.failures = [DeliveryFailure(4, "Local: Message timed out", True, "payment-replies", 1)]
    await relay._mark_once()
    assert store.sent == [1, 2, 3]
    assert store.failed == [(4, "Local: Message timed out", False)]


async def test_a_timeout_on_a_route_the_broker_no_longer_has_counts() -> None:
    """librdkafka reports a record for a deleted topic (or a partition it no longer has) as a
    timeout, like an outage; the relay asks the metadata, and then it counts as a refusal."""
    store, producer = FakeStore(), FakeProducer()
    relay = OutboxRelay(store, producer, topics=FakeDirectory({"payment-replies": 2}))
    producer.failures = [
        DeliveryFailure(1, "timed out", True, "deleted-replies", 0),
        DeliveryFailure(2, "timed out", True, "payment-replies", 5),
        DeliveryFailure(3, "Broker: Message size too large", False, "payment-replies", 0),
    ]
    await relay._mark_once()
    assert store.failed == [(1, "timed out", True), (2, "timed out", True),
                            (3, "Broker: Message size too large", True)]  # fmt: skip


async def test_a_full_producer_queue_never_blocks_publish_and_loses_no_row() -> None:
    """publish() returns at once when librdkafka's queue is full; the rows that did not fit
    wait in order and are handed over as room appears, none lost, none twice."""
    store, producer = FakeStore(), FakeProducer(room=2)
    relay = OutboxRelay(store, producer, sweep_every_s=3600, probe_every_s=3600)
    await relay.start()
    try:
        relay.publish([_stored(i) for i in range(1, 6)])  # returns: nothing awaited here
        assert producer.produced == [1, 2]
        producer.room = 1
        relay.publish([_stored(6)])  # behind the waiting rows, not ahead of them
        assert producer.produced == [1, 2]
        producer.room = 10
        for _ in range(100):
            if len(producer.produced) == 6:
                break
            await asyncio.sleep(0.01)
        assert producer.produced == [1, 2, 3, 4, 5, 6]
    finally:
        await relay.stop()


async def test_a_probe_that_goes_through_unparks_its_route() -> None:
    """A parked row sent again as a probe and delivered brings its whole route back; a probe
    that fails again changes nothing (it is not counted a second time)."""

    class ProbingStore(FakeStore):
        async def claim_parked_probes(self, lease_s: float) -> list[StoredMessage]:
            return [_stored(7, "late-replies", 0), _stored(8, "gone-replies", None)]

    store, producer = ProbingStore(), FakeProducer()
    relay = OutboxRelay(store, producer, sweep_every_s=3600, probe_every_s=3600)
    assert await relay.probe_parked() == 2
    assert producer.produced == [7, 8]
    producer.delivered = [7]
    producer.failures = [DeliveryFailure(8, "timed out", True, "gone-replies", None)]
    await relay._mark_once()
    assert store.unparked == [("late-replies", 0)]
    assert store.failed == []


async def test_many_failures_ask_the_metadata_once_per_topic() -> None:
    """Two thousand timeouts on one deleted topic and one live one: the relay asks the
    metadata once per topic for the whole batch (not once a row, which would hold back the
    marking of every other report), and counts only the deleted topic's rows."""

    class CountingDirectory(FakeDirectory):
        def __init__(self, topics: dict[str, int]) -> None:
            super().__init__(topics)
            self.asked: list[str] = []

        async def partitions(self, topic: str) -> int | None:
            self.asked.append(topic)
            return await super().partitions(topic)

    store, producer = FakeStore(), FakeProducer()
    directory = CountingDirectory({"payment-replies": 2})
    relay = OutboxRelay(store, producer, topics=directory)
    producer.failures = [
        DeliveryFailure(i, "timed out", True, "gone" if i % 2 else "payment-replies", 0)
        for i in range(2000)
    ]
    await relay._mark_once()
    assert sorted(directory.asked) == ["gone", "payment-replies"]
    assert sum(counted for _, _, counted in store.failed) == 1000


async def test_rows_waiting_for_room_are_not_handed_over_again_by_the_sweeper() -> None:
    """A row waiting for room in the producer's queue is the relay's already: a sweep that
    claims it again (its lease ran out) leaves it where it is."""

    class ClaimingAll(FakeStore):
        async def claim_unsent(self, older_than_s: float, limit: int, lease_s: float = 60.0):  # type: ignore[no-untyped-def]
            return [_stored(1), _stored(2)]

    store, producer = ClaimingAll(), FakeProducer(room=0)
    relay = OutboxRelay(store, producer)
    relay.publish([_stored(1), _stored(2)])
    assert await relay.sweep_once() == 0
    assert len(relay._waiting) == 2
