"""PostgreSQL: payments, the command ledger and the outbox (psycopg 3, async pool)."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import cache
from pathlib import Path
from typing import Any

import psycopg
import structlog
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from payment_worker.domain.model import Outcome, Payment, PaymentStatus
from payment_worker.exceptions import PaymentWorkerError, RetryableError
from payment_worker.service.ports import (
    Began,
    LedgerEntry,
    OutboxMessage,
    Snapshot,
    StoredMessage,
)

log = structlog.get_logger("payment_worker.postgres")


class DatabaseUnavailable(RetryableError):
    """The database could not be reached, or a transaction must be retried."""


class DatabaseError(PaymentWorkerError):
    """A database error that retrying will not fix (a bug or a broken schema)."""


def sql_dir() -> Path:
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "sql" / "queries.sql").is_file():
            return parent / "sql"
    raise FileNotFoundError("sql/queries.sql not found beside the package")


@cache
def queries() -> dict[str, str]:
    """The named blocks of sql/queries.sql."""
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


def _payment(row: dict[str, Any]) -> Payment:
    return Payment(
        id=row["id"],
        order_id=row["order_id"],
        customer_id=row["customer_id"],
        reservation_id=row["reservation_id"],
        amount=row["amount"],
        currency=row["currency"],
        payment_method=row["payment_method"],
        status=PaymentStatus(row["status"]),
        created_at=row["created_at"],
        command_id=row["command_id"],
        error_code=row["error_code"],
        error_message=row["error_message"],
        failure_reason=row["failure_reason"],
        transaction_id=row["transaction_id"],
        processed_at=row["processed_at"],
        is_simulated=row["is_simulated"],
        simulated_response=row["simulated_response"],
    )


def _ledger(row: dict[str, Any]) -> LedgerEntry:
    return LedgerEntry(
        command_id=row["command_id"],
        order_id=row["order_id"],
        customer_id=row["customer_id"],
        amount=row["amount"],
        currency=row["currency"],
        final=row["state"] == "final",
        outcome=Outcome(row["outcome"]) if row["outcome"] else None,
        error_message=row["error_message"],
        payment_id=row["payment_id"],
        reply_route=row["reply_route"],
    )


def _headers_json(headers: list[tuple[str, bytes]]) -> Jsonb:
    return Jsonb([[name, value.hex() if value is not None else None] for name, value in headers])


def headers_from_json(data: list[list[Any]]) -> list[tuple[str, bytes]]:
    return [(name, bytes.fromhex(value) if value is not None else b"") for name, value in data]


class PostgresStore:
    """The LedgerPort over a connection pool. A pool passed in is never closed here."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool
        self.q = queries()

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[psycopg.AsyncCursor[dict[str, Any]]]:
        try:
            async with self.pool.connection() as conn, conn.transaction():
                async with conn.cursor(row_factory=dict_row) as cur:
                    yield cur
        except _Rollback:
            return
        except (psycopg.Error, OSError) as exc:
            raise translate(exc) from exc

    async def ping(self, timeout_s: float = 3.0) -> None:
        """One round trip, failing within `timeout_s` when the database is not there."""
        try:
            async with self.pool.connection(timeout=timeout_s) as conn:
                await conn.execute("SELECT 1")
        except (psycopg.Error, OSError) as exc:
            raise translate(exc) from exc

    async def schema_ready(self) -> bool:
        """True once `payment-worker migrate` has created the tables."""
        async with self._tx() as cur:
            await cur.execute(
                "SELECT to_regclass('payments') IS NOT NULL AND "
                "to_regclass('outbox') IS NOT NULL AS ready"
            )
            row = await cur.fetchone()
        return bool(row and row["ready"])

    async def snapshot(self, command_id: uuid.UUID, order_id: uuid.UUID) -> Snapshot:
        async with self._tx() as cur:
            await cur.execute(self.q["ledger_entry"], {"command_id": command_id})
            row = await cur.fetchone()
            await cur.execute(
                "SELECT * FROM payments WHERE order_id = %(order_id)s "
                "AND status IN ('succeeded', 'pending')",
                {"order_id": order_id},
            )
            rows = await cur.fetchall()
        succeeded = next((_payment(r) for r in rows if r["status"] == "succeeded"), None)
        pending = next((_payment(r) for r in rows if r["status"] == "pending"), None)
        return Snapshot(_ledger(row) if row else None, succeeded, pending)

    async def payment(self, payment_id: uuid.UUID) -> Payment | None:
        async with self._tx() as cur:
            await cur.execute(self.q["payment_by_id"], {"id": payment_id})
            row = await cur.fetchone()
        return _payment(row) if row else None

    async def payments_for_order(self, order_id: uuid.UUID) -> list[Payment]:
        async with self._tx() as cur:
            await cur.execute(
                "SELECT * FROM payments WHERE order_id = %(o)s ORDER BY created_at", {"o": order_id}
            )
            return [_payment(r) for r in await cur.fetchall()]

    async def begin_payment(
        self, payment: Payment, ledger_fields: dict[str, Any], route: dict[str, Any]
    ) -> Began:
        """Insert the pending payment and in-progress ledger row, unless something forbids it.

        The per-order advisory lock makes the checks and the insert one atomic step across
        workers; the partial unique indexes stay the last line of defence (rule I3).
        """
        async with self._tx() as cur:
            await cur.execute(self.q["lock_order"], {"order_id": payment.order_id})
            await cur.execute(self.q["ledger_entry"], {"command_id": payment.command_id})
            row = await cur.fetchone()
            entry = _ledger(row) if row else None
            if entry is not None and entry.final:
                return Began(ledger=entry)
            await cur.execute(self.q["succeeded_payment_for_order"], {"order_id": payment.order_id})
            row = await cur.fetchone()
            if row:
                return Began(succeeded=_payment(row))
            await cur.execute(self.q["pending_payment_for_order"], {"order_id": payment.order_id})
            row = await cur.fetchone()
            if row:
                pending = _payment(row)
                if pending.command_id == payment.command_id:
                    return Began(pending=pending)
                return Began(busy=pending)
            if entry is not None:
                # An in-progress entry without a pending payment cannot happen; refuse loudly.
                raise DatabaseError(
                    f"ledger entry {payment.command_id} is in progress "
                    "but its payment is not pending"
                )
            await cur.execute(
                self.q["insert_pending_payment"],
                {
                    "id": payment.id,
                    "order_id": payment.order_id,
                    "customer_id": payment.customer_id,
                    "reservation_id": payment.reservation_id,
                    "amount": payment.amount,
                    "currency": payment.currency,
                    "payment_method": payment.payment_method,
                    "created_at": payment.created_at,
                    "command_id": payment.command_id,
                },
            )
            await cur.execute(
                self.q["insert_ledger_in_progress"],
                {
                    **ledger_fields,
                    "payment_id": payment.id,
                    "reply_route": Jsonb(route),
                },
            )
        return Began(pending=payment)

    async def finish_payment(
        self,
        payment: Payment,
        outcome: Outcome,
        error_message: str | None,
        messages: list[OutboxMessage],
    ) -> list[StoredMessage] | None:
        """Final state, ledger entry and outbox rows in one transaction.

        None when the payment is no longer pending (someone else finalized it)."""
        stored: list[StoredMessage] | None = None
        async with self._tx() as cur:
            await cur.execute(
                self.q["finalize_payment"],
                {
                    "id": payment.id,
                    "status": str(payment.status),
                    "error_code": payment.error_code,
                    "error_message": payment.error_message,
                    "failure_reason": payment.failure_reason,
                    "transaction_id": payment.transaction_id,
                    "processed_at": payment.processed_at,
                    "simulated_response": payment.simulated_response,
                },
            )
            if await cur.fetchone() is None:
                raise _Rollback
            await cur.execute(
                self.q["finalize_ledger"],
                {
                    "command_id": payment.command_id,
                    "outcome": str(outcome),
                    "error_message": error_message,
                    "payment_id": payment.id,
                },
            )
            stored = await self._insert_outbox(cur, messages)
        return stored

    async def record(
        self, messages: list[OutboxMessage], ledger: dict[str, Any] | None = None
    ) -> list[StoredMessage] | None:
        """Outbox rows (and a final ledger entry); None when the ledger entry already existed."""
        stored: list[StoredMessage] | None = None
        async with self._tx() as cur:
            if ledger is not None:
                await cur.execute(
                    self.q["insert_ledger_final"],
                    {**ledger, "reply_route": Jsonb(ledger["reply_route"])},
                )
                if await cur.fetchone() is None:
                    raise _Rollback
            stored = await self._insert_outbox(cur, messages)
        return stored

    async def _insert_outbox(
        self, cur: psycopg.AsyncCursor[dict[str, Any]], messages: list[OutboxMessage]
    ) -> list[StoredMessage]:
        stored = []
        for message in messages:
            await cur.execute(
                self.q["insert_outbox"],
                {
                    "kind": message.kind,
                    "topic": message.topic,
                    "partition": message.partition,
                    "key": message.key,
                    "value": message.value,
                    "headers": _headers_json(message.headers),
                    "event_id": message.event_id,
                    "payment_id": message.payment_id,
                },
            )
            row = await cur.fetchone()
            assert row is not None
            stored.append(StoredMessage(row["id"], message))
        return stored

    # -- batches (replay's fast path) --------------------------------------------------------

    async def ledger_entries(self, command_ids: list[uuid.UUID]) -> dict[uuid.UUID, LedgerEntry]:
        if not command_ids:
            return {}
        async with self._tx() as cur:
            await cur.execute(self.q["ledger_entries"], {"command_ids": command_ids})
            rows = await cur.fetchall()
        return {row["command_id"]: _ledger(row) for row in rows}

    async def payments_by_ids(self, ids: list[uuid.UUID]) -> dict[uuid.UUID, Payment]:
        if not ids:
            return {}
        async with self._tx() as cur:
            await cur.execute(self.q["payments_by_ids"], {"ids": ids})
            rows = await cur.fetchall()
        return {row["id"]: _payment(row) for row in rows}

    async def recorded_events(self, payment_ids: list[uuid.UUID]) -> list[OutboxMessage]:
        """The event each payment announced, as first written (same event id, same bytes)."""
        if not payment_ids:
            return []
        async with self._tx() as cur:
            await cur.execute(self.q["recorded_events"], {"payment_ids": payment_ids})
            rows = await cur.fetchall()
        return [
            OutboxMessage(
                kind="republished_event",
                topic=r["topic"],
                partition=r["partition"],
                key=bytes(r["key"]) if r["key"] is not None else None,
                value=bytes(r["value"]) if r["value"] is not None else None,
                headers=headers_from_json(r["headers"]),
                event_id=r["event_id"],
                payment_id=r["payment_id"],
            )
            for r in rows
        ]

    async def record_many(self, messages: list[OutboxMessage]) -> list[StoredMessage]:
        """Many outbox rows in one statement and one transaction."""
        if not messages:
            return []
        async with self._tx() as cur:
            await cur.execute(
                self.q["insert_outbox_many"],
                {
                    "kinds": [m.kind for m in messages],
                    "topics": [m.topic for m in messages],
                    "partitions": [m.partition for m in messages],
                    "keys": [m.key for m in messages],
                    "values": [m.value for m in messages],
                    "headers": [_headers_json(m.headers) for m in messages],
                    "event_ids": [m.event_id for m in messages],
                    "payment_ids": [m.payment_id for m in messages],
                },
            )
            rows = await cur.fetchall()
        return [
            StoredMessage(
                r["id"],
                OutboxMessage(
                    kind=r["kind"],
                    topic=r["topic"],
                    partition=r["partition"],
                    key=bytes(r["key"]) if r["key"] is not None else None,
                    value=bytes(r["value"]) if r["value"] is not None else None,
                    headers=headers_from_json(r["headers"]),
                    event_id=r["event_id"],
                    payment_id=r["payment_id"],
                ),
            )
            for r in rows
        ]

    # -- outbox relay -------------------------------------------------------------------------

    async def mark_sent(self, ids: list[int]) -> None:
        if ids:
            async with self._tx() as cur:
                await cur.execute(self.q["mark_sent"], {"ids": ids})

    @asynccontextmanager
    async def claim_unsent(
        self, older_than_s: float, limit: int
    ) -> AsyncIterator[tuple[list[StoredMessage], psycopg.AsyncCursor[dict[str, Any]]]]:
        """Unsent rows locked for this transaction (other relays skip them)."""
        async with self._tx() as cur:
            await cur.execute(
                self.q["claim_unsent"], {"older_than_s": older_than_s, "limit": limit}
            )
            rows = await cur.fetchall()
            claimed = [
                StoredMessage(
                    r["id"],
                    OutboxMessage(
                        kind=r["kind"],
                        topic=r["topic"],
                        partition=r["partition"],
                        key=bytes(r["key"]) if r["key"] is not None else None,
                        value=bytes(r["value"]) if r["value"] is not None else None,
                        headers=headers_from_json(r["headers"]),
                    ),
                )
                for r in rows
            ]
            yield claimed, cur

    async def mark_sent_in(self, cur: psycopg.AsyncCursor[dict[str, Any]], ids: list[int]) -> None:
        await cur.execute(self.q["mark_sent"], {"ids": ids})

    async def outbox_backlog(self) -> int:
        async with self._tx() as cur:
            await cur.execute(self.q["outbox_backlog"])
            row = await cur.fetchone()
        return int(row["backlog"]) if row else 0

    async def stale_pending(
        self, age_s: float, limit: int = 100
    ) -> list[tuple[Payment, dict[str, Any] | None]]:
        async with self._tx() as cur:
            await cur.execute(self.q["stale_pending_payments"], {"age_s": age_s, "limit": limit})
            rows = await cur.fetchall()
        return [(_payment(r), r["reply_route"]) for r in rows]


class _Rollback(Exception):
    """Raised inside a transaction block to roll it back quietly."""


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
        kwargs={"autocommit": False},
        timeout=timeout_s,
    )
