"""Operations end to end, real processes: one payment's trace across the shim and the worker
(exported over OTLP/HTTP to a receiver here), `payment-worker status` in each exit state, and
the worker's pending gauges while the gateway hangs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from payment_worker.devstack.broker import free_port
from payment_worker.testing import command_record

pytestmark = pytest.mark.e2e

TRACE_ID = uuid.uuid4().hex
CALLER_SPAN = uuid.uuid4().hex[:16]
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN}-01"


class OtlpReceiver:
    """An OTLP/HTTP trace receiver (POST /v1/traces, protobuf): every span it is sent, with its
    process's service.name."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                for resource_spans in request.resource_spans:
                    service = next(
                        a.value.string_value
                        for a in resource_spans.resource.attributes
                        if a.key == "service.name"
                    )
                    for scope in resource_spans.scope_spans:
                        for span in scope.spans:
                            receiver.spans.append(
                                {
                                    "service": service,
                                    "name": span.name,
                                    "trace_id": span.trace_id.hex(),
                                    "span_id": span.span_id.hex(),
                                    "parent": span.parent_span_id.hex(),
                                    "attributes": {
                                        a.key: a.value.string_value or a.value.int_value
                                        for a in span.attributes
                                    },
                                }
                            )
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def of_trace(self, trace_id: str) -> list[dict[str, Any]]:
        return [s for s in self.spans if s["trace_id"] == trace_id]


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    found = OtlpReceiver()
    yield found
    found.server.shutdown()


def _traced(receiver: OtlpReceiver) -> dict[str, str]:
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        # Every command recorded, whatever sampler the caller's environment names.
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
    }


def test_one_payment_is_one_trace_across_the_shim_and_the_worker(
    receiver, start_worker, start_shim, devserver, kafka, topics
):
    """POST /payments with a traceparent: under its trace id, the shim's server span (a child of
    the caller's), the worker's process span (the shim's child) with children for the order and
    reservation GETs, the lock, the gateway and the database steps; the reply and the event
    carry that trace id and the process span's id (no span of their own). No card number
    anywhere."""
    start_worker(**_traced(receiver))
    shim = start_shim(**_traced(receiver))
    order, customer, reservation = (str(uuid.uuid4()) for _ in range(3))
    devserver.add_order(order, customer, "30.00")
    devserver.add_reservation(reservation, customer)
    response = httpx.post(
        shim.url + "/payments",
        json={"orderId": order, "customerId": customer, "reservationId": reservation, "amount": 30},
        headers={"traceparent": TRACEPARENT, "tracestate": "caller=1"},
        timeout=30,
    )
    assert response.status_code == 200, response.text

    wanted = {
        "POST /payments",
        f"{topics.commands} process",
        "GET /orders/{orderId}",
        "GET /reservations/{reservationId}",
        "order-lock acquire",
        "gateway charge",
        "postgresql begin_payment",
        "postgresql finish_payment",
    }
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        spans = {s["name"]: s for s in receiver.of_trace(TRACE_ID)}
        if wanted <= spans.keys():
            break
        time.sleep(0.2)
    assert wanted <= spans.keys(), sorted(spans)

    server, process = spans["POST /payments"], spans[f"{topics.commands} process"]
    assert server["service"] == "payment-shim" and server["parent"] == CALLER_SPAN
    assert process["service"] == "payment-worker"
    assert process["attributes"]["payment.order_id"] == order
    assert process["attributes"]["payment.outcome"] == "SUCCEEDED"
    by_id = {s["span_id"]: s for s in receiver.of_trace(TRACE_ID)}

    def ancestors(span: dict[str, Any]) -> list[str]:
        chain = []
        while span["parent"] in by_id:
            span = by_id[span["parent"]]
            chain.append(span["name"])
        return chain

    assert "POST /payments" in ancestors(process)
    for child in wanted - {"POST /payments", f"{topics.commands} process"}:
        assert f"{topics.commands} process" in ancestors(spans[child]), child

    reply = kafka.replies(expect=1)[0]
    event = kafka.read(topics.succeeded, expect=1)[0]
    for record in (reply, event):
        _, trace_id, span_id, _ = record.headers["traceparent"].decode().split("-")
        assert (trace_id, span_id) == (TRACE_ID, process["span_id"])
    assert not [s["name"] for s in receiver.of_trace(TRACE_ID) if s["name"].endswith(" publish")]
    assert "4111" not in json.dumps(receiver.spans)


def _status(env: dict[str, str], *flags: str) -> tuple[int, dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "payment_worker", "status", "--json", *flags],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else {}


def test_status_exits_0_healthy_1_past_a_threshold_and_2_when_unreachable(
    start_worker, worker_env, kafka, topics
):
    """A worker that answered its commands: 0. The worker stopped (SIGSTOP) while 3 commands
    arrive on partition 0: `--max-lag 2` says 1 and names the partition, with the lag per
    partition in the JSON. The broker or the database unreachable, the schema not migrated or
    the topic missing: 2."""
    worker = start_worker()
    kafka.send(command_record(), partition=0)
    kafka.replies(expect=1)
    # The four unreachable cases depend on nothing below (each mostly waits out a connection
    # timeout): they run meanwhile, and are checked at the end.
    unreachable = {
        "kafka": {**worker_env, "PAYMENT_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"},
        "postgresql": {
            **worker_env,
            "PAYMENT_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/test",
        },
        "schema": {**worker_env, "PAYMENT_DB_SCHEMA": "never_migrated"},
        "topic": {**worker_env, "PAYMENT_TOPIC_COMMANDS": "no-such-topic"},
    }
    with ThreadPoolExecutor(len(unreachable)) as pool:
        pending = {name: pool.submit(_status, env) for name, env in unreachable.items()}
        _status_healthy_then_past_a_threshold(worker, worker_env, kafka, topics)
        answers = {name: future.result() for name, future in pending.items()}
    code, report = answers["kafka"]
    assert code == 2 and report["unreachable"][0].startswith("kafka:")
    code, report = answers["postgresql"]
    assert code == 2 and report["unreachable"][0].startswith("postgresql:")
    code, report = answers["schema"]
    assert code == 2 and report["unreachable"][0].startswith("postgresql:")
    code, report = answers["topic"]
    assert code == 2 and report["unreachable"][0].startswith("kafka:")


def _status_healthy_then_past_a_threshold(worker, worker_env, kafka, topics) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        code, report = _status(worker_env)
        if code == 0 and report["total_lag"] == 0:
            break
        time.sleep(0.5)
    assert (code, report["status"]) == (0, "healthy"), report
    table = subprocess.run(
        [sys.executable, "-m", "payment_worker", "status"],
        env={**os.environ, **worker_env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert table.returncode == 0
    assert f"consumer group {worker_env['PAYMENT_CONSUMER_GROUP']}" in table.stdout
    assert "healthy: nothing past a threshold" in table.stdout

    worker.process.send_signal(signal.SIGSTOP)
    try:
        for _ in range(3):
            kafka.send(command_record(), partition=0)
        code, report = _status(worker_env, "--max-lag", "2")
    finally:
        worker.process.send_signal(signal.SIGCONT)
    lag = {p["partition"]: p["lag"] for p in report["partitions"]}
    assert code == 1 and report["status"] == "past_threshold"
    assert lag[0] == 3 and set(lag) == {0, 1, 2, 3}
    assert report["problems"] == [f"{topics.commands}[0]: 3 records behind (over 2)"]


def _metric(url: str, name: str) -> float:
    for line in httpx.get(url, timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not on {url}")


def test_the_workers_pending_gauges_grow_while_the_gateway_hangs(start_worker, kafka, devserver):
    """Gateway latency 60 s: the worker's /metrics shows the payment pending, and its age growing
    from one sample to the next."""
    port = free_port()
    start_worker(PAYMENT_GATEWAY_LATENCY_MS="60000", PAYMENT_METRICS_PORT=str(port))
    record = command_record()
    devserver.add_order(record["orderId"], record["customerId"], "10.50")
    kafka.send(record)
    url = f"http://127.0.0.1:{port}/metrics"
    ages = []
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and len(set(ages)) < 2:
        if _metric(url, "payment_worker_pending_payments") == 1:
            age = _metric(url, "payment_worker_pending_oldest_age_seconds")
            if not ages or age != ages[-1]:
                ages.append(age)
        time.sleep(0.5)
    assert len(ages) >= 2 and ages[1] > ages[0] > 0, ages
