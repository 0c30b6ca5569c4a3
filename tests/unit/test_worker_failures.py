"""What the worker does when a record keeps failing, and the reconciler's pass (entrypoints/
worker.py), on fakes: no failure of one record stops its partition, a dependency everyone
needs is waited for, and one payment the reconciler cannot finish does not stop the others."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from payment_worker.domain.model import Outcome, Payment, PaymentStatus
from payment_worker.entrypoints.worker import Worker
from payment_worker.exceptions import (
    GatewayRefusedCredentials,
    InfrastructureUnavailable,
    RetryableError,
)
from payment_worker.service.pipeline import Handled, PipelineConfig
from payment_worker.service.ports import InboundRecord
from tests.unit.test_worker_flow import NullRelay

RECORD = InboundRecord("commands", 0, 7, b"k", b"v", [])


class FailingPipeline:
    """Each step raises what it is told to (an exception, or a list of them in turn)."""

    def __init__(self, handle: Any, failure: Any = None, dead_letter: Any = None) -> None:
        self.plan = {"handle": handle, "failure": failure, "dead_letter": dead_letter}
        self.calls: list[str] = []
        self.config = PipelineConfig()

    def _step(self, name: str) -> Handled:
        self.calls.append(name)
        if len(self.calls) > 100:
            raise AssertionError("retried without end")
        planned = self.plan[name]
        if isinstance(planned, list):
            planned = planned.pop(0) if planned else None
        if isinstance(planned, BaseException):
            raise planned
        return Handled(Outcome.ERROR if name == "failure" else None)

    async def handle(self, record: InboundRecord) -> Handled:
        return self._step("handle")

    async def handle_failure(self, record: InboundRecord, error: BaseException) -> Handled:
        return self._step("failure")

    async def dead_letter_only(self, record: InboundRecord, error: BaseException) -> Handled:
        return self._step("dead_letter")


def _worker(pipeline: Any, store: Any = None) -> Worker:
    worker = Worker(
        pipeline=pipeline,
        store=store,
        relay=NullRelay(),  # type: ignore[arg-type]
        make_consumer=lambda **_: None,  # type: ignore[arg-type,return-value]
        reconcile_after_s=60,
        record_attempts=3,
    )
    worker._backoff = _no_wait  # type: ignore[method-assign]
    return worker


async def _no_wait(record: Any, attempt: int, exc: BaseException) -> None:
    await asyncio.sleep(0)


async def test_a_record_failing_retryably_is_answered_error_after_a_few_tries() -> None:
    """A failure of the record alone that says "try again" is tried `record_attempts` times,
    then answered ERROR and dead-lettered: it never holds its partition forever."""
    pipeline = FailingPipeline(handle=RetryableError("no outcome yet"))
    handled = await _worker(pipeline)._with_retries(RECORD)
    assert pipeline.calls == ["handle"] * 3 + ["failure"]
    assert handled is not None and handled.outcome is Outcome.ERROR


async def test_a_database_outage_is_waited_for_not_given_up_on() -> None:
    """A dependency every record needs being down is not the record's fault: it is tried
    until the dependency is back, however many times, and then processed normally."""
    outage = [InfrastructureUnavailable("database down")] * 10
    pipeline = FailingPipeline(handle=outage)
    handled = await _worker(pipeline)._with_retries(RECORD)
    assert pipeline.calls == ["handle"] * 11
    assert handled is not None and handled.outcome is None


async def test_when_answering_error_fails_the_record_is_dead_lettered_alone() -> None:
    """An unexpected error, and then an error while answering ERROR: the record still goes to
    the dead letters, and the worker moves on."""
    pipeline = FailingPipeline(handle=ValueError("bug"), failure=ValueError("bug again"))
    handled = await _worker(pipeline)._with_retries(RECORD)
    assert pipeline.calls == ["handle", "failure", "dead_letter"]
    assert handled is not None


async def test_when_nothing_works_the_record_is_skipped_and_its_offset_moves_on() -> None:
    """Every way of answering fails: the record is given up on (logged and counted) with a
    result, so its offset is committed and the partition flows."""
    pipeline = FailingPipeline(
        handle=ValueError("a"), failure=ValueError("b"), dead_letter=ValueError("c")
    )
    worker = _worker(pipeline)
    offsets = worker.tracker.started(RECORD.topic, RECORD.partition, RECORD.offset)
    await worker._run(RECORD, offsets)
    assert pipeline.calls == ["handle", "failure", "dead_letter"]
    assert worker.tracker.to_commit() == {(RECORD.topic, RECORD.partition): RECORD.offset + 1}


def _stale(n: int) -> Payment:
    return Payment(
        id=uuid.uuid4(),
        order_id=uuid.uuid4(),
        customer_id=uuid.uuid4(),
        reservation_id=None,
        amount=Decimal("5.00"),
        currency="USD",
        payment_method="card",
        status=PaymentStatus.PENDING,
        created_at=datetime(2024, 1, 1, tzinfo=UTC),
        command_id=uuid.uuid4(),
    )


class ClaimingStore:
    """claim_stale hands out the given payments once (what the database claim would)."""

    def __init__(self, payments: list[Payment]) -> None:
        self.payments = payments
        self.claimed_by: list[str] = []
        self.released = 0
        self.released_early: list[uuid.UUID] = []
        self.runs: list[tuple[str, int]] = []

    async def claim_stale(
        self, age_s: float, owner: str, *, lease_s: float = 120.0, limit: int = 100
    ) -> list[tuple[Payment, dict[str, Any] | None]]:
        self.claimed_by.append(owner)
        out, self.payments = [(p, None) for p in self.payments], []
        return out

    async def release_claims(self) -> None:
        self.released += 1

    async def release_claim(self, payment_id: uuid.UUID, owner: str) -> None:
        self.released_early.append(payment_id)

    async def record_reconciler_run(self, reconciler_id: str, finished: int) -> None:
        self.runs.append((reconciler_id, finished))


class ReconcilingPipeline:
    def __init__(self, broken: set[uuid.UUID]) -> None:
        self.broken = broken
        self.finished: list[uuid.UUID] = []
        self.config = PipelineConfig()

    async def finish_stale(self, payment: Payment, route: Any) -> Handled:
        if payment.id in self.broken:
            raise RuntimeError("this one cannot be finished")
        self.finished.append(payment.id)
        return Handled(Outcome.SUCCEEDED)


async def test_a_payment_the_reconciler_cannot_finish_does_not_stop_the_pass() -> None:
    """The first stale payment breaks; the others of the pass are still finished, and the pass
    is recorded with the number it finished (what `payment-worker status` shows)."""
    payments = [_stale(i) for i in range(3)]
    pipeline = ReconcilingPipeline({payments[0].id})
    store = ClaimingStore(payments)
    worker = _worker(pipeline, store)
    finished = await worker.reconcile_once()
    assert finished == 2
    assert pipeline.finished == [payments[1].id, payments[2].id]
    assert store.released == 1
    assert store.runs == [(worker.reconciler_id, 2)]


async def test_each_worker_claims_under_its_own_name() -> None:
    """Two workers' reconcilers claim as different owners (the database lets one have a
    payment at a time)."""
    store = ClaimingStore([])
    await _worker(ReconcilingPipeline(set()), store).reconcile_once()
    await _worker(ReconcilingPipeline(set()), store).reconcile_once()
    assert len(set(store.claimed_by)) == 2


async def test_a_refused_gateway_key_stops_the_worker_without_answering_or_committing() -> None:
    """The gateway refusing our key is nobody's payment's fault: the record is neither
    answered nor dead-lettered nor committed (it is taken again under a good key), and the
    worker stops taking commands, raising the refusal for its one start-up-style line."""
    refused = GatewayRefusedCredentials("Stripe refused the API key (HTTP 401)")
    pipeline = FailingPipeline(handle=refused)
    worker = _worker(pipeline)
    offsets = worker.tracker.started(RECORD.topic, RECORD.partition, RECORD.offset)
    await worker._run(RECORD, offsets)
    assert pipeline.calls == ["handle"]
    assert worker.tracker.to_commit() == {}
    assert worker._refused_by is refused


async def test_a_refused_gateway_key_ends_the_reconciler_pass_and_keeps_the_payment() -> None:
    """Met by the reconciler, the refusal ends its pass: the payment's claim is released (it
    stays pending, for a worker with a good key) and no other payment is charged meanwhile."""
    payments = [_stale(i) for i in range(2)]

    class Refusing(ReconcilingPipeline):
        async def finish_stale(self, payment: Payment, route: Any) -> Handled:
            raise GatewayRefusedCredentials("refused")

    pipeline = Refusing(set())
    store = ClaimingStore(payments)
    worker = _worker(pipeline, store)
    assert await worker.reconcile_once() == 0
    assert store.released_early == [payments[0].id]
    assert worker._refused_by is not None
