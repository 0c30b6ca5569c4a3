"""One function per command: decode, validate, idempotency, order, reservation, charge, record.

Every path ends in exactly one database transaction that writes the reply (and the event, the
ledger entry, the dead letter) to the outbox; the worker commits the Kafka offset after it.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

import structlog

from payment_worker.domain.cards import redacted
from payment_worker.domain.ids import new_uuid
from payment_worker.domain.model import (
    Command,
    Outcome,
    Payment,
    PaymentStatus,
    Reply,
    ValidCommand,
    reply,
)
from payment_worker.domain.routing import (
    InvalidHeader,
    ReplyRoute,
    RouteRules,
    needs_broker_check,
    refused_route,
    route_from_headers,
    unknown_route,
)
from payment_worker.domain.validation import ValidationFailed, parse_uuid, validate_command
from payment_worker.exceptions import PermanentError, RetryableError
from payment_worker.service.messages import MessageFactory
from payment_worker.service.ports import (
    DependencyUnavailable,
    GatewayPort,
    InboundRecord,
    InventoryPort,
    LedgerEntry,
    LedgerPort,
    OrderInfo,
    OrderingPort,
    OrderLockPort,
    OutboxMessage,
    ReservationInfo,
    StoredMessage,
    TopicDirectoryPort,
)

log = structlog.get_logger("payment_worker.pipeline")


class InconsistentLedger(PermanentError):
    """The ledger holds a command in progress whose payment is no longer pending."""

    @classmethod
    def of(cls, command_id: uuid.UUID) -> InconsistentLedger:
        return cls(f"ledger entry {command_id} is in progress but its payment is not pending")


class Decoder(Protocol):
    async def load_value(self, value: bytes | None) -> None:
        """Fetch what decoding `value` needs (a registry's writer schema)."""

    def decode(self, name: str, value: bytes | None) -> dict[str, Any]: ...


@dataclass(slots=True)
class Handled:
    """What one record came to: its outcome (None for a dead letter) and what to publish."""

    outcome: Outcome | None
    stored: list[StoredMessage] = field(default_factory=list)
    dead_letter_reason: str | None = None
    duplicate: bool = False


@dataclass(slots=True)  # per message: see domain/model.py, 'Per-message values'
class Prepared:
    """A decoded command, where to answer it, and its validated form (or why it is invalid)."""

    command: Command
    route: ReplyRoute
    valid: ValidCommand | None
    invalid: str | None = None


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    routes: RouteRules = field(default_factory=RouteRules)
    busy_retry_budget_s: float = 15.0

    @property
    def replies_topic(self) -> str:
        return self.routes.default_topic


def command_from_record(raw: dict[str, Any]) -> Command:
    requested = raw.get("requestedAt")
    if not isinstance(requested, datetime):
        requested = datetime.now(UTC)
    amount = raw.get("amount")
    return Command(
        command_id=str(raw.get("commandId", "")),
        order_id=str(raw.get("orderId", "")),
        customer_id=str(raw.get("customerId", "")),
        reservation_id=raw.get("reservationId"),
        amount=amount if isinstance(amount, Decimal) else Decimal(0),
        currency=str(raw.get("currency", "USD")),
        payment_method=str(raw.get("paymentMethod", "")),
        requested_at=requested,
    )


_COMMAND_ID_REUSED = reply(
    Outcome.CONFLICT, "this command id was already used for a different payment request"
)


def canonical(command: Command, valid: ValidCommand) -> Command:
    """The command with its ids in canonical form (lower case, hyphenated) for what we write;
    the command itself when it is already so (the usual case: no copy to build)."""
    if (
        command.currency == valid.currency
        and _is_canonical(command.command_id)
        and _is_canonical(command.order_id)
        and _is_canonical(command.customer_id)
        and (command.reservation_id is None or _is_canonical(command.reservation_id))
    ):
        return command
    return Command(
        command_id=_canonical_id(command.command_id, valid.command_id),
        order_id=_canonical_id(command.order_id, valid.order_id),
        customer_id=_canonical_id(command.customer_id, valid.customer_id),
        reservation_id=(
            _canonical_id(command.reservation_id, valid.reservation_id)
            if command.reservation_id is not None and valid.reservation_id is not None
            else None
        ),
        amount=command.amount,
        currency=valid.currency,
        payment_method=command.payment_method,
        requested_at=command.requested_at,
    )


def _is_canonical(validated_id: str) -> bool:
    """A validated id of 36 characters is hyphenated 8-4-4-4-12: canonical in lower case."""
    return len(validated_id) == 36 and validated_id.lower() == validated_id


def _canonical_id(text: str, parsed: uuid.UUID) -> str:
    """str(parsed), without its cost in the common case: a validated id of 36 characters is
    already hyphenated 8-4-4-4-12 (the braced and 32-digit forms have 38 and 32)."""
    return text.lower() if len(text) == 36 else str(parsed)


def same_request(entry: LedgerEntry, valid: ValidCommand) -> bool:
    """Rule I1: a command id answers again only for the same order, customer and money."""
    return (
        entry.order_id == valid.order_id
        and entry.customer_id == valid.customer_id
        and entry.amount == valid.amount
        and entry.currency == valid.currency
    )


class Pipeline:
    """Runs contract section 5 for one record. Stateless between calls; safe to run concurrently
    for different orders (the worker runs commands of one order one at a time)."""

    def __init__(
        self,
        *,
        decoder: Decoder,
        decode_error: type[PermanentError],
        messages: MessageFactory,
        ledger: LedgerPort,
        ordering: OrderingPort,
        inventory: InventoryPort,
        gateway: GatewayPort,
        locks: OrderLockPort,
        topics: TopicDirectoryPort,
        config: PipelineConfig | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.decoder = decoder
        self.decode_error = decode_error
        self.messages = messages
        self.ledger = ledger
        self.ordering = ordering
        self.inventory = inventory
        self.gateway = gateway
        self.locks = locks
        self.topics = topics
        self.config = config or PipelineConfig()
        self.clock = clock
        self._releases: set[asyncio.Future[None]] = set()

    # -- entry points -------------------------------------------------------------------------

    async def decode(self, record: InboundRecord) -> dict[str, Any]:
        """The record's command as decoded; `decode_error` when it cannot be."""
        await self.decoder.load_value(record.value)
        return self.decoder.decode("ProcessPayment", record.value)

    async def handle(self, record: InboundRecord) -> Handled:
        try:
            raw = await self.decode(record)
        except self.decode_error as exc:
            reason = getattr(exc, "reason", "undecodable")
            log.warning(
                "command_dead_lettered",
                reason=reason,
                error=str(exc),
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
            )
            stored = await self.ledger.record([self.messages.dead_letter(record, reason, str(exc))])
            return Handled(None, stored or [], dead_letter_reason=reason)
        command = command_from_record(raw)
        route = await self.resolve_route(record.headers, command.command_id)
        prepared = self.prepare(command, route)
        valid = prepared.valid
        if valid is None:
            # Raw field values are not logged: they are input, and may hold a card number.
            log.info(
                "command_invalid",
                error=prepared.invalid,
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
            )
            answer = reply(Outcome.INVALID_REQUEST, prepared.invalid or "invalid")
            return await self._answer(prepared.command, prepared.route, answer)
        command, route = prepared.command, prepared.route
        bound = log.bind(
            command_id=command.command_id,
            order_id=command.order_id,
            correlation_id=route.correlation_id,
        )
        try:
            return await self._process(command, valid, route, bound)
        except DependencyUnavailable as exc:
            bound.warning("dependency_unavailable", error=str(exc))
            answer = reply(Outcome.ERROR, str(exc))
            extra = [self.messages.dead_letter(record, "retries-exhausted", str(exc))]
            return await self._answer(command, route, answer, extra=extra)

    async def resolve_route(
        self, headers: list[tuple[str, bytes | None]], command_id: str
    ) -> ReplyRoute | InvalidHeader:
        """Where the command's headers ask for its reply, checked against the contract's
        rules and against what the broker has (a topic, a partition); or the header that
        cannot be honoured. The fallback correlation id is the command id, card numbers
        masked (an invalid command's id is raw input)."""
        rules = self.config.routes
        route = route_from_headers(headers, _echoed(command_id), rules)
        if isinstance(route, ReplyRoute) and needs_broker_check(route, rules):
            partitions = await self.topics.partitions(route.topic)
            bad = unknown_route(route, partitions, headers, rules)
            if bad is not None:
                return bad
        if isinstance(route, ReplyRoute) and route.topic != rules.default_topic:
            refused = await self.messages.load_reply(route.topic)
            if refused is not None:
                return refused_route(route, refused, headers, rules)
        return route

    def prepare(self, command: Command, route: ReplyRoute | InvalidHeader) -> Prepared:
        """Steps after decoding and routing, shared with replay: the command validated (ids
        made canonical), or why it is invalid, with the route to answer on. A bad header is
        answered before any field is looked at. An invalid command is answered with its ids
        as received, card numbers masked."""
        if isinstance(route, InvalidHeader):
            return Prepared(_public(command), route.fallback, None, route.message)
        try:
            valid = validate_command(command)
        except ValidationFailed as exc:
            return Prepared(_public(command), route, None, str(exc))
        return Prepared(canonical(command, valid), route, valid)

    async def handle_failure(self, record: InboundRecord, error: BaseException) -> Handled:
        """An unexpected error: answer ERROR (if the command decodes) and dead-letter it."""
        extra = [self.messages.dead_letter(record, "processing-error", type(error).__name__)]
        try:
            raw = await self.decode(record)
        except self.decode_error:
            stored = await self.ledger.record(extra)
            return Handled(None, stored or [], dead_letter_reason="processing-error")
        command = _public(command_from_record(raw))
        route = await self.resolve_route(record.headers, command.command_id)
        if isinstance(route, InvalidHeader):
            route = route.fallback
        answer = reply(Outcome.ERROR, f"unexpected {type(error).__name__}")
        handled = await self._answer(command, route, answer, extra=extra)
        handled.dead_letter_reason = "processing-error"
        return handled

    async def dead_letter_only(self, record: InboundRecord, error: BaseException) -> Handled:
        """The last resort when even answering ERROR failed: the record to the dead letters."""
        message = self.messages.dead_letter(record, "processing-error", type(error).__name__)
        stored = await self.ledger.record([message])
        return Handled(None, stored or [], dead_letter_reason="processing-error")

    async def finish_stale(self, payment: Payment, route: ReplyRoute) -> Handled:
        """The reconciler's step (rule I5): charge a pending payment whose command went away."""
        command = Command(
            command_id=str(payment.command_id),
            order_id=str(payment.order_id),
            customer_id=str(payment.customer_id),
            reservation_id=str(payment.reservation_id) if payment.reservation_id else None,
            amount=payment.amount,
            currency=payment.currency,
            payment_method=payment.payment_method,
            requested_at=payment.created_at,
        )
        bound = log.bind(command_id=command.command_id, order_id=command.order_id)
        token = await self.locks.acquire(payment.order_id)
        try:
            return await self._charge(command, None, route, payment, bound)
        finally:
            await self.locks.release(payment.order_id, token)

    # -- steps --------------------------------------------------------------------------------

    async def _process(
        self, command: Command, valid: ValidCommand, route: ReplyRoute, bound: Any
    ) -> Handled:
        # Most commands are new. Their order and reservation are fetched and their order lock
        # asked for at once, and begin_payments makes the idempotency checks (rules I1, I2,
        # I5) in the statement that inserts the pending payment: no read of the ledger first.
        # What the ledger records comes first in the contract's order: when the order or the
        # reservation rejects the command, or cannot be checked (unavailable, or any other
        # error), the ledger is read, and what it records (an outcome, a paid order, our own
        # pending payment) decides instead.
        lookups = _Lookups(self, valid)
        lock = asyncio.ensure_future(self.locks.acquire(valid.order_id))
        try:
            failed: Exception | None = None
            try:
                rejection = await self._check_order_and_reservation(valid, lookups)
            except Exception as exc:
                rejection, failed = None, exc
            if rejection is None and failed is None:
                await lock  # held (or Redis is down: degraded) until the outcome is recorded
                return await self._pay(command, valid, route, bound)
            snapshot = await self.ledger.snapshot(valid.command_id, valid.order_id)
            if failed is not None and not isinstance(failed, DependencyUnavailable):
                # Logged even when the ledger answers: a broken lookup must not hide behind
                # duplicates (an unavailable service is logged by its retries).
                bound.warning("order_check_failed", error=f"{type(failed).__name__}: {failed}")
            entry = snapshot.ledger
            recorded = await self._recorded(command, valid, route, entry, snapshot.succeeded)
            if recorded is not None:
                return recorded
            resumable = snapshot.pending
            if resumable is not None and resumable.command_id == valid.command_id:
                # Rule I5: our own payment, pending since a crash, is finished whatever the
                # order and the reservation say now.
                await lock
                return await self._pay(command, valid, route, bound)
            if entry is not None:  # in progress, yet its payment is not pending
                raise InconsistentLedger.of(valid.command_id)
            if failed is not None:
                raise failed
            assert rejection is not None
            bound.info("command_rejected", outcome=str(rejection.outcome))
            return await self._answer(command, route, rejection, record=valid)
        finally:
            self._release_later(valid.order_id, lock)
            lookups.drop()

    def _release_later(self, order_id: uuid.UUID, lock: asyncio.Future[str | None]) -> None:
        """Release the order lock without holding the command's answer back for it."""

        async def release() -> None:
            try:
                token = await lock
            except Exception:  # acquiring failed: nothing to release (degraded mode)
                return
            await self.locks.release(order_id, token)

        task = asyncio.ensure_future(release())
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _pay(
        self,
        command: Command,
        valid: ValidCommand,
        route: ReplyRoute,
        bound: Any,
    ) -> Handled:
        """Insert the pending payment (waiting while another command's payment for the order
        is pending), charge it and record the outcome. The caller holds the order lock."""
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self.config.busy_retry_budget_s
        delay = 0.05
        while True:
            candidate = Payment(
                id=new_uuid(),
                order_id=valid.order_id,
                customer_id=valid.customer_id,
                reservation_id=valid.reservation_id,
                amount=valid.amount,
                currency=valid.currency,
                payment_method=valid.payment_method,
                status=PaymentStatus.PENDING,
                created_at=self.clock(),
                command_id=valid.command_id,
            )
            began = await self.ledger.begin_payment(
                candidate, _ledger_fields(valid), route.to_json()
            )
            recorded = await self._recorded(command, valid, route, began.ledger, began.succeeded)
            if recorded is not None:
                return recorded
            if began.pending is not None:
                if began.pending.id != candidate.id:
                    bound.info("payment_resumed", payment_id=str(began.pending.id))
                return await self._charge(command, valid, route, began.pending, bound)
            if began.busy is None:  # only our entry, in progress, its payment not pending
                raise InconsistentLedger.of(valid.command_id)
            # Another command's payment for this order is pending: wait for it to finish.
            if loop.time() >= give_up_at:
                bound.warning("order_busy", payment_id=str(began.busy.id))
                return await self._answer(
                    command,
                    route,
                    reply(
                        Outcome.CONFLICT,
                        "another payment for this order is in progress; retry later",
                    ),
                )
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 1.0)

    async def _charge(
        self,
        command: Command,
        valid: ValidCommand | None,
        route: ReplyRoute,
        payment: Payment,
        bound: Any,
    ) -> Handled:
        """Charge a pending payment and record its outcome. `valid` is the command being
        answered; None for the reconciler, whose command went away."""
        result = await self.gateway.charge(payment)
        final = payment.finalized(result, self.clock())
        if result.success:
            answer = Reply(Outcome.SUCCEEDED, None, final)
            bound.info("payment_succeeded", payment_id=str(final.id))
        else:
            answer = reply(Outcome.DECLINED, result.error_message or "declined", final)
            bound.info("payment_declined", payment_id=str(final.id), code=result.error_code)
        messages = [self.messages.event(final, route), self.messages.reply(command, route, answer)]
        stored = await self.ledger.finish_payment(
            final, answer.outcome, answer.error_message, messages
        )
        if stored is not None:
            return Handled(answer.outcome, stored)
        # Finalized meanwhile, by a redelivery of the command or by the reconciler.
        if valid is None:
            bound.info("stale_payment_finished_elsewhere", payment_id=str(final.id))
            return Handled(None, [])  # its command was (or will be) answered by whoever did
        snapshot = await self.ledger.snapshot(valid.command_id, valid.order_id)
        if snapshot.ledger is not None and snapshot.ledger.final:
            return await self._answer_recorded(command, valid, route, snapshot.ledger)
        raise RetryableError(f"payment {final.id} is no longer pending but has no outcome")

    async def _recorded(
        self,
        command: Command,
        valid: ValidCommand,
        route: ReplyRoute,
        entry: LedgerEntry | None,
        succeeded: Payment | None,
    ) -> Handled | None:
        """The answer when what the ledger records decides it: the command id reused for
        another request (CONFLICT) or its recorded outcome (rule I1), then a paid order (rule
        I2); None when the command is to be processed."""
        if entry is not None:
            if not same_request(entry, valid):
                return await self._answer(command, route, _COMMAND_ID_REUSED)
            if entry.final:
                return await self._answer_recorded(command, valid, route, entry)
        if succeeded is not None:
            return await self._order_already_paid(command, valid, route, succeeded)
        return None

    async def _order_already_paid(
        self, command: Command, valid: ValidCommand, route: ReplyRoute, paid: Payment
    ) -> Handled:
        """Rule I2: an order with a succeeded payment is never charged again."""
        if paid.customer_id != valid.customer_id:
            answer = reply(Outcome.UNAUTHORIZED, "Order does not belong to the specified customer")
        elif paid.amount != valid.amount or paid.currency != valid.currency:
            answer = reply(
                Outcome.CONFLICT,
                "the order was already paid with a different amount or currency",
            )
        else:
            answer = Reply(Outcome.SUCCEEDED, None, paid, duplicate=True)
        return await self._answer(command, route, answer, record=valid)

    async def _check_order_and_reservation(
        self, valid: ValidCommand, lookups: _Lookups
    ) -> Reply | None:
        """The order check, then the reservation check, in the contract's order."""
        order = await lookups.order()
        if order is None:
            return reply(Outcome.ORDER_NOT_FOUND)
        if order.order_id is not None and order.order_id != str(valid.order_id):
            return reply(Outcome.ORDER_INVALID, "the Ordering service answered for another order")
        if order.customer_id is not None and order.customer_id.lower() != str(valid.customer_id):
            return reply(Outcome.UNAUTHORIZED, "Order does not belong to the specified customer")
        state = order.status.lower()
        if state != "pending":
            return reply(Outcome.ORDER_INVALID, f"Order is in '{state}' state, expected 'pending'")
        if order.amount is not None and order.amount != valid.amount:
            return reply(
                Outcome.ORDER_INVALID,
                f"Payment amount {valid.amount} does not match the order total {order.amount}",
            )
        if order.currency.upper() != valid.currency:
            return reply(
                Outcome.ORDER_INVALID,
                f"Payment currency {valid.currency} does not match the order currency "
                f"{order.currency.upper()}",
            )
        if valid.reservation_id is None:
            return None
        reservation = await lookups.reservation()
        if reservation is None:
            return reply(Outcome.RESERVATION_INVALID, "Reservation not found")
        if reservation.customer_id is not None and reservation.customer_id.lower() != str(
            valid.customer_id
        ):
            return reply(
                Outcome.RESERVATION_INVALID,
                "Reservation does not belong to the specified customer",
            )
        status = reservation.status.lower()
        if status != "active":
            return reply(
                Outcome.RESERVATION_INVALID,
                f"Reservation is in '{status}' state, expected 'active'",
            )
        if reservation.expires_at is not None and reservation.expires_at <= self.clock():
            return reply(Outcome.RESERVATION_INVALID, "Reservation has expired")
        return None

    # -- answers ------------------------------------------------------------------------------

    async def _answer_recorded(
        self, command: Command, valid: ValidCommand, route: ReplyRoute, entry: LedgerEntry
    ) -> Handled:
        """Rule I1: the recorded outcome again, marked duplicate, with no new work; given only
        to the same request (rule I7): another one under the same command id is a CONFLICT."""
        if not same_request(entry, valid):
            return await self._answer(command, route, _COMMAND_ID_REUSED)
        payment = await self.ledger.payment(entry.payment_id) if entry.payment_id else None
        if payment is not None and (
            payment.order_id != valid.order_id or payment.customer_id != valid.customer_id
        ):
            raise InconsistentLedger(
                f"ledger entry {valid.command_id} names a payment of another order or customer"
            )
        outcome = entry.outcome or Outcome.ERROR
        answer = Reply(outcome, entry.error_message, payment, duplicate=True)
        stored = await self.ledger.record([self.messages.reply(command, route, answer)])
        return Handled(outcome, stored or [], duplicate=True)

    async def _answer(
        self,
        command: Command,
        route: ReplyRoute,
        answer: Reply,
        *,
        record: ValidCommand | None = None,
        extra: list[OutboxMessage] | None = None,
    ) -> Handled:
        """Write the reply (and, for a final outcome of a valid command, the ledger entry)."""
        messages = [self.messages.reply(command, route, answer), *(extra or [])]
        ledger: dict[str, Any] | None = None
        if (
            record is not None
            and answer.outcome.is_final
            and answer.outcome is not Outcome.CONFLICT
        ):
            ledger = {
                **_ledger_fields(record),
                "outcome": str(answer.outcome),
                "error_message": answer.error_message,
                "payment_id": answer.payment.id if answer.payment else None,
                "reply_route": route.to_json(),
            }
        stored = await self.ledger.record(messages, ledger)
        if stored is None and record is not None:
            # Another command under this command id recorded an outcome first: its answer,
            # if it was the same request; a CONFLICT otherwise (rule I7).
            snapshot = await self.ledger.snapshot(record.command_id, record.order_id)
            if snapshot.ledger is not None and snapshot.ledger.final:
                return await self._answer_recorded(command, record, route, snapshot.ledger)
            raise RetryableError("ledger entry vanished while recording an outcome")
        return Handled(answer.outcome, stored or [], duplicate=answer.duplicate)


class _Lookups:
    """The order and reservation of a command, fetched concurrently and used in order."""

    def __init__(self, pipeline: Pipeline, valid: ValidCommand) -> None:
        self._order = asyncio.ensure_future(pipeline.ordering.get_order(valid.order_id))
        self._reservation = (
            asyncio.ensure_future(pipeline.inventory.get_reservation(valid.reservation_id))
            if valid.reservation_id is not None
            else None
        )

    async def order(self) -> OrderInfo | None:
        return await self._order

    async def reservation(self) -> ReservationInfo | None:
        assert self._reservation is not None
        return await self._reservation

    def drop(self) -> None:
        """Cancel what was not needed; an error nobody asked for is not an error."""
        for task in (self._order, self._reservation):
            if task is None:
                continue
            if not task.done():
                task.cancel()
            task.add_done_callback(_swallow)


def _swallow(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _public(command: Command) -> Command:
    """An invalid command as its reply echoes it: an id that is a UUID in canonical form, any
    other as received with its card numbers masked."""
    command_id, order_id = _echoed(command.command_id), _echoed(command.order_id)
    if command_id == command.command_id and order_id == command.order_id:
        return command
    return replace(command, command_id=command_id, order_id=order_id)


def _echoed(text: str) -> str:
    parsed = parse_uuid(text)
    return str(parsed) if parsed is not None else redacted(text)


def _ledger_fields(valid: ValidCommand) -> dict[str, Any]:
    return {
        "command_id": valid.command_id,
        "order_id": valid.order_id,
        "customer_id": valid.customer_id,
        "amount": valid.amount,
        "currency": valid.currency,
    }
