"""What every Kafka client of ours shares: its configuration, the `librdkafka` logger, and the
broker's error and error text."""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaError, KafkaException

from payment_worker.exceptions import InfrastructureUnavailable
from payment_worker.logs import LIBRDKAFKA

# Consumers: no auto commit (offsets are committed after the database), no auto offset store,
# a short queue backoff so a draining consumer does not stall.
CONSUMER_DEFAULTS: dict[str, Any] = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "auto.offset.reset": "earliest",
    "fetch.queue.backoff.ms": 10,
    "session.timeout.ms": 10000,
    "heartbeat.interval.ms": 1000,
}
# Under the next-generation group protocol (group.protocol=consumer, KIP-848) the broker sets the
# session and heartbeat, and librdkafka refuses a consumer that names them.
_CLASSIC_GROUP_ONLY = ("session.timeout.ms", "heartbeat.interval.ms")


def consumer_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """CONSUMER_DEFAULTS for a consumer configured with `config` (PAYMENT_KAFKA_CONFIG)."""
    if str(config.get("group.protocol", "classic")).lower() != "consumer":
        return CONSUMER_DEFAULTS
    return {k: v for k, v in CONSUMER_DEFAULTS.items() if k not in _CLASSIC_GROUP_ONLY}


PRODUCER_DEFAULTS: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
    "message.timeout.ms": 30000,
    # A record for a topic the broker lacks is refused, never the cause of a new topic.
    "allow.auto.create.topics": False,
}


def incremental_rebalances(config: dict[str, Any]) -> bool:
    """Whether a group consumer so configured is handed partitions incrementally (the
    `cooperative-sticky` assignor, or group.protocol=consumer): its rebalance callbacks then
    name only the partitions added or taken away, not the whole assignment."""
    if str(config.get("group.protocol", "classic")).lower() == "consumer":
        return True
    return "cooperative" in str(config.get("partition.assignment.strategy", "")).lower()


def fast_path_lease_s(config: dict[str, Any]) -> float:
    """How long a row handed to the producer stays its relay's: past the producer's message
    timeout, by when librdkafka has reported its delivery, one way or the other."""
    default_ms = float(PRODUCER_DEFAULTS["message.timeout.ms"])
    timeout_ms = config.get("message.timeout.ms", config.get("delivery.timeout.ms", default_ms))
    try:
        return float(timeout_ms) / 1000 + 5.0
    except (TypeError, ValueError):
        return default_ms / 1000 + 5.0


_CONSUMER_ONLY = (
    "group.",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "auto.offset.reset",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "fetch.",
    "max.poll.interval.ms",
    "partition.assignment.strategy",
    "isolation.level",
    "auto.commit.interval.ms",
    "queued.",
    "check.crcs",
    "enable.partition.eof",
)


def for_producer(config: dict[str, Any]) -> dict[str, Any]:
    """PAYMENT_KAFKA_CONFIG applies to every client; a producer skips the consumer-only keys
    (librdkafka would warn about each). Every client of ours is configured through here or
    for_consumer: both hand librdkafka's lines to the `librdkafka` logger (logs.py)."""
    return {
        "logger": LIBRDKAFKA,
        **{k: v for k, v in config.items() if not k.startswith(_CONSUMER_ONLY)},
    }


_PRODUCER_ONLY = (
    "linger.ms",
    "queue.buffering.",
    "batch.num.messages",
    "batch.size",
    "acks",
    "request.required.acks",
    "enable.idempotence",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "compression.",
    "retries",
    "message.send.max.retries",
    "transactional.",
    "partitioner",
    "sticky.partitioning.linger.ms",
    "enable.gapless.guarantee",
)


def for_consumer(config: dict[str, Any]) -> dict[str, Any]:
    """PAYMENT_KAFKA_CONFIG without the producer-only keys (librdkafka would warn)."""
    return {
        "logger": LIBRDKAFKA,
        **{k: v for k, v in config.items() if not k.startswith(_PRODUCER_ONLY)},
    }


class BrokerUnavailable(InfrastructureUnavailable):
    """The broker could not be reached or refused the request."""


def kafka_error(exc: KafkaException) -> KafkaError | None:
    """The KafkaError a KafkaException carries (None: it carries something else)."""
    error = exc.args[0] if exc.args else None
    return error if isinstance(error, KafkaError) else None


def kafka_text(exc: KafkaException) -> str:
    """The message of a KafkaException's KafkaError, without its repr around it."""
    error = kafka_error(exc)
    return str(error.str()) if error is not None else str(exc)
