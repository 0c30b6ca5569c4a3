"""The pool and the three ways the store holds a connection; psycopg errors translated there."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from payment_worker.adapters.postgres.queries import queries, translate


def make_pool(
    url: str, schema: str, *, min_size: int = 2, max_size: int = 10, timeout_s: float = 30.0
) -> AsyncConnectionPool:
    """A pool (not yet opened) whose connections resolve tables in `schema`."""

    async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        await conn.commit()

    return AsyncConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        configure=configure,
        open=False,
        kwargs={"autocommit": True},  # blocks that need one open `conn.transaction()`
        timeout=timeout_s,
    )


class Connections:
    """Connections from a pool, for the store's parts. A pool passed in is never closed here."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool
        self.q = queries()

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection in autocommit mode; its psycopg errors, and those of whatever
        runs on it, are translated here."""
        # Autocommit: a lone statement is its own transaction, with no BEGIN/COMMIT round trips.
        try:
            async with self.pool.connection() as conn:
                yield conn
        except (psycopg.Error, OSError) as exc:
            raise translate(exc) from exc

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[psycopg.AsyncCursor[Any]]:
        """A cursor inside a transaction block."""
        async with self._conn() as conn, conn.transaction():
            async with conn.cursor() as cur:
                yield cur

    @asynccontextmanager
    async def _pipeline(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection in pipeline mode, for the multi-statement transaction blocks."""
        # Statements queue up until a result is fetched or the block starts or ends, so a step
        # waits for fewer round trips; for a lone statement it only adds work.
        async with self._conn() as conn, conn.pipeline():
            yield conn

    async def ping(self, timeout_s: float = 3.0) -> None:
        """One round trip, failing within `timeout_s` when the database is not there."""
        try:
            async with self.pool.connection(timeout=timeout_s) as conn:
                await conn.execute("SELECT 1")
        except (psycopg.Error, OSError) as exc:
            raise translate(exc) from exc

    @staticmethod
    async def connect_problem(url: str, timeout_s: int = 2) -> str | None:
        """Why a new connection to `url` fails (its first line; None: it connects). Asked
        directly, not through the pool, whose error only says that it waited."""
        try:
            conn = await psycopg.AsyncConnection.connect(url, connect_timeout=timeout_s)
        except (psycopg.Error, OSError) as exc:
            return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        await conn.close()
        return None

    async def applied_migrations(self) -> set[int]:
        """The migration versions `payment-worker migrate` has applied (empty before the first)."""
        async with self._tx() as cur:
            await cur.execute("SELECT to_regclass('schema_migrations') IS NOT NULL AS present")
            row = await cur.fetchone()
            if not (row and row[0]):
                return set()
            await cur.execute("SELECT version FROM schema_migrations")
            return {int(r[0]) for r in await cur.fetchall()}
