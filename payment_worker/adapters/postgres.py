"""PostgreSQL: payments, the command ledger and the outbox (psycopg 3, async pool)."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
import structlog
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.rows import RowFactory, dict_row, tuple_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from payment_worker.adapters.coalesce import Coalescer
from payment_worker.domain.model import Outcome, Payment, PaymentStatus
from payment_worker.exceptions import InfrastructureUnavailable, PaymentWorkerError
from payment_worker.service.ports import (
    Began,
    LedgerEntry,
    OutboxMessage,
    RecordedAnswer,
    Snapshot,
    StoredMessage,
)

log = structlog.get_logger("payment_worker.postgres")


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


def _headers_json(headers: list[tuple[str, bytes | None]]) -> Jsonb:
    return Jsonb([[name, value.hex() if value is not None else None] for name, value in headers])


def _outbox_message(row: dict[str, Any], kind: str | None = None) -> OutboxMessage:
    """An outbox row as a message (`kind` overrides the stored one)."""
    return OutboxMessage(
        kind=kind or row["kind"],
        topic=row["topic"],
        partition=row["partition"],
        key=bytes(row["key"]) if row["key"] is not None else None,
        value=bytes(row["value"]) if row["value"] is not None else None,
        headers=headers_from_json(row["headers"]),
        event_id=row.get("event_id"),
        payment_id=row.get("payment_id"),
    )


def _request_columns(ledgers: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """The request part of ledger rows (rule I1's fields), one array per column."""
    return {
        "command_ids": [r["command_id"] for r in ledgers],
        "order_ids": [r["order_id"] for r in ledgers],
        "customer_ids": [r["customer_id"] for r in ledgers],
        "amounts": [r["amount"] for r in ledgers],
        "currencies": [r["currency"] for r in ledgers],
    }


def _outbox_columns(messages: list[OutboxMessage]) -> dict[str, list[Any]]:
    """The `insert_outbox` parameters: one array per column."""
    return {
        "kinds": [m.kind for m in messages],
        "topics": [m.topic for m in messages],
        "partitions": [m.partition for m in messages],
        "keys": [m.key for m in messages],
        "values": [m.value for m in messages],
        "headers": [_headers_json(m.headers) for m in messages],
        "event_ids": [m.event_id for m in messages],
        "payment_ids": [m.payment_id for m in messages],
    }


def headers_from_json(data: list[list[Any]]) -> list[tuple[str, bytes | None]]:
    return [(name, bytes.fromhex(value) if value is not None else None) for name, value in data]


class PostgresStore:
    """The LedgerPort over a connection pool. A pool passed in is never closed here."""

    def __init__(
        self, pool: AsyncConnectionPool, *, max_batch: int = 256, parallel: int = 1
    ) -> None:
        # One batch of each step at a time: the commands that arrive meanwhile make the next
        # batch, so batches grow with the load instead of the load being spread over several
        # small ones. With the steps' statements as cheap as they are now (sql/003), 1 beat 3
        # at every rate measured (see docs/performance.md).
        self.pool = pool
        self.q = queries()
        self._snapshots = Coalescer(self._snapshot_batch, max_batch=max_batch, parallel=parallel)
        self._begins = Coalescer(self._begin_batch, max_batch=max_batch, parallel=parallel)
        self._finishes = Coalescer(self._finish_batch, max_batch=max_batch, parallel=parallel)
        self._records = Coalescer(self._record_batch, max_batch=max_batch, parallel=parallel)

    @asynccontextmanager
    async def _tx(
        self, row_factory: RowFactory[Any] = dict_row
    ) -> AsyncIterator[psycopg.AsyncCursor[Any]]:
        """A cursor inside a transaction block."""
        async with self._conn() as conn, conn.transaction():
            async with conn.cursor(row_factory=row_factory) as cur:
                yield cur

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection in autocommit mode: a lone statement is its own transaction,
        with no BEGIN/COMMIT round trips (a read of one SELECT costs about half the CPU of
        one inside a transaction block here). Its psycopg errors, and those of whatever runs
        on it, are translated here."""
        try:
            async with self.pool.connection() as conn:
                yield conn
        except (psycopg.Error, OSError) as exc:
            raise translate(exc) from exc

    @asynccontextmanager
    async def _pipeline(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection in pipeline mode, for the multi-statement transaction blocks: statements
        queue up and go out together until a result is fetched or the block starts or ends
        (psycopg syncs there), so a step waits for fewer round trips, each an event-loop
        wake-up. For a lone statement it only adds work (a SELECT: ~610 us of CPU against
        ~170 us in plain autocommit, measured here)."""
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
            if not (row and row["present"]):
                return set()
            await cur.execute("SELECT version FROM schema_migrations")
            return {int(r["version"]) for r in await cur.fetchall()}

    # -- the pipeline's four steps, group-committed ---------------------------------------------
    # Each call joins the next batch of its kind: one transaction and a few round trips serve
    # every command waiting at that moment (see adapters/coalesce.py).

    async def snapshot(self, command_id: uuid.UUID, order_id: uuid.UUID) -> Snapshot:
        """What the ledger and the order's payments say before any work is done."""
        return await self._snapshots.submit((command_id, order_id))

    async def begin_payment(
        self, payment: Payment, ledger_fields: dict[str, Any], route: dict[str, Any]
    ) -> Began:
        """Insert the pending payment and in-progress ledger row, unless something forbids it.

        Per-order advisory locks make the checks and the insert one atomic step across
        workers; the partial unique indexes stay the last line of defence (rule I3).
        """
        return await self._begins.submit((payment, ledger_fields, route))

    async def finish_payment(
        self,
        payment: Payment,
        outcome: Outcome,
        error_message: str | None,
        messages: list[OutboxMessage],
    ) -> list[StoredMessage] | None:
        """Final state, ledger entry and outbox rows in one transaction.

        None when the payment is no longer pending (someone else finalized it)."""
        return await self._finishes.submit((payment, outcome, error_message, messages))

    async def record(
        self, messages: list[OutboxMessage], ledger: dict[str, Any] | None = None
    ) -> list[StoredMessage] | None:
        """Outbox rows (and a final ledger entry); None when the ledger entry already existed."""
        return await self._records.submit((messages, ledger))

    async def payment(self, payment_id: uuid.UUID) -> Payment | None:
        async with self._tx() as cur:
            await cur.execute(self.q["payment_by_id"], {"id": payment_id})
            row = await cur.fetchone()
        return _payment(row) if row else None

    async def _snapshot_batch(
        self, items: list[tuple[uuid.UUID, uuid.UUID]]
    ) -> list[Snapshot | BaseException]:
        """One call of the snapshots function (sql/003_key_lookup_plans.sql): one row per item,
        in order."""
        async with self._conn() as conn:
            cur = conn.cursor(row_factory=tuple_row)
            await cur.execute(
                self.q["snapshots"],
                {"command_ids": [c for c, _ in items], "order_ids": [o for _, o in items]},
            )
            rows = await cur.fetchall()
        if len(rows) != len(items):
            raise DatabaseError(f"snapshots answered {len(rows)} rows for {len(items)} items")
        return [
            Snapshot(
                _ledger_from(row[:10]) if row[0] else None,
                _payment_from(row[10:27]) if row[10] else None,
                _payment_from(row[27:]) if row[27] else None,
            )
            for row in rows
        ]

    async def _begin_batch(
        self, items: list[tuple[Payment, dict[str, Any], dict[str, Any]]]
    ) -> list[Began | BaseException]:
        """One call of begin_payments (sql/003_key_lookup_plans.sql): the locks, the checks and
        the inserts of the whole batch in one statement, hence one transaction."""
        payments = [p for p, _, _ in items]
        fields = [f for _, f, _ in items]
        params = {
            "ids": [p.id for p in payments],
            "order_ids": [p.order_id for p in payments],
            "customer_ids": [p.customer_id for p in payments],
            "reservation_ids": [p.reservation_id for p in payments],
            "amounts": [p.amount for p in payments],
            "currencies": [p.currency for p in payments],
            "payment_methods": [p.payment_method for p in payments],
            "created_ats": [p.created_at for p in payments],
            "command_ids": [p.command_id for p in payments],
            "ledger_order_ids": [f["order_id"] for f in fields],
            "ledger_customer_ids": [f["customer_id"] for f in fields],
            "ledger_amounts": [f["amount"] for f in fields],
            "ledger_currencies": [f["currency"] for f in fields],
            "reply_routes": [Jsonb(route) for _, _, route in items],
        }
        async with self._conn() as conn:
            cur = conn.cursor(row_factory=tuple_row)
            await cur.execute(self.q["begin_payments"], params)
            rows = await cur.fetchall()
        results: list[Began | BaseException] = []
        for row in rows:  # one per item, in item order
            n, verdict, first_n = row[0], row[1], row[2]
            payment = payments[n - 1]
            # The command id's ledger entry, whatever its state, comes with every verdict: the
            # pipeline answers CONFLICT when it was written for another request (rule I1).
            entry = _ledger_from(row[3:13]) if row[3] is not None else None
            if verdict == "inserted":
                results.append(Began(pending=payment))
            elif verdict in ("ledger", "error"):  # error: in progress, its payment not pending
                results.append(Began(ledger=entry))
            elif verdict == "succeeded":
                results.append(Began(succeeded=_payment_from(row[13:]), ledger=entry))
            elif verdict == "pending":
                results.append(Began(pending=_payment_from(row[13:]), ledger=entry))
            elif verdict == "busy":
                results.append(Began(busy=_payment_from(row[13:]), ledger=entry))
            elif verdict == "pending_in_batch":
                results.append(Began(pending=payments[first_n - 1], ledger=entry))
            elif verdict == "busy_in_batch":
                results.append(Began(busy=payments[first_n - 1], ledger=entry))
            else:
                results.append(DatabaseError(f"begin_payments answered verdict {verdict!r}"))
        if len(results) != len(items):
            raise DatabaseError(f"begin_payments answered {len(results)} of {len(items)} items")
        return results

    async def _finish_batch(
        self, items: list[tuple[Payment, Outcome, str | None, list[OutboxMessage]]]
    ) -> list[list[StoredMessage] | BaseException | None]:
        """One call of finish_payments (sql/002_step_functions.sql): one statement, hence one
        transaction and one round trip, for the whole batch."""
        # One item per payment: a second finalization of the same payment in this batch finds
        # it no longer pending, as it would in the next batch.
        first: dict[uuid.UUID, int] = {}
        for i, (payment, _, _, _) in enumerate(items):
            first.setdefault(payment.id, i)
        todo = list(first.values())  # item indexes; position k + 1 in the call
        flat = [(k + 1, m) for k, i in enumerate(todo) for m in items[i][3]]
        payments = [items[i][0] for i in todo]
        params = {
            "ids": [p.id for p in payments],
            "statuses": [str(p.status) for p in payments],
            "error_codes": [p.error_code for p in payments],
            "error_messages": [p.error_message for p in payments],
            "failure_reasons": [p.failure_reason for p in payments],
            "transaction_ids": [p.transaction_id for p in payments],
            "processed_ats": [p.processed_at for p in payments],
            "simulated_responses": [p.simulated_response for p in payments],
            "command_ids": [p.command_id for p in payments],
            "outcomes": [str(items[i][1]) for i in todo],
            "ledger_error_messages": [items[i][2] for i in todo],
            "items": [k for k, _ in flat],
            **_outbox_columns([m for _, m in flat]),
        }
        async with self._conn() as conn:
            cur = await conn.execute(self.q["finish_payments"], params)
            row = await cur.fetchone()
        assert row is not None  # the function returns one row
        done_positions, outbox_ids = row
        done = set(done_positions)
        written = [(todo[k - 1], m) for k, m in flat if k in done]
        if len(outbox_ids) != len(written):
            raise DatabaseError(
                f"outbox insert returned {len(outbox_ids)} ids for {len(written)} rows"
            )
        stored: dict[int, list[StoredMessage]] = {todo[k - 1]: [] for k in done}
        for row_id, (i, message) in zip(outbox_ids, written, strict=True):
            stored[i].append(StoredMessage(row_id, message))
        return [stored.get(i) for i in range(len(items))]

    async def _record_batch(
        self, items: list[tuple[list[OutboxMessage], dict[str, Any] | None]]
    ) -> list[list[StoredMessage] | BaseException | None]:
        accepted = [i for i, (_, ledger) in enumerate(items) if ledger is None]
        ledgers = [(i, ledger) for i, (_, ledger) in enumerate(items) if ledger is not None]
        async with self._pipeline() as conn:
            ledger_cur = conn.cursor(row_factory=dict_row)
            async with conn.transaction():
                if ledgers:  # which entries are new
                    rows = [ledger for _, ledger in ledgers]
                    await ledger_cur.execute(
                        self.q["insert_ledgers_final"],
                        {
                            **_request_columns(rows),
                            "outcomes": [r["outcome"] for r in rows],
                            "error_messages": [r["error_message"] for r in rows],
                            "payment_ids": [r["payment_id"] for r in rows],
                            "reply_routes": [Jsonb(r["reply_route"]) for r in rows],
                        },
                    )
                    new = {row["command_id"] for row in await ledger_cur.fetchall()}
                    for i, ledger in ledgers:
                        # Only the first of two items for one command id inserted its entry.
                        if ledger["command_id"] in new:
                            new.discard(ledger["command_id"])
                            accepted.append(i)
                messages = {i: items[i][0] for i in accepted}
                stored = await self._insert_outbox(conn.cursor(), messages)
        return [stored.get(i) for i in range(len(items))]

    async def _insert_outbox(
        self, cur: psycopg.AsyncCursor[Any], messages: dict[int, list[OutboxMessage]]
    ) -> dict[int, list[StoredMessage]]:
        """The outbox rows of several items in one statement; their row ids per item, in item
        order. The rows are inserted in input order, so their ids ascend in that order (see
        the query); called inside the transaction, so a mismatch rolls it back."""
        stored: dict[int, list[StoredMessage]] = {i: [] for i in messages}
        flat = [(i, m) for i, ms in messages.items() for m in ms]
        if not flat:
            return stored
        await cur.execute(self.q["insert_outbox"], _outbox_columns([m for _, m in flat]))
        ids = sorted(row[0] for row in await cur.fetchall())
        if len(ids) != len(flat):
            raise DatabaseError(f"outbox insert returned {len(ids)} ids for {len(flat)} rows")
        for row_id, (i, message) in zip(ids, flat, strict=True):
            stored[i].append(StoredMessage(row_id, message))
        return stored

    # -- batches (replay's fast path) --------------------------------------------------------

    async def ledger_entries(self, command_ids: list[uuid.UUID]) -> dict[uuid.UUID, LedgerEntry]:
        if not command_ids:
            return {}
        async with self._tx() as cur:
            await cur.execute(self.q["ledger_entries"], {"command_ids": command_ids})
            rows = await cur.fetchall()
        return {row["command_id"]: _ledger(row) for row in rows}

    async def recorded_answers(self, command_ids: list[str]) -> dict[str, RecordedAnswer]:
        """Ledger entries with their payments, in one query (replay's batch lookup). Rows come
        as tuples (dict rows and popping keys cost twice the fetch itself, 2,000 at a time)."""
        if not command_ids:
            return {}
        async with self._tx(tuple_row) as cur:
            await cur.execute(self.q["recorded_answers"], {"command_ids": command_ids})
            rows = await cur.fetchall()
        out: dict[str, RecordedAnswer] = {}
        outcomes = _OUTCOMES
        for row in rows:
            out[row[0]] = RecordedAnswer(  # positional: the fields' order
                row[0],  # command_id
                row[1],  # order_id
                row[2],  # customer_id
                row[3],  # amount
                row[4],  # currency
                row[5] == "final",
                outcomes[row[6]] if row[6] is not None else None,
                row[7],  # error_message
                row[8],  # payment_id
                dict(zip(_REPLY_PAYMENT_KEYS, row[9:], strict=True)) if row[9] else None,
            )
        return out

    async def recorded_events(self, payment_ids: list[str]) -> list[OutboxMessage]:
        """The event each payment announced, as first written (same event id, same bytes)."""
        if not payment_ids:
            return []
        async with self._tx() as cur:
            await cur.execute(self.q["recorded_events"], {"payment_ids": payment_ids})
            rows = await cur.fetchall()
        return [_outbox_message(r, "republished_event") for r in rows]

    async def record_many(self, messages: list[OutboxMessage]) -> list[StoredMessage]:
        """Many outbox rows in one statement and one transaction."""
        if not messages:
            return []
        async with self._pipeline() as conn:
            async with conn.transaction():
                stored = await self._insert_outbox(conn.cursor(), {0: messages})
        return stored[0]

    # -- outbox relay -------------------------------------------------------------------------

    async def mark_sent(self, ids: list[int]) -> None:
        if ids:
            async with self._conn() as conn:  # one statement: its own transaction
                await conn.execute(self.q["mark_sent"], {"ids": ids})

    async def claim_unsent(
        self, older_than_s: float, limit: int, lease_s: float = 60.0
    ) -> list[StoredMessage]:
        """Unsent rows due for a try, oldest first, leased for `lease_s` (other relays skip
        them meanwhile; a delivery report marks them sent or failed)."""
        async with self._conn() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                self.q["claim_unsent"],
                {"older_than_s": older_than_s, "limit": limit, "lease_s": lease_s},
            )
            rows = await cur.fetchall()
        rows.sort(key=lambda r: r["id"])
        return [StoredMessage(r["id"], _outbox_message(r)) for r in rows]

    async def mark_failed(
        self, failures: list[tuple[int, str, bool]], max_attempts: int
    ) -> list[ParkedRow]:
        """Record refused deliveries (row id, error, whether it counts as a try); returns the
        rows that have now been parked."""
        latest: dict[int, tuple[str, bool]] = {}
        for row_id, error, counted in failures:
            previous = latest.get(row_id)
            latest[row_id] = (error[:1000], counted or (previous is not None and previous[1]))
        if not latest:
            return []
        async with self._conn() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                self.q["mark_failed"],
                {
                    "ids": list(latest),
                    "errors": [e for e, _ in latest.values()],
                    "counted": [c for _, c in latest.values()],
                    "max_attempts": max_attempts,
                },
            )
            rows = await cur.fetchall()
        return [
            ParkedRow(
                r["id"], r["kind"], r["topic"], r["partition"], r["attempts"], latest[r["id"]][0]
            )
            for r in rows
            if r["parked"]
        ]

    async def outbox_backlog(self) -> int:
        return (await self.outbox_counts())[0]

    async def outbox_counts(self) -> tuple[int, int]:
        """(rows waiting to be published, rows parked)."""
        async with self._conn() as conn:
            cur = await conn.execute(self.q["outbox_backlog"])
            row = await cur.fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    async def claim_stale(
        self, age_s: float, owner: str, *, lease_s: float = 120.0, limit: int = 100
    ) -> list[tuple[Payment, dict[str, Any] | None]]:
        """Payments pending longer than `age_s` (database clock), each claimed for this
        reconciler alone for `lease_s`."""
        params = {"age_s": age_s, "owner": owner, "lease_s": lease_s, "limit": limit}
        async with self._conn() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(self.q["claim_stale_payments"], params)
            rows = await cur.fetchall()
        return [(_payment(r), r["reply_route"]) for r in rows]

    async def release_claims(self) -> None:
        async with self._conn() as conn:
            await conn.execute(self.q["release_claims"])


@dataclass(frozen=True, slots=True)
class ParkedRow:
    """An outbox row given up on after too many refusals (kept, never published)."""

    id: int
    kind: str
    topic: str
    partition: int | None
    attempts: int
    error: str


_OUTCOMES: dict[str, Outcome] = {str(o): o for o in Outcome}

# A ledger entry's and a payment's columns, in the order the snapshots query and
# begin_payments return them.
_LEDGER_KEYS = (
    "command_id",
    "order_id",
    "customer_id",
    "amount",
    "currency",
    "state",
    "outcome",
    "error_message",
    "payment_id",
    "reply_route",
)
_PAYMENT_KEYS = (
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
)


def _ledger_from(values: tuple[Any, ...]) -> LedgerEntry:
    """A ledger entry from its columns in _LEDGER_KEYS order."""
    return _ledger(dict(zip(_LEDGER_KEYS, values, strict=True)))


def _payment_from(values: tuple[Any, ...]) -> Payment:
    """A payment from its columns in _PAYMENT_KEYS order."""
    return _payment(dict(zip(_PAYMENT_KEYS, values, strict=True)))


# The `Payment` fields of a reply, in the order `recorded_answers` selects them after the
# nine ledger columns.
_REPLY_PAYMENT_KEYS = (
    "id",
    "orderId",
    "customerId",
    "reservationId",
    "amount",
    "currency",
    "paymentMethod",
    "status",
    "errorCode",
    "errorMessage",
    "failureReason",
    "transactionId",
    "createdAt",
    "processedAt",
    "isSimulated",
    "simulatedResponse",
)


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
