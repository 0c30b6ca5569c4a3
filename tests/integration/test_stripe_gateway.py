"""StripeGateway against localstripe, a stateful Stripe stand-in started here as a process
(payment_worker/devstack/localstripe.py), and against small servers that fail the way a
network does; its PaymentIntent ids recorded in the real database. Nothing of ours is faked."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
import stripe

from payment_worker.adapters.postgres import PostgresStore
from payment_worker.adapters.stripe_gateway import StripeGateway
from payment_worker.devstack.localstripe import (
    API_KEY,
    DECLINED_AT_CHARGE,
    NEEDS_AUTHENTICATION,
    PAYS,
)
from payment_worker.domain.model import Payment
from payment_worker.exceptions import GatewayMisconfigured, GatewayRefusedCredentials
from tests.integration.support import insert_pending, pending_payment

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stripe_admin(localstripe: str) -> stripe.StripeClient:
    """What a test uses to set up and look at localstripe's state (synchronous, on requests)."""
    return stripe.StripeClient(API_KEY, base_addresses={"api": localstripe})


def card(admin: stripe.StripeClient, number: str) -> str:
    """A PaymentMethod for a test card number, made on localstripe: its pm_ id."""
    method = admin.v1.payment_methods.create(
        {
            "type": "card",
            "card": {"number": number, "exp_month": 12, "exp_year": 2034, "cvc": "123"},
        }
    )
    return method.id


def payment(payment_method: str, amount: str = "12.34", currency: str = "USD") -> Payment:
    return pending_payment(amount=Decimal(amount), currency=currency, payment_method=payment_method)


def reference(db: psycopg.Connection[Any], the_payment: Payment) -> str | None:
    row = db.execute(
        "SELECT reference FROM gateway_references WHERE payment_id = %s AND gateway = 'stripe'",
        (the_payment.id,),
    ).fetchone()
    return None if row is None else str(row[0])


def intents_of(admin: stripe.StripeClient, the_payment: Payment) -> list[Any]:
    """Every PaymentIntent on localstripe made for this payment (by its metadata)."""
    listed = admin.v1.payment_intents.list({"limit": 100})
    return [
        pi for pi in listed.auto_paging_iter() if pi.metadata["payment_id"] == str(the_payment.id)
    ]


@pytest.fixture
async def gateway(localstripe: str, store: PostgresStore) -> AsyncIterator[StripeGateway]:
    async with StripeGateway(API_KEY, store, api_base=localstripe, retry_budget_s=0.5) as opened:
        yield opened


async def test_a_card_that_pays_succeeds_with_its_payment_intent(
    gateway: StripeGateway, stripe_admin: stripe.StripeClient, db: psycopg.Connection[Any]
) -> None:
    """A 4242 card: success, not simulated, the transaction id is the PaymentIntent's (recorded
    as the payment's reference), and the PaymentIntent carries the amount in cents, the
    currency and the payment's ids."""
    paid = payment(card(stripe_admin, PAYS))
    insert_pending(db, paid)
    result = await gateway.charge(paid)
    assert result.success and not result.unknown and not result.simulated
    assert result.transaction_id is not None and result.transaction_id.startswith("pi_")
    assert result.simulated_response == f"Stripe PaymentIntent {result.transaction_id}: succeeded"
    assert reference(db, paid) == result.transaction_id
    intent = stripe_admin.v1.payment_intents.retrieve(result.transaction_id)
    assert (intent.status, intent.amount, intent.currency) == ("succeeded", 1234, "usd")
    assert intent.metadata.to_dict() == {
        "payment_id": str(paid.id),
        "order_id": str(paid.order_id),
        "customer_id": str(paid.customer_id),
        "command_id": str(paid.command_id),
    }


async def test_a_zero_decimal_amount_is_sent_without_cents(
    gateway: StripeGateway, stripe_admin: stripe.StripeClient, db: psycopg.Connection[Any]
) -> None:
    """500 JPY is sent as amount 500, not 50000."""
    paid = payment(card(stripe_admin, PAYS), "500", "JPY")
    insert_pending(db, paid)
    result = await gateway.charge(paid)
    assert result.transaction_id is not None
    intent = stripe_admin.v1.payment_intents.retrieve(result.transaction_id)
    assert (intent.amount, intent.currency) == (500, "jpy")


async def test_a_card_declined_at_charge_is_declined_with_stripes_code(
    gateway: StripeGateway, stripe_admin: stripe.StripeClient, db: psycopg.Connection[Any]
) -> None:
    """4000000000000341 (declined when charged): declined, not unknown, with Stripe's code in
    upper case and Stripe's message (the reply adds `Payment failed: ` before it); asked again,
    the same decline is read from the same PaymentIntent, and no second one is made."""
    declined = payment(card(stripe_admin, DECLINED_AT_CHARGE))
    insert_pending(db, declined)
    result = await gateway.charge(declined)
    assert not result.success and not result.unknown and not result.simulated
    # localstripe sends no decline_code, so the code is the error's; Stripe's would be its
    # decline_code (generic_decline for this card).
    assert result.error_code == "CARD_DECLINED"
    assert result.error_message == "Your card was declined."
    assert result.failure_reason == "card_declined"
    assert result.transaction_id is None
    again = await gateway.charge(declined)
    assert (again.success, again.unknown, again.error_code) == (False, False, "CARD_DECLINED")
    [intent] = intents_of(stripe_admin, declined)
    assert intent.status == "requires_payment_method" and reference(db, declined) == intent.id


async def test_a_card_needing_authentication_is_declined_and_its_intent_cancelled(
    gateway: StripeGateway, stripe_admin: stripe.StripeClient, db: psycopg.Connection[Any]
) -> None:
    """4000002500003155 (3-D Secure required): declined AUTHENTICATION_REQUIRED, and its
    PaymentIntent is cancelled, so nobody can complete it later. Asked again (a redelivery),
    the cancelled PaymentIntent gives the same decline, and no second one is made."""
    the_payment = payment(card(stripe_admin, NEEDS_AUTHENTICATION))
    insert_pending(db, the_payment)
    result = await gateway.charge(the_payment)
    assert not result.success and not result.unknown
    assert result.error_code == "AUTHENTICATION_REQUIRED"
    again = await gateway.charge(the_payment)
    assert again.error_code == "AUTHENTICATION_REQUIRED" and not again.unknown
    [intent] = intents_of(stripe_admin, the_payment)
    assert intent.status == "canceled"


async def test_a_payment_still_processing_stays_unknown_until_stripe_settles_it(
    gateway: StripeGateway, stripe_admin: stripe.StripeClient, db: psycopg.Connection[Any]
) -> None:
    """A PaymentIntent left `processing` (localstripe settles this SEPA debit, declined, half a
    second later) is unknown, not final; asked again once settled (the reconciler's call), the
    recorded PaymentIntent is read and gives the decline, with no second PaymentIntent."""
    method = stripe_admin.v1.payment_methods.create(
        {"type": "sepa_debit", "sepa_debit": {"iban": "DE62370400440532013001"}}
    )
    slow = payment(method.id, "20.00", "EUR")
    insert_pending(db, slow)
    first = await gateway.charge(slow)
    assert first.unknown and not first.success
    assert "processing" in first.simulated_response
    await asyncio.sleep(1.0)
    settled = await gateway.charge(slow)
    assert not settled.success and not settled.unknown and settled.error_code is not None
    [intent] = intents_of(stripe_admin, slow)
    assert intent.status == "requires_payment_method" and reference(db, slow) == intent.id


async def test_a_refused_api_key_raises_and_declines_nobody(
    localstripe: str,
    stripe_admin: stripe.StripeClient,
    store: PostgresStore,
    db: psycopg.Connection[Any],
) -> None:
    """A key Stripe answers 401 to raises GatewayRefusedCredentials naming the setting, at the
    start-up check and at a charge, instead of answering the payment; nothing is created.
    localstripe refuses only keys not shaped sk_..., it checks no key's value."""
    the_payment = payment(card(stripe_admin, PAYS))
    insert_pending(db, the_payment)
    async with StripeGateway("sk_x", store, api_base=localstripe, retry_budget_s=0.5) as refused:
        with pytest.raises(GatewayRefusedCredentials, match="PAYMENT_STRIPE_API_KEY"):
            await refused.check_key()
        with pytest.raises(GatewayRefusedCredentials, match="PAYMENT_STRIPE_API_KEY"):
            await refused.charge(the_payment)
    assert intents_of(stripe_admin, the_payment) == []
    async with StripeGateway(API_KEY, store, api_base=localstripe) as accepted:
        assert await accepted.check_key() is None


# -- asking again: the recorded PaymentIntent, Stripe's idempotency keys ----------------------


async def test_charging_the_same_payment_twice_meets_one_payment_intent(
    gateway: StripeGateway, stripe_admin: stripe.StripeClient, db: psycopg.Connection[Any]
) -> None:
    """Asked twice for one payment (a redelivered command, the reconciler): the second time
    continues the recorded PaymentIntent; only one exists, charged once."""
    the_payment = payment(card(stripe_admin, PAYS))
    insert_pending(db, the_payment)
    first = await gateway.charge(the_payment)
    second = await gateway.charge(the_payment)
    assert first.success and second == first
    [intent] = intents_of(stripe_admin, the_payment)
    assert intent.id == first.transaction_id and intent.status == "succeeded"


class ForgetfulReferences:
    """The real store, but the first `fail` records of a reference fail, as when the database
    is lost between Stripe's answer and our record of it (a crash there)."""

    def __init__(self, store: PostgresStore, fail: int = 1) -> None:
        self.store = store
        self.fail = fail

    async def remember_reference(self, payment_id: uuid.UUID, gateway: str, ref: str) -> str:
        if self.fail:
            self.fail -= 1
            raise ConnectionResetError("the database went away")
        return await self.store.remember_reference(payment_id, gateway, ref)

    async def recall_reference(self, payment_id: uuid.UUID, gateway: str) -> str | None:
        return await self.store.recall_reference(payment_id, gateway)


async def test_a_payment_intent_not_recorded_is_reused_not_doubled(
    localstripe: str,
    stripe_admin: stripe.StripeClient,
    store: PostgresStore,
    db: psycopg.Connection[Any],
) -> None:
    """Stripe answered a PaymentIntent that could not be recorded: nothing is confirmed and the
    answer is unknown. Asked again, the same Idempotency-Key meets the same PaymentIntent
    (as Stripe promises, and the stand-in keeps), which is recorded, confirmed and succeeds:
    one PaymentIntent, charged once."""
    the_payment = payment(card(stripe_admin, PAYS))
    insert_pending(db, the_payment)
    references = ForgetfulReferences(store)
    async with StripeGateway(API_KEY, references, api_base=localstripe) as gateway:
        lost = await gateway.charge(the_payment)
        assert lost.unknown
        [unconfirmed] = intents_of(stripe_admin, the_payment)
        assert unconfirmed.status == "requires_confirmation"
        result = await gateway.charge(the_payment)
    assert result.success and result.transaction_id == unconfirmed.id
    [intent] = intents_of(stripe_admin, the_payment)
    assert intent.status == "succeeded" and reference(db, the_payment) == intent.id


async def test_a_second_payment_intent_is_cancelled_and_the_recorded_one_charged(
    gateway: StripeGateway,
    stripe_admin: stripe.StripeClient,
    store: PostgresStore,
    db: psycopg.Connection[Any],
) -> None:
    """Where a PaymentIntent was recorded first for the payment (by another try, on a gateway
    that did not keep the key), the one just created is cancelled, never confirmed, and the
    recorded one is confirmed: one charge."""
    the_payment = payment(card(stripe_admin, PAYS))
    insert_pending(db, the_payment)
    first = stripe_admin.v1.payment_intents.create(
        {
            "amount": 1234,
            "currency": "usd",
            "payment_method": the_payment.payment_method,
            "metadata": {"payment_id": str(the_payment.id)},
        }
    )
    # Recorded meanwhile, after this try found none: the try creates its own, then meets it.
    recall = gateway.references.recall_reference

    async def none_yet(payment_id: uuid.UUID, name: str) -> str | None:
        await store.remember_reference(payment_id, name, first.id)
        return None

    gateway.references.recall_reference = none_yet  # type: ignore[method-assign]
    try:
        result = await gateway.charge(the_payment)
    finally:
        gateway.references.recall_reference = recall  # type: ignore[method-assign]
    assert result.success and result.transaction_id == first.id
    statuses = {pi.id: pi.status for pi in intents_of(stripe_admin, the_payment)}
    assert statuses.pop(first.id) == "succeeded"
    assert list(statuses.values()) == ["canceled"]


# -- a gateway that cannot say: unknown, never declined ---------------------------------------


class Failing:
    """A server that reads each request, then drops the connection or answers `status`."""

    def __init__(self, status: int | None) -> None:
        self.status = status
        self.requests = 0
        self._server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")  # the request line and headers: it was sent
            self.requests += 1
            if self.status is not None:
                body = b'{"error": {"type": "api_error", "message": "Try again later."}}'
                writer.write(
                    f"HTTP/1.1 {self.status} Failing\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.mark.parametrize(
    "status", [None, 500, 503, 429], ids=["connection-lost", "500", "503", "429"]
)
async def test_a_gateway_that_cannot_say_answers_unknown(
    status: int | None, store: PostgresStore
) -> None:
    """The connection lost after the request was sent, a 5xx or a 429: tried again with the
    same key within the budget, then unknown (the payment stays pending), never declined."""
    server = Failing(status)
    await server.start()
    try:
        async with StripeGateway(
            API_KEY, store, api_base=server.url, retry_budget_s=0.5
        ) as gateway:
            result = await gateway.charge(payment("pm_card_visa"))
    finally:
        await server.stop()
    assert result.unknown and not result.success
    assert result.error_code is None
    assert server.requests >= 2  # tried again before giving up


async def test_an_unreachable_stripe_answers_unknown(store: PostgresStore) -> None:
    """Nothing listening at the API base: unknown, not declined."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    async with StripeGateway(API_KEY, store, api_base=url, retry_budget_s=0.3) as gateway:
        result = await gateway.charge(payment("pm_card_visa"))
    assert result.unknown and not result.success


async def test_an_amount_the_currency_cannot_express_is_declined_without_a_request(
    store: PostgresStore,
) -> None:
    """1.5 JPY: declined INVALID_AMOUNT before anything is sent (the API base here answers
    nothing, so a request would have been unknown)."""
    server = Failing(None)
    await server.start()
    try:
        async with StripeGateway(
            API_KEY, store, api_base=server.url, retry_budget_s=0.3
        ) as gateway:
            result = await gateway.charge(payment("pm_card_visa", "1.5", "JPY"))
    finally:
        await server.stop()
    assert (result.success, result.unknown, result.error_code) == (False, False, "INVALID_AMOUNT")
    assert server.requests == 0


# -- answers that are not what they should be: never believed, never a decline of ours ----------


async def test_a_payment_method_stripe_does_not_have_is_declined(
    gateway: StripeGateway, db: psycopg.Connection[Any]
) -> None:
    """A pm_ id Stripe has no PaymentMethod for (resource_missing on payment_method): the
    customer's input, declined RESOURCE_MISSING, nothing charged."""
    the_payment = payment("pm_NoSuchMethod0000")
    insert_pending(db, the_payment)
    result = await gateway.charge(the_payment)
    assert (result.success, result.unknown, result.error_code) == (False, False, "RESOURCE_MISSING")


async def test_a_wrong_api_base_declines_nobody_and_stops_start_up(
    localstripe: str,
    stripe_admin: stripe.StripeClient,
    store: PostgresStore,
    db: psycopg.Connection[Any],
) -> None:
    """An API base one path off (Stripe answers 404 to every URL): the start-up check stops
    with a line naming PAYMENT_STRIPE_API_BASE, and a charge is unknown, never declined: the
    fault is ours, not the customer's."""
    the_payment = payment(card(stripe_admin, PAYS))
    insert_pending(db, the_payment)
    async with StripeGateway(API_KEY, store, api_base=f"{localstripe}/v1") as misplaced:
        with pytest.raises(GatewayMisconfigured, match="PAYMENT_STRIPE_API_BASE"):
            await misplaced.check_key()
        result = await misplaced.charge(the_payment)
    assert result.unknown and not result.success and result.error_code is None
    assert intents_of(stripe_admin, the_payment) == []


async def test_a_recorded_payment_intent_of_another_payment_is_never_believed(
    gateway: StripeGateway,
    stripe_admin: stripe.StripeClient,
    store: PostgresStore,
    db: psycopg.Connection[Any],
) -> None:
    """A reference pointing at another payment's succeeded PaymentIntent (a repair gone wrong,
    another account's id): the answer is unknown, not SUCCEEDED, and nothing is confirmed."""
    paid, other = payment(card(stripe_admin, PAYS)), payment(card(stripe_admin, PAYS))
    insert_pending(db, paid, other)
    succeeded = await gateway.charge(paid)
    assert succeeded.success and succeeded.transaction_id is not None
    await store.remember_reference(other.id, "stripe", succeeded.transaction_id)
    result = await gateway.charge(other)
    assert result.unknown and not result.success
    assert intents_of(stripe_admin, other) == []


async def test_a_recorded_payment_intent_stripe_does_not_know_is_unknown(
    gateway: StripeGateway,
    stripe_admin: stripe.StripeClient,
    store: PostgresStore,
    db: psycopg.Connection[Any],
) -> None:
    """The recorded PaymentIntent is not found (the key of another account or mode): the
    payment may have been charged elsewhere, so the answer is unknown, never a decline."""
    the_payment = payment(card(stripe_admin, PAYS))
    insert_pending(db, the_payment)
    await store.remember_reference(the_payment.id, "stripe", "pi_GoneElsewhere00")
    result = await gateway.charge(the_payment)
    assert result.unknown and not result.success and result.error_code is None


async def test_a_payment_intent_cancelled_by_someone_else_is_not_an_authentication_decline(
    gateway: StripeGateway,
    stripe_admin: stripe.StripeClient,
    store: PostgresStore,
    db: psycopg.Connection[Any],
) -> None:
    """A recorded PaymentIntent cancelled elsewhere (the Dashboard, a duplicate): declined
    PAYMENT_CANCELED with the reason, not read as the authentication decline."""
    the_payment = payment(card(stripe_admin, PAYS))
    insert_pending(db, the_payment)
    intent = stripe_admin.v1.payment_intents.create(
        {
            "amount": 1234,
            "currency": "usd",
            "payment_method": the_payment.payment_method,
            "metadata": {"payment_id": str(the_payment.id)},
        }
    )
    stripe_admin.v1.payment_intents.cancel(intent.id, {"cancellation_reason": "fraudulent"})
    await store.remember_reference(the_payment.id, "stripe", intent.id)
    result = await gateway.charge(the_payment)
    assert (result.success, result.unknown, result.error_code) == (False, False, "PAYMENT_CANCELED")
    assert result.error_message is not None and "fraudulent" in result.error_message
