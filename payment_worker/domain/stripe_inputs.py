"""What the Stripe gateway takes: a PaymentMethod id, and amounts in minor units as Stripe's
API counts them (ISK differs from ISO 4217). Pure."""

from __future__ import annotations

import re
from decimal import Decimal

# A Stripe PaymentMethod id: pm_ and Stripe's id characters (the length check is the command's).
_PAYMENT_METHOD_ID = re.compile(r"pm_[A-Za-z0-9_]+")

# Stripe's zero-decimal currencies (docs.stripe.com/currencies#zero-decimal): 500 JPY is 500.
ZERO_DECIMAL = frozenset(
    {
        "BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA",
        "PYG", "RWF", "UGX", "VND", "VUV", "XAF", "XOF", "XPF",
    }
)  # fmt: skip
# Three-decimal currencies: 1.230 KWD is 1230, and Stripe requires the last digit to be 0
# (its card partners settle in hundredths), so 1.234 KWD cannot be charged.
THREE_DECIMAL = frozenset({"BHD", "JOD", "KWD", "OMR", "TND"})
# Stripe's special case: ISK is whole krónur now, but the API keeps two decimals for
# backwards compatibility (5 ISK is 500, and 5.50 ISK is refused).
WHOLE_UNITS_IN_HUNDREDTHS = frozenset({"ISK"})


def minor_units(amount: Decimal, currency: str) -> int:
    """`amount` of `currency` as the integer Stripe's `amount` field takes. ValueError when
    the currency cannot express it: a fraction finer than its minor unit (0.005 USD, 1.5 JPY),
    a three-decimal amount whose last digit is not 0, fractional krónur, or an amount that is
    not a positive finite number. (domain/currencies.py says which currencies are accepted.)"""
    code = currency.upper()
    if not amount.is_finite() or amount <= 0:
        raise ValueError(f"{amount} {code} is not a positive amount")
    if code in ZERO_DECIMAL:
        exponent, step = 0, 1
    elif code in THREE_DECIMAL:
        exponent, step = 3, 10
    elif code in WHOLE_UNITS_IN_HUNDREDTHS:
        exponent, step = 2, 100
    else:
        exponent, step = 2, 1
    units = amount.scaleb(exponent)
    whole = int(units)
    if units != whole or whole % step:
        raise ValueError(f"{amount} {code} cannot be charged: {_precision(code)}")
    return whole


def _precision(code: str) -> str:
    if code in ZERO_DECIMAL:
        return f"{code} has no minor unit"
    if code in THREE_DECIMAL:
        return f"{code} amounts go to hundredths (Stripe requires the third decimal to be 0)"
    if code in WHOLE_UNITS_IN_HUNDREDTHS:
        return f"{code} is charged in whole units"
    return f"{code} has two decimals"


def stripe_refusal(payment_method: str, amount: Decimal, currency: str) -> str | None:
    """Why the Stripe gateway cannot take a valid command (its INVALID_REQUEST message), or
    None: the method must be a PaymentMethod id, the amount one the currency can express."""
    if _PAYMENT_METHOD_ID.fullmatch(payment_method) is None:
        return "PaymentMethod must be a Stripe payment method id"
    try:
        minor_units(amount, currency)
    except ValueError as exc:
        return f"Amount {exc}"
    return None
