"""Replay's batch lookups and writes (the BatchLedgerPort): one statement per batch."""

from __future__ import annotations

from payment_worker.adapters.postgres.connections import Connections
from payment_worker.adapters.postgres.outbox import insert_outbox
from payment_worker.adapters.postgres.rows import answer_from, outbox_message
from payment_worker.service.ports import OutboxMessage, RecordedAnswer, StoredMessage


class ReplayBatches(Connections):
    """Ledger entries, recorded answers and events by the thousand, and outbox rows as many."""

    async def recorded_answers(self, command_ids: list[str]) -> dict[str, RecordedAnswer]:
        """Ledger entries with their payments, in one query (replay's batch lookup)."""
        if not command_ids:
            return {}
        # Tuple rows: dict rows and popping their keys cost twice the fetch itself.
        async with self._tx() as cur:
            await cur.execute(self.q["recorded_answers"], {"command_ids": command_ids})
            rows = await cur.fetchall()
        return {row[0]: answer_from(row) for row in rows}

    async def recorded_events(self, payment_ids: list[str]) -> list[OutboxMessage]:
        """The event each payment announced, as first written (same event id, same bytes)."""
        if not payment_ids:
            return []
        async with self._tx() as cur:
            await cur.execute(self.q["recorded_events"], {"payment_ids": payment_ids})
            rows = await cur.fetchall()
        return [outbox_message(r, "republished_event") for r in rows]

    async def record_many(self, messages: list[OutboxMessage]) -> list[StoredMessage]:
        """Many outbox rows in one statement and one transaction."""
        if not messages:
            return []
        async with self._pipeline() as conn:
            async with conn.transaction():
                stored = await insert_outbox(conn.cursor(), {0: messages})
        return stored[0]
