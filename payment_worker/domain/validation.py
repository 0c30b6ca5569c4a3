"""Command validation with the contract's messages, in the C# controller's order."""

from __future__ import annotations

import re
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from payment_worker.domain.cards import contains_card_number, redacted_prefix
from payment_worker.domain.currencies import minor_units
from payment_worker.domain.ids import Id
from payment_worker.domain.model import Command, ValidCommand

MAX_AMOUNT = Decimal("999999999999.99")
MAX_PAYMENT_METHOD_LENGTH = 50
# An id that is not a UUID is echoed in the reply cut to this many characters: a UUID has 36,
# and a hostile one (a 1 MB commandId) is neither searched whole nor sent back whole.
MAX_ECHOED_ID_LENGTH = 255


class ValidationFailed(ValueError):
    """A command broke a validation rule; the message is the reply's errorMessage."""


_UUID_TEXT = re.compile(
    r"^(?:\{)?[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(?:\})?$"
    r"|^[0-9a-fA-F]{32}$"
)


def parse_uuid(value: object) -> Id | None:
    """A non-nil UUID written 8-4-4-4-12 (any case, optionally braced) or as 32 hex digits,
    as .NET's Guid reads them; None for anything else."""
    canonical = Id.canonical(value)
    if canonical is not None:
        return canonical if canonical.int else None  # not the nil UUID
    if type(value) is not str or not _UUID_TEXT.fullmatch(value):  # `$` passes a final \n
        return None
    if value.startswith("{") != value.endswith("}"):
        return None
    parsed = Id(value)
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


def command_from_record(raw: dict[str, Any]) -> Command:
    requested = raw.get("requestedAt")
    if not isinstance(requested, datetime):
        requested = datetime.now(UTC)
    amount = raw.get("amount")
    return Command(
        command_id=str(raw.get("commandId", "")),
        order_id=str(raw.get("orderId", "")),
        customer_id=str(raw.get("customerId", "")),
        reservation_id=raw.get("reservationId"),
        amount=amount if isinstance(amount, Decimal) else Decimal(0),
        currency=str(raw.get("currency", "USD")),
        payment_method=str(raw.get("paymentMethod", "")),
        requested_at=requested,
    )


def with_canonical_ids(command: Command, valid: ValidCommand) -> Command:
    """The command with its ids in canonical form (lower case, hyphenated) for what we write;
    the command itself when it is already so (the usual case: no copy to build)."""
    if (
        command.currency == valid.currency
        and _is_canonical(command.command_id)
        and _is_canonical(command.order_id)
        and _is_canonical(command.customer_id)
        and (command.reservation_id is None or _is_canonical(command.reservation_id))
    ):
        return command
    return Command(
        command_id=str(valid.command_id),
        order_id=str(valid.order_id),
        customer_id=str(valid.customer_id),
        reservation_id=(
            str(valid.reservation_id)
            if command.reservation_id is not None and valid.reservation_id is not None
            else None
        ),
        amount=command.amount,
        currency=valid.currency,
        payment_method=command.payment_method,
        requested_at=command.requested_at,
    )


def _is_canonical(validated_id: str) -> bool:
    """A validated id of 36 characters is hyphenated 8-4-4-4-12: canonical in lower case."""
    return len(validated_id) == 36 and validated_id.lower() == validated_id


def as_echoed(command: Command) -> Command:
    """An invalid command as its reply echoes it: an id that is a UUID in canonical form, any
    other as received with its card numbers masked."""
    command_id, order_id = echoed_id(command.command_id), echoed_id(command.order_id)
    if command_id == command.command_id and order_id == command.order_id:
        return command
    return replace(command, command_id=command_id, order_id=order_id)


def echoed_id(text: str) -> str:
    """An id as a reply echoes it: canonical when it is a UUID, else its first
    `MAX_ECHOED_ID_LENGTH` characters with card numbers masked."""
    parsed = parse_uuid(text)
    return str(parsed) if parsed is not None else redacted_prefix(text, MAX_ECHOED_ID_LENGTH)
