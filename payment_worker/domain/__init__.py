"""The payment model: commands, outcomes, validation and the simulated gateway's rules. No I/O."""

from payment_worker.domain.model import (
    Command,
    GatewayResult,
    Outcome,
    Payment,
    PaymentStatus,
    Reply,
)
from payment_worker.domain.validation import validate_command

__all__ = [
    "Command",
    "GatewayResult",
    "Outcome",
    "Payment",
    "PaymentStatus",
    "Reply",
    "validate_command",
]
