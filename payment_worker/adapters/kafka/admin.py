"""The cluster's metadata: creating topics, counting partitions, checking the broker."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from payment_worker.adapters.kafka.config import BrokerUnavailable, for_producer, kafka_text

log = structlog.get_logger("payment_worker.kafka")


def ensure_topics(
    bootstrap: dict[str, Any],
    topics: dict[str, int],
    timeout_s: float = 10.0,
    replication_factor: int = 1,
) -> list[str]:
    """Create the topics that do not exist yet (name -> partitions); returns those created.
    A replication factor of -1 is the broker's `default.replication.factor`."""
    admin = AdminClient(for_producer(bootstrap))
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    missing = [
        NewTopic(name, num_partitions=n, replication_factor=replication_factor)
        for name, n in topics.items()
        if name not in existing
    ]
    created = []
    if missing:
        for name, future in admin.create_topics(missing, operation_timeout=timeout_s).items():
            try:
                future.result(timeout=timeout_s)
                created.append(name)
            except KafkaException as exc:
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise BrokerUnavailable(f"cannot create topic {name}: {exc}") from exc
    return created


def _partition_counts(metadata: Any) -> dict[str, int]:
    """Each topic's partition count, from a metadata answer (topics in error left out)."""
    return {
        name: len(topic.partitions)
        for name, topic in metadata.topics.items()
        if topic.error is None and topic.partitions
    }


class TopicDirectory:
    """TopicDirectoryPort over the cluster's metadata, cached. Always the whole cluster's, never
    a request for one topic: a broker that creates topics on demand (Tansu; Apache Kafka with
    auto.create.topics.enable) would create the topic a hostile header names. A stale cache
    still answers while a refresh runs behind it; a miss waits for a refresh, at most one per
    `min_refresh_s`, so an attacker's unknown topics cost one metadata request a second."""

    def __init__(
        self,
        config: dict[str, Any],
        *,
        max_age_s: float = 30.0,
        min_refresh_s: float = 1.0,
        timeout_s: float = 5.0,
    ) -> None:
        self.config = for_producer(config)
        self.max_age_s = max_age_s
        self.min_refresh_s = min_refresh_s
        self.timeout_s = timeout_s
        self._admin: AdminClient | None = None
        self._partitions: dict[str, int] = {}
        self._fetched_at: float | None = None
        self._attempted_at = -1e18
        self._refresh: asyncio.Future[None] | None = None

    def _fetch(self) -> dict[str, int]:
        if self._admin is None:
            self._admin = AdminClient(self.config)
        try:
            metadata = self._admin.list_topics(timeout=self.timeout_s)
        except KafkaException as exc:
            raise BrokerUnavailable(f"cannot read the cluster's topics: {exc}") from exc
        finally:
            self._admin.poll(0)  # hands librdkafka's queued log lines to the logger
        return _partition_counts(metadata)

    async def _refreshed(self) -> None:
        if self._refresh is None or self._refresh.done():
            self._attempted_at = time.monotonic()
            self._refresh = asyncio.ensure_future(self._do_refresh())
        await asyncio.shield(self._refresh)

    async def _do_refresh(self) -> None:
        self._partitions = await asyncio.to_thread(self._fetch)
        self._fetched_at = time.monotonic()

    async def partitions(self, topic: str) -> int | None:
        now = time.monotonic()
        if self._fetched_at is None:
            await self._refreshed()
        elif now - self._fetched_at > self.max_age_s and (
            self._refresh is None or self._refresh.done()
        ):
            refresh = asyncio.ensure_future(self._refreshed())
            refresh.add_done_callback(_consume_error)
        count = self._partitions.get(topic)
        if count is None and now - self._attempted_at >= self.min_refresh_s:
            await self._refreshed()
            count = self._partitions.get(topic)
        return count


def _consume_error(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("topic_metadata_refresh_failed", error=str(future.exception()))


def broker_problem(config: dict[str, Any], timeout_s: float = 3.0) -> str | None:
    """Why the cluster's metadata cannot be read (None: it can)."""
    try:
        AdminClient(for_producer(config)).list_topics(timeout=timeout_s)
    except KafkaException as exc:
        return kafka_text(exc)
    return None


def broker_reachable(config: dict[str, Any], timeout_s: float = 3.0) -> bool:
    return broker_problem(config, timeout_s) is None


def topic_partitions(
    config: dict[str, Any], names: list[str], timeout_s: float = 10.0
) -> dict[str, int | None]:
    """Each topic's partition count, None for a topic the cluster does not have."""
    try:
        metadata = AdminClient(for_producer(config)).list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise BrokerUnavailable(kafka_text(exc)) from exc
    found = _partition_counts(metadata)
    return {name: found.get(name) for name in names}
