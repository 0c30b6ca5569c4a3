"""Command validation with the contract's messages, in the C# controller's order."""

from __future__ import annotations

import re
import uuid
from decimal import Decimal, InvalidOperation

from payment_worker.domain.cards import contains_card_number
from payment_worker.domain.currencies import minor_units
from payment_worker.domain.model import Command, ValidCommand

MAX_AMOUNT = Decimal("999999999999.99")
MAX_PAYMENT_METHOD_LENGTH = 50


class ValidationFailed(ValueError):
    """A command broke a validation rule; the message is the reply's errorMessage."""


_UUID_TEXT = re.compile(
    r"^(?:\{)?[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(?:\})?$"
    r"|^[0-9a-fA-F]{32}$"
)


def parse_uuid(value: object) -> uuid.UUID | None:
    """A non-nil UUID written 8-4-4-4-12 (any case, optionally braced) or as 32 hex digits,
    as .NET's Guid reads them; None for anything else."""
    if type(value) is not str or not _UUID_TEXT.fullmatch(value):  # `$` passes a final \n
        return None
    if value.startswith("{") != value.endswith("}"):
        return None
    parsed = uuid.UUID(value)
    return parsed if parsed.int else None  # not the nil UUID


def _decimals(amount: Decimal) -> int:
    exponent = amount.normalize().as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def _too_many_decimals(amount: Decimal, allowed: int) -> bool:
    """More significant decimals than `allowed` (trailing zeros do not count). Normalising
    is needed only when the amount is written with more places than allowed, e.g. 25.000."""
    exponent = amount.as_tuple().exponent
    if isinstance(exponent, int) and exponent >= -allowed:
        return False
    return _decimals(amount) > allowed


def validate_command(command: Command) -> ValidCommand:
    """The command with parsed ids and a normalised currency, or ValidationFailed."""
    order_id = parse_uuid(command.order_id)
    if order_id is None:
        raise ValidationFailed("Valid OrderId is required")
    customer_id = parse_uuid(command.customer_id)
    if customer_id is None:
        raise ValidationFailed("Valid CustomerId is required")
    amount = command.amount
    try:
        positive = amount.is_finite() and amount > 0
    except InvalidOperation:
        positive = False
    if not positive:
        raise ValidationFailed("Amount must be greater than zero")

    reservation_id: uuid.UUID | None = None
    if command.reservation_id is not None:
        reservation_id = parse_uuid(command.reservation_id)
        if reservation_id is None:
            raise ValidationFailed("Valid ReservationId is required when one is given")
    currency = (command.currency or "").strip().upper()
    decimals = minor_units(currency)
    if decimals is None:
        raise ValidationFailed("Currency must be a supported ISO 4217 code")
    if amount > MAX_AMOUNT:
        raise ValidationFailed("Amount must not exceed 999999999999.99")
    if _too_many_decimals(amount, min(decimals, 2)):
        raise ValidationFailed(f"Amount has more decimals than {currency} allows ({decimals})")
    method = command.payment_method
    if not method or not method.strip():
        raise ValidationFailed("PaymentMethod is required")
    if len(method) > MAX_PAYMENT_METHOD_LENGTH:
        raise ValidationFailed("PaymentMethod must be at most 50 characters")
    if "\x00" in method:
        raise ValidationFailed("PaymentMethod must not contain NUL characters")
    if contains_card_number(method):
        raise ValidationFailed("PaymentMethod must not contain a card number")
    command_id = parse_uuid(command.command_id)
    if command_id is None:
        raise ValidationFailed("Valid CommandId is required")
    return ValidCommand(
        command_id=command_id,
        order_id=order_id,
        customer_id=customer_id,
        reservation_id=reservation_id,
        amount=amount,
        currency=currency,
        payment_method=method,
        requested_at=command.requested_at,
    )
