"""The operator's reads: what is backing up in the outbox and the payments, the dead letters
of the last hour, the reconcilers' last passes."""

from __future__ import annotations

from payment_worker.adapters.postgres.connections import Connections
from payment_worker.domain.health import ReconcilerRun, StoreState


class HealthReads(Connections):
    """HealthStorePort, and the reconciler's record of its passes."""

    async def stuck_state(self, *, details: bool = True) -> StoreState:
        """The state gauges' sample (`details`: also parked rows by reason, the dead letters of
        the last hour and the last reconciler run, as `payment-worker status` prints them)."""
        async with self._tx() as cur:
            await cur.execute(self.q["stuck_state"])
            backlog, oldest_unsent, parked, pending, oldest_pending = await cur.fetchone() or (
                0,
                0.0,
                0,
                0,
                0.0,
            )
            by_reason: list[tuple[str, str, int]] = []
            dead: list[tuple[str, int]] = []
            run = None
            if details:
                await cur.execute(self.q["parked_by_reason"])
                by_reason = [(r[0], r[1], r[2]) for r in await cur.fetchall()]
                await cur.execute(self.q["dead_letters_last_hour"])
                dead = [(r[0], r[1]) for r in await cur.fetchall()]
                await cur.execute(self.q["last_reconciler_run"])
                row = await cur.fetchone()
                run = ReconcilerRun(row[0], row[1], row[2], row[3]) if row else None
        return StoreState(
            outbox_backlog=backlog,
            oldest_unsent_s=float(oldest_unsent),
            parked=parked,
            pending=pending,
            oldest_pending_s=float(oldest_pending),
            parked_by_reason=by_reason,
            dead_letters_last_hour=dead,
            last_reconciler_run=run,
        )

    async def record_reconciler_run(self, reconciler_id: str, finished: int) -> None:
        async with self._conn() as conn:
            await conn.execute(
                self.q["record_reconciler_run"],
                {"reconciler_id": reconciler_id, "finished": finished},
            )
