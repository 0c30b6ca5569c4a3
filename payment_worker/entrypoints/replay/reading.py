"""Reading the partitions to replay: the offsets fixed at start, then the records between them
in batches, with a consumer of the replay's own that joins no group and commits nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from payment_worker.adapters.kafka import ready_messages, to_record
from payment_worker.entrypoints.replay.exceptions import ReplayError
from payment_worker.entrypoints.replay.options import ReplayOptions
from payment_worker.service.ports import InboundRecord
from payment_worker.service.replay import without_dlq_headers

# A batch of records, the error that stopped the reading, or None once every partition is read.
Batches = asyncio.Queue[list[InboundRecord] | Exception | None]


class Bounds:
    """Start and stop offsets per partition, fixed before the first record is read."""

    def __init__(self, consumer: Consumer, options: ReplayOptions) -> None:
        try:
            metadata = consumer.list_topics(options.topic, timeout=10)
        except KafkaException as exc:
            raise ReplayError(f"cannot reach the broker: {exc}") from exc
        topic = metadata.topics.get(options.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            raise ReplayError(f"topic {options.topic!r} does not exist")
        index, count = options.shard
        partitions = sorted(topic.partitions)[index::count]
        self.start: dict[int, int] = {}
        self.stop: dict[int, int] = {}
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(options.topic, p), 10)
            self.start[p], self.stop[p] = low, high
        if options.from_timestamp_ms is not None and partitions:  # a shard may have none
            for tp in consumer.offsets_for_times(
                [TopicPartition(options.topic, p, options.from_timestamp_ms) for p in partitions],
                10,
            ):
                self.start[tp.partition] = tp.offset if tp.offset >= 0 else self.stop[tp.partition]
        # --to-timestamp is applied per record while reading (a partition ends at its first
        # record at or after it): exact on any broker, and never past the end offsets above.
        self.topic = options.topic

    @property
    def total(self) -> int:
        return sum(max(0, self.stop[p] - self.start[p]) for p in self.start)

    def assignment(self) -> list[TopicPartition]:
        return [
            TopicPartition(self.topic, p, self.start[p] if self.start[p] >= 0 else OFFSET_BEGINNING)
            for p in self.start
            if self.stop[p] > self.start[p]
        ]


class PartitionReader:
    """The replay's consumer, created by `open()` and closed by `close()`. The live group's
    offsets are never read or moved: manual assignment, a group id of its own, no commit."""

    def __init__(
        self, new_consumer: Callable[[], Consumer], options: ReplayOptions, dlq_topic: str
    ) -> None:
        self.new_consumer = new_consumer
        self.dlq_topic = dlq_topic
        self.options = options
        self._consumer: Consumer | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="replay-consumer")

    async def _on_consumer_thread(self, fn: Any, *args: Any) -> Any:
        """Every consumer call on one thread of its own, one at a time."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def open(self) -> None:
        self._consumer = await self._on_consumer_thread(self.new_consumer)

    @property
    def consumer(self) -> Consumer:
        if self._consumer is None:
            raise RuntimeError("PartitionReader.open() was not called")
        return self._consumer

    async def bounds(self) -> Bounds:
        bounds: Bounds = await self._on_consumer_thread(Bounds, self.consumer, self.options)
        return bounds

    async def close(self) -> None:
        # On the consumer's thread: after a consume still running there (librdkafka does not
        # allow close() beside another call).
        if self._consumer is not None:
            await self._on_consumer_thread(self._consumer.close)
        self._thread.shutdown(wait=False)

    async def read(self, bounds: Bounds, batches: Batches) -> None:
        """Records inside the bounds, in batches, until every partition reached its stop; then
        None (or the exception that stopped the reading)."""
        consumer = self.consumer
        assignment = bounds.assignment()
        if assignment:
            await self._on_consumer_thread(consumer.assign, assignment)
        remaining = {tp.partition: bounds.stop[tp.partition] for tp in assignment}
        # The first batches are small, so that answering starts while the rest is read. A batch
        # is what has arrived, up to its size: consume(n, timeout) would wait out the timeout
        # for the last records of a partition, fewer than n.
        size = min(250, self.options.batch_size)
        try:
            while remaining:
                messages = await self._on_consumer_thread(ready_messages, consumer, size, 0.5)
                size = min(size * 2, self.options.batch_size)
                batch: list[InboundRecord] = []
                for message in messages:
                    if message.error() is not None:
                        continue
                    record = to_record(message)
                    partition, offset = record.partition, record.offset
                    stop = remaining.get(partition)
                    if stop is None or offset >= stop:
                        continue
                    if self._after_window(record):
                        del remaining[partition]
                        continue
                    if self._before_window(record):
                        continue
                    if record.topic == self.dlq_topic:
                        record = without_dlq_headers(record)
                    batch.append(record)
                    if offset + 1 >= stop:
                        del remaining[partition]
                if batch:
                    await batches.put(batch)
                if not messages:
                    # Offsets with no record (transaction markers, compaction) end a partition
                    # once the position has passed its stop offset.
                    positions = await self._on_consumer_thread(
                        consumer.position,
                        [TopicPartition(self.options.topic, p) for p in remaining],
                    )
                    for tp in positions:
                        if tp.offset >= remaining.get(tp.partition, 0) > 0:
                            del remaining[tp.partition]
        except Exception as exc:  # handed to the processing loop, which raises it
            await batches.put(exc)
            return
        await batches.put(None)

    def _after_window(self, record: InboundRecord) -> bool:
        stop = self.options.to_timestamp_ms
        return stop is not None and record.timestamp_ms is not None and record.timestamp_ms >= stop

    def _before_window(self, record: InboundRecord) -> bool:
        start = self.options.from_timestamp_ms
        return start is not None and record.timestamp_ms is not None and record.timestamp_ms < start
