"""The worker's lifecycle and operations: start-up waits, health and metrics, the reconciler."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from decimal import Decimal

import httpx
import pytest

from payment_worker.devstack.broker import free_port
from payment_worker.testing import command_record

pytestmark = pytest.mark.e2e


def test_a_broker_that_is_down_at_start_is_waited_for_with_a_log_line(start_worker):
    """No broker: the worker logs that it waits (no traceback) and exits 0 on SIGTERM."""
    worker = start_worker(wait=False, PAYMENT_KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}")
    deadline = time.monotonic() + 20
    while "waiting_for_dependency" not in worker.logs():
        assert time.monotonic() < deadline, worker.logs()[-2000:]
        time.sleep(0.1)
    assert '"dependency": "kafka"' in worker.logs()
    assert worker.stop() == 0
    assert "Traceback" not in worker.logs()


def records(worker) -> list[dict]:
    """The worker's log lines, each one JSON object (anything else fails here)."""
    return [json.loads(line) for line in worker.logs().splitlines() if line.strip()]


def test_a_database_that_is_down_at_start_is_said_once_by_variable_and_host(start_worker):
    """No database for 12 s: one `waiting_for_dependency` line naming PAYMENT_DATABASE_URL,
    host:port (the password masked), the last error and the real retry interval; no flood of
    psycopg pool lines; no traceback; exit 0 on SIGTERM."""
    port = free_port()
    worker = start_worker(
        wait=False, PAYMENT_DATABASE_URL=f"postgresql://postgres:s3cr3t-pw@127.0.0.1:{port}/test"
    )
    time.sleep(12)
    assert worker.stop() == 0
    lines = records(worker)
    waiting = [r for r in lines if r["event"] == "waiting_for_dependency"]
    assert len(waiting) == 1, waiting
    assert waiting[0]["dependency"] == "postgresql"
    assert waiting[0]["variable"] == "PAYMENT_DATABASE_URL"
    assert waiting[0]["target"] == f"127.0.0.1:{port}/test"
    assert "refused" in waiting[0]["error"].lower()
    assert waiting[0]["retry_every_s"] == 2.0
    assert sum(1 for r in lines if r.get("logger") == "psycopg.pool") <= 2
    assert "s3cr3t-pw" not in worker.logs()
    assert "Traceback" not in worker.logs()


def test_missing_topics_are_named_with_the_command_that_creates_them(
    start_worker, worker_env, broker
):
    """The worker's topics do not exist: it says which, and `payment-worker topics`, once;
    once they are created it goes on and gets its partitions."""
    suffix = uuid.uuid4().hex[:8]
    names = {
        f"PAYMENT_TOPIC_{kind}": f"{kind.lower()}-{suffix}"
        for kind in ("COMMANDS", "SUCCEEDED", "FAILED", "REPLIES", "DLQ")
    }
    worker = start_worker(wait=False, **names)
    deadline = time.monotonic() + 30
    while "waiting_for_dependency" not in worker.logs():
        assert time.monotonic() < deadline, worker.logs()[-2000:]
        time.sleep(0.2)
    [waiting] = [r for r in records(worker) if r["event"] == "waiting_for_dependency"]
    assert waiting["dependency"] == "kafka topics"
    assert names["PAYMENT_TOPIC_COMMANDS"] in waiting["error"]
    assert "`payment-worker topics`" in waiting["error"]
    created = subprocess.run(
        [sys.executable, "-m", "payment_worker", "topics"],
        env={**os.environ, **worker_env, **names, "PAYMENT_TOPIC_PARTITIONS": "2"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert created.returncode == 0, created.stderr
    assert created.stdout.count(" created  2 partitions") == 5
    worker.wait_assigned(60)
    assert any(r["event"] == "dependency_ready" for r in records(worker))
    assert worker.stop() == 0


def test_redis_unreachable_at_start_is_one_warning_saying_what_degrades(start_worker):
    """Redis down at start-up: the worker runs, and says once, by variable, what it does without
    it."""
    worker = start_worker(PAYMENT_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    assert worker.stop() == 0
    [warning] = [r for r in records(worker) if r["event"] == "redis_unreachable"]
    assert warning["variable"] == "PAYMENT_REDIS_URL"
    assert "no per-order lock" in warning["degrades"]


def test_health_and_metrics_are_served_on_the_metrics_port(start_worker, kafka, devserver):
    """/health says ready once partitions are assigned; /metrics counts outcomes and more."""
    port = free_port()
    start_worker(PAYMENT_METRICS_PORT=str(port))
    health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
    assert health.status_code == 200 and health.json()["status"] == "Healthy"
    customer = str(uuid.uuid4())
    cmd = command_record(customerId=customer, amount=Decimal("5.00"))
    devserver.add_order(cmd["orderId"], customer, "5.00")
    kafka.send(cmd)
    kafka.send(value=b"garbage", key=b"k")
    kafka.replies(expect=1)
    deadline = time.monotonic() + 10
    text = ""
    while time.monotonic() < deadline:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        if 'payment_worker_dead_letters_total{reason="undecodable"} 1.0' in text:
            break
        time.sleep(0.2)
    assert 'payment_worker_commands_total{duplicate="false",outcome="SUCCEEDED"} 1.0' in text
    assert 'payment_worker_dead_letters_total{reason="undecodable"} 1.0' in text
    for name in (
        "payment_worker_processing_seconds_bucket",
        "payment_worker_outbox_backlog",
        "payment_worker_redis_degraded_total",
    ):
        assert name in text


def test_a_payment_left_pending_by_a_lost_command_is_finished_by_the_reconciler(
    start_worker, kafka, db, topics
):
    """A pending payment older than PAYMENT_RECONCILE_AFTER_S whose command never comes back is
    charged with its own payment id, finalized, announced and answered."""
    payment_id, order_id, customer_id, command_id = (uuid.uuid4() for _ in range(4))
    route = {
        "topic": topics.replies,
        "partition": None,
        "correlation_id": "lost-1",
        "spring_correlation_id": None,
        "spring_reply_topic": None,
        "spring_reply_partition": None,
        "traceparent": None,
    }
    db.execute(
        "INSERT INTO payments (id, order_id, customer_id, amount, currency, payment_method, "
        "status, created_at, command_id) VALUES (%s, %s, %s, 12.00, 'USD', 'credit_card', "
        "'pending', now() - interval '10 minutes', %s)",
        (payment_id, order_id, customer_id, command_id),
    )
    db.execute(
        "INSERT INTO command_ledger (command_id, order_id, customer_id, amount, currency, state, "
        "payment_id, reply_route) VALUES (%s, %s, %s, 12.00, 'USD', 'in_progress', %s, %s)",
        (command_id, order_id, customer_id, payment_id, json.dumps(route)),
    )
    start_worker(PAYMENT_RECONCILE_AFTER_S="1")
    [reply] = kafka.replies(expect=1)
    assert reply.record["correlationId"] == "lost-1"
    assert reply.record["outcome"] == "SUCCEEDED"
    assert reply.record["payment"]["id"] == str(payment_id)
    status, txn = db.execute(
        "SELECT status, transaction_id FROM payments WHERE id = %s", (payment_id,)
    ).fetchone()
    assert status == "succeeded" and txn.startswith("txn_")
    [event] = kafka.read(topics.succeeded, expect=1, decode="PaymentSucceeded")
    assert event.record["paymentId"] == str(payment_id)
    state = db.execute(
        "SELECT state, outcome FROM command_ledger WHERE command_id = %s", (command_id,)
    ).fetchone()
    assert state == ("final", "SUCCEEDED")


@pytest.mark.parametrize("command", [["run"], ["replay", "--dry-run"]])
def test_run_and_replay_refuse_a_schema_older_than_the_code(
    worker_env: dict[str, str], database_url: str, migrated_schema: str, command: list[str]
) -> None:
    """One line naming `payment-worker migrate`, exit 1, before any record is read."""
    import psycopg

    from payment_worker.adapters.postgres.migrations import latest_version

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            f'DELETE FROM "{migrated_schema}".schema_migrations WHERE version = %s',
            (latest_version(),),
        )
    result = subprocess.run(
        [sys.executable, "-m", "payment_worker", *command],
        env={**os.environ, **worker_env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if "migrate" in line]
    assert len(lines) == 1 and "run `payment-worker migrate` first" in lines[0], result.stderr
