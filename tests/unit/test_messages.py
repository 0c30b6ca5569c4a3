"""Outgoing messages (service/messages.py): the CloudEvents and correlation headers on replies
and events, and dead letters."""

from __future__ import annotations

import struct
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from payment_worker.adapters.avro_codec import AvroCodec, SchemaSet
from payment_worker.domain.model import (
    Command,
    GatewayResult,
    Outcome,
    Payment,
    PaymentStatus,
    Reply,
    reply,
)
from payment_worker.domain.routing import ReplyRoute, RouteRules, route_from_headers
from payment_worker.service.messages import (
    DEAD_LETTER_FIELD_BYTES,
    DEAD_LETTER_RECORD_BYTES,
    MessageFactory,
    Topics,
    _micros,
    ce_time,
)
from payment_worker.service.ports import InboundRecord, OutboxMessage

COMMAND_ID = "5b6a9b7e-3c1d-4e2f-9a8b-7c6d5e4f3a2b"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def codec() -> AvroCodec:
    return AvroCodec(SchemaSet())


@pytest.fixture
def factory(codec: AvroCodec) -> MessageFactory:
    return MessageFactory(codec, Topics())


def a_command() -> Command:
    return Command(
        COMMAND_ID,
        str(uuid.uuid4()),
        str(uuid.uuid4()),
        None,
        Decimal("10.50"),
        "USD",
        "credit_card",
        AT,
    )


def a_payment(command: Command, result: GatewayResult | None = None) -> Payment:
    pending = Payment(
        id=uuid.uuid4(),
        order_id=uuid.UUID(command.order_id),
        customer_id=uuid.UUID(command.customer_id),
        reservation_id=None,
        amount=command.amount,
        currency="USD",
        payment_method="credit_card",
        status=PaymentStatus.PENDING,
        created_at=AT,
        command_id=uuid.UUID(command.command_id),
    )
    result = result or GatewayResult(
        True,
        "txn_0123456789abcdef",
        None,
        None,
        None,
        "Success - TransactionId: txn_0123456789abcdef",
    )
    return pending.finalized(result, AT)


DECLINE = GatewayResult(
    False,
    None,
    "CARD_DECLINED",
    "Your card was declined",
    "card_declined",
    "Failed - CARD_DECLINED: Your card was declined",
)


def headers_of(message: OutboxMessage) -> dict[str, bytes]:
    names = [name for name, _ in message.headers]
    assert len(names) == len(set(names)), f"repeated headers: {names}"
    return dict(message.headers)


def default_route(**overrides: object) -> ReplyRoute:
    """The route of a command without headers, with `overrides` applied."""
    fields: dict[str, object] = {
        "topic": "payment-replies",
        "partition": None,
        "correlation_id": COMMAND_ID,
    }
    fields.update(overrides)
    return ReplyRoute(**fields)  # type: ignore[arg-type]


# -- replies -----------------------------------------------------------------------------------


def test_reply_goes_to_the_routes_topic_and_partition(factory: MessageFactory) -> None:
    """The reply is addressed to the route's topic and partition, keyed by order id."""
    command = a_command()
    message = factory.reply(command, ReplyRoute("shim-replies", 4, "c"), reply(Outcome.CONFLICT))
    assert (message.kind, message.topic, message.partition, message.key) == (
        "reply",
        "shim-replies",
        4,
        command.order_id.encode(),
    )


def test_reply_cloudevents_headers(factory: MessageFactory) -> None:
    """A reply carries ce_specversion 1.0, ce_type reply.v1, ce_source, ce_subject = order id."""
    command = a_command()
    headers = headers_of(factory.reply(command, default_route(), reply(Outcome.ORDER_NOT_FOUND)))
    assert headers["ce_specversion"] == b"1.0"
    assert headers["ce_type"] == b"ticketing.payment.reply.v1"
    assert headers["ce_source"] == b"payment-worker"
    assert headers["ce_subject"] == command.order_id.encode()
    uuid.UUID(headers["ce_id"].decode())
    assert datetime.fromisoformat(headers["ce_time"].decode()).tzinfo is not None


def test_reply_correlation_and_causation_headers(factory: MessageFactory) -> None:
    """A reply carries correlation-id from the route and causation-id = the command id."""
    headers = headers_of(
        factory.reply(
            a_command(), default_route(correlation_id="corr-9"), reply(Outcome.ERROR, "x")
        )
    )
    assert (headers["correlation-id"], headers["causation-id"]) == (b"corr-9", COMMAND_ID.encode())


def test_reply_carries_traceparent(factory: MessageFactory) -> None:
    """The command's traceparent is carried onto the reply."""
    message = factory.reply(
        a_command(), default_route(traceparent=TRACEPARENT), reply(Outcome.ERROR, "x")
    )
    assert headers_of(message)["traceparent"] == TRACEPARENT.encode()


def test_reply_echoes_spring_headers(factory: MessageFactory) -> None:
    """kafka_correlationId, kafka_replyTopic and kafka_replyPartition come back byte for byte."""
    spring = {
        "kafka_correlationId": b"\x00\x01\x02\x03",
        "kafka_replyTopic": b"spring",
        "kafka_replyPartition": struct.pack(">i", 5),
    }
    route = route_from_headers(list(spring.items()), COMMAND_ID, RouteRules())
    assert isinstance(route, ReplyRoute)
    headers = headers_of(factory.reply(a_command(), route, reply(Outcome.ERROR, "x")))
    assert {name: headers.get(name) for name in spring} == spring


def test_reply_ids_are_unique_per_message(factory: MessageFactory) -> None:
    """Two replies get two different ce_id values."""
    command = a_command()
    first = headers_of(factory.reply(command, default_route(), reply(Outcome.ERROR, "x")))
    second = headers_of(factory.reply(command, default_route(), reply(Outcome.ERROR, "x")))
    assert first["ce_id"] != second["ce_id"]


def test_reply_value_holds_outcome_and_payment(factory: MessageFactory, codec: AvroCodec) -> None:
    """The reply value decodes to the outcome, status, duplicate flag and the camelCase payment."""
    command = a_command()
    payment = a_payment(command)
    message = factory.reply(
        command,
        default_route(correlation_id="corr"),
        Reply(Outcome.SUCCEEDED, None, payment, duplicate=True),
    )
    record = codec.decode("PaymentReply", message.value)
    assert (record["commandId"], record["correlationId"], record["orderId"]) == (
        COMMAND_ID,
        "corr",
        command.order_id,
    )
    assert (record["outcome"], record["success"], record["httpStatus"], record["duplicate"]) == (
        "SUCCEEDED",
        True,
        200,
        True,
    )
    assert record["payment"]["id"] == str(payment.id)
    assert record["payment"]["amount"] == Decimal("10.50")
    assert record["payment"]["transactionId"] == "txn_0123456789abcdef"


# -- events ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("result", "topic", "ce_type", "schema"),
    [
        (None, "payment-succeeded", b"ticketing.payment.succeeded.v1", "PaymentSucceeded"),
        (DECLINE, "payment-failed", b"ticketing.payment.failed.v1", "PaymentFailed"),
    ],
)
def test_event_topic_type_and_schema_follow_the_payment_status(
    factory: MessageFactory,
    codec: AvroCodec,
    result: GatewayResult | None,
    topic: str,
    ce_type: bytes,
    schema: str,
) -> None:
    """A succeeded payment is a PaymentSucceeded on payment-succeeded, a failed one a
    PaymentFailed on payment-failed, each with its ce_type."""
    payment = a_payment(a_command(), result)
    message = factory.event(payment, default_route())
    assert (message.kind, message.topic) == ("event", topic)
    assert headers_of(message)["ce_type"] == ce_type
    assert codec.decode(schema, message.value)["paymentId"] == str(payment.id)


def test_event_ce_id_is_the_event_id(factory: MessageFactory, codec: AvroCodec) -> None:
    """The event's ce_id header, its eventId field and OutboxMessage.event_id are one id."""
    event_id = uuid.uuid4()
    message = factory.event(a_payment(a_command()), default_route(), event_id)
    assert headers_of(message)["ce_id"] == str(event_id).encode()
    assert codec.decode("PaymentSucceeded", message.value)["eventId"] == str(event_id)
    assert message.event_id == event_id


def test_event_headers_name_order_correlation_and_command(factory: MessageFactory) -> None:
    """An event carries ce_specversion, ce_source, ce_time, ce_subject = order id,
    correlation-id and causation-id = command id, and the traceparent."""
    command = a_command()
    route = default_route(correlation_id="corr-5", traceparent=TRACEPARENT)
    headers = headers_of(factory.event(a_payment(command), route))
    assert headers["ce_specversion"] == b"1.0"
    assert headers["ce_source"] == b"payment-worker"
    assert headers["ce_subject"] == command.order_id.encode()
    assert headers["correlation-id"] == b"corr-5"
    assert headers["causation-id"] == COMMAND_ID.encode()
    assert headers["traceparent"] == TRACEPARENT.encode()
    assert datetime.fromisoformat(headers["ce_time"].decode()).tzinfo is not None


def test_event_is_keyed_by_order_id(factory: MessageFactory) -> None:
    """Events are keyed by the canonical order id."""
    command = a_command()
    assert factory.event(a_payment(command), default_route()).key == command.order_id.encode()


def test_no_event_for_a_pending_payment(factory: MessageFactory) -> None:
    """A payment still pending has no event: asking for one raises ValueError."""
    command = a_command()
    pending = Payment(
        uuid.uuid4(),
        uuid.UUID(command.order_id),
        uuid.uuid4(),
        None,
        Decimal("1.00"),
        "USD",
        "x",
        PaymentStatus.PENDING,
        AT,
        uuid.uuid4(),
    )
    with pytest.raises(ValueError):
        factory.event(pending, default_route())


# -- dead letters ------------------------------------------------------------------------------


def test_dead_letter_keeps_the_record_and_adds_why(factory: MessageFactory) -> None:
    """A dead letter keeps key, value and headers and adds dlq-error/reason/topic/partition/
    offset, on the DLQ topic."""
    record = InboundRecord(
        "process-payment",
        3,
        1234,
        b"key-1",
        b"\xc3\x01garbage",
        [("traceparent", TRACEPARENT.encode()), ("x-custom", b"\xff")],
    )
    message = factory.dead_letter(record, "undecodable", "malformed Avro body")
    assert (message.kind, message.topic, message.key, message.value) == (
        "dead_letter",
        "process-payment-dlq",
        b"key-1",
        b"\xc3\x01garbage",
    )
    assert message.headers[:2] == record.headers
    assert dict(message.headers[2:]) == {
        "dlq-error": b"malformed Avro body",
        "dlq-reason": b"undecodable",
        "dlq-topic": b"process-payment",
        "dlq-partition": b"3",
        "dlq-offset": b"1234",
    }


def test_dead_letter_of_a_null_record_keeps_the_nulls(factory: MessageFactory) -> None:
    """A tombstone (null key and value) is dead-lettered with null key and value."""
    message = factory.dead_letter(InboundRecord("t", 0, 0, None, None, []), "undecodable", "empty")
    assert (message.key, message.value) == (None, None)


def test_a_dead_letters_fields_are_capped_before_they_are_searched(
    factory: MessageFactory,
) -> None:
    """A 1 MiB digit-run value is cut to its cap (what was not searched is not written), a
    card number crossing the cut is masked, and `dlq-truncated` says what was cut."""
    value = b"1" * (DEAD_LETTER_FIELD_BYTES - 8) + b"4111111111111111" + b"1" * (1 << 20)
    record = InboundRecord("process-payment", 0, 7, b"k", value, [("x-a", b"ok")])
    message = factory.dead_letter(record, "undecodable", "huge")
    assert message.value is not None and len(message.value) == DEAD_LETTER_FIELD_BYTES
    assert message.value.endswith(b"*" * 8)
    assert headers_of(message)["dlq-truncated"] == b"value"
    assert headers_of(message)["dlq-redacted"] == b"card-number"
    assert headers_of(message)["x-a"] == b"ok"


def test_a_dead_letters_headers_share_one_budget(factory: MessageFactory) -> None:
    """Many large headers are written until the record's budget is spent; the rest are not
    (never searched), and `dlq-truncated: headers` says so. Small records are untouched."""
    big = [(f"h{i}", b"2" * DEAD_LETTER_FIELD_BYTES) for i in range(16)]
    message = factory.dead_letter(InboundRecord("t", 0, 0, None, b"v", big), "undecodable", "x")
    kept = [h for h in message.headers if h[0].startswith("h")]
    written = sum(len(v or b"") + len(n) for n, v in kept)
    assert written <= DEAD_LETTER_RECORD_BYTES and len(kept) < len(big)
    assert headers_of(message)["dlq-truncated"] == b"headers"
    small = factory.dead_letter(InboundRecord("t", 0, 0, b"k", b"v", [("a", b"b")]), "x", "y")
    assert "dlq-truncated" not in headers_of(small)


# -- helpers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "at",
    [
        datetime(2026, 11, 22, 2, 52, 1, 306646, tzinfo=UTC),
        datetime(2026, 11, 22, 2, 52, 1, 306646, tzinfo=ZoneInfo("Etc/UTC")),
        datetime(2026, 3, 29, 1, 30, tzinfo=ZoneInfo("Europe/Paris")),
        datetime(1960, 1, 1, 0, 0, 0, 1, tzinfo=timezone(timedelta(hours=-5))),
        datetime(2026, 11, 22, 2, 52, 1, 306646),
    ],
)
def test_micros_is_exact_microseconds_since_the_epoch(at: datetime) -> None:
    """Timestamps become exact integer microseconds since the epoch (naive meaning UTC),
    whatever the zone: the value fastavro's timestamp-micros would have written."""
    aware = at if at.tzinfo else at.replace(tzinfo=UTC)
    expected = (aware - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)

    assert _micros(at) == expected


@pytest.mark.parametrize(
    "nanos",
    [
        1_764_417_599_999_999_000,  # the last microsecond of a second
        1_764_417_600_000_000_000,  # the next second, exactly
        1_764_417_600_000_001_999,
        1_764_417_659_123_456_789,
        1_767_225_599_999_999_000,  # a year's last microsecond
        1_767_225_600_000_000_000,
    ],
)
def test_ce_time_is_the_instant_in_rfc3339_utc(nanos: int) -> None:
    """ce_time writes each instant (a second's last microsecond, a whole second, a year's
    boundary) in RFC 3339 UTC with all six digits of microseconds, and it reads back exactly."""
    expected = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=nanos // 1000)
    text = ce_time(expected)
    assert text.endswith("Z") and len(text) == len("2026-11-29T12:00:00.000000Z")
    assert datetime.fromisoformat(text.replace("Z", "+00:00")) == expected
