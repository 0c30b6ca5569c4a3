"""Fixtures of the integration suite: a migrated schema behind an open pool, a plain
connection for looking at rows directly, and small builders for payments and outbox rows."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from payment_worker.adapters.postgres import PostgresStore, make_pool


@pytest.fixture
async def pool(database_url: str, migrated_schema: str) -> AsyncIterator[AsyncConnectionPool]:
    """The package's pool over this test's migrated schema, opened and closed here."""
    the_pool = make_pool(database_url, migrated_schema, min_size=1, max_size=10)
    await the_pool.open(wait=True, timeout=10)
    yield the_pool
    await the_pool.close()


@pytest.fixture
def store(pool: AsyncConnectionPool) -> PostgresStore:
    return PostgresStore(pool)


@pytest.fixture
def db(database_url: str, migrated_schema: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """An autocommit connection whose search_path is this test's schema."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(migrated_schema)))
        yield conn
