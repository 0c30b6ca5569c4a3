"""One function per command: decode, validate, idempotency, order, reservation, charge, record.

Every path ends in exactly one database transaction that writes the reply (and the event, the
ledger entry, the dead letter) to the outbox; the worker commits the Kafka offset after it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import structlog

from payment_worker import tracing
from payment_worker.domain.model import Outcome, Payment, reply
from payment_worker.domain.routing import InvalidHeader, ReplyRoute, RouteRules
from payment_worker.domain.validation import as_echoed, command_from_record
from payment_worker.exceptions import PermanentError
from payment_worker.service.answering import (
    Answers,
    Handled,
    InconsistentLedger,
    Request,
)
from payment_worker.service.intake import Decoder, Intake
from payment_worker.service.messages import MessageFactory
from payment_worker.service.paying import Payer
from payment_worker.service.ports import (
    DependencyUnavailable,
    GatewayPort,
    InboundRecord,
    InventoryPort,
    LedgerPort,
    OrderingPort,
    OrderLockPort,
    TopicDirectoryPort,
)

__all__ = ["Handled", "InconsistentLedger", "Pipeline", "PipelineConfig"]

log = structlog.get_logger("payment_worker.pipeline")


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
        self.config = config or PipelineConfig()
        self.intake = Intake(
            decoder=decoder,
            decode_error=decode_error,
            messages=messages,
            topics=topics,
            routes=self.config.routes,
        )
        self.answers = Answers(ledger, messages)
        self.payer = Payer(
            ledger=ledger,
            ordering=ordering,
            inventory=inventory,
            gateway=gateway,
            locks=locks,
            answers=self.answers,
            messages=messages,
            busy_retry_budget_s=self.config.busy_retry_budget_s,
            clock=clock,
        )

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
        command, valid = prepared.command, prepared.valid
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
            request = Request(command.command_id, command.order_id, prepared.route)
            return await self.answers.reply(request, answer)
        tracing.annotate(
            {"payment.command_id": command.command_id, "payment.order_id": command.order_id}
        )
        bound = log.bind(
            command_id=command.command_id,
            order_id=command.order_id,
            correlation_id=prepared.route.correlation_id,
        )
        request = Request(command.command_id, command.order_id, prepared.route, valid, bound)
        try:
            return await self.payer.process(request, valid)
        except DependencyUnavailable as exc:
            bound.warning("dependency_unavailable", error=str(exc))
            extra = [self.messages.dead_letter(record, "retries-exhausted", str(exc))]
            return await self.answers.reply(request, reply(Outcome.ERROR, str(exc)), extra=extra)

    async def handle_failure(self, record: InboundRecord, error: BaseException) -> Handled:
        """An unexpected error: answer ERROR (if the command decodes) and dead-letter it."""
        reason, name = "processing-error", type(error).__name__
        try:
            raw = await self.intake.decode(record)
        except self.intake.decode_error:
            return await self.answers.dead_letter(record, reason, name)
        command = as_echoed(command_from_record(raw))
        route = await self.intake.resolve_route(record.headers, command.command_id, record.read_at)
        if isinstance(route, InvalidHeader):
            route = route.fallback
        answer = reply(Outcome.ERROR, f"unexpected {name}")
        request = Request(command.command_id, command.order_id, route)
        extra = [self.messages.dead_letter(record, reason, name)]
        handled = await self.answers.reply(request, answer, extra=extra)
        return replace(handled, dead_letter_reason=reason)

    async def _dead_letter(self, record: InboundRecord, reason: str, error: str) -> Handled:
        log.warning(
            "command_dead_lettered",
            reason=reason,
            error=error,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
        )
        return await self.answers.dead_letter(record, reason, error)

    async def dead_letter_only(self, record: InboundRecord, error: BaseException) -> Handled:
        """The last resort when even answering ERROR failed: the record to the dead letters."""
        return await self.answers.dead_letter(record, "processing-error", type(error).__name__)

    async def finish_stale(self, payment: Payment, route: ReplyRoute) -> Handled:
        """The reconciler's step (rule I5): charge a pending payment whose command went away."""
        command_id, order_id = str(payment.command_id), str(payment.order_id)
        bound = log.bind(command_id=command_id, order_id=order_id)
        return await self.payer.finish_stale(
            Request(command_id, order_id, route, log=bound), payment
        )
