"""The money path of one valid command: the order and reservation checks, the ledger's facts,
the order lock, the pending payment, the charge, and the outcome recorded with its reply and
event in one transaction. Every rule is `decide`'s; this module carries decisions out."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import datetime

from payment_worker.domain.decision import (
    ORDER_BUSY,
    OUTCOME_UNKNOWN,
    Answer,
    AnswerRecorded,
    Charge,
    Checked,
    Decision,
    Fail,
    Inconsistent,
    ReadLedger,
    Rejected,
    Resume,
    Unchecked,
    Wait,
    charged,
    decide,
)
from payment_worker.domain.ids import new_uuid
from payment_worker.domain.model import Outcome, Payment, PaymentStatus, ValidCommand, reply
from payment_worker.exceptions import RetryableError
from payment_worker.retrying import polling
from payment_worker.service.answering import (
    Answers,
    Handled,
    InconsistentLedger,
    Request,
    ledger_fields,
)
from payment_worker.service.lookups import Lookups
from payment_worker.service.messages import MessageFactory
from payment_worker.service.ports import (
    DependencyUnavailable,
    GatewayPort,
    InventoryPort,
    LedgerPort,
    OrderingPort,
    OrderLocked,
    OrderLockPort,
    OutcomeUnknown,
)


class Payer:
    """Carries a valid command, or the reconciler's stale payment, through the money rules."""

    def __init__(
        self,
        *,
        ledger: LedgerPort,
        ordering: OrderingPort,
        inventory: InventoryPort,
        gateway: GatewayPort,
        locks: OrderLockPort,
        answers: Answers,
        messages: MessageFactory,
        busy_retry_budget_s: float,
        clock: Callable[[], datetime],
    ) -> None:
        self.ledger = ledger
        self.ordering = ordering
        self.inventory = inventory
        self.gateway = gateway
        self.locks = locks
        self.answers = answers
        self.messages = messages
        self.busy_retry_budget_s = busy_retry_budget_s
        self.clock = clock
        self._releases: set[asyncio.Future[None]] = set()

    async def finish_stale(self, request: Request, payment: Payment) -> Handled:
        """The reconciler's step (rule I5): charge a pending payment whose command went away."""
        token = await self.locks.acquire(payment.order_id)
        try:
            return await self.charge(request, payment)
        finally:
            await self.locks.release(payment.order_id, token)

    async def process(self, request: Request, valid: ValidCommand) -> Handled:
        # The order and the reservation are fetched, and the order lock asked for, at once.
        # An accepted command goes straight to begin_facts, which inserts the pending
        # payment when nothing blocks it; any other is decided with the ledger read first.
        # What the gateway cannot take is refused like an order that does not match: after
        # what the ledger records (I1: a command answered before, under another gateway, is
        # answered the same), before anything is asked of the services.
        refused = self.gateway.refusal(valid)
        lookups = None if refused is not None else Lookups(self.ordering, self.inventory, valid)
        lock = asyncio.ensure_future(self.locks.acquire(valid.order_id))
        try:
            checked: Checked = (
                await lookups.check(self.clock)
                if lookups is not None
                else Rejected(reply(Outcome.INVALID_REQUEST, str(refused)))
            )
            decision = decide(valid, checked, None)
            if isinstance(decision, ReadLedger):
                if isinstance(checked, Unchecked) and not isinstance(
                    checked.error, DependencyUnavailable
                ):
                    # Logged even when the ledger answers: a broken lookup must not hide
                    # behind duplicates (an unavailable service is logged by its retries).
                    error = checked.error
                    request.log.warning(
                        "order_check_failed", error=f"{type(error).__name__}: {error}"
                    )
                snapshot = await self.ledger.snapshot(valid.command_id, valid.order_id)
                decision = decide(valid, checked, snapshot)
            if isinstance(decision, Charge | Resume):
                try:
                    await lock  # held (or Redis is down: degraded) until the outcome is recorded
                except OrderLocked:
                    request.log.warning("order_busy", detail="its lock is held by another worker")
                    return await self.answers.reply(request, ORDER_BUSY)
                return await self._pay(request, valid)
            if isinstance(decision, Answer) and isinstance(checked, Rejected):
                request.log.info("command_rejected", outcome=str(decision.reply.outcome))
            return await self._act(request, decision)
        finally:
            self._release_later(valid.order_id, lock)
            if lookups is not None:
                lookups.drop()

    async def _act(self, request: Request, decision: Decision) -> Handled:
        """Carry out a decision that charges nothing."""
        if isinstance(decision, Answer):
            return await self.answers.reply(request, decision.reply, record=decision.record)
        if isinstance(decision, AnswerRecorded):
            return await self.answers.recorded(request, decision.entry)
        if isinstance(decision, Fail):
            raise decision.error
        if isinstance(decision, Inconsistent):
            raise InconsistentLedger(decision.reason)
        raise InconsistentLedger(f"no action for {type(decision).__name__}")

    def _release_later(self, order_id: uuid.UUID, lock: asyncio.Future[str | None]) -> None:
        """Release the order lock without holding the command's answer back for it."""

        async def release() -> None:
            try:
                token = await lock
            except Exception:  # acquiring failed: nothing to release (degraded mode)
                return
            await self.locks.release(order_id, token)

        task = asyncio.ensure_future(release())
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _pay(self, request: Request, valid: ValidCommand) -> Handled:
        """Insert the pending payment (waiting while another command's payment for the order
        is pending), charge it and record the outcome. The caller holds the order lock."""
        waited_for: list[Payment] = []

        async def begin() -> Decision | None:
            candidate = Payment(
                id=new_uuid(),
                order_id=valid.order_id,
                customer_id=valid.customer_id,
                reservation_id=valid.reservation_id,
                amount=valid.amount,
                currency=valid.currency,
                payment_method=valid.payment_method,
                status=PaymentStatus.PENDING,
                created_at=self.clock(),
                command_id=valid.command_id,
            )
            route = request.route.to_json()
            begun = await self.ledger.begin_payment(candidate, ledger_fields(valid), route)
            decision = decide(valid, None, begun.facts)
            if isinstance(decision, Charge):
                # Nothing blocks it, yet it was not inserted: a candidate before it in the batch
                # came first for its order (and gave way itself, to an earlier one of its
                # command id). Asked again, it sees what was written meanwhile.
                return None
            if isinstance(decision, Wait):
                waited_for.append(decision.payment)
                return None
            if isinstance(decision, Resume) and decision.payment.id != candidate.id:
                request.log.info("payment_resumed", payment_id=str(decision.payment.id))
            return decision

        decision: Decision | None = await polling(
            begin, budget_s=self.busy_retry_budget_s, first_wait_s=0.05, max_wait_s=1.0
        )
        if decision is None:
            busy = str(waited_for[-1].id) if waited_for else None
            request.log.warning("order_busy", payment_id=busy)
            return await self.answers.reply(request, ORDER_BUSY)
        if isinstance(decision, Resume):
            return await self.charge(request, decision.payment)
        return await self._act(request, decision)

    async def charge(self, request: Request, payment: Payment) -> Handled:
        """Charge a pending payment and record its outcome. `request.valid` is None for the
        reconciler, whose command went away."""
        result = await self.gateway.charge(payment)
        if result.unknown:
            # The money may have moved: the payment stays pending, nothing is recorded final,
            # and the gateway is asked again with the same payment id (the redelivered or
            # retried command resumes it; else the reconciler does).
            request.log.warning("payment_outcome_unknown", payment_id=str(payment.id))
            if request.valid is None:
                raise OutcomeUnknown(f"payment {payment.id}: the gateway's answer is unknown")
            return await self.answers.reply(request, OUTCOME_UNKNOWN)
        final = payment.finalized(result, self.clock())
        answer = charged(final, result)
        if result.success:
            request.log.info("payment_succeeded", payment_id=str(final.id))
        else:
            request.log.info("payment_declined", payment_id=str(final.id), code=result.error_code)
        messages = [
            self.messages.event(final, request.route),
            self.messages.reply(request, request.route, answer),
        ]
        stored = await self.ledger.finish_payment(
            final, answer.outcome, answer.error_message, messages
        )
        if stored is not None:
            return Handled(answer.outcome, stored)
        # Finalized meanwhile, by a redelivery of the command or by the reconciler.
        valid = request.valid
        if valid is None:
            request.log.info("stale_payment_finished_elsewhere", payment_id=str(final.id))
            return Handled(None, [])  # its command was (or will be) answered by whoever did
        snapshot = await self.ledger.snapshot(valid.command_id, valid.order_id)
        if snapshot.ledger is not None and snapshot.ledger.final:
            return await self.answers.recorded(request, snapshot.ledger)
        raise RetryableError(f"payment {final.id} is no longer pending but has no outcome")
