"""The decision that moves money: what to do with a valid command, given what the Ordering and
Inventory services answered and what the ledger records (contract sections 4 and 5, rules I1,
I2, I5 and I7). Pure: the pipeline reads, calls `decide`, and carries the decision out.

The rules, in the order they apply:

1. A command id already used for another request (order, customer, amount, currency) is a
   CONFLICT, whatever else is true (I7).
2. A command id with a final outcome is answered that outcome again, marked duplicate (I1).
3. An order with a succeeded payment is never charged again: the same customer and money get
   that payment as a duplicate SUCCEEDED; another customer UNAUTHORIZED; other money CONFLICT
   (I2).
4. The command's own pending payment (a crash between charge and record) is finished whatever
   the order and the reservation say now (I5).
5. A ledger entry in progress with no pending payment cannot happen: it is reported, not acted
   on.
6. Otherwise the order and the reservation decide: a check that could not be made fails the
   command (the worker retries it), a rejection is answered and recorded.
7. An accepted command waits while another command's payment for the order is pending, and
   is charged once none is.

What the ledger records comes first (rules 1 to 5), so a retried or replayed command gets its
recorded answer even when the order has moved on. The worker asks the ledger only when the
services did not accept the command: for an accepted one, `begin_facts` inserts the pending
payment in the same statement that reads the facts, when nothing blocks it, and answers the
facts; they are decided here (the whole table is run against PostgreSQL's answers). This is
the only place the rule order is written.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

from payment_worker.domain.model import (
    GatewayResult,
    Outcome,
    Payment,
    Reply,
    ValidCommand,
    reply,
)

# -- what is read -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OrderInfo:
    """An order as the Ordering service answered it. A field the answer lacked is None (or
    empty); `unreadable` names a field it garbled (wrong type, not parseable). Either kind of
    gap in what the checks need makes the order unreadable, never a match (fail closed)."""

    customer_id: str | None
    status: str
    amount: Decimal | None
    currency: str
    order_id: str | None = None  # as the service answered it (id|orderId), when it did
    unreadable: str | None = None


@dataclass(frozen=True, slots=True)
class ReservationInfo:
    """A reservation as the Inventory service answered it; gaps as in OrderInfo."""

    customer_id: str | None
    status: str
    expires_at: datetime | None
    reservation_id: str | None = None  # as the service answered it (id|reservationId)
    unreadable: str | None = None


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """A command id's row of the command ledger: the request it was for and its outcome."""

    command_id: uuid.UUID
    order_id: uuid.UUID
    customer_id: uuid.UUID
    amount: Decimal
    currency: str
    final: bool
    outcome: Outcome | None
    error_message: str | None
    payment_id: uuid.UUID | None
    reply_route: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the ledger records of a command id and its order: the command id's entry, the
    order's succeeded payment and its pending payment (each None when absent)."""

    ledger: LedgerEntry | None
    succeeded: Payment | None
    pending: Payment | None


@dataclass(frozen=True, slots=True)
class Rejected:
    """The order or the reservation refused the command, with this answer."""

    answer: Reply


@dataclass(frozen=True, slots=True)
class Unchecked:
    """The order or the reservation could not be checked (unavailable, or any other error)."""

    error: Exception


Checked = Rejected | Unchecked | None  # None: both accepted the command


# -- what to do ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Charge:
    """Insert a pending payment for the command, charge it and record the outcome."""


@dataclass(frozen=True, slots=True)
class Resume:
    """Charge the command's own pending payment and record the outcome (I5)."""

    payment: Payment


@dataclass(frozen=True, slots=True)
class Wait:
    """Another command's payment for the order is pending: ask again once it has finished."""

    payment: Payment


@dataclass(frozen=True, slots=True)
class Answer:
    """Answer the command; `record`: write the answer to the ledger as the request's outcome."""

    reply: Reply
    record: bool

    @classmethod
    def of(cls, answer: Reply) -> Answer:
        """An answer recorded when it is final and not a CONFLICT: a CONFLICT says the request
        clashes with another one (a reused command id, an order paid with other money), which
        is not the request's own outcome."""
        outcome = answer.outcome
        return cls(answer, record=outcome.is_final and outcome is not Outcome.CONFLICT)


@dataclass(frozen=True, slots=True)
class AnswerRecorded:
    """Answer the command id's recorded outcome again, marked duplicate (I1)."""

    entry: LedgerEntry


@dataclass(frozen=True, slots=True)
class ReadLedger:
    """The services did not accept the command: what the ledger records decides first."""


@dataclass(frozen=True, slots=True)
class Fail:
    """The order or the reservation could not be checked and the ledger does not decide."""

    error: Exception


@dataclass(frozen=True, slots=True)
class Inconsistent:
    """The ledger contradicts itself; nothing is charged or answered from it."""

    reason: str


Decision = Charge | Resume | Wait | Answer | AnswerRecorded | ReadLedger | Fail | Inconsistent

COMMAND_ID_REUSED = reply(
    Outcome.CONFLICT, "this command id was already used for a different payment request"
)
UNREADABLE_ORDER = reply(Outcome.ORDER_INVALID, "unreadable order")
UNREADABLE_RESERVATION = reply(Outcome.RESERVATION_INVALID, "unreadable reservation")
ORDER_BUSY = reply(Outcome.CONFLICT, "another payment for this order is in progress; retry later")
# Not final (I1): the payment stays pending until the gateway answers approved or declined.
OUTCOME_UNKNOWN = reply(
    Outcome.ERROR, "the gateway's answer is unknown; the payment is pending and will be settled"
)


def decide(valid: ValidCommand, checked: Checked, ledger: Snapshot | None) -> Decision:
    """The one decision for `valid` (rules 1 to 7 above). `ledger` is None when it was not read:
    an accepted command is then charged (begin_facts checks the ledger as it inserts)."""
    if ledger is None:
        return Charge() if checked is None else ReadLedger()
    entry = ledger.ledger
    if entry is not None:
        if not same_request(entry, valid):
            return Answer(COMMAND_ID_REUSED, record=False)
        if entry.final:
            return AnswerRecorded(entry)
    if ledger.succeeded is not None:
        return Answer.of(order_already_paid(valid, ledger.succeeded))
    pending = ledger.pending
    if pending is not None and pending.command_id == valid.command_id:
        return Resume(pending)
    if entry is not None:
        return Inconsistent(
            f"ledger entry {valid.command_id} is in progress but its payment is not pending"
        )
    if isinstance(checked, Unchecked):
        return Fail(checked.error)
    if isinstance(checked, Rejected):
        return Answer.of(checked.answer)
    if pending is not None:
        return Wait(pending)
    return Charge()


class Request(Protocol):
    """The request a command id stands for, as I1 compares it: a ValidCommand, or replay's
    prepared command (ids as canonical text, on both sides alike)."""

    @property
    def command_id(self) -> object: ...
    @property
    def order_id(self) -> object: ...
    @property
    def customer_id(self) -> object: ...
    @property
    def amount(self) -> Decimal: ...
    @property
    def currency(self) -> str: ...


class Recorded(Request, Protocol):
    """A command id's ledger entry as it is answered again: the request and its outcome."""

    @property
    def outcome(self) -> Outcome | None: ...
    @property
    def error_message(self) -> str | None: ...


class Owned(Protocol):
    """Whose a recorded payment is."""

    @property
    def order_id(self) -> object: ...
    @property
    def customer_id(self) -> object: ...


def same_request(entry: Request, valid: Request) -> bool:
    """Rule I1: a command id answers again only for the same order, customer and money."""
    return (
        entry.order_id == valid.order_id
        and entry.customer_id == valid.customer_id
        and entry.amount == valid.amount
        and entry.currency == valid.currency
    )


def order_already_paid(valid: ValidCommand, paid: Payment) -> Reply:
    """Rule I2: the answer for an order that has a succeeded payment."""
    if paid.customer_id != valid.customer_id:
        return reply(Outcome.UNAUTHORIZED, "Order does not belong to the specified customer")
    if paid.amount != valid.amount or paid.currency != valid.currency:
        return reply(
            Outcome.CONFLICT, "the order was already paid with a different amount or currency"
        )
    return Reply(Outcome.SUCCEEDED, None, paid, duplicate=True)


def recorded_answer(valid: Request, entry: Recorded, payment: Owned | None) -> Reply | Inconsistent:
    """The recorded outcome as it is answered again (I1), given only to the same request (I7);
    a recorded payment of another order or customer is an inconsistency. The answer carries
    `payment` when it is a Payment (replay carries the payment as the reply's record apart)."""
    if not same_request(entry, valid):
        return COMMAND_ID_REUSED
    if payment is not None and (
        payment.order_id != valid.order_id or payment.customer_id != valid.customer_id
    ):
        return Inconsistent(
            f"ledger entry {valid.command_id} names a payment of another order or customer"
        )
    return Reply(
        entry.outcome or Outcome.ERROR,
        entry.error_message,
        payment if isinstance(payment, Payment) else None,
        duplicate=True,
    )


def charged(payment: Payment, result: GatewayResult) -> Reply:
    """The answer once the gateway answered: SUCCEEDED with the payment, or DECLINED."""
    if result.success:
        return Reply(Outcome.SUCCEEDED, None, payment)
    return reply(Outcome.DECLINED, result.error_message or "declined", payment)


def check_order(valid: ValidCommand, order: OrderInfo | None) -> Reply | None:
    """The Ordering service's checks, in the contract's order; None when the order accepts."""
    if order is None:
        return reply(Outcome.ORDER_NOT_FOUND)
    if (
        order.unreadable is not None
        or order.customer_id is None
        or not order.status
        or order.amount is None
        or not order.amount.is_finite()
    ):
        return UNREADABLE_ORDER
    if order.order_id is not None and order.order_id != str(valid.order_id):
        return reply(Outcome.ORDER_INVALID, "the Ordering service answered for another order")
    if order.customer_id.lower() != str(valid.customer_id):
        return reply(Outcome.UNAUTHORIZED, "Order does not belong to the specified customer")
    state = order.status.lower()
    if state != "pending":
        return reply(Outcome.ORDER_INVALID, f"Order is in '{state}' state, expected 'pending'")
    if order.amount != valid.amount:
        return reply(
            Outcome.ORDER_INVALID,
            f"Payment amount {valid.amount} does not match the order total {order.amount}",
        )
    if order.currency.upper() != valid.currency:
        return reply(
            Outcome.ORDER_INVALID,
            f"Payment currency {valid.currency} does not match the order currency "
            f"{order.currency.upper()}",
        )
    return None


def check_reservation(
    valid: ValidCommand, reservation: ReservationInfo | None, now: datetime
) -> Reply | None:
    """The Inventory service's checks; None when the reservation accepts."""
    if reservation is None:
        return reply(Outcome.RESERVATION_INVALID, "Reservation not found")
    if (
        reservation.unreadable is not None
        or reservation.customer_id is None
        or not reservation.status
    ):
        return UNREADABLE_RESERVATION
    if reservation.reservation_id is not None and reservation.reservation_id != str(
        valid.reservation_id
    ):
        return reply(
            Outcome.RESERVATION_INVALID, "the Inventory service answered for another reservation"
        )
    if reservation.customer_id.lower() != str(valid.customer_id):
        return reply(
            Outcome.RESERVATION_INVALID, "Reservation does not belong to the specified customer"
        )
    status = reservation.status.lower()
    if status != "active":
        return reply(
            Outcome.RESERVATION_INVALID, f"Reservation is in '{status}' state, expected 'active'"
        )
    if reservation.expires_at is not None and reservation.expires_at <= now:
        return reply(Outcome.RESERVATION_INVALID, "Reservation has expired")
    return None
