"""The worker group's lag on the commands topic: committed offsets against the watermarks,
read by a consumer that joins no group (it only asks)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from payment_worker.adapters.kafka.config import BrokerUnavailable, kafka_text
from payment_worker.adapters.kafka.consumer import unsubscribed_config
from payment_worker.domain.health import PartitionLag


class GroupLag:
    """GroupLagPort: `lags()` per partition of `topic` for `group`; every call on one thread."""

    def __init__(
        self, config: dict[str, Any], group: str, topic: str, timeout_s: float = 5.0
    ) -> None:
        # Asking a group's committed offsets needs the group id; this consumer never
        # subscribes, so it never joins the group nor moves its offsets.
        self.config = unsubscribed_config(config, group)
        self.topic = topic
        self.timeout_s = timeout_s
        self._consumer: Consumer | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="group-lag")

    def _read(self) -> list[PartitionLag]:
        if self._consumer is None:
            self._consumer = Consumer(self.config)
        consumer = self._consumer
        metadata = consumer.list_topics(self.topic, timeout=self.timeout_s)
        topic = metadata.topics.get(self.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            raise BrokerUnavailable(f"topic {self.topic} not found on the broker")
        partitions = [TopicPartition(self.topic, p) for p in sorted(topic.partitions)]
        committed = {
            tp.partition: (tp.offset if tp.offset >= 0 else None)
            for tp in consumer.committed(partitions, timeout=self.timeout_s)
        }
        lags = []
        for tp in partitions:
            low, high = consumer.get_watermark_offsets(tp, timeout=self.timeout_s, cached=False)
            lags.append(
                PartitionLag(self.topic, tp.partition, committed.get(tp.partition), high, low)
            )
        return lags

    async def lags(self) -> list[PartitionLag]:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, self._read)
        except KafkaException as exc:
            raise BrokerUnavailable(f"consumer lag: {kafka_text(exc)}") from exc

    async def close(self) -> None:
        if self._consumer is not None:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._consumer.close)
            self._consumer = None
        self._thread.shutdown(wait=False)
