"""The pipeline (service/pipeline.py) against in-memory fakes of its ports: every outcome of
contract section 4 and the idempotency rules I1, I2, I4 and I5 of section 5."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import structlog.testing

from payment_worker.adapters.avro_codec import AvroCodec, DecodeError, SchemaSet
from payment_worker.adapters.redis_lock import NoLock
from payment_worker.domain.gateway_rules import simulated_answer, unknown_result
from payment_worker.domain.model import (
    GatewayResult,
    Outcome,
    Payment,
    PaymentStatus,
    ValidCommand,
)
from payment_worker.domain.routing import ReplyRoute, RouteRules
from payment_worker.domain.stripe_inputs import stripe_refusal
from payment_worker.service.messages import MessageFactory, Topics
from payment_worker.service.pipeline import (
    DependencyUnavailable,
    Handled,
    InconsistentLedger,
    Pipeline,
    PipelineConfig,
)
from payment_worker.service.ports import (
    Begun,
    InboundRecord,
    LedgerEntry,
    OrderInfo,
    OrderLocked,
    OutboxMessage,
    ReservationInfo,
    Snapshot,
    StoredMessage,
)
from payment_worker.testing import command_record

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
TOPICS = Topics()
ROUTES = RouteRules(
    default_topic=TOPICS.replies,
    own_topics=frozenset({TOPICS.commands, TOPICS.succeeded, TOPICS.failed, TOPICS.dlq}),
)


# -- fakes of the ports ------------------------------------------------------------------------


class UniqueViolation(AssertionError):
    """What PostgreSQL's partial unique indexes would raise (rule I3): a pipeline bug."""


class FakeLedger:
    """LedgerPort in memory, with PostgresStore's semantics and the schema's constraints:
    one ledger row per command id, one pending and one succeeded payment per order, one event
    per payment; each method is all-or-nothing like its transaction."""

    def __init__(self) -> None:
        self.entries: dict[uuid.UUID, LedgerEntry] = {}
        self.payments: dict[uuid.UUID, Payment] = {}
        self.outbox: list[StoredMessage] = []
        self._ids = itertools.count(1)
        self.before_record: Any = None  # an async callable run once, before a ledger insert

    # queries

    def _for_order(self, order_id: uuid.UUID, status: PaymentStatus) -> Payment | None:
        found = [p for p in self.payments.values() if p.order_id == order_id and p.status is status]
        assert len(found) <= 1
        return found[0] if found else None

    async def snapshot(self, command_id: uuid.UUID, order_id: uuid.UUID) -> Snapshot:
        return Snapshot(
            self.entries.get(command_id),
            self._for_order(order_id, PaymentStatus.SUCCEEDED),
            self._for_order(order_id, PaymentStatus.PENDING),
        )

    async def payment(self, payment_id: uuid.UUID) -> Payment | None:
        return self.payments.get(payment_id)

    # writes

    def _check_payment(self, payment: Payment) -> None:
        if payment.status in (PaymentStatus.PENDING, PaymentStatus.SUCCEEDED):
            other = self._for_order(payment.order_id, payment.status)
            if other is not None and other.id != payment.id:
                raise UniqueViolation(f"second {payment.status} payment for {payment.order_id}")

    def _insert_outbox(self, messages: list[OutboxMessage]) -> list[StoredMessage]:
        events = {m.payment_id for m in self.messages("event")}
        for message in messages:
            if message.kind == "event" and message.payment_id in events:
                raise UniqueViolation(f"second event for payment {message.payment_id}")
        stored = [StoredMessage(next(self._ids), m) for m in messages]
        self.outbox.extend(stored)
        return stored

    async def begin_payment(
        self, payment: Payment, ledger_fields: dict[str, Any], route: dict[str, Any]
    ) -> Begun:
        """Insert when nothing is found; the facts either way (begin_facts, one at a time)."""
        assert payment.command_id is not None and payment.status is PaymentStatus.PENDING
        found = await self.snapshot(payment.command_id, payment.order_id)
        inserted = found == Snapshot(None, None, None)
        if inserted:
            self._check_payment(payment)
            self.payments[payment.id] = payment
            self.entries[payment.command_id] = LedgerEntry(
                **ledger_fields,
                final=False,
                outcome=None,
                error_message=None,
                payment_id=payment.id,
                reply_route=route,
            )
        return Begun(await self.snapshot(payment.command_id, payment.order_id), inserted)

    async def finish_payment(
        self,
        payment: Payment,
        outcome: Outcome,
        error_message: str | None,
        messages: list[OutboxMessage],
    ) -> list[StoredMessage] | None:
        current = self.payments.get(payment.id)
        if current is None or current.status is not PaymentStatus.PENDING:
            return None
        assert payment.status is not PaymentStatus.PENDING
        self._check_payment(payment)
        stored = self._insert_outbox(messages)
        self.payments[payment.id] = payment
        entry = self.entries.get(payment.command_id)  # type: ignore[arg-type]
        if entry is not None and not entry.final:
            self.entries[entry.command_id] = replace(
                entry,
                final=True,
                outcome=outcome,
                error_message=error_message,
                payment_id=payment.id,
            )
        return stored

    async def record(
        self, messages: list[OutboxMessage], ledger: dict[str, Any] | None = None
    ) -> list[StoredMessage] | None:
        if ledger is not None and self.before_record is not None:
            hook, self.before_record = self.before_record, None
            await hook()
        if ledger is not None:
            if ledger["command_id"] in self.entries:
                return None
            entry = LedgerEntry(
                command_id=ledger["command_id"],
                order_id=ledger["order_id"],
                customer_id=ledger["customer_id"],
                amount=ledger["amount"],
                currency=ledger["currency"],
                final=True,
                outcome=Outcome(ledger["outcome"]),
                error_message=ledger["error_message"],
                payment_id=ledger["payment_id"],
                reply_route=ledger["reply_route"],
            )
        stored = self._insert_outbox(messages)
        if ledger is not None:
            self.entries[entry.command_id] = entry
        return stored

    # for assertions

    def messages(self, kind: str) -> list[OutboxMessage]:
        return [s.message for s in self.outbox if s.message.kind == kind]

    def order_payments(self, order_id: str) -> list[Payment]:
        return [p for p in self.payments.values() if str(p.order_id) == order_id]


class FakeOrdering:
    """OrderingPort: orders by id, None for unknown ones, or an exception to raise."""

    def __init__(self) -> None:
        self.orders: dict[str, OrderInfo | Exception] = {}
        self.calls = 0
        self.before_answer: Any = None  # an async callable run once, mid-request

    async def get_order(self, order_id: uuid.UUID) -> OrderInfo | None:
        self.calls += 1
        if self.before_answer is not None:
            hook, self.before_answer = self.before_answer, None
            await hook()
        found = self.orders.get(str(order_id))
        if isinstance(found, Exception):
            raise found
        return found


class FakeInventory:
    """InventoryPort: reservations by id, None for unknown ones, or an exception to raise."""

    def __init__(self) -> None:
        self.reservations: dict[str, ReservationInfo | Exception] = {}
        self.calls = 0

    async def get_reservation(self, reservation_id: uuid.UUID) -> ReservationInfo | None:
        self.calls += 1
        found = self.reservations.get(str(reservation_id))
        if isinstance(found, Exception):
            raise found
        return found


class FakeGateway:
    """GatewayPort on the simulator's rules; counts charges. `fail_next` charges answer as if
    the failure rate were 1.0; `crash_next` charges raise (a worker dying mid-charge)."""

    def __init__(self) -> None:
        self.charged: list[uuid.UUID] = []
        self.fail_next = 0
        self.crash_next = 0
        self.unknown_next = 0  # charges whose answer is lost (the charge itself is made)
        self.before_answer: Any = None  # an async callable run once, mid-charge
        self.refuses: Any = None  # a GatewayPort.refusal in place of the simulator's (none)

    @property
    def calls(self) -> int:
        return len(self.charged)

    def refusal(self, valid: ValidCommand) -> str | None:
        return None if self.refuses is None else self.refuses(valid)  # type: ignore[no-any-return]

    async def charge(self, payment: Payment) -> GatewayResult:
        if self.crash_next:
            self.crash_next -= 1
            raise ConnectionResetError("worker lost mid-charge")
        self.charged.append(payment.id)
        if self.before_answer is not None:
            hook, self.before_answer = self.before_answer, None
            await hook()
        if self.unknown_next:
            self.unknown_next -= 1
            return unknown_result("no answer in time")
        rate = 1.0 if self.fail_next else 0.0
        self.fail_next = max(0, self.fail_next - 1)
        return simulated_answer(payment.id, payment.amount, rate)


class FakeTopics:
    """TopicDirectoryPort: the topics the broker has, by partition count; counts lookups."""

    def __init__(self, topics: dict[str, int] | None = None) -> None:
        self.topics = dict(topics or {})
        self.lookups = 0

    async def partitions(self, topic: str, read_at: float | None = None) -> int | None:
        self.lookups += 1
        return self.topics.get(topic)


# -- the world a test runs in ------------------------------------------------------------------


class World:
    """A pipeline on fakes, with helpers to send commands and read what it wrote."""

    def __init__(self) -> None:
        self.codec = AvroCodec(_SCHEMAS)
        self.ledger = FakeLedger()
        self.ordering = FakeOrdering()
        self.inventory = FakeInventory()
        self.gateway = FakeGateway()
        self.topics = FakeTopics({TOPICS.replies: 2, "shim-replies": 4})
        self.offsets = itertools.count()
        self.pipeline = Pipeline(
            decoder=self.codec,
            decode_error=DecodeError,
            messages=MessageFactory(self.codec, TOPICS),
            ledger=self.ledger,
            ordering=self.ordering,
            inventory=self.inventory,
            gateway=self.gateway,
            locks=NoLock(),
            topics=self.topics,
            config=PipelineConfig(routes=ROUTES, busy_retry_budget_s=0.2),
            clock=lambda: NOW,
        )

    def order(self, command: dict[str, Any], **overrides: Any) -> dict[str, Any]:
        """Make Ordering know the command's order as a matching pending order."""
        fields: dict[str, Any] = {
            "customer_id": command["customerId"],
            "status": "Pending",
            "amount": command["amount"],
            "currency": command["currency"],
        }
        fields.update(overrides)
        self.ordering.orders[command["orderId"]] = OrderInfo(**fields)
        return command

    def payable(self, **overrides: Any) -> dict[str, Any]:
        """A new command whose order Ordering knows, pending, for the same amount."""
        return self.order(command_record(**overrides))

    def inbound(
        self,
        command: dict[str, Any] | None = None,
        *,
        value: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> InboundRecord:
        if value is None:
            assert command is not None
            value = self.codec.encode("ProcessPayment", command)
        key = str(command["orderId"]).encode() if command else None
        return InboundRecord("process-payment", 0, next(self.offsets), key, value, headers or [])

    async def send(self, command: dict[str, Any], **kwargs: Any) -> Handled:
        return await self.pipeline.handle(self.inbound(command, **kwargs))

    def replies(self) -> list[dict[str, Any]]:
        return [self.codec.decode("PaymentReply", m.value) for m in self.ledger.messages("reply")]

    def last_reply(self) -> dict[str, Any]:
        return self.replies()[-1]

    def events(self) -> list[OutboxMessage]:
        return self.ledger.messages("event")


_SCHEMAS = SchemaSet()


@pytest.fixture
def world() -> World:
    return World()


# -- SUCCEEDED and DECLINED --------------------------------------------------------------------


async def test_payable_command_replies_succeeded(world: World) -> None:
    """A valid command for a matching pending order is charged: SUCCEEDED, 200, no error."""
    command = world.payable()
    handled = await world.send(command)
    reply = world.last_reply()
    assert handled.outcome is Outcome.SUCCEEDED
    assert (
        reply["outcome"],
        reply["httpStatus"],
        reply["success"],
        reply["errorMessage"],
        reply["duplicate"],
    ) == ("SUCCEEDED", 200, True, None, False)
    assert reply["commandId"] == command["commandId"]


async def test_succeeded_reply_carries_the_succeeded_payment(world: World) -> None:
    """The SUCCEEDED reply's payment is the stored succeeded row, with its transaction id."""
    command = world.payable()
    await world.send(command)
    [payment] = world.ledger.order_payments(command["orderId"])
    reply_payment = world.last_reply()["payment"]
    assert payment.status is PaymentStatus.SUCCEEDED
    assert (reply_payment["id"], reply_payment["status"], reply_payment["transactionId"]) == (
        str(payment.id),
        "succeeded",
        payment.transaction_id,
    )
    assert reply_payment["amount"] == Decimal("10.50")
    assert reply_payment["isSimulated"] is True


async def test_succeeded_emits_one_payment_succeeded_event(world: World) -> None:
    """A charge that succeeds writes exactly one PaymentSucceeded to payment-succeeded."""
    command = world.payable()
    await world.send(command)
    [event] = world.events()
    record = world.codec.decode("PaymentSucceeded", event.value)
    assert event.topic == TOPICS.succeeded
    assert (record["orderId"], record["commandId"], record["amount"]) == (
        command["orderId"],
        command["commandId"],
        Decimal("10.50"),
    )


async def test_succeeded_charges_the_gateway_once(world: World) -> None:
    """One command, one gateway call, with the payment id as idempotency key."""
    command = world.payable()
    await world.send(command)
    [payment] = world.ledger.order_payments(command["orderId"])
    assert world.gateway.charged == [payment.id]


async def test_declined_charge_replies_422_with_the_gateway_message(world: World) -> None:
    """A card declined (.13) replies DECLINED, 422, `Payment failed: Your card was declined`."""
    await world.send(world.payable(amount=Decimal("20.13")))
    reply = world.last_reply()
    assert (reply["outcome"], reply["httpStatus"], reply["success"], reply["errorMessage"]) == (
        "DECLINED",
        422,
        False,
        "Payment failed: Your card was declined",
    )
    assert reply["payment"]["status"] == "failed"
    assert reply["payment"]["errorCode"] == "CARD_DECLINED"


async def test_declined_charge_stores_a_failed_payment_and_a_failed_event(world: World) -> None:
    """A decline leaves a failed payment row and one PaymentFailed on payment-failed."""
    command = world.payable(amount=Decimal("20.66"))
    await world.send(command)
    [payment] = world.ledger.order_payments(command["orderId"])
    [event] = world.events()
    record = world.codec.decode("PaymentFailed", event.value)
    assert payment.status is PaymentStatus.FAILED
    assert event.topic == TOPICS.failed
    assert (record["paymentId"], record["errorCode"], record["failureReason"]) == (
        str(payment.id),
        "INSUFFICIENT_FUNDS",
        "insufficient_funds",
    )


# -- rejections: no payment, no event ----------------------------------------------------------


async def test_invalid_command_replies_400_with_the_validation_message(world: World) -> None:
    """A malformed order id replies INVALID_REQUEST, 400, `Valid OrderId is required`."""
    await world.send(command_record(orderId="not-a-uuid"))
    reply = world.last_reply()
    assert (reply["outcome"], reply["httpStatus"], reply["errorMessage"], reply["orderId"]) == (
        "INVALID_REQUEST",
        400,
        "Valid OrderId is required",
        "not-a-uuid",
    )


async def test_invalid_command_does_no_work(world: World) -> None:
    """An invalid command asks no service, charges nothing and records no ledger entry."""
    await world.send(command_record(amount=Decimal("0.00")))
    assert (world.ordering.calls, world.gateway.calls) == (0, 0)
    assert (world.ledger.entries, world.ledger.payments, world.events()) == ({}, {}, [])


async def test_card_number_in_payment_method_is_rejected_before_any_work(world: World) -> None:
    """A payment method holding a card number is INVALID_REQUEST, and the reply omits it."""
    await world.send(world.payable(paymentMethod="4111 1111 1111 1111"))
    reply = world.last_reply()
    assert reply["outcome"] == "INVALID_REQUEST"
    assert "4111" not in (reply["errorMessage"] or "")
    assert world.ledger.payments == {}


async def test_a_command_the_gateway_cannot_take_is_invalid_before_any_work(
    world: World,
) -> None:
    """With the Stripe gateway's rule, a payment method that is not a PaymentMethod id is
    INVALID_REQUEST with the contract's message, and nothing is asked, charged or recorded
    but its answer; a pm_ id goes on to be charged."""
    world.gateway.refuses = lambda valid: stripe_refusal(
        valid.payment_method, valid.amount, valid.currency
    )
    await world.send(world.payable(paymentMethod="credit_card"))
    reply = world.last_reply()
    assert (reply["outcome"], reply["httpStatus"], reply["errorMessage"]) == (
        "INVALID_REQUEST",
        400,
        "PaymentMethod must be a Stripe payment method id",
    )
    assert (world.ordering.calls, world.gateway.calls, world.ledger.payments) == (0, 0, {})
    await world.send(world.payable(paymentMethod="pm_1PgQx2LkdIwHu7ixKqVz3bXp"))
    assert (world.last_reply()["outcome"], world.gateway.calls) == ("SUCCEEDED", 1)


async def test_a_command_answered_before_is_answered_the_same_under_the_stripe_rule(
    world: World,
) -> None:
    """I1 across a gateway switch: a command paid under the simulator (a method that is no
    pm_ id), delivered again once the Stripe rule applies, is answered with its recorded
    SUCCEEDED as a duplicate, not refused as invalid."""
    command = world.payable(paymentMethod="credit_card")
    await world.send(command)
    assert world.last_reply()["outcome"] == "SUCCEEDED"
    world.gateway.refuses = lambda valid: stripe_refusal(
        valid.payment_method, valid.amount, valid.currency
    )
    await world.send(command)
    again = world.last_reply()
    assert (again["outcome"], again["duplicate"], world.gateway.calls) == ("SUCCEEDED", True, 1)


async def test_unknown_order_replies_404(world: World) -> None:
    """An order Ordering does not know replies ORDER_NOT_FOUND, 404, `Order not found`."""
    await world.send(command_record())
    reply = world.last_reply()
    assert (reply["outcome"], reply["httpStatus"], reply["errorMessage"], reply["payment"]) == (
        "ORDER_NOT_FOUND",
        404,
        "Order not found",
        None,
    )


@pytest.mark.parametrize(
    ("order", "message"),
    [
        (
            {"status": "Paid"},
            "Order validation failed: Order is in 'paid' state, expected 'pending'",
        ),
        (
            {"status": "CANCELLED"},
            "Order validation failed: Order is in 'cancelled' state, expected 'pending'",
        ),
        ({"amount": Decimal("99.00")}, "Order validation failed: "),
        ({"currency": "EUR"}, "Order validation failed: "),
    ],
)
async def test_order_not_payable_replies_order_invalid(
    world: World, order: dict[str, Any], message: str
) -> None:
    """An order not pending, or for another amount or currency, replies ORDER_INVALID, 400."""
    command = world.order(command_record(), **order)
    await world.send(command)
    reply = world.last_reply()
    assert (reply["outcome"], reply["httpStatus"]) == ("ORDER_INVALID", 400)
    assert reply["errorMessage"].startswith(message)
    assert world.gateway.calls == 0


async def test_order_of_another_customer_replies_unauthorized(world: World) -> None:
    """An order belonging to another customer replies UNAUTHORIZED, 401, with no payment."""
    command = world.order(command_record(), customer_id=str(uuid.uuid4()))
    await world.send(command)
    reply = world.last_reply()
    assert (reply["outcome"], reply["httpStatus"], reply["payment"]) == ("UNAUTHORIZED", 401, None)
    assert reply["errorMessage"].startswith("Unauthorized: ")
    assert world.gateway.calls == 0


def _reservation(customer: str, **overrides: Any) -> ReservationInfo:
    fields: dict[str, Any] = {
        "customer_id": customer,
        "status": "Active",
        "expires_at": NOW + timedelta(minutes=10),
    }
    fields.update(overrides)
    return ReservationInfo(**fields)


@pytest.mark.parametrize(
    ("reservation", "message"),
    [
        (None, "Reservation not found"),
        (
            {"customer_id": str(uuid.uuid4())},
            "Reservation does not belong to the specified customer",
        ),
        ({"status": "Released"}, "Reservation is in 'released' state, expected 'active'"),
        ({"expires_at": NOW - timedelta(seconds=1)}, "Reservation has expired"),
    ],
)
async def test_bad_reservation_replies_reservation_invalid(
    world: World, reservation: dict[str, Any] | None, message: str
) -> None:
    """A reservation missing, of another customer, not active or expired replies
    RESERVATION_INVALID, 400, `Reservation validation failed: <why>`."""
    command = world.payable(reservationId=str(uuid.uuid4()))
    if reservation is not None:
        world.inventory.reservations[command["reservationId"]] = _reservation(
            command["customerId"], **reservation
        )
    await world.send(command)
    reply = world.last_reply()
    assert (reply["outcome"], reply["httpStatus"], reply["errorMessage"]) == (
        "RESERVATION_INVALID",
        400,
        f"Reservation validation failed: {message}",
    )
    assert world.gateway.calls == 0


async def test_active_reservation_of_the_customer_lets_the_payment_through(world: World) -> None:
    """With a valid active reservation of the same customer the command is charged."""
    command = world.payable(reservationId=str(uuid.uuid4()))
    world.inventory.reservations[command["reservationId"]] = _reservation(command["customerId"])
    handled = await world.send(command)
    assert handled.outcome is Outcome.SUCCEEDED
    assert world.last_reply()["payment"]["reservationId"] == command["reservationId"]


@pytest.mark.parametrize(
    "make",
    [
        lambda w: w.send(command_record()),  # ORDER_NOT_FOUND
        lambda w: w.send(w.order(command_record(), status="Paid")),  # ORDER_INVALID
        lambda w: w.send(w.order(command_record(), customer_id=str(uuid.uuid4()))),  # UNAUTHORIZED
    ],
)
async def test_rejections_leave_no_payment_and_no_event(world: World, make: Any) -> None:
    """ORDER_NOT_FOUND, ORDER_INVALID and UNAUTHORIZED write a reply but no payment or event."""
    await make(world)
    assert (world.ledger.payments, world.events(), world.gateway.calls) == ({}, [], 0)
    assert len(world.replies()) == 1


# -- reply routing -----------------------------------------------------------------------------


async def test_reply_follows_reply_to_and_correlation_id(world: World) -> None:
    """The reply goes to the `reply-to` topic and partition with the `correlation-id` header."""
    await world.send(
        world.payable(),
        headers=[
            ("reply-to", b"shim-replies"),
            ("reply-partition", b"2"),
            ("correlation-id", b"corr-1"),
        ],
    )
    [message] = world.ledger.messages("reply")
    assert (message.topic, message.partition) == ("shim-replies", 2)
    assert world.codec.decode("PaymentReply", message.value)["correlationId"] == "corr-1"


async def test_traceparent_is_carried_onto_event_and_reply(world: World) -> None:
    """The command's traceparent header is on both the event and the reply it causes."""
    trace = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    await world.send(world.payable(), headers=[("traceparent", trace)])
    carried = [
        dict(m.headers).get("traceparent")
        for m in world.ledger.messages("event") + world.ledger.messages("reply")
    ]
    assert carried == [trace, trace]


# string as received, while the event uses the parsed UUID; an upper-case order id therefore
# gives a reply key that is not canonical and differs from the event's key for the same order.
async def test_reply_key_is_the_canonical_order_id(world: World) -> None:
    """An order id sent in upper case is answered under the canonical lower-case key."""
    command = world.payable()  # Ordering knows the order under its canonical id
    command["orderId"] = command["orderId"].upper()
    await world.send(command)
    assert world.last_reply()["outcome"] == "SUCCEEDED"
    [reply] = world.ledger.messages("reply")
    [event] = world.events()
    assert reply.key == event.key == command["orderId"].lower().encode()


# -- I1: command dedupe ------------------------------------------------------------------------


@pytest.mark.parametrize("amount", [Decimal("10.50"), Decimal("10.13")])
async def test_same_command_again_gets_the_same_outcome_as_duplicate(
    world: World, amount: Decimal
) -> None:
    """A redelivered command is answered with the recorded outcome and payment, duplicate true."""
    command = world.payable(amount=amount)
    await world.send(command)
    await world.send(command)
    first, again = world.replies()
    assert again["duplicate"] is True
    assert (again["outcome"], again["httpStatus"], again["errorMessage"]) == (
        first["outcome"],
        first["httpStatus"],
        first["errorMessage"],
    )
    assert again["payment"]["id"] == first["payment"]["id"]


async def test_same_command_again_charges_nothing_and_emits_nothing(world: World) -> None:
    """A redelivered command makes no gateway call and no new event."""
    command = world.payable()
    await world.send(command)
    await world.send(command)
    assert world.gateway.calls == 1
    assert len(world.events()) == 1


async def test_recorded_rejection_is_answered_again_even_if_the_order_now_exists(
    world: World,
) -> None:
    """A command that ended ORDER_NOT_FOUND gets that answer again, even if the order now exists
    and is payable: nothing is charged and no payment is started."""
    command = command_record()
    await world.send(command)
    world.order(command)
    await world.send(command)
    again = world.last_reply()
    assert (again["outcome"], again["duplicate"]) == ("ORDER_NOT_FOUND", True)
    assert world.gateway.calls == 0
    assert world.ledger.order_payments(command["orderId"]) == []


async def test_delivery_that_loses_the_race_answers_the_recorded_outcome(world: World) -> None:
    """Two deliveries of one command in flight together: the one that records second answers
    the first one's outcome as a duplicate, and each delivery gets exactly one reply."""
    command = world.order(command_record(), status="Paid")

    async def other_delivery_finishes_first() -> None:
        await world.send(command)

    world.ordering.before_answer = other_delivery_finishes_first
    handled = await world.send(command)
    first, second = world.replies()
    assert (handled.outcome, handled.duplicate) == (Outcome.ORDER_INVALID, True)
    assert (first["duplicate"], second["duplicate"]) == (False, True)
    assert second["errorMessage"] == first["errorMessage"]


async def test_same_command_id_with_another_amount_is_a_conflict(world: World) -> None:
    """Reusing a command id for a different amount replies CONFLICT, 409, and charges nothing."""
    command = world.payable()
    await world.send(command)
    await world.send(world.order({**command, "amount": Decimal("11.00")}))
    reply = world.last_reply()
    assert (reply["outcome"], reply["httpStatus"], reply["payment"]) == ("CONFLICT", 409, None)
    assert reply["errorMessage"].startswith("Conflict: ")
    assert world.gateway.calls == 1


async def test_same_command_id_from_another_customer_is_a_conflict(world: World) -> None:
    """Reusing a command id with another customer is a CONFLICT that does not leak the payment."""
    command = world.payable()
    await world.send(command)
    await world.send({**command, "customerId": str(uuid.uuid4())})
    reply = world.last_reply()
    assert (reply["outcome"], reply["payment"]) == ("CONFLICT", None)


async def test_command_id_in_progress_reused_for_another_order_is_a_conflict(
    world: World,
) -> None:
    """A command id whose payment is still pending (a crash mid-charge), sent again for another
    payable order, is a CONFLICT: that order gets no payment and nothing is charged."""
    first = world.payable()
    await _crash_mid_charge(world, first)
    other = world.order({**first, "orderId": str(uuid.uuid4())})
    await world.send(other)
    reply = world.last_reply()
    assert (reply["outcome"], reply["httpStatus"], reply["payment"]) == ("CONFLICT", 409, None)
    assert "already used" in reply["errorMessage"]
    assert world.ledger.order_payments(other["orderId"]) == []
    assert world.gateway.calls == 0


async def test_command_id_in_progress_reused_for_a_paid_order_is_a_conflict(
    world: World,
) -> None:
    """The same, for an order another command already paid with the same customer and amount:
    a CONFLICT, not that payment handed out as a duplicate of a command it does not answer."""
    paid = world.payable()
    await world.send(paid)
    first = world.payable(customerId=paid["customerId"], amount=paid["amount"])
    await _crash_mid_charge(world, first)
    await world.send(world.order({**first, "orderId": paid["orderId"]}))
    reply = world.last_reply()
    assert (reply["outcome"], reply["payment"]) == ("CONFLICT", None)
    assert world.gateway.calls == 1


async def test_ledger_in_progress_without_a_pending_payment_is_an_error(world: World) -> None:
    """An in-progress ledger entry whose payment is no longer pending (the database edited by
    hand) is not charged again: it is raised, for the worker to answer ERROR and dead-letter."""
    command = world.payable()
    pending = await _crash_mid_charge(world, command)
    world.ledger.payments[pending.id] = replace(pending, status=PaymentStatus.FAILED)
    with pytest.raises(InconsistentLedger):
        await world.send(command)
    assert world.gateway.calls == 0


# -- I2: the order key -------------------------------------------------------------------------


async def test_paid_order_same_customer_answers_the_existing_payment(world: World) -> None:
    """A new command for an order already paid by the same customer, amount and currency
    answers SUCCEEDED with that payment, duplicate true."""
    first = world.payable()
    await world.send(first)
    paid = world.last_reply()["payment"]
    await world.send({**first, "commandId": str(uuid.uuid4())})
    reply = world.last_reply()
    assert (reply["outcome"], reply["duplicate"], reply["payment"]["id"]) == (
        "SUCCEEDED",
        True,
        paid["id"],
    )


async def test_paid_order_is_not_charged_again(world: World) -> None:
    """A second command for a paid order charges nothing and emits no event."""
    first = world.payable()
    await world.send(first)
    await world.send({**first, "commandId": str(uuid.uuid4())})
    assert world.gateway.calls == 1
    assert len(world.events()) == 1
    assert len(world.ledger.order_payments(first["orderId"])) == 1


async def test_paid_order_other_customer_is_unauthorized_without_the_payment(world: World) -> None:
    """Another customer asking to pay a paid order gets UNAUTHORIZED and no payment data."""
    first = world.payable()
    await world.send(first)
    await world.send({**first, "commandId": str(uuid.uuid4()), "customerId": str(uuid.uuid4())})
    reply = world.last_reply()
    assert (reply["outcome"], reply["httpStatus"], reply["payment"]) == ("UNAUTHORIZED", 401, None)


async def test_paid_order_other_amount_is_a_conflict(world: World) -> None:
    """A command for a paid order with another amount replies CONFLICT."""
    first = world.payable()
    await world.send(first)
    await world.send({**first, "commandId": str(uuid.uuid4()), "amount": Decimal("12.00")})
    reply = world.last_reply()
    assert (reply["outcome"], reply["httpStatus"], reply["payment"]) == ("CONFLICT", 409, None)


# -- I4: retry after decline -------------------------------------------------------------------


async def test_declined_order_can_be_paid_by_a_new_command(world: World) -> None:
    """After a decline, a new command for the same order is charged and succeeds."""
    first = world.payable()
    world.gateway.fail_next = 1
    await world.send(first)
    assert world.last_reply()["outcome"] == "DECLINED"
    await world.send({**first, "commandId": str(uuid.uuid4())})
    assert world.last_reply()["outcome"] == "SUCCEEDED"
    statuses = sorted(p.status for p in world.ledger.order_payments(first["orderId"]))
    assert statuses == [PaymentStatus.FAILED, PaymentStatus.SUCCEEDED]


# -- the order lock ----------------------------------------------------------------------------


class RecordingLock:
    """OrderLockPort that remembers who holds what, and how many replies were recorded when each
    lock was released. Acquiring takes a few turns of the loop, as a Redis round trip does."""

    def __init__(self, ledger: FakeLedger) -> None:
        self.ledger = ledger
        self.held: dict[uuid.UUID, str] = {}
        self.replies_at_release: list[int] = []

    async def acquire(self, order_id: uuid.UUID) -> str | None:
        for _ in range(5):
            await asyncio.sleep(0)
        assert order_id not in self.held, "two holders of one order's lock"
        token = uuid.uuid4().hex
        self.held[order_id] = token
        return token

    async def release(self, order_id: uuid.UUID, token: str | None) -> None:
        assert self.held.pop(order_id) == token
        self.replies_at_release.append(len(self.ledger.messages("reply")))


async def test_the_order_lock_is_held_through_the_charge_and_released_after_the_answer(
    world: World,
) -> None:
    """Whatever a command comes to (charged, duplicate, rejected, a lookup that breaks), its
    order lock is released exactly once, after its reply is recorded; the gateway is only
    called while the order's lock is held."""
    lock = RecordingLock(world.ledger)
    world.pipeline.payer.locks = lock
    charge = world.gateway.charge

    async def charge_under_lock(payment: Payment) -> GatewayResult:
        assert payment.order_id in lock.held, "charged without the order lock"
        return await charge(payment)

    world.gateway.charge = charge_under_lock  # type: ignore[method-assign]
    paid = world.payable()
    rejected = world.order(command_record(), status="Paid")
    broken = command_record()
    world.ordering.orders[broken["orderId"]] = RuntimeError("bug in a lookup")

    for number, command in enumerate([paid, paid, rejected], start=1):
        await world.send(command)
        await asyncio.gather(*world.pipeline.payer._releases)
        assert lock.held == {}
        assert lock.replies_at_release[-1] == number == len(world.replies())
    with pytest.raises(RuntimeError):
        await world.send(broken)
    await asyncio.gather(*world.pipeline.payer._releases)
    assert lock.held == {} and len(lock.replies_at_release) == 4
    assert world.gateway.calls == 1


# -- I5: crash recovery ------------------------------------------------------------------------


async def _crash_mid_charge(world: World, command: dict[str, Any]) -> Payment:
    world.gateway.crash_next = 1
    with pytest.raises(ConnectionResetError):
        await world.send(command)
    [pending] = world.ledger.order_payments(command["orderId"])
    assert pending.status is PaymentStatus.PENDING
    return pending


async def test_pending_payment_is_finished_with_the_same_payment_id(world: World) -> None:
    """A command that comes back after a crash mid-charge finishes its pending payment (same id)."""
    command = world.payable()
    pending = await _crash_mid_charge(world, command)
    handled = await world.send(command)
    assert handled.outcome is Outcome.SUCCEEDED
    assert world.last_reply()["payment"]["id"] == str(pending.id)
    assert [p.id for p in world.ledger.order_payments(command["orderId"])] == [pending.id]
    assert world.gateway.charged == [pending.id]


async def test_resumed_payment_skips_the_order_check(world: World) -> None:
    """Resuming a pending payment does not depend on the order check: the order may no longer
    be pending, and Ordering may even be down."""
    command = world.payable()
    pending = await _crash_mid_charge(world, command)
    world.order(command, status="Paid")
    await world.send(command)
    assert world.last_reply()["outcome"] == "SUCCEEDED"
    assert world.last_reply()["payment"]["id"] == str(pending.id)


async def test_resumed_payment_finishes_while_ordering_is_down(world: World) -> None:
    """A prefetched order lookup that fails does not turn a resumable payment into an ERROR."""
    command = world.payable()
    pending = await _crash_mid_charge(world, command)
    world.ordering.orders[command["orderId"]] = DependencyUnavailable("Ordering down")
    await world.send(command)
    assert world.last_reply()["outcome"] == "SUCCEEDED"
    assert world.last_reply()["payment"]["id"] == str(pending.id)


async def test_a_recorded_command_is_answered_while_ordering_is_down(world: World) -> None:
    """A duplicate is answered from the ledger even when the (prefetched) order lookup fails."""
    command = world.payable()
    await world.send(command)
    world.ordering.orders[command["orderId"]] = DependencyUnavailable("Ordering down")
    await world.send(command)
    assert world.last_reply()["outcome"] == "SUCCEEDED"
    assert world.last_reply()["duplicate"] is True


async def test_a_recorded_command_is_answered_when_the_order_lookup_breaks(world: World) -> None:
    """Any error of the lookups (here an unexpected one) leaves the answer to the ledger; a new
    command whose lookup breaks gets the error raised, for the worker to answer ERROR."""
    command = world.payable()
    await world.send(command)
    world.ordering.orders[command["orderId"]] = RuntimeError("bug in a lookup")
    with structlog.testing.capture_logs() as logs:
        await world.send(command)
    assert (world.last_reply()["outcome"], world.last_reply()["duplicate"]) == ("SUCCEEDED", True)
    assert [e["error"] for e in logs if e["event"] == "order_check_failed"] == [
        "RuntimeError: bug in a lookup"
    ]
    fresh = command_record()
    world.ordering.orders[fresh["orderId"]] = RuntimeError("bug in a lookup")
    with pytest.raises(RuntimeError):
        await world.send(fresh)
    assert world.gateway.calls == 1


async def test_ledger_in_progress_without_a_pending_payment_is_an_error_when_rejected_too(
    world: World,
) -> None:
    """The same inconsistency when the order check now rejects the command: raised (ERROR and a
    dead letter), not retried forever behind a rejection that cannot be recorded."""
    command = world.payable()
    pending = await _crash_mid_charge(world, command)
    world.ledger.payments[pending.id] = replace(pending, status=PaymentStatus.FAILED)
    world.order(command, status="Paid")
    with pytest.raises(InconsistentLedger):
        await world.send(command)
    assert world.gateway.calls == 0


async def test_another_commands_pending_payment_makes_the_order_busy(world: World) -> None:
    """While another command's payment for the order is pending, a new command is not charged:
    after the busy budget it replies CONFLICT and leaves one pending payment."""
    first = world.payable()
    await _crash_mid_charge(world, first)
    await world.send({**first, "commandId": str(uuid.uuid4())})
    reply = world.last_reply()
    assert (reply["outcome"], reply["httpStatus"]) == ("CONFLICT", 409)
    assert world.gateway.calls == 0
    assert len(world.ledger.order_payments(first["orderId"])) == 1


async def test_reconciler_finishes_a_stale_pending_payment(world: World) -> None:
    """finish_stale charges a pending payment whose command never came back: same payment id,
    one event, and a reply on the route the command left in the ledger."""
    command = world.payable()
    pending = await _crash_mid_charge(world, command)
    route = ReplyRoute.from_json(world.ledger.entries[pending.command_id].reply_route)  # type: ignore[index]
    handled = await world.pipeline.finish_stale(pending, route)
    assert handled.outcome is Outcome.SUCCEEDED
    assert world.ledger.payments[pending.id].status is PaymentStatus.SUCCEEDED
    assert len(world.events()) == 1
    assert world.last_reply()["payment"]["id"] == str(pending.id)


async def test_command_back_after_the_reconciler_gets_the_recorded_outcome(world: World) -> None:
    """Once the reconciler finished the payment, the returning command is a duplicate: no new
    charge and no new event."""
    command = world.payable()
    pending = await _crash_mid_charge(world, command)
    await world.pipeline.finish_stale(pending, ReplyRoute(TOPICS.replies, None, "c"))
    await world.send(command)
    reply = world.last_reply()
    assert (reply["outcome"], reply["duplicate"], reply["payment"]["id"]) == (
        "SUCCEEDED",
        True,
        str(pending.id),
    )
    assert (world.gateway.calls, len(world.events())) == (1, 1)


async def test_payment_finished_meanwhile_is_answered_from_the_ledger(world: World) -> None:
    """If the reconciler finishes the payment while the redelivered command is charging it, the
    command answers the recorded outcome (duplicate) and no second event is written."""
    command = world.payable()
    pending = await _crash_mid_charge(world, command)

    async def reconciler_runs() -> None:
        await world.pipeline.finish_stale(pending, ReplyRoute(TOPICS.replies, None, "c"))

    world.gateway.before_answer = reconciler_runs
    handled = await world.send(command)
    assert (handled.outcome, handled.duplicate) == (Outcome.SUCCEEDED, True)
    assert len(world.events()) == 1
    assert world.last_reply()["payment"]["id"] == str(pending.id)


async def test_unexpected_failure_answers_error_and_dead_letters(world: World) -> None:
    """handle_failure (a bug, not a retryable error) replies ERROR and dead-letters the record,
    reason processing-error, without recording an outcome."""
    command = world.payable()
    handled = await world.pipeline.handle_failure(world.inbound(command), KeyError("boom"))
    [letter] = world.ledger.messages("dead_letter")
    assert handled.outcome is Outcome.ERROR
    assert world.last_reply()["outcome"] == "ERROR"
    assert dict(letter.headers)["dlq-reason"] == b"processing-error"
    assert world.ledger.entries == {}


# -- ERROR -------------------------------------------------------------------------------------


async def test_ordering_unavailable_replies_500(world: World) -> None:
    """Ordering out of its retry budget replies ERROR, 500, `Payment processing error: ...`."""
    command = command_record()
    world.ordering.orders[command["orderId"]] = DependencyUnavailable("Ordering down")
    handled = await world.send(command)
    reply = world.last_reply()
    assert handled.outcome is Outcome.ERROR
    assert (reply["outcome"], reply["httpStatus"], reply["success"]) == ("ERROR", 500, False)
    assert reply["errorMessage"].startswith("Payment processing error: ")


async def test_ordering_unavailable_dead_letters_the_command(world: World) -> None:
    """The command is also dead-lettered as received, reason retries-exhausted."""
    command = command_record()
    world.ordering.orders[command["orderId"]] = DependencyUnavailable("Ordering down")
    record = world.inbound(command)
    await world.pipeline.handle(record)
    [letter] = world.ledger.messages("dead_letter")
    assert (letter.topic, letter.key, letter.value) == (TOPICS.dlq, record.key, record.value)
    assert dict(letter.headers)["dlq-reason"] == b"retries-exhausted"


async def test_inventory_unavailable_replies_500(world: World) -> None:
    """Inventory out of its retry budget also replies ERROR."""
    command = world.payable(reservationId=str(uuid.uuid4()))
    world.inventory.reservations[command["reservationId"]] = DependencyUnavailable("down")
    await world.send(command)
    assert world.last_reply()["outcome"] == "ERROR"


async def test_error_charges_and_records_nothing(world: World) -> None:
    """An ERROR leaves no payment, no event and no ledger entry."""
    command = command_record()
    world.ordering.orders[command["orderId"]] = DependencyUnavailable("Ordering down")
    await world.send(command)
    assert (world.ledger.payments, world.ledger.entries, world.events()) == ({}, {}, [])
    assert world.gateway.calls == 0


async def test_command_that_ended_in_error_is_processed_again(world: World) -> None:
    """ERROR is not final: the same command redelivered once Ordering is back is charged."""
    command = command_record()
    world.ordering.orders[command["orderId"]] = DependencyUnavailable("Ordering down")
    await world.send(command)
    world.order(command)
    handled = await world.send(command)
    reply = world.last_reply()
    assert handled.outcome is Outcome.SUCCEEDED
    assert (reply["outcome"], reply["duplicate"]) == ("SUCCEEDED", False)
    assert world.gateway.calls == 1


# -- undecodable -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b'{"orderId": 1}', "undecodable"),
        (b"", "undecodable"),
        (b"\xc3\x01" + b"\x00" * 8 + b"\x02", "unknown-schema"),
    ],
)
async def test_undecodable_record_is_only_dead_lettered(
    world: World, value: bytes, reason: str
) -> None:
    """A record that cannot be decoded gets a dead letter with its reason, and no reply."""
    record = InboundRecord("process-payment", 1, 99, b"k", value, [("x", b"y")])
    handled = await world.pipeline.handle(record)
    [letter] = world.ledger.messages("dead_letter")
    assert (handled.outcome, handled.dead_letter_reason) == (None, reason)
    assert dict(letter.headers)["dlq-reason"] == reason.encode()
    assert (letter.key, letter.value) == (b"k", value)
    assert [s.message.kind for s in world.ledger.outbox] == ["dead_letter"]


async def test_an_order_lock_held_elsewhere_past_the_wait_charges_nothing(world: World) -> None:
    """Another worker holds the order's lock for the whole wait (its charge is slow): the
    command is answered busy (409, retry later) and nothing is charged or begun; a lock wait
    that runs out is never taken as the lock."""

    class HeldElsewhere:
        async def acquire(self, order_id: Any) -> str | None:
            raise OrderLocked(f"order {order_id} is locked by another worker")

        async def release(self, order_id: Any, token: str | None) -> None:
            raise AssertionError("nothing to release: the lock was never held")

    world.pipeline.payer.locks = HeldElsewhere()
    command = world.payable()
    await world.send(command)
    reply = world.last_reply()
    assert (reply["outcome"], reply["httpStatus"]) == ("CONFLICT", 409)
    assert world.gateway.calls == 0
    assert world.ledger.order_payments(command["orderId"]) == []


async def test_an_unknown_gateway_answer_leaves_the_payment_pending_and_the_retry_settles_it(
    world: World,
) -> None:
    """The gateway cannot say whether it charged: the reply is ERROR (not final), the payment
    stays pending (never recorded failed), no event is written; the same command again asks the
    gateway with the same payment id and records what it then answers."""
    world.gateway.unknown_next = 1
    command = world.payable()
    await world.send(command)
    reply = world.last_reply()
    assert reply["outcome"] == "ERROR"
    assert reply["errorMessage"].startswith("Payment processing error: the gateway's answer is")
    [payment] = world.ledger.order_payments(command["orderId"])
    assert payment.status == PaymentStatus.PENDING
    assert world.events() == []
    await world.send(command)
    assert world.last_reply()["outcome"] == "SUCCEEDED"
    assert world.gateway.charged == [payment.id, payment.id]
    [settled] = world.ledger.order_payments(command["orderId"])
    assert settled.status == PaymentStatus.SUCCEEDED
    assert len(world.events()) == 1
