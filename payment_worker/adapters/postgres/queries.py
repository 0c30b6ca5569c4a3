"""The named SQL blocks of sql/queries.sql, and the one translation of psycopg's errors."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from pathlib import Path

import psycopg
from psycopg import errors as pg_errors

from payment_worker.exceptions import InfrastructureUnavailable, PaymentWorkerError


class DatabaseUnavailable(InfrastructureUnavailable):
    """The database could not be reached, or a transaction must be retried."""


class DatabaseError(PaymentWorkerError):
    """A database error that retrying will not fix (a bug or a broken schema)."""


def sql_dir() -> Path:
    """The migrations and queries, shipped inside the package (wheel, sdist or source tree)."""
    return Path(str(resources.files("payment_worker") / "sql"))


@cache
def queries() -> dict[str, str]:
    """The named blocks of payment_worker/sql/queries.sql."""
    text = (sql_dir() / "queries.sql").read_text(encoding="utf-8")
    blocks: dict[str, str] = {}
    for match in re.finditer(r"^-- name: (\w+)\n(.*?)(?=^-- name: |\Z)", text, re.S | re.M):
        blocks[match.group(1)] = match.group(2).strip()
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
    if isinstance(exc, psycopg.Error):
        return DatabaseError(f"{type(exc).__name__}: {exc}".strip())
    return DatabaseError(str(exc))
