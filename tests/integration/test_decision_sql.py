"""The whole decision table of tests/unit/test_decision.py against the real database: for each
row, the ledger is made to hold what the row says, and the decision made on what PostgreSQL
gives back is the row's. `snapshots` (the pipeline's read) is asked for every row;
`begin_facts` (the begin step, which states facts and inserts only when nothing blocks)
for every row whose services accepted the command. Neither function decides anything: the
rule order is `decide`'s alone, and these tests show the facts they give are the ones it
needs."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from payment_worker.adapters.postgres import PostgresStore
from payment_worker.adapters.postgres.rows import PAYMENT_COLUMNS
from payment_worker.domain.decision import Charge, Checked, Resume, Snapshot, decide
from payment_worker.domain.model import Payment, PaymentStatus
from tests.integration.support import ROUTE, ledger_fields
from tests.unit.test_decision import ACCEPTED, CASES, VALID

pytestmark = pytest.mark.integration

Conn = psycopg.Connection[Any]


def _hold(db: Conn, snapshot: Snapshot | None) -> None:
    """The ledger holds exactly what `snapshot` says (nothing else, no earlier row's data)."""
    db.execute("TRUNCATE reconciler_claims, command_ledger, outbox, gateway_references, payments")
    if snapshot is None:
        return
    for payment in (snapshot.succeeded, snapshot.pending):
        if payment is not None:
            values = [getattr(payment, c) for c in PAYMENT_COLUMNS]
            values[PAYMENT_COLUMNS.index("status")] = str(payment.status)
            db.execute(
                f"INSERT INTO payments ({', '.join(PAYMENT_COLUMNS)})"
                f" VALUES ({', '.join(['%s'] * len(PAYMENT_COLUMNS))})",
                values,
            )
    entry = snapshot.ledger
    if entry is not None:
        db.execute(
            "INSERT INTO command_ledger (command_id, order_id, customer_id, amount, currency,"
            " state, outcome, error_message, payment_id, reply_route)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                entry.command_id,
                entry.order_id,
                entry.customer_id,
                entry.amount,
                entry.currency,
                "final" if entry.final else "in_progress",
                str(entry.outcome) if entry.outcome else None,
                entry.error_message,
                entry.payment_id,
                Jsonb(entry.reply_route),
            ),
        )


def _candidate() -> Payment:
    """The pending payment the pipeline would begin for VALID."""
    return Payment(
        id=uuid.uuid4(),
        order_id=VALID.order_id,
        customer_id=VALID.customer_id,
        reservation_id=VALID.reservation_id,
        amount=VALID.amount,
        currency=VALID.currency,
        payment_method=VALID.payment_method,
        status=PaymentStatus.PENDING,
        created_at=VALID.requested_at,
        command_id=VALID.command_id,
    )


@pytest.mark.parametrize(
    ("checked", "snapshot", "expected"),
    [case[1:] for case in CASES if case[2] is not None],
    ids=[case[0] for case in CASES if case[2] is not None],
)
async def test_the_decision_on_what_snapshots_reads(
    store: PostgresStore, db: Conn, checked: Checked, snapshot: Snapshot, expected: object
) -> None:
    """The row's ledger, read back by `snapshots`, gives the row's decision."""
    _hold(db, snapshot)

    read = await store.snapshot(VALID.command_id, VALID.order_id)

    assert read == snapshot
    assert decide(VALID, checked, read) == expected


@pytest.mark.parametrize(
    ("snapshot", "expected"),
    [(case[2], case[3]) for case in CASES if case[1] is ACCEPTED],
    ids=[case[0] for case in CASES if case[1] is ACCEPTED],
)
async def test_the_decision_on_what_begin_facts_states(
    store: PostgresStore, db: Conn, snapshot: Snapshot | None, expected: object
) -> None:
    """An accepted command's row (its ledger not read: nothing recorded), begun: where the row
    decides Charge, begin_facts inserted the candidate and the facts resume it; anywhere
    else it inserted nothing and the facts give the row's decision."""
    _hold(db, snapshot)
    candidate = _candidate()

    begun = await store.begin_payment(candidate, ledger_fields(candidate), ROUTE)

    decision = decide(VALID, None, begun.facts)
    if expected == Charge():
        assert begun.inserted
        assert decision == Resume(candidate)
    else:
        assert not begun.inserted
        assert decision == expected
        written = db.execute("SELECT count(*) FROM payments WHERE id = %s", (candidate.id,))
        assert written.fetchone() == (0,)
