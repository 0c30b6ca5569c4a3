"""The outbox: writing rows in a caller's transaction, and the relay's claims and marks."""

from __future__ import annotations

from typing import Any

import psycopg

from payment_worker.adapters.postgres.connections import Connections
from payment_worker.adapters.postgres.queries import DatabaseError, queries
from payment_worker.adapters.postgres.rows import outbox_arrays, outbox_message
from payment_worker.service.ports import OutboxMessage, ParkedRow, StoredMessage


async def insert_outbox(
    cur: psycopg.AsyncCursor[Any], messages: dict[int, list[OutboxMessage]]
) -> dict[int, list[StoredMessage]]:
    """The outbox rows of several items in one statement; their row ids per item, in item
    order. The rows are inserted in input order, so their ids ascend in that order (see
    the query); called inside the transaction, so a mismatch rolls it back."""
    stored: dict[int, list[StoredMessage]] = {i: [] for i in messages}
    flat = [(i, m) for i, ms in messages.items() for m in ms]
    if not flat:
        return stored
    await cur.execute(queries()["insert_outbox"], outbox_arrays([m for _, m in flat]))
    ids = sorted(row[0] for row in await cur.fetchall())
    if len(ids) != len(flat):
        raise DatabaseError(f"outbox insert returned {len(ids)} ids for {len(flat)} rows")
    for row_id, (i, message) in zip(ids, flat, strict=True):
        stored[i].append(StoredMessage(row_id, message))
    return stored


class OutboxRows(Connections):
    """What the outbox relay asks of the store."""

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
            cur = await conn.execute(
                self.q["claim_unsent"],
                {"older_than_s": older_than_s, "limit": limit, "lease_s": lease_s},
            )
            rows = await cur.fetchall()
        rows.sort(key=lambda r: r[0])
        return [StoredMessage(r[0], outbox_message(r[1:])) for r in rows]  # id, then the message

    async def claim_parked_probes(self, lease_s: float) -> list[StoredMessage]:
        """One parked row of each route, not probed within `lease_s`, leased that long."""
        async with self._conn() as conn:
            cur = await conn.execute(self.q["claim_parked_probes"], {"lease_s": lease_s})
            rows = await cur.fetchall()
        rows.sort(key=lambda r: r[0])
        return [StoredMessage(r[0], outbox_message(r[1:])) for r in rows]

    async def unpark(self, topic: str | None = None, partition: int | None = None) -> int:
        """Parked rows (all, a topic's, or a route's) back to the sweeper; returns how many."""
        async with self._conn() as conn:
            cur = await conn.execute(self.q["unpark"], {"topic": topic, "partition": partition})
            return cur.rowcount

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
            cur = await conn.execute(
                self.q["mark_failed"],
                {
                    "ids": list(latest),
                    "errors": [e for e, _ in latest.values()],
                    "counted": [c for _, c in latest.values()],
                    "max_attempts": max_attempts,
                },
            )
            rows = await cur.fetchall()
        # Each row: id, kind, topic, partition, attempts, parked.
        return [ParkedRow(r[0], r[1], r[2], r[3], r[4], latest[r[0]][0]) for r in rows if r[5]]
