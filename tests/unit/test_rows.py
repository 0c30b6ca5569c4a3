"""Rows as values (adapters/postgres/rows.py): payments and facts read back from their
columns, and what the outbox keeps of a message's headers."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from psycopg.types.json import Jsonb, JsonbBinaryDumper

from payment_worker.adapters.postgres.rows import (
    LEDGER_COLUMNS,
    PAYMENT_COLUMNS,
    headers_from_json,
    headers_json,
    payment_from,
    snapshot_named,
)
from payment_worker.domain.model import Payment, PaymentStatus


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [("ce_id", b"abc"), ("empty", b""), ("null", None)],
        [('quote"and\\back', b"\x00\xff"), ("ünïcödé ✓", b"x"), ("dlq-name-hex:ff00", None)],
        [("\n\t", b"\r\n"), ("\u2028", b"{}")],
    ],
)
def test_outbox_headers_are_the_json_json_dumps_would_write(
    headers: list[tuple[str, bytes | None]],
) -> None:
    """The outbox keeps headers as `[[name, hex or null], ...]`: the text written directly
    means exactly what json.dumps of those lists means, whatever the names, and reads back
    as the headers."""
    dumped = bytes(JsonbBinaryDumper(Jsonb).dump(headers_json(headers)))
    assert dumped[:1] == b"\x01"  # jsonb's binary format version
    meant = [[n, v.hex() if v is not None else None] for n, v in headers]
    assert json.loads(dumped[1:]) == json.loads(json.dumps(meant)) == meant
    assert headers_from_json(json.loads(dumped[1:])) == headers


def _payment(**changes: object) -> Payment:
    fields: dict[str, object] = {
        "id": uuid.uuid4(),
        "order_id": uuid.uuid4(),
        "customer_id": uuid.uuid4(),
        "reservation_id": None,
        "amount": Decimal("25.00"),
        "currency": "USD",
        "payment_method": "credit_card",
        "status": PaymentStatus.FAILED,
        "created_at": datetime(2026, 12, 7, tzinfo=UTC),
        "command_id": uuid.uuid4(),
        "error_code": "CARD_DECLINED",
        "error_message": "Your card was declined",
        "failure_reason": "card_declined",
        "processed_at": datetime(2026, 12, 7, 0, 0, 1, tzinfo=UTC),
        "is_simulated": False,
        "simulated_response": "Failed",
    }
    fields.update(changes)
    return Payment(**fields)  # type: ignore[arg-type]


def test_a_payment_reads_back_from_its_columns_in_table_order() -> None:
    """payment_from takes the columns in PAYMENT_COLUMNS order (the table's, not the
    dataclass's) and gives the payment back, its status as the enum; a row of another length
    is refused."""
    payment = _payment()
    columns = [getattr(payment, c) for c in PAYMENT_COLUMNS]
    columns[PAYMENT_COLUMNS.index("status")] = "failed"
    assert payment_from(columns) == payment
    with pytest.raises(ValueError):
        payment_from(columns[:-1])
    columns[PAYMENT_COLUMNS.index("status")] = "no-such-status"
    with pytest.raises(ValueError):
        payment_from(columns)


def test_a_facts_row_gives_each_part_found_and_none_for_the_others() -> None:
    """snapshot_named: a part whose key column is NULL is None (its other columns unread);
    the others are read whole."""
    pending = _payment(status=PaymentStatus.PENDING, error_code=None)
    row: dict[str, object] = {f"ledger_{c}": None for c in LEDGER_COLUMNS}
    row.update({f"succeeded_{c}": None for c in PAYMENT_COLUMNS})
    row.update({f"pending_{c}": getattr(pending, c) for c in PAYMENT_COLUMNS})
    row["pending_status"] = "pending"
    row["succeeded_currency"] = "not read: its key column is NULL"
    snapshot = snapshot_named(row)
    assert snapshot.ledger is None and snapshot.succeeded is None
    assert snapshot.pending == pending
