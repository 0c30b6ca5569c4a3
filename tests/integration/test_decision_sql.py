"""The ledger rules that begin_payments repeats in SQL agree with domain.decision: for each
situation the ledger can be in, the decision made on a plain read of the ledger and the one
made on begin_payments' answer are the same."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from payment_worker.adapters.postgres import PostgresStore
from payment_worker.domain.decision import (
    Answer,
    AnswerRecorded,
    Charge,
    Decision,
    Inconsistent,
    Resume,
    Wait,
    decide,
)
from payment_worker.domain.model import Outcome, Payment, ValidCommand
from tests.integration.support import (
    ROUTE,
    declined,
    final_ledger,
    ledger_fields,
    message,
    pending_payment,
    succeeded,
)

pytestmark = pytest.mark.integration

Conn = psycopg.Connection[Any]
OTHER_CUSTOMER = uuid.UUID("5e2a8a52-6f1b-4c8e-9d6f-2f4b7c9e1a03")
Arrange = Callable[[PostgresStore, Conn, Payment], Awaitable[None]]


async def nothing(store: PostgresStore, db: Conn, ours: Payment) -> None:
    """Nothing recorded for the command or its order."""


async def final_outcome(store: PostgresStore, db: Conn, ours: Payment) -> None:
    """The command id has a final outcome for this very request."""
    await store.record([message()], final_ledger(ours, "DECLINED"))


async def id_reused(store: PostgresStore, db: Conn, ours: Payment) -> None:
    """The command id has a final outcome for another amount."""
    await store.record([message()], final_ledger(replace(ours, amount=Decimal("99.00"))))


async def _paid_by_another(store: PostgresStore, ours: Payment, **changes: Any) -> None:
    other = replace(pending_payment(order_id=ours.order_id), **changes)
    await store.begin_payment(other, ledger_fields(other), ROUTE)
    assert await store.finish_payment(succeeded(other), Outcome.SUCCEEDED, None, []) == []


async def order_paid(store: PostgresStore, db: Conn, ours: Payment) -> None:
    """Another command paid the order, with the same customer and money."""
    await _paid_by_another(store, ours)


async def order_paid_by_another_customer(store: PostgresStore, db: Conn, ours: Payment) -> None:
    """Another customer's command paid the order."""
    await _paid_by_another(store, ours, customer_id=OTHER_CUSTOMER)


async def order_paid_with_other_money(store: PostgresStore, db: Conn, ours: Payment) -> None:
    """Another command paid the order with another amount."""
    await _paid_by_another(store, ours, amount=Decimal("1.00"))


async def own_pending(store: PostgresStore, db: Conn, ours: Payment) -> None:
    """The command began its payment before a crash: it is still pending."""
    await store.begin_payment(ours, ledger_fields(ours), ROUTE)


async def others_pending(store: PostgresStore, db: Conn, ours: Payment) -> None:
    """Another command's payment for the order is pending."""
    other = pending_payment(order_id=ours.order_id)
    await store.begin_payment(other, ledger_fields(other), ROUTE)


async def all_declined(store: PostgresStore, db: Conn, ours: Payment) -> None:
    """Another command's payment for the order was declined (rule I4: it may be paid)."""
    other = pending_payment(order_id=ours.order_id)
    await store.begin_payment(other, ledger_fields(other), ROUTE)
    assert await store.finish_payment(declined(other), Outcome.DECLINED, "declined", []) == []


async def in_progress_not_pending(store: PostgresStore, db: Conn, ours: Payment) -> None:
    """The command's entry is in progress, but its payment is no longer pending."""
    await store.begin_payment(ours, ledger_fields(ours), ROUTE)
    db.execute(
        "UPDATE payments SET status = 'failed', processed_at = now() WHERE id = %s", (ours.id,)
    )


SITUATIONS: list[tuple[Arrange, type]] = [
    (nothing, Charge),
    (final_outcome, AnswerRecorded),
    (id_reused, Answer),
    (order_paid, Answer),
    (order_paid_by_another_customer, Answer),
    (order_paid_with_other_money, Answer),
    (own_pending, Resume),
    (others_pending, Wait),
    (all_declined, Charge),
    (in_progress_not_pending, Inconsistent),
]


def _valid(payment: Payment) -> ValidCommand:
    assert payment.command_id is not None
    return ValidCommand(
        command_id=payment.command_id,
        order_id=payment.order_id,
        customer_id=payment.customer_id,
        reservation_id=payment.reservation_id,
        amount=payment.amount,
        currency=payment.currency,
        payment_method=payment.payment_method,
        requested_at=payment.created_at,
    )


def _comparable(decision: Decision, candidate: Payment) -> Decision:
    """begin_payments answers a charge by inserting the candidate: that is a Charge."""
    if isinstance(decision, Resume) and decision.payment.id == candidate.id:
        return Charge()
    return decision


async def test_begin_payments_decides_as_the_domain_does(store: PostgresStore, db: Conn) -> None:
    """For every situation of SITUATIONS (one order each), decide() on the ledger as read and
    decide() on begin_payments' answer give the same decision, and it is the expected kind."""
    seen: dict[str, tuple[Decision, Decision]] = {}
    for arrange, kind in SITUATIONS:
        ours = pending_payment()
        await arrange(store, db, ours)
        valid = _valid(ours)
        assert ours.command_id is not None
        read = decide(valid, None, await store.snapshot(ours.command_id, ours.order_id))
        candidate = replace(ours, id=uuid.uuid4())
        began = await store.begin_payment(candidate, ledger_fields(candidate), ROUTE)
        in_sql = _comparable(decide(valid, None, began.snapshot), candidate)
        seen[arrange.__name__] = (read, in_sql)
        assert isinstance(read, kind), arrange.__name__
    disagreeing = {name: pair for name, pair in seen.items() if pair[0] != pair[1]}
    assert disagreeing == {}
