"""Fixtures on the machine's real services: PostgreSQL, Redis, a local Apache Kafka broker and the
development Ordering/Inventory server. Every test gets its own schema, topics and group."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql

from payment_worker.adapters.kafka import ensure_topics
from payment_worker.devstack import localstripe as stripe_standin
from payment_worker.devstack.broker import Broker, free_port, local_broker, port_open
from payment_worker.service.messages import Topics
from tests import containers

ROOT = Path(__file__).resolve().parents[1]
# The processes started here export no traces unless a test (or the caller) asks for them.
os.environ.setdefault("OTEL_TRACES_EXPORTER", "none")
DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ARTIFACTS = ROOT / ".devstack" / "test-logs"
# A run spread over processes (`make test`: pytest -n 2) starts its broker once, in the process
# that spreads it, and names it here for the others.
_SHARED_BROKER = "PAYMENT_TEST_SHARED_BROKER"


def _spreading(config: pytest.Config) -> bool:
    """This process hands the tests out to others (pytest -n N, N > 0)."""
    return not hasattr(config, "workerinput") and bool(getattr(config.option, "numprocesses", 0))


def _needs_services(config: pytest.Config) -> bool:
    """Anything but the unit tests was asked for (no path at all: everything)."""
    unit = ROOT / "tests" / "unit"
    paths = [Path(arg.split("::")[0]).resolve() for arg in config.args] or [ROOT]
    return any(not path.is_relative_to(unit) for path in paths)


def pytest_sessionstart(session: pytest.Session) -> None:
    """PAYMENT_TEST_CONTAINERS=1 without a Docker engine stops the run here, in one line. A
    spread run starts the broker here, before its processes, and names it in its first line."""
    try:
        if containers.wanted():
            containers.docker_client()
    except containers.ContainersUnavailable as exc:
        raise pytest.UsageError(str(exc)) from None
    if _spreading(session.config) and not containers.wanted() and _needs_services(session.config):
        _start_broker(session.config)
        assert _BROKER is not None
        os.environ[_SHARED_BROKER] = _BROKER.bootstrap


@pytest.fixture(scope="session")
def infrastructure() -> Iterator[containers.Containers | None]:
    """Kafka, PostgreSQL and Redis containers when PAYMENT_TEST_CONTAINERS=1; else None (the
    local services and the local broker)."""
    if not containers.wanted():
        yield None
        return
    running = containers.start_containers()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def database_url(infrastructure: containers.Containers | None) -> str:
    url = infrastructure.database_url if infrastructure else DATABASE_URL
    try:
        psycopg.connect(url, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {url} ({exc}); `make services`")
    return url


@pytest.fixture(scope="session")
def redis_url(infrastructure: containers.Containers | None) -> str:
    return infrastructure.redis_url if infrastructure else REDIS_URL


@pytest.fixture
def db_schema(database_url: str) -> Iterator[str]:
    """A fresh schema name for this test, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def migrated_schema(database_url: str, db_schema: str) -> str:
    from payment_worker.adapters.postgres.migrations import migrate

    migrate(database_url, db_schema)
    return db_schema


_BROKER: Broker | None = None


def pytest_collection_finish(session: pytest.Session) -> None:
    """When a collected test needs the broker, start it now and name it in the run's first line,
    so a log shows what was proven on (a spread run's processes use the one started for them)."""
    if containers.wanted() or os.environ.get(_SHARED_BROKER):
        return
    if any("broker" in item.fixturenames for item in session.items):
        _start_broker(session.config)


def _start_broker(config: pytest.Config) -> None:
    global _BROKER
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    data = Path(tempfile.mkdtemp(prefix="kafka-", dir=ARTIFACTS))
    _BROKER = local_broker(log_path=ARTIFACTS / "broker.log", data_dir=data).start()
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"broker: {_BROKER.describe()}")


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _BROKER is not None:
        _BROKER.stop()
        if _BROKER.data_dir is not None:
            shutil.rmtree(_BROKER.data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def broker(infrastructure: containers.Containers | None) -> str:
    """The session's broker: 127.0.0.1:PORT (or the Kafka container)."""
    if infrastructure is not None:
        return infrastructure.bootstrap
    if os.environ.get(_SHARED_BROKER):
        return os.environ[_SHARED_BROKER]
    assert _BROKER is not None, "the broker starts when a collected test needs it"
    return _BROKER.bootstrap


@pytest.fixture
def topics(broker: str) -> Topics:
    """Topics of this test only (commands with 4 partitions), created on the broker."""
    return new_topics(broker)


def new_topics(broker: str) -> Topics:
    """Topics no other test uses (commands with 4 partitions), created on the broker."""
    suffix = uuid.uuid4().hex[:8]
    names = Topics(
        commands=f"process-payment-{suffix}",
        succeeded=f"payment-succeeded-{suffix}",
        failed=f"payment-failed-{suffix}",
        replies=f"payment-replies-{suffix}",
        dlq=f"process-payment-dlq-{suffix}",
    )
    ensure_topics(
        {"bootstrap.servers": broker},
        {
            names.commands: 4,
            names.succeeded: 2,
            names.failed: 2,
            names.replies: 2,
            names.dlq: 1,
        },
    )
    return names


class DevServer:
    def __init__(self, url: str) -> None:
        self.url = url
        # Idle connections expire before the server's keep-alive timeout (uvicorn: 5 s), so a
        # request never goes out on a connection the server is closing at that moment.
        self.client = httpx.Client(
            base_url=url, timeout=5, limits=httpx.Limits(keepalive_expiry=2.0)
        )

    def add_order(
        self,
        order_id: str,
        customer_id: str,
        amount: str,
        *,
        status: str = "Pending",
        currency: str = "USD",
        **extra: Any,
    ) -> None:
        body = {
            "id": order_id,
            "customerId": customer_id,
            "status": status,
            "totalAmount": amount,
            "currency": currency,
            **extra,
        }
        self.client.post("/admin/orders", json=body).raise_for_status()

    def add_raw(self, kind: str, resource_id: str, body: bytes) -> None:
        """Have GET /{kind}/{resource_id} (orders or reservations) answer `body` verbatim."""
        self.client.post(f"/admin/raw/{kind}/{resource_id}", content=body).raise_for_status()

    def add_reservation(
        self,
        reservation_id: str,
        customer_id: str,
        *,
        status: str = "Active",
        expires_at: str = "2099-01-01T00:00:00Z",
    ) -> None:
        body = {
            "id": reservation_id,
            "customerId": customer_id,
            "status": status,
            "expiresAt": expires_at,
        }
        self.client.post("/admin/reservations", json=body).raise_for_status()

    def fault(
        self, kind: str, status: int = 503, count: int = -1, delay_ms: int = 0, every: int = 1
    ) -> None:
        """Inject a fault: `status` (0: answer normally) after `delay_ms`, on every `every`-th
        request, `count` times (-1: until cleared)."""
        spec = {"status": status, "count": count, "delay_ms": delay_ms, "every": every}
        self.client.post("/admin/faults", json={kind: spec}).raise_for_status()

    def clear_faults(self) -> None:
        self.client.delete("/admin/faults").raise_for_status()

    def stats(self) -> dict[str, int]:
        return dict(self.client.get("/admin/stats").json())


@pytest.fixture(scope="session")
def devserver() -> Iterator[DevServer]:
    """The development Ordering/Inventory server, in its own process."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = open(ARTIFACTS / "devserver.log", "ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "payment_worker.devstack.services", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 20
    while not port_open("127.0.0.1", port):
        assert process.poll() is None, "devstack services exited"
        assert time.monotonic() < deadline, "devstack services did not start"
        time.sleep(0.05)
    server = DevServer(f"http://127.0.0.1:{port}")
    yield server
    process.terminate()
    process.wait(10)
    log.close()


@pytest.fixture(scope="session")
def localstripe() -> Iterator[str]:
    """localstripe (a stateful Stripe stand-in that keeps Idempotency-Key as Stripe does,
    payment_worker/devstack/localstripe.py) in its own process: its URL."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    port = free_port()
    logs = ARTIFACTS / f"localstripe-{port}.log"
    process = stripe_standin.start(port, logs)
    url = f"http://127.0.0.1:{port}"
    try:
        stripe_standin.wait_until_answering(url, process, logs)
        yield url
    finally:
        stripe_standin.stop(process)


def stripe_environment(api_base: str) -> dict[str, str]:
    """What a `payment-worker run` needs to charge through the Stripe gateway at `api_base`."""
    return {
        "PAYMENT_GATEWAY": "stripe",
        "PAYMENT_STRIPE_API_KEY": stripe_standin.API_KEY,
        "PAYMENT_STRIPE_API_BASE": api_base,
    }


@pytest.fixture
def worker_env(
    broker: str,
    topics: Topics,
    migrated_schema: str,
    database_url: str,
    redis_url: str,
    devserver: DevServer,
) -> dict[str, str]:
    """The environment of a `payment-worker run` for this test."""
    return worker_environment(broker, topics, migrated_schema, database_url, redis_url, devserver)


def worker_environment(
    broker: str,
    topics: Topics,
    schema: str,
    database_url: str,
    redis_url: str,
    devserver: DevServer,
) -> dict[str, str]:
    """The environment of a `payment-worker run` on these topics and this schema."""
    return {
        "PAYMENT_KAFKA_BOOTSTRAP_SERVERS": broker,
        "PAYMENT_DATABASE_URL": database_url,
        "PAYMENT_DB_SCHEMA": schema,
        "PAYMENT_REDIS_URL": redis_url,
        "PAYMENT_ORDERING_URL": devserver.url,
        "PAYMENT_INVENTORY_URL": devserver.url,
        "PAYMENT_GATEWAY_LATENCY_MS": "0",
        "PAYMENT_TOPIC_COMMANDS": topics.commands,
        "PAYMENT_TOPIC_SUCCEEDED": topics.succeeded,
        "PAYMENT_TOPIC_FAILED": topics.failed,
        "PAYMENT_TOPIC_REPLIES": topics.replies,
        "PAYMENT_TOPIC_DLQ": topics.dlq,
        "PAYMENT_CONSUMER_GROUP": f"payment-worker-{uuid.uuid4().hex[:8]}",
        "PAYMENT_HTTP_RETRY_BUDGET_S": "2",
    }
