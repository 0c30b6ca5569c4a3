"""The state gauges: consumer lag per partition, the outbox's and the payments' backlog and
oldest age, sampled every few seconds from the broker and the database while the worker runs."""

from __future__ import annotations

import asyncio

import structlog

from payment_worker import metrics
from payment_worker.exceptions import RetryableError
from payment_worker.service.ports import GroupLagPort, HealthStorePort

log = structlog.get_logger("payment_worker.gauges")


class StateGauges:
    """Each worker samples the whole group's lag (every partition, not only its own): alert
    rules take the max() across workers."""

    def __init__(self, store: HealthStorePort, lag: GroupLagPort, every_s: float = 5.0) -> None:
        self.store = store
        self.lag = lag
        self.every_s = every_s

    async def sample_once(self) -> None:
        """One sample of each source; a source that fails is counted and logged, its gauges
        keep their last value (the failure itself pages through other alerts)."""
        try:
            for p in await self.lag.lags():
                metrics.CONSUMER_LAG.labels(p.topic, str(p.partition)).set(p.lag)
        except RetryableError as exc:
            metrics.SAMPLE_FAILURES.labels("kafka").inc()
            log.warning("lag_sample_failed", error=str(exc))
        try:
            state = await self.store.stuck_state(details=False)
        except RetryableError as exc:
            metrics.SAMPLE_FAILURES.labels("database").inc()
            log.warning("state_sample_failed", error=str(exc))
            return
        metrics.OUTBOX_BACKLOG.set(state.outbox_backlog)
        metrics.OUTBOX_PARKED_ROWS.set(state.parked)
        metrics.OUTBOX_OLDEST_AGE.set(state.oldest_unsent_s)
        metrics.PENDING_PAYMENTS.set(state.pending)
        metrics.PENDING_OLDEST_AGE.set(state.oldest_pending_s)

    async def run(self) -> None:
        while True:
            await self.sample_once()
            await asyncio.sleep(self.every_s)
