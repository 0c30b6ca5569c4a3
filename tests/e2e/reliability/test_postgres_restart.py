"""The database restarted mid-stream (issue: reliability), on a PostgreSQL cluster of this
module's own: restarting the one every other test uses would break the tests running beside
this one."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.reliability.checks import assert_invariants, measure
from tests.e2e.reliability.conftest import scale
from tests.e2e.reliability.test_faults import _commands, _stream
from tests.postgres import PrivatePostgres

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PrivatePostgres]:
    cluster = PrivatePostgres(Path(tempfile.mkdtemp(prefix="payment-worker-pg-"))).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def database_url(private_postgres: PrivatePostgres) -> str:
    """This module's tests (their schema, their worker) use the private cluster."""
    return private_postgres.url


def test_postgresql_restarted_mid_stream(
    start_worker, kafka, devserver, db, topics, report, database_url, private_postgres
):
    """The database restarts while commands flow: the worker waits, retries and resumes;
    nothing is committed to Kafka that is not in the database."""
    import psycopg

    n = scale(300, 2000)
    commands = _commands(devserver, n)
    worker = start_worker(PAYMENT_GATEWAY_LATENCY_MS="20-80")
    producer = _stream(kafka, commands, rate=scale(100, 200))
    time.sleep(1.5)
    private_postgres.restart()
    producer.join()
    db_fresh = psycopg.connect(database_url, autocommit=True)
    db_fresh.execute(f"SET search_path TO {worker.env['PAYMENT_DB_SCHEMA']}")
    found = measure(db_fresh, kafka, topics, commands, report)
    report.notes["retries_logged"] = worker.logs().count("record_retry")
    assert_invariants(found)
    # Every reply on Kafka is backed by a ledger entry or is an answer that needs none.
    recorded = {
        r[0]
        for r in db_fresh.execute(
            "SELECT command_id::text FROM command_ledger WHERE state = 'final'"
        ).fetchall()
    }
    for reply in found["replies"]:
        if reply.record["outcome"] in ("SUCCEEDED", "DECLINED"):
            assert reply.record["commandId"] in recorded
    db_fresh.close()
