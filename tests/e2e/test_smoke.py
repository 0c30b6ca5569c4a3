"""A first payment through the real worker process."""

from __future__ import annotations

import uuid
from decimal import Decimal

from payment_worker.testing import command_record


def test_a_valid_command_is_charged_recorded_announced_and_answered(
    start_worker, kafka, devserver, db, topics
):
    """One valid command: SUCCEEDED reply, a succeeded row, one payment-succeeded event."""
    worker = start_worker()
    customer = str(uuid.uuid4())
    cmd = command_record(customerId=customer, amount=Decimal("25.00"))
    devserver.add_order(cmd["orderId"], customer, "25.00")
    kafka.send(cmd)
    replies = kafka.replies(expect=1)
    assert len(replies) == 1, worker.logs()[-2000:]
    reply = replies[0].record
    assert reply["outcome"] == "SUCCEEDED" and reply["httpStatus"] == 200
    assert reply["payment"]["status"] == "succeeded"
    rows = db.execute("SELECT status, amount FROM payments WHERE order_id = %s",
                      (cmd["orderId"],)).fetchall()
    assert rows == [("succeeded", Decimal("25.00"))]
    events = kafka.read(topics.succeeded, expect=1, decode="PaymentSucceeded")
    assert [e.record["orderId"] for e in events] == [cmd["orderId"]]
    assert worker.stop() == 0
