"""The ports the pipeline talks through; adapters implement them, tests fake them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from payment_worker.domain.decision import LedgerEntry, OrderInfo, ReservationInfo, Snapshot
from payment_worker.domain.model import GatewayResult, Outcome, Payment
from payment_worker.exceptions import RetryableError

__all__ = [  # what the ledger and the services answer lives in the domain; re-exported here
    "LedgerEntry",
    "OrderInfo",
    "ReservationInfo",
    "Snapshot",
]


class DependencyUnavailable(RetryableError):
    """Ordering or Inventory did not answer within the retry budget (OrderingPort and
    InventoryPort raise it)."""


@dataclass(frozen=True, slots=True)
class InboundRecord:
    """One Kafka record as consumed."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    timestamp_ms: int | None = None


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """A message to publish, written to the outbox in the same transaction as its cause."""

    kind: str  # event | reply | dead_letter | republished_event
    topic: str
    partition: int | None
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    event_id: uuid.UUID | None = None
    payment_id: uuid.UUID | None = None


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """An outbox row: a message and its row id, for the relay."""

    id: int
    message: OutboxMessage


@dataclass(frozen=True, slots=True)
class Began:
    """begin_payment's answer: the command id's ledger entry, if it has one, and at most one
    of the payment fields. A final entry decides alone (rule I1); so does an entry written for
    another request (a CONFLICT), whatever the payment fields say. An entry in progress with
    no payment field is an inconsistency: its payment should be pending."""

    pending: Payment | None = None  # a new (or our own resumed) pending payment: charge it
    succeeded: Payment | None = None  # the order was paid meanwhile
    busy: Payment | None = None  # another command's payment for this order is pending
    ledger: LedgerEntry | None = None  # this command id's entry (final: recorded meanwhile)

    @property
    def snapshot(self) -> Snapshot:
        """The answer as the decision reads it: the order's pending payment, ours or not."""
        return Snapshot(self.ledger, self.succeeded, self.pending or self.busy)


class OrderingPort(Protocol):
    async def get_order(self, order_id: uuid.UUID) -> OrderInfo | None: ...


class InventoryPort(Protocol):
    async def get_reservation(self, reservation_id: uuid.UUID) -> ReservationInfo | None: ...


class GatewayPort(Protocol):
    async def charge(self, payment: Payment) -> GatewayResult: ...


class OrderLockPort(Protocol):
    async def acquire(self, order_id: uuid.UUID) -> str | None: ...

    async def release(self, order_id: uuid.UUID, token: str | None) -> None: ...


class TopicDirectoryPort(Protocol):
    """What the broker has: a topic's partition count, None when it has no such topic."""

    async def partitions(self, topic: str) -> int | None: ...


class LedgerPort(Protocol):
    async def snapshot(self, command_id: uuid.UUID, order_id: uuid.UUID) -> Snapshot: ...

    async def payment(self, payment_id: uuid.UUID) -> Payment | None: ...

    async def begin_payment(
        self, payment: Payment, ledger_fields: dict[str, Any], route: dict[str, Any]
    ) -> Began: ...

    async def finish_payment(
        self,
        payment: Payment,
        outcome: Outcome,
        error_message: str | None,
        messages: list[OutboxMessage],
    ) -> list[StoredMessage] | None: ...

    async def record(
        self,
        messages: list[OutboxMessage],
        ledger: dict[str, Any] | None = None,
    ) -> list[StoredMessage] | None: ...


@dataclass(frozen=True, slots=True)
class RecordedAnswer:
    """A ledger entry as replay answers it again: the request it was for (canonical text ids),
    its outcome, and the payment exactly as a reply carries it (`PaymentReply.payment`)."""

    command_id: str
    order_id: str
    customer_id: str
    amount: Decimal
    currency: str
    final: bool
    outcome: Outcome | None
    error_message: str | None
    payment_id: str | None
    payment: dict[str, Any] | None


class BatchLedgerPort(Protocol):
    """Replay's batch reads and writes."""

    async def recorded_answers(self, command_ids: list[str]) -> dict[str, RecordedAnswer]: ...

    async def recorded_events(self, payment_ids: list[str]) -> list[OutboxMessage]: ...

    async def record_many(self, messages: list[OutboxMessage]) -> list[StoredMessage]: ...
