"""Generated requests against the running shim: never a 500, always the documented body."""

from __future__ import annotations

import json
import re
import uuid

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from payment_worker.entrypoints.shim import PaymentResponse

pytestmark = pytest.mark.e2e

DOCUMENTED = {200, 400, 401, 404, 408, 409, 413, 422, 500, 503, 504}
LONE_SURROGATES = st.characters(categories=["Cs"])
ids = st.one_of(
    st.uuids().map(str),
    st.text(max_size=40),
    st.integers(),
    st.none(),
    st.just("00000000-0000-0000-0000-000000000000"),
)
amounts = st.one_of(
    st.decimals(allow_nan=False, allow_infinity=False, places=3).map(str),
    st.integers(min_value=-10, max_value=10**16),
    st.text(max_size=12),
    st.none(),
    st.booleans(),
    st.just("1e999"),
    st.just("1_000"),
    st.text(alphabet=st.characters(categories=["Nd", "No"]), min_size=1, max_size=6),
)
bodies = st.fixed_dictionaries(
    {},
    optional={
        "orderId": ids,
        "OrderId": ids,
        "customerId": ids,
        "reservationId": ids,
        "amount": amounts,
        "Amount": amounts,
        "currency": st.one_of(st.sampled_from(["USD", "eur", "XXX", "", "JPY"]), st.text()),
        "paymentMethod": st.one_of(
            st.text(max_size=60),
            st.just("4111 1111 1111 1111"),
            st.integers(),
            st.text(alphabet=LONE_SURROGATES, min_size=1, max_size=3),
        ),
        "extra": st.recursive(
            st.none() | st.booleans() | st.text(),
            lambda c: st.lists(c) | st.dictionaries(st.text(), c),
            max_leaves=5,
        ),
    },
)
raw_bodies = st.one_of(
    bodies.map(lambda b: json.dumps(b).encode()),
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.sampled_from([b"null", b"[]", b"{", b'{"amount": NaN}', b'{"amount": Infinity}', b"1"]),
    st.integers(1, 20_000).map(lambda depth: b"[" * depth + b"]" * depth),
)


@pytest.fixture
def stack(start_worker, start_shim):
    start_worker()
    return start_shim(PAYMENT_SHIM_REPLY_TIMEOUT_S="10")


def test_generated_requests_never_get_a_500_and_always_the_documented_body(stack):
    """A few hundred generated bodies: status documented in /openapi.json, never 500, and the
    body is always {success, payment, errorMessage}."""
    spec = httpx.get(stack.url + "/openapi.json").json()
    documented = {int(s) for s in spec["paths"]["/payments"]["post"]["responses"]}
    assert documented == DOCUMENTED
    client = httpx.Client(base_url=stack.url, timeout=30)
    seen: set[int] = set()

    @settings(
        max_examples=300,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        body=raw_bodies,
        key=st.one_of(
            st.none(),
            st.text(
                alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20
            ),
        ),
    )
    def check(body: bytes, key: str | None) -> None:
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Idempotency-Key"] = f"fuzz-{uuid.uuid4()}-{key}"
        response = client.post("/payments", content=body, headers=headers)
        seen.add(response.status_code)
        assert response.status_code != 500, (body, response.text)
        assert response.status_code in documented, (body, response.status_code)
        PaymentResponse.model_validate_json(response.text)

    check()
    assert 400 in seen


@pytest.mark.parametrize("field", ["amount", "paymentMethod"])
def test_generated_non_ascii_amounts_and_lone_surrogates_are_400(stack, field):
    """For a valid order and customer, an amount given as text that is not ASCII digits with
    an optional single '.' (underscores, digits of other scripts, spaces, exponents), or a
    lone surrogate in the payment method, is a 400 with the contract's message."""
    client = httpx.Client(base_url=stack.url, timeout=30)
    ascii_decimal = re.compile(r"[0-9]+(?:\.[0-9]+)?")
    values = (
        st.text(alphabet=st.sampled_from("0123456789._ e+-\u0660\u0661\uff11\u09e8\u00b2")).filter(
            lambda t: not ascii_decimal.fullmatch(t)
        )
        if field == "amount"
        else st.builds(
            lambda a, lone, b: a + lone + b,
            st.text(max_size=5),
            LONE_SURROGATES,
            st.text(max_size=5),
        )
    )
    message = "Amount must be greater than zero" if field == "amount" else "Invalid JSON"

    @settings(
        max_examples=100,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(value=values)
    def check(value: str) -> None:
        body = {"orderId": str(uuid.uuid4()), "customerId": str(uuid.uuid4()), "amount": "20.00"}
        body[field] = value
        response = client.post("/payments", content=json.dumps(body).encode())
        assert response.status_code == 400, (value, response.text)
        assert response.json()["errorMessage"].startswith(message), (value, response.text)

    check()
