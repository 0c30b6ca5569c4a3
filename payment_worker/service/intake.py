"""From a consumed record to a command ready for the money path: decoded, its reply route
checked against the contract and the broker, validated with canonical ids, or why not. Shared by
the worker's pipeline and by replay."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from payment_worker.domain.model import Command, ValidCommand
from payment_worker.domain.routing import (
    InvalidHeader,
    ReplyRoute,
    RouteRules,
    needs_broker_check,
    route_from_headers,
    unknown_route,
)
from payment_worker.domain.validation import (
    ValidationFailed,
    as_echoed,
    echoed_id,
    validate_command,
    with_canonical_ids,
)
from payment_worker.exceptions import PermanentError
from payment_worker.service.messages import MessageFactory
from payment_worker.service.ports import InboundRecord, TopicDirectoryPort


class Decoder(Protocol):
    async def load_value(self, value: bytes | None) -> None:
        """Fetch what decoding `value` needs (a registry's writer schema)."""

    def decode(self, name: str, value: bytes | None) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Prepared:
    """A decoded command, where to answer it, and its validated form (or why it is invalid)."""

    command: Command
    route: ReplyRoute
    valid: ValidCommand | None
    invalid: str | None = None


class Intake:
    """Decoding, routing and validation of one record; no ledger, no money."""

    def __init__(
        self,
        *,
        decoder: Decoder,
        decode_error: type[PermanentError],
        messages: MessageFactory,
        topics: TopicDirectoryPort,
        routes: RouteRules,
    ) -> None:
        self.decoder = decoder
        self.decode_error = decode_error
        self.messages = messages
        self.topics = topics
        self.routes = routes

    async def decode(self, record: InboundRecord) -> dict[str, Any]:
        """The record's command as decoded; `decode_error` when it cannot be."""
        await self.decoder.load_value(record.value)
        return self.decoder.decode("ProcessPayment", record.value)

    async def resolve_route(
        self,
        headers: list[tuple[str, bytes | None]],
        command_id: str,
        read_at: float | None = None,
    ) -> ReplyRoute | InvalidHeader:
        """Where the command's headers ask for its reply, checked against the contract's
        rules and against what the broker has (a topic, a partition); or the header that
        cannot be honoured. The fallback correlation id is the command id, card numbers
        masked (an invalid command's id is raw input). `read_at` is when the record was read: a
        topic the broker lacks is judged on metadata fetched after it."""
        rules = self.routes
        route = route_from_headers(headers, echoed_id(command_id), rules)
        if isinstance(route, ReplyRoute) and needs_broker_check(route, rules):
            partitions = await self.topics.partitions(route.topic, read_at)
            bad = unknown_route(route, partitions, headers, rules)
            if bad is not None:
                return bad
        return route

    def prepare(self, command: Command, route: ReplyRoute | InvalidHeader) -> Prepared:
        """Steps after decoding and routing, shared with replay: the command validated (ids
        made canonical), or why it is invalid, with the route to answer on. A bad header is
        answered before any field is looked at. An invalid command is answered with its ids
        as received, card numbers masked."""
        if isinstance(route, InvalidHeader):
            return Prepared(as_echoed(command), route.fallback, None, route.message)
        try:
            valid = validate_command(command)
        except ValidationFailed as exc:
            return Prepared(as_echoed(command), route, None, str(exc))
        return Prepared(with_canonical_ids(command, valid), route, valid)
