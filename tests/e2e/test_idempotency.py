"""Rules I1-I4 of contract section 5 through the real worker: nobody is charged twice, and an
idempotent answer never reaches another customer."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from payment_worker.testing import command_record

pytestmark = pytest.mark.e2e


def _order(devserver, amount: str = "40.00", customer: str | None = None) -> dict:
    customer = customer or str(uuid.uuid4())
    cmd = command_record(customerId=customer, amount=Decimal(amount))
    devserver.add_order(cmd["orderId"], customer, amount)
    return cmd


def _rows(db, order_id: str) -> list[tuple[str, str]]:
    return db.execute(
        "SELECT id::text, status FROM payments WHERE order_id::text = %s ORDER BY created_at",
        (order_id,),
    ).fetchall()


def test_same_command_twice_is_answered_again_without_a_second_charge(
    start_worker, kafka, devserver, db, topics
):
    """I1: a recorded command id gets the same reply again, duplicate=true, no new event."""
    start_worker()
    cmd = _order(devserver)
    kafka.send(cmd)
    kafka.replies(expect=1)
    kafka.send(cmd)
    first, second = (r.record for r in kafka.replies(expect=2))
    assert first["outcome"] == second["outcome"] == "SUCCEEDED"
    assert (first["duplicate"], second["duplicate"]) == (False, True)
    assert first["payment"]["id"] == second["payment"]["id"]
    assert len(_rows(db, cmd["orderId"])) == 1
    assert len(kafka.read(topics.succeeded, expect=1)) == 1


def test_same_command_id_with_another_amount_is_a_conflict(start_worker, kafka, devserver, db):
    """I1: reusing a command id for a different payment is a CONFLICT and charges nothing."""
    start_worker()
    cmd = _order(devserver)
    kafka.send(cmd)
    kafka.replies(expect=1)
    kafka.send({**cmd, "amount": Decimal("41.00")})
    second = kafka.replies(expect=2)[1].record
    assert second["outcome"] == "CONFLICT" and second["httpStatus"] == 409
    assert second["errorMessage"].startswith("Conflict: ")
    assert second["payment"] is None
    assert len(_rows(db, cmd["orderId"])) == 1


def test_new_command_for_a_paid_order_by_the_same_customer_returns_that_payment(
    start_worker, kafka, devserver, db, topics
):
    """I2: same customer, amount and currency: SUCCEEDED duplicate with the existing payment."""
    start_worker()
    cmd = _order(devserver)
    kafka.send(cmd)
    kafka.replies(expect=1)
    kafka.send({**cmd, "commandId": str(uuid.uuid4())})
    first, second = (r.record for r in kafka.replies(expect=2))
    assert second["outcome"] == "SUCCEEDED" and second["duplicate"] is True
    assert second["payment"]["id"] == first["payment"]["id"]
    assert len(_rows(db, cmd["orderId"])) == 1
    assert len(kafka.read(topics.succeeded, expect=1)) == 1


def test_new_command_for_a_paid_order_by_another_customer_is_unauthorized_and_leaks_nothing(
    start_worker, kafka, devserver, db
):
    """I2: another customer gets UNAUTHORIZED, and no payment of the real customer."""
    start_worker()
    cmd = _order(devserver)
    kafka.send(cmd)
    kafka.replies(expect=1)
    intruder = {**cmd, "commandId": str(uuid.uuid4()), "customerId": str(uuid.uuid4())}
    kafka.send(intruder)
    second = kafka.replies(expect=2)[1].record
    assert second["outcome"] == "UNAUTHORIZED" and second["httpStatus"] == 401
    assert second["payment"] is None
    assert cmd["customerId"] not in (second["errorMessage"] or "")
    assert len(_rows(db, cmd["orderId"])) == 1


def test_new_command_for_a_paid_order_with_another_amount_is_a_conflict(
    start_worker, kafka, devserver, db
):
    """I2: the same customer with another amount gets CONFLICT and is not charged."""
    start_worker()
    cmd = _order(devserver)
    kafka.send(cmd)
    kafka.replies(expect=1)
    kafka.send({**cmd, "commandId": str(uuid.uuid4()), "amount": Decimal("12.00")})
    second = kafka.replies(expect=2)[1].record
    assert second["outcome"] == "CONFLICT" and second["payment"] is None
    assert len(_rows(db, cmd["orderId"])) == 1


def test_an_order_whose_payment_was_declined_can_be_paid_by_a_new_command(
    start_worker, kafka, devserver, db, topics
):
    """I4: after a decline, a new command for the order is charged."""
    start_worker()
    cmd = _order(devserver, amount="40.13")
    kafka.send(cmd)
    assert kafka.replies(expect=1)[0].record["outcome"] == "DECLINED"
    devserver.add_order(cmd["orderId"], cmd["customerId"], "40.00")
    kafka.send({**cmd, "commandId": str(uuid.uuid4()), "amount": Decimal("40.00")})
    second = kafka.replies(expect=2)[1].record
    assert second["outcome"] == "SUCCEEDED" and second["duplicate"] is False
    assert [s for _, s in _rows(db, cmd["orderId"])] == ["failed", "succeeded"]
    assert len(kafka.read(topics.failed, expect=1)) == 1
    assert len(kafka.read(topics.succeeded, expect=1)) == 1


def test_concurrent_commands_for_one_order_on_different_partitions_charge_once(
    start_worker, kafka, devserver, db
):
    """I3: two commands for one order on two partitions at once: one charge, both answered."""
    start_worker(PAYMENT_GATEWAY_LATENCY_MS="150-300")
    orders = [_order(devserver) for _ in range(15)]
    for cmd in orders:
        kafka.send(cmd, partition=0, flush=False)
        kafka.send({**cmd, "commandId": str(uuid.uuid4())}, partition=1, flush=False)
    kafka.flush()
    replies = [r.record for r in kafka.replies(expect=30)]
    assert len(replies) == 30
    for cmd in orders:
        answers = [r for r in replies if r["orderId"] == cmd["orderId"]]
        assert sorted(r["outcome"] for r in answers) == ["SUCCEEDED", "SUCCEEDED"]
        assert sorted(r["duplicate"] for r in answers) == [False, True]
        assert len({r["payment"]["id"] for r in answers}) == 1
        assert [s for _, s in _rows(db, cmd["orderId"])] == ["succeeded"]


def test_two_workers_racing_on_one_order_charge_once(start_worker, kafka, devserver, db):
    """I3 across processes: two workers in one group, commands on different partitions."""
    start_worker(PAYMENT_GATEWAY_LATENCY_MS="100-200")
    start_worker(PAYMENT_GATEWAY_LATENCY_MS="100-200")
    orders = [_order(devserver) for _ in range(10)]
    for cmd in orders:
        for partition in range(4):
            kafka.send({**cmd, "commandId": str(uuid.uuid4())}, partition=partition, flush=False)
    kafka.flush()
    replies = [r.record for r in kafka.replies(expect=40, timeout_s=90)]
    assert len(replies) == 40
    count = db.execute("SELECT count(*) FROM payments WHERE status = 'succeeded'").fetchone()[0]
    assert count == 10
    assert db.execute("SELECT count(*) FROM payments").fetchone()[0] == 10
    assert all(r["outcome"] == "SUCCEEDED" for r in replies)


def test_without_redis_two_workers_racing_on_orders_never_charge_an_order_twice(
    start_worker, kafka, devserver, db
):
    """I3 on the database alone (Redis unreachable): two workers, every order commanded on all
    four partitions at once; the gateway approves at most one payment per order."""
    from payment_worker.devstack.broker import free_port

    no_redis = {
        "PAYMENT_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "PAYMENT_GATEWAY_LATENCY_MS": "0",
        "PAYMENT_LOG_LEVEL": "DEBUG",
    }
    workers = [start_worker(**no_redis), start_worker(**no_redis)]
    orders = [_order(devserver) for _ in range(60)]
    for cmd in orders:
        for partition in range(4):
            kafka.send({**cmd, "commandId": str(uuid.uuid4())}, partition=partition, flush=False)
    kafka.flush()
    kafka.replies(expect=240, timeout_s=120)
    approved: dict[str, set[str]] = {}
    payments = dict(db.execute("SELECT id::text, order_id::text FROM payments").fetchall())
    for worker in workers:
        for line in worker.logs().splitlines():
            if '"gateway_charge"' in line and '"success": true' in line:
                payment_id = line.split('"payment_id": "')[1].split('"')[0]
                approved.setdefault(payments.get(payment_id, payment_id), set()).add(payment_id)
    assert len(approved) == 60
    assert all(len(ids) == 1 for ids in approved.values()), "an order was charged twice"
    assert (
        db.execute("SELECT count(*) FROM payments WHERE status = 'succeeded'").fetchone()[0] == 60
    )
