"""The ports the pipeline talks through; adapters implement them, tests fake them."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from payment_worker.domain.decision import LedgerEntry, OrderInfo, ReservationInfo, Snapshot
from payment_worker.domain.health import PartitionLag, StoreState
from payment_worker.domain.model import GatewayResult, Outcome, Payment, ValidCommand
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


class OutcomeUnknown(RetryableError):
    """The gateway could not say whether it charged: the payment stays pending, to be asked
    again with the same payment id."""


class OrderLocked(RetryableError):
    """Another worker held the order's lock for the whole wait (OrderLockPort.acquire raises
    it): the order is busy, and nothing may be charged for it now."""


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
    read_at: float | None = None  # time.monotonic() when it was consumed; None: unknown
    # Why the record could not be read whole (it is dead-lettered as undecodable), or None.
    unreadable: str | None = None


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
class Begun:
    """begin_payment's answer, facts only: what the ledger records of the command id and its
    order once the batch's inserts are made, and whether this candidate was inserted (then
    `facts` holds it, pending, with its in-progress entry). `decide` turns the facts into what
    to do; begin_facts inserts only when nothing blocks the candidate."""

    facts: Snapshot
    inserted: bool


class OrderingPort(Protocol):
    async def get_order(self, order_id: uuid.UUID) -> OrderInfo | None: ...


class InventoryPort(Protocol):
    async def get_reservation(self, reservation_id: uuid.UUID) -> ReservationInfo | None: ...


class GatewayPort(Protocol):
    def refusal(self, valid: ValidCommand) -> str | None:
        """Why this gateway cannot take the command (its INVALID_REQUEST message), or None."""
        ...

    async def charge(self, payment: Payment) -> GatewayResult: ...


class GatewayReferences(Protocol):
    """Where a real gateway keeps its own id for a payment's charge (a Stripe PaymentIntent
    id) as soon as it has one, so that asking again continues that charge."""

    async def remember_reference(self, payment_id: uuid.UUID, gateway: str, reference: str) -> str:
        """Record it; the reference kept (an earlier one when another was recorded first)."""
        ...

    async def recall_reference(self, payment_id: uuid.UUID, gateway: str) -> str | None: ...


class OrderLockPort(Protocol):
    """A token while held (kept alive until released); None when the lock service is down
    (the database guarantees alone then); OrderLocked when another holds it past the wait."""

    async def acquire(self, order_id: uuid.UUID) -> str | None: ...

    async def release(self, order_id: uuid.UUID, token: str | None) -> None: ...


class TopicDirectoryPort(Protocol):
    """What the broker has: a topic's partition count, None when it has no such topic."""

    async def partitions(self, topic: str, read_at: float | None = None) -> int | None:
        """None when the broker has no such topic, judged on metadata fetched after `read_at`
        (time.monotonic() when the record was read; now when None)."""
        ...


class LedgerPort(Protocol):
    async def snapshot(self, command_id: uuid.UUID, order_id: uuid.UUID) -> Snapshot: ...

    async def payment(self, payment_id: uuid.UUID) -> Payment | None: ...

    async def begin_payment(
        self, payment: Payment, ledger_fields: dict[str, Any], route: dict[str, Any]
    ) -> Begun: ...

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


@dataclass(frozen=True, slots=True)
class DeliveryFailure:
    """An outbox row the broker did not take: why, and whether it said anything about the row
    (`broker_wide`: the broker was unavailable; the row itself may be fine)."""

    row_id: int
    error: str
    broker_wide: bool
    topic: str = ""
    partition: int | None = None


@dataclass(frozen=True, slots=True)
class ParkedRow:
    """An outbox row given up on after too many refusals (kept, never published)."""

    id: int
    kind: str
    topic: str
    partition: int | None
    attempts: int
    error: str


# -- what the worker, the relay, the shim and replay run on (bootstrap hands them over) -------

Offsets = dict[tuple[str, int], int]
AssignHandler = Callable[[list[tuple[str, int]]], None]
RevokeHandler = Callable[[list[tuple[str, int]]], Coroutine[Any, Any, Offsets]]


class RecordConsumerPort(Protocol):
    """A group consumer of the command topic; rebalance handlers were given when it was made."""

    async def open(self) -> None: ...

    async def consume(self, max_messages: int, timeout_s: float) -> list[InboundRecord]: ...

    async def commit(self, offsets: Offsets) -> None: ...

    async def set_paused(self, paused: bool) -> None: ...

    async def close(self) -> None: ...


class ConsumerFactory(Protocol):
    def __call__(
        self, *, on_assign: AssignHandler, on_revoke: RevokeHandler
    ) -> RecordConsumerPort: ...


class ReconcilerStorePort(Protocol):
    """The reconciler's claims on payments left pending (rule I5), and its record of passes."""

    async def record_reconciler_run(self, reconciler_id: str, finished: int) -> None: ...

    async def claim_stale(
        self, age_s: float, owner: str, *, lease_s: float = 120.0, limit: int = 100
    ) -> list[tuple[Payment, dict[str, Any] | None]]: ...

    async def release_claims(self) -> None: ...

    async def release_claim(self, payment_id: uuid.UUID, owner: str) -> None: ...


class OutboxStorePort(Protocol):
    """The relay's reads and marks on the outbox."""

    async def mark_sent(self, ids: list[int]) -> None: ...

    async def claim_unsent(
        self, older_than_s: float, limit: int, lease_s: float = 60.0
    ) -> list[StoredMessage]: ...

    async def mark_failed(
        self, failures: list[tuple[int, str, bool]], max_attempts: int
    ) -> list[ParkedRow]: ...

    async def claim_parked_probes(self, lease_s: float) -> list[StoredMessage]: ...

    async def unpark(self, topic: str | None = None, partition: int | None = None) -> int: ...


class OutboxProducerPort(Protocol):
    """Publishes outbox rows and reports, per row id, what the broker did with each."""

    wakeup: Callable[[], None] | None
    in_flight: set[int]

    def open(self) -> None: ...

    def reset_if_fatal(self) -> bool: ...

    def produce(self, stored: StoredMessage) -> bool: ...

    def take_reports(self) -> tuple[list[int], list[DeliveryFailure]]: ...

    def close(self, timeout_s: float = 10.0) -> int: ...


class DirectSenderPort(Protocol):
    """Replay's producer of answers that are not written to the outbox (blocking calls)."""

    def open(self) -> None: ...

    def send(self, messages: list[OutboxMessage]) -> None: ...

    def drain(self, timeout_s: float = 60.0) -> int: ...

    def close(self) -> None: ...


class CommandSenderPort(Protocol):
    """The shim's producer of commands."""

    def start(self) -> None: ...

    async def send(
        self, topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]]
    ) -> None: ...

    def stop(self, timeout_s: float = 5.0) -> None: ...


class ReplyWaiterPort(Protocol):
    """The shim's reader of the reply topic: futures resolved by correlation id, each only
    with a reply to the command it was expected for."""

    @property
    def ready(self) -> bool: ...

    @property
    def not_ready_reason(self) -> str: ...

    @property
    def waiting(self) -> int: ...

    dropped: int

    def start(self) -> None: ...

    def reply_partition(self) -> int | None: ...

    def expect(
        self, correlation_id: str, command_id: str, order_id: str
    ) -> asyncio.Future[dict[str, Any]]: ...

    def forget(self, correlation_id: str) -> None: ...

    def stop(self) -> None: ...


class HealthStorePort(Protocol):
    """What the database holds that backs up (the state gauges, `payment-worker status`)."""

    async def stuck_state(self, *, details: bool = True) -> StoreState: ...


class GroupLagPort(Protocol):
    """The worker's group on the commands topic, per partition (BrokerUnavailable when the
    broker does not answer)."""

    async def lags(self) -> list[PartitionLag]: ...

    async def close(self) -> None: ...
