"""PostgresStore: the ledger steps, the outbox relay's operations, replay's batches and the
operator's reads over one connection pool."""

from __future__ import annotations

from payment_worker.adapters.postgres.health import HealthReads
from payment_worker.adapters.postgres.ledger import LedgerSteps
from payment_worker.adapters.postgres.outbox import OutboxRows
from payment_worker.adapters.postgres.replay import ReplayBatches


class PostgresStore(LedgerSteps, OutboxRows, ReplayBatches, HealthReads):
    """The LedgerPort, the relay's outbox, replay's BatchLedgerPort and the operator's reads
    over a connection pool. A pool passed in is never closed here."""
