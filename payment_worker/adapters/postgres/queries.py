"""The named SQL blocks of sql/queries.sql, and the one translation of psycopg's errors."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from pathlib import Path

import psycopg
from psycopg import errors as pg_errors

from payment_worker.adapters.postgres.rows import FACTS
from payment_worker.exceptions import (
    InfrastructureUnavailable,
    PaymentWorkerError,
    RetryableError,
)


class DatabaseUnavailable(InfrastructureUnavailable):
    """The database could not be reached, or a transaction must be retried."""


class DatabaseError(PaymentWorkerError):
    """A database error that retrying will not fix (a bug or a broken schema)."""


class WrittenMeanwhile(RetryableError):
    """Another transaction wrote the same key first (a unique constraint the rules rely on):
    the step is tried again, and then reads what the other one wrote."""


# The unique constraints two workers can meet on at once, with what each one guards: a
# violation of any other is a bug, not a race.
RACES = {
    "command_ledger_pkey": "the command id was recorded meanwhile (for another order)",
    "payments_one_pending_per_order": "another payment for the order became pending meanwhile",
    "payments_one_succeeded_per_order": "the order was paid meanwhile",
    "outbox_one_event_per_payment": "the payment's event was written meanwhile",
}


def sql_dir() -> Path:
    """The migrations and queries, shipped inside the package (wheel, sdist or source tree)."""
    return Path(str(resources.files("payment_worker") / "sql"))


@cache
def queries() -> dict[str, str]:
    """The named blocks of payment_worker/sql/queries.sql."""
    text = (sql_dir() / "queries.sql").read_text(encoding="utf-8")
    blocks: dict[str, str] = {}
    for match in re.finditer(r"^-- name: (\w+)\n(.*?)(?=^-- name: |\Z)", text, re.S | re.M):
        blocks[match.group(1)] = match.group(2).strip().replace("{facts}", FACTS)
    return blocks


def translate(exc: BaseException) -> Exception:
    """The one place psycopg errors become the package's own."""
    if isinstance(
        exc,
        psycopg.OperationalError
        | pg_errors.SerializationFailure
        | pg_errors.DeadlockDetected
        | pg_errors.AdminShutdown
        | pg_errors.CannotConnectNow,
    ):
        return DatabaseUnavailable(f"{type(exc).__name__}: {exc}".strip())
    if isinstance(exc, pg_errors.UniqueViolation):
        constraint = exc.diag.constraint_name or "?"
        if constraint in RACES:
            return WrittenMeanwhile(f"{RACES[constraint]} ({constraint})")
        return DatabaseError(f"UniqueViolation of {constraint}: {exc}".strip())
    if isinstance(exc, psycopg.Error):
        return DatabaseError(f"{type(exc).__name__}: {exc}".strip())
    return DatabaseError(str(exc))
