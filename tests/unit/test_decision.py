"""The money decision as a table: every case of domain.decision, one row each, with the
decision it must come to (contract sections 4 and 5, rules I1, I2, I5, I7)."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from payment_worker.domain.decision import (
    COMMAND_ID_REUSED,
    UNREADABLE_ORDER,
    UNREADABLE_RESERVATION,
    Answer,
    AnswerRecorded,
    Charge,
    Checked,
    Fail,
    Inconsistent,
    LedgerEntry,
    OrderInfo,
    ReadLedger,
    Rejected,
    ReservationInfo,
    Resume,
    Snapshot,
    Unchecked,
    Wait,
    charged,
    check_order,
    check_reservation,
    decide,
    recorded_answer,
)
from payment_worker.domain.model import (
    GatewayResult,
    Outcome,
    Payment,
    PaymentStatus,
    Reply,
    ValidCommand,
    reply,
)

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
VALID = ValidCommand(
    command_id=uuid.UUID("11111111-1111-4111-8111-111111111111"),
    order_id=uuid.UUID("22222222-2222-4222-8222-222222222222"),
    customer_id=uuid.UUID("33333333-3333-4333-8333-333333333333"),
    reservation_id=uuid.UUID("44444444-4444-4444-8444-444444444444"),
    amount=Decimal("25.00"),
    currency="USD",
    payment_method="credit_card",
    requested_at=NOW,
)
OTHER_CUSTOMER = uuid.UUID("55555555-5555-4555-8555-555555555555")
OTHER_COMMAND = uuid.UUID("66666666-6666-4666-8666-666666666666")


def payment(status: PaymentStatus, **changes: Any) -> Payment:
    """A payment of VALID's order and request, by VALID's command unless changed."""
    base = Payment(
        id=uuid.UUID("77777777-7777-4777-8777-777777777777"),
        order_id=VALID.order_id,
        customer_id=VALID.customer_id,
        reservation_id=VALID.reservation_id,
        amount=VALID.amount,
        currency=VALID.currency,
        payment_method=VALID.payment_method,
        status=status,
        created_at=NOW,
        command_id=VALID.command_id,
    )
    return replace(base, **changes)


def entry(final: bool, outcome: Outcome | None = Outcome.SUCCEEDED, **changes: Any) -> LedgerEntry:
    """VALID's command id's ledger entry, for VALID's request unless changed."""
    base = LedgerEntry(
        command_id=VALID.command_id,
        order_id=VALID.order_id,
        customer_id=VALID.customer_id,
        amount=VALID.amount,
        currency=VALID.currency,
        final=final,
        outcome=outcome if final else None,
        error_message=None,
        payment_id=None,
        reply_route={},
    )
    return replace(base, **changes)


def ledger(
    entry: LedgerEntry | None = None,
    succeeded: Payment | None = None,
    pending: Payment | None = None,
) -> Snapshot:
    return Snapshot(entry, succeeded, pending)


ACCEPTED: Checked = None
REJECTED = Rejected(reply(Outcome.ORDER_INVALID, "Order is in 'paid' state, expected 'pending'"))
UNCHECKED = Unchecked(TimeoutError("ordering timed out"))
PENDING = payment(PaymentStatus.PENDING)
OTHERS_PENDING = payment(
    PaymentStatus.PENDING,
    id=uuid.UUID("88888888-8888-4888-8888-888888888888"),
    command_id=OTHER_COMMAND,
)
PAID = payment(PaymentStatus.SUCCEEDED, command_id=OTHER_COMMAND)

# (what the services said, what the ledger records (None: not read), the decision)
CASES: list[tuple[str, Checked, Snapshot | None, object]] = [
    # Not read yet: an accepted command is charged, any other is decided with the ledger.
    ("accepted, ledger not read", ACCEPTED, None, Charge()),
    ("rejected, ledger not read", REJECTED, None, ReadLedger()),
    ("unchecked, ledger not read", UNCHECKED, None, ReadLedger()),
    # Rule 1 (I7): a command id used for another request.
    (
        "id reused: other amount",
        ACCEPTED,
        ledger(entry(True, amount=Decimal("9"))),
        Answer(COMMAND_ID_REUSED, record=False),
    ),
    (
        "id reused: other order",
        REJECTED,
        ledger(entry(True, order_id=OTHER_COMMAND)),
        Answer(COMMAND_ID_REUSED, record=False),
    ),
    (
        "id reused: other customer, in progress",
        UNCHECKED,
        ledger(entry(False, customer_id=OTHER_CUSTOMER), pending=PENDING),
        Answer(COMMAND_ID_REUSED, record=False),
    ),
    (
        "id reused: other currency",
        ACCEPTED,
        ledger(entry(True, currency="EUR")),
        Answer(COMMAND_ID_REUSED, record=False),
    ),
    # Rule 2 (I1): a final outcome is answered again, whatever the services say now.
    ("recorded outcome, accepted", ACCEPTED, ledger(entry(True)), AnswerRecorded(entry(True))),
    ("recorded outcome, rejected", REJECTED, ledger(entry(True)), AnswerRecorded(entry(True))),
    ("recorded outcome, unchecked", UNCHECKED, ledger(entry(True)), AnswerRecorded(entry(True))),
    (
        "recorded DECLINED beside a paid order",
        ACCEPTED,
        ledger(entry(True, Outcome.DECLINED), succeeded=PAID),
        AnswerRecorded(entry(True, Outcome.DECLINED)),
    ),
    # Rule 3 (I2): a paid order is never charged again.
    (
        "order paid, same request",
        REJECTED,
        ledger(succeeded=PAID),
        Answer(Reply(Outcome.SUCCEEDED, None, PAID, duplicate=True), record=True),
    ),
    (
        "order paid by another customer",
        ACCEPTED,
        ledger(succeeded=replace(PAID, customer_id=OTHER_CUSTOMER)),
        Answer(
            reply(Outcome.UNAUTHORIZED, "Order does not belong to the specified customer"),
            record=True,
        ),
    ),
    (
        "order paid with another amount",
        ACCEPTED,
        ledger(succeeded=replace(PAID, amount=Decimal("30.00"))),
        Answer(
            reply(
                Outcome.CONFLICT, "the order was already paid with a different amount or currency"
            ),
            record=False,
        ),
    ),
    (
        "order paid in another currency",
        UNCHECKED,
        ledger(succeeded=replace(PAID, currency="EUR")),
        Answer(
            reply(
                Outcome.CONFLICT, "the order was already paid with a different amount or currency"
            ),
            record=False,
        ),
    ),
    # Rule 4 (I5): our own pending payment is finished whatever the services say.
    ("own pending, accepted", ACCEPTED, ledger(entry(False), pending=PENDING), Resume(PENDING)),
    ("own pending, rejected", REJECTED, ledger(entry(False), pending=PENDING), Resume(PENDING)),
    ("own pending, unchecked", UNCHECKED, ledger(entry(False), pending=PENDING), Resume(PENDING)),
    # Rule 5: an entry in progress whose payment is not pending.
    (
        "in progress, nothing pending",
        ACCEPTED,
        ledger(entry(False)),
        Inconsistent(
            f"ledger entry {VALID.command_id} is in progress but its payment is not pending"
        ),
    ),
    (
        "in progress, another's payment pending",
        REJECTED,
        ledger(entry(False), pending=OTHERS_PENDING),
        Inconsistent(
            f"ledger entry {VALID.command_id} is in progress but its payment is not pending"
        ),
    ),
    # Rule 6: the services decide.
    ("nothing recorded, unchecked", UNCHECKED, ledger(), Fail(UNCHECKED.error)),
    ("nothing recorded, rejected", REJECTED, ledger(), Answer(REJECTED.answer, record=True)),
    (
        "rejected while another's payment is pending",
        REJECTED,
        ledger(pending=OTHERS_PENDING),
        Answer(REJECTED.answer, record=True),
    ),
    (
        "unchecked while another's payment is pending",
        UNCHECKED,
        ledger(pending=OTHERS_PENDING),
        Fail(UNCHECKED.error),
    ),
    # Rule 7: accepted, it waits for another command's payment, else it is charged.
    (
        "accepted, another's payment pending",
        ACCEPTED,
        ledger(pending=OTHERS_PENDING),
        Wait(OTHERS_PENDING),
    ),
    ("accepted, nothing recorded", ACCEPTED, ledger(), Charge()),
]


@pytest.mark.parametrize(
    ("checked", "snapshot", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_the_decision_table(checked: Checked, snapshot: Snapshot | None, expected: object) -> None:
    """Each row of CASES: decide() comes to exactly the decision written beside it."""
    assert decide(VALID, checked, snapshot) == expected


def test_the_table_covers_every_decision() -> None:
    """Every kind of decision appears in the table, so none is left untested."""
    kinds = {type(case[3]) for case in CASES}
    assert kinds == {Charge, Resume, Wait, Answer, AnswerRecorded, ReadLedger, Fail, Inconsistent}


def order(**changes: Any) -> OrderInfo:
    base = OrderInfo(
        customer_id=str(VALID.customer_id).upper(),
        status="Pending",
        amount=VALID.amount,
        currency="usd",
        order_id=str(VALID.order_id),
    )
    return replace(base, **changes)


ORDER_CASES: list[tuple[str, OrderInfo | None, Reply | None]] = [
    ("accepted (any case of ids, state and currency)", order(), None),
    ("lenient: no id answered", order(order_id=None), None),
    ("not found", None, reply(Outcome.ORDER_NOT_FOUND)),
    ("fail closed: no customer answered", order(customer_id=None), UNREADABLE_ORDER),
    ("fail closed: no state answered", order(status=""), UNREADABLE_ORDER),
    ("fail closed: no amount answered", order(amount=None), UNREADABLE_ORDER),
    ("fail closed: an amount that is no number", order(amount=Decimal("NaN")), UNREADABLE_ORDER),
    ("fail closed: a garbled field", order(unreadable="totalAmount"), UNREADABLE_ORDER),
    (
        "unreadable checked before the customer",
        order(customer_id=str(OTHER_CUSTOMER), unreadable="currency"),
        UNREADABLE_ORDER,
    ),
    (
        "answered for another order",
        order(order_id=str(OTHER_COMMAND)),
        reply(Outcome.ORDER_INVALID, "the Ordering service answered for another order"),
    ),
    (
        "another customer",
        order(customer_id=str(OTHER_CUSTOMER)),
        reply(Outcome.UNAUTHORIZED, "Order does not belong to the specified customer"),
    ),
    (
        "not pending",
        order(status="PAID"),
        reply(Outcome.ORDER_INVALID, "Order is in 'paid' state, expected 'pending'"),
    ),
    (
        "another amount",
        order(amount=Decimal("25.01")),
        reply(Outcome.ORDER_INVALID, "Payment amount 25.00 does not match the order total 25.01"),
    ),
    (
        "another currency",
        order(currency="eur"),
        reply(Outcome.ORDER_INVALID, "Payment currency USD does not match the order currency EUR"),
    ),
    (
        "customer checked before state",
        order(customer_id=str(OTHER_CUSTOMER), status="paid"),
        reply(Outcome.UNAUTHORIZED, "Order does not belong to the specified customer"),
    ),
]


@pytest.mark.parametrize(
    ("answered", "expected"), [c[1:] for c in ORDER_CASES], ids=[c[0] for c in ORDER_CASES]
)
def test_the_order_checks(answered: OrderInfo | None, expected: Reply | None) -> None:
    """Each row of ORDER_CASES: the Ordering service's answer gives the reply beside it."""
    assert check_order(VALID, answered) == expected


def reservation(**changes: Any) -> ReservationInfo:
    base = ReservationInfo(
        customer_id=str(VALID.customer_id), status="ACTIVE", expires_at=NOW + timedelta(minutes=1)
    )
    return replace(base, **changes)


RESERVATION_CASES: list[tuple[str, ReservationInfo | None, Reply | None]] = [
    ("active, not expired", reservation(), None),
    ("no id or expiry answered", reservation(expires_at=None), None),
    ("fail closed: no customer answered", reservation(customer_id=None), UNREADABLE_RESERVATION),
    ("fail closed: no status answered", reservation(status=""), UNREADABLE_RESERVATION),
    ("fail closed: a garbled field", reservation(unreadable="expiresAt"), UNREADABLE_RESERVATION),
    (
        "answered for another reservation",
        reservation(reservation_id=str(OTHER_COMMAND)),
        reply(
            Outcome.RESERVATION_INVALID, "the Inventory service answered for another reservation"
        ),
    ),
    ("not found", None, reply(Outcome.RESERVATION_INVALID, "Reservation not found")),
    (
        "another customer",
        reservation(customer_id=str(OTHER_CUSTOMER)),
        reply(Outcome.RESERVATION_INVALID, "Reservation does not belong to the specified customer"),
    ),
    (
        "not active",
        reservation(status="Released"),
        reply(Outcome.RESERVATION_INVALID, "Reservation is in 'released' state, expected 'active'"),
    ),
    (
        "expires now",
        reservation(expires_at=NOW),
        reply(Outcome.RESERVATION_INVALID, "Reservation has expired"),
    ),
]


@pytest.mark.parametrize(
    ("answered", "expected"),
    [c[1:] for c in RESERVATION_CASES],
    ids=[c[0] for c in RESERVATION_CASES],
)
def test_the_reservation_checks(answered: ReservationInfo | None, expected: Reply | None) -> None:
    """Each row of RESERVATION_CASES: the Inventory service's answer gives the reply beside it."""
    assert check_reservation(VALID, answered, NOW) == expected


def test_a_recorded_answer_goes_only_to_its_own_request() -> None:
    """Rules I1 and I7: the recorded outcome again, marked duplicate, for the same request; a
    CONFLICT for another; an inconsistency when it names another order's or customer's
    payment."""
    final = entry(True, Outcome.DECLINED, error_message="Payment failed: declined")
    declined = payment(PaymentStatus.FAILED)

    assert recorded_answer(VALID, final, declined) == Reply(
        Outcome.DECLINED, "Payment failed: declined", declined, duplicate=True
    )
    assert recorded_answer(VALID, replace(final, amount=Decimal(1)), declined) == COMMAND_ID_REUSED
    leaked = recorded_answer(VALID, final, replace(declined, customer_id=OTHER_CUSTOMER))
    assert isinstance(leaked, Inconsistent)
    assert isinstance(
        recorded_answer(VALID, final, replace(declined, order_id=OTHER_COMMAND)), Inconsistent
    )


def test_the_gateway_answer_becomes_succeeded_or_declined() -> None:
    """A successful charge answers SUCCEEDED with the payment; a refused one DECLINED with the
    gateway's message after the contract's prefix."""
    done = payment(PaymentStatus.SUCCEEDED)
    ok = GatewayResult(True, "txn_1", None, None, None, "Success")
    refused = GatewayResult(False, None, "CARD_DECLINED", "Your card was declined", "x", "Failed")

    assert charged(done, ok) == Reply(Outcome.SUCCEEDED, None, done)
    assert charged(done, refused) == Reply(
        Outcome.DECLINED, "Payment failed: Your card was declined", done
    )
