"""Running `payment-worker run` as a real process."""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg import sql

from payment_worker.devstack.broker import free_port
from payment_worker.service.messages import Topics
from payment_worker.testing import KafkaHarness
from tests.conftest import ARTIFACTS, DevServer, new_topics, worker_environment


class WorkerProcess:
    """One `python -m payment_worker COMMAND` (run, shim), logging to a file of its own."""

    def __init__(self, env: dict[str, str], name: str = "worker", command: str = "run") -> None:
        self.env = {**os.environ, **env}
        self.command = command
        self.log_path: Path = ARTIFACTS / f"{name}-{uuid.uuid4().hex[:8]}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "payment_worker", self.command],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return self

    def wait_assigned(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, self.logs()[-3000:]
            if "partitions_assigned" in self.logs():
                return
            time.sleep(0.1)
        raise AssertionError("worker got no partitions:\n" + self.logs()[-3000:])

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout_s: float = 60.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout_s)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)


@pytest.fixture
def start_worker(worker_env: dict[str, str]) -> Iterator[callable]:  # type: ignore[valid-type]
    started: list[WorkerProcess] = []

    def start(wait: bool = True, **overrides: str) -> WorkerProcess:
        worker = WorkerProcess({**worker_env, **overrides}).start()
        started.append(worker)
        if wait:
            worker.wait_assigned()
        return worker

    yield start
    for worker in started:
        if worker.process is not None and worker.process.poll() is None:
            worker.kill()


class ShimProcess(WorkerProcess):
    def __init__(self, env: dict[str, str], verify: ssl.SSLContext | bool = True) -> None:
        self.port = free_port()
        super().__init__({**env, "PAYMENT_SHIM_PORT": str(self.port)}, "shim", "shim")
        scheme = "https" if env.get("PAYMENT_SHIM_TLS_CERT_FILE") else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.verify = verify  # a CA file for a shim serving TLS

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, self.logs()[-3000:]
            try:
                answer = httpx.get(self.url + "/health", timeout=1, verify=self.verify)
                if answer.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("shim not ready:\n" + self.logs()[-3000:])


@pytest.fixture
def start_shim(worker_env: dict[str, str]) -> Iterator[callable]:  # type: ignore[valid-type]
    started: list[ShimProcess] = []
    group = f"payment-shim-{uuid.uuid4().hex[:8]}"

    def start(
        wait: bool = True, verify: ssl.SSLContext | bool = True, **overrides: str
    ) -> ShimProcess:
        shim = ShimProcess({**worker_env, "PAYMENT_SHIM_GROUP": group, **overrides}, verify)
        shim.start()
        started.append(shim)
        if wait:
            shim.wait_ready()
        return shim

    yield start
    for shim in started:
        if shim.process is not None and shim.process.poll() is None:
            shim.kill()


@dataclass
class OwnWorker:
    """A worker started on topics and a schema of its own (own_worker): what a test needs to
    send it commands and look at what it did."""

    env: dict[str, str]
    topics: Topics
    schema: str
    process: WorkerProcess


@contextlib.contextmanager
def own_worker(
    broker: str,
    database_url: str,
    redis_url: str,
    devserver: DevServer,
    **overrides: str,
) -> Iterator[OwnWorker]:
    """A worker (`overrides` added to its environment) on new topics and a new migrated
    schema, assigned its partitions; stopped, and its schema dropped, on leaving."""
    from payment_worker.adapters.postgres.migrations import migrate

    schema = f"t_{uuid.uuid4().hex[:12]}"
    migrate(database_url, schema)
    topics = new_topics(broker)
    env = {
        **worker_environment(broker, topics, schema, database_url, redis_url, devserver),
        **overrides,
    }
    worker = WorkerProcess(env).start()
    try:
        worker.wait_assigned()
        yield OwnWorker(env, topics, schema, worker)
    finally:
        if worker.process is not None and worker.process.poll() is None:
            worker.stop()
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@contextlib.contextmanager
def own_stack(
    broker: str, database_url: str, redis_url: str, devserver: DevServer, **overrides: str
) -> Iterator[ShimProcess]:
    """own_worker's worker and a shim in front of it, ready."""
    with own_worker(broker, database_url, redis_url, devserver, **overrides) as started:
        group = f"payment-shim-{uuid.uuid4().hex[:8]}"
        shim = ShimProcess({**started.env, "PAYMENT_SHIM_GROUP": group})
        try:
            shim.start()
            shim.wait_ready()
            yield shim
        finally:
            if shim.process is not None and shim.process.poll() is None:
                shim.stop()


@pytest.fixture(scope="module")
def shared_stack(
    broker: str, database_url: str, redis_url: str, devserver: DevServer
) -> Iterator[ShimProcess]:
    """One worker and one shim, on topics and a schema of their own, for a module's tests that
    only send payments for orders (and idempotency keys) of their own: starting the pair for
    each such test cost about 8 s a test."""
    with own_stack(broker, database_url, redis_url, devserver) as shim:
        yield shim


@pytest.fixture
def kafka(broker: str, topics: Topics) -> KafkaHarness:
    return KafkaHarness(broker, topics)


@pytest.fixture
def db(database_url: str, migrated_schema: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(migrated_schema)))
        yield conn
