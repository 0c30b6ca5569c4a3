"""The replay's own failure."""

from __future__ import annotations

from payment_worker.exceptions import PaymentWorkerError


class ReplayError(PaymentWorkerError):
    """Replay cannot start (unknown topic, unreachable broker)."""
