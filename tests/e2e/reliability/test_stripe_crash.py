"""The Stripe gateway through network faults and a crash: the worker charges through a fault
proxy in front of localstripe, is SIGKILLed while confirms it sent are charged and not yet
answered, and is restarted. Counted on the stand-in: one succeeded PaymentIntent per payment
id, none other that could still be charged; every payment final, with that PaymentIntent's id,
and one event."""

from __future__ import annotations

import time
import uuid
from collections import Counter, defaultdict
from decimal import Decimal
from typing import Any

import pytest

from payment_worker.devstack.localstripe import PAYS, card, intents
from payment_worker.testing import command_record
from tests.conftest import stripe_environment
from tests.e2e.reliability.checks import assert_invariants, measure
from tests.e2e.reliability.conftest import scale
from tests.e2e.reliability.stripe_faults import Fault, FaultMix, running_proxy
from tests.e2e.reliability.test_faults import _stream

pytestmark = pytest.mark.e2e

# Before the kill the worker waits long for an answer (PAYMENT_STRIPE_TIMEOUT_S), so that the
# confirms the proxy holds are still in flight when it is killed, however loaded the machine;
# after the restart it waits briefly, and the timeouts are met there.
TIMEOUT_BEFORE_S, TIMEOUT_AFTER_S = 10.0, 1.5
# The worker is killed once this many payments wait on a confirm the proxy holds: about a third
# of the payments in `make test`, and below the 100 connections Stripe's client keeps (no more
# requests than that can wait at once, whatever the number of payments).
HELD_AT_KILL = 80
# Before the kill: about one request in six fails. A fault is tried again with the same
# idempotency key within the retry budget, so most are absorbed; two in a row leave the payment
# pending with an ERROR reply.
FAULTS_BEFORE = FaultMix(
    {
        kind: {Fault.SERVER_ERROR: 0.05, Fault.RATE_LIMITED: 0.05, Fault.RESET: 0.07}
        for kind in ("create", "confirm", "retrieve")
    },
    seed=11,
)
# After the restart: fewer, and timeouts among them (an answer later than the worker waits).
FAULTS_AFTER = FaultMix(
    {
        kind: {
            Fault.SERVER_ERROR: 0.02,
            Fault.RATE_LIMITED: 0.02,
            Fault.RESET: 0.02,
            Fault.TIMEOUT: 0.04,
        }
        for kind in ("create", "confirm", "retrieve")
    },
    late_by_s=TIMEOUT_AFTER_S + 0.5,
    seed=12,
)


def _commands(devserver: Any, n: int, payment_method: str) -> list[dict[str, Any]]:
    """`n` commands, each for an order of its own (added to the dev server), paid with
    `payment_method`."""
    commands = [
        command_record(
            customerId=str(uuid.uuid4()), amount=Decimal("20.00"), paymentMethod=payment_method
        )
        for _ in range(n)
    ]
    orders = [
        {
            "id": c["orderId"],
            "customerId": c["customerId"],
            "status": "Pending",
            "totalAmount": "20.00",
            "currency": "USD",
        }
        for c in commands
    ]
    devserver.client.post("/admin/orders", json=orders).raise_for_status()
    return commands


def _wait(condition: Any, timeout_s: float, every_s: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(every_s)
    return True


def test_one_succeeded_payment_intent_per_payment_through_faults_and_a_kill(
    start_worker, kafka, devserver, db, topics, report, localstripe
):
    """At least 200 payments, each its own order, through a proxy that answers 500 and 429,
    resets connections after forwarding and answers later than the worker waits; once a good
    share of confirms are forwarded (charged) with their answers held, the worker is SIGKILLed
    and restarted with fewer faults and a quick reconciler. Every payment ends succeeded with
    transaction_id its PaymentIntent's, not simulated; localstripe holds exactly one succeeded
    PaymentIntent per payment id and no other one that is not cancelled; one event id per
    payment, no payment-failed event; every command answered."""
    n = scale(240, 1000)
    commands = _commands(devserver, n, card(localstripe, PAYS))
    orders = {c["orderId"] for c in commands}
    # A worker started after a kill joins once the broker has dropped the killed one: its
    # session (the broker's shortest, 6 s) ends that wait sooner than our default 10 s.
    # As many commands at once as Stripe's client has connections (100): more would only queue
    # for them, each confirm behind the creates of the payments taken after it.
    env = {
        "PAYMENT_KAFKA_CONFIG": '{"session.timeout.ms": 6000}',
        "PAYMENT_MAX_IN_FLIGHT": "100",
    }
    with running_proxy(localstripe) as proxy:
        env.update(stripe_environment(proxy.url))
        proxy.use(FAULTS_BEFORE)
        first = start_worker(
            **env,
            PAYMENT_STRIPE_TIMEOUT_S=str(TIMEOUT_BEFORE_S),
            PAYMENT_RECONCILE_AFTER_S="3600",
        )
        producer = _stream(kafka, commands, rate=scale(120, 200))
        # A fifth of the payments confirmed (with their faults), then every confirm is charged
        # and its answer held: the worker is killed once HELD_AT_KILL payments wait on one (or,
        # on a slow machine, well before it would stop waiting).
        confirmed = _wait(lambda: proxy.counts()[0].get("confirm", 0) >= n // 5, 120)
        assert confirmed, first.logs()[-3000:]
        proxy.hold_confirms()
        _wait(lambda: proxy.held() >= HELD_AT_KILL, TIMEOUT_BEFORE_S - 2)
        in_flight = proxy.held()
        first.kill()
        proxy.release()
        seen_before, injected_before = proxy.counts()
        at_kill = dict(
            db.execute("SELECT status, count(*) FROM payments GROUP BY status").fetchall()
        )
        at_kill["with a PaymentIntent recorded"] = db.execute(
            "SELECT count(*) FROM gateway_references"
        ).fetchone()[0]
        assert in_flight >= HELD_AT_KILL // 3, f"only {in_flight} confirms in flight at the kill"

        proxy.use(FAULTS_AFTER)
        second = start_worker(
            **env,
            PAYMENT_STRIPE_TIMEOUT_S=str(TIMEOUT_AFTER_S),
            # Time for a timeout and two more tries: an answer still unknown after them leaves
            # the payment to the reconciler, which finishes one payment at a time.
            PAYMENT_HTTP_RETRY_BUDGET_S="5",
            PAYMENT_RECONCILE_AFTER_S="2",
        )
        producer.join()
        final = "SELECT count(*) FROM payments WHERE status <> 'pending'"
        finished = _wait(lambda: db.execute(final).fetchone()[0] >= n, scale(90, 300), 0.2)
        assert finished, second.logs()[-3000:]
        found = measure(db, kafka, topics, commands, report)
        seen, injected = proxy.counts()

    payments = {
        row[0]: row[1:]
        for row in db.execute(
            "SELECT id::text, order_id::text, status, transaction_id, is_simulated FROM payments"
        ).fetchall()
    }
    # payment id -> {PaymentIntent id: status}, for every PaymentIntent made for our orders
    made: dict[str, dict[str, str]] = defaultdict(dict)
    for intent in intents(localstripe):
        if intent["metadata"].get("order_id") in orders:
            made[intent["metadata"]["payment_id"]][intent["id"]] = intent["status"]
    charged = {
        payment_id: [pi for pi, status in pis.items() if status == "succeeded"]
        for payment_id, pis in made.items()
    }
    # Any other PaymentIntent of a payment that is not cancelled could still be charged.
    strays = {
        payment_id: {pi: status for pi, status in pis.items() if pi not in charged[payment_id][:1]}
        for payment_id, pis in made.items()
    }
    strays = {p: pis for p, pis in strays.items() if set(pis.values()) - {"canceled"}}
    report.double_charges = sum(1 for ids in charged.values() if len(ids) > 1)
    report.notes.update(
        {
            "confirms in flight at the kill": in_flight,
            "payments at the kill": at_kill,
            "requests before the kill": seen_before,
            "faults before the kill": injected_before,
            "requests in all": seen,
            "faults in all": injected,
            "ERROR replies": dict(
                Counter(
                    r.record["errorMessage"]
                    for r in found["replies"]
                    if r.record["outcome"] == "ERROR"
                )
            ),
            "reconciled": second.logs().count('"reconciling_pending_payment"'),
            "PaymentIntents": sum(len(pis) for pis in made.values()),
            "payments with a PaymentIntent not charged and not cancelled": len(strays),
        }
    )

    assert {fault for _kind, fault in (k.split() for k in injected)} == set(Fault), injected
    assert report.double_charges == 0, {p: ids for p, ids in charged.items() if len(ids) > 1}
    assert not strays, strays
    assert len(payments) == n and {row[0] for row in payments.values()} == orders
    assert set(made) == set(payments), "a payment without a PaymentIntent, or the reverse"
    assert all(charged.values()), "a payment with no succeeded PaymentIntent"
    rows = {payment_id: tuple(row[1:]) for payment_id, row in payments.items()}
    assert rows == {p: ("succeeded", charged[p][0], False) for p in payments}
    assert_invariants(found)
    assert set(found["event_ids"]) == set(payments), "a payment without its event"
    events = db.execute(
        "SELECT count(*), count(DISTINCT payment_id) FROM outbox WHERE kind = 'event'"
    ).fetchone()
    assert tuple(events) == (n, n)
    assert kafka.read(topics.failed, idle_s=1.0) == [], "a payment-failed event"
