"""Rows as values: the column lists and the one way rows become domain values and back.

Every row is read as a tuple whose columns come in the order of the lists below, and the
queries name their columns in that order (never a table's `*`: a column added later must not
shift the others). Batch statements take one array per column, named after it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

from psycopg.types.json import Jsonb

from payment_worker.domain.model import Outcome, Payment, PaymentStatus
from payment_worker.service.ports import LedgerEntry, OutboxMessage, RecordedAnswer, Snapshot

# The payments table's columns, in table order; each is also the name of a `Payment` field.
PAYMENT_COLUMNS = (
    "id",
    "order_id",
    "customer_id",
    "reservation_id",
    "amount",
    "currency",
    "payment_method",
    "status",
    "error_code",
    "error_message",
    "failure_reason",
    "transaction_id",
    "created_at",
    "processed_at",
    "is_simulated",
    "simulated_response",
    "command_id",
)

# A ledger entry's request: what its command id was for (rule I1).
REQUEST_COLUMNS = ("command_id", "order_id", "customer_id", "amount", "currency")

# The command ledger's columns as the store reads them.
LEDGER_COLUMNS = (
    *REQUEST_COLUMNS,
    "state",
    "outcome",
    "error_message",
    "payment_id",
    "reply_route",
)

# The outbox's message columns, in `OutboxMessage` field order.
OUTBOX_COLUMNS = (
    "kind",
    "topic",
    "partition",
    "key",
    "value",
    "headers",
    "event_id",
    "payment_id",
)


def _camel(column: str) -> str:
    head, *rest = column.split("_")
    return head + "".join(word.title() for word in rest)


# The reply's `Payment` record: the payment columns but command_id, camelCased, in the order
# `recorded_answers` selects them after the nine ledger columns.
REPLY_PAYMENT_FIELDS = tuple(_camel(c) for c in PAYMENT_COLUMNS if c != "command_id")

# A dict lookup, not `Outcome(value)`: replay maps thousands of answers a batch.
_OUTCOMES: dict[str, Outcome] = {str(o): o for o in Outcome}


# Where each of Payment's fields, in its own order, stands in PAYMENT_COLUMNS.
_PAYMENT_ORDER = tuple(PAYMENT_COLUMNS.index(f.name) for f in dataclasses.fields(Payment))
_STATUS = PAYMENT_COLUMNS.index("status")
_STATUS_FIELD = _PAYMENT_ORDER.index(_STATUS)  # where the status goes among the fields
_STATUSES: dict[str, PaymentStatus] = {str(s): s for s in PaymentStatus}


def payment_from(values: Sequence[Any]) -> Payment:
    """A payment from its columns in PAYMENT_COLUMNS order."""
    if len(values) != len(PAYMENT_COLUMNS):
        raise ValueError(f"{len(values)} values for {len(PAYMENT_COLUMNS)} payment columns")
    status = values[_STATUS]
    ordered = [values[i] for i in _PAYMENT_ORDER]
    ordered[_STATUS_FIELD] = _STATUSES.get(status) or PaymentStatus(status)
    return Payment(*ordered)


def ledger_from(values: Sequence[Any]) -> LedgerEntry:
    """A ledger entry from its columns in LEDGER_COLUMNS order."""
    fields = dict(zip(LEDGER_COLUMNS, values, strict=True))
    state, outcome = fields.pop("state"), fields.pop("outcome")
    return LedgerEntry(
        **fields, final=state == "final", outcome=Outcome(outcome) if outcome else None
    )


# A row of `snapshots` or `begin_facts` names each column of its three parts `<part>_<column>`:
# FACTS is that select list (the queries' {facts}), _NAMED the keys read back, both from here.
_PARTS = {"ledger": LEDGER_COLUMNS, "succeeded": PAYMENT_COLUMNS, "pending": PAYMENT_COLUMNS}
_NAMED = {part: tuple(f"{part}_{c}" for c in columns) for part, columns in _PARTS.items()}
FACTS = ", ".join(
    f"({part}).{column} AS {name}"
    for part, columns in _PARTS.items()
    for column, name in zip(columns, _NAMED[part], strict=True)
)


_LEDGER, _SUCCEEDED, _PENDING = _NAMED["ledger"], _NAMED["succeeded"], _NAMED["pending"]


def snapshot_named(row: Mapping[str, Any]) -> Snapshot:
    """What a row of `snapshots` or `begin_facts` says the ledger records, by column name (each
    part None when its first column, the key, is NULL: none found; its other columns are then
    not read, a row per command)."""
    return Snapshot(
        ledger_from([row[n] for n in _LEDGER]) if row[_LEDGER[0]] is not None else None,
        payment_from([row[n] for n in _SUCCEEDED]) if row[_SUCCEEDED[0]] is not None else None,
        payment_from([row[n] for n in _PENDING]) if row[_PENDING[0]] is not None else None,
    )


def answer_from(values: Sequence[Any]) -> RecordedAnswer:
    """A recorded answer from the first nine LEDGER_COLUMNS (ids as text) and the payment's
    columns in REPLY_PAYMENT_FIELDS order (None when the entry has no payment)."""
    return RecordedAnswer(
        values[0],  # command_id
        values[1],  # order_id
        values[2],  # customer_id
        values[3],  # amount
        values[4],  # currency
        values[5] == "final",
        _OUTCOMES[values[6]] if values[6] is not None else None,
        values[7],  # error_message
        values[8],  # payment_id
        dict(zip(REPLY_PAYMENT_FIELDS, values[9:], strict=True)) if values[9] else None,
    )


def outbox_message(values: Sequence[Any], kind: str | None = None) -> OutboxMessage:
    """An outbox row from its columns in OUTBOX_COLUMNS order (`kind` overrides the stored
    one). A row without the last two, as the relay claims them, leaves them None."""
    stored_kind, topic, partition, key, value, headers, *ids = values
    return OutboxMessage(
        kind or stored_kind,
        topic,
        partition,
        bytes(key) if key is not None else None,
        bytes(value) if value is not None else None,
        headers_from_json(headers),
        *ids,
    )


def headers_json(headers: list[tuple[str, bytes | None]]) -> Jsonb:
    """The headers as the outbox keeps them, `[[name, hex value or null], ...]`, written as JSON
    text here (two per command: ~7 µs a row against ~14 through json.dumps of the lists)."""
    text = ",".join(
        f'[{_json_name(name)},"{value.hex()}"]'
        if value is not None
        else f"[{_json_name(name)},null]"
        for name, value in headers
    )
    return Jsonb(f"[{text}]", dumps=_as_written)


# Header names as JSON strings: our own few, escaped once; any other (a dead letter's) each time.
_NAMES: dict[str, str] = {}


def _json_name(name: str) -> str:
    found = _NAMES.get(name)
    if found is None:
        found = json.dumps(name)
        if len(_NAMES) < 512:
            _NAMES[name] = found
    return found


def _as_written(text: str) -> str:
    return text


def headers_from_json(data: list[list[Any]]) -> list[tuple[str, bytes | None]]:
    return [(name, bytes.fromhex(value) if value is not None else None) for name, value in data]


def payment_arrays(payments: Sequence[Payment], columns: Sequence[str]) -> dict[str, list[Any]]:
    """The payments' `columns` (those a batch statement writes) as arrays named after them."""
    arrays = {column: [getattr(p, column) for p in payments] for column in columns}
    if "status" in arrays:
        arrays["status"] = [str(p.status) for p in payments]
    return arrays


def ledger_arrays(entries: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """Final ledger entries (dicts by column) as one array per column but state."""
    arrays = {c: [e[c] for e in entries] for c in LEDGER_COLUMNS if c != "state"}
    arrays["reply_route"] = [Jsonb(e["reply_route"]) for e in entries]
    return arrays


def outbox_arrays(messages: Sequence[OutboxMessage]) -> dict[str, list[Any]]:
    """Outbox messages as one array per column, named after it."""
    arrays = {column: [getattr(m, column) for m in messages] for column in OUTBOX_COLUMNS}
    arrays["headers"] = [headers_json(m.headers) for m in messages]
    return arrays
