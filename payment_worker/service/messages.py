"""Builds the outgoing messages (replies, events, dead letters) with the contract's headers."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from payment_worker import tracing
from payment_worker.domain.cards import MAX_CARD_SPAN, mask_card_numbers_in_bytes, redacted_prefix
from payment_worker.domain.ids import new_uuid, random_uuid
from payment_worker.domain.model import Payment, PaymentStatus, Reply
from payment_worker.domain.routing import ReplyRoute
from payment_worker.service.ports import InboundRecord, OutboxMessage

CE_SOURCE = "payment-worker"
CE_TYPE_SUCCEEDED = "ticketing.payment.succeeded.v1"
CE_TYPE_FAILED = "ticketing.payment.failed.v1"
CE_TYPE_REPLY = "ticketing.payment.reply.v1"


class Encoder(Protocol):
    async def load(self, name: str, topic: str) -> None:
        """Fetch what encoding `name` for `topic` needs (a registry's schema id); a
        PermanentError when that will never be there."""

    def encode(self, name: str, record: dict[str, Any], topic: str | None = None) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Topics:
    commands: str = "process-payment"
    succeeded: str = "payment-succeeded"
    failed: str = "payment-failed"
    replies: str = "payment-replies"
    dlq: str = "process-payment-dlq"


# A dead letter's key, value and headers are searched for card numbers before they are written,
# so each is capped first (contract section 2): at most DEAD_LETTER_FIELD_BYTES each and
# DEAD_LETTER_RECORD_BYTES in all, header names counted, in the order key, value, headers.
# What lies past a cap was not searched, so it is not written either; `dlq-truncated` names
# what was cut. The broker's default limit for a whole record is 1 MiB.
DEAD_LETTER_FIELD_BYTES = 64 * 1024
DEAD_LETTER_RECORD_BYTES = 128 * 1024
DEAD_LETTER_NAME_CHARS = 255

PAYMENT_RECORD = "ticketing.payment.v1.Payment"  # the reply's union branch, by full name

_EPOCH, _EPOCH_UTC = datetime(1970, 1, 1), datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _micros(at: datetime) -> int:
    """Microseconds since the epoch (Avro timestamp-micros), naive meaning UTC: exact integer
    arithmetic on timedeltas (fastavro's own conversion of a zone-aware datetime costs ~20 µs
    per field)."""
    return (at - (_EPOCH if at.utcoffset() is None else _EPOCH_UTC)) // _MICROSECOND


def _money(amount: Decimal) -> Decimal:
    return amount.quantize(Decimal("0.01"))


def payment_record(payment: Payment) -> dict[str, Any]:
    """The camelCase `Payment` of the contract (PaymentReply.payment, the shim's body)."""
    return {
        "id": str(payment.id),
        "orderId": str(payment.order_id),
        "customerId": str(payment.customer_id),
        "reservationId": str(payment.reservation_id) if payment.reservation_id else None,
        "amount": _money(payment.amount),
        "currency": payment.currency,
        "paymentMethod": payment.payment_method,
        "status": str(payment.status),
        "errorCode": payment.error_code,
        "errorMessage": payment.error_message,
        "failureReason": payment.failure_reason,
        "transactionId": payment.transaction_id,
        "createdAt": _micros(payment.created_at),
        "processedAt": _micros(payment.processed_at) if payment.processed_at else None,
        "isSimulated": payment.is_simulated,
        "simulatedResponse": payment.simulated_response,
    }


_CE_SOURCE = ("ce_source", CE_SOURCE.encode())
_CE_SPECVERSION = ("ce_specversion", b"1.0")
_CONTENT_TYPE = ("content-type", b"application/avro")
_CE_TYPES = {t: ("ce_type", t.encode()) for t in (CE_TYPE_SUCCEEDED, CE_TYPE_FAILED, CE_TYPE_REPLY)}


def ce_time(at: datetime | None = None) -> str:
    """`at` (default now) in RFC 3339 UTC with microseconds (2026-11-29T12:00:00.123456Z)."""
    at = (at or datetime.now(UTC)).astimezone(UTC)
    return at.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _ce_headers(
    ce_type: str, ce_id: str, subject: str, correlation_id: str, causation_id: str
) -> list[tuple[str, bytes | None]]:
    now = ce_time()
    return [
        _CE_SPECVERSION,
        ("ce_id", ce_id.encode()),
        _CE_TYPES.get(ce_type) or ("ce_type", ce_type.encode()),
        _CE_SOURCE,
        ("ce_time", now.encode()),
        ("ce_subject", subject.encode()),
        _CONTENT_TYPE,
        ("correlation-id", correlation_id.encode()),
        ("causation-id", causation_id.encode()),
    ]


class Echoed(Protocol):
    """The ids a reply echoes: a command's as it sent them (a Command, a pipeline Request)."""

    @property
    def command_id(self) -> str: ...
    @property
    def order_id(self) -> str: ...


class MessageFactory:
    """Turns replies, finalized payments and bad records into outbox messages."""

    def __init__(self, encoder: Encoder, topics: Topics) -> None:
        self.encoder = encoder
        self.topics = topics

    async def load(self) -> None:
        """What the worker's own topics need before anything is encoded: start-up calls this,
        and a PermanentError here stops it."""
        await self.encoder.load("PaymentReply", self.topics.replies)
        await self.encoder.load("PaymentSucceeded", self.topics.succeeded)
        await self.encoder.load("PaymentFailed", self.topics.failed)

    def reply(
        self,
        command: Echoed,
        route: ReplyRoute,
        answer: Reply,
        payment_fields: dict[str, Any] | None = None,
    ) -> OutboxMessage:
        """The reply to a command (its ids as it sent them). `payment_fields`, when given, is the
        reply's `Payment` as already read from the database (replay's fast path) in place of
        `answer.payment`."""
        if payment_fields is None and answer.payment is not None:
            payment_fields = payment_record(answer.payment)
        record = {
            "commandId": command.command_id,
            "correlationId": route.correlation_id,
            "orderId": command.order_id,
            "outcome": str(answer.outcome),
            "success": answer.success,
            "httpStatus": answer.http_status,
            "errorMessage": answer.error_message,
            "duplicate": answer.duplicate,
            # The union branch named (fastavro's tuple notation): otherwise fastavro validates
            # the record against each branch to choose one, which doubles the encoding time.
            "payment": (PAYMENT_RECORD, payment_fields) if payment_fields else None,
        }
        headers = _ce_headers(
            CE_TYPE_REPLY,
            random_uuid(),
            command.order_id,
            route.correlation_id,
            command.command_id,
        )
        _trace_context(headers, route)
        if route.spring_correlation_id is not None:
            headers.append(("kafka_correlationId", route.spring_correlation_id))
        if route.spring_reply_topic is not None:
            headers.append(("kafka_replyTopic", route.spring_reply_topic))
        if route.spring_reply_partition is not None:
            headers.append(("kafka_replyPartition", route.spring_reply_partition))
        return OutboxMessage(
            kind="reply",
            topic=route.topic,
            partition=route.partition,
            key=command.order_id.encode("utf-8"),
            # Under the default replies topic's subject whatever the route (contract section 3):
            # a caller's topic is not ours to register under, and its subject is never loaded.
            value=self.encoder.encode("PaymentReply", record, self.topics.replies),
            headers=headers,
            payment_id=answer.payment.id if answer.payment else None,
        )

    def event(
        self, payment: Payment, route: ReplyRoute, event_id: uuid.UUID | None = None
    ) -> OutboxMessage:
        """payment-succeeded or payment-failed for a finalized payment."""
        event_id = event_id or new_uuid()
        event_text, command_id, order_id = (
            str(event_id),
            str(payment.command_id),
            str(payment.order_id),
        )
        common: dict[str, Any] = {
            "eventId": event_text,
            "commandId": command_id,
            "paymentId": str(payment.id),
            "orderId": order_id,
            "customerId": str(payment.customer_id),
            "reservationId": str(payment.reservation_id) if payment.reservation_id else None,
            "amount": _money(payment.amount),
            "currency": payment.currency,
            "paymentMethod": payment.payment_method,
        }
        at = _micros(payment.processed_at or datetime.now(UTC))
        if payment.status is PaymentStatus.SUCCEEDED:
            name, topic, ce_type = "PaymentSucceeded", self.topics.succeeded, CE_TYPE_SUCCEEDED
            record = {
                **common,
                "transactionId": payment.transaction_id or "",
                "processedAt": at,
                "status": "succeeded",
            }
        elif payment.status is PaymentStatus.FAILED:
            name, topic, ce_type = "PaymentFailed", self.topics.failed, CE_TYPE_FAILED
            record = {
                **common,
                "errorCode": payment.error_code or "",
                "errorMessage": payment.error_message or "",
                "failureReason": payment.failure_reason or "",
                "attemptedAt": at,
                "status": "failed",
            }
        else:
            raise ValueError(f"no event for a {payment.status} payment")
        headers = _ce_headers(ce_type, event_text, order_id, route.correlation_id, command_id)
        _trace_context(headers, route)
        return OutboxMessage(
            kind="event",
            topic=topic,
            partition=None,
            key=order_id.encode("utf-8"),
            value=self.encoder.encode(name, record, topic),
            headers=headers,
            event_id=event_id,
            payment_id=payment.id,
        )

    def dead_letter(self, record: InboundRecord, reason: str, error: str) -> OutboxMessage:
        """The record as received, plus why it could not be processed; every card number in
        its key, value and headers masked (and `dlq-redacted: card-number` said so), each of
        them capped before it is searched (and `dlq-truncated` says what was cut)."""
        cut = _Caps()
        key, masked_key = cut.bytes_field("key", record.key)
        value, masked_value = cut.bytes_field("value", record.value)
        headers: list[tuple[str, bytes | None]] = []
        masked_headers = False
        for name, header_value in record.headers:
            if cut.room <= 0:
                cut.truncated.append("headers")
                break
            safe_name, masked_name = cut.name(name)
            safe_value, masked = cut.bytes_field("headers", header_value)
            masked_headers = masked_headers or masked_name or masked
            headers.append((safe_name, safe_value))
        headers += [
            ("dlq-error", error[:1000].encode("utf-8", "replace")),
            ("dlq-reason", reason.encode()),
            ("dlq-topic", record.topic.encode()),
            ("dlq-partition", str(record.partition).encode()),
            ("dlq-offset", str(record.offset).encode()),
        ]
        if masked_key or masked_value or masked_headers:
            headers.append(("dlq-redacted", b"card-number"))
        if cut.truncated:
            headers.append(("dlq-truncated", ",".join(dict.fromkeys(cut.truncated)).encode()))
        return OutboxMessage(
            kind="dead_letter",
            topic=self.topics.dlq,
            partition=None,
            key=key,
            value=value,
            headers=headers,
        )


class _Caps:
    """What is left of one dead letter's search budget, and what was cut to keep it."""

    def __init__(self) -> None:
        self.room = DEAD_LETTER_RECORD_BYTES
        self.truncated: list[str] = []

    def bytes_field(self, part: str, data: bytes | None) -> tuple[bytes | None, bool]:
        """`data` cut to its cap, card numbers masked; whether any was."""
        if not data:
            return data, False
        limit = max(0, min(DEAD_LETTER_FIELD_BYTES, self.room))
        self.room -= min(len(data), limit)
        if len(data) <= limit:
            return mask_card_numbers_in_bytes(data)
        self.truncated.append(part)
        # Searched a card number's span (4 bytes a character at most) past the cut, so that no
        # digit kept belongs to a number the cut would hide; masking keeps every byte offset.
        masked, changed = mask_card_numbers_in_bytes(data[: limit + 4 * MAX_CARD_SPAN])
        return masked[:limit], changed

    def name(self, name: str) -> tuple[str, bool]:
        """A header name cut to its cap, card numbers masked; whether any was."""
        limit = DEAD_LETTER_NAME_CHARS
        if len(name) > limit:
            self.truncated.append("headers")
        safe = redacted_prefix(name, limit)
        self.room -= len(safe.encode("utf-8", "surrogateescape"))
        return safe, safe != name[:limit]


def _trace_context(headers: list[tuple[str, bytes | None]], route: ReplyRoute) -> None:
    """The W3C context a reply or event carries: the current span's when spans are recorded
    (the command's process span, the reconciler's), else the command's as it came."""
    traceparent, tracestate = tracing.outgoing(route.traceparent, route.tracestate)
    if traceparent:
        headers.append(("traceparent", traceparent.encode()))
        if tracestate:
            headers.append(("tracestate", tracestate.encode()))
