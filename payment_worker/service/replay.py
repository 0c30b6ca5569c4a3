"""Replay's fast path: sort a batch of records by what the ledger already knows, and answer
the recorded ones in one transaction instead of one pipeline run each."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from decimal import Decimal

from payment_worker.domain.decision import recorded_answer
from payment_worker.domain.model import Command, Outcome, Reply, ValidCommand, reply
from payment_worker.domain.routing import ReplyRoute
from payment_worker.domain.validation import command_from_record
from payment_worker.exceptions import RetryableError
from payment_worker.service.pipeline import Pipeline
from payment_worker.service.ports import (
    BatchLedgerPort,
    InboundRecord,
    OutboxMessage,
    RecordedAnswer,
)

DLQ_HEADERS = (
    "dlq-error",
    "dlq-reason",
    "dlq-topic",
    "dlq-partition",
    "dlq-offset",
    "dlq-redacted",
    "dlq-truncated",
)


class Kind(enum.StrEnum):
    UNDECODABLE = "undecodable"
    INVALID = "invalid"
    RECORDED = "answered from ledger"
    NEW = "processed anew"
    FAILED = "failed (logged, dead-lettered)"


@dataclass(slots=True)  # a batch's work item, not a value: look_up marks it in place
class Classified:
    record: InboundRecord
    kind: Kind
    command: Command | None = None
    route: ReplyRoute | None = None
    valid: ValidCommand | None = None
    entry: RecordedAnswer | None = None
    answer: Reply | None = None
    error: str | None = None


def without_dlq_headers(record: InboundRecord) -> InboundRecord:
    """A dead letter as its original command (the dlq-* headers dropped)."""
    headers = [(k, v) for k, v in record.headers if k not in DLQ_HEADERS]
    return InboundRecord(
        record.topic,
        record.partition,
        record.offset,
        record.key,
        record.value,
        headers,
        record.timestamp_ms,
        record.read_at,
        record.unreadable,
    )


async def prepare_batch(pipeline: Pipeline, records: list[InboundRecord]) -> list[Classified]:
    """Decode, route and validate each record (the ledger is asked by `look_up`). Whatever a
    record holds, it is classified: one that breaks preparing it is FAILED, not the replay."""
    out: list[Classified] = []
    for record in records:
        if record.unreadable is not None:
            out.append(Classified(record, Kind.UNDECODABLE, error=record.unreadable))
            continue
        try:
            raw = await pipeline.intake.decode(record)
        except pipeline.intake.decode_error as exc:
            out.append(Classified(record, Kind.UNDECODABLE, error=str(exc)))
            continue
        try:
            command = command_from_record(raw)
            route = await pipeline.intake.resolve_route(
                record.headers, command.command_id, record.read_at
            )
            prepared = pipeline.intake.prepare(command, route)
        except RetryableError:
            raise  # the broker's metadata unreachable: the replay waits for it, as a whole
        except Exception as exc:
            out.append(Classified(record, Kind.FAILED, error=f"{type(exc).__name__}: {exc}"))
            continue
        kind = Kind.NEW if prepared.valid is not None else Kind.INVALID
        out.append(
            Classified(
                record,
                kind,
                prepared.command,
                prepared.route,
                prepared.valid,
                error=prepared.invalid,
            )
        )
    return out


async def look_up(items: list[Classified], ledger: BatchLedgerPort) -> None:
    """One ledger query for the batch: valid commands whose recorded final outcome the domain
    answers again (`recorded_answer`: the same request, its payment of that order and
    customer) become RECORDED; the others stay NEW, and the pipeline decides them as the
    worker would (CONFLICT for another request, an inconsistent ledger refused)."""
    # Only valid commands: an invalid one's id may not even be a UUID (and is never recorded).
    # The prepared command's ids are canonical text already.
    answers = await ledger.recorded_answers(
        [c.command.command_id for c in items if c.valid and c.command]
    )
    for item in items:
        if item.valid is None or item.command is None:
            continue
        found = answers.get(item.command.command_id)
        if found is None or not found.final:
            continue
        command, valid, payment = item.command, item.valid, found.payment
        request = _Request(
            command.command_id, command.order_id, command.customer_id, valid.amount, valid.currency
        )
        owner = _Owner(payment.get("orderId"), payment.get("customerId")) if payment else None
        answer = recorded_answer(request, found, owner)
        if isinstance(answer, Reply) and answer.duplicate:
            item.kind, item.entry, item.answer = Kind.RECORDED, found, answer


@dataclass(frozen=True, slots=True)
class _Request:
    """A prepared command's request with canonical text ids, as the ledger's are read here."""

    command_id: str
    order_id: str
    customer_id: str
    amount: Decimal
    currency: str


@dataclass(frozen=True, slots=True)
class _Owner:
    """Whose a recorded payment is, from the reply's record of it (text ids)."""

    order_id: object
    customer_id: object


def replies_for(pipeline: Pipeline, items: list[Classified]) -> list[OutboxMessage]:
    """The reply to each recorded (from the ledger, `duplicate: true`) or invalid command."""
    messages: list[OutboxMessage] = []
    for item in items:
        assert item.command is not None and item.route is not None
        if item.kind is Kind.INVALID:
            answer = reply(Outcome.INVALID_REQUEST, item.error or "invalid")
        else:
            assert item.entry is not None and item.answer is not None
            answer = item.answer
            messages.append(
                pipeline.messages.reply(item.command, item.route, answer, item.entry.payment)
            )
            continue
        messages.append(pipeline.messages.reply(item.command, item.route, answer))
    return messages


async def events_to_republish(
    items: list[Classified], store: BatchLedgerPort, already_republished: set[str]
) -> list[OutboxMessage]:
    """The recorded event of each finalized payment met, once per replay, as first written."""
    todo = list(
        {
            i.entry.payment_id
            for i in items
            if i.entry is not None
            and i.entry.payment_id is not None
            and i.entry.payment_id not in already_republished
        }
    )
    events = await store.recorded_events(todo)
    already_republished.update(str(e.payment_id) for e in events if e.payment_id)
    return events
