"""The simulated gateway's decision rules, as the C# simulator had them. Pure functions."""

from __future__ import annotations

import hashlib
import uuid
from decimal import Decimal

from payment_worker.domain.model import GatewayResult

AMOUNT_LIMIT = Decimal("999999.99")

_DECLINES: dict[str, tuple[str, str, str]] = {
    "13": ("CARD_DECLINED", "Your card was declined", "card_declined"),
    "66": ("INSUFFICIENT_FUNDS", "Insufficient funds on card", "insufficient_funds"),
    "99": ("PROCESSOR_TIMEOUT", "Payment processor timeout", "timeout"),
}
_TOO_LARGE = ("AMOUNT_TOO_LARGE", "Amount exceeds maximum limit", "processor_error")
_INJECTED = ("PROCESSOR_ERROR", "Simulated processor failure", "processor_error")


def _unit_interval(payment_id: uuid.UUID, salt: bytes) -> float:
    digest = hashlib.blake2b(payment_id.bytes, key=salt, digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def transaction_id(payment_id: uuid.UUID) -> str:
    """`txn_` + 16 hex, derived from the payment id so a retried charge answers the same."""
    return "txn_" + hashlib.blake2b(payment_id.bytes, digest_size=8, person=b"txn").hexdigest()


def answers_unknown(payment_id: uuid.UUID, unknown_rate: float) -> bool:
    """Whether the simulator loses its first answer for this payment id (the charge is made,
    the answer never arrives): a share `unknown_rate` of payment ids, always the same ones."""
    return unknown_rate > 0 and _unit_interval(payment_id, b"unknown-rate") < unknown_rate


def unknown_result(detail: str) -> GatewayResult:
    return GatewayResult(False, None, None, None, None, f"Unknown - {detail}", unknown=True)


def simulated_answer(
    payment_id: uuid.UUID, amount: Decimal, failure_rate: float = 0.0
) -> GatewayResult:
    """The gateway's answer for a charge: a function of the payment id and amount only."""
    failure: tuple[str, str, str] | None = None
    cents = f"{amount.quantize(Decimal('0.01')):f}"[-2:]
    if amount >= AMOUNT_LIMIT:
        failure = _TOO_LARGE
    elif cents in _DECLINES:
        failure = _DECLINES[cents]
    elif failure_rate > 0 and _unit_interval(payment_id, b"failure-rate") < failure_rate:
        failure = _INJECTED
    if failure is None:
        txn = transaction_id(payment_id)
        return GatewayResult(True, txn, None, None, None, f"Success - TransactionId: {txn}")
    code, message, reason = failure
    return GatewayResult(False, None, code, message, reason, f"Failed - {code}: {message}")
