"""Answers of the Ordering and Inventory services that cannot be read, through the real worker:
a rejection, never a charge (contract section 5, "fail closed")."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from payment_worker.testing import command_record

pytestmark = pytest.mark.e2e


def test_an_order_total_that_cannot_be_read_is_never_paid(start_worker, kafka, devserver, db):
    """Ordering answers a pending 250,00 order (a decimal comma) and another with its total as
    a money object: a 0.01 command for each is answered ORDER_INVALID `Order validation
    failed: unreadable order`, nothing is charged and no event is written."""
    start_worker()
    sent = []
    for total in (b'"250,00"', b'{"amount": "250.00", "currency": "USD"}'):
        customer = str(uuid.uuid4())
        command = command_record(customerId=customer, amount=Decimal("0.01"))
        body = (
            (
                f'{{"id": "{command["orderId"]}", "customerId": "{customer}", "status": "Pending", '
                f'"currency": "USD", "totalAmount": '
            ).encode()
            + total
            + b"}"
        )
        devserver.add_raw("orders", command["orderId"], body)
        kafka.send(command)
        sent.append(command)

    replies = kafka.replies_by_command(expect=len(sent))
    for command in sent:
        [reply] = replies[command["commandId"]]
        assert (reply.record["outcome"], reply.record["errorMessage"]) == (
            "ORDER_INVALID",
            "Order validation failed: unreadable order",
        )
    assert db.execute("SELECT count(*) FROM payments").fetchone() == (0,)
