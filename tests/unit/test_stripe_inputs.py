"""minor_units: amounts as Stripe's `amount` field counts them, and those it cannot take."""

from __future__ import annotations

from decimal import Decimal

import pytest

from payment_worker.domain.stripe_inputs import minor_units, stripe_refusal


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        ("10.00", "USD", 1000),
        ("10", "usd", 1000),
        ("0.01", "EUR", 1),
        ("123456.78", "USD", 12345678),
        ("500", "JPY", 500),
        ("500.00", "JPY", 500),
        ("1500", "KRW", 1500),
        ("1.230", "KWD", 1230),
        ("1.23", "KWD", 1230),
        ("5", "BHD", 5000),
        ("5", "ISK", 500),
    ],
)
def test_an_amount_is_sent_in_the_currencys_minor_units(
    amount: str, currency: str, expected: int
) -> None:
    """Two decimals for most currencies, none for zero-decimal ones (JPY, KRW), three for
    the dinars (KWD, BHD), and ISK in hundredths of whole krónur, as Stripe counts them."""
    assert minor_units(Decimal(amount), currency) == expected


@pytest.mark.parametrize(
    ("amount", "currency"),
    [
        ("10.005", "USD"),  # finer than a cent
        ("1.5", "JPY"),  # the yen has no minor unit
        ("1.234", "KWD"),  # Stripe takes three-decimal amounts to the hundredth only
        ("5.50", "ISK"),  # whole krónur only
        ("0", "USD"),
        ("-1.00", "USD"),
        ("NaN", "USD"),
        ("Infinity", "USD"),
    ],
)
def test_an_amount_the_currency_cannot_express_is_refused(amount: str, currency: str) -> None:
    """Never rounded: an amount the currency cannot express raises ValueError, so nobody is
    charged a different sum than the one ordered."""
    with pytest.raises(ValueError, match=currency.upper()):
        minor_units(Decimal(amount), currency)


@pytest.mark.parametrize(
    ("method", "amount", "currency", "refusal"),
    [
        ("pm_1PgQx2LkdIwHu7ixKqVz3bXp", "12.34", "USD", None),
        ("pm_card_visa", "500", "JPY", None),
        ("credit_card", "12.34", "USD", "PaymentMethod must be a Stripe payment method id"),
        ("pm_", "12.34", "USD", "PaymentMethod must be a Stripe payment method id"),
        ("pm_abc def", "12.34", "USD", "PaymentMethod must be a Stripe payment method id"),
        ("tok_visa", "12.34", "USD", "PaymentMethod must be a Stripe payment method id"),
        ("PM_ABC", "12.34", "USD", "PaymentMethod must be a Stripe payment method id"),
        ("pm_abc", "1.50", "JPY", "Amount 1.50 JPY cannot be charged: JPY has no minor unit"),
    ],
)
def test_what_the_stripe_gateway_cannot_take_is_named(
    method: str, amount: str, currency: str, refusal: str | None
) -> None:
    """A payment method that is not a PaymentMethod id, or an amount its currency cannot
    express, is refused with the INVALID_REQUEST message; anything else is taken."""
    assert stripe_refusal(method, Decimal(amount), currency) == refusal
