"""The demo's sample payments, one list per gateway: the orders and reservations each case
needs are made at the development Ordering/Inventory server first."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from payment_worker.devstack import localstripe


@dataclass
class Case:
    name: str
    body: dict[str, Any]
    key: str | None = None


class Orders:
    """Orders and reservations made at the development server, as the samples need them."""

    def __init__(self, dev: httpx.Client, payment_method: str) -> None:
        self.dev = dev
        self.payment_method = payment_method

    def order(
        self, amount: str, *, owner: str | None = None, payment_method: str | None = None
    ) -> dict[str, Any]:
        """A pending order of a new customer (of `owner` when given: not the payer's), and
        the request body that pays it."""
        customer = str(uuid.uuid4())
        order_id = str(uuid.uuid4())
        self.dev.post(
            "/admin/orders",
            json={
                "id": order_id,
                "customerId": owner or customer,
                "status": "Pending",
                "totalAmount": amount,
                "currency": "USD",
            },
        ).raise_for_status()
        return {
            "orderId": order_id,
            "customerId": customer,
            "amount": amount,
            "currency": "USD",
            "paymentMethod": payment_method or self.payment_method,
        }

    def expired_reservation(self, body: dict[str, Any]) -> dict[str, Any]:
        """The body with a reservation of its customer that expired in 2020."""
        expired = str(uuid.uuid4())
        self.dev.post(
            "/admin/reservations",
            json={
                "id": expired,
                "customerId": body["customerId"],
                "status": "Active",
                "expiresAt": "2020-01-01T00:00:00Z",
            },
        ).raise_for_status()
        return {**body, "reservationId": expired}


def _paid_three_ways(paid: dict[str, Any], name: str) -> list[Case]:
    key = f"demo-{uuid.uuid4()}"
    return [
        Case(name, paid, key),
        Case("same request retried (same Idempotency-Key)", paid, key),
        Case("new request for the paid order", paid, f"demo-{uuid.uuid4()}"),
    ]


def _refused_before_charging(orders: Orders) -> list[Case]:
    return [
        Case("invalid request (amount 0)", {**orders.order("10.00"), "amount": "0"}),
        Case("unknown order", {**orders.order("10.00"), "orderId": str(uuid.uuid4())}),
        Case("another customer's order", orders.order("20.00", owner=str(uuid.uuid4()))),
        Case("reservation expired", orders.expired_reservation(orders.order("35.00"))),
    ]


def simulated_cases(dev: httpx.Client) -> list[Case]:
    """The simulated gateway's samples: its outcomes follow the amount's cents."""
    orders = Orders(dev, "credit_card")
    return [
        *_paid_three_ways(orders.order("49.00"), "card charged"),
        Case("card declined (.13)", orders.order("49.13")),
        Case("insufficient funds (.66)", orders.order("49.66")),
        Case("processor timeout (.99)", orders.order("49.99")),
        Case("amount too large", orders.order("1000000.00")),
        *_refused_before_charging(orders),
    ]


def stripe_cases(dev: httpx.Client, stripe_url: str) -> list[Case]:
    """The Stripe gateway's samples: its outcomes follow the test card behind each pm_ id,
    each PaymentMethod made on localstripe for one case (Stripe uses one only once)."""

    def card(number: str) -> str:
        return localstripe.card(stripe_url, number)

    orders = Orders(dev, card(localstripe.PAYS))
    return [
        *_paid_three_ways(orders.order("49.00"), "card charged (4242…)"),
        Case(
            "card declined (…0341)",
            orders.order("49.00", payment_method=card(localstripe.DECLINED_AT_CHARGE)),
        ),
        Case(
            "authentication required (…3155)",
            orders.order("49.00", payment_method=card(localstripe.NEEDS_AUTHENTICATION)),
        ),
        Case(
            "no such PaymentMethod",
            orders.order("49.00", payment_method=f"pm_{uuid.uuid4().hex[:14]}"),
        ),
        Case("not a PaymentMethod id", orders.order("49.00", payment_method="credit_card")),
        *_refused_before_charging(orders),
    ]
