"""The simulated payment gateway: the domain's rules plus configurable latency."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import structlog

from payment_worker import metrics
from payment_worker.domain.gateway_rules import answers_unknown, simulated_answer, unknown_result
from payment_worker.domain.model import GatewayResult, Payment, ValidCommand

log = structlog.get_logger("payment_worker.gateway")


class SimulatedGateway:
    """GatewayPort. The payment id is the idempotency key: one id, one answer, every time."""

    def __init__(
        self,
        latency_ms: tuple[int, int] = (100, 500),
        failure_rate: float = 0.0,
        unknown_rate: float = 0.0,
    ) -> None:
        self.latency_ms = latency_ms
        self.failure_rate = failure_rate
        self.unknown_rate = unknown_rate
        # Payment ids whose first answer this process lost: asked again, they are answered.
        self._lost_once: set[uuid.UUID] = set()

    async def open(self) -> None:
        """Nothing to open (the same lifecycle as a real gateway's)."""

    async def close(self) -> None:
        """Nothing to close."""

    async def check_key(self) -> str | None:
        return None  # no key to check

    def refusal(self, valid: ValidCommand) -> str | None:
        return None  # it takes any valid command

    async def charge(self, payment: Payment) -> GatewayResult:
        with charge_call(payment) as answered:
            low, high = self.latency_ms
            if high > 0:
                await asyncio.sleep(random.uniform(low, high) / 1000)
            result = simulated_answer(payment.id, payment.amount, self.failure_rate)
            if payment.id not in self._lost_once and answers_unknown(payment.id, self.unknown_rate):
                self._lost_once.add(payment.id)
                result = unknown_result("the simulated processor did not answer in time")
            return answered(result)


@contextmanager
def charge_call(payment: Payment) -> Iterator[Callable[[GatewayResult], GatewayResult]]:
    """One charge at any gateway as a dependency call (its span and latency): what it yields
    gives the result back, counted under the outcome it says and logged in one debug line."""
    ids = {"payment.id": str(payment.id), "payment.order_id": str(payment.order_id)}
    with metrics.dependency_call("gateway", "gateway charge", ids) as call:

        def answered(result: GatewayResult) -> GatewayResult:
            call.outcome = "unknown" if result.unknown else "ok" if result.success else "declined"
            log.debug(
                "gateway_charge",
                payment_id=ids["payment.id"],
                success=result.success,
                unknown=result.unknown,
                code=result.error_code,
                transaction_id=result.transaction_id,
            )
            return result

        yield answered
