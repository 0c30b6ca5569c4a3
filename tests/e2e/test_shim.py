"""The HTTP shim end to end: HTTP -> Kafka -> worker -> Kafka -> HTTP, real processes."""

from __future__ import annotations

import json
import socket
import ssl
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal

import httpx
import pytest

from payment_worker.devstack import localstripe as stripe_standin
from payment_worker.devstack.localstripe import DECLINED_AT_CHARGE, PAYS
from payment_worker.entrypoints.shim import PaymentResponse
from tests.conftest import stripe_environment
from tests.e2e.conftest import ShimProcess, own_stack

pytestmark = pytest.mark.e2e


def _order(devserver, amount: str = "20.00") -> dict[str, str]:
    order = {"orderId": str(uuid.uuid4()), "customerId": str(uuid.uuid4()), "amount": amount}
    devserver.add_order(order["orderId"], order["customerId"], amount)
    return order


def _post(shim, body: dict | bytes, key: str | None = None, timeout: float = 30) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    if isinstance(body, bytes):
        headers["Content-Type"] = "application/json"
        return httpx.post(shim.url + "/payments", content=body, headers=headers, timeout=timeout)
    return httpx.post(shim.url + "/payments", json=body, headers=headers, timeout=timeout)


def _raw(order: dict[str, str], pascal: bool = False) -> bytes:
    """The JSON body with the amount as a JSON number (not a string), and the order's
    paymentMethod when it has one."""
    names = ("OrderId", "CustomerId", "Amount") if pascal else ("orderId", "customerId", "amount")
    method = order.get("paymentMethod")
    extra = "" if method is None else f', "paymentMethod": {json.dumps(method)}'
    return (
        f'{{"{names[0]}": "{order["orderId"]}", "{names[1]}": "{order["customerId"]}", '
        f'"{names[2]}": {order["amount"]}{extra}}}'
    ).encode()


@pytest.fixture
def stack(shared_stack):
    """The module's worker and shim (each test's orders and keys are its own)."""
    return shared_stack


@pytest.fixture(scope="module")
def stripe_stack(broker, database_url, redis_url, devserver, localstripe) -> Iterator[ShimProcess]:
    """A worker charging through Stripe (localstripe) and a shim in front of it, for the
    module's tests that run on both gateways (each test's orders and keys are its own)."""
    stripe = stripe_environment(localstripe)
    with own_stack(broker, database_url, redis_url, devserver, **stripe) as shim:
        yield shim


@pytest.fixture
def gateway_stack(request, broker, gateway):
    """The module's worker and shim charging through the test's `gateway`, started by the
    first test that needs it (naming `broker` starts the broker before any test runs)."""
    return request.getfixturevalue("shared_stack" if gateway == "simulated" else "stripe_stack")


def test_health_and_openapi_describe_the_service(stack):
    """GET /health is the C# answer; /openapi.json documents POST /payments and its statuses."""
    health = httpx.get(stack.url + "/health")
    assert health.status_code == 200
    assert health.json() == {"status": "Healthy", "service": "Payment"}
    spec = httpx.get(stack.url + "/openapi.json").json()
    operation = spec["paths"]["/payments"]["post"]
    assert {"200", "400", "401", "404", "409", "422", "500", "503", "504"} <= set(
        operation["responses"]
    )
    assert any(p["name"] == "Idempotency-Key" for p in operation["parameters"])
    assert "payment_shim_requests_total" in httpx.get(stack.url + "/metrics").text


@pytest.mark.parametrize("pascal", [False, True], ids=["camelCase", "PascalCase"])
def test_a_payment_over_http_succeeds_with_exact_decimal_amount(stack, devserver, pascal):
    """POST /payments with either casing answers 200 and keeps 20.10 exactly (no float)."""
    order = _order(devserver, "20.10")
    response = _post(stack, _raw(order, pascal))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True and body["errorMessage"] is None
    assert body["payment"]["status"] == "succeeded"
    assert '"amount":20.10' in response.text
    assert body["payment"]["orderId"] == order["orderId"]


def test_bad_bodies_are_400_with_a_clear_message_never_500(stack):
    """Malformed JSON, wrong types and empty bodies are 400s in the contract body shape."""
    for raw, message in [
        (b"{not json", "Invalid JSON"),
        (b"[]", "Payment request must be a JSON object"),
        (b"", "Payment request is required"),
        (b'{"orderId": 12, "customerId": "x", "amount": 1}', "Valid OrderId is required"),
        (
            b'{"orderId": "'
            + str(uuid.uuid4()).encode()
            + b'", "customerId": "'
            + str(uuid.uuid4()).encode()
            + b'", "amount": NaN}',
            "Invalid JSON",
        ),
    ]:
        response = _post(stack, raw)
        assert response.status_code == 400, (raw, response.text)
        assert response.json()["errorMessage"].startswith(message), (raw, response.text)


def test_a_retried_request_with_the_same_idempotency_key_gets_the_same_payment(stack, devserver):
    """Same Idempotency-Key, same body: same payment, charged once."""
    order = _order(devserver)
    key = f"retry-{uuid.uuid4()}"
    first = _post(stack, _raw(order), key)
    second = _post(stack, _raw(order), key)
    assert first.status_code == second.status_code == 200
    assert first.json()["payment"]["id"] == second.json()["payment"]["id"]


def test_the_same_idempotency_key_with_another_body_is_a_conflict(stack, devserver):
    """Same Idempotency-Key, different amount: 409."""
    order = _order(devserver)
    key = f"conflict-{uuid.uuid4()}"
    assert _post(stack, _raw(order), key).status_code == 200
    response = _post(stack, _raw({**order, "amount": "21.00"}), key)
    assert response.status_code == 409
    assert response.json()["errorMessage"].startswith("Conflict: ")


def test_no_reply_in_time_is_504_and_the_same_request_is_answered_once_the_worker_is_back(
    start_worker, start_shim, devserver
):
    """Worker stopped: 504 telling to retry with the same key; after restart the retry is 200."""
    worker = start_worker()
    shim = start_shim(PAYMENT_SHIM_REPLY_TIMEOUT_S="3")
    worker.stop()
    order = _order(devserver)
    key = f"late-{uuid.uuid4()}"
    response = _post(shim, _raw(order), key)
    assert response.status_code == 504
    assert "Idempotency-Key" in response.json()["errorMessage"]
    start_worker()
    retried = _post(shim, _raw(order), key, timeout=30)
    assert retried.status_code == 200, retried.text
    assert retried.json()["success"] is True


def test_two_shims_each_get_only_their_own_replies(start_worker, start_shim, devserver):
    """Two shim processes in one group: every request on either is answered correctly."""
    start_worker()
    shims = [start_shim(), start_shim()]
    for shim in shims:
        shim.wait_ready()
    orders = [_order(devserver) for _ in range(20)]

    def call(i: int) -> tuple[str, httpx.Response]:
        return orders[i]["orderId"], _post(shims[i % 2], _raw(orders[i]))

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, range(20)))
    for order_id, response in results:
        assert response.status_code == 200, response.text
        assert response.json()["payment"]["orderId"] == order_id


def test_past_the_in_flight_limit_the_shim_answers_503_with_retry_after(
    start_worker, start_shim, devserver
):
    """More waiting requests than PAYMENT_SHIM_MAX_IN_FLIGHT: 503 + Retry-After, no crash."""
    worker = start_worker()
    # The six requests must all arrive while the first two still wait, hence the long timeout.
    # (CI once saw 3 x 504: the shim counted a request only after reading its body, so requests
    # arriving together all passed the check; tests/unit/test_shim_admission.py pins that.)
    shim = start_shim(PAYMENT_SHIM_MAX_IN_FLIGHT="2", PAYMENT_SHIM_REPLY_TIMEOUT_S="10")
    worker.stop()  # nobody answers: requests wait until their timeout
    orders = [_order(devserver) for _ in range(6)]
    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda o: _post(shim, _raw(o)), orders))
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(504) == 2, statuses
    assert statuses.count(503) == 4, statuses
    busy = next(r for r in responses if r.status_code == 503)
    assert busy.headers["Retry-After"] == "1"
    assert shim.process.poll() is None
    metrics = httpx.get(shim.url + "/metrics").text
    assert "payment_shim_waiting_replies 0.0" in metrics  # timed-out requests leave nothing
    assert "payment_shim_in_flight 0.0" in metrics


def test_an_oversized_body_is_413_and_a_long_idempotency_key_is_400(stack):
    """Request limits: body over 64 KiB is 413, Idempotency-Key over 255 characters is 400."""
    big = b'{"orderId": "' + b"x" * 70_000 + b'"}'
    assert _post(stack, big).status_code == 413
    response = _post(stack, b"{}", key="k" * 256)
    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["errorMessage"]


def test_an_ordering_outage_is_a_500_and_the_retry_with_the_same_key_succeeds(stack, devserver):
    """ERROR over HTTP: 500 with `Payment processing error: `; once Ordering is back, the same
    request (same Idempotency-Key) is processed again and succeeds."""
    order = _order(devserver)
    key = f"outage-{uuid.uuid4()}"
    devserver.fault("orders", status=503)
    try:
        response = _post(stack, _raw(order), key)
    finally:
        devserver.clear_faults()
    assert response.status_code == 500
    assert response.json()["errorMessage"].startswith("Payment processing error: ")
    retried = _post(stack, _raw(order), key)
    assert retried.status_code == 200, retried.text


def test_a_shim_with_api_keys_and_tls_answers_only_callers_with_a_key(
    start_worker, start_shim, devserver, db, tmp_path
):
    """PAYMENT_SHIM_TLS_* and PAYMENT_SHIM_API_KEYS on a real shim process: it serves https
    with a certificate our test CA signed; /health stays open; POST /payments without a key,
    or with a wrong one, is 401 with WWW-Authenticate and never becomes a command; /metrics is
    closed too (not public); either configured key gets the payment through."""
    from tests.pki import make_pki

    pki = make_pki(tmp_path / "pki")
    trust = ssl.create_default_context(cafile=pki.ca_file)
    keys = ["k-" + uuid.uuid4().hex, "k-" + uuid.uuid4().hex]
    start_worker()
    shim = start_shim(
        verify=trust,
        PAYMENT_SHIM_TLS_CERT_FILE=str(pki.server_cert),
        PAYMENT_SHIM_TLS_KEY_FILE=str(pki.server_key),
        PAYMENT_SHIM_API_KEYS=",".join(keys),
    )
    assert shim.url.startswith("https://")
    with httpx.Client(base_url=shim.url, verify=trust, timeout=30) as client:
        assert client.get("/health").status_code == 200
        order = _order(devserver)
        for headers in ({}, {"Authorization": "Bearer wrong-key-of-some-length"}):
            refused = client.post("/payments", json=order, headers=headers)
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"] == 'Bearer realm="payment-shim"'
            assert refused.json()["errorMessage"].startswith("Unauthorized")
        assert client.get("/metrics").status_code == 401
        assert client.get("/openapi.json").status_code == 401
        for key in keys:
            answer = client.post(
                "/payments", json=_order(devserver), headers={"Authorization": f"Bearer {key}"}
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["payment"]["status"] == "succeeded"
    refused_rows = db.execute(
        "SELECT count(*) FROM payments WHERE order_id = %s", (order["orderId"],)
    ).fetchone()
    assert refused_rows == (0,)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(shim.url + "/health", verify=ssl.create_default_context(cafile=pki.other_ca_file))


def test_a_missing_reply_topic_is_named_with_the_command_that_creates_it(start_shim):
    """The shim's replies topic does not exist: /health and POST /payments say 503, naming
    the topic and `payment-worker topics`, instead of only 'waiting for reply partitions'."""
    missing = f"payment-replies-missing-{uuid.uuid4().hex[:8]}"
    shim = start_shim(wait=False, PAYMENT_TOPIC_REPLIES=missing)
    expected = (
        f"waiting for reply partitions: topic {missing} does not exist"
        " (create it with `payment-worker topics`)"
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            health = httpx.get(shim.url + "/health", timeout=2)
            if health.json().get("reason") == expected:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, shim.logs()[-2000:]
        time.sleep(0.2)
    assert health.status_code == 503
    answer = httpx.post(shim.url + "/payments", json={}, timeout=5)
    assert (answer.status_code, answer.json()["errorMessage"]) == (
        503,
        f"Service not ready: {expected}",
    )
    assert shim.logs().count('"event": "topic_missing"') == 1


def _metric(shim, name: str) -> float:
    """The value of one sample of the shim's /metrics (0 when absent)."""
    for line in httpx.get(shim.url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def test_a_forged_reply_with_a_waiting_callers_correlation_id_never_answers_that_caller(
    start_worker, start_shim, devserver, broker, kafka
):
    """A hostile producer copies a waiting request's correlation-id, reply-to and
    reply-partition headers onto its own command for another order: the worker answers that
    command onto the caller's reply partition with the caller's correlation id, and the shim
    drops the reply (logged, counted as mismatched) instead of answering the caller with the
    other order's payment; the caller then gets the reply to its own command.

    The shim sends to a commands topic nobody consumes, so the forged reply is certainly the
    first one carrying the caller's correlation id; the test relays the caller's command to
    the worker only once the forged reply was dropped."""
    from tests.conftest import new_topics

    parked = new_topics(broker).commands  # the shim's commands wait here, unread
    start_worker()
    shim = start_shim(PAYMENT_TOPIC_COMMANDS=parked, PAYMENT_SHIM_REPLY_TIMEOUT_S="40")
    victim = _order(devserver, "20.00")
    other = _order(devserver, "35.00")  # the hostile producer's own order and customer
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(_post, shim, _raw(victim), None, 60)
        [sent] = kafka.read(parked, expect=1, decode="ProcessPayment")
        assert sent.record is not None and sent.record["orderId"] == victim["orderId"]
        copied = [
            (name, value)
            for name, value in sent.header_list
            if name in ("correlation-id", "reply-to", "reply-partition") and value is not None
        ]
        assert len(copied) == 3, sent.header_list
        kafka.send(
            {
                "commandId": str(uuid.uuid4()),
                "orderId": other["orderId"],
                "customerId": other["customerId"],
                "reservationId": None,
                "amount": Decimal(other["amount"]),
                "currency": "USD",
                "paymentMethod": "credit_card",
                "requestedAt": datetime.now(UTC),
            },
            headers=copied,
        )
        deadline = time.monotonic() + 30
        mismatched = 'payment_shim_replies_dropped_total{reason="mismatched"}'
        while _metric(shim, mismatched) < 1:
            assert not pending.done(), pending.result().text  # answered with the forged reply
            assert time.monotonic() < deadline, shim.logs()[-3000:]
            time.sleep(0.2)
        assert '"event": "reply_mismatched"' in shim.logs()
        relayed = [(name, value) for name, value in sent.header_list if value is not None]
        kafka.send(value=sent.value, key=sent.key, headers=relayed)  # the caller's own command
        response = pending.result(timeout=60)
    assert response.status_code == 200, response.text
    payment = response.json()["payment"]
    assert (payment["orderId"], payment["customerId"]) == (
        victim["orderId"],
        victim["customerId"],
    )
    assert _metric(shim, mismatched) == 1


def test_two_api_keys_sending_the_same_idempotency_key_are_two_commands(
    start_worker, start_shim, devserver, kafka
):
    """With API keys configured, the Idempotency-Key maps to a command per API key: a second
    caller using the first caller's key for its own order gets its own payment (not a 409 nor
    the first caller's payment), each caller's retry is still the same command, and no API key
    appears in any command record."""
    keys = ["caller-a-" + uuid.uuid4().hex, "caller-b-" + uuid.uuid4().hex]
    start_worker()
    shim = start_shim(PAYMENT_SHIM_API_KEYS=",".join(keys))
    shared = f"order-1-{uuid.uuid4()}"
    orders = [_order(devserver, "20.00"), _order(devserver, "30.00")]
    answers = []
    with httpx.Client(base_url=shim.url, timeout=30) as client:
        for api_key, order in [*zip(keys, orders, strict=True), (keys[0], orders[0])]:
            answers.append(
                client.post(
                    "/payments",
                    content=_raw(order),
                    headers={
                        "Authorization": f"Bearer {api_key}",
                        "Idempotency-Key": shared,
                        "Content-Type": "application/json",
                    },
                )
            )
    first, second, retried = answers
    for answer, order in [(first, orders[0]), (second, orders[1]), (retried, orders[0])]:
        assert answer.status_code == 200, answer.text
        assert answer.json()["payment"]["orderId"] == order["orderId"]
    assert retried.json()["payment"]["id"] == first.json()["payment"]["id"]
    commands = kafka.read(kafka.topics.commands, expect=3, decode="ProcessPayment")
    assert len({c.record["commandId"] for c in commands if c.record}) == 2
    for command in commands:
        raw = (command.value or b"") + b"".join(v or b"" for _, v in command.header_list)
        assert not any(k.encode() in raw for k in keys)


def test_slow_uploads_never_hold_an_in_flight_slot_and_are_cut_off_with_408(
    start_worker, start_shim, devserver
):
    """Many connections that send headers and part of a body, then nothing: a normal request
    is still answered 200 (with an in-flight limit of 2), and each slow one gets 408 within a
    bounded time (PAYMENT_SHIM_BODY_TIMEOUT_S) instead of waiting forever."""
    start_worker()
    shim = start_shim(PAYMENT_SHIM_MAX_IN_FLIGHT="2", PAYMENT_SHIM_BODY_TIMEOUT_S="4")
    slow = []
    started = time.monotonic()
    for _ in range(12):
        connection = socket.create_connection(("127.0.0.1", shim.port), timeout=20)
        connection.sendall(
            b"POST /payments HTTP/1.1\r\nHost: shim\r\nContent-Type: application/json\r\n"
            b"Content-Length: 200\r\n\r\n" + b'{"orderId": "'
        )
        slow.append(connection)
    time.sleep(0.5)  # every slow request is in the shim, reading its body
    response = _post(shim, _raw(_order(devserver)), timeout=10)
    assert response.status_code == 200, response.text
    for connection in slow:
        with connection:
            head = connection.recv(4096)
        assert head.startswith(b"HTTP/1.1 408 "), head
    assert time.monotonic() - started < 15
    assert _metric(shim, "payment_shim_body_timeouts_total") == 12
    assert _metric(shim, "payment_shim_in_flight") == 0


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("paymentMethod", "\ud800", "Invalid JSON in the request body"),
        ("paymentMethod", "card \udfff", "Invalid JSON in the request body"),
        ("currency", "\udbff", "Invalid JSON in the request body"),
        ("extra", ["\ud800"], "Invalid JSON in the request body"),
        ("amount", "1_000", "Amount must be greater than zero"),
        ("amount", "\u0661\u0660\u0660", "Amount must be greater than zero"),  # Arabic-Indic 100
        ("amount", "\uff11\uff10\uff10", "Amount must be greater than zero"),  # full-width 100
        ("amount", "1e3", "Amount must be greater than zero"),
        ("amount", " 20.00", "Amount must be greater than zero"),
        ("amount", "20.", "Amount must be greater than zero"),
        ("amount", "1.2.3", "Amount must be greater than zero"),
    ],
    ids=[
        "lone-high-surrogate",
        "lone-low-surrogate",
        "surrogate-currency",
        "surrogate-elsewhere",
        "underscore",
        "arabic-indic-digits",
        "full-width-digits",
        "exponent",
        "space",
        "trailing-dot",
        "two-dots",
    ],
)
def test_lone_surrogates_and_non_ascii_decimal_amounts_are_400(
    stack, devserver, field, value, message
):
    """A body whose strings hold a lone surrogate (escaped in JSON, as json.dumps writes it)
    is 400 Invalid JSON, not a 500 when the command is encoded; an amount given as text is
    only ASCII digits with an optional single '.' between digits, anything else is 400 (for
    an order that exists, so a wrongly accepted amount would not end as another 400)."""
    order = _order(devserver, "1000.00")
    body = json.dumps({**order, field: value}).encode()
    response = _post(stack, body)
    assert response.status_code == 400, response.text
    assert response.json()["errorMessage"].startswith(message), response.text


def test_deeply_nested_and_huge_bodies_are_400(stack):
    """Deeply nested JSON, a 5,000-digit integer and an exponent past any decimal context are
    400 with the contract's body, never a 500."""
    ids = f'"orderId": "{uuid.uuid4()}", "customerId": "{uuid.uuid4()}"'
    for raw in [
        b"[" * 30_000 + b"]" * 30_000,
        ("{" + ids + ', "extra": ' + "[" * 20_000 + "]" * 20_000 + "}").encode(),
        ("{" + ids + ', "amount": ' + "9" * 5000 + "}").encode(),
        ("{" + ids + ', "amount": 1e999999999999999999}').encode(),
        ("{" + ids + ', "amount": 1e-999999999999999999}').encode(),
    ]:
        response = _post(stack, raw)
        assert response.status_code == 400, (raw[:80], response.text)
        PaymentResponse.model_validate_json(response.text)


# Last in the module, its Stripe cases last: the Stripe stack, which stays up until the
# module ends, then runs beside the module's shared stack only (each worker holds 16
# PostgreSQL connections, and the server shared by the test processes allows 100).
@pytest.mark.parametrize(
    ("amount", "setup", "status", "prefix", "card"),
    [
        ("20.13", "order", 422, "Payment failed: ", DECLINED_AT_CHARGE),
        ("20.00", "none", 404, "Order not found", PAYS),
        ("20.00", "paid-state", 400, "Order validation failed: ", PAYS),
        ("20.00", "other-customer", 401, "Unauthorized: ", PAYS),
        ("0", "order", 400, "Amount must be greater than zero", PAYS),
    ],
    ids=["declined", "not-found", "order-invalid", "unauthorized", "invalid"],
)
@pytest.mark.parametrize("gateway", ["simulated", "stripe"])
def test_each_outcome_maps_to_its_http_status(
    request, gateway_stack, devserver, gateway, amount, setup, status, prefix, card
):
    """Contract section 4 statuses over HTTP, with the {success, payment, errorMessage} body,
    on either gateway: the simulator declines .13 cents; with Stripe the request names a pm_
    id as paymentMethod, and a card declined at charge is declined."""
    order = {"orderId": str(uuid.uuid4()), "customerId": str(uuid.uuid4()), "amount": amount}
    if gateway == "stripe":
        order["paymentMethod"] = stripe_standin.card(request.getfixturevalue("localstripe"), card)
    if setup == "order":
        devserver.add_order(order["orderId"], order["customerId"], amount)
    elif setup == "paid-state":
        devserver.add_order(order["orderId"], order["customerId"], amount, status="Paid")
    elif setup == "other-customer":
        devserver.add_order(order["orderId"], str(uuid.uuid4()), amount)
    response = _post(gateway_stack, _raw(order))
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"success", "payment", "errorMessage"}
    assert body["success"] is False
    assert body["errorMessage"].startswith(prefix)
