"""`payment-worker topics` (entrypoints/topics.py) against the real broker: what is missing
is created with the configured partitions, what exists is left alone and reported, a dry run
creates nothing, and a broker that is not there is one line."""

from __future__ import annotations

import uuid

import pytest

from payment_worker.adapters.kafka import ensure_topics, topic_partitions
from payment_worker.config import load_settings
from payment_worker.devstack.broker import free_port
from payment_worker.entrypoints.topics import report_topics
from payment_worker.exceptions import PaymentWorkerError

pytestmark = pytest.mark.integration


def settings_for(broker: str, **extra: object):  # type: ignore[no-untyped-def]
    suffix = uuid.uuid4().hex[:8]
    return load_settings(
        kafka_bootstrap_servers=broker,
        topic_commands=f"commands-{suffix}",
        topic_succeeded=f"succeeded-{suffix}",
        topic_failed=f"failed-{suffix}",
        topic_replies=f"replies-{suffix}",
        topic_dlq=f"dlq-{suffix}",
        **extra,
    )


def names(settings) -> list[str]:  # type: ignore[no-untyped-def]
    return settings.own_topics()


def test_a_dry_run_says_what_it_would_create_and_creates_nothing(broker: str) -> None:
    """--dry-run reports each missing topic with the partitions it would get, and creates none."""
    settings = settings_for(broker, topic_partitions=3)
    lines = report_topics(settings, dry_run=True)
    assert len(lines) == 5
    assert all("would create  3 partitions" in line for line in lines)
    assert set(topic_partitions(settings.kafka_common(), names(settings)).values()) == {None}


def test_missing_topics_are_created_and_existing_ones_left_as_they_are(broker: str) -> None:
    """The commands topic exists with 2 partitions: it stays at 2 and is reported; the four
    others are created with PAYMENT_TOPIC_PARTITIONS; a second run creates nothing."""
    settings = settings_for(broker, topic_partitions=4)
    ensure_topics({"bootstrap.servers": broker}, {settings.topic_commands: 2})
    first = report_topics(settings)
    assert first[0].split() == [
        settings.topic_commands,
        "exists",
        "2",
        "partitions",
        "(left",
        "as",
        "it",
        "is)",
    ]
    assert all(
        "created  4 partitions, replication factor the broker's default" in line
        for line in first[1:]
    )
    assert topic_partitions(settings.kafka_common(), names(settings)) == dict(
        zip(names(settings), [2, 4, 4, 4, 4], strict=True)
    )
    again = report_topics(settings)
    assert all(" exists " in line for line in again)


def test_the_replication_factor_asked_for_is_the_one_used(broker: str) -> None:
    """PAYMENT_TOPIC_REPLICATION is passed to the broker and reported."""
    settings = settings_for(broker, topic_partitions=1, topic_replication=1)
    assert all("replication factor 1" in line for line in report_topics(settings))


def test_a_broker_that_is_not_there_is_one_line_naming_the_variable() -> None:
    """No broker: one line naming PAYMENT_KAFKA_BOOTSTRAP_SERVERS and the client's error."""
    settings = settings_for(f"127.0.0.1:{free_port()}")
    with pytest.raises(PaymentWorkerError) as info:
        report_topics(settings, timeout_s=2.0)
    message = str(info.value)
    assert message.startswith(
        "Kafka is not reachable at PAYMENT_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:"
    )
    assert "\n" not in message
