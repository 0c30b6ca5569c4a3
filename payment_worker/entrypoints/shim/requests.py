"""The body of POST /payments turned into a ProcessPayment command, or the contract's 400."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, Field

from payment_worker.domain.model import Command
from payment_worker.domain.validation import ValidationFailed, validate_command

IDEMPOTENCY_NAMESPACE = uuid.UUID("2b5e8f1c-7d44-4f0e-9a6b-3c1d2e4f5a60")
MAX_BODY_BYTES = 64 * 1024
MAX_KEY_LENGTH = 255


class PaymentRequest(BaseModel, frozen=True):
    """The C# PaymentRequest; property names are matched case-insensitively."""

    orderId: uuid.UUID
    customerId: uuid.UUID
    reservationId: uuid.UUID | None = None
    amount: Decimal = Field(gt=0, examples=["25.00"])
    currency: str = "USD"
    paymentMethod: str = "credit_card"


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _reject_constant(name: str) -> Any:
    raise BadRequest(f"Invalid JSON: {name} is not a number")


def _as_id(value: Any) -> str:
    return value if isinstance(value, str) else ""


# An amount given as text: ASCII digits with at most one '.' between digits. Decimal() alone
# also reads "1_000", "1e3", " 20 " and digits of every script (Arabic-Indic, full-width...).
_MAX_AMOUNT_TEXT = 64  # far above 999999999999.99 with any trailing zeros; bounds the search
_AMOUNT_TEXT = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def _as_amount(value: Any) -> Decimal:
    if value is None:
        return Decimal(0)
    if isinstance(value, bool):
        raise ValidationFailed("Amount must be greater than zero")
    if isinstance(value, Decimal | int):
        return Decimal(value)
    if isinstance(value, str):
        if len(value) > _MAX_AMOUNT_TEXT or not _AMOUNT_TEXT.fullmatch(value):
            raise ValidationFailed("Amount must be greater than zero")
        return Decimal(value)
    raise ValidationFailed("Amount must be greater than zero")


def _is_text(data: Any) -> bool:
    """Every string of the parsed body encodes as UTF-8. JSON lets a string escape a lone
    surrogate (\\ud800), which no UTF-8 text holds (I-JSON, RFC 7493, forbids it): the command
    could not be encoded, and a 500 would follow."""
    try:
        json.dumps(data, ensure_ascii=False, default=str).encode("utf-8")
    except (UnicodeEncodeError, RecursionError):
        return False
    return True


def parse_payment_request(body: bytes, command_id: str) -> Command:
    """The command a request body asks for; BadRequest/ValidationFailed with the message."""
    if not body or not body.strip():
        raise BadRequest("Payment request is required")
    try:
        data = json.loads(body, parse_float=Decimal, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        if isinstance(exc, BadRequest):
            raise
        raise BadRequest("Invalid JSON in the request body") from None
    if not isinstance(data, dict):
        raise BadRequest("Payment request must be a JSON object")
    if not _is_text(data):
        raise BadRequest("Invalid JSON in the request body: a string is not Unicode text")
    fields = {str(k).lower(): v for k, v in data.items()}
    reservation = fields.get("reservationid")
    currency = fields.get("currency")
    method = fields.get("paymentmethod")
    command = Command(
        command_id=command_id,
        order_id=_as_id(fields.get("orderid")),
        customer_id=_as_id(fields.get("customerid")),
        reservation_id=None
        if reservation is None
        else (reservation if isinstance(reservation, str) else "invalid"),
        amount=Decimal(0),
        currency="USD" if currency is None else (currency if isinstance(currency, str) else ""),
        payment_method="credit_card"
        if method is None
        else (method if isinstance(method, str) else ""),
        requested_at=datetime.now(UTC),
    )
    # Checked in the contract's order: ids first, then the amount, then the stricter rules.
    try:
        amount = _as_amount(fields.get("amount"))
    except ValidationFailed:
        validate_command(command)  # an id message comes first when an id is also wrong
        raise
    command = replace(command, amount=amount)
    validate_command(command)
    return command
