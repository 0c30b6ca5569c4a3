"""One function per command: decode, validate, idempotency, order, reservation, charge, record.

Every path ends in exactly one database transaction that writes the reply (and the event, the
ledger entry, the dead letter) to the outbox; the worker commits the Kafka offset after it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import structlog

from payment_worker import tracing
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
    LedgerEntry,
    ReadLedger,
    Rejected,
    Resume,
    Unchecked,
    Wait,
    charged,
    check_order,
    check_reservation,
    decide,
    recorded_answer,
)
from payment_worker.domain.ids import new_uuid
from payment_worker.domain.model import (
    Command,
    Outcome,
    Payment,
    PaymentStatus,
    Reply,
    ValidCommand,
    reply,
)
from payment_worker.domain.routing import InvalidHeader, ReplyRoute, RouteRules
from payment_worker.domain.validation import as_echoed, command_from_record
from payment_worker.exceptions import PermanentError, RetryableError
from payment_worker.retrying import polling
from payment_worker.service.intake import Decoder, Intake
from payment_worker.service.lookups import Lookups
from payment_worker.service.messages import MessageFactory
from payment_worker.service.ports import (
    DependencyUnavailable,
    GatewayPort,
    InboundRecord,
    InventoryPort,
    LedgerPort,
    OrderingPort,
    OrderLocked,
    OrderLockPort,
    OutboxMessage,
    OutcomeUnknown,
    StoredMessage,
    TopicDirectoryPort,
)

log = structlog.get_logger("payment_worker.pipeline")


class InconsistentLedger(PermanentError):
    """The ledger contradicts itself (domain.decision.Inconsistent says how)."""


@dataclass(frozen=True, slots=True)
class Handled:
    """What one record came to: its outcome (None for a dead letter) and what to publish."""

    outcome: Outcome | None
    stored: list[StoredMessage] = field(default_factory=list)
    dead_letter_reason: str | None = None
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    routes: RouteRules = field(default_factory=RouteRules)
    busy_retry_budget_s: float = 15.0

    @property
    def replies_topic(self) -> str:
        return self.routes.default_topic


class Pipeline:
    """Runs contract section 5 for one record. Stateless between calls; safe to run concurrently
    for different orders (the worker runs commands of one order one at a time)."""

    def __init__(
        self,
        *,
        decoder: Decoder,
        decode_error: type[PermanentError],
        messages: MessageFactory,
        ledger: LedgerPort,
        ordering: OrderingPort,
        inventory: InventoryPort,
        gateway: GatewayPort,
        locks: OrderLockPort,
        topics: TopicDirectoryPort,
        config: PipelineConfig | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.messages = messages
        self.ledger = ledger
        self.ordering = ordering
        self.inventory = inventory
        self.gateway = gateway
        self.locks = locks
        self.config = config or PipelineConfig()
        self.intake = Intake(
            decoder=decoder,
            decode_error=decode_error,
            messages=messages,
            topics=topics,
            routes=self.config.routes,
        )
        self.clock = clock
        self._releases: set[asyncio.Future[None]] = set()

    # -- entry points -------------------------------------------------------------------------

    async def handle(self, record: InboundRecord) -> Handled:
        if record.unreadable is not None:
            # Nothing of it is trusted, not even its headers: no route, no reply.
            return await self._dead_letter(record, "undecodable", record.unreadable)
        try:
            raw = await self.intake.decode(record)
        except self.intake.decode_error as exc:
            return await self._dead_letter(record, getattr(exc, "reason", "undecodable"), str(exc))
        command = command_from_record(raw)
        route = await self.intake.resolve_route(record.headers, command.command_id, record.read_at)
        prepared = self.intake.prepare(command, route)
        valid = prepared.valid
        if valid is None:
            # Raw field values are not logged: they are input, and may hold a card number.
            log.info(
                "command_invalid",
                error=prepared.invalid,
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
            )
            answer = reply(Outcome.INVALID_REQUEST, prepared.invalid or "invalid")
            return await self._answer(prepared.command, prepared.route, answer)
        command, route = prepared.command, prepared.route
        tracing.annotate(
            {"payment.command_id": command.command_id, "payment.order_id": command.order_id}
        )
        bound = log.bind(
            command_id=command.command_id,
            order_id=command.order_id,
            correlation_id=route.correlation_id,
        )
        try:
            return await self._process(command, valid, route, bound)
        except DependencyUnavailable as exc:
            bound.warning("dependency_unavailable", error=str(exc))
            answer = reply(Outcome.ERROR, str(exc))
            extra = [self.messages.dead_letter(record, "retries-exhausted", str(exc))]
            return await self._answer(command, route, answer, extra=extra)

    async def handle_failure(self, record: InboundRecord, error: BaseException) -> Handled:
        """An unexpected error: answer ERROR (if the command decodes) and dead-letter it."""
        extra = [self.messages.dead_letter(record, "processing-error", type(error).__name__)]
        try:
            raw = await self.intake.decode(record)
        except self.intake.decode_error:
            stored = await self.ledger.record(extra)
            return Handled(None, stored or [], dead_letter_reason="processing-error")
        command = as_echoed(command_from_record(raw))
        route = await self.intake.resolve_route(record.headers, command.command_id, record.read_at)
        if isinstance(route, InvalidHeader):
            route = route.fallback
        answer = reply(Outcome.ERROR, f"unexpected {type(error).__name__}")
        handled = await self._answer(command, route, answer, extra=extra)
        return replace(handled, dead_letter_reason="processing-error")

    async def _dead_letter(self, record: InboundRecord, reason: str, error: str) -> Handled:
        log.warning(
            "command_dead_lettered",
            reason=reason,
            error=error,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
        )
        stored = await self.ledger.record([self.messages.dead_letter(record, reason, error)])
        return Handled(None, stored or [], dead_letter_reason=reason)

    async def dead_letter_only(self, record: InboundRecord, error: BaseException) -> Handled:
        """The last resort when even answering ERROR failed: the record to the dead letters."""
        message = self.messages.dead_letter(record, "processing-error", type(error).__name__)
        stored = await self.ledger.record([message])
        return Handled(None, stored or [], dead_letter_reason="processing-error")

    async def finish_stale(self, payment: Payment, route: ReplyRoute) -> Handled:
        """The reconciler's step (rule I5): charge a pending payment whose command went away."""
        command = Command(
            command_id=str(payment.command_id),
            order_id=str(payment.order_id),
            customer_id=str(payment.customer_id),
            reservation_id=str(payment.reservation_id) if payment.reservation_id else None,
            amount=payment.amount,
            currency=payment.currency,
            payment_method=payment.payment_method,
            requested_at=payment.created_at,
        )
        bound = log.bind(command_id=command.command_id, order_id=command.order_id)
        token = await self.locks.acquire(payment.order_id)
        try:
            return await self._charge(command, None, route, payment, bound)
        finally:
            await self.locks.release(payment.order_id, token)

    # -- steps --------------------------------------------------------------------------------

    async def _process(
        self, command: Command, valid: ValidCommand, route: ReplyRoute, bound: Any
    ) -> Handled:
        # The order and the reservation are fetched, and the order lock asked for, at once.
        # An accepted command goes straight to begin_payments, which makes the ledger's checks
        # as it inserts the pending payment; any other is decided with the ledger read first.
        lookups = Lookups(self.ordering, self.inventory, valid)
        lock = asyncio.ensure_future(self.locks.acquire(valid.order_id))
        try:
            checked = await self._check(valid, lookups)
            decision = decide(valid, checked, None)
            if isinstance(decision, ReadLedger):
                if isinstance(checked, Unchecked) and not isinstance(
                    checked.error, DependencyUnavailable
                ):
                    # Logged even when the ledger answers: a broken lookup must not hide
                    # behind duplicates (an unavailable service is logged by its retries).
                    error = checked.error
                    bound.warning("order_check_failed", error=f"{type(error).__name__}: {error}")
                snapshot = await self.ledger.snapshot(valid.command_id, valid.order_id)
                decision = decide(valid, checked, snapshot)
            if isinstance(decision, Charge | Resume):
                try:
                    await lock  # held (or Redis is down: degraded) until the outcome is recorded
                except OrderLocked:
                    bound.warning("order_busy", detail="its lock is held by another worker")
                    return await self._answer(command, route, ORDER_BUSY)
                return await self._pay(command, valid, route, bound)
            if isinstance(decision, Answer) and isinstance(checked, Rejected):
                bound.info("command_rejected", outcome=str(decision.reply.outcome))
            return await self._act(command, valid, route, decision)
        finally:
            self._release_later(valid.order_id, lock)
            lookups.drop()

    async def _check(self, valid: ValidCommand, lookups: Lookups) -> Checked:
        """What the order, then the reservation, say of the command, in the contract's order."""
        try:
            answer = check_order(valid, await lookups.order())
            if answer is None and valid.reservation_id is not None:
                answer = check_reservation(valid, await lookups.reservation(), self.clock())
        except Exception as exc:
            return Unchecked(exc)
        return None if answer is None else Rejected(answer)

    async def _act(
        self, command: Command, valid: ValidCommand, route: ReplyRoute, decision: Decision
    ) -> Handled:
        """Carry out a decision that charges nothing."""
        if isinstance(decision, Answer):
            return await self._answer(
                command, route, decision.reply, record=valid if decision.record else None
            )
        if isinstance(decision, AnswerRecorded):
            return await self._answer_recorded(command, valid, route, decision.entry)
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

    async def _pay(
        self, command: Command, valid: ValidCommand, route: ReplyRoute, bound: Any
    ) -> Handled:
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
            begun = await self.ledger.begin_payment(
                candidate, _ledger_fields(valid), route.to_json()
            )
            decision = decide(valid, None, begun.facts)
            if isinstance(decision, Charge):
                # Nothing blocks it, yet it was not inserted: a candidate before it in the
                # batch took its command id. Asked again, it sees what that one wrote.
                return None
            if isinstance(decision, Wait):
                waited_for.append(decision.payment)
                return None
            if isinstance(decision, Resume) and decision.payment.id != candidate.id:
                bound.info("payment_resumed", payment_id=str(decision.payment.id))
            return decision

        decision: Decision | None = await polling(
            begin, budget_s=self.config.busy_retry_budget_s, first_wait_s=0.05, max_wait_s=1.0
        )
        if decision is None:
            bound.warning("order_busy", payment_id=str(waited_for[-1].id) if waited_for else None)
            return await self._answer(command, route, ORDER_BUSY)
        if isinstance(decision, Resume):
            return await self._charge(command, valid, route, decision.payment, bound)
        return await self._act(command, valid, route, decision)

    async def _charge(
        self,
        command: Command,
        valid: ValidCommand | None,
        route: ReplyRoute,
        payment: Payment,
        bound: Any,
    ) -> Handled:
        """Charge a pending payment and record its outcome. `valid` is the command being
        answered; None for the reconciler, whose command went away."""
        result = await self.gateway.charge(payment)
        if result.unknown:
            # The money may have moved: the payment stays pending, nothing is recorded final,
            # and the gateway is asked again with the same payment id (the redelivered or
            # retried command resumes it; else the reconciler does).
            bound.warning("payment_outcome_unknown", payment_id=str(payment.id))
            if valid is None:
                raise OutcomeUnknown(f"payment {payment.id}: the gateway's answer is unknown")
            return await self._answer(command, route, OUTCOME_UNKNOWN)
        final = payment.finalized(result, self.clock())
        answer = charged(final, result)
        if result.success:
            bound.info("payment_succeeded", payment_id=str(final.id))
        else:
            bound.info("payment_declined", payment_id=str(final.id), code=result.error_code)
        messages = [self.messages.event(final, route), self.messages.reply(command, route, answer)]
        stored = await self.ledger.finish_payment(
            final, answer.outcome, answer.error_message, messages
        )
        if stored is not None:
            return Handled(answer.outcome, stored)
        # Finalized meanwhile, by a redelivery of the command or by the reconciler.
        if valid is None:
            bound.info("stale_payment_finished_elsewhere", payment_id=str(final.id))
            return Handled(None, [])  # its command was (or will be) answered by whoever did
        snapshot = await self.ledger.snapshot(valid.command_id, valid.order_id)
        if snapshot.ledger is not None and snapshot.ledger.final:
            return await self._answer_recorded(command, valid, route, snapshot.ledger)
        raise RetryableError(f"payment {final.id} is no longer pending but has no outcome")

    # -- answers ------------------------------------------------------------------------------

    async def _answer_recorded(
        self, command: Command, valid: ValidCommand, route: ReplyRoute, entry: LedgerEntry
    ) -> Handled:
        """Rule I1: the recorded outcome again, marked duplicate, with no new work."""
        payment = await self.ledger.payment(entry.payment_id) if entry.payment_id else None
        answer = recorded_answer(valid, entry, payment)
        if isinstance(answer, Inconsistent):
            raise InconsistentLedger(answer.reason)
        stored = await self.ledger.record([self.messages.reply(command, route, answer)])
        return Handled(answer.outcome, stored or [], duplicate=answer.duplicate)

    async def _answer(
        self,
        command: Command,
        route: ReplyRoute,
        answer: Reply,
        *,
        record: ValidCommand | None = None,
        extra: list[OutboxMessage] | None = None,
    ) -> Handled:
        """Write the reply (and, with `record`, the request's outcome to the ledger)."""
        messages = [self.messages.reply(command, route, answer), *(extra or [])]
        ledger: dict[str, Any] | None = None
        if record is not None:
            ledger = {
                **_ledger_fields(record),
                "outcome": str(answer.outcome),
                "error_message": answer.error_message,
                "payment_id": answer.payment.id if answer.payment else None,
                "reply_route": route.to_json(),
            }
        stored = await self.ledger.record(messages, ledger)
        if stored is None and record is not None:
            # Another command under this command id recorded an outcome first: its answer,
            # if it was the same request; a CONFLICT otherwise (rule I7).
            snapshot = await self.ledger.snapshot(record.command_id, record.order_id)
            if snapshot.ledger is not None and snapshot.ledger.final:
                return await self._answer_recorded(command, record, route, snapshot.ledger)
            raise RetryableError("ledger entry vanished while recording an outcome")
        return Handled(answer.outcome, stored or [], duplicate=answer.duplicate)


def _ledger_fields(valid: ValidCommand) -> dict[str, Any]:
    return {
        "command_id": valid.command_id,
        "order_id": valid.order_id,
        "customer_id": valid.customer_id,
        "amount": valid.amount,
        "currency": valid.currency,
    }
