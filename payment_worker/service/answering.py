"""What a command is answered with, written to the outbox in one transaction: the reply (and
the request's outcome in the ledger), the recorded answer again (rule I1), a dead letter."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import structlog

from payment_worker.domain.decision import LedgerEntry, recorded_answer
from payment_worker.domain.model import Outcome, Reply, ValidCommand
from payment_worker.domain.routing import ReplyRoute
from payment_worker.exceptions import PermanentError, RetryableError
from payment_worker.service.messages import MessageFactory
from payment_worker.service.ports import InboundRecord, LedgerPort, OutboxMessage, StoredMessage

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
class Request:
    """One command being answered: its ids as the reply echoes them, where the reply goes, its
    validated form (None when it is invalid, or gone: the reconciler finishing its payment),
    and a logger bound to its ids."""

    command_id: str
    order_id: str
    route: ReplyRoute
    valid: ValidCommand | None = None
    log: Any = log


class Answers:
    """Writes answers to the outbox (and outcomes to the ledger), each in one transaction."""

    def __init__(self, ledger: LedgerPort, messages: MessageFactory) -> None:
        self.ledger = ledger
        self.messages = messages

    async def reply(
        self,
        request: Request,
        answer: Reply,
        *,
        record: bool = False,
        extra: list[OutboxMessage] | None = None,
    ) -> Handled:
        """Write the reply (and, with `record`, the request's outcome to the ledger)."""
        messages = [self.messages.reply(request, request.route, answer), *(extra or [])]
        valid = request.valid if record else None
        ledger: dict[str, Any] | None = None
        if valid is not None:
            ledger = {
                **ledger_fields(valid),
                "outcome": str(answer.outcome),
                "error_message": answer.error_message,
                "payment_id": answer.payment.id if answer.payment else None,
                "reply_route": request.route.to_json(),
            }
        stored = await self.ledger.record(messages, ledger)
        if stored is None and valid is not None:
            # Another command under this command id recorded an outcome first: its answer,
            # if it was the same request; a CONFLICT otherwise (rule I7).
            snapshot = await self.ledger.snapshot(valid.command_id, valid.order_id)
            if snapshot.ledger is not None and snapshot.ledger.final:
                return await self.recorded(request, snapshot.ledger)
            raise RetryableError("ledger entry vanished while recording an outcome")
        return Handled(answer.outcome, stored or [], duplicate=answer.duplicate)

    async def recorded(self, request: Request, entry: LedgerEntry) -> Handled:
        """Rule I1: the recorded outcome again, marked duplicate, with no new work."""
        assert request.valid is not None
        payment = await self.ledger.payment(entry.payment_id) if entry.payment_id else None
        answer = recorded_answer(request.valid, entry, payment)
        if not isinstance(answer, Reply):
            raise InconsistentLedger(answer.reason)
        stored = await self.ledger.record([self.messages.reply(request, request.route, answer)])
        return Handled(answer.outcome, stored or [], duplicate=answer.duplicate)

    async def dead_letter(self, record: InboundRecord, reason: str, error: str) -> Handled:
        """The record to the dead letters, and nothing else."""
        stored = await self.ledger.record([self.messages.dead_letter(record, reason, error)])
        return Handled(None, stored or [], dead_letter_reason=reason)


def ledger_fields(valid: ValidCommand) -> dict[str, Any]:
    """The request a ledger entry records for its command id (rule I1)."""
    return {
        "command_id": valid.command_id,
        "order_id": valid.order_id,
        "customer_id": valid.customer_id,
        "amount": valid.amount,
        "currency": valid.currency,
    }
