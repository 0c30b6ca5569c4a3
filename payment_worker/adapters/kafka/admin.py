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
    auto.create.topics.enable) would create the topic a hostile header names.

    A hit answers from the cache (a stale cache answers while a refresh runs behind it). A miss
    is judged on metadata fetched after the record was read (contract section 2: a topic
    created just before its command is never refused): it waits for a fetch begun at or after
    `read_at`, unless the cache already comes from one; and since a broker lists a topic a
    moment after it acknowledged creating it, a miss is confirmed by one more fetch begun
    `settle_s` later. Misses share those fetches, so a batch of records naming unknown topics
    costs two metadata requests, not two each."""

    def __init__(
        self,
        config: dict[str, Any],
        *,
        max_age_s: float = 30.0,
        settle_s: float = 0.5,
        timeout_s: float = 5.0,
    ) -> None:
        self.config = for_producer(config)
        self.max_age_s = max_age_s
        self.settle_s = settle_s
        self.timeout_s = timeout_s
        self.fetches = 0  # metadata requests made (a figure for tests and diagnostics)
        self._admin: AdminClient | None = None
        self._partitions: dict[str, int] = {}
        self._fetched_from: float | None = None  # when the fetch behind the cache began
        self._refresh: asyncio.Future[None] | None = None
        self._refresh_from = 0.0  # when the fetch in `_refresh` began

    def _fetch(self) -> dict[str, int]:
        if self._admin is None:
            self._admin = AdminClient(self.config)
        self.fetches += 1
        try:
            metadata = self._admin.list_topics(timeout=self.timeout_s)
        except KafkaException as exc:
            raise BrokerUnavailable(f"cannot read the cluster's topics: {exc}") from exc
        finally:
            self._admin.poll(0)  # hands librdkafka's queued log lines to the logger
        return _partition_counts(metadata)

    def _start_refresh(self) -> asyncio.Future[None]:
        self._refresh_from = time.monotonic()
        self._refresh = asyncio.ensure_future(self._do_refresh(self._refresh_from))
        # Whoever awaits it gets its error; this keeps one nobody awaited from being reported
        # as never retrieved.
        self._refresh.add_done_callback(_retrieve)
        return self._refresh

    async def _do_refresh(self, began: float) -> None:
        partitions = await asyncio.to_thread(self._fetch)
        self._partitions, self._fetched_from = partitions, began

    async def _fetched_since(self, read_at: float) -> None:
        """Return once the cache comes from a fetch begun at or after `read_at`."""
        wait = read_at - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        while self._fetched_from is None or self._fetched_from < read_at:
            refresh = self._refresh
            if refresh is not None and not refresh.done() and self._refresh_from < read_at:
                # Begun before the record was read: it may not see the record's topic. Wait it
                # out (its outcome is not ours), then fetch again.
                await asyncio.wait([refresh])
                continue
            if refresh is None or refresh.done():
                refresh = self._start_refresh()
            await asyncio.shield(refresh)

    async def partitions(self, topic: str, read_at: float | None = None) -> int | None:
        """The topic's partition count, None when the cluster has no such topic as of a fetch
        begun after `read_at` (time.monotonic() when the record was read; now by default)."""
        if read_at is None:
            read_at = time.monotonic()
        if self._fetched_from is None:
            await self._fetched_since(read_at)
        elif time.monotonic() - self._fetched_from > self.max_age_s and (
            self._refresh is None or self._refresh.done()
        ):
            self._start_refresh().add_done_callback(_consume_error)
        count = self._partitions.get(topic)
        if count is None and (self._fetched_from is None or self._fetched_from < read_at):
            await self._fetched_since(read_at)
            count = self._partitions.get(topic)
        if count is None and self._fetched_from is not None:
            await self._fetched_since(self._fetched_from + self.settle_s)
            count = self._partitions.get(topic)
        return count


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


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
