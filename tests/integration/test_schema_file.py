"""sql/schema.sql against the real PostgreSQL: it is what the migrations leave, it is never
applied as a migration, and the renderer behind it writes comments and refuses what it cannot
write."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from payment_worker.adapters.postgres import sql_dir
from payment_worker.adapters.postgres.migrations import available
from payment_worker.adapters.postgres.schema_dump import (
    COMMAND,
    UnsupportedObject,
    default_path,
    difference,
    dump,
)

pytestmark = pytest.mark.integration


def test_schema_file_is_what_the_migrations_leave(database_url: str, migrated_schema: str) -> None:
    """A schema migrated from nothing renders exactly as payment_worker/sql/schema.sql."""
    path = default_path()
    written = path.read_text("utf-8")

    migrated = dump(database_url, migrated_schema)

    assert migrated == written, (
        f"{path} is not the schema the migrations leave; run `{COMMAND}` to write it again.\n"
        + difference(written, migrated, path)
    )


def test_schema_file_is_shipped_beside_the_migrations_and_never_applied() -> None:
    """schema.sql sits in sql/ (so the wheel carries it) but is not a numbered migration: the
    runner's files are 001..N with no gap, and none of them is schema.sql."""
    migrations = available()

    assert default_path() == sql_dir() / "schema.sql" and default_path().is_file()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert "schema" not in {m.name for m in migrations}


def test_comments_are_rendered_after_what_they_describe(
    database_url: str, migrated_schema: str
) -> None:
    """A comment on a table, a column or a function comes out as COMMENT ON, unqualified."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(migrated_schema)))
        conn.execute("COMMENT ON TABLE payments IS 'one row per attempt'")
        conn.execute("COMMENT ON COLUMN payments.amount IS 'money''s two decimals'")
        conn.execute("COMMENT ON FUNCTION snapshots(uuid[], uuid[]) IS 'the first read'")

    text = dump(database_url, migrated_schema)

    payments = text[text.index("CREATE TABLE payments") :]
    assert "COMMENT ON TABLE payments IS 'one row per attempt';" in payments
    assert "COMMENT ON COLUMN payments.amount IS 'money''s two decimals';" in payments
    assert "$$;\nCOMMENT ON FUNCTION snapshots(uuid[],uuid[]) IS 'the first read';" in text
    assert migrated_schema not in text


def test_an_object_the_renderer_cannot_write_is_an_error_naming_it(
    database_url: str, migrated_schema: str
) -> None:
    """A view (or trigger, type, ...) in the schema stops the dump with its name: schema.sql
    never leaves an object out silently."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE VIEW {}.pending_payments AS SELECT 1 AS one").format(
                sql.Identifier(migrated_schema)
            )
        )

    with pytest.raises(UnsupportedObject, match=r"pending_payments \(relkind v\)"):
        dump(database_url, migrated_schema)
