"""PostgreSQL: payments, the command ledger and the outbox (psycopg 3, async pool)."""

from payment_worker.adapters.postgres.connections import make_pool
from payment_worker.adapters.postgres.queries import (
    DatabaseError,
    DatabaseUnavailable,
    queries,
    sql_dir,
    translate,
)
from payment_worker.adapters.postgres.rows import headers_from_json
from payment_worker.adapters.postgres.store import PostgresStore

__all__ = [
    "DatabaseError",
    "DatabaseUnavailable",
    "PostgresStore",
    "headers_from_json",
    "make_pool",
    "queries",
    "sql_dir",
    "translate",
]
