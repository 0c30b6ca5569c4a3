"""StripeGateway's requests against stripe-mock, Stripe's own stand-in made from its OpenAPI spec
(scripts/stripe-mock.sh builds it once): stripe-mock answers 400 to a parameter or a path that
Stripe's API does not have, so every request the adapter sends must get less than 400.

stripe-mock keeps no state and answers with fixture objects (a PaymentIntent's status is the
fixture's), so what is checked here is that the requests are accepted, not what comes of them.
Its spec may be a little older than the API version the stripe library asks for."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
import pytest
import stripe
from aiohttp import web

from payment_worker.adapters.postgres import PostgresStore
from payment_worker.adapters.stripe_gateway import StripeGateway
from payment_worker.devstack.broker import free_port
from payment_worker.devstack.localstripe import stop, wait_until_answering
from payment_worker.domain.model import Payment
from tests.integration.support import insert_pending, pending_payment

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "sk_test_123"  # stripe-mock takes any sk_test_ key of letters and digits
PAYMENT_METHOD = "pm_card_visa"

# The PaymentIntents endpoints and what each does (any other path is not one of them).
ENDPOINTS = {
    ("POST", re.compile(r"/v1/payment_intents")): "create",
    ("GET", re.compile(r"/v1/payment_intents/pi_\w+")): "retrieve",
    ("POST", re.compile(r"/v1/payment_intents/pi_\w+/confirm")): "confirm",
    ("POST", re.compile(r"/v1/payment_intents/pi_\w+/cancel")): "cancel",
}


def endpoint(method: str, path: str) -> str | None:
    """Which PaymentIntents request this is, None when it is none of them."""
    for (verb, pattern), name in ENDPOINTS.items():
        if method == verb and pattern.fullmatch(path):
            return name
    return None


@pytest.fixture(scope="module")
def stripe_mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """stripe-mock on a free port, answering before the first test; stopped after. The module
    is skipped, with the script's reason, where stripe-mock cannot be built."""
    built = subprocess.run(
        ["bash", str(ROOT / "scripts" / "stripe-mock.sh")],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    if built.returncode != 0:
        pytest.skip(built.stderr.strip() or f"scripts/stripe-mock.sh exited {built.returncode}")
    port = free_port()
    logs = tmp_path_factory.mktemp("stripe-mock") / "server.log"
    with logs.open("wb") as out:
        # HTTPS too is always served: on a port the system chooses, never the fixed default.
        process = subprocess.Popen(
            [built.stdout.strip(), "-http-addr", f"127.0.0.1:{port}", "-https-addr", "127.0.0.1:"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_until_answering(url, process, logs, api_key=API_KEY, name="stripe-mock")
        except RuntimeError as exc:
            pytest.fail(str(exc))
        yield url
    finally:
        stop(process)


@dataclass(frozen=True)
class Seen:
    """One request that went through the recorder, and stripe-mock's status for it."""

    method: str
    path: str
    status: int
    form: dict[str, str]
    idempotency_key: str | None


class Recorder:
    """Forwards every request to stripe-mock and records it. `statuses` (endpoint name to a
    PaymentIntent status) rewrites the status of such answers, to lead the adapter on to the
    requests that follow one; the requests themselves are stripe-mock's to judge."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.seen: list[Seen] = []
        self.statuses: dict[str, str] = {}
        self.fields: dict[str, Any] = {}  # set on every PaymentIntent answered (see `payment`)
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
        assert self._session is not None
        sent = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        async with self._session.request(
            request.method, self.upstream + request.path_qs, headers=headers, data=sent
        ) as answer:
            status, body = answer.status, await answer.read()
        self.seen.append(
            Seen(
                request.method,
                request.path,
                status,
                dict(parse_qsl(request.query_string or sent.decode(), keep_blank_values=True)),
                request.headers.get("Idempotency-Key"),
            )
        )
        kind = endpoint(request.method, request.path)
        if kind is not None and status == 200:
            said = {"status": self.statuses[kind]} if kind in self.statuses else {}
            body = json.dumps({**json.loads(body), **self.fields, **said}).encode()
        return web.Response(status=status, body=body, content_type="application/json")


@pytest.fixture
async def recorder(stripe_mock: str) -> AsyncIterator[Recorder]:
    front = Recorder(stripe_mock)
    await front.start()
    yield front
    await front.stop()


@pytest.fixture
async def gateway(recorder: Recorder, store: PostgresStore) -> AsyncIterator[StripeGateway]:
    async with StripeGateway(API_KEY, store, api_base=recorder.url, retry_budget_s=0.5) as opened:
        yield opened


def payment(
    db: Any, recorder: Recorder, amount: str = "12.34", currency: str = "USD", units: int = 1234
) -> Payment:
    """A pending payment, its row written (the adapter records its PaymentIntent id); the
    recorder makes stripe-mock's fixture PaymentIntents this payment's (amount, currency,
    metadata), which the adapter checks before it believes one."""
    made = pending_payment(amount=Decimal(amount), currency=currency, payment_method=PAYMENT_METHOD)
    insert_pending(db, made)
    recorder.fields = {
        "amount": units,
        "currency": currency.lower(),
        "metadata": {"payment_id": str(made.id)},
    }
    return made


def assert_all_accepted(seen: list[Seen]) -> None:
    """Something was sent, and stripe-mock took every request, each on a PaymentIntents path."""
    assert seen, "the adapter sent nothing"
    refused = [s for s in seen if s.status >= 400]
    assert not refused, f"stripe-mock refused: {refused}"
    assert [s.path for s in seen if endpoint(s.method, s.path) is None] == []


async def test_stripe_mock_refuses_a_parameter_stripes_api_does_not_have(
    recorder: Recorder,
) -> None:
    """A create request with a parameter Stripe does not have is answered 400: the check
    below is one a wrong request fails."""
    client = stripe.StripeClient(API_KEY, base_addresses={"api": recorder.url})
    with pytest.raises(stripe.InvalidRequestError) as refused:
        await client.v1.payment_intents.create_async(
            {"amount": 1234, "currency": "usd", "no_such_parameter": "x"}  # type: ignore[typeddict-unknown-key]
        )
    assert refused.value.http_status == 400
    assert [(s.method, s.path, s.status) for s in recorder.seen] == [
        ("POST", "/v1/payment_intents", 400)
    ]


async def test_a_charge_creates_records_and_confirms_with_requests_stripe_accepts(
    gateway: StripeGateway, recorder: Recorder, db: Any
) -> None:
    """charge() creates the PaymentIntent (the payment's id as the idempotency key, the amount
    in minor units, the currency, the payment method, the payment's ids as metadata, no
    confirm), then confirms it (its own key); asked again, it reads the recorded one. Each
    request is one stripe-mock accepts."""
    recorder.statuses = {"create": "requires_confirmation", "confirm": "succeeded"}
    paid = payment(db, recorder, "12.34", "USD")
    assert (await gateway.charge(paid)).success
    recorder.statuses = {"retrieve": "succeeded"}
    assert (await gateway.charge(paid)).success
    assert_all_accepted(recorder.seen)
    assert [endpoint(s.method, s.path) for s in recorder.seen] == ["create", "confirm", "retrieve"]
    create, confirm, _ = recorder.seen
    assert create.idempotency_key == str(paid.id)
    assert create.form == {
        "amount": "1234",
        "currency": "usd",
        "payment_method": PAYMENT_METHOD,
        "payment_method_types[0]": "card",
        "metadata[payment_id]": str(paid.id),
        "metadata[order_id]": str(paid.order_id),
        "metadata[customer_id]": str(paid.customer_id),
        "metadata[command_id]": str(paid.command_id),
    }
    assert confirm.idempotency_key == f"{paid.id}:confirm"


async def test_a_zero_decimal_currency_is_sent_in_an_accepted_request(
    gateway: StripeGateway, recorder: Recorder, db: Any
) -> None:
    """A yen amount goes as whole yen, and stripe-mock accepts it."""
    await gateway.charge(payment(db, recorder, "1234", "JPY", 1234))
    assert_all_accepted(recorder.seen)
    assert (recorder.seen[0].form["amount"], recorder.seen[0].form["currency"]) == ("1234", "jpy")


async def test_the_requests_after_an_authentication_answer_are_accepted(
    gateway: StripeGateway, recorder: Recorder, db: Any
) -> None:
    """When the confirmed PaymentIntent asks for 3-D Secure, the adapter's cancel of it is
    accepted too."""
    recorder.statuses = {
        "create": "requires_confirmation",
        "confirm": "requires_action",
        "cancel": "canceled",
    }
    await gateway.charge(payment(db, recorder))
    assert_all_accepted(recorder.seen)
    assert [endpoint(s.method, s.path) for s in recorder.seen] == ["create", "confirm", "cancel"]
