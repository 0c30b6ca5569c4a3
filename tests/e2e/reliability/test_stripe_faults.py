"""The fault proxy the Stripe crash scenario runs through (stripe_faults.py), against localstripe:
each fault does to a request what its name says, so the scenario's figures mean what they say."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from payment_worker.devstack.localstripe import API_KEY, PAYS, card, intents
from tests.e2e.reliability.stripe_faults import Fault, FaultMix, StripeFaultProxy, running_proxy

pytestmark = pytest.mark.integration


@pytest.fixture
def proxy(localstripe: str) -> Iterator[StripeFaultProxy]:
    with running_proxy(localstripe) as started:
        yield started


def create(proxy: StripeFaultProxy, key: str, payment_method: str, timeout_s: float = 5.0) -> Any:
    """POST a PaymentIntent through the proxy, `key` its Idempotency-Key and its payment_id."""
    return httpx.post(
        f"{proxy.url}/v1/payment_intents",
        auth=(API_KEY, ""),
        headers={"Idempotency-Key": key},
        data={
            "amount": "1000",
            "currency": "usd",
            "payment_method": payment_method,
            "metadata[payment_id]": key,
        },
        timeout=timeout_s,
    )


def made(localstripe: str, key: str) -> list[str]:
    """The statuses of the PaymentIntents localstripe holds for `key`."""
    return [i["status"] for i in intents(localstripe) if i["metadata"].get("payment_id") == key]


@pytest.mark.parametrize(
    ("fault", "status"), [(Fault.SERVER_ERROR, 500), (Fault.RATE_LIMITED, 429)]
)
def test_a_500_or_429_is_answered_by_the_proxy_and_nothing_reaches_stripe(
    proxy: StripeFaultProxy, localstripe: str, fault: Fault, status: int
) -> None:
    """A 500 or a 429 is the proxy's own answer, in Stripe's error shape: no PaymentIntent is
    made, and the fault is counted."""
    proxy.use(FaultMix({"create": {fault: 1.0}}))
    key = str(uuid.uuid4())
    answer = create(proxy, key, card(localstripe, PAYS))
    assert answer.status_code == status and "error" in answer.json()
    assert made(localstripe, key) == []
    assert proxy.counts() == ({"create": 1}, {f"create {fault}": 1})


def test_a_reset_loses_the_answer_of_a_request_stripe_acted_on(
    proxy: StripeFaultProxy, localstripe: str
) -> None:
    """RESET: the request reaches localstripe (the PaymentIntent exists), the caller gets no
    answer, only a broken connection."""
    proxy.use(FaultMix({"create": {Fault.RESET: 1.0}}))
    key = str(uuid.uuid4())
    with pytest.raises(httpx.TransportError):
        create(proxy, key, card(localstripe, PAYS))
    assert made(localstripe, key) == ["requires_confirmation"]


def test_a_timeout_answers_after_the_caller_stopped_waiting(
    proxy: StripeFaultProxy, localstripe: str
) -> None:
    """TIMEOUT: the request reaches localstripe, its answer comes `late_by_s` later, past the
    caller's timeout."""
    proxy.use(FaultMix({"create": {Fault.TIMEOUT: 1.0}}, late_by_s=1.0))
    key = str(uuid.uuid4())
    with pytest.raises(httpx.ReadTimeout):
        create(proxy, key, card(localstripe, PAYS), timeout_s=0.3)
    assert made(localstripe, key) == ["requires_confirmation"]


def test_a_held_confirm_is_charged_and_answered_only_on_release(
    proxy: StripeFaultProxy, localstripe: str
) -> None:
    """After hold_confirms(), a confirm is forwarded (the PaymentIntent is charged) and its
    answer waits, counted as held, until release(); then it is answered as localstripe did."""
    key = str(uuid.uuid4())
    intent = create(proxy, key, card(localstripe, PAYS)).json()["id"]
    proxy.hold_confirms()
    answers: list[httpx.Response] = []
    confirm = threading.Thread(
        target=lambda: answers.append(
            httpx.post(
                f"{proxy.url}/v1/payment_intents/{intent}/confirm",
                auth=(API_KEY, ""),
                headers={"Idempotency-Key": f"{key}:confirm"},
                timeout=10,
            )
        )
    )
    confirm.start()
    deadline = time.monotonic() + 5
    while proxy.held() < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proxy.held() == 1 and made(localstripe, key) == ["succeeded"]
    assert answers == []
    proxy.release()
    confirm.join(5)
    assert answers[0].status_code == 200 and answers[0].json()["status"] == "succeeded"
    assert proxy.held() == 0
    assert proxy.counts() == ({"create": 1, "confirm": 1}, {"confirm hold": 1})
