"""Payments and the command ledger: the pipeline's four steps, group-committed, and the
reconciler's claims on stale pending payments."""

from __future__ import annotations

import uuid
from contextlib import AbstractContextManager
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from payment_worker import tracing
from payment_worker.adapters.coalesce import Coalescer
from payment_worker.adapters.postgres.connections import Connections
from payment_worker.adapters.postgres.outbox import insert_outbox
from payment_worker.adapters.postgres.queries import DatabaseError, WrittenMeanwhile
from payment_worker.adapters.postgres.rows import (
    PAYMENT_COLUMNS,
    REQUEST_COLUMNS,
    ledger_arrays,
    outbox_arrays,
    payment_arrays,
    payment_from,
    snapshot_named,
)
from payment_worker.domain.model import Outcome, Payment
from payment_worker.service.ports import Begun, OutboxMessage, Snapshot, StoredMessage

# The payment columns begin_facts inserts (a pending payment's: its request, when and by
# which command) and finish_payments sets (the gateway's answer, keyed by id and command id).
_BEGUN = (*PAYMENT_COLUMNS[:7], "created_at", "command_id")
_FINISHED = (
    "id",
    "status",
    "error_code",
    "error_message",
    "failure_reason",
    "transaction_id",
    "processed_at",
    "simulated_response",
    "command_id",
    "is_simulated",
)


class LedgerSteps(Connections):
    """The LedgerPort. Each step's call joins the next batch of its kind: one transaction and a
    few round trips serve every command waiting at that moment (see adapters/coalesce.py)."""

    def __init__(
        self, pool: AsyncConnectionPool, *, max_batch: int = 256, parallel: int = 1
    ) -> None:
        super().__init__(pool)
        # One batch of each step at a time: the commands that arrive meanwhile make the next
        # batch, so batches grow with the load instead of being spread over several small ones.
        self._snapshots = Coalescer(self._snapshot_batch, max_batch=max_batch, parallel=parallel)
        self._begins = Coalescer(self._begin_batch, max_batch=max_batch, parallel=parallel)
        self._finishes = Coalescer(self._finish_batch, max_batch=max_batch, parallel=parallel)
        self._records = Coalescer(self._record_batch, max_batch=max_batch, parallel=parallel)

    async def snapshot(self, command_id: uuid.UUID, order_id: uuid.UUID) -> Snapshot:
        """What the ledger and the order's payments say before any work is done."""
        with _step("snapshot"):
            return await self._snapshots.submit((command_id, order_id))

    async def begin_payment(
        self, payment: Payment, ledger_fields: dict[str, Any], route: dict[str, Any]
    ) -> Begun:
        """Insert the pending payment and in-progress ledger row, unless something forbids it.

        Per-order advisory locks make the checks and the insert one atomic step across
        workers; the partial unique indexes stay the last line of defence (rule I3).
        """
        with _step("begin_payment"):
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
        with _step("finish_payment"):
            return await self._finishes.submit((payment, outcome, error_message, messages))

    async def record(
        self, messages: list[OutboxMessage], ledger: dict[str, Any] | None = None
    ) -> list[StoredMessage] | None:
        """Outbox rows (and a final ledger entry); None when the ledger entry already existed."""
        with _step("record"):
            return await self._records.submit((messages, ledger))

    async def remember_reference(self, payment_id: uuid.UUID, gateway: str, reference: str) -> str:
        """Record the gateway's reference for a payment's charge; the reference kept, which is
        an earlier one when another was recorded first."""
        params = {"payment_id": payment_id, "gateway": gateway, "reference": reference}
        async with self._conn() as conn:
            cur = await conn.execute(self.q["remember_reference"], params)
            row = await cur.fetchone()
            if row is None:  # recorded by another after this statement's snapshot was taken
                cur = await conn.execute(self.q["recall_reference"], params)
                row = await cur.fetchone()
        if row is None:
            raise DatabaseError(f"no gateway reference kept for payment {payment_id}")
        return str(row[0])

    async def recall_reference(self, payment_id: uuid.UUID, gateway: str) -> str | None:
        """The gateway's reference recorded for a payment's charge, if any."""
        params = {"payment_id": payment_id, "gateway": gateway}
        async with self._conn() as conn:
            cur = await conn.execute(self.q["recall_reference"], params)
            row = await cur.fetchone()
        return None if row is None else str(row[0])

    async def payment(self, payment_id: uuid.UUID) -> Payment | None:
        with _step("payment"):
            async with self._tx() as cur:
                await cur.execute(self.q["payment_by_id"], {"id": payment_id})
                row = await cur.fetchone()
        return payment_from(row) if row else None

    async def _snapshot_batch(
        self, items: list[tuple[uuid.UUID, uuid.UUID]]
    ) -> list[Snapshot | BaseException]:
        """One call of the snapshots function (sql/003_key_lookup_plans.sql): one row per item,
        in order."""
        async with self._conn() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                self.q["snapshots"],
                {"command_ids": [c for c, _ in items], "order_ids": [o for _, o in items]},
            )
            rows = await cur.fetchall()
        if len(rows) != len(items):
            raise DatabaseError(f"snapshots answered {len(rows)} rows for {len(items)} items")
        return [snapshot_named(row) for row in rows]

    async def _begin_batch(
        self, items: list[tuple[Payment, dict[str, Any], dict[str, Any]]]
    ) -> list[Begun | BaseException]:
        """One call of begin_facts (sql/006_begin_facts.sql): the locks, the inserts and the
        facts of the whole batch in one statement, hence one transaction."""
        params = begin_params(items)
        for attempt in range(1, 4):
            try:
                async with self._conn() as conn:
                    cur = conn.cursor(row_factory=dict_row)
                    await cur.execute(self.q["begin_facts"], params)
                    rows = await cur.fetchall()
                break
            except WrittenMeanwhile:
                # Another worker's batch wrote one of these command ids first (for another
                # order) and has committed: the statement again finds it written and inserts
                # the others, instead of failing every command of the batch for one.
                if attempt == 3:
                    raise
        if [row["n"] for row in rows] != list(range(1, len(items) + 1)):
            raise DatabaseError(f"begin_facts answered {len(rows)} rows for {len(items)} items")
        return [Begun(snapshot_named(row), inserted=row["inserted"]) for row in rows]

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
        params = {
            **payment_arrays([items[i][0] for i in todo], _FINISHED),
            "outcome": [str(items[i][1]) for i in todo],
            "ledger_error_message": [items[i][2] for i in todo],
            "item": [k for k, _ in flat],
            **outbox_arrays([m for _, m in flat]),
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
            ledger_cur = conn.cursor()
            async with conn.transaction():
                if ledgers:  # which entries are new
                    await ledger_cur.execute(
                        self.q["insert_ledgers_final"], ledger_arrays([e for _, e in ledgers])
                    )
                    new = {row[0] for row in await ledger_cur.fetchall()}  # their command ids
                    for i, ledger in ledgers:
                        # Only the first of two items for one command id inserted its entry.
                        if ledger["command_id"] in new:
                            new.discard(ledger["command_id"])
                            accepted.append(i)
                messages = {i: items[i][0] for i in accepted}
                stored = await insert_outbox(conn.cursor(), messages)
        return [stored.get(i) for i in range(len(items))]

    # -- the reconciler's claims ------------------------------------------------------------

    async def claim_stale(
        self, age_s: float, owner: str, *, lease_s: float = 120.0, limit: int = 100
    ) -> list[tuple[Payment, dict[str, Any] | None]]:
        """Payments pending longer than `age_s` (database clock), each claimed for this
        reconciler alone for `lease_s`."""
        params = {"age_s": age_s, "owner": owner, "lease_s": lease_s, "limit": limit}
        async with self._conn() as conn:
            cur = await conn.execute(self.q["claim_stale_payments"], params)
            rows = await cur.fetchall()
        return [(payment_from(r[:-1]), r[-1]) for r in rows]  # the payment, its reply route

    async def release_claims(self) -> None:
        async with self._conn() as conn:
            await conn.execute(self.q["release_claims"])

    async def release_claim(self, payment_id: uuid.UUID, owner: str) -> None:
        async with self._conn() as conn:
            await conn.execute(
                self.q["release_claim"], {"payment_id": payment_id, "claimed_by": owner}
            )


def begin_params(items: list[tuple[Payment, dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    """The arrays of one begin_facts call: the candidates' columns, their ledger entries'
    requests (the entry's command id is its payment's) and reply routes."""
    fields = [f for _, f, _ in items]
    return {
        **payment_arrays([p for p, _, _ in items], _BEGUN),
        **{f"ledger_{c}": [f[c] for f in fields] for c in REQUEST_COLUMNS[1:]},
        "reply_route": [Jsonb(route) for _, _, route in items],
    }


def _step(name: str) -> AbstractContextManager[object]:
    """A span for one ledger step, as the caller waits for it (its batch's transaction
    included); the batch itself is shared by the commands waiting at that moment."""
    return tracing.span(
        f"postgresql {name}",
        tracing.CLIENT,
        attributes={"db.system.name": "postgresql", "db.operation.name": name},
    )
