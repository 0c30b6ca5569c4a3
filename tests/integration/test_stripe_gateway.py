"""StripeGateway against localstripe, a stateful Stripe stand-in started here as a process,
and against small servers that fail the way a network does (nothing of ours is faked)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
import stripe
from aiohttp import web

from payment_worker.adapters.stripe_gateway import StripeGateway
from payment_worker.devstack.broker import free_port
from payment_worker.domain.model import Payment, PaymentStatus
from payment_worker.exceptions import GatewayRefusedCredentials

pytestmark = pytest.mark.integration

API_KEY = "sk_test_localstripe"  # localstripe takes any key shaped sk_ + 3 characters or more
# localstripe keeps its state in /tmp/localstripe.pickle, shared by every copy on the machine;
# this one keeps it in memory only (--from-scratch: nothing loaded either).
_SERVER = (
    "import sys\n"
    "from localstripe import resources, server\n"
    "resources.Store.dump_to_disk = lambda self: None\n"
    "server.start()\n"
)

PAYS = "4242424242424242"
DECLINED_AT_CHARGE = "4000000000000341"
NEEDS_AUTHENTICATION = "4000002500003155"


@pytest.fixture(scope="module")
def localstripe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A localstripe server on a free port, answering before the first test; stopped after."""
    port = free_port()
    logs = tmp_path_factory.mktemp("localstripe") / "server.log"
    with logs.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", _SERVER, "--port", str(port), "--from-scratch"],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=logs.parent,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_answering(url, process, logs)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_answering(url: str, process: subprocess.Popen[bytes], logs: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"localstripe exited ({process.returncode}): {logs.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/v1/payment_intents", auth=(API_KEY, "")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"localstripe did not answer within 20 s: {logs.read_text()[-2000:]}")


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
    return Payment(
        id=uuid.uuid4(),
        order_id=uuid.uuid4(),
        customer_id=uuid.uuid4(),
        reservation_id=None,
        amount=Decimal(amount),
        currency=currency,
        payment_method=payment_method,
        status=PaymentStatus.PENDING,
        created_at=datetime.now(UTC),
        command_id=uuid.uuid4(),
    )


def intents_of(admin: stripe.StripeClient, the_payment: Payment) -> list[Any]:
    """Every PaymentIntent on localstripe made for this payment (by its metadata)."""
    listed = admin.v1.payment_intents.list({"limit": 100})
    return [
        pi for pi in listed.auto_paging_iter() if pi.metadata["payment_id"] == str(the_payment.id)
    ]


@pytest.fixture
async def gateway(localstripe: str) -> AsyncIterator[StripeGateway]:
    async with StripeGateway(API_KEY, api_base=localstripe, retry_budget_s=0.5) as opened:
        yield opened


async def test_a_card_that_pays_succeeds_with_its_payment_intent(
    gateway: StripeGateway, stripe_admin: stripe.StripeClient
) -> None:
    """A 4242 card: success, the transaction id is the PaymentIntent's, and the PaymentIntent
    carries the amount in cents, the currency and the payment's ids."""
    paid = payment(card(stripe_admin, PAYS))
    result = await gateway.charge(paid)
    assert result.success and not result.unknown
    assert result.transaction_id is not None and result.transaction_id.startswith("pi_")
    assert result.simulated_response == f"Stripe PaymentIntent {result.transaction_id}: succeeded"
    intent = stripe_admin.v1.payment_intents.retrieve(result.transaction_id)
    assert (intent.status, intent.amount, intent.currency) == ("succeeded", 1234, "usd")
    assert intent.metadata.to_dict() == {
        "payment_id": str(paid.id),
        "order_id": str(paid.order_id),
        "customer_id": str(paid.customer_id),
        "command_id": str(paid.command_id),
    }


async def test_a_zero_decimal_amount_is_sent_without_cents(
    gateway: StripeGateway, stripe_admin: stripe.StripeClient
) -> None:
    """500 JPY is sent as amount 500, not 50000."""
    result = await gateway.charge(payment(card(stripe_admin, PAYS), "500", "JPY"))
    assert result.transaction_id is not None
    intent = stripe_admin.v1.payment_intents.retrieve(result.transaction_id)
    assert (intent.amount, intent.currency) == (500, "jpy")


async def test_a_card_declined_at_charge_is_declined_with_stripes_code(
    gateway: StripeGateway, stripe_admin: stripe.StripeClient
) -> None:
    """4000000000000341 (declined when charged): declined, not unknown, with Stripe's code in
    upper case and Stripe's message (the reply adds `Payment failed: ` before it)."""
    result = await gateway.charge(payment(card(stripe_admin, DECLINED_AT_CHARGE)))
    assert not result.success and not result.unknown
    # localstripe sends no decline_code, so the code is the error's; Stripe's would be its
    # decline_code (generic_decline for this card).
    assert result.error_code == "CARD_DECLINED"
    assert result.error_message == "Your card was declined."
    assert result.failure_reason == "card_declined"
    assert result.transaction_id is None


async def test_a_card_needing_authentication_is_declined_and_its_intent_cancelled(
    gateway: StripeGateway, stripe_admin: stripe.StripeClient
) -> None:
    """4000002500003155 (3-D Secure required): declined AUTHENTICATION_REQUIRED, and its
    PaymentIntent is cancelled, so nobody can complete it later."""
    the_payment = payment(card(stripe_admin, NEEDS_AUTHENTICATION))
    result = await gateway.charge(the_payment)
    assert not result.success and not result.unknown
    assert result.error_code == "AUTHENTICATION_REQUIRED"
    [intent] = intents_of(stripe_admin, the_payment)
    assert intent.status == "canceled"


async def test_a_refused_api_key_raises_and_declines_nobody(
    localstripe: str, stripe_admin: stripe.StripeClient
) -> None:
    """A key Stripe answers 401 to raises GatewayRefusedCredentials (records wait) instead of
    answering the payment, and nothing is created. localstripe refuses only keys not shaped
    sk_..., it checks no key's value."""
    the_payment = payment(card(stripe_admin, PAYS))
    async with StripeGateway("sk_x", api_base=localstripe, retry_budget_s=0.5) as refused:
        with pytest.raises(GatewayRefusedCredentials, match="PAYMENT_STRIPE_API_KEY"):
            await refused.charge(the_payment)
    assert intents_of(stripe_admin, the_payment) == []


# -- asking again: Stripe's idempotency keys --------------------------------------------------


class IdempotentFront:
    """What Stripe does with an Idempotency-Key and localstripe does not: the first answer to
    a POST with a key is stored and replayed for every later POST with that key. It stands in
    front of localstripe and records the keys it saw."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.keys: list[str | None] = []
        self._answers: dict[str, tuple[int, bytes]] = {}
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._forward)
        self._session = aiohttp.ClientSession()
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.Response:
        key = request.headers.get("Idempotency-Key")
        if request.method == "POST":
            self.keys.append(key)
            if key is not None and key in self._answers:
                status, body = self._answers[key]
                return web.Response(status=status, body=body, content_type="application/json")
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=await request.read(),
        ) as answer:
            body = await answer.read()
        if request.method == "POST" and key is not None and answer.status != 401:
            self._answers[key] = (answer.status, body)
        return web.Response(status=answer.status, body=body, content_type="application/json")


@pytest.fixture
async def idempotent_front(localstripe: str) -> AsyncIterator[IdempotentFront]:
    front = IdempotentFront(localstripe)
    await front.start()
    yield front
    await front.stop()


async def test_charging_the_same_payment_twice_meets_one_payment_intent(
    idempotent_front: IdempotentFront, stripe_admin: stripe.StripeClient
) -> None:
    """Asked twice for one payment (a redelivered command, the reconciler), the gateway sends
    the payment id as the Idempotency-Key both times: the same PaymentIntent answers, and only
    one exists, charged once."""
    the_payment = payment(card(stripe_admin, PAYS))
    async with StripeGateway(API_KEY, api_base=idempotent_front.url) as gateway:
        first = await gateway.charge(the_payment)
        second = await gateway.charge(the_payment)
    assert first.success and second == first
    assert idempotent_front.keys == [str(the_payment.id), str(the_payment.id)]
    [intent] = intents_of(stripe_admin, the_payment)
    assert intent.id == first.transaction_id and intent.status == "succeeded"


async def test_asking_again_after_authentication_required_gives_the_same_decline(
    idempotent_front: IdempotentFront, stripe_admin: stripe.StripeClient
) -> None:
    """The replayed answer says requires_action although the PaymentIntent was cancelled
    since: the gateway reads it again and declines AUTHENTICATION_REQUIRED once more, with no
    second PaymentIntent."""
    the_payment = payment(card(stripe_admin, NEEDS_AUTHENTICATION))
    async with StripeGateway(API_KEY, api_base=idempotent_front.url) as gateway:
        first = await gateway.charge(the_payment)
        second = await gateway.charge(the_payment)
    assert first.error_code == second.error_code == "AUTHENTICATION_REQUIRED"
    [intent] = intents_of(stripe_admin, the_payment)
    assert intent.status == "canceled"


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
async def test_a_gateway_that_cannot_say_answers_unknown(status: int | None) -> None:
    """The connection lost after the request was sent, a 5xx or a 429: tried again with the
    same key within the budget, then unknown (the payment stays pending), never declined."""
    server = Failing(status)
    await server.start()
    try:
        async with StripeGateway(API_KEY, api_base=server.url, retry_budget_s=0.5) as gateway:
            result = await gateway.charge(payment("pm_card_visa"))
    finally:
        await server.stop()
    assert result.unknown and not result.success
    assert result.error_code is None
    assert server.requests >= 2  # tried again before giving up


async def test_an_unreachable_stripe_answers_unknown() -> None:
    """Nothing listening at the API base: unknown, not declined."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    async with StripeGateway(API_KEY, api_base=url, retry_budget_s=0.3) as gateway:
        result = await gateway.charge(payment("pm_card_visa"))
    assert result.unknown and not result.success


async def test_an_amount_the_currency_cannot_express_is_declined_without_a_request() -> None:
    """1.5 JPY: declined INVALID_AMOUNT before anything is sent (the API base here answers
    nothing, so a request would have been unknown)."""
    server = Failing(None)
    await server.start()
    try:
        async with StripeGateway(API_KEY, api_base=server.url, retry_budget_s=0.3) as gateway:
            result = await gateway.charge(payment("pm_card_visa", "1.5", "JPY"))
    finally:
        await server.stop()
    assert (result.success, result.unknown, result.error_code) == (False, False, "INVALID_AMOUNT")
    assert server.requests == 0
