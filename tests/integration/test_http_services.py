"""JsonService, HttpOrdering and HttpInventory against the development Ordering/Inventory
server: lenient reads, 404, retries on injected 5xx, the retry budget, connection errors."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from prometheus_client import REGISTRY

from payment_worker.adapters.http_services import HttpInventory, HttpOrdering, JsonService
from payment_worker.devstack.broker import free_port
from payment_worker.domain.decision import check_order, check_reservation
from payment_worker.domain.model import Outcome, ValidCommand, reply
from payment_worker.service.ports import DependencyUnavailable, OrderInfo, ReservationInfo
from tests.conftest import DevServer

pytestmark = pytest.mark.integration


def _calls(outcome: str) -> float:
    """Ordering calls counted under `outcome` by the dependency-latency histogram."""
    value = REGISTRY.get_sample_value(
        "payment_worker_dependency_request_duration_seconds_count",
        {"dependency": "ordering", "outcome": outcome},
    )
    return value or 0.0


@pytest.fixture
def dev(devserver: DevServer) -> Iterator[DevServer]:
    """The dev server, with no fault left behind by this test."""
    devserver.clear_faults()
    yield devserver
    devserver.clear_faults()


async def _service(url: str, **options: Any) -> JsonService:
    service = JsonService("Ordering", url, **options)
    await service.open()
    return service


@pytest.fixture
async def service(dev: DevServer) -> AsyncIterator[JsonService]:
    the_service = await _service(dev.url, timeout_s=1.0, retry_budget_s=3.0)
    yield the_service
    await the_service.close()


def _put_order(dev: DevServer, body: dict[str, Any]) -> None:
    """Store a raw order body (the dev server files it under its `id`)."""
    dev.client.post("/admin/orders", json=body).raise_for_status()


def _requests(dev: DevServer, kind: str = "orders") -> int:
    return dev.stats().get(kind, 0)


# -- lenient reads ---------------------------------------------------------------------------


async def test_order_is_read_with_the_canonical_field_names(
    dev: DevServer, service: JsonService
) -> None:
    """An order as the real Ordering service writes it is read into OrderInfo, amount as an
    exact Decimal."""
    order_id, customer_id = uuid.uuid4(), str(uuid.uuid4())
    dev.add_order(str(order_id), customer_id, "1234.50", status="Pending", currency="EUR")

    order = await HttpOrdering(service).get_order(order_id)

    assert order == OrderInfo(customer_id, "Pending", Decimal("1234.50"), "EUR", str(order_id))


async def test_order_is_read_with_the_alternative_field_names(
    dev: DevServer, service: JsonService
) -> None:
    """userId, state and amount stand in for customerId, status and totalAmount."""
    order_id, customer_id = uuid.uuid4(), str(uuid.uuid4())
    _put_order(
        dev,
        {
            "id": str(order_id),
            "userId": customer_id,
            "state": "paid",
            "amount": "99.99",
            "currency": "GBP",
        },
    )

    order = await HttpOrdering(service).get_order(order_id)

    assert order == OrderInfo(customer_id, "paid", Decimal("99.99"), "GBP", str(order_id))


async def test_order_field_names_match_in_any_case(dev: DevServer, service: JsonService) -> None:
    """Field names are matched case-insensitively (PascalCase as ASP.NET may write them)."""
    order_id, customer_id = uuid.uuid4(), str(uuid.uuid4())
    _put_order(
        dev,
        {
            "id": str(order_id),
            "CustomerID": customer_id,
            "STATUS": "Pending",
            "TotalAmount": "10.50",
            "Currency": "EUR",
        },
    )

    order = await HttpOrdering(service).get_order(order_id)

    assert order == OrderInfo(customer_id, "Pending", Decimal("10.50"), "EUR", str(order_id))


async def test_order_without_currency_is_in_usd(dev: DevServer, service: JsonService) -> None:
    """An order that names no currency is read as USD."""
    order_id, customer_id = uuid.uuid4(), str(uuid.uuid4())
    _put_order(
        dev,
        {
            "id": str(order_id),
            "customerId": customer_id,
            "status": "Pending",
            "totalAmount": "10.50",
        },
    )

    order = await HttpOrdering(service).get_order(order_id)

    assert order is not None and order.currency == "USD"


async def test_numeric_amount_is_read_exactly(dev: DevServer, service: JsonService) -> None:
    """A totalAmount written as a JSON number (as System.Text.Json writes a decimal) becomes
    the exact Decimal, even at the contract's largest amount."""
    order_id, customer_id = uuid.uuid4(), str(uuid.uuid4())
    body = {
        "id": str(order_id),
        "customerId": customer_id,
        "status": "Pending",
        "totalAmount": "AMOUNT",
    }
    raw = json.dumps(body).replace('"AMOUNT"', "999999999999.99")  # a number, never a float
    dev.client.post(
        "/admin/orders", content=raw, headers={"content-type": "application/json"}
    ).raise_for_status()

    order = await HttpOrdering(service).get_order(order_id)

    assert order is not None and order.amount == Decimal("999999999999.99")


async def test_order_identified_by_order_id_is_read(dev: DevServer, service: JsonService) -> None:
    """A body that carries `orderId` (beside the dev server's filing `id`) is read like any
    other, and the id it names is kept for the pipeline's check."""
    order_id, customer_id = uuid.uuid4(), str(uuid.uuid4())
    _put_order(
        dev,
        {
            "id": str(order_id),
            "orderId": str(order_id),
            "userId": customer_id,
            "state": "Pending",
            "amount": "5.00",
        },
    )

    order = await HttpOrdering(service).get_order(order_id)

    assert order == OrderInfo(customer_id, "Pending", Decimal("5.00"), "USD", str(order_id))


GARBLED_ORDERS = {
    "a total with a decimal comma": b'"totalAmount": "250,00"',
    "a money object for a total": b'"totalAmount": {"amount": "250.00", "currency": "USD"}',
    "no total at all": b'"note": "total to follow"',
    "a NaN total": b'"totalAmount": NaN',
    "a customer that is no id": b'"totalAmount": "0.01", "customerId": 42',
}


@pytest.mark.parametrize("fields", GARBLED_ORDERS.values(), ids=GARBLED_ORDERS.keys())
async def test_a_garbled_order_answer_is_refused_never_matched(
    dev: DevServer, service: JsonService, fields: bytes
) -> None:
    """Ordering answers a pending order of the command's customer whose total (or customer)
    cannot be read: through the real HTTP adapter, a 0.01 command is refused ORDER_INVALID
    `Order validation failed: unreadable order`, never matched."""
    order_id, customer_id = uuid.uuid4(), uuid.uuid4()
    head = f'{{"id": "{order_id}", "customerId": "{customer_id}", "status": "Pending", '
    dev.add_raw("orders", str(order_id), head.encode() + fields + b', "currency": "USD"}')
    command = ValidCommand(
        command_id=uuid.uuid4(),
        order_id=order_id,
        customer_id=customer_id,
        reservation_id=None,
        amount=Decimal("0.01"),
        currency="USD",
        payment_method="credit_card",
        requested_at=datetime.now(UTC),
    )

    order = await HttpOrdering(service).get_order(order_id)

    assert check_order(command, order) == reply(Outcome.ORDER_INVALID, "unreadable order")


async def test_a_reservation_answer_without_a_customer_is_refused(
    dev: DevServer, service: JsonService
) -> None:
    """Inventory answers an active reservation with no customer: through the real HTTP
    adapter it is RESERVATION_INVALID `Reservation validation failed: unreadable
    reservation`, not a reservation anyone may pay for."""
    reservation_id = uuid.uuid4()
    body = f'{{"id": "{reservation_id}", "status": "Active", "expiresAt": "2099-01-01T00:00:00Z"}}'
    dev.add_raw("reservations", str(reservation_id), body.encode())
    command = ValidCommand(
        command_id=uuid.uuid4(),
        order_id=uuid.uuid4(),
        customer_id=uuid.uuid4(),
        reservation_id=reservation_id,
        amount=Decimal("10.00"),
        currency="USD",
        payment_method="credit_card",
        requested_at=datetime.now(UTC),
    )

    reservation = await HttpInventory(service).get_reservation(reservation_id)

    assert check_reservation(command, reservation, datetime.now(UTC)) == reply(
        Outcome.RESERVATION_INVALID, "unreadable reservation"
    )


async def test_unknown_order_is_none(dev: DevServer, service: JsonService) -> None:
    """A 404 from Ordering is an answer (no such order), not a failure: get_order is None,
    after a single request."""
    before = _requests(dev)

    assert await HttpOrdering(service).get_order(uuid.uuid4()) is None
    assert _requests(dev) - before == 1


async def test_reservation_is_read_leniently(dev: DevServer, service: JsonService) -> None:
    """A reservation is read with its customer, status and expiry as an aware datetime."""
    reservation_id, customer_id = uuid.uuid4(), str(uuid.uuid4())
    dev.add_reservation(
        str(reservation_id), customer_id, status="Active", expires_at="2099-01-01T00:00:00Z"
    )

    reservation = await HttpInventory(service).get_reservation(reservation_id)

    assert reservation == ReservationInfo(
        customer_id, "Active", datetime(2099, 1, 1, tzinfo=UTC), str(reservation_id)
    )


async def test_reservation_expiry_with_dotnet_precision_is_read(
    dev: DevServer, service: JsonService
) -> None:
    """An expiresAt with .NET's seven fractional digits is read (to the microsecond), not
    dropped: a dropped expiry would let an expired reservation through."""
    reservation_id, customer_id = uuid.uuid4(), str(uuid.uuid4())
    dev.add_reservation(str(reservation_id), customer_id, expires_at="2020-02-03T04:05:06.1234567Z")

    reservation = await HttpInventory(service).get_reservation(reservation_id)

    assert reservation is not None
    assert reservation.expires_at == datetime(2020, 2, 3, 4, 5, 6, 123456, tzinfo=UTC)


async def test_unknown_reservation_is_none(service: JsonService) -> None:
    """A 404 from Inventory means no such reservation: get_reservation is None."""
    assert await HttpInventory(service).get_reservation(uuid.uuid4()) is None


# -- retries -----------------------------------------------------------------------------------


async def test_transient_503s_are_retried_until_the_order_comes(
    dev: DevServer, service: JsonService
) -> None:
    """Two injected 503s then a success: get_order returns the order after three requests."""
    order_id, customer_id = uuid.uuid4(), str(uuid.uuid4())
    dev.add_order(str(order_id), customer_id, "10.50")
    dev.fault("orders", 503, count=2)
    before = _requests(dev)

    order = await HttpOrdering(service).get_order(order_id)

    assert order == OrderInfo(customer_id, "Pending", Decimal("10.50"), "USD", str(order_id))
    assert _requests(dev) - before == 3


async def test_permanent_503_gives_up_after_the_attempts(dev: DevServer) -> None:
    """A service that keeps answering 503 yields DependencyUnavailable after `attempts`
    requests, well within the retry budget."""
    service = await _service(dev.url, timeout_s=1.0, retry_budget_s=3.0, attempts=4)
    dev.fault("orders", 503)
    before = _requests(dev)
    started = time.monotonic()
    try:
        with pytest.raises(DependencyUnavailable):
            await HttpOrdering(service).get_order(uuid.uuid4())
    finally:
        await service.close()

    assert _requests(dev) - before == 4
    assert time.monotonic() - started < 3.0 + 1.0


async def test_permanent_503_stops_at_the_retry_budget(dev: DevServer) -> None:
    """With many attempts allowed, the retry budget (1.5 s) is what stops the retries:
    DependencyUnavailable comes within the budget (no wait is started that would overrun it),
    after more than one try but far fewer than allowed."""
    budget = 1.5
    service = await _service(dev.url, timeout_s=1.0, retry_budget_s=budget, attempts=1000)
    dev.fault("orders", 503)
    before = _requests(dev)
    started = time.monotonic()
    try:
        with pytest.raises(DependencyUnavailable):
            await HttpOrdering(service).get_order(uuid.uuid4())
    finally:
        await service.close()
    elapsed = time.monotonic() - started

    assert elapsed < budget + 0.2
    assert 1 < _requests(dev) - before < 100


async def test_connection_refused_is_dependency_unavailable() -> None:
    """Nothing listening on the service's port: DependencyUnavailable, not an httpx error."""
    service = await _service(
        f"http://127.0.0.1:{free_port()}", timeout_s=0.5, retry_budget_s=1.0, attempts=3
    )
    errors_before = _calls("error")
    try:
        with pytest.raises(DependencyUnavailable) as raised:
            await HttpOrdering(service).get_order(uuid.uuid4())
    finally:
        await service.close()

    assert "Ordering service unavailable" in str(raised.value)
    assert _calls("error") == errors_before + 1  # a refused connection: an error, not a timeout


async def test_slow_answers_are_retried_as_timeouts(dev: DevServer) -> None:
    """Answers slower than timeout_s count as failed tries: they are retried, then
    DependencyUnavailable."""
    service = await _service(dev.url, timeout_s=0.2, retry_budget_s=5.0, attempts=3)
    dev.fault("orders", 200, delay_ms=600)  # status 200 after the delay: only the delay faults
    before = _requests(dev)
    timeouts_before = _calls("timeout")
    try:
        with pytest.raises(DependencyUnavailable) as raised:
            await HttpOrdering(service).get_order(uuid.uuid4())
    finally:
        await service.close()

    assert _requests(dev) - before == 3
    assert "timeout" in str(raised.value)
    assert _calls("timeout") == timeouts_before + 1  # one call, counted once, as a timeout


async def test_retry_budget_bounds_slow_answers_too(dev: DevServer) -> None:
    """A service that answers later than timeout_s is given up on within the retry budget
    (+1 s), like a service that answers 503: the budget bounds the whole call."""
    budget = 1.6
    service = await _service(dev.url, timeout_s=1.5, retry_budget_s=budget, attempts=100)
    dev.fault("orders", 200, delay_ms=2500)
    started = time.monotonic()
    try:
        with pytest.raises(DependencyUnavailable):
            await HttpOrdering(service).get_order(uuid.uuid4())
    finally:
        await service.close()

    assert time.monotonic() - started < budget + 1.0


async def test_a_burst_waits_in_line_for_connections_within_the_budget(
    dev: DevServer,
) -> None:
    """Eight concurrent lookups over one connection, each answered in 0.1 s, with a 0.3 s
    timeout, a 2 s budget and two attempts: every one is answered, and the server sees eight
    requests. Waiting in line for a connection is not a timeout of the service (counted as
    one, the later lookups failed both their tries in line: a burst of commands became
    retries, then ERROR outcomes)."""
    service = await _service(
        dev.url, timeout_s=0.3, retry_budget_s=2.0, attempts=2, max_connections=1
    )
    dev.fault("orders", 0, delay_ms=100)  # status 0: the normal answer, after the delay
    before = _requests(dev)
    try:
        orders = await asyncio.gather(
            *(HttpOrdering(service).get_order(uuid.uuid4()) for _ in range(8))
        )
    finally:
        await service.close()

    assert orders == [None] * 8  # unknown orders: 404, answered
    assert _requests(dev) - before == 8
