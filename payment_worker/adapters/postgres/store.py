"""PostgresStore: the ledger steps, the outbox relay's operations and replay's batches over one
connection pool."""

from __future__ import annotations

from payment_worker.adapters.postgres.ledger import LedgerSteps
from payment_worker.adapters.postgres.outbox import OutboxRelay
from payment_worker.adapters.postgres.replay import ReplayBatches


class PostgresStore(LedgerSteps, OutboxRelay, ReplayBatches):
    """The LedgerPort, the relay's outbox and replay's BatchLedgerPort over a connection pool.
    A pool passed in is never closed here."""
