"""The shim's request parsing (payment_worker/entrypoints/shim/requests.py) on generated
bodies: always a Command or a 400 with a contract message, never another exception."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from payment_worker.domain.validation import ValidationFailed
from payment_worker.entrypoints.shim import BadRequest, parse_payment_request, render_json
from tests.scale import scale

CONTRACT_MESSAGES = (
    "Payment request is required",
    "Payment request must be a JSON object",
    "Invalid JSON",
    "Valid OrderId is required",
    "Valid CustomerId is required",
    "Amount must be greater than zero",
    "Valid ReservationId",
    "Amount has more decimals",
    "Amount must not exceed",
    "Currency must be a supported ISO 4217 code",
    "PaymentMethod",
)
ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=30),
    st.uuids().map(str),
    st.lists(st.integers(), max_size=3),
    st.just("4111111111111111"),
    st.just("1e400"),
    st.just("10.999"),
    st.text(min_size=1000, max_size=2000),
    st.just("\ud800"),  # a lone surrogate: json.dumps writes it as an escape
    st.text(alphabet=st.characters(categories=["Cs", "Nd", "No"]), min_size=1, max_size=6),
    st.just("1_000"),
    st.just("\u0661\u0660\u0660"),
)
KEYS = st.sampled_from(
    [
        "orderId",
        "OrderId",
        "ORDERID",
        "customerId",
        "CustomerId",
        "reservationId",
        "amount",
        "Amount",
        "currency",
        "paymentMethod",
        "PaymentMethod",
        "other",
    ]
)


@settings(
    max_examples=scale(500, 3000), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    body=st.one_of(
        st.dictionaries(KEYS, ANY_VALUE, max_size=8).map(lambda d: json.dumps(d).encode()),
        st.binary(max_size=300),
        st.sampled_from(
            [
                b"",
                b"  ",
                b"null",
                b"[]",
                b"{",
                b'{"amount": NaN}',
                b'{"amount": -Infinity}',
                b'"text"',
                b"[" * 5000,
            ]
        ),
    )
)
def test_any_body_parses_to_a_command_or_a_contract_message(body: bytes) -> None:
    """Generated bodies (wrong types, huge strings, card numbers, NaN, garbage bytes, lone
    surrogates, digits of other scripts): a 400 with a contract message, or a command whose
    texts encode as UTF-8 and whose amount, when given as text, is ASCII digits and one '.'."""
    command_id = str(uuid.uuid4())
    try:
        command = parse_payment_request(body, command_id)
    except (BadRequest, ValidationFailed) as exc:
        assert str(exc).startswith(CONTRACT_MESSAGES), str(exc)
        return
    assert command.amount > 0
    assert "4111111111111111" not in command.payment_method
    for text in (command.order_id, command.customer_id, command.currency, command.payment_method):
        text.encode("utf-8")  # what the command's encoding needs: no lone surrogate
    amount = json.loads(body).get("amount", json.loads(body).get("Amount"))
    if isinstance(amount, str):
        assert amount.isascii() and amount.replace(".", "", 1).isdigit(), amount


def test_amounts_stay_exact_decimals_through_parsing_and_rendering() -> None:
    """10.13 in the body is Decimal('10.13') in the command and 10.13 in JSON out (no float)."""
    body = json.dumps({"orderId": str(uuid.uuid4()), "customerId": str(uuid.uuid4())})
    command = parse_payment_request(body[:-1].encode() + b', "amount": 10.13}', str(uuid.uuid4()))
    assert command.amount == Decimal("10.13")
    assert render_json({"amount": Decimal("10.10")}) == '{"amount":10.10}'
