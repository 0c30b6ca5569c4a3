"""What the Ordering and Inventory services answered, read and checked (adapters/http_services
read_order and read_reservation, then domain.decision's checks): every field a check reads,
missing, null, of the wrong type or unparseable, is a rejection with the contract's message,
never a match (contract section 5, "fail closed")."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from payment_worker.adapters.http_services import read_order, read_reservation
from payment_worker.domain.decision import check_order, check_reservation
from payment_worker.domain.model import Outcome, Reply, ValidCommand, reply

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
VALID = ValidCommand(
    command_id=uuid.UUID("11111111-1111-4111-8111-111111111111"),
    order_id=uuid.UUID("22222222-2222-4222-8222-222222222222"),
    customer_id=uuid.UUID("33333333-3333-4333-8333-333333333333"),
    reservation_id=uuid.UUID("44444444-4444-4444-8444-444444444444"),
    amount=Decimal("250.00"),
    currency="USD",
    payment_method="credit_card",
    requested_at=NOW,
)
UNREADABLE_ORDER = Reply(Outcome.ORDER_INVALID, "Order validation failed: unreadable order")
UNREADABLE_RESERVATION = Reply(
    Outcome.RESERVATION_INVALID, "Reservation validation failed: unreadable reservation"
)
MISSING = object()  # the field left out of the answer


def _json(body: dict[str, Any]) -> dict[str, Any]:
    """The body as the adapter gets it: JSON text read with numbers as Decimal."""
    return json.loads(json.dumps(body, default=str), parse_float=Decimal)


def order_answer(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": str(VALID.order_id),
        "customerId": str(VALID.customer_id),
        "status": "Pending",
        "totalAmount": "250.00",
        "currency": "USD",
    }
    for name, value in fields.items():
        if value is MISSING:
            body.pop(name)
        else:
            body[name] = value
    return body


def reservation_answer(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": str(VALID.reservation_id),
        "customerId": str(VALID.customer_id),
        "status": "Active",
        "expiresAt": (NOW + timedelta(minutes=5)).isoformat(),
    }
    for name, value in fields.items():
        if value is MISSING:
            body.pop(name)
        else:
            body[name] = value
    return body


ANOTHER_ORDER = reply(Outcome.ORDER_INVALID, "the Ordering service answered for another order")

# field -> {case: expected}; None: the check accepts (a field the contract lets the service
# leave out: the id in the body, the currency, which defaults to USD).
ORDER_FIELDS: dict[str, dict[str, tuple[Any, Reply | None]]] = {
    "id": {
        "missing": (MISSING, None),
        "null": (None, None),
        "wrong type": (22222222, UNREADABLE_ORDER),
        "unparseable": ("order-22", UNREADABLE_ORDER),
    },
    "customerId": {
        "missing": (MISSING, UNREADABLE_ORDER),
        "null": (None, UNREADABLE_ORDER),
        "wrong type": ({"id": str(VALID.customer_id)}, UNREADABLE_ORDER),
        "unparseable": ("customer-33", UNREADABLE_ORDER),
    },
    "status": {
        "missing": (MISSING, UNREADABLE_ORDER),
        "null": (None, UNREADABLE_ORDER),
        "wrong type": (1, UNREADABLE_ORDER),
        "unparseable": ("  ", UNREADABLE_ORDER),
    },
    "totalAmount": {
        "missing": (MISSING, UNREADABLE_ORDER),
        "null": (None, UNREADABLE_ORDER),
        "wrong type": ({"amount": "250.00", "currency": "USD"}, UNREADABLE_ORDER),
        "unparseable": ("250,00", UNREADABLE_ORDER),
    },
    "currency": {
        "missing": (MISSING, None),
        "null": (None, UNREADABLE_ORDER),
        "wrong type": (840, UNREADABLE_ORDER),
        "unparseable": ("US Dollar", UNREADABLE_ORDER),
    },
}
ORDER_ROWS = [
    (f"{name} {case}", name, value, expected)
    for name, cases in ORDER_FIELDS.items()
    for case, (value, expected) in cases.items()
]


@pytest.mark.parametrize(
    ("name", "value", "expected"), [r[1:] for r in ORDER_ROWS], ids=[r[0] for r in ORDER_ROWS]
)
def test_each_order_field_missing_or_garbled(name: str, value: Any, expected: Reply | None) -> None:
    """Each row: an Ordering answer matching the command but for one field, read and checked,
    gives the reply beside it; what the check needs, missing or garbled, is ORDER_INVALID
    `Order validation failed: unreadable order`."""
    assert check_order(VALID, read_order(_json(order_answer(**{name: value})))) == expected


@pytest.mark.parametrize(
    "amount",
    [
        "250.00",
        "250",
        Decimal("250.00"),
        250,
    ],
)
def test_a_readable_order_total_matches(amount: Any) -> None:
    """The total as a JSON number or a plain decimal string is read exactly, and matches."""
    assert check_order(VALID, read_order(_json(order_answer(totalAmount=amount)))) is None


@pytest.mark.parametrize(
    "amount", ["0.01", "25000", "NaN", "Infinity", "2.5e2", " 250.00", True, [250], 250.0]
)
def test_an_order_total_the_command_does_not_match_is_never_a_match(amount: Any) -> None:
    """A 250.00 command against any other total, or one that is not a decimal number (NaN,
    an exponent, padding, a boolean, a list, a float that reached us as one), is ORDER_INVALID."""
    answer = order_answer()
    answer["totalAmount"] = amount
    checked = check_order(VALID, read_order(answer))
    assert checked is not None and checked.outcome is Outcome.ORDER_INVALID


def test_the_order_answer_is_read_in_alternative_names_and_any_case() -> None:
    """userId, state and amount stand in for customerId, status and totalAmount; an orderId
    for another order is still refused."""
    answer = {
        "OrderId": str(VALID.order_id),
        "USERID": str(VALID.customer_id).upper(),
        "state": "pending",
        "amount": Decimal("250.00"),
    }
    assert check_order(VALID, read_order(answer)) is None
    answer["OrderId"] = str(uuid.uuid4())
    assert check_order(VALID, read_order(answer)) == ANOTHER_ORDER


RESERVATION_FIELDS: dict[str, dict[str, tuple[Any, Reply | None]]] = {
    "id": {
        "missing": (MISSING, None),
        "null": (None, None),
        "wrong type": (44, UNREADABLE_RESERVATION),
        "unparseable": ("reservation-44", UNREADABLE_RESERVATION),
    },
    "customerId": {
        "missing": (MISSING, UNREADABLE_RESERVATION),
        "null": (None, UNREADABLE_RESERVATION),
        "wrong type": (33, UNREADABLE_RESERVATION),
        "unparseable": ("customer-33", UNREADABLE_RESERVATION),
    },
    "status": {
        "missing": (MISSING, UNREADABLE_RESERVATION),
        "null": (None, UNREADABLE_RESERVATION),
        "wrong type": (["Active"], UNREADABLE_RESERVATION),
        "unparseable": ("", UNREADABLE_RESERVATION),
    },
    "expiresAt": {
        "missing": (MISSING, None),
        "null": (None, None),
        "wrong type": (1780000000, UNREADABLE_RESERVATION),
        "unparseable": ("tomorrow", UNREADABLE_RESERVATION),
    },
}
RESERVATION_ROWS = [
    (f"{name} {case}", name, value, expected)
    for name, cases in RESERVATION_FIELDS.items()
    for case, (value, expected) in cases.items()
]


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [r[1:] for r in RESERVATION_ROWS],
    ids=[r[0] for r in RESERVATION_ROWS],
)
def test_each_reservation_field_missing_or_garbled(
    name: str, value: Any, expected: Reply | None
) -> None:
    """Each row: an Inventory answer matching the command but for one field gives the reply
    beside it; a customer or status missing or garbled, or an id or expiry garbled, is
    RESERVATION_INVALID `Reservation validation failed: unreadable reservation` (no expiry
    at all is a reservation that does not expire)."""
    answer = _json(reservation_answer(**{name: value}))
    assert check_reservation(VALID, read_reservation(answer), NOW) == expected


def test_a_reservation_answered_for_another_id_is_refused() -> None:
    """An Inventory answer naming another reservation is not this one's."""
    answer = reservation_answer(id=str(uuid.uuid4()))
    assert check_reservation(VALID, read_reservation(answer), NOW) == reply(
        Outcome.RESERVATION_INVALID, "the Inventory service answered for another reservation"
    )
