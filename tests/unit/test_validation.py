"""Command validation (domain/validation.py): the contract's messages, their order, the stricter
rules, and that nothing but ValidationFailed ever comes out."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from payment_worker.domain.model import Command, ValidCommand
from payment_worker.domain.validation import (
    MAX_ECHOED_ID_LENGTH,
    ValidationFailed,
    echoed_id,
    validate_command,
)
from tests.scale import scale

NIL = "00000000-0000-0000-0000-000000000000"
MALFORMED_IDS = [
    "",
    "not-a-uuid",
    "1234",
    "12345678-1234-1234-1234-1234567890a",  # one hex digit short
    "12345678-1234-1234-1234-1234567890abc",  # one hex digit too many
    "1234567g-1234-1234-1234-1234567890ab",  # not hex
    "12345678-1234-1234-1234-1234567890ab-extra",
]


def command(**overrides: Any) -> Command:
    """A valid command (10.50 USD, credit_card) with `overrides` applied."""
    fields: dict[str, Any] = {
        "command_id": str(uuid.uuid4()),
        "order_id": str(uuid.uuid4()),
        "customer_id": str(uuid.uuid4()),
        "reservation_id": None,
        "amount": Decimal("10.50"),
        "currency": "USD",
        "payment_method": "credit_card",
        "requested_at": datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
    }
    fields.update(overrides)
    return Command(**fields)


def rejection(cmd: Command) -> str:
    """The ValidationFailed message validate_command gives for `cmd`."""
    with pytest.raises(ValidationFailed) as info:
        validate_command(cmd)
    return str(info.value)


# -- the C# controller's three messages, in its order ------------------------------------------


def test_valid_command_passes_with_parsed_ids() -> None:
    """A well-formed command validates to a ValidCommand whose ids are the parsed UUIDs."""
    cmd = command(reservation_id=str(uuid.uuid4()))
    valid = validate_command(cmd)
    assert isinstance(valid, ValidCommand)
    assert (valid.command_id, valid.order_id, valid.customer_id, valid.reservation_id) == (
        uuid.UUID(cmd.command_id),
        uuid.UUID(cmd.order_id),
        uuid.UUID(cmd.customer_id),
        uuid.UUID(cmd.reservation_id or ""),
    )
    assert valid.amount == Decimal("10.50")


@pytest.mark.parametrize("order_id", [*MALFORMED_IDS, NIL])
def test_missing_malformed_or_nil_order_id_is_rejected(order_id: str) -> None:
    """An order id that is empty, malformed or the nil UUID gets `Valid OrderId is required`."""
    assert rejection(command(order_id=order_id)) == "Valid OrderId is required"


@pytest.mark.parametrize("customer_id", [*MALFORMED_IDS, NIL])
def test_missing_malformed_or_nil_customer_id_is_rejected(customer_id: str) -> None:
    """A customer id that is empty, malformed or nil gets `Valid CustomerId is required`."""
    assert rejection(command(customer_id=customer_id)) == "Valid CustomerId is required"


@pytest.mark.parametrize(
    "amount",
    [
        Decimal("0"),
        Decimal("0.00"),
        Decimal("-0.01"),
        Decimal("-10.50"),
        Decimal("NaN"),
        Decimal("-Infinity"),
    ],
)
def test_zero_negative_or_non_finite_amount_is_rejected(amount: Decimal) -> None:
    """Zero, negative (and not-a-number) amounts get `Amount must be greater than zero`."""
    assert rejection(command(amount=amount)) == "Amount must be greater than zero"


def test_bad_order_id_is_reported_before_bad_customer_id() -> None:
    """With both ids bad, the order id message wins (the C# controller's order)."""
    assert rejection(command(order_id="nope", customer_id="nope")) == "Valid OrderId is required"


def test_bad_customer_id_is_reported_before_bad_amount() -> None:
    """With a bad customer id and a zero amount, the customer id message wins."""
    cmd = command(customer_id=NIL, amount=Decimal("0"))
    assert rejection(cmd) == "Valid CustomerId is required"


def test_bad_amount_is_reported_before_the_stricter_rules() -> None:
    """A zero amount is reported even when reservation, currency and method are also bad."""
    cmd = command(amount=Decimal("0"), reservation_id="nope", currency="XYZ", payment_method="")
    assert rejection(cmd) == "Amount must be greater than zero"


# -- the stricter rules ------------------------------------------------------------------------


@pytest.mark.parametrize("reservation_id", [*MALFORMED_IDS, NIL])
def test_malformed_or_nil_reservation_id_is_rejected(reservation_id: str) -> None:
    """A reservation id that is given but malformed or nil is a validation error."""
    assert "ReservationId" in rejection(command(reservation_id=reservation_id))


def test_absent_reservation_id_is_accepted() -> None:
    """The reservation id is optional: None validates to None."""
    assert validate_command(command(reservation_id=None)).reservation_id is None


@pytest.mark.parametrize(
    ("amount", "currency"),
    [
        (Decimal("100.5"), "JPY"),
        (Decimal("0.01"), "JPY"),
        (Decimal("10.001"), "USD"),
        (Decimal("10.555"), "EUR"),
    ],
)
def test_more_decimals_than_the_currency_allows_is_rejected(amount: Decimal, currency: str) -> None:
    """JPY allows no decimals and USD/EUR two; more is a validation error naming the currency."""
    assert currency in rejection(command(amount=amount, currency=currency))


@pytest.mark.parametrize(
    ("amount", "currency"),
    [
        (Decimal("1500"), "JPY"),
        (Decimal("1500.00"), "JPY"),
        (Decimal("10.5"), "USD"),
        (Decimal("10.01"), "USD"),
        (Decimal("10.10"), "KWD"),
        (Decimal("10.000"), "USD"),
        (Decimal("1E+3"), "JPY"),
    ],
)
def test_amount_within_the_currency_decimals_is_accepted(amount: Decimal, currency: str) -> None:
    """Trailing zeros do not count (Avro's scale 2 gives JPY 1500.00), and USD takes two."""
    assert validate_command(command(amount=amount, currency=currency)).amount == amount


def test_amount_above_the_maximum_is_rejected() -> None:
    """An amount above 999,999,999,999.99 is a validation error."""
    assert "999999999999.99" in rejection(command(amount=Decimal("1000000000000.00")))


def test_amount_at_the_maximum_is_accepted() -> None:
    """Exactly 999,999,999,999.99 is still a valid amount."""
    valid = validate_command(command(amount=Decimal("999999999999.99")))
    assert valid.amount == Decimal("999999999999.99")


@pytest.mark.parametrize("currency", ["XYZ", "BTC", "US", "USDD", "", "   "])
def test_unsupported_currency_is_rejected(currency: str) -> None:
    """A currency that is not a supported ISO 4217 code is a validation error."""
    assert "Currency" in rejection(command(currency=currency))


@pytest.mark.parametrize(
    ("given", "normalised"), [("usd", "USD"), ("eUr", "EUR"), (" jpy ", "JPY")]
)
def test_currency_is_normalised_to_upper_case(given: str, normalised: str) -> None:
    """A lower- or mixed-case currency code is accepted and normalised to upper case."""
    amount = Decimal("1500") if normalised == "JPY" else Decimal("10.50")
    assert validate_command(command(currency=given, amount=amount)).currency == normalised


@pytest.mark.parametrize("method", ["", "   ", "\t"])
def test_blank_payment_method_is_rejected(method: str) -> None:
    """An empty or whitespace-only payment method is a validation error."""
    assert "PaymentMethod" in rejection(command(payment_method=method))


def test_payment_method_longer_than_50_characters_is_rejected() -> None:
    """A payment method of 51 characters is a validation error."""
    assert "50" in rejection(command(payment_method="m" * 51))


def test_payment_method_of_50_characters_is_accepted() -> None:
    """A payment method of exactly 50 characters is valid."""
    assert validate_command(command(payment_method="m" * 50)).payment_method == "m" * 50


@pytest.mark.parametrize(
    "method",
    [
        "4111111111111111",
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "visa 4111111111111111 exp 12/30",
        "4222222222222",  # 13 digits, Luhn-valid
        "4000000000000000006",  # 19 digits, Luhn-valid
        "5555-5555-5555-4444",
    ],
)
def test_payment_method_with_a_card_number_is_rejected(method: str) -> None:
    """A Luhn-valid run of 13-19 digits (spaces or dashes allowed) is a validation error."""
    assert "card number" in rejection(command(payment_method=method))


def test_payment_method_with_a_nul_character_is_rejected() -> None:
    """A NUL cannot be stored in a PostgreSQL text column: refused with a clear message, not
    an ERROR from the database."""
    assert rejection(command(payment_method="card\x00")) == (
        "PaymentMethod must not contain NUL characters"
    )


def test_card_number_rejection_does_not_echo_the_digits() -> None:
    """The error message (which becomes the reply and log line) never carries the card number."""
    message = rejection(command(payment_method="card 4111 1111 1111 1111"))
    digits = "".join(ch for ch in message if ch.isdigit())
    assert "4111" not in digits


@pytest.mark.parametrize("method", ["123456789012", "ref 1234-5678-9012", "1234567890123"])
def test_digit_string_that_is_not_a_card_number_is_accepted(method: str) -> None:
    """12 digits, or 13 digits failing Luhn, are not a card number and pass."""
    assert validate_command(command(payment_method=method)).payment_method == method


# and strips any number of braces, so hyphens in the wrong places pass as a "valid" order id.
@pytest.mark.parametrize(
    "order_id",
    ["----123456781234123412341234567890ab", "1234-5678-1234-1234-1234-1234567890ab"],
)
def test_order_id_with_misplaced_hyphens_is_rejected(order_id: str) -> None:
    """An order id whose hyphens are not in the 8-4-4-4-12 places is malformed."""
    assert rejection(command(order_id=order_id)) == "Valid OrderId is required"


# -- nothing but ValidationFailed --------------------------------------------------------------

_ids = st.one_of(st.text(max_size=40), st.uuids().map(str), st.just(NIL))
_amounts = st.decimals(allow_nan=True, allow_infinity=True)
_currencies = st.one_of(st.text(max_size=5), st.sampled_from(["usd", "JPY", "KWD", "EUR"]))
_methods = st.one_of(
    st.text(max_size=60),
    st.text(alphabet="0123456789 -", max_size=60),
)


@settings(
    max_examples=scale(400, 2000), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    command_id=_ids,
    order_id=_ids,
    customer_id=_ids,
    reservation_id=st.one_of(st.none(), _ids),
    amount=_amounts,
    currency=_currencies,
    payment_method=_methods,
)
def test_validate_command_raises_only_validation_failed(
    command_id: str,
    order_id: str,
    customer_id: str,
    reservation_id: str | None,
    amount: Decimal,
    currency: str,
    payment_method: str,
) -> None:
    """On arbitrary strings and decimals, validate_command returns or raises ValidationFailed."""
    cmd = Command(
        command_id,
        order_id,
        customer_id,
        reservation_id,
        amount,
        currency,
        payment_method,
        datetime(2024, 5, 1, tzinfo=UTC),
    )
    try:
        valid = validate_command(cmd)
    except ValidationFailed:
        return
    assert valid.amount > 0


@pytest.mark.parametrize(
    "form",
    [
        lambda u: str(u),
        lambda u: str(u).upper(),
        lambda u: "{" + str(u).upper() + "}",
        lambda u: u.hex,
        lambda u: u.hex.upper(),
    ],
)
def test_canonical_ids_are_lower_case_hyphenated_whatever_form_was_sent(form: Any) -> None:
    """Every form .NET accepts is written (ledger, replies, keys) as str(UUID)."""
    from payment_worker.domain.validation import with_canonical_ids

    ids = [uuid.uuid4() for _ in range(4)]
    command = Command(
        command_id=form(ids[0]),
        order_id=form(ids[1]),
        customer_id=form(ids[2]),
        reservation_id=form(ids[3]),
        amount=Decimal("10.00"),
        currency="usd",
        payment_method="card",
        requested_at=datetime.now(UTC),
    )
    result = with_canonical_ids(command, validate_command(command))
    assert [result.command_id, result.order_id, result.customer_id, result.reservation_id] == [
        str(u) for u in ids
    ]
    assert result.currency == "USD"


def test_an_id_with_a_trailing_newline_is_invalid_not_an_error() -> None:
    """`$` in a regular expression also matches before a final newline: ids are matched whole,
    so such an id gets the contract's message instead of crashing the UUID parser."""
    command = Command(
        command_id=str(uuid.uuid4()),
        order_id=str(uuid.uuid4()) + "\n",
        customer_id=str(uuid.uuid4()),
        reservation_id=None,
        amount=Decimal("10.00"),
        currency="USD",
        payment_method="card",
        requested_at=datetime.now(UTC),
    )
    with pytest.raises(ValidationFailed, match="Valid OrderId is required"):
        validate_command(command)


_ID = "0b5e5a3c-6f2d-4d7e-9a41-2f0c7d9e8b6a"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, {}),
        ({"order_id": _ID.upper()}, {"order_id": _ID}),
        ({"customer_id": "{" + _ID + "}"}, {"customer_id": _ID}),
        ({"command_id": _ID.replace("-", "")}, {"command_id": _ID}),
        ({"reservation_id": _ID.upper()}, {"reservation_id": _ID}),
        ({"reservation_id": None}, {"reservation_id": None}),
        ({"currency": " usd"}, {"currency": "USD"}),
        # no letter in it: str.islower() is False, and the id is still canonical
        ({"order_id": "01234567-8901-4234-8567-890123456789"}, {}),
    ],
)
def test_canonical_writes_ids_and_currency_as_stored(
    changes: dict[str, Any], expected: dict[str, Any]
) -> None:
    """with_canonical_ids() gives lower-case hyphenated ids and the normalised currency whatever the
    command's spelling, and hands back the command itself when nothing needs changing."""
    from dataclasses import replace

    from payment_worker.domain.validation import with_canonical_ids

    base = Command(_ID, _ID, _ID, _ID, Decimal("25.00"), "USD", "card", datetime.now(UTC))
    command = replace(base, **changes)
    result = with_canonical_ids(command, validate_command(command))
    assert result == replace(command, **expected)
    if not expected:
        assert result is command


def test_an_echoed_id_is_capped_before_it_is_searched() -> None:
    """An id that is not a UUID is echoed cut to 255 characters, card numbers masked, however
    long it came (a 1 MB run of digits is not searched whole)."""
    assert echoed_id("1" * 1_000_000) == "1" * MAX_ECHOED_ID_LENGTH
    assert echoed_id("x" * 250 + "4111111111111111") == "x" * 250 + "41111"
    assert echoed_id("not-an-id 4111111111111111") == "not-an-id 411111******1111"
