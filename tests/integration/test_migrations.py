"""migrate(url, schema) against the real PostgreSQL: the contract's table, idempotence, the
advisory lock and the partial unique indexes of rule I3."""

from __future__ import annotations

import threading
import uuid
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg import errors as pg_errors
from psycopg import sql

from payment_worker.adapters.postgres.migrations import (
    REWRITTEN,
    SchemaMismatch,
    available,
    latest_version,
    migrate,
    schema_problem,
)

pytestmark = pytest.mark.integration

CONTRACT_COLUMNS = {
    "id",
    "order_id",
    "customer_id",
    "reservation_id",
    "amount",
    "currency",
    "payment_method",
    "status",
    "error_code",
    "error_message",
    "failure_reason",
    "transaction_id",
    "created_at",
    "processed_at",
    "is_simulated",
    "simulated_response",
    "command_id",
}


def _dump(url: str, schema: str) -> dict[str, list[tuple[Any, ...]]]:
    """Everything that describes the schema: columns, indexes, constraints, applied versions."""
    with psycopg.connect(url) as conn:
        return {
            "columns": conn.execute(
                "SELECT table_name, column_name, ordinal_position, data_type, numeric_precision,"
                " numeric_scale, is_nullable, column_default FROM information_schema.columns"
                " WHERE table_schema = %s ORDER BY table_name, ordinal_position",
                (schema,),
            ).fetchall(),
            "indexes": conn.execute(
                "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = %s"
                " ORDER BY tablename, indexname",
                (schema,),
            ).fetchall(),
            "constraints": conn.execute(
                "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)"
                " FROM pg_constraint WHERE connamespace = %s::regnamespace ORDER BY 1, 2",
                (schema,),
            ).fetchall(),
            "migrations": conn.execute(
                sql.SQL(
                    "SELECT version, name, checksum, applied_at FROM {}.schema_migrations"
                    " ORDER BY version"
                ).format(sql.Identifier(schema)),
            ).fetchall(),
        }


def _insert(db: psycopg.Connection[Any], order_id: uuid.UUID, status: str) -> None:
    db.execute(
        "INSERT INTO payments (id, order_id, customer_id, amount, currency, payment_method,"
        " status) VALUES (%s, %s, %s, %s, 'USD', 'credit_card', %s)",
        (uuid.uuid4(), order_id, uuid.uuid4(), Decimal("10.50"), status),
    )


def test_first_migrate_applies_every_available_version(database_url: str, db_schema: str) -> None:
    """On an empty schema migrate() applies every numbered file and returns their versions."""
    applied = migrate(database_url, db_schema)

    assert applied == [m.version for m in available()]
    assert applied, "no migration files found"


def test_step_functions_use_their_own_schema_whatever_the_callers_search_path(
    database_url: str, migrated_schema: str
) -> None:
    """The step functions (begin_facts, finish_payments, snapshots) live in the configured
    schema and resolve its tables themselves: called from a session whose search_path is only
    `public`, they read and write that schema's tables."""
    order_id, payment_id, command_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    schema = sql.Identifier(migrated_schema)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SET search_path TO public")
        begun = conn.execute(
            sql.SQL(
                "SELECT n, inserted FROM {}.begin_facts("
                "ARRAY[%s]::uuid[], ARRAY[%s]::uuid[], ARRAY[%s]::uuid[], ARRAY[NULL]::uuid[],"
                " ARRAY[10.00]::numeric[], ARRAY['USD'], ARRAY['card'], ARRAY[now()],"
                " ARRAY[%s]::uuid[], ARRAY[%s]::uuid[], ARRAY[%s]::uuid[], ARRAY[10.00]::numeric[],"
                " ARRAY['USD'], ARRAY['{{}}']::jsonb[])"
            ).format(schema),
            (payment_id, order_id, command_id, command_id, order_id, command_id),
        ).fetchall()
        finished = conn.execute(
            sql.SQL(
                "SELECT done, outbox_ids FROM {}.finish_payments("
                "ARRAY[%s]::uuid[], ARRAY['succeeded'], ARRAY[NULL], ARRAY[NULL], ARRAY[NULL],"
                " ARRAY['txn_1'], ARRAY[now()], ARRAY[NULL], ARRAY[%s]::uuid[],"
                " ARRAY['SUCCEEDED'], ARRAY[NULL], ARRAY[1], ARRAY['reply'],"
                " ARRAY['payment-replies'], ARRAY[NULL]::integer[], ARRAY[NULL]::bytea[],"
                " ARRAY[NULL]::bytea[], ARRAY['[]']::jsonb[], ARRAY[NULL]::uuid[],"
                " ARRAY[NULL]::uuid[])"
            ).format(schema),
            (payment_id, command_id),
        ).fetchone()
        status = conn.execute(
            sql.SQL("SELECT status FROM {}.payments WHERE id = %s").format(schema), (payment_id,)
        ).fetchone()
        seen = conn.execute(
            sql.SQL(
                "SELECT (ledger).state, (succeeded).id, (pending).id"
                " FROM {}.snapshots(ARRAY[%s]::uuid[], ARRAY[%s]::uuid[])"
            ).format(schema),
            (command_id, order_id),
        ).fetchall()

    assert begun == [(1, True)]
    assert finished is not None and finished[0] == [1] and len(finished[1]) == 1
    assert status == ("succeeded",)
    assert seen == [("final", payment_id, None)]


def test_creates_exactly_the_tables_of_the_implementation(
    database_url: str, migrated_schema: str
) -> None:
    """The schema holds payments, command_ledger, outbox, reconciler_claims, reconciler_runs,
    gateway_references and schema_migrations, nothing else."""
    with psycopg.connect(database_url) as conn:
        tables = {
            row[0]
            for row in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                (migrated_schema,),
            )
        }

    assert tables == {
        "payments",
        "command_ledger",
        "outbox",
        "reconciler_claims",
        "reconciler_runs",
        "gateway_references",
        "schema_migrations",
    }


def test_payments_table_has_exactly_the_contract_columns(
    database_url: str, migrated_schema: str
) -> None:
    """payments has the 17 columns of contract section 6, no more and no fewer."""
    with psycopg.connect(database_url) as conn:
        columns = {
            row[0]
            for row in conn.execute(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = %s AND table_name = 'payments'",
                (migrated_schema,),
            )
        }

    assert columns == CONTRACT_COLUMNS


def test_payments_amount_is_numeric_18_2(database_url: str, migrated_schema: str) -> None:
    """payments.amount is numeric(18,2), so money keeps exactly two decimals in the database."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT data_type, numeric_precision, numeric_scale FROM information_schema.columns"
            " WHERE table_schema = %s AND table_name = 'payments' AND column_name = 'amount'",
            (migrated_schema,),
        ).fetchone()

    assert row == ("numeric", 18, 2)


def test_rerun_applies_nothing(database_url: str, migrated_schema: str) -> None:
    """A second migrate() on an up-to-date schema returns an empty list."""
    assert migrate(database_url, migrated_schema) == []


def test_rerun_leaves_the_schema_unchanged(database_url: str, migrated_schema: str) -> None:
    """Columns, indexes, constraints and schema_migrations rows are identical after a rerun."""
    before = _dump(database_url, migrated_schema)

    migrate(database_url, migrated_schema)

    assert _dump(database_url, migrated_schema) == before


def test_concurrent_migrations_apply_the_schema_once(database_url: str, db_schema: str) -> None:
    """Four migrate() calls started together on a fresh schema all succeed; one applies.

    Why this fails without the advisory lock: every caller would read an empty
    schema_migrations before any of them committed migration 001, so each would run
    CREATE TABLE payments; the second one blocks on the first's uncommitted catalog rows and
    then fails (DuplicateTable or a UniqueViolation on pg_type), or, if it got past that, its
    INSERT INTO schema_migrations would collide on the primary key. Either way a thread raises
    and more than one thread reports versions applied. (Checked once by running this test with
    pg_advisory_lock stubbed out in a throw-away monkeypatch: it failed.)
    """
    callers = 4
    barrier = threading.Barrier(callers)
    results: list[list[int]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run() -> None:
        barrier.wait()
        try:
            applied = migrate(database_url, db_schema)
        except BaseException as exc:  # reported by the assertion below
            with lock:
                errors.append(exc)
        else:
            with lock:
                results.append(applied)

    threads = [threading.Thread(target=run) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    versions = [m.version for m in available()]
    assert errors == []
    assert sorted(results) == [[]] * (callers - 1) + [versions]
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            sql.SQL("SELECT version FROM {}.schema_migrations ORDER BY version").format(
                sql.Identifier(db_schema)
            )
        ).fetchall()
    assert [r[0] for r in rows] == versions


def test_second_succeeded_payment_for_an_order_is_rejected(db: psycopg.Connection[Any]) -> None:
    """The partial unique index refuses a second 'succeeded' row for one order (rule I3)."""
    order_id = uuid.uuid4()
    _insert(db, order_id, "succeeded")

    with pytest.raises(pg_errors.UniqueViolation) as raised:
        _insert(db, order_id, "succeeded")

    assert raised.value.diag.constraint_name == "payments_one_succeeded_per_order"


def test_second_pending_payment_for_an_order_is_rejected(db: psycopg.Connection[Any]) -> None:
    """The partial unique index refuses a second 'pending' row for one order (rule I3)."""
    order_id = uuid.uuid4()
    _insert(db, order_id, "pending")

    with pytest.raises(pg_errors.UniqueViolation) as raised:
        _insert(db, order_id, "pending")

    assert raised.value.diag.constraint_name == "payments_one_pending_per_order"


def test_several_failed_payments_for_an_order_are_allowed(db: psycopg.Connection[Any]) -> None:
    """Failed payments are not limited: an order can be declined again and again (rule I4),
    and still have one pending and one succeeded payment beside them."""
    order_id = uuid.uuid4()
    for status in ("failed", "failed", "failed", "pending", "succeeded"):
        _insert(db, order_id, status)

    count = db.execute("SELECT count(*) FROM payments WHERE order_id = %s", (order_id,)).fetchone()
    assert count == (5,)


def _applied(database_url: str, schema: str) -> set[int]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(f'SELECT version FROM "{schema}".schema_migrations').fetchall()
    return {int(row[0]) for row in rows}


def test_a_schema_older_than_the_code_is_named_with_the_command_that_fixes_it(
    database_url: str, migrated_schema: str
) -> None:
    assert schema_problem(migrated_schema, _applied(database_url, migrated_schema)) is None
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            f'DELETE FROM "{migrated_schema}".schema_migrations WHERE version = %s',
            (latest_version(),),
        )
    problem = schema_problem(migrated_schema, _applied(database_url, migrated_schema))
    assert problem is not None
    assert f"needs {latest_version():03d}" in problem and "payment-worker migrate" in problem
    assert schema_problem("fresh", set()) is not None


def test_migrate_refuses_a_schema_newer_than_the_code(
    database_url: str, migrated_schema: str
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            f'INSERT INTO "{migrated_schema}".schema_migrations (version, name, checksum)'
            " VALUES (%s, 'from_the_future', 'x')",
            (latest_version() + 1,),
        )
    with pytest.raises(SchemaMismatch, match="newer than this code"):
        migrate(database_url, migrated_schema)


def test_a_changed_applied_migration_is_an_error_unless_accepted(
    database_url: str, migrated_schema: str
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            f'UPDATE "{migrated_schema}".schema_migrations SET checksum = %s WHERE version = 2',
            ("0" * 64,),
        )
    with pytest.raises(SchemaMismatch, match=r"migration 002 .* changed since it was applied"):
        migrate(database_url, migrated_schema)
    assert migrate(database_url, migrated_schema, accept_changed=True) == []
    assert migrate(database_url, migrated_schema) == []


def test_a_database_migrated_before_002_and_003_were_rewritten_reaches_the_current_schema(
    database_url: str, migrated_schema: str
) -> None:
    """002 and 003 were rewritten only to drop the verdict-deciding begin_payments that 006's
    begin_facts replaces: a database that applied their former text (recorded under its
    checksum, with that function) is accepted, its checksums updated, and 006 adds begin_facts
    beside the former function, which workers of the previous release go on calling."""
    schema = sql.Identifier(migrated_schema)
    args = (
        "uuid[], uuid[], uuid[], uuid[], numeric[], text[], text[], timestamptz[], uuid[],"
        " uuid[], uuid[], numeric[], text[], jsonb[]"
    )
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(schema))
        conn.execute("DELETE FROM schema_migrations WHERE version = 6")
        conn.execute(f"DROP FUNCTION begin_facts({args})")
        conn.execute(
            f"CREATE FUNCTION begin_payments({args}) RETURNS TABLE (n integer, verdict text)"
            " LANGUAGE sql AS $$ SELECT 1, 'inserted' $$"
        )
        for version, former in REWRITTEN.items():
            conn.execute(
                "UPDATE schema_migrations SET checksum = %s WHERE version = %s",
                (next(iter(former)), version),
            )

    assert migrate(database_url, migrated_schema) == [6]

    current = {m.version: m.checksum for m in available()}
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(schema))
        recorded = dict(conn.execute("SELECT version, checksum FROM schema_migrations").fetchall())
        returns = dict(
            conn.execute(
                "SELECT proname, pg_get_function_result(oid) FROM pg_proc"
                " WHERE proname IN ('begin_facts', 'begin_payments')"
                " AND pronamespace = %s::regnamespace",
                (migrated_schema,),
            ).fetchall()
        )
    assert recorded == current
    assert "inserted boolean" in returns["begin_facts"]
    assert "verdict" in returns["begin_payments"]
