"""PostgresStore over make_pool() against the real PostgreSQL: payments, the command ledger,
the outbox and the translation of connection failures."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from payment_worker.adapters.postgres import (
    DatabaseError,
    DatabaseUnavailable,
    PostgresStore,
    make_pool,
)
from payment_worker.adapters.postgres.ledger import begin_params
from payment_worker.adapters.postgres.queries import WrittenMeanwhile, translate
from payment_worker.devstack.broker import free_port
from payment_worker.domain.model import Outcome, PaymentStatus
from payment_worker.exceptions import RetryableError
from payment_worker.service.messages import payment_record
from payment_worker.service.ports import Begun, Snapshot
from tests.integration.support import (
    ROUTE,
    declined,
    final_ledger,
    ledger_fields,
    message,
    pending_payment,
    succeeded,
)

pytestmark = pytest.mark.integration

Conn = psycopg.Connection[Any]


def _count(db: Conn, query: str, *params: Any) -> int:
    row = db.execute(query, params).fetchone()
    assert row is not None
    return int(row[0])


# -- begin_payment ---------------------------------------------------------------------------


async def test_begin_payment_inserts_pending_payment_and_in_progress_ledger_row(
    store: PostgresStore, db: Conn
) -> None:
    """A first begin_payment for an order writes the pending payment and an in_progress
    ledger row pointing at it, and answers inserted, with both among the facts."""
    payment = pending_payment(amount=Decimal("123.45"))

    begun = await store.begin_payment(payment, ledger_fields(payment), ROUTE)

    assert begun.inserted
    assert (begun.facts.pending, begun.facts.succeeded) == (payment, None)
    assert begun.facts.ledger is not None
    assert (begun.facts.ledger.final, begun.facts.ledger.payment_id) == (False, payment.id)
    row = db.execute(
        "SELECT status, amount, command_id FROM payments WHERE id = %s", (payment.id,)
    ).fetchone()
    assert row == ("pending", Decimal("123.45"), payment.command_id)
    ledger = db.execute(
        "SELECT state, outcome, payment_id, reply_route FROM command_ledger WHERE command_id = %s",
        (payment.command_id,),
    ).fetchone()
    assert ledger == ("in_progress", None, payment.id, ROUTE)


async def test_begin_payment_by_another_command_while_pending_is_busy(
    store: PostgresStore, db: Conn
) -> None:
    """While an order has a pending payment, another command for it is not inserted: the
    facts show the existing payment pending, and nothing new is written."""
    first = pending_payment()
    await store.begin_payment(first, ledger_fields(first), ROUTE)
    second = pending_payment(order_id=first.order_id)

    begun = await store.begin_payment(second, ledger_fields(second), ROUTE)

    assert not begun.inserted
    assert begun.facts.pending is not None and begun.facts.pending.id == first.id
    assert (begun.facts.succeeded, begun.facts.ledger) == (None, None)
    assert _count(db, "SELECT count(*) FROM payments WHERE order_id = %s", first.order_id) == 1
    assert (
        _count(db, "SELECT count(*) FROM command_ledger WHERE command_id = %s", second.command_id)
        == 0
    )


async def test_begin_payment_by_the_same_command_resumes_its_pending_payment(
    store: PostgresStore, db: Conn
) -> None:
    """A redelivered command whose payment is still pending gets that payment back (same id),
    not a new one (rule I5)."""
    first = pending_payment()
    await store.begin_payment(first, ledger_fields(first), ROUTE)
    retry = pending_payment(order_id=first.order_id, command_id=first.command_id)

    begun = await store.begin_payment(retry, ledger_fields(retry), ROUTE)

    assert not begun.inserted
    assert begun.facts.pending is not None
    assert begun.facts.pending.id == first.id != retry.id
    assert begun.facts.pending.status is PaymentStatus.PENDING
    assert _count(db, "SELECT count(*) FROM payments WHERE order_id = %s", first.order_id) == 1


async def test_begin_payment_after_success_returns_the_succeeded_payment(
    store: PostgresStore, db: Conn
) -> None:
    """Once an order's payment succeeded, another command finds it among the facts and no
    second payment is started (rule I2)."""
    first = pending_payment()
    await store.begin_payment(first, ledger_fields(first), ROUTE)
    assert await store.finish_payment(succeeded(first), Outcome.SUCCEEDED, None, []) == []
    other = pending_payment(order_id=first.order_id)

    begun = await store.begin_payment(other, ledger_fields(other), ROUTE)

    paid = begun.facts.succeeded
    assert not begun.inserted and paid is not None
    assert (paid.id, paid.status) == (first.id, PaymentStatus.SUCCEEDED)
    assert paid.transaction_id == "txn_0123456789abcdef"
    assert _count(db, "SELECT count(*) FROM payments WHERE order_id = %s", first.order_id) == 1


async def test_begin_payment_of_a_finalized_command_returns_its_ledger_entry(
    store: PostgresStore,
) -> None:
    """A command id whose outcome is recorded finds that final entry among the facts (rule
    I1), and nothing is inserted even though its order could be paid again."""
    first = pending_payment()
    await store.begin_payment(first, ledger_fields(first), ROUTE)
    await store.finish_payment(declined(first), Outcome.DECLINED, "Payment failed: x", [])
    again = pending_payment(order_id=first.order_id, command_id=first.command_id)

    begun = await store.begin_payment(again, ledger_fields(again), ROUTE)

    entry = begun.facts.ledger
    assert not begun.inserted and entry is not None
    assert entry.final and entry.outcome is Outcome.DECLINED
    assert entry.payment_id == first.id


async def test_begin_payment_returns_the_commands_ledger_entry_with_every_verdict(
    store: PostgresStore,
) -> None:
    """A command id in progress for one order, begun again for another order (free, or already
    paid): the facts carry that in-progress entry beside the order's payments, so that the
    domain can tell a reused command id (rule I1) from a new command; nothing is inserted."""
    first = pending_payment()
    await store.begin_payment(first, ledger_fields(first), ROUTE)
    paid = pending_payment()
    await store.begin_payment(paid, ledger_fields(paid), ROUTE)
    await store.finish_payment(succeeded(paid), Outcome.SUCCEEDED, None, [])

    free = await store.begin_payment(
        reused := pending_payment(command_id=first.command_id), ledger_fields(reused), ROUTE
    )
    on_paid = await store.begin_payment(
        again := pending_payment(order_id=paid.order_id, command_id=first.command_id),
        ledger_fields(again),
        ROUTE,
    )

    for begun in (free, on_paid):
        assert not begun.inserted and begun.facts.ledger is not None
        assert (begun.facts.ledger.order_id, begun.facts.ledger.final) == (first.order_id, False)
    assert (free.facts.pending, free.facts.succeeded) == (None, None)
    assert on_paid.facts.succeeded is not None and on_paid.facts.succeeded.id == paid.id
    assert await store.snapshot(reused.command_id, reused.order_id) == free.facts


async def test_concurrent_begin_payment_for_one_order_starts_one_payment(
    database_url: str, migrated_schema: str, db: Conn
) -> None:
    """Twenty commands for one order racing through begin_payment leave exactly one pending
    payment: one caller inserts it, the other nineteen find it pending (rule I3)."""
    order_id = uuid.uuid4()
    payments = [pending_payment(order_id=order_id) for _ in range(20)]
    # Twenty open connections, so the twenty calls really run at the same time.
    pool = make_pool(database_url, migrated_schema, min_size=20, max_size=20)
    await pool.open(wait=True, timeout=10)
    store = PostgresStore(pool)
    try:
        answers = await asyncio.gather(
            *(store.begin_payment(p, ledger_fields(p), ROUTE) for p in payments),
            return_exceptions=True,
        )
    finally:
        await pool.close()

    begun = [a for a in answers if isinstance(a, Begun)]
    assert len(begun) == 20, answers
    winners = [a.facts.pending for a in begun if a.inserted]
    assert len(winners) == 1 and winners[0] is not None
    assert {a.facts.pending.id for a in begun if a.facts.pending} == {winners[0].id}
    assert all(a.facts.pending for a in begun)
    assert _count(db, "SELECT count(*) FROM payments WHERE order_id = %s", order_id) == 1
    assert _count(db, "SELECT count(*) FROM command_ledger WHERE order_id = %s", order_id) == 1


async def test_a_begin_batch_that_fails_writes_nothing(store: PostgresStore, db: Conn) -> None:
    """The begin step is one transaction: when one candidate cannot be inserted (an amount the
    table refuses), no other candidate's pending payment or ledger entry stays written, and
    the error is raised for the batch to be retried item by item."""
    good, bad = pending_payment(), pending_payment(amount=Decimal("0.00"))

    with pytest.raises(DatabaseError):
        await store._begin_batch([(c, ledger_fields(c), ROUTE) for c in (good, bad)])

    assert _count(db, "SELECT count(*) FROM payments") == 0
    assert _count(db, "SELECT count(*) FROM command_ledger") == 0


async def test_one_command_id_for_two_orders_in_one_batch_is_inserted_once(
    store: PostgresStore, db: Conn
) -> None:
    """Two candidates of one command id for two orders in one batch: the first is inserted,
    the second finds that entry (for another order: a CONFLICT for the domain) and writes
    nothing, where inserting both would break the ledger's key."""
    first = pending_payment()
    second = pending_payment(command_id=first.command_id)  # another order, same command id

    one, two = await store._begin_batch([(c, ledger_fields(c), ROUTE) for c in (first, second)])

    assert isinstance(one, Begun) and isinstance(two, Begun)
    assert (one.inserted, two.inserted) == (True, False)
    assert two.facts.ledger is not None and two.facts.ledger.order_id == first.order_id
    assert two.facts.pending is None
    assert _count(db, "SELECT count(*) FROM payments") == 1


async def test_a_command_id_written_by_another_worker_meanwhile_fails_no_other_command(
    store: PostgresStore, database_url: str, migrated_schema: str, db: Conn
) -> None:
    """Another worker's batch inserts command X for order O1 and commits while this batch
    holds X for order O2 beside an unrelated command: this batch's statement meets X's key,
    runs again, and then finds X written (for another order: a CONFLICT for the domain) while
    the unrelated command is inserted, instead of every command of the batch failing."""
    theirs = pending_payment()
    reused = pending_payment(command_id=theirs.command_id)  # another order, same command id
    unrelated = pending_payment()
    other_worker = psycopg.connect(database_url)
    other_worker.execute(f'SET search_path TO "{migrated_schema}"')
    other_worker.execute(
        store.q["begin_facts"], begin_params([(theirs, ledger_fields(theirs), ROUTE)])
    ).fetchall()  # inserted, not yet committed

    batch = asyncio.ensure_future(
        store._begin_batch([(c, ledger_fields(c), ROUTE) for c in (reused, unrelated)])
    )
    await asyncio.sleep(0.5)  # this batch now waits on X's key
    other_worker.commit()
    other_worker.close()
    reused_begun, unrelated_begun = await asyncio.wait_for(batch, 10)

    assert isinstance(reused_begun, Begun) and isinstance(unrelated_begun, Begun)
    assert not reused_begun.inserted and unrelated_begun.inserted
    assert reused_begun.facts.ledger is not None
    assert reused_begun.facts.ledger.order_id == theirs.order_id
    assert _count(db, "SELECT count(*) FROM payments WHERE id = %s", unrelated.id) == 1


async def test_a_key_written_meanwhile_is_a_retry_and_any_other_a_named_error(
    store: PostgresStore, db: Conn
) -> None:
    """UniqueViolation is translated by its constraint's name: the ledger's key written by
    another transaction first is WrittenMeanwhile (retried, then read), a unique constraint
    the rules do not race on is a DatabaseError that names it."""
    first = pending_payment()
    await store.begin_payment(first, ledger_fields(first), ROUTE)
    with pytest.raises(psycopg.errors.UniqueViolation) as raced:
        db.execute(
            "INSERT INTO command_ledger (command_id, order_id, customer_id, amount, currency,"
            " state, reply_route) VALUES (%s, %s, %s, 1, 'USD', 'in_progress', '{}')",
            (first.command_id, uuid.uuid4(), uuid.uuid4()),
        )
    translated = translate(raced.value)
    assert isinstance(translated, WrittenMeanwhile) and isinstance(translated, RetryableError)
    assert "command_ledger_pkey" in str(translated)
    with pytest.raises(psycopg.errors.UniqueViolation) as bug:
        db.execute("INSERT INTO reconciler_runs VALUES ('a', now(), 0, 0), ('a', now(), 0, 0)")
    translated = translate(bug.value)
    assert isinstance(translated, DatabaseError) and "reconciler_runs_pkey" in str(translated)


async def test_one_begin_batch_decides_each_candidate_as_if_served_one_at_a_time(
    store: PostgresStore, db: Conn
) -> None:
    """One batch holding every case: each candidate gets the facts it would get alone, in
    batch order (an earlier candidate's new payment counts for the later ones of its order),
    and only the new payments and their ledger entries are written."""
    # What the database holds before the batch.
    paid = pending_payment()
    await store.begin_payment(paid, ledger_fields(paid), ROUTE)
    await store.finish_payment(succeeded(paid), Outcome.SUCCEEDED, None, [message()])
    waiting = pending_payment()
    await store.begin_payment(waiting, ledger_fields(waiting), ROUTE)
    recorded = pending_payment()
    await store.record([message()], final_ledger(recorded, "ORDER_NOT_FOUND"))
    stranded = pending_payment()  # in progress, but its payment is no longer pending
    await store.begin_payment(stranded, ledger_fields(stranded), ROUTE)
    db.execute("UPDATE payments SET status = 'failed' WHERE id = %s", (stranded.id,))
    stranded_too = pending_payment()
    await store.begin_payment(stranded_too, ledger_fields(stranded_too), ROUTE)
    db.execute("UPDATE payments SET status = 'failed' WHERE id = %s", (stranded_too.id,))

    new = pending_payment()
    candidates = [
        new,
        pending_payment(order_id=new.order_id),  # another command for that order
        pending_payment(order_id=new.order_id, command_id=new.command_id),  # the same command
        pending_payment(order_id=paid.order_id),
        pending_payment(order_id=waiting.order_id),
        pending_payment(order_id=waiting.order_id, command_id=waiting.command_id),
        pending_payment(command_id=recorded.command_id),
        pending_payment(order_id=stranded.order_id, command_id=stranded.command_id),
        # a new command first, then the stranded one of the same order: it finds that new
        # payment pending, as it would one call later
        pending_payment(order_id=stranded_too.order_id),
        pending_payment(order_id=stranded_too.order_id, command_id=stranded_too.command_id),
    ]
    answers = await store._begin_batch([(c, ledger_fields(c), ROUTE) for c in candidates])

    begun = [a for a in answers if isinstance(a, Begun)]
    assert len(begun) == len(candidates), answers
    assert [b.inserted for b in begun] == [i in (0, 8) for i in range(len(candidates))]
    pending = [b.facts.pending.id if b.facts.pending else None for b in begun]
    entries = [b.facts.ledger for b in begun]
    # The new payment is the order's pending one for the later candidates of its order; the
    # same command finds its own new entry, another command none.
    assert pending[:3] == [candidates[0].id] * 3
    assert entries[0] is not None and entries[0].payment_id == candidates[0].id
    assert entries[1] is None
    assert entries[2] == entries[0]
    assert begun[3].facts.succeeded is not None and begun[3].facts.succeeded.id == paid.id
    assert pending[4:6] == [waiting.id, waiting.id]
    assert entries[6] is not None and entries[6].outcome is Outcome.ORDER_NOT_FOUND
    # In progress, its payment no longer pending: the entry alone (the domain says it cannot be).
    assert entries[7] is not None
    assert (entries[7].command_id, entries[7].final) == (stranded.command_id, False)
    assert (pending[7], begun[7].facts.succeeded) == (None, None)
    assert pending[8:] == [candidates[8].id] * 2
    assert entries[9] is not None and entries[9].command_id == stranded_too.command_id
    written = {r[0] for r in db.execute("SELECT id FROM payments").fetchall()}
    assert {c.id for c in candidates} & written == {candidates[0].id, candidates[8].id}
    assert (
        _count(
            db,
            "SELECT count(*) FROM command_ledger WHERE payment_id = ANY(%s)",
            [candidates[0].id, candidates[8].id],
        )
        == 2
    )


async def test_snapshots_of_one_batch_each_read_their_own_command_and_order(
    store: PostgresStore,
) -> None:
    """One snapshot batch: each item gets its command's ledger entry and its order's succeeded
    and pending payments, whatever the other items hold (one item repeated, one unknown)."""
    paid = pending_payment()
    await store.begin_payment(paid, ledger_fields(paid), ROUTE)
    await store.finish_payment(succeeded(paid), Outcome.SUCCEEDED, None, [message()])
    waiting = pending_payment()
    await store.begin_payment(waiting, ledger_fields(waiting), ROUTE)
    unknown = pending_payment()
    items = [
        (paid.command_id, paid.order_id),
        (waiting.command_id, waiting.order_id),
        (unknown.command_id, unknown.order_id),
        (waiting.command_id, paid.order_id),  # a command and an order of different items
        (paid.command_id, paid.order_id),
    ]
    snapshots = await store._snapshot_batch([(c, o) for c, o in items if c is not None])

    first, second, third, mixed, again = snapshots
    assert isinstance(first, Snapshot) and first.ledger is not None and first.pending is None
    assert first.ledger.final and first.ledger.outcome is Outcome.SUCCEEDED
    assert first.succeeded is not None and first.succeeded.id == paid.id
    assert first.succeeded.status is PaymentStatus.SUCCEEDED
    assert isinstance(second, Snapshot) and second.succeeded is None
    assert second.ledger is not None and not second.ledger.final
    assert second.pending == waiting
    assert third == Snapshot(None, None, None)
    assert isinstance(mixed, Snapshot) and mixed.pending is None
    assert mixed.ledger is not None and mixed.ledger.command_id == waiting.command_id
    assert mixed.succeeded is not None and mixed.succeeded.id == paid.id
    assert again == first


# -- finish_payment and record ----------------------------------------------------------------


async def test_finish_payment_records_final_state_ledger_and_outbox_rows(
    store: PostgresStore, db: Conn
) -> None:
    """finish_payment sets the payment's final state, the ledger's outcome, and writes exactly
    the given outbox rows (returned with their row ids)."""
    payment = pending_payment()
    await store.begin_payment(payment, ledger_fields(payment), ROUTE)
    final = succeeded(payment)
    messages = [
        message("event", "payment-succeeded", payment_id=payment.id),
        message("reply", "payment-replies", partition=1),
    ]

    stored = await store.finish_payment(final, Outcome.SUCCEEDED, None, messages)

    assert stored is not None
    assert [s.message for s in stored] == messages
    rows = db.execute(
        "SELECT id, kind, topic, partition, sent_at FROM outbox ORDER BY id"
    ).fetchall()
    assert rows == [
        (stored[0].id, "event", "payment-succeeded", None, None),
        (stored[1].id, "reply", "payment-replies", 1, None),
    ]
    assert db.execute(
        "SELECT status, transaction_id FROM payments WHERE id = %s", (payment.id,)
    ).fetchone() == ("succeeded", "txn_0123456789abcdef")
    assert db.execute(
        "SELECT state, outcome FROM command_ledger WHERE command_id = %s", (payment.command_id,)
    ).fetchone() == ("final", "SUCCEEDED")


async def test_finish_payment_records_whether_the_answer_was_simulated(
    store: PostgresStore, db: Conn
) -> None:
    """A real gateway's answer (simulated false) finalizes the payment with is_simulated
    false; the simulator's keeps it true."""
    real, simulated = pending_payment(), pending_payment()
    for payment in (real, simulated):
        await store.begin_payment(payment, ledger_fields(payment), ROUTE)
    await store.finish_payment(
        replace(succeeded(real), is_simulated=False), Outcome.SUCCEEDED, None, []
    )
    await store.finish_payment(succeeded(simulated), Outcome.SUCCEEDED, None, [])
    rows = dict(
        db.execute(
            "SELECT id, is_simulated FROM payments WHERE id = ANY(%s)", ([real.id, simulated.id],)
        ).fetchall()
    )
    assert rows == {real.id: False, simulated.id: True}


async def test_finish_payment_is_one_transaction(store: PostgresStore, db: Conn) -> None:
    """When one outbox row cannot be written, the payment stays pending, the ledger stays
    in_progress and no outbox row exists: state and messages commit together (habit 6)."""
    payment = pending_payment()
    await store.begin_payment(payment, ledger_fields(payment), ROUTE)
    messages = [
        message("event", "payment-succeeded", payment_id=payment.id),
        message("not-a-kind"),
    ]  # violates the outbox kind CHECK constraint

    with pytest.raises(DatabaseError):
        await store.finish_payment(succeeded(payment), Outcome.SUCCEEDED, None, messages)

    assert db.execute("SELECT status FROM payments WHERE id = %s", (payment.id,)).fetchone() == (
        "pending",
    )
    assert db.execute(
        "SELECT state FROM command_ledger WHERE command_id = %s", (payment.command_id,)
    ).fetchone() == ("in_progress",)
    assert _count(db, "SELECT count(*) FROM outbox") == 0


async def test_finish_payment_twice_writes_nothing_the_second_time(
    store: PostgresStore, db: Conn
) -> None:
    """A second finish_payment for a payment no longer pending returns None, leaves the first
    final state alone and writes no outbox rows."""
    payment = pending_payment()
    await store.begin_payment(payment, ledger_fields(payment), ROUTE)
    await store.finish_payment(succeeded(payment), Outcome.SUCCEEDED, None, [message("reply")])
    again = await store.finish_payment(
        declined(payment),
        Outcome.DECLINED,
        "Payment failed: x",
        [message("reply"), message("reply")],
    )

    assert again is None
    assert _count(db, "SELECT count(*) FROM outbox") == 1
    assert db.execute("SELECT status FROM payments WHERE id = %s", (payment.id,)).fetchone() == (
        "succeeded",
    )
    assert db.execute(
        "SELECT outcome FROM command_ledger WHERE command_id = %s", (payment.command_id,)
    ).fetchone() == ("SUCCEEDED",)


async def test_record_writes_final_ledger_entry_and_outbox_rows(
    store: PostgresStore, db: Conn
) -> None:
    """record() with a new ledger entry stores it as final and writes the given rows."""
    payment = pending_payment()

    stored = await store.record([message("reply")], final_ledger(payment, "ORDER_NOT_FOUND"))

    assert stored is not None and len(stored) == 1
    assert db.execute(
        "SELECT state, outcome FROM command_ledger WHERE command_id = %s", (payment.command_id,)
    ).fetchone() == ("final", "ORDER_NOT_FOUND")
    assert _count(db, "SELECT count(*) FROM outbox") == 1


async def test_record_with_an_existing_ledger_entry_writes_nothing(
    store: PostgresStore, db: Conn
) -> None:
    """record() whose ledger entry already exists returns None and writes no outbox row, so a
    command's outcome is recorded (and answered) once."""
    payment = pending_payment()
    await store.record([message("reply")], final_ledger(payment, "ORDER_NOT_FOUND"))

    again = await store.record([message("reply")], final_ledger(payment, "ORDER_INVALID"))

    assert again is None
    assert _count(db, "SELECT count(*) FROM outbox") == 1
    assert db.execute(
        "SELECT outcome FROM command_ledger WHERE command_id = %s", (payment.command_id,)
    ).fetchone() == ("ORDER_NOT_FOUND",)


async def test_record_is_one_transaction(store: PostgresStore, db: Conn) -> None:
    """When one outbox row cannot be written, record() leaves no ledger entry and no outbox
    row: an outcome and its reply commit together (the pool is in autocommit, so the step's
    statements must share one transaction; fails when they do not)."""
    payment = pending_payment()
    messages = [message("reply"), message("not-a-kind")]  # the outbox kind CHECK fails

    with pytest.raises(DatabaseError):
        await store.record(messages, final_ledger(payment, "ORDER_NOT_FOUND"))

    assert _count(db, "SELECT count(*) FROM command_ledger") == 0
    assert _count(db, "SELECT count(*) FROM outbox") == 0


# -- replay's batch lookup ----------------------------------------------------------------------


@pytest.mark.parametrize("finalize", [succeeded, declined])
async def test_recorded_answers_carry_the_payment_as_the_reply_does(
    store: PostgresStore, finalize: Any
) -> None:
    """recorded_answers gives each finalized command's request, outcome and payment, the
    payment field for field equal to what the pipeline puts in a reply (payment_record)."""
    payment = pending_payment(amount=Decimal("19.99"))
    await store.begin_payment(payment, ledger_fields(payment), ROUTE)
    final = finalize(payment)
    outcome = Outcome.SUCCEEDED if final.status is PaymentStatus.SUCCEEDED else Outcome.DECLINED
    await store.finish_payment(final, outcome, final.error_message, [])

    answers = await store.recorded_answers([str(payment.command_id), str(uuid.uuid4())])

    assert list(answers) == [str(payment.command_id)]
    answer = answers[str(payment.command_id)]
    assert answer.order_id == str(payment.order_id)
    assert answer.customer_id == str(payment.customer_id)
    assert (answer.amount, answer.currency, answer.final) == (Decimal("19.99"), "USD", True)
    assert answer.outcome is outcome and answer.payment_id == str(payment.id)
    stored = await store.payment(payment.id)
    assert stored is not None
    assert answer.payment == payment_record(stored)


async def test_recorded_answers_of_an_outcome_without_payment(store: PostgresStore) -> None:
    """A command recorded without a payment (ORDER_NOT_FOUND) is found with no payment."""
    payment = pending_payment()
    await store.record([message("reply")], final_ledger(payment, "ORDER_NOT_FOUND"))

    answer = (await store.recorded_answers([str(payment.command_id)]))[str(payment.command_id)]

    assert answer.outcome is Outcome.ORDER_NOT_FOUND
    assert (answer.payment_id, answer.payment) == (None, None)


# -- outbox relay queries ---------------------------------------------------------------------


async def test_outbox_backlog_counts_unsent_rows(store: PostgresStore) -> None:
    """The outbox backlog is the number of rows not yet marked sent."""
    stored = await store.record([message(), message(), message()])
    assert stored is not None
    assert (await store.stuck_state(details=False)).outbox_backlog == 3

    await store.mark_sent([stored[0].id, stored[2].id])

    assert (await store.stuck_state(details=False)).outbox_backlog == 1


async def test_mark_sent_stamps_sent_at_once(store: PostgresStore, db: Conn) -> None:
    """mark_sent sets sent_at on the given rows only, and does not move it on a second call."""
    stored = await store.record([message(), message()])
    assert stored is not None
    await store.mark_sent([stored[0].id])
    first = db.execute("SELECT sent_at FROM outbox WHERE id = %s", (stored[0].id,)).fetchone()

    await store.mark_sent([stored[0].id])

    assert first is not None and first[0] is not None
    assert (
        db.execute("SELECT sent_at FROM outbox WHERE id = %s", (stored[0].id,)).fetchone() == first
    )
    assert db.execute("SELECT sent_at FROM outbox WHERE id = %s", (stored[1].id,)).fetchone() == (
        None,
    )


async def test_claim_unsent_returns_unsent_rows_as_written(store: PostgresStore) -> None:
    """claim_unsent(0, ...) returns every unsent row in id order with topic, partition, key,
    value and headers as written (a header without a value stays one); sent rows are left out."""
    written = [
        message(
            "event",
            "payment-succeeded",
            partition=1,
            key=b"k1",
            value=b"\x00\xff",
            headers=[("ce_id", b"abc"), ("empty", b""), ("null", None)],
            payment_id=uuid.uuid4(),
        ),
        message("reply", "payment-replies", key=None, value=None, headers=[]),
        message("reply", "payment-replies"),
    ]
    stored = await store.record(written)
    assert stored is not None
    await store.mark_sent([stored[2].id])

    claimed = await store.claim_unsent(0, 100)
    got = [
        (
            s.id,
            s.message.topic,
            s.message.partition,
            s.message.key,
            s.message.value,
            s.message.headers,
        )
        for s in claimed
    ]

    assert got == [
        (
            stored[0].id,
            "payment-succeeded",
            1,
            b"k1",
            b"\x00\xff",
            [("ce_id", b"abc"), ("empty", b""), ("null", None)],
        ),
        (stored[1].id, "payment-replies", None, None, None, []),
    ]


async def test_claim_unsent_leaves_out_rows_younger_than_the_age(
    store: PostgresStore, db: Conn
) -> None:
    """claim_unsent(older_than_s) returns only rows created longer ago than that age."""
    stored = await store.record([message(), message()])
    assert stored is not None
    db.execute(
        "UPDATE outbox SET created_at = now() - interval '1 minute' WHERE id = %s", (stored[0].id,)
    )

    assert [s.id for s in await store.claim_unsent(30, 100)] == [stored[0].id]


async def test_claim_unsent_honours_the_limit(store: PostgresStore) -> None:
    """claim_unsent returns at most `limit` rows, the oldest first."""
    stored = await store.record([message() for _ in range(5)])
    assert stored is not None

    assert [s.id for s in await store.claim_unsent(0, 2)] == [stored[0].id, stored[1].id]


async def test_claimed_rows_are_leased_and_skipped_by_the_next_claim(
    store: PostgresStore,
) -> None:
    """A claimed row is leased: another claim (another relay, the next sweep) skips it until
    the lease ends, so two relays never hand the same row to a producer at once."""
    stored = await store.record([message(), message()])
    assert stored is not None

    first = await store.claim_unsent(0, 1)
    second = await store.claim_unsent(0, 100)
    third = await store.claim_unsent(0, 100)

    assert [s.id for s in first] == [stored[0].id]
    assert [s.id for s in second] == [stored[1].id]
    assert third == []


async def test_a_claim_whose_lease_ended_is_claimed_again(store: PostgresStore, db: Conn) -> None:
    """A relay that died after claiming leaves its rows to the next claim once the lease ends."""
    stored = await store.record([message()])
    assert stored is not None
    assert len(await store.claim_unsent(0, 100, lease_s=60)) == 1
    db.execute("UPDATE outbox SET next_attempt_at = now() - interval '1 second'")
    assert [s.id for s in await store.claim_unsent(0, 100)] == [stored[0].id]


async def test_mark_failed_waits_longer_each_time_then_parks(
    store: PostgresStore, db: Conn
) -> None:
    """Each counted refusal adds a try and pushes the next one further away; at the limit the
    row is parked (and returned as such); a refusal that is not counted only waits."""
    stored = await store.record([message()])
    assert stored is not None
    row_id = stored[0].id

    waits = []
    for _ in range(3):
        assert await store.mark_failed([(row_id, "refused", True)], 4) == []
        waits.append(
            db.execute("SELECT extract(epoch FROM next_attempt_at - now()) FROM outbox").fetchone()[
                0
            ]
        )
    assert await store.mark_failed([(row_id, "away", False)], 4) == []
    assert db.execute("SELECT attempts, parked_at FROM outbox").fetchone() == (3, None)
    [parked] = await store.mark_failed([(row_id, "refused again", True)], 4)

    assert waits[0] < waits[2]
    assert (parked.id, parked.attempts, parked.error) == (row_id, 4, "refused again")
    assert await store.claim_unsent(0, 100) == []
    state = await store.stuck_state(details=False)
    assert (state.outbox_backlog, state.parked) == (0, 1)


# -- stale pending payments -----------------------------------------------------------------


async def test_claim_stale_returns_only_pending_payments_older_than_the_age(
    store: PostgresStore, db: Conn
) -> None:
    """claim_stale(age) returns pending payments started more than `age` seconds ago (on the
    database's clock), with their command's reply route; young pending and old finished
    payments are left out."""
    old = pending_payment()
    young = pending_payment()
    old_finished = pending_payment()
    for payment in (old, young, old_finished):
        await store.begin_payment(payment, ledger_fields(payment), ROUTE)
    await store.finish_payment(succeeded(old_finished), Outcome.SUCCEEDED, None, [])
    db.execute(
        "UPDATE command_ledger SET created_at = now() - interval '10 minutes'"
        " WHERE payment_id = ANY(%s)",
        ([old.id, old_finished.id],),
    )

    stale = await store.claim_stale(60, "r1")

    assert [(p.id, p.status, route) for p, route in stale] == [
        (old.id, PaymentStatus.PENDING, ROUTE)
    ]


async def test_the_age_of_a_pending_payment_is_read_on_the_database_clock(
    store: PostgresStore, db: Conn
) -> None:
    """A worker whose clock runs an hour ahead writes created_at an hour early: the payment
    is not stale for that, only for what the database saw."""
    payment = pending_payment()
    payment = replace(payment, created_at=payment.created_at - timedelta(hours=1))
    await store.begin_payment(payment, ledger_fields(payment), ROUTE)

    assert await store.claim_stale(60, "r1") == []
    db.execute("UPDATE command_ledger SET created_at = now() - interval '90 seconds'")
    assert [p.id for p, _ in await store.claim_stale(60, "r1")] == [payment.id]


async def test_two_reconcilers_never_claim_the_same_payment(
    store: PostgresStore, db: Conn, database_url: str, migrated_schema: str
) -> None:
    """While one reconciler's claim is still being made (its transaction open, the payments
    locked), another claims the other stale payments without waiting and never gets the first
    one's; once that claim is in, nobody gets those payments until it lapses."""
    payments = [pending_payment() for _ in range(10)]
    for payment in payments:
        await store.begin_payment(payment, ledger_fields(payment), ROUTE)
    db.execute("UPDATE command_ledger SET created_at = now() - interval '10 minutes'")
    query = store.q["claim_stale_payments"]
    params = {"age_s": 60, "owner": "first", "lease_s": 120, "limit": 5}

    with psycopg.connect(database_url) as first:
        first.execute(f"SET search_path TO {migrated_schema}")
        mine = {row[0] for row in first.execute(query, params).fetchall()}  # not committed yet
        theirs = {p.id for p, _ in await asyncio.wait_for(store.claim_stale(60, "second"), 5)}
        first.commit()

    assert len(mine) == 5 and len(theirs) == 5 and not mine & theirs
    assert await store.claim_stale(60, "third") == []
    db.execute("UPDATE reconciler_claims SET claimed_until = now() - interval '1 second'")
    assert len(await store.claim_stale(60, "late", limit=100)) == 10


async def test_claimed_payments_never_take_the_places_of_unclaimed_ones(
    store: PostgresStore, db: Conn
) -> None:
    """A reconciler asking for 5 gets the 5 oldest stale payments nobody holds, not the older
    ones another reconciler has claimed (which it could not take): the pass goes on."""
    payments = [pending_payment() for _ in range(10)]
    for age, payment in enumerate(payments):
        await store.begin_payment(payment, ledger_fields(payment), ROUTE)
        db.execute(
            "UPDATE command_ledger SET created_at = now() - make_interval(mins => %s)"
            " WHERE command_id = %s",
            (100 - age, payment.command_id),
        )
    first = {p.id for p, _ in await store.claim_stale(60, "first", limit=5)}
    assert first == {p.id for p in payments[:5]}

    second = {p.id for p, _ in await store.claim_stale(60, "second", limit=5)}

    assert second == {p.id for p in payments[5:]}


async def test_release_claims_forgets_claims_of_finished_payments(
    store: PostgresStore, db: Conn
) -> None:
    """Once a claimed payment is final, its claim is removed; a pending one keeps its claim."""
    done, still = pending_payment(), pending_payment()
    for payment in (done, still):
        await store.begin_payment(payment, ledger_fields(payment), ROUTE)
    db.execute("UPDATE command_ledger SET created_at = now() - interval '10 minutes'")
    assert len(await store.claim_stale(60, "r1")) == 2
    await store.finish_payment(succeeded(done), Outcome.SUCCEEDED, None, [])

    await store.release_claims()

    assert db.execute("SELECT payment_id FROM reconciler_claims").fetchall() == [(still.id,)]


# -- connection failures --------------------------------------------------------------------


async def test_unreachable_database_raises_database_unavailable(migrated_schema: str) -> None:
    """With PostgreSQL unreachable (a closed port), a store call raises DatabaseUnavailable, the
    package's retryable error, not a psycopg or pool error."""
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/test?connect_timeout=1"
    pool = make_pool(url, migrated_schema, min_size=1, max_size=1)
    pool.timeout = 2.0  # make_pool's 30 s wait for a connection, shortened for the test
    await pool.open(wait=False)
    started = time.monotonic()
    try:
        with pytest.raises(DatabaseUnavailable) as raised:
            await asyncio.wait_for(PostgresStore(pool).stuck_state(details=False), 8)
    finally:
        await pool.close()

    assert not isinstance(raised.value, psycopg.Error)
    assert time.monotonic() - started < 8


async def test_finishes_coalesced_into_one_batch_get_their_own_outbox_row_ids(
    store: PostgresStore, db: Conn
) -> None:
    """Many finish_payment calls at once share one statement per step: each caller still gets
    the row ids of its own messages (a mix-up would publish one payment's event and then mark
    another's row sent), and one payment finished twice in the batch is finished once."""
    payments = [pending_payment() for _ in range(12)]
    for payment in payments:
        await store.begin_payment(payment, ledger_fields(payment), ROUTE)
    calls = [
        store.finish_payment(
            succeeded(p) if i % 3 else declined(p),
            Outcome.SUCCEEDED if i % 3 else Outcome.DECLINED,
            None,
            [
                message("event", "payment-succeeded", key=f"e{i}".encode(), payment_id=p.id),
                message("reply", f"replies-{i}", key=f"r{i}".encode(), partition=i % 3),
            ],
        )
        for i, p in enumerate(payments)
    ]
    twice = store.finish_payment(
        succeeded(payments[0]), Outcome.SUCCEEDED, None, [message("reply", key=b"again")]
    )
    results = await asyncio.gather(*calls, twice)

    assert store._finishes.batches < len(calls)  # coalesced, or this test proves nothing
    assert results[-1] is None  # the second finish of payments[0]
    for i, stored in enumerate(results[:-1]):
        assert stored is not None and len(stored) == 2
        for item in stored:
            row = db.execute(
                "SELECT kind, topic, key, partition, payment_id FROM outbox WHERE id = %s",
                (item.id,),
            ).fetchone()
            assert row == (
                item.message.kind,
                item.message.topic,
                item.message.key,
                item.message.partition,
                item.message.payment_id,
            ), f"call {i}: row {item.id} holds another message"
    assert _count(db, "SELECT count(*) FROM outbox") == 2 * len(calls)


async def test_one_command_recorded_twice_in_one_batch_is_recorded_once(
    store: PostgresStore, db: Conn
) -> None:
    """Two record() calls with a final ledger entry for the same command, coalesced: the first
    writes the entry and its reply, the second gets None (recorded before) and writes nothing."""
    payment = pending_payment()
    ledger = final_ledger(payment, "ORDER_NOT_FOUND")
    first, second = await asyncio.gather(
        store.record([message("reply", key=b"first")], ledger),
        store.record([message("reply", key=b"second")], dict(ledger)),
    )
    assert first is not None and len(first) == 1 and second is None
    assert db.execute("SELECT key FROM outbox").fetchall() == [(b"first",)]
    assert _count(db, "SELECT count(*) FROM command_ledger") == 1


async def test_a_route_with_a_nul_correlation_id_is_stored_and_read_back(
    store: PostgresStore,
) -> None:
    """The reply route of a command whose correlation id holds a NUL is written to the ledger
    (jsonb refuses \\u0000 in a string) and read back unchanged by the reconciler."""
    from payment_worker.domain.routing import ReplyRoute

    route = ReplyRoute("payment-replies", None, "corr\x00elation")
    payment = pending_payment()
    began = await store.begin_payment(payment, ledger_fields(payment), route.to_json())
    assert began.inserted
    [(_, stored)] = await store.claim_stale(-1, "r")
    assert ReplyRoute.from_json(stored) == route
