"""Builders shared by the integration tests (payments, ledger fields, outbox messages)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from payment_worker.domain.model import GatewayResult, Payment, PaymentStatus
from payment_worker.service.ports import OutboxMessage

ROUTE: dict[str, Any] = {"topic": "payment-replies", "partition": None, "correlation_id": "c-1"}


def pending_payment(
    order_id: uuid.UUID | None = None,
    command_id: uuid.UUID | None = None,
    amount: Decimal = Decimal("10.50"),
    currency: str = "USD",
    payment_method: str = "credit_card",
) -> Payment:
    """A new pending payment (fresh ids unless given)."""
    return Payment(
        id=uuid.uuid4(),
        order_id=order_id or uuid.uuid4(),
        customer_id=uuid.UUID("0b9c6d55-0d8e-4a1f-9b55-1c1e5f0c2a01"),
        reservation_id=None,
        amount=amount,
        currency=currency,
        payment_method=payment_method,
        status=PaymentStatus.PENDING,
        created_at=datetime.now(UTC),
        command_id=command_id or uuid.uuid4(),
    )


def ledger_fields(payment: Payment) -> dict[str, Any]:
    """What the pipeline passes to begin_payment for the payment's command."""
    return {
        "command_id": payment.command_id,
        "order_id": payment.order_id,
        "customer_id": payment.customer_id,
        "amount": payment.amount,
        "currency": payment.currency,
    }


def final_ledger(payment: Payment, outcome: str = "SUCCEEDED") -> dict[str, Any]:
    """A final ledger entry as the pipeline passes it to record()."""
    return {
        **ledger_fields(payment),
        "outcome": outcome,
        "error_message": None,
        "payment_id": None,
        "reply_route": ROUTE,
    }


def succeeded(payment: Payment) -> Payment:
    return payment.finalized(
        GatewayResult(
            True,
            "txn_0123456789abcdef",
            None,
            None,
            None,
            "Success - TransactionId: txn_0123456789abcdef",
        ),
        datetime.now(UTC),
    )


def declined(payment: Payment) -> Payment:
    return payment.finalized(
        GatewayResult(
            False,
            None,
            "CARD_DECLINED",
            "Your card was declined",
            "card_declined",
            "Failed - CARD_DECLINED: Your card was declined",
        ),
        datetime.now(UTC),
    )


def message(
    kind: str = "reply",
    topic: str = "payment-replies",
    *,
    partition: int | None = None,
    key: bytes | None = b"key",
    value: bytes | None = b"value",
    headers: list[tuple[str, bytes]] | None = None,
    payment_id: uuid.UUID | None = None,
) -> OutboxMessage:
    return OutboxMessage(
        kind=kind,
        topic=topic,
        partition=partition,
        key=key,
        value=value,
        headers=headers if headers is not None else [("correlation-id", b"c-1")],
        event_id=uuid.uuid4() if kind == "event" else None,
        payment_id=payment_id,
    )


def insert_pending(db: Any, *payments: Payment) -> None:
    """The payments' pending rows as the begin step writes them, straight into the table (a
    gateway's reference for a payment needs its row)."""
    for p in payments:
        db.execute(
            "INSERT INTO payments (id, order_id, customer_id, amount, currency, payment_method,"
            " status, created_at, command_id) VALUES (%s, %s, %s, %s, %s, %s, 'pending', %s, %s)",
            (p.id, p.order_id, p.customer_id, p.amount, p.currency, p.payment_method,
             p.created_at, p.command_id),
        )  # fmt: skip
