"""Every outcome of contract section 4, through the real worker process, on each gateway: the
simulator, and Stripe (localstripe) with a client that knows only the contract and pm_ ids."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg import sql

from payment_worker.devstack import localstripe as stripe_standin
from payment_worker.devstack.localstripe import DECLINED_AT_CHARGE, NEEDS_AUTHENTICATION, PAYS
from payment_worker.testing import KafkaHarness, command_record
from tests.conftest import DevServer, stripe_environment
from tests.e2e.conftest import own_worker


@dataclass
class Gateway:
    """A worker charging through one gateway, on topics and a schema of its own, shared by the
    module's outcome cases (each sends commands for orders of its own): a worker started for
    each case cost about 3 s a case."""

    name: str  # PAYMENT_GATEWAY
    kafka: KafkaHarness
    db: psycopg.Connection[Any]  # on the worker's schema
    stripe_url: str | None = None  # localstripe, for the Stripe gateway

    def method(self, number: str = PAYS) -> str:
        """The paymentMethod of a payment by test card `number`: a pm_ id made on localstripe
        for Stripe; the simulator's default for the simulator (it declines by amount)."""
        if self.stripe_url is None:
            return "credit_card"
        return stripe_standin.card(self.stripe_url, number)

    def intents_of_order(self, order_id: str) -> list[dict[str, Any]]:
        """The PaymentIntents localstripe holds for an order (by their metadata)."""
        assert self.stripe_url is not None
        return [
            intent
            for intent in stripe_standin.intents(self.stripe_url)
            if intent["metadata"].get("order_id") == order_id
        ]


@pytest.fixture(scope="module")
def gateways(
    broker: str, database_url: str, redis_url: str, devserver: DevServer
) -> Iterator[Callable[[str, str | None], Gateway]]:
    """The module's worker of one gateway at a time: started when a case first asks for its
    gateway, stopped when a case asks for the other one (the cases come gateway by gateway)
    or with the module. One at a time, because a worker holds 16 PostgreSQL connections from
    its start and the server, shared by the test processes, allows 100. (A module-scoped
    parametrized fixture would be set up again whenever pytest interleaves the cases of the
    two gateways, as it does.)"""
    current: list[tuple[Gateway, contextlib.ExitStack]] = []

    def stop() -> None:
        while current:
            current.pop()[1].close()  # its harness goes too, before the session's broker

    def worker_of(name: str, stripe_url: str | None) -> Gateway:
        if current and current[0][0].name == name:
            return current[0][0]
        stop()
        with contextlib.ExitStack() as running:
            extra = stripe_environment(stripe_url) if stripe_url is not None else {}
            worker = running.enter_context(
                own_worker(broker, database_url, redis_url, devserver, **extra)
            )
            db = running.enter_context(psycopg.connect(database_url, autocommit=True))
            db.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(worker.schema)))
            gateway = Gateway(name, KafkaHarness(broker, worker.topics), db, stripe_url)
            current.append((gateway, running.pop_all()))
        return gateway

    try:
        yield worker_of
    finally:
        stop()


@pytest.fixture
def gateway(
    request: pytest.FixtureRequest, gateways: Callable[[str, str | None], Gateway]
) -> Gateway:
    """The module's worker charging through the gateway the case names."""
    name: str = request.param
    stripe_url = request.getfixturevalue("localstripe") if name == "stripe" else None
    return gateways(name, stripe_url)


Setup = Callable[[DevServer, Gateway], dict[str, Any]]


def _order(
    dev: DevServer, amount: str = "25.00", method: str = "credit_card", **order: Any
) -> dict[str, Any]:
    """A command for a new pending order of its customer, with that order on the dev server."""
    customer = str(uuid.uuid4())
    cmd = command_record(customerId=customer, amount=Decimal(amount), paymentMethod=method)
    dev.add_order(cmd["orderId"], customer, amount, **order)
    return cmd


def _paid_order(
    dev: DevServer, gw: Gateway, amount: str = "25.00", card: str = PAYS, **order: Any
) -> dict[str, Any]:
    return _order(dev, amount, gw.method(card), **order)


def _succeeded(dev: DevServer, gw: Gateway) -> dict[str, Any]:
    return _paid_order(dev, gw)


def _declined(dev: DevServer, gw: Gateway) -> dict[str, Any]:
    if gw.name == "simulated":
        return _paid_order(dev, gw, "25.13")
    return _paid_order(dev, gw, card=DECLINED_AT_CHARGE)


def _needs_authentication(dev: DevServer, gw: Gateway) -> dict[str, Any]:
    return _paid_order(dev, gw, card=NEEDS_AUTHENTICATION)


def _invalid(dev: DevServer, gw: Gateway) -> dict[str, Any]:
    return command_record(amount=Decimal("0.00"), paymentMethod=gw.method())


def _not_a_payment_method(dev: DevServer, gw: Gateway) -> dict[str, Any]:
    return _order(dev, method="credit_card")  # ProcessPayment's default, not a pm_ id


def _not_found(dev: DevServer, gw: Gateway) -> dict[str, Any]:
    return command_record(paymentMethod=gw.method())


def _order_invalid(dev: DevServer, gw: Gateway) -> dict[str, Any]:
    return _paid_order(dev, gw, status="Paid")


def _reservation_expired(dev: DevServer, gw: Gateway) -> dict[str, Any]:
    cmd = _paid_order(dev, gw)
    cmd["reservationId"] = str(uuid.uuid4())
    dev.add_reservation(cmd["reservationId"], cmd["customerId"], expires_at="2020-01-01T00:00:00Z")
    return cmd


def _other_customer(dev: DevServer, gw: Gateway) -> dict[str, Any]:
    cmd = _paid_order(dev, gw)
    dev.add_order(cmd["orderId"], str(uuid.uuid4()), "25.00")
    return cmd


@dataclass(frozen=True)
class Case:
    outcome: str
    status: int
    message: str | None  # what errorMessage starts with (None: it is null)
    setup: Setup
    error_code: str | None = None  # the reply's payment.errorCode, for a decline
    intent: str | None = None  # Stripe: the status of the order's one PaymentIntent
    name: str = ""  # what tells apart two cases of one outcome


def _cases(gateway: str) -> list[Case]:
    """What each outcome's case expects on `gateway`."""
    stripe = gateway == "stripe"
    declined = (
        "Payment failed: Your card was declined."  # Stripe's message
        if stripe
        else "Payment failed: Your card was declined"
    )
    cases = [
        Case("SUCCEEDED", 200, None, _succeeded, intent="succeeded"),
        Case(
            "DECLINED",
            422,
            declined,
            _declined,
            error_code="CARD_DECLINED",
            intent="requires_payment_method",
        ),
        Case("INVALID_REQUEST", 400, "Amount must be greater than zero", _invalid),
        Case("ORDER_NOT_FOUND", 404, "Order not found", _not_found),
        Case(
            "ORDER_INVALID",
            400,
            "Order validation failed: Order is in 'paid' state, expected 'pending'",
            _order_invalid,
        ),
        Case(
            "RESERVATION_INVALID",
            400,
            "Reservation validation failed: Reservation has expired",
            _reservation_expired,
        ),
        Case("UNAUTHORIZED", 401, "Unauthorized: ", _other_customer),
    ]
    if stripe:
        # An amount JPY cannot express (25.50 JPY) has no case here: the generic validation
        # refuses it on every gateway ("Amount has more decimals than JPY allows (0)").
        cases += [
            Case(
                "DECLINED",
                422,
                "Payment failed: The card requires authentication",
                _needs_authentication,
                error_code="AUTHENTICATION_REQUIRED",
                intent="canceled",
                name="authentication",
            ),
            Case(
                "INVALID_REQUEST",
                400,
                "PaymentMethod must be a Stripe payment method id",
                _not_a_payment_method,
                name="not-a-payment-method",
            ),
        ]
    return cases


CASES = [
    pytest.param(gw, case, id="-".join(filter(None, (gw, case.outcome, case.name))))
    for gw in ("simulated", "stripe")
    for case in _cases(gw)
]


@pytest.mark.e2e
def test_replies_carry_routing_and_cloudevents_headers(start_worker, kafka, devserver, topics):
    """reply-to, reply-partition, correlation-id, traceparent and Spring headers are honoured."""
    start_worker()
    cmd = _order(devserver)
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
    cmd = _order(devserver)
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


# Last in the module: no other test's worker runs beside the cases' (see gateways).
@pytest.mark.e2e
@pytest.mark.parametrize(("gateway", "case"), CASES, indirect=["gateway"])
def test_each_outcome_gets_its_reply_status_and_message(
    gateway: Gateway, devserver: DevServer, case: Case
) -> None:
    """A command leading to OUTCOME gets one reply with its httpStatus and errorMessage prefix,
    and a payment row only when charged, on the simulator and on Stripe alike. A decline
    carries the gateway's code. On Stripe, a paid command's transactionId is its one
    PaymentIntent's id, isSimulated is false, a card asking for 3-D Secure leaves its
    PaymentIntent cancelled, and a command refused before the charge makes no PaymentIntent."""
    cmd = case.setup(devserver, gateway)
    gateway.kafka.send(cmd)
    [reply] = gateway.kafka.replies(expect=1, command_id=cmd["commandId"])
    record = reply.record
    assert record is not None
    assert record["outcome"] == case.outcome
    assert record["httpStatus"] == case.status
    assert record["success"] is (case.outcome == "SUCCEEDED")
    if case.message is None:
        assert record["errorMessage"] is None
    else:
        assert record["errorMessage"].startswith(case.message), record["errorMessage"]
    rows = gateway.db.execute(
        "SELECT status FROM payments WHERE order_id::text = %s", (cmd["orderId"],)
    ).fetchall()
    expected_rows = {"SUCCEEDED": [("succeeded",)], "DECLINED": [("failed",)]}.get(case.outcome, [])
    assert rows == expected_rows
    payment = record["payment"]
    if expected_rows:
        assert payment["isSimulated"] is (gateway.name == "simulated")
        assert payment["errorCode"] == case.error_code
    if gateway.name != "stripe":
        if case.outcome == "SUCCEEDED":
            assert payment["transactionId"].startswith("txn_")
        return
    intents = gateway.intents_of_order(cmd["orderId"])
    if case.intent is None:
        assert intents == []
        return
    [intent] = intents
    assert intent["metadata"]["payment_id"] == payment["id"]
    assert intent["status"] == case.intent
    if case.outcome == "SUCCEEDED":
        assert payment["transactionId"] == intent["id"] and intent["id"].startswith("pi_")
