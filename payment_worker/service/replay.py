"""Replay's fast path: sort a batch of records by what the ledger already knows, and answer
the recorded ones in one transaction instead of one pipeline run each."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass

from payment_worker.domain.model import Command, Outcome, Reply, ValidCommand, reply
from payment_worker.service.messages import ReplyRoute
from payment_worker.service.pipeline import Pipeline, same_request
from payment_worker.service.ports import (
    BatchLedgerPort,
    InboundRecord,
    LedgerEntry,
    OutboxMessage,
)

DLQ_HEADERS = ("dlq-error", "dlq-reason", "dlq-topic", "dlq-partition", "dlq-offset")


class Kind(enum.StrEnum):
    UNDECODABLE = "undecodable"
    INVALID = "invalid"
    RECORDED = "answered from ledger"
    NEW = "processed anew"


@dataclass(slots=True)
class Classified:
    record: InboundRecord
    kind: Kind
    command: Command | None = None
    route: ReplyRoute | None = None
    valid: ValidCommand | None = None
    entry: LedgerEntry | None = None
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
    )


async def classify(
    pipeline: Pipeline, records: list[InboundRecord], ledger: BatchLedgerPort
) -> list[Classified]:
    """Decode, validate and look the batch up in the ledger with one query."""
    out: list[Classified] = []
    for record in records:
        try:
            raw = pipeline.decoder.decode("ProcessPayment", record.value)
        except pipeline.decode_error as exc:
            out.append(Classified(record, Kind.UNDECODABLE, error=str(exc)))
            continue
        prepared = pipeline.prepare(raw, record)
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
    entries = await ledger.ledger_entries([c.valid.command_id for c in out if c.valid])
    for item in out:
        if item.valid is None:
            continue
        entry = entries.get(item.valid.command_id)
        if entry is not None and entry.final and same_request(entry, item.valid):
            item.kind = Kind.RECORDED
            item.entry = entry
    return out


async def answers_for(
    pipeline: Pipeline,
    items: list[Classified],
    store: BatchLedgerPort,
    *,
    republish: bool,
    already_republished: set[uuid.UUID],
) -> list[OutboxMessage]:
    """Replies for recorded and invalid commands (and, asked to, the recorded events again)."""
    payment_ids = list(
        {
            i.entry.payment_id
            for i in items
            if i.entry is not None and i.entry.payment_id is not None
        }
    )
    payments = await store.payments_by_ids(payment_ids)
    messages: list[OutboxMessage] = []
    for item in items:
        assert item.command is not None and item.route is not None
        if item.kind is Kind.INVALID:
            answer = reply(Outcome.INVALID_REQUEST, item.error or "invalid")
        else:
            assert item.entry is not None
            payment = payments.get(item.entry.payment_id) if item.entry.payment_id else None
            answer = Reply(
                item.entry.outcome or Outcome.ERROR,
                item.entry.error_message,
                payment,
                duplicate=True,
            )
        messages.append(pipeline.messages.reply(item.command, item.route, answer))
    if republish:
        todo = [p for p in payment_ids if p not in already_republished]
        events = await store.recorded_events(todo)
        already_republished.update(e.payment_id for e in events if e.payment_id)
        messages.extend(events)
    return messages
