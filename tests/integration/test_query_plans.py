"""The batch steps read by key whatever the statistics say (sql/003_key_lookup_plans.sql).

A connection caches its plans while the tables are nearly empty; the tables then grow (a new
deployment fills up faster than autovacuum analyzes it). The next batch must still read about
one row per key, not the whole tables: with the plans of 002 it read every succeeded payment
and every ledger entry, and PostgreSQL's CPU per payment grew with the table.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from payment_worker.adapters.postgres import PostgresStore, make_pool
from payment_worker.domain.model import Outcome
from tests.integration.support import ROUTE, ledger_fields, message, pending_payment, succeeded

pytestmark = pytest.mark.integration

GROWTH = 3000  # rows added to each table after the plans were cached


async def _pay(store: PostgresStore, count: int) -> None:
    """`count` commands at once through the steps the worker runs for a new payment."""

    async def one() -> None:
        payment = pending_payment()
        await store.snapshot(payment.command_id, payment.order_id)
        await store.begin_payment(payment, ledger_fields(payment), ROUTE)
        final = succeeded(payment)
        await store.finish_payment(
            final, Outcome.SUCCEEDED, None, [message("event", payment_id=payment.id), message()]
        )

    await asyncio.gather(*(one() for _ in range(count)))


def _rows_read(db: psycopg.Connection[Any]) -> int:
    db.execute("SELECT pg_stat_clear_snapshot()")
    row = db.execute(
        "SELECT sum(coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)) "
        "FROM pg_stat_user_tables "
        "WHERE schemaname = current_schema() AND relname IN ('payments', 'command_ledger')"
    ).fetchone()
    assert row is not None
    return int(row[0] or 0)


async def _flush_stats(pool: AsyncConnectionPool) -> None:
    async with pool.connection() as conn:
        await conn.execute("SELECT pg_stat_force_next_flush()")
    async with pool.connection() as conn:  # the flush happens when this transaction ends
        await conn.execute("SELECT 1")


async def test_a_batch_reads_one_row_per_key_after_the_tables_grew_under_cached_plans(
    database_url: str, migrated_schema: str, db: psycopg.Connection[Any]
) -> None:
    pool = make_pool(database_url, migrated_schema, min_size=1, max_size=1)
    await pool.open(wait=True, timeout=10)
    try:
        store = PostgresStore(pool)
        for _ in range(8):  # past plpgsql's and the prepared statements' switch to cached plans
            await _pay(store, 4)
        db.execute(
            """
            INSERT INTO payments (id, order_id, customer_id, amount, currency, payment_method,
                                  status, command_id)
            SELECT gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 10, 'USD',
                   'credit_card', 'succeeded', gen_random_uuid()
            FROM generate_series(1, %(n)s)
            """,
            {"n": GROWTH},
        )
        db.execute(
            """
            INSERT INTO command_ledger (command_id, order_id, customer_id, amount, currency,
                                        state, outcome, reply_route)
            SELECT gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 10, 'USD',
                   'final', 'SUCCEEDED', '{}'
            FROM generate_series(1, %(n)s)
            """,
            {"n": GROWTH},
        )
        await _flush_stats(pool)
        before = _rows_read(db)
        await _pay(store, 4)
        await _flush_stats(pool)
        read = _rows_read(db) - before
    finally:
        await pool.close()
    # Four payments: a few probes each (snapshot, begin, finish), nowhere near the 3,000 rows
    # each table holds.
    assert read < 100, f"one batch of 4 read {read} rows of payments and command_ledger"


def test_the_step_functions_plan_once_per_connection_and_only_by_key(
    db: psycopg.Connection[Any],
) -> None:
    """Each step function carries the settings of sql/003_key_lookup_plans.sql: generic plans
    (under the default plan_cache_mode begin_facts was planned anew on every call) and no
    sequential scans; so does 007's finish_payments overload."""
    rows = db.execute(
        "SELECT proname, proconfig FROM pg_proc WHERE pronamespace = current_schema()::regnamespace"
        " AND proname IN ('snapshots', 'begin_facts', 'finish_payments')"
    ).fetchall()
    assert sorted(name for name, _ in rows) == [
        "begin_facts",
        "finish_payments",
        "finish_payments",
        "snapshots",
    ]
    for name, config in rows:
        assert "plan_cache_mode=force_generic_plan" in config, (name, config)
        assert "enable_seqscan=off" in config, (name, config)
