"""The simulated payment gateway: the domain's rules plus configurable latency."""

from __future__ import annotations

import asyncio
import random

import structlog

from payment_worker import metrics
from payment_worker.domain.gateway_rules import decide
from payment_worker.domain.model import GatewayResult, Payment

log = structlog.get_logger("payment_worker.gateway")


class SimulatedGateway:
    """GatewayPort. The payment id is the idempotency key: one id, one answer, every time."""

    def __init__(self, latency_ms: tuple[int, int] = (100, 500), failure_rate: float = 0.0) -> None:
        self.latency_ms = latency_ms
        self.failure_rate = failure_rate

    async def charge(self, payment: Payment) -> GatewayResult:
        with metrics.dependency_call("gateway", "gateway charge", _span_ids(payment)) as call:
            low, high = self.latency_ms
            if high > 0:
                await asyncio.sleep(random.uniform(low, high) / 1000)
            result = decide(payment.id, payment.amount, self.failure_rate)
            call.outcome = "ok" if result.success else "declined"
        log.debug(
            "gateway_charge",
            payment_id=str(payment.id),
            success=result.success,
            code=result.error_code,
            transaction_id=result.transaction_id,
        )
        return result


def _span_ids(payment: Payment) -> dict[str, str]:
    return {"payment.id": str(payment.id), "payment.order_id": str(payment.order_id)}
