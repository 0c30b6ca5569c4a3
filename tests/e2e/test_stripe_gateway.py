"""The Stripe gateway's refused API key through the real worker process: at start-up, and once
the worker runs (a proxy of the test's own in front of localstripe starts answering 401)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import httpx
import psycopg
import pytest

from payment_worker.devstack import localstripe as stripe_standin
from payment_worker.devstack.localstripe import PAYS
from payment_worker.testing import KafkaHarness, command_record
from tests.conftest import ARTIFACTS, DevServer, stripe_environment
from tests.e2e.conftest import WorkerProcess

pytestmark = pytest.mark.e2e

REFUSED_KEY = "sk_x"  # a key Stripe's format allows but localstripe refuses (sk_ + 1 character)
EXIT_LINE = "payment-worker: "  # how __main__ prints the error a command ends with
# What Stripe answers a request made with a revoked or unknown key.
_UNAUTHORIZED = (
    b'{"error": {"message": "Invalid API Key provided: sk_test_****", '
    b'"type": "invalid_request_error"}}'
)
# Hop-by-hop and framing headers: the proxy's own HTTP client sets them for each leg.
_NOT_RELAYED = frozenset(
    {"host", "content-length", "connection", "accept-encoding", "transfer-encoding"}
)


class KeyRevokingProxy:
    """An HTTP proxy to localstripe that passes every request on until `revoke()`, and from
    then answers each one 401, as Stripe does once a key has been rolled or revoked."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.revoked = threading.Event()
        self.refused = 0
        self._client = httpx.Client(base_url=upstream, timeout=10)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def revoke(self) -> None:
        self.revoked.set()

    def __enter__(self) -> KeyRevokingProxy:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._client.close()

    def _answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
        """localstripe's answer (status, content type, body), or the refusal once revoked."""
        if self.revoked.is_set():
            self.refused += 1
            return 401, "application/json", _UNAUTHORIZED
        relayed = {k: v for k, v in headers.items() if k.lower() not in _NOT_RELAYED}
        answer = self._client.request(method, path, headers=relayed, content=body)
        return answer.status_code, answer.headers.get("content-type", ""), answer.content

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Relay(BaseHTTPRequestHandler):
            def _relay(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, content_type, content = proxy._answer(
                    self.command, self.path, dict(self.headers.items()), body
                )
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = do_DELETE = _relay

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Relay


class StderrWorker(WorkerProcess):
    """A `payment-worker run` whose stderr is its log (what logs() reads), stdout kept apart."""

    def start(self) -> StderrWorker:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        with (
            self.log_path.open("ab") as stderr,
            self.log_path.with_suffix(".stdout").open("ab") as stdout,
        ):
            self.process = subprocess.Popen(
                [sys.executable, "-m", "payment_worker", self.command],
                env=self.env,
                stdout=stdout,
                stderr=stderr,
            )
        return self


def _exit_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(EXIT_LINE)]


def test_a_key_stripe_refuses_stops_the_worker_at_start_up_with_one_line(
    worker_env: dict[str, str], localstripe: str
) -> None:
    """A key Stripe answers 401 to ends `payment-worker run` before it takes any command:
    exit 1 and one line on stderr, naming PAYMENT_STRIPE_API_KEY."""
    env = {
        **os.environ,
        **worker_env,
        **stripe_environment(localstripe),
        "PAYMENT_STRIPE_API_KEY": REFUSED_KEY,
    }
    result = subprocess.run(
        [sys.executable, "-m", "payment_worker", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    named = [line for line in result.stderr.splitlines() if "PAYMENT_STRIPE_API_KEY" in line]
    assert named == _exit_lines(result.stderr), result.stderr[-3000:]
    assert len(named) == 1, result.stderr[-3000:]
    assert "partitions_assigned" not in result.stderr


def test_a_key_refused_while_running_stops_the_worker_declines_nobody_and_a_restart_charges(
    worker_env: dict[str, str],
    localstripe: str,
    devserver: DevServer,
    kafka: KafkaHarness,
    db: psycopg.Connection[Any],
) -> None:
    """A key Stripe starts refusing once the worker runs: the command being charged is not
    declined (no reply, no payment-failed event, its payment left pending) and not committed,
    and the worker exits 1 with one line naming PAYMENT_STRIPE_API_KEY. Restarted with a key
    Stripe takes, the worker gets the same command again and charges it: one SUCCEEDED reply,
    the same payment succeeded, one succeeded PaymentIntent."""
    customer = str(uuid.uuid4())
    cmd = command_record(
        customerId=customer,
        amount=Decimal("25.00"),
        paymentMethod=stripe_standin.card(localstripe, PAYS),
    )
    devserver.add_order(cmd["orderId"], customer, "25.00")
    # No reconciler within the test: only the redelivered command can finish the payment.
    unreconciled = {**worker_env, "PAYMENT_RECONCILE_AFTER_S": "3600"}

    with KeyRevokingProxy(localstripe) as proxy:
        refused = StderrWorker({**unreconciled, **stripe_environment(proxy.url)}).start()
        try:
            refused.wait_assigned()  # past the start-up check of the key, through the proxy
            proxy.revoke()
            kafka.send(cmd)
            assert refused.process is not None
            # Well before the 30 s drain deadline: nothing runs once the key is refused.
            assert refused.process.wait(20) == 1, refused.logs()[-3000:]
        finally:
            if refused.process is not None and refused.process.poll() is None:
                refused.kill()
        assert proxy.refused >= 1
    stderr = refused.logs()
    exit_lines = _exit_lines(stderr)
    assert len(exit_lines) == 1 and "PAYMENT_STRIPE_API_KEY" in exit_lines[0], stderr[-3000:]
    assert kafka.replies(command_id=cmd["commandId"], timeout_s=5) == []
    assert kafka.read(kafka.topics.failed) == []
    [(payment_id, status)] = db.execute(
        "SELECT id::text, status FROM payments WHERE order_id::text = %s", (cmd["orderId"],)
    ).fetchall()
    assert status == "pending"

    restarted = StderrWorker({**unreconciled, **stripe_environment(localstripe)}).start()
    try:
        restarted.wait_assigned()
        [reply] = kafka.replies(expect=1, command_id=cmd["commandId"])
    finally:
        restarted.stop()
    assert reply.record is not None
    assert reply.record["outcome"] == "SUCCEEDED", reply.record
    assert reply.record["payment"]["id"] == payment_id
    assert db.execute(
        "SELECT status FROM payments WHERE order_id::text = %s", (cmd["orderId"],)
    ).fetchall() == [("succeeded",)]
    intents = [
        intent
        for intent in stripe_standin.intents(localstripe)
        if intent["metadata"].get("payment_id") == payment_id
    ]
    assert [(i["id"], i["status"]) for i in intents] == [
        (reply.record["payment"]["transactionId"], "succeeded")
    ]
    assert kafka.read(kafka.topics.failed) == []
