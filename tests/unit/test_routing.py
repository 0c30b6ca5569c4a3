"""Reply routes from command headers (domain/routing.py): what is honoured, and every header
that is refused, with its `Invalid header <name>: ` message (contract section 2)."""

from __future__ import annotations

import json
import re
import struct

import pytest

from payment_worker.domain.routing import (
    InvalidHeader,
    ReplyRoute,
    RouteRules,
    checked_route,
    needs_broker_check,
    route_from_headers,
    unknown_route,
    valid_traceparent,
)

COMMAND_ID = "5b6a9b7e-3c1d-4e2f-9a8b-7c6d5e4f3a2b"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
RULES = RouteRules(
    default_topic="payment-replies",
    own_topics=frozenset({"process-payment", "payment-succeeded", "payment-failed", "dlq"}),
    topic_pattern=re.compile(r"payment-replies|shim-.+|spring-.+|ours"),
)
CARD = "4111111111111111"


def route(headers: list[tuple[str, bytes | None]]) -> ReplyRoute:
    found = route_from_headers(headers, COMMAND_ID, RULES)
    assert isinstance(found, ReplyRoute), found
    return found


def refused(headers: list[tuple[str, bytes | None]]) -> InvalidHeader:
    found = route_from_headers(headers, COMMAND_ID, RULES)
    assert isinstance(found, InvalidHeader), found
    return found


def test_route_defaults_to_replies_topic_and_command_id() -> None:
    """Without headers the reply goes to the replies topic, any partition, correlated by
    command id."""
    found = route([])
    assert (found.topic, found.partition, found.correlation_id) == (
        "payment-replies",
        None,
        COMMAND_ID,
    )


def test_route_follows_reply_to_partition_and_correlation_id() -> None:
    """`reply-to`, `reply-partition` and `correlation-id` are honoured as given."""
    found = route(
        [("reply-to", b"shim-a"), ("reply-partition", b"7"), ("correlation-id", b"corr-77")]
    )
    assert (found.topic, found.partition, found.correlation_id) == ("shim-a", 7, "corr-77")


def test_route_reads_spring_reply_topic_and_big_endian_partition() -> None:
    """Spring's kafka_replyTopic and 4-byte big-endian kafka_replyPartition route the reply,
    and are kept byte for byte to be echoed."""
    found = route(
        [("kafka_replyTopic", b"spring-r"), ("kafka_replyPartition", struct.pack(">i", 3))]
    )
    assert (found.topic, found.partition) == ("spring-r", 3)
    assert (found.spring_reply_topic, found.spring_reply_partition) == (
        b"spring-r",
        struct.pack(">i", 3),
    )


def test_route_prefers_our_headers_over_springs() -> None:
    """`reply-to`/`reply-partition` win over Spring's headers when both are present."""
    found = route(
        [
            ("kafka_replyTopic", b"spring-r"),
            ("kafka_replyPartition", struct.pack(">i", 3)),
            ("reply-to", b"ours"),
            ("reply-partition", b"1"),
        ]
    )
    assert (found.topic, found.partition) == ("ours", 1)


def test_a_repeated_header_with_the_same_value_is_honoured() -> None:
    """The same routing header twice with one value is no ambiguity."""
    assert route([("reply-to", b"ours"), ("reply-to", b"ours")]).topic == "ours"


def test_unknown_headers_are_ignored() -> None:
    """Headers that are not routing headers play no part, whatever they hold."""
    assert route([("x-anything", b"\xff" * 5000), ("Reply-To", b"own")]).topic == (
        "payment-replies"
    )


@pytest.mark.parametrize(
    ("headers", "name", "why"),
    [
        ([("reply-partition", b"99999999999")], "reply-partition", "ASCII decimal"),
        ([("reply-partition", b"2147483648")], "reply-partition", "ASCII decimal"),
        ([("reply-partition", "²".encode())], "reply-partition", "ASCII decimal"),
        ([("reply-partition", "١".encode())], "reply-partition", "ASCII decimal"),
        ([("reply-partition", b"-1")], "reply-partition", "ASCII decimal"),
        ([("reply-partition", b" 1")], "reply-partition", "ASCII decimal"),
        ([("reply-partition", b"")], "reply-partition", "ASCII decimal"),
        ([("reply-partition", b"9" * 5000)], "reply-partition", "ASCII decimal"),
        ([("reply-partition", None)], "reply-partition", "has no value"),
        ([("kafka_replyPartition", b"\x00\x00\x01")], "kafka_replyPartition", "4-byte"),
        ([("kafka_replyPartition", b"\x00" * 8)], "kafka_replyPartition", "4-byte"),
        ([("kafka_replyPartition", struct.pack(">i", -2))], "kafka_replyPartition", "at least 0"),
        ([("reply-to", b"payment-succeeded")], "reply-to", "worker's own topics"),
        ([("reply-to", b"payment-failed")], "reply-to", "worker's own topics"),
        ([("reply-to", b"dlq")], "reply-to", "worker's own topics"),
        ([("reply-to", b"process-payment")], "reply-to", "worker's own topics"),
        ([("kafka_replyTopic", b"payment-failed")], "kafka_replyTopic", "worker's own topics"),
        ([("reply-to", b"elsewhere")], "reply-to", "PAYMENT_REPLY_TOPIC_PATTERN"),
        ([("reply-to", b"shim-a b")], "reply-to", "legal Kafka topic name"),
        ([("reply-to", b".")], "reply-to", "legal Kafka topic name"),
        ([("reply-to", b"..")], "reply-to", "legal Kafka topic name"),
        ([("reply-to", b"")], "reply-to", "legal Kafka topic name"),
        ([("reply-to", b"shim-" + b"x" * 245)], "reply-to", "legal Kafka topic name"),
        ([("reply-to", "shim-é".encode())], "reply-to", "legal Kafka topic name"),
        ([("reply-to", b"shim-\xff")], "reply-to", "legal Kafka topic name"),
        ([("reply-to", b"shim-a"), ("reply-to", b"shim-b")], "reply-to", "more than once"),
        ([("correlation-id", b"x" * 256)], "correlation-id", "longer than 255 bytes"),
        ([("correlation-id", b"\xc3\x28")], "correlation-id", "not UTF-8"),
        ([("correlation-id", CARD.encode())], "correlation-id", "card number"),
        ([("kafka_correlationId", f"id {CARD}".encode())], "kafka_correlationId", "card number"),
        ([("kafka_correlationId", b"7" * 256)], "kafka_correlationId", "longer than 255 bytes"),
        ([("kafka_correlationId", b"1" * 1_000_000)], "kafka_correlationId", "longer than 255"),
    ],
)
def test_a_bad_routing_header_is_refused_with_its_name_and_why(
    headers: list[tuple[str, bytes | None]], name: str, why: str
) -> None:
    """Each header the contract constrains, broken one way at a time, is refused with the
    message `Invalid header <name>: <why>` and a fallback on the default replies topic."""
    bad = refused(headers)
    assert bad.name == name
    assert bad.message.startswith(f"Invalid header {name}: ")
    assert why in bad.why
    assert (bad.fallback.topic, bad.fallback.partition) == ("payment-replies", None)


@pytest.mark.parametrize("name", ["reply-to", "kafka_replyTopic"])
@pytest.mark.parametrize("topic", [b"_schemas", b"__consumer_offsets", b"_confluent-command"])
def test_an_internal_topic_is_refused_even_when_the_pattern_allows_it(
    name: str, topic: bytes
) -> None:
    """With the default pattern `.+`, a reply topic whose name starts with `_` (broker and
    registry internals) is still a bad header, answered on the default replies topic."""
    rules = RouteRules(own_topics=RULES.own_topics)
    bad = route_from_headers([(name, topic)], COMMAND_ID, rules)
    assert isinstance(bad, InvalidHeader)
    assert bad.name == name
    assert bad.why == "replies never go to internal topics (names starting with '_')"
    assert (bad.fallback.topic, bad.fallback.partition) == ("payment-replies", None)


def test_the_largest_partition_and_a_255_byte_correlation_id_are_accepted() -> None:
    """The limits themselves are allowed: partition 2147483647, a correlation id of 255 bytes."""
    found = route([("reply-partition", b"2147483647"), ("correlation-id", "é".encode() * 127)])
    assert found.partition == 2**31 - 1
    assert found.correlation_id == "é" * 127


def test_the_fallback_keeps_a_valid_correlation_id() -> None:
    """A bad reply-to is answered on the default topic, still correlated as the caller asked."""
    bad = refused([("correlation-id", b"corr-1"), ("reply-to", b"payment-failed")])
    assert bad.fallback.correlation_id == "corr-1"


def test_the_fallback_of_a_bad_correlation_id_is_the_command_id() -> None:
    """A correlation id that cannot be used falls back to the command id."""
    assert refused([("correlation-id", b"\xff")]).fallback.correlation_id == COMMAND_ID


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        (TRACEPARENT, True),
        ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future", True),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", False),
        ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", False),
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", False),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", False),
        ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01", False),
        ("garbage", False),
        ("\xff", False),
    ],
)
def test_an_invalid_traceparent_is_ignored_not_refused(value: str, kept: bool) -> None:
    """A valid W3C traceparent is carried; an invalid one is dropped (a new trace starts), and
    the command is routed as usual."""
    found = route([("traceparent", value.encode("utf-8", "surrogateescape"))])
    assert found.traceparent == (value if kept else None)
    assert (valid_traceparent(value.encode("utf-8", "surrogateescape")) is not None) is kept


def test_a_route_to_an_unknown_topic_or_partition_is_refused() -> None:
    """The broker's answer decides last: no such topic, or no such partition, is a bad route."""
    asked = [("reply-to", b"shim-a"), ("reply-partition", b"5")]
    found = route(asked)
    assert needs_broker_check(found, RULES)
    missing = unknown_route(found, None, asked, RULES)
    assert missing is not None and missing.name == "reply-to"
    assert "does not exist" in missing.why
    small = unknown_route(found, 4, asked, RULES)
    assert small is not None and small.name == "reply-partition"
    assert unknown_route(found, 6, asked, RULES) is None


def test_a_spring_route_names_springs_header_when_refused() -> None:
    """An unknown Spring reply topic is reported under kafka_replyTopic."""
    asked = [("kafka_replyTopic", b"spring-x")]
    bad = unknown_route(route(asked), None, asked, RULES)
    assert bad is not None and bad.name == "kafka_replyTopic"


def test_the_default_topic_without_partition_needs_no_broker_check() -> None:
    """The usual command (no routing header, or only a correlation id) costs no lookup."""
    assert not needs_broker_check(route([("correlation-id", b"c")]), RULES)


def test_reply_route_json_round_trip() -> None:
    """A ReplyRoute (Spring's raw bytes included) survives to_json/from_json unchanged."""
    original = ReplyRoute(
        "replies", 2, "corr", b"\x01\x02\xff", b"spring-replies", struct.pack(">i", 2), TRACEPARENT
    )
    assert ReplyRoute.from_json(json.loads(json.dumps(original.to_json()))) == original


@pytest.mark.parametrize(
    "stored",
    [
        {"topic": "shim-a", "partition": 99999999999, "correlation_id": "c"},
        {"topic": "payment-failed", "partition": None, "correlation_id": "c"},
        {"topic": "bad topic", "partition": None, "correlation_id": "c"},
        {"topic": "_schemas", "partition": None, "correlation_id": "c"},
        {"partition": 1},
        None,
    ],
)
def test_a_stored_route_that_breaks_the_rules_becomes_the_default(stored: object) -> None:
    """A route read back from the ledger (for the reconciler) that today's rules refuse, or
    that is unreadable, is replaced by the default route: the payment is still answered."""
    found = checked_route(stored, COMMAND_ID, RULES)  # type: ignore[arg-type]
    assert (found.topic, found.partition, found.correlation_id) == (
        "payment-replies",
        None,
        COMMAND_ID,
    )


def test_a_stored_route_that_keeps_the_rules_is_used() -> None:
    """A good stored route comes back as it was stored."""
    original = ReplyRoute("shim-a", 3, "corr")
    assert checked_route(original.to_json(), COMMAND_ID, RULES) == original


def test_a_correlation_id_with_nul_survives_the_ledger_as_hex() -> None:
    """A NUL is valid UTF-8 (so a valid correlation id), but jsonb cannot hold it: the route's
    JSON keeps such an id as hex, and reads back the same id."""
    original = route([("correlation-id", b"a\x00b")])
    stored = original.to_json()
    assert "\x00" not in json.dumps(stored) and "correlation_id" not in stored
    assert ReplyRoute.from_json(json.loads(json.dumps(stored))) == original
