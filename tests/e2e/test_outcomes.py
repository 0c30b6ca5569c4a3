"""Every outcome of contract section 4, through the real worker process."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from payment_worker.testing import command_record
from tests.conftest import DevServer

Setup = Callable[[DevServer], dict[str, Any]]


def _paid_order(dev: DevServer, amount: str = "25.00", **order: Any) -> dict[str, Any]:
    customer = str(uuid.uuid4())
    cmd = command_record(customerId=customer, amount=Decimal(amount))
    dev.add_order(cmd["orderId"], customer, amount, **order)
    return cmd


def _succeeded(dev: DevServer) -> dict[str, Any]:
    return _paid_order(dev)


def _declined(dev: DevServer) -> dict[str, Any]:
    return _paid_order(dev, "25.13")


def _invalid(dev: DevServer) -> dict[str, Any]:
    return command_record(amount=Decimal("0.00"))


def _not_found(dev: DevServer) -> dict[str, Any]:
    return command_record()


def _order_invalid(dev: DevServer) -> dict[str, Any]:
    return _paid_order(dev, status="Paid")


def _reservation_expired(dev: DevServer) -> dict[str, Any]:
    cmd = _paid_order(dev)
    cmd["reservationId"] = str(uuid.uuid4())
    dev.add_reservation(cmd["reservationId"], cmd["customerId"], expires_at="2020-01-01T00:00:00Z")
    return cmd


def _other_customer(dev: DevServer) -> dict[str, Any]:
    cmd = _paid_order(dev)
    dev.add_order(cmd["orderId"], str(uuid.uuid4()), "25.00")
    return cmd


CASES = [
    ("SUCCEEDED", 200, None, _succeeded),
    ("DECLINED", 422, "Payment failed: Your card was declined", _declined),
    ("INVALID_REQUEST", 400, "Amount must be greater than zero", _invalid),
    ("ORDER_NOT_FOUND", 404, "Order not found", _not_found),
    (
        "ORDER_INVALID",
        400,
        "Order validation failed: Order is in 'paid' state, expected 'pending'",
        _order_invalid,
    ),
    (
        "RESERVATION_INVALID",
        400,
        "Reservation validation failed: Reservation has expired",
        _reservation_expired,
    ),
    ("UNAUTHORIZED", 401, "Unauthorized: ", _other_customer),
]


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("outcome", "status", "message", "setup"), CASES, ids=[c[0] for c in CASES]
)
def test_each_outcome_gets_its_reply_status_and_message(
    start_worker, kafka, devserver, db, outcome, status, message, setup
):
    """A command leading to OUTCOME is answered with its httpStatus and errorMessage prefix."""
    start_worker()
    cmd = setup(devserver)
    kafka.send(cmd)
    [reply] = kafka.replies(expect=1)
    assert reply.record["outcome"] == outcome
    assert reply.record["httpStatus"] == status
    assert reply.record["success"] is (outcome == "SUCCEEDED")
    if message is None:
        assert reply.record["errorMessage"] is None
    else:
        assert reply.record["errorMessage"].startswith(message)
    rows = db.execute(
        "SELECT status FROM payments WHERE order_id::text = %s", (cmd["orderId"],)
    ).fetchall()
    expected_rows = {"SUCCEEDED": [("succeeded",)], "DECLINED": [("failed",)]}.get(outcome, [])
    assert rows == expected_rows


@pytest.mark.e2e
def test_replies_carry_routing_and_cloudevents_headers(start_worker, kafka, devserver, topics):
    """reply-to, reply-partition, correlation-id, traceparent and Spring headers are honoured."""
    start_worker()
    cmd = _succeeded(devserver)
    spring_corr = uuid.uuid4().bytes
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    kafka.send(
        cmd,
        headers=[
            ("correlation-id", b"corr-123"),
            ("reply-to", topics.replies.encode()),
            ("reply-partition", b"1"),
            ("traceparent", trace.encode()),
            ("kafka_correlationId", spring_corr),
        ],
    )
    [reply] = kafka.replies(expect=1)
    assert reply.partition == 1
    assert reply.record["correlationId"] == "corr-123"
    h = reply.headers
    assert h["ce_specversion"] == b"1.0"
    assert h["ce_type"] == b"ticketing.payment.reply.v1"
    assert h["ce_source"] == b"payment-worker"
    assert h["ce_subject"] == cmd["orderId"].encode()
    assert h["correlation-id"] == b"corr-123"
    assert h["causation-id"] == cmd["commandId"].encode()
    assert h["traceparent"] == trace.encode()
    assert h["kafka_correlationId"] == spring_corr
    assert reply.key == cmd["orderId"].encode()
    [event] = kafka.read(topics.succeeded, expect=1, decode="PaymentSucceeded")
    assert event.headers["ce_type"] == b"ticketing.payment.succeeded.v1"
    assert event.headers["ce_id"] == event.record["eventId"].encode()
    assert event.headers["traceparent"] == trace.encode()


@pytest.mark.e2e
def test_spring_reply_topic_and_partition_headers_route_the_reply(
    start_worker, kafka, devserver, topics
):
    """A ReplyingKafkaTemplate caller (kafka_replyTopic, 4-byte kafka_replyPartition) works."""
    start_worker()
    cmd = _succeeded(devserver)
    kafka.send(
        cmd,
        headers=[
            ("kafka_replyTopic", topics.replies.encode()),
            ("kafka_replyPartition", (1).to_bytes(4, "big")),
            ("kafka_correlationId", b"\x01\x02"),
        ],
    )
    [reply] = kafka.replies(expect=1)
    assert reply.partition == 1
    assert reply.headers["kafka_correlationId"] == b"\x01\x02"
    assert reply.headers["kafka_replyPartition"] == (1).to_bytes(4, "big")
